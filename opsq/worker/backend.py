"""Celery's SQLAlchemy result backend, made fit for a threads pool and for large chords.

Two changes to ``celery.backends.database.DatabaseBackend``, both through its public hooks:

* Sessions come from opsq's pooled engine (``opsq.store.db``). Upstream creates an unpooled
  engine per operation when the worker is not a forked child, i.e. in ``-P threads``.
* Chords are joined here, the way Celery's Redis backend joins them, instead of by the
  ``celery.chord_unlock`` task that polls the database (at least a second per chord). Each
  header task's return inserts one row in ``opsq_chord_parts`` (its primary key makes a
  redelivered task count once) and bumps the counter in ``opsq_chords`` in the same
  transaction; the task that brings the counter to the chord's size claims the join,
  publishes the callback with the header results in order, and deletes the chord rows.

Chords whose header is a generator or holds nested groups fall back to upstream's
``chord_unlock`` polling: their size is not known when the chord is applied.

opsq's own job chords need neither table: the job row is their counter (``opsq.jobs.state``
counts hosts into it in the statement that stores them), and the header task whose
write closed the job says so in its return value; the join then only publishes the
callback. Two more things make ``AsyncResult(job_id)`` fit for jobs:

* a job id whose callback has not stored its result yet (or never could: the broker was
  down when the job closed) still reads as SUCCESS with the summary, once the job row is
  finished; PostgreSQL holds the truth, the callback's row is its record for Celery;
* ``get()`` waits on the job's ``NOTIFY`` instead of polling every half second.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import states
from celery.backends.database import DatabaseBackend
from celery.backends.database.session import ResultModelBase
from celery.canvas import maybe_signature
from celery.exceptions import ChordError
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import GroupResult, allow_join_result
from celery.utils.functional import _regen
from kombu.utils.encoding import ensure_bytes
from sqlalchemy import text
from sqlalchemy.orm import Session

from opsq.jobs import state as state_machine  # not "state": Celery's hooks name a task state so
from opsq.store import db
from opsq.store.listen import Listener

logger = logging.getLogger(__name__)

#: opsq's job chords: their header tasks and their callback (see opsq.jobs).
JOB_HEADER_TASKS = ("opsq.run_hosts", "opsq.run_on_host")
JOB_CALLBACK = "opsq.finish_job"
#: Seconds a waiter on a task that is not a job sleeps between looks (no NOTIFY for it).
NON_JOB_POLL = 0.5

_JOB_STATUS = text("SELECT status FROM jobs WHERE id = :id")

#: Seconds after which a claim to publish a chord callback is considered abandoned
#: (its worker died between the claim and the publish) and may be taken again.
CHORD_CLAIM_STALE = 60

_ADD_PART = text(
    """
    WITH part AS (
        INSERT INTO opsq_chord_parts (group_id, task_id, group_index, state, result)
        SELECT :gid, :tid, :idx, :state, :result
        WHERE EXISTS (SELECT 1 FROM opsq_chords WHERE group_id = :gid)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    UPDATE opsq_chords SET done = done + (SELECT count(*) FROM part)
    WHERE group_id = :gid
    RETURNING done, size
    """
)
_CLAIM = text(
    """
    UPDATE opsq_chords SET claimed_at = now()
    WHERE group_id = :gid AND NOT published AND done >= size
      AND (claimed_at IS NULL OR claimed_at < now() - make_interval(secs => :stale))
    RETURNING group_id
    """
)
_PARTS = text(
    "SELECT result FROM opsq_chord_parts WHERE group_id = :gid "
    "ORDER BY group_index NULLS LAST, task_id"
)


class PostgresBackend(DatabaseBackend):
    """The database backend with a pooled engine and a counter-based chord join."""

    _tables_lock = threading.Lock()
    _tables_ready: set[str] = set()

    def ResultSession(self, session_manager: Any = None) -> Session:  # noqa: N802 (upstream name)
        self._ensure_tables()
        return db.get_sessionmaker(self.url)()

    def on_backend_retryable_error(self, exc: Exception) -> None:
        # A broken connection poisons the pool: drop it so the retry reconnects.
        db.get_engine(self.url).dispose()

    def _ensure_tables(self) -> None:
        # Celery's own tables normally come from the migrations; this covers a database
        # that was created by hand. create_all checks before it creates.
        if self.url in self._tables_ready:
            return
        with self._tables_lock:
            if self.url not in self._tables_ready:
                ResultModelBase.metadata.create_all(db.get_engine(self.url))
                self._tables_ready.add(self.url)

    # -- results of jobs --------------------------------------------------------------

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        meta = super()._get_task_meta_for(task_id)
        if meta["status"] != states.PENDING:
            return meta
        with db.get_engine(self.url).connect() as conn:
            status = conn.execute(_JOB_STATUS, {"id": task_id}).scalar()
        if status not in state_machine.FINAL_JOB_STATUSES:
            return meta
        from opsq import jobs

        return {**meta, "status": states.SUCCESS,
                "result": jobs.summary(task_id).as_dict()}

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5,
                 no_ack: bool = True, on_interval: Any = None) -> dict[str, Any]:
        """Celery's wait, woken by the job's NOTIFY rather than by a timer (tasks that are
        not jobs are still looked at every ``interval``)."""
        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        with Listener(self.url) as listener:
            while True:
                meta = self.get_task_meta(task_id)
                if meta["status"] in states.READY_STATES:
                    return meta
                if on_interval:
                    on_interval()
                nap = max(interval, NON_JOB_POLL)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise CeleryTimeoutError("The operation timed out.")
                    nap = min(nap, left)
                listener.wait(nap)

    # -- chords --------------------------------------------------------------------

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        if body.task == JOB_CALLBACK:
            return None  # the job row counts its hosts
        group_id, results = header_result_args[0], header_result_args[1]
        if isinstance(results, _regen) or any(isinstance(r, GroupResult) for r in results):
            return super().apply_chord(header_result_args, body, **kwargs)
        self.ensure_chords_allowed()
        with db.get_engine(self.url).begin() as conn:
            # The same group applied again while its first run is in flight (a job fanned
            # out again after a crash mid-publish, with the same task ids) keeps its count
            # and parts: tasks already counted are not counted twice. A chord re-applied
            # after it was joined starts afresh, since the join deletes the row.
            conn.execute(
                text("INSERT INTO opsq_chords (group_id, size, callback_id) "
                     "VALUES (:gid, :size, :cb) ON CONFLICT (group_id) DO NOTHING"),
                {"gid": group_id, "size": len(results), "cb": body.options.get("task_id")},
            )
        return None

    def on_chord_part_return(
        self, request: Any, state: str, result: Any, **kwargs: Any
    ) -> None:
        if request.task in JOB_HEADER_TASKS:
            return self._on_job_part_return(request, state, result)
        gid, tid = request.group, request.id
        if not gid or not tid:
            return
        payload = ensure_bytes(self.encode([tid, state, self.encode_result(result, state)]))
        engine = db.get_engine(self.url)

        def add_part() -> bool:
            with engine.begin() as conn:
                row = conn.execute(
                    _ADD_PART,
                    {"gid": gid, "tid": tid, "idx": request.group_index, "state": state,
                     "result": payload},
                ).first()
                if row is None or row.done < row.size:
                    return False  # not a chord of ours (chord_unlock joins it), or not yet
                return conn.execute(_CLAIM, {"gid": gid, "stale": CHORD_CLAIM_STALE}
                                    ).first() is not None

        # Losing this write would leave the job unfinished forever: wait out a restart.
        if not db.retrying(add_part, f"chord {gid} part {tid}"):
            return
        callback = maybe_signature(request.chord, app=self.app)
        try:
            with engine.connect() as conn:
                rows = conn.execute(_PARTS, {"gid": gid}).all()
            values = [self._unpack_part(r.result) for r in rows]
        except ChordError as exc:
            logger.error("chord %s: %s", gid, exc)
            self.forget_chord(gid)
            return self.chord_error_from_stack(callback, exc)
        try:
            with allow_join_result():
                callback.delay(values)
        except Exception as exc:  # the broker refused the publish: fail the chord, loudly
            logger.exception("chord %s: callback could not be published", gid)
            return self.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))
        self.forget_chord(gid)
        return None

    def _on_job_part_return(self, request: Any, state: str, result: Any) -> None:
        # The task's write that closed the job said so; every other part has nothing to do.
        # A task that raised (an opsq bug) left its hosts under a lease that expires: the
        # sweeper closes them.
        if state != states.SUCCESS or not (isinstance(result, dict) and result.get("closed")):
            return
        if not request.chord:
            return
        job_id = result.get("job_id")
        try:
            maybe_signature(request.chord, app=self.app).delay([])
        except Exception:  # the job is closed in PostgreSQL: AsyncResult still reads it
            logger.exception("job %s: its callback could not be published (the sweep "
                             "sends it later)", job_id)
            return
        with db.get_engine(self.url).begin() as conn:
            state_machine.mark_announced(conn, job_id)

    def _unpack_part(self, payload: bytes) -> Any:
        tid, state, value = self.decode(payload)
        if state in states.EXCEPTION_STATES:
            value = self.exception_to_python(value)
        if state in states.PROPAGATE_STATES:
            raise ChordError(f"Dependency {tid} raised {value!r}")
        return value

    def forget_chord(self, gid: str) -> None:
        """Drop a chord's counter and parts (joined, or never published)."""
        with db.get_engine(self.url).begin() as conn:
            conn.execute(text("DELETE FROM opsq_chords WHERE group_id = :gid"), {"gid": gid})
