"""Live job streams of the console: one LISTEN connection per process, fanned out by job.

An open event stream (``GET /api/v1/jobs/{id}/events``) subscribes to its job here
rather than holding a PostgreSQL connection and a worker thread of its own while it
waits. One thread per process (``Hub``) listens on the jobs channel through
``opsq.store.listen.Listener`` and wakes only the subscribers of the job a notification names;
``"*"`` (after a reconnection: anything may have changed meanwhile) wakes them all. The
thread starts with the first subscription and reconnects as the Listener does.

Streams per user are capped in this process's memory: ``opsq web`` is one process, so
the count is the server's. Running several would multiply the cap by their number.

Not done yet: streams of one job woken by the same notification each read the job, so
N viewers of a job cost N reads per change (STREAM_READ_THREADS of them at a time);
sharing one read among them would make it one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from opsq.errors import OpsqError
from opsq.store.listen import RECONNECT_PAUSE, Listener

#: Seconds the listening thread blocks at most before it looks whether it should stop.
LISTEN_POLL = 1.0
#: Summary reads of the streams that may run at once, each in a worker thread with a
#: pooled connection: a wake-up of every stream (a reconnection, keep-alives falling
#: together) queues here instead of taking the threads and connections requests need.
STREAM_READ_THREADS = 4

logger = logging.getLogger(__name__)
T = TypeVar("T")

_reads = anyio.CapacityLimiter(STREAM_READ_THREADS)


class TooManyStreams(OpsqError):
    """The user already holds as many live streams as OPSQ_WEB_STREAMS_PER_USER allows."""


class Subscription:
    """One stream's interest in one job. ``wait`` returns when the job may have changed;
    ``close`` (or leaving the ``with`` block) unsubscribes, and may be called again."""

    def __init__(self, hub: Hub, job_id: str, user: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.user = user
        self.closed = False
        self._hub = hub
        self._loop = loop
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Mark the job as changed; safe from any thread."""
        with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody waits
            self._loop.call_soon_threadsafe(self._woken.set)

    async def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change since the last wait; False if none.
        A change announced while the caller reads the job is kept for the next wait."""
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except TimeoutError:
            return False
        self._woken.clear()
        return True

    def close(self) -> None:
        self._hub.remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Subscriptions by job id, woken by one listening thread.

    ``listen`` makes the thread's source of notifications: an object with
    ``wait(timeout) -> set[str]`` and ``close()`` (``opsq.store.listen.Listener``).
    """

    def __init__(self, listen: Callable[[], Any] = Listener) -> None:
        self._listen = listen
        self._lock = threading.Lock()
        self._by_job: dict[str, set[Subscription]] = {}
        self._per_user: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self, job_id: str, user: str, limit: int | None = None) -> Subscription:
        """Subscribe the calling event loop to ``job_id`` on behalf of ``user``.

        Raises TooManyStreams when ``user`` already holds ``limit`` subscriptions.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._per_user.get(user, 0)
            if limit is not None and held >= limit:
                raise TooManyStreams(
                    f"{user!r} already has {held} live job streams open, the most allowed "
                    f"(OPSQ_WEB_STREAMS_PER_USER={limit}): close a job's page or stream "
                    f"first")
            sub = Subscription(self, job_id, user, loop)
            self._by_job.setdefault(job_id, set()).add(sub)
            self._per_user[user] = held + 1
            self._start()
        return sub

    def remove(self, sub: Subscription) -> None:
        """Forget ``sub``; nothing if it is already gone."""
        with self._lock:
            if sub.closed:
                return
            sub.closed = True
            subs = self._by_job.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_job[sub.job_id]
            left = self._per_user.get(sub.user, 1) - 1
            if left > 0:
                self._per_user[sub.user] = left
            else:
                self._per_user.pop(sub.user, None)

    def open_streams(self, user: str | None = None) -> int:
        """Subscriptions held by ``user`` (by everyone when None)."""
        with self._lock:
            if user is None:
                return sum(self._per_user.values())
            return self._per_user.get(user, 0)

    def jobs(self) -> set[str]:
        """The job ids that have subscribers."""
        with self._lock:
            return set(self._by_job)

    def publish(self, ids: set[str]) -> int:
        """Wake the subscribers of the jobs ``ids`` names (everyone for ``"*"``); how many."""
        with self._lock:
            if "*" in ids:
                woken = [s for subs in self._by_job.values() for s in subs]
            else:
                woken = [s for i in ids for s in self._by_job.get(i, ())]
        for s in woken:
            s.wake()
        return len(woken)

    def _start(self) -> None:
        """Start the listening thread unless it runs (called under the lock)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="opsq-streams", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        listener = self._listen()
        try:
            while not self._stop.is_set():
                try:
                    ids = listener.wait(LISTEN_POLL)
                except Exception:  # the thread must outlive any one failure
                    logger.exception("listening for job changes failed; starting again")
                    with contextlib.suppress(Exception):
                        listener.close()
                    time.sleep(RECONNECT_PAUSE)
                    continue
                if ids:
                    self.publish(ids)
        finally:
            listener.close()

    def close(self, timeout: float = LISTEN_POLL * 5) -> None:
        """Stop the listening thread (its connection closes); subscriptions stay."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """The process's hub, made on first use."""
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = Hub()
        return _hub


async def read(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, a blocking database read, in a worker thread: at most
    STREAM_READ_THREADS at once, apart from the threads that serve requests."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=_reads)


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer that closes its subscription however it ends
    (finished, client gone, cancelled, or never iterated)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterable[str], subscription: Subscription) -> None:
        super().__init__(content, headers={"Cache-Control": "no-store"})
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()
