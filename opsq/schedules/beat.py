"""The beat scheduler: fires the schedules kept in PostgreSQL.

``celery -A opsq beat`` uses it (``beat_scheduler`` is set on the app). Only one beat
fires: each holds a PostgreSQL session advisory lock while it leads; others start as hot
standbys, try the lock every second, and take over when the leader's connection goes
away (process killed, machine lost). Every tick reads the table, so an edit takes effect
on the next tick without a restart.

A firing updates its row (last run, next run, count) in the same transaction that
selected it ``FOR UPDATE``; the task is sent inside that transaction, with a task id
derived from the schedule and the due time, so a leader dying between the send and the
commit makes its successor send the same id again, and ``submit_job`` recognises the
duplicate. A run missed while no beat was up fires once, then the schedule continues
from now.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery.beat import Scheduler
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from opsq.schedules import Timing, firing_id, send, still_running
from opsq.store import db
from opsq.store.models import Schedule, ScheduleKind

logger = logging.getLogger(__name__)

#: The advisory lock key every opsq beat competes for ('opsq' in ASCII).
LEADER_LOCK_KEY = 0x6F707371
#: Longest sleep between two looks at the schedules table, in seconds (edits are seen
#: within this).
MAX_TICK = 1.0
#: Seconds between a standby's attempts at the leader lock.
STANDBY_RETRY = 1.0
#: Most schedules fired in one tick (the rest wait for the next tick).
FIRE_BATCH = 100


class DatabaseScheduler(Scheduler):
    """A ``celery.beat.Scheduler`` whose entries live in opsq's ``schedules`` table."""

    max_interval = MAX_TICK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock_conn: Connection | None = None
        super().__init__(*args, **kwargs)

    # Celery's in-memory schedule is unused: the table is the schedule.
    def setup_schedule(self) -> None:
        self.data = {}

    @property
    def info(self) -> str:
        return "    . schedules -> PostgreSQL table 'schedules' (leader lock: advisory)"

    @property
    def is_leader(self) -> bool:
        return self._lock_conn is not None

    def _lead(self) -> bool:
        """Hold the leader lock, or try to take it; False while standing by."""
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute(text("SELECT 1"))
                return True
            except Exception:  # lost the database: the lock went with the session
                logger.warning("beat: lost the database connection; standing by")
                self._drop_lock()
        conn = None
        try:
            conn = db.get_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                               {"k": LEADER_LOCK_KEY}).scalar()
        except Exception as exc:
            logger.warning("beat: cannot reach the database (%s); retrying", exc)
            if conn is not None:
                conn.close()
            return False
        if not got:
            conn.close()
            return False
        # The lock lives as long as this session: keep the connection out of the pool.
        self._lock_conn = conn
        logger.info("beat: leading (advisory lock %#x)", LEADER_LOCK_KEY)
        return True

    def _drop_lock(self) -> None:
        if self._lock_conn is not None:
            try:
                self._lock_conn.invalidate()
            finally:
                self._lock_conn = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._lead():
            return STANDBY_RETRY
        try:
            fired = fire_due(datetime.now(UTC))
            if fired:
                logger.info("beat: fired %s", ", ".join(fired))
            return seconds_to_next(MAX_TICK)
        except Exception:
            logger.exception("beat: tick failed; retrying")
            return MAX_TICK

    def close(self) -> None:
        self._drop_lock()
        super().close()

    def sync(self) -> None:  # nothing in memory to save
        pass


def fire_due(now: datetime) -> list[str]:
    """Send every enabled schedule whose next run is due; returns the names of those that
    sent their task (a firing skipped by ``--overlap skip`` is not among them)."""
    fired = []
    with db.session_scope() as session:
        due = session.scalars(
            select(Schedule)
            .where(Schedule.enabled, Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
            .limit(FIRE_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for row in due:
            # One schedule that cannot be sent (broker down, a broken row) must neither
            # hold back the others nor roll back their bookkeeping: each row is its own
            # savepoint, and a failed one stays due for the next tick.
            try:
                with session.begin_nested():
                    when = Timing(ScheduleKind(row.kind), row.expression, row.timezone)
                    due_at = row.next_run_at
                    running = still_running(session, row) if row.overlap == "skip" else None
                    if running is not None:
                        # The previous job still runs: this firing starts nothing, and
                        # says so (opsq schedule show, the console, the API).
                        logger.warning("beat: schedule %s: job %s still %s; firing of %s "
                                       "skipped (--overlap skip)", row.name, running.id,
                                       running.status, due_at.isoformat())
                        row.skipped_count += 1
                        row.last_skipped_at = now
                    else:
                        task_id = send(row, task_id=firing_id(row.id, due_at))
                        row.last_run_at = now
                        row.run_count += 1
                        row.last_task_id = task_id
                    row.next_run_at = when.next_after(now, previous_due=due_at)
                    if row.next_run_at is None or when.kind is ScheduleKind.ONCE:
                        row.enabled, row.next_run_at = False, None
            except Exception:
                logger.exception("beat: schedule %s could not fire; retrying next tick",
                                 row.name)
                continue
            if running is None:
                fired.append(row.name)
    return fired


def seconds_to_next(cap: float) -> float:
    """Seconds until the next enabled schedule is due, at most ``cap``."""
    with db.session_scope() as session:
        nxt = session.scalar(select(func.min(Schedule.next_run_at)).where(Schedule.enabled))
    if nxt is None:
        return cap
    return max(0.0, min(cap, (nxt - datetime.now(UTC)).total_seconds()))
