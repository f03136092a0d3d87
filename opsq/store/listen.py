"""Waiting for jobs without polling: PostgreSQL ``LISTEN``/``NOTIFY``.

Every write of host results (``opsq.jobs.state.store``) notifies channel ``opsq_jobs`` with the
job id, in the same transaction, so a waiter wakes when the job's progress moves or it
ends. Waiters still look at the job after at most ``max_wait`` seconds, so a notification
lost to a database restart only delays them.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from typing import Any

import psycopg2
from sqlalchemy.exc import OperationalError

from opsq.store import JOBS_CHANNEL, db

logger = logging.getLogger(__name__)

#: Seconds between reconnection attempts of a listener whose connection broke.
RECONNECT_PAUSE = 0.5


class Listener:
    """A dedicated PostgreSQL connection listening on the jobs channel.

    ``wait`` returns the job ids announced since the last call (``{"*"}`` after a
    reconnection: anything may have changed meanwhile).
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self._conn: Any = None

    def __enter__(self) -> Listener:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection and LISTEN; raises BackendUnavailable when PostgreSQL is down."""
        try:
            fairy = db.get_engine(self.url).raw_connection()
        except OperationalError as exc:
            raise db.unavailable(exc, self.url) from exc
        conn = fairy.driver_connection
        fairy.detach()  # ours for as long as we listen, never back into the pool
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {JOBS_CHANNEL}")
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                self._conn.close()
            self._conn = None

    def wait(self, timeout: float) -> set[str]:
        """Block up to ``timeout`` seconds for notifications; the job ids announced."""
        if self._conn is None:
            return self._reconnect(timeout)
        try:
            if not self._conn.notifies:
                ready, _, _ = select.select([self._conn], [], [], max(timeout, 0))
                if ready:
                    self._conn.poll()
            ids = {n.payload for n in self._conn.notifies}
            self._conn.notifies.clear()
            return ids
        except (psycopg2.Error, OSError, ValueError):
            logger.warning("lost the PostgreSQL connection waiting for jobs; reconnecting")
            self.close()
            return self._reconnect(timeout)

    def _reconnect(self, timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.connect()
                return {"*"}
            except Exception:
                if time.monotonic() + RECONNECT_PAUSE > deadline:
                    return set()
                time.sleep(RECONNECT_PAUSE)

