"""Housekeeping tasks; the daily ``opsq-retention`` schedule runs ``opsq.prune``."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import text

from opsq import db
from opsq.app import app
from opsq.settings import get_settings

logger = logging.getLogger(__name__)

#: Jobs deleted per transaction, so pruning never holds long locks on a busy table.
PRUNE_BATCH = 1000

_PRUNE_JOBS = text(
    """
    DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs
        WHERE submitted_at < now() - make_interval(days => :days)
          AND status IN ('succeeded', 'failed', 'error')
        ORDER BY submitted_at LIMIT :batch)
    """
)
_PRUNE_CHORDS = text(
    "DELETE FROM opsq_chords WHERE created_at < now() - make_interval(days => :days)"
)


#: Seconds a job must be old before reconcile looks at it (joins normally take far less).
RECONCILE_GRACE = 60

_UNJOINED = text(
    """
    SELECT j.id FROM jobs j
    WHERE j.status IN ('queued', 'running') AND j.host_count > 0
      AND j.submitted_at < now() - make_interval(secs => :grace)
      AND NOT EXISTS (SELECT 1 FROM host_results h
                      WHERE h.job_id = j.id AND h.status IN ('pending', 'running'))
    ORDER BY j.submitted_at LIMIT :batch
    """
)


@app.task(name="opsq.reconcile")
def reconcile(grace: float = RECONCILE_GRACE) -> dict[str, Any]:
    """Finish jobs whose hosts have all reported but whose summary was never written.

    The chord join normally does this at once; it is lost only when PostgreSQL stayed
    unreachable past the write retries as a host reported, or a worker died between
    claiming the join and publishing the callback. The job's own callback is sent, with
    the job id as its task id, exactly as the join would have: ``AsyncResult.get()``
    then returns the summary.
    """
    from opsq.jobs import FINISH_JOB

    with db.get_engine().connect() as conn:
        ids = conn.execute(_UNJOINED, {"grace": grace, "batch": PRUNE_BATCH}).scalars().all()
    for job_id in ids:
        logger.warning("job %s: every host reported but the job was never joined; "
                       "finishing it", job_id)
        app.backend.forget_chord_of(job_id)
        app.send_task(FINISH_JOB, ([], job_id), task_id=job_id, argsrepr=repr((job_id,)))
    return {"finished": list(ids)}


@app.task(name="opsq.prune")
def prune(days: int | None = None) -> dict[str, Any]:
    """Delete finished jobs (and their host results) older than ``days`` (default: the
    retention setting), abandoned chord counters, and Celery's expired results.

    A job still queued or running is never deleted, however old.
    """
    days = get_settings().retention_days if days is None else int(days)
    jobs_deleted = 0
    while True:
        with db.get_engine().begin() as conn:
            n = conn.execute(_PRUNE_JOBS, {"days": days, "batch": PRUNE_BATCH}).rowcount
        jobs_deleted += n
        if n < PRUNE_BATCH:
            break
    with db.get_engine().begin() as conn:
        chords = conn.execute(_PRUNE_CHORDS, {"days": days}).rowcount
    app.backend.cleanup()  # celery_taskmeta rows past result_expires
    logger.info("pruned %d jobs and %d chord counters older than %d days",
                jobs_deleted, chords, days)
    return {"days": days, "jobs_deleted": jobs_deleted, "chords_deleted": chords}
