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
