"""Stopping a host's run from another thread: ``opsq cancel`` reaches a worker while its
commands run (see ``opsq.worker.fleet_tasks.CancelWatcher``)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)


class Stopper:
    """Kills registered runs when ``stop()`` is called; remembers that it was."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kills: list[Callable[[], None]] = []
        self.stopped = threading.Event()

    def stop(self) -> None:
        with self._lock:
            self.stopped.set()
            kills = list(self._kills)
        for kill in kills:
            try:
                kill()
            except Exception:  # the run may be ending on its own meanwhile
                # Visible: a kill that fails here is a cancel the run never sees (one
                # such failure let cancelled commands run to their end).
                logger.warning("stopping a run failed", exc_info=True)

    @contextlib.contextmanager
    def watching(self, kill: Callable[[], None]) -> Iterator[None]:
        """While the block runs, ``stop()`` calls ``kill``; when already stopped, at once."""
        with self._lock:
            self._kills.append(kill)
            already = self.stopped.is_set()
        if already:
            kill()
        try:
            yield
        finally:
            with self._lock:
                self._kills.remove(kill)
