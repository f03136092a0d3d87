"""The tasks of a job: one per host (``opsq.run_on_host``), the chord callback that
writes the summary (``opsq.finish_job``), and ``opsq.submit_job`` for submitting from
anywhere Celery can send a task (``submit_job.delay(...)``, beat, another service).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import worker_shutdown
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from opsq import db, jobs
from opsq.app import app
from opsq.errors import BackendUnavailable, InventoryError, PatternError
from opsq.inventory import Host
from opsq.models import HostStatus
from opsq.settings import get_settings
from opsq.ssh import CommandOutcome, ConnectionPool, RunOptions, run_on

logger = logging.getLogger(__name__)

#: Seconds to wait for a worker to say whether a task is still active on it.
OWNER_INSPECT_TIMEOUT = 2.0
#: How a task that cannot reach PostgreSQL (or, for start_job, RabbitMQ) before it has
#: done anything waits for it: retried through the broker, backing off exponentially
#: (with jitter) up to 30 s, 20 times at most — several minutes in all.
WAIT_FOR_SERVICES = {"retry_backoff": True, "retry_backoff_max": 30, "max_retries": 20}

_pool: ConnectionPool | None = None


def connection_pool() -> ConnectionPool:
    """This worker process's SSH connection pool."""
    global _pool
    if _pool is None:
        _pool = ConnectionPool(get_settings().pool_idle)
    return _pool


@worker_shutdown.connect
def _close_pool(**_: Any) -> None:
    if _pool is not None:
        _pool.close_all()


_CLAIM = text(
    """
    SELECT h.status, h.attempt, h.target, h.worker, h.task_id, j.command, j.command_timeout,
           j.connect_timeout, j.rerun_safe
    FROM host_results h JOIN jobs j ON j.id = h.job_id
    WHERE h.job_id = :job AND h.host = :host
    FOR UPDATE OF h
    """
)
_START = text(
    """
    UPDATE host_results SET status = 'running', attempt = attempt + 1, started_at = now(),
        finished_at = NULL, worker = :worker, task_id = :task
    WHERE job_id = :job AND host = :host
    RETURNING attempt
    """
)
_JOB_RUNNING = text(
    "UPDATE jobs SET status = 'running', started_at = now() "
    "WHERE id = :job AND status = 'queued'"
)
_FINISH = text(
    """
    UPDATE host_results SET status = :status, exit_code = :exit_code, stdout = :stdout,
        stderr = :stderr, stdout_bytes = :stdout_bytes, stderr_bytes = :stderr_bytes,
        truncated = :truncated, error = :error, finished_at = now(),
        duration = EXTRACT(EPOCH FROM now() - started_at)
    WHERE job_id = :job AND host = :host AND attempt = :attempt
    """
)


def _short(job_id: str, host: str, status: str, exit_code: int | None) -> dict[str, Any]:
    # The chord payload stays small: full output lives in host_results.
    return {"job_id": job_id, "host": host, "status": status, "exit_code": exit_code}


# ignore_result: the host's outcome lives in host_results and reaches the chord through
# the backend's join; skipping celery_taskmeta saves two writes per host. Flower still
# shows every state from the task events.
# autoretry: BackendUnavailable can only come from the claim, before the command ran.
@app.task(name="opsq.run_on_host", bind=True, ignore_result=True,
          autoretry_for=(BackendUnavailable,), **WAIT_FOR_SERVICES)
def run_on_host(self: Task, job_id: str, host: str) -> dict[str, Any]:
    """Run the job's command on one host and store the outcome; never raises for a host.

    A second delivery of a task whose first attempt had started (the worker died) does
    not run the command again unless the job was submitted as safe to re-run: it
    records ``interrupted``. A delivery after the result was stored returns it as is.
    """
    row = _claim(self, job_id, host)
    if isinstance(row, dict):
        return row
    claimed, attempt = row
    return _run_claimed(job_id, host, claimed, attempt)


def _claim(self: Task, job_id: str, host: str) -> Any:
    """Mark the host running (attempt + 1) and return (row, attempt), or the short
    result when it must not run: already finished (duplicate delivery) or interrupted
    (see run_on_host). Raises Ignore for a duplicate of a delivery still running."""
    with db.session_scope() as session:
        row = session.execute(_CLAIM, {"job": job_id, "host": host}).first()
        if row is None:
            logger.error("job %s has no host %s (deleted?)", job_id, host)
            return _short(job_id, host, HostStatus.ERROR.value, None)
        previous = HostStatus(row.status)
        if previous.finished:
            session.rollback()
            return _short(job_id, host, previous.value, None)
        if previous is HostStatus.RUNNING and _still_running(row.worker, row.task_id):
            # The broker redelivered a task whose first delivery is alive (its worker's
            # connection dropped): that one will report. Producing no result here keeps
            # the chord from counting this host twice.
            session.rollback()
            logger.warning("job %s host %s: task %s still runs on %s; duplicate ignored",
                           job_id, host, row.task_id, row.worker)
            raise Ignore()
        if previous is HostStatus.RUNNING and not row.rerun_safe:
            session.execute(_FINISH, {
                "job": job_id, "host": host, "status": HostStatus.INTERRUPTED.value,
                "attempt": row.attempt,
                "exit_code": None, "stdout": None, "stderr": None, "stdout_bytes": None,
                "stderr_bytes": None, "truncated": False,
                "error": f"attempt {row.attempt} was interrupted (worker lost) and the job "
                         "is not marked safe to re-run; not running the command again",
            })
            return _short(job_id, host, HostStatus.INTERRUPTED.value, None)
        attempt = session.execute(_START, {
            "job": job_id, "host": host, "worker": self.request.hostname,
            "task": self.request.id}).scalar_one()
        session.execute(_JOB_RUNNING, {"job": job_id})
    return row, attempt


def _still_running(worker: str | None, task_id: str | None) -> bool:
    """Whether ``worker`` reports ``task_id`` among its active tasks right now."""
    if not worker or not task_id:
        return False
    try:
        replies = app.control.inspect([worker], timeout=OWNER_INSPECT_TIMEOUT).active() or {}
    except Exception:  # cannot ask: treat the first delivery as lost
        logger.warning("could not ask %s about task %s", worker, task_id, exc_info=True)
        return False
    return any(t.get("id") == task_id for tasks in replies.values() for t in tasks or [])


def _run_claimed(job_id: str, host: str, row: Any, attempt: int) -> dict[str, Any]:
    target = Host.from_dict(row.target)
    try:
        options = RunOptions.resolve(target, get_settings(), row.command_timeout,
                                     row.connect_timeout)
        outcome = run_on(target, row.command, options, connection_pool())
    except Exception as exc:  # a bug in opsq: record it on the host, keep the chord alive
        logger.exception("job %s host %s: unexpected error", job_id, host)
        outcome = CommandOutcome(status=HostStatus.ERROR, error=f"{type(exc).__name__}: {exc}")
    _store_outcome(job_id, host, outcome, attempt)
    return _short(job_id, host, outcome.status.value, outcome.exit_code)


def _store_outcome(job_id: str, host: str, outcome: CommandOutcome, attempt: int) -> None:
    params = {
        "job": job_id, "host": host, "status": outcome.status.value, "attempt": attempt,
        "exit_code": outcome.exit_code,
        # PostgreSQL text cannot hold NUL; everything else survives as decoded.
        "stdout": outcome.stdout.replace("\x00", "\ufffd"),
        "stderr": outcome.stderr.replace("\x00", "\ufffd"),
        "stdout_bytes": outcome.stdout_bytes, "stderr_bytes": outcome.stderr_bytes,
        "truncated": outcome.truncated, "error": outcome.error,
    }
    def write() -> None:
        with db.get_engine().begin() as conn:
            conn.execute(_FINISH, params)

    db.retrying(write, f"storing job {job_id} host {host}")


@app.task(name="opsq.finish_job", bind=True, autoretry_for=(BackendUnavailable,),
          **WAIT_FOR_SERVICES)
def finish_job(self: Task, results: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    """The chord callback: count the hosts' outcomes, close the job, return its summary."""
    return jobs.finish(job_id)


@app.task(name="opsq.start_job", autoretry_for=(BackendUnavailable, BrokerError, OSError),
          **WAIT_FOR_SERVICES)
def start_job(job_id: str) -> None:
    """Fan a recorded job out as its chord.

    ``opsq run`` records the job and sends only this one message, so it returns at once
    whatever the number of hosts; the per-host messages are published from here. The
    fan-out is idempotent (the same group and task ids every time), so a start that is
    retried or redelivered after a crash mid-publish publishes what is missing and the
    hosts already done, running or queued are recognised, not run twice.
    """
    status = jobs.job_status(job_id)
    if status is not None and status.finished:
        logger.warning("job %s is finished: late start ignored", job_id)
        return
    jobs.job_signature(job_id).apply_async()


@app.task(name="opsq.submit_job", bind=True)
def submit_job(
    self: Task,
    command: str,
    pattern: str,
    *,
    inventory: str | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    rerun_safe: bool = False,
    submitted_by: str | None = None,
    schedule_id: int | None = None,
    schedule: str | None = None,
) -> Any:
    """Resolve, record and fan out a job from a worker; this task's id is the job id.

    The task replaces itself with the job's chord, so ``AsyncResult(id).get()`` returns
    the job summary as with ``opsq.jobs.submit``. A pattern or inventory that no longer
    resolves is kept as a job with status ``error``. A second delivery of the same
    firing (same task id) is ignored: the job exists already.
    """
    spec = jobs.JobSpec(
        command=command, pattern=pattern, inventory=inventory, command_timeout=timeout,
        connect_timeout=connect_timeout, rerun_safe=rerun_safe,
        submitted_by=submitted_by or f"celery:{self.request.hostname}",
        schedule_id=schedule_id, schedule=schedule,
    )
    try:
        job_id = jobs.create(spec, job_id=self.request.id)
    except IntegrityError:
        status = jobs.job_status(self.request.id)
        if status is None:
            raise  # not a duplicate (e.g. the schedule was removed meanwhile)
        if status.finished:
            logger.warning("job %s is finished: duplicate submission ignored",
                           self.request.id)
            raise Ignore() from None
        # A redelivery after a crash between recording and fanning out, or a firing sent
        # twice: fan out again, idempotently.
        job_id = self.request.id
    except (InventoryError, PatternError) as exc:
        jobs.record_failed_submission(spec, self.request.id, str(exc))
        return jobs.summary(self.request.id)
    raise self.replace(jobs.job_signature(job_id))
