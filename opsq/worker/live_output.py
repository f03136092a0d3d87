"""Output while it is produced: what a running host has printed reaches PostgreSQL every
LIVE_FLUSH_INTERVAL, so ``opsq logs -f`` can follow a long command and a worker that dies
keeps what was already printed.

Each running host has a LiveOutput that the capture feeds (within the same per-host cap
as the final result). One Flusher thread per worker process writes what every host
printed since the last round in one statement, for hosts that have run for LIVE_DELAY at
least: short commands (most) cost nothing until their result is stored.
"""

from __future__ import annotations

import codecs
import logging
import threading
import time

from opsq.jobs import steering
from opsq.store import db

logger = logging.getLogger(__name__)

#: Seconds between two writes of the output hosts printed meanwhile.
LIVE_FLUSH_INTERVAL = 1.0
#: Seconds a host runs before its output is written while it runs.
LIVE_DELAY = 1.0


class LiveOutput:
    """What one running host printed and nobody wrote yet."""

    def __init__(self, job_id: str, host: str, token: str, limit: int) -> None:
        self.job_id, self.host, self.token, self.limit = job_id, host, token, limit
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._kept = {"stdout": 0, "stderr": 0}
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")("replace")
                          for s in self._kept}
        self._pending: dict[str, list[str]] = {s: [] for s in self._kept}

    def add(self, stream: str, data: bytes) -> None:
        """Bytes the host wrote to ``stream``; only those within the cap are kept."""
        with self._lock:
            room = self.limit - self._kept[stream]
            if room <= 0:
                return
            part = data[:room]
            self._kept[stream] += len(part)
            self._pending[stream].append(self._decoders[stream].decode(part))

    def take(self) -> tuple[str, str]:
        with self._lock:
            out, err = ("".join(self._pending[s]) for s in ("stdout", "stderr"))
            self._pending = {s: [] for s in self._pending}
        return out, err


class Flusher(threading.Thread):
    """Writes the running hosts' new output, every LIVE_FLUSH_INTERVAL."""

    def __init__(self) -> None:
        super().__init__(name="opsq-output-flusher", daemon=True)
        self._lock = threading.Lock()
        self._live: set[LiveOutput] = set()
        self._stopping = threading.Event()

    def watch(self, live: LiveOutput) -> None:
        with self._lock:
            self._live.add(live)

    def forget(self, live: LiveOutput) -> None:
        with self._lock:
            self._live.discard(live)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(LIVE_FLUSH_INTERVAL):
            now = time.monotonic()
            with self._lock:
                due = [lv for lv in self._live if now - lv.started >= LIVE_DELAY]
            chunks = [(lv, *lv.take()) for lv in due]
            chunks = [c for c in chunks if c[1] or c[2]]
            if not chunks:
                continue
            try:
                with db.get_engine().begin() as conn:
                    steering.append_output(conn, [
                        (lv.job_id, lv.host, lv.token, out, err) for lv, out, err in chunks])
            except Exception as exc:  # the final result still has it all
                logger.warning("could not write the output of %d running host(s): %s",
                               len(chunks), exc)
