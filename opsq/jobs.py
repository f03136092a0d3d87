"""Submit, look up and wait for jobs: the API the CLI, make and beat share.

A job is resolved once, at submission: its rows keep the resolved host list, so a
later inventory edit does not change what a running job means. It then fans out as
``chord(group(run_on_host...), finish_job)`` published with the callback's task id equal
to the job id, so ``AsyncResult(job_id).get()`` returns the job summary.
"""

from __future__ import annotations

import getpass
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import chord, group
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import func, insert, select, text, update

from opsq import db
from opsq.app import app
from opsq.errors import BackendUnavailable, JobNotFound, OpsqError
from opsq.inventory import Host, Inventory
from opsq.models import HostResult, HostStatus, Job, JobStatus
from opsq.settings import DEFAULT_INVENTORY, get_settings

# Tasks are named rather than imported, so submitting does not load Fabric/paramiko.
RUN_ON_HOST = "opsq.run_on_host"
FINISH_JOB = "opsq.finish_job"
START_JOB = "opsq.start_job"
#: Seconds between two looks at the database while waiting for a job.
WAIT_POLL_INTERVAL = 0.05
#: Characters of a command shown in Flower's argument column.
ARGSREPR_COMMAND_LIMIT = 200

_SECRET = re.compile(
    r"(?i)(\b[\w-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key)[\w-]*\s*[=:]\s*|"
    r"--?(?:pass(?:word)?|secret|token)[= ]\s*|"
    r"\bbearer\s+|"  # Authorization: Bearer <token>
    r"(?:^|\s)-u\s*[^\s:]+:|"  # curl -u user:password
    r"\bmysql\b.*?\s-p(?=\S))([^\s'\"]+)"  # mysql -pPASSWORD; a closing quote stays
)
# user:password@ in URLs (postgres://u:pw@h, https://u:pw@h)
_URL_PASSWORD = re.compile(r"(://[^\s:/@]+:)([^\s@/]+)(@)")


def mask_secrets(command: str) -> str:
    """The command with values of password/secret/token-looking options masked.

    Best effort for display (Flower, the result table): recognises NAME=value for
    names with pass/secret/token/api-key, --password/--secret/--token VALUE, Bearer
    tokens, curl's -u user:pw, mysql's -pPW and passwords in URLs.
    """
    masked = _SECRET.sub(lambda m: m.group(1) + "****", command)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + "****" + m.group(3), masked)


@dataclass(frozen=True)
class JobSpec:
    """What to run where; ``None`` options fall back to inventory variables and settings."""

    command: str
    pattern: str
    inventory: str | None = None
    command_timeout: float | None = None
    connect_timeout: float | None = None
    rerun_safe: bool = False
    submitted_by: str | None = None
    schedule_id: int | None = None
    schedule: str | None = None


def load_inventory(path: str | None = None) -> Inventory:
    """The inventory at ``path``, else ``OPSQ_INVENTORY``; the implicit localhost if the
    default file does not exist."""
    settings = get_settings()
    chosen = path or str(settings.inventory_path())
    default = str(settings.inventory_path()) if settings.inventory == DEFAULT_INVENTORY else None
    return Inventory.from_path_or_default(chosen, default_path=default)


def resolve(pattern: str, inventory: str | None = None) -> list[Host]:
    """The hosts ``pattern`` selects. Raises InventoryError or PatternError."""
    return load_inventory(inventory).resolve(pattern)


def create(spec: JobSpec, job_id: str | None = None) -> str:
    """Resolve the pattern and insert the job with one pending row per host.

    Raises PatternError/InventoryError before anything is written, BackendUnavailable
    when PostgreSQL is down.
    """
    if not spec.command.strip():
        raise OpsqError("the command is empty")
    for name, value in (("timeout", spec.command_timeout),
                        ("connect timeout", spec.connect_timeout)):
        if value is not None and value <= 0:
            raise OpsqError(f"the {name} must be a positive number of seconds, not {value}")
    limit = get_settings().max_command_timeout
    if (spec.command_timeout or get_settings().command_timeout) > limit:
        raise OpsqError(
            f"a command timeout above {limit:g} s is refused: RabbitMQ would drop the "
            "worker's channel first (consumer_timeout); raise OPSQ_MAX_COMMAND_TIMEOUT "
            "together with consumer_timeout (deploy/README.md)")
    inv = load_inventory(spec.inventory)
    hosts = inv.resolve(spec.pattern)
    job_id = job_id or str(uuid.uuid4())
    with db.session_scope() as session:
        session.execute(insert(Job).values(
            id=job_id, command=spec.command, pattern=spec.pattern, inventory=inv.source,
            hosts=[h.name for h in hosts], host_count=len(hosts),
            status=JobStatus.QUEUED.value, submitted_by=spec.submitted_by or _whoami(),
            command_timeout=spec.command_timeout, connect_timeout=spec.connect_timeout,
            rerun_safe=spec.rerun_safe, schedule_id=spec.schedule_id, schedule=spec.schedule,
        ))
        session.execute(insert(HostResult), [
            {"job_id": job_id, "host": h.name, "target": h.to_dict(),
             "status": HostStatus.PENDING.value}
            for h in hosts
        ])
    return job_id


def record_failed_submission(spec: JobSpec, job_id: str, reason: str) -> None:
    """Keep a job that could not start (e.g. a schedule's pattern no longer matches) as a
    row with status ``error``, so it shows in ``opsq jobs`` and SQL instead of vanishing."""
    with db.session_scope() as session:
        session.execute(insert(Job).values(
            id=job_id, command=spec.command, pattern=spec.pattern,
            inventory=spec.inventory or "", hosts=[], host_count=0,
            status=JobStatus.ERROR.value, submitted_by=spec.submitted_by or _whoami(),
            schedule_id=spec.schedule_id, schedule=spec.schedule, error=reason,
            finished_at=func.now(),
        ))


def job_signature(job_id: str) -> chord:
    """The job's chord: one ``run_on_host`` per host, then ``finish_job`` with the job id."""
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        hosts, command = list(job.hosts), job.command
    shown = mask_secrets(command)[:ARGSREPR_COMMAND_LIMIT]
    # A list, not a generator: the backend joins chords of known size with a counter
    # and would fall back to polling (celery.chord_unlock) for a lazy header.
    header = group([
        app.signature(RUN_ON_HOST, (job_id, host), immutable=True).set(
            task_id=host_task_id(job_id, host),
            argsrepr=repr((host, shown)), kwargsrepr=repr({"job": job_id}),
        )
        for host in hosts
    ])
    body = app.signature(FINISH_JOB, (job_id,)).set(task_id=job_id, argsrepr=repr((job_id,)))
    # The chord's own task id becomes the header's group id (the body keeps the job id).
    return chord(header, body).set(task_id=_derived_id(job_id, "hosts"))


#: Namespace of the ids derived from a job id: fanning a job out again (a start that was
#: redelivered after a crash mid-publish) reuses the same group and task ids, so hosts
#: already done, running or queued are recognised instead of run twice.
JOB_ID_NAMESPACE = uuid.UUID("6f707371-0000-4000-8000-6a6f62696473")


def _derived_id(job_id: str, what: str) -> str:
    return str(uuid.uuid5(JOB_ID_NAMESPACE, f"{job_id}/{what}"))


def host_task_id(job_id: str, host: str) -> str:
    """The Celery task id of a job's task for ``host`` (the same on every fan-out)."""
    return _derived_id(job_id, f"host/{host}")


def job_status(job_id: str) -> JobStatus | None:
    """The job's status, or None when there is no such job."""
    with db.session_scope() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return None if status is None else JobStatus(status)


def submit(spec: JobSpec) -> AsyncResult:
    """Record the job and queue its start; returns at once with the job's AsyncResult.

    One message is published whatever the number of hosts (``opsq.start_job`` fans the
    job out from a worker). Raises PatternError/InventoryError (nothing written),
    BackendUnavailable (the job row is kept with status ``error`` and the reason, so
    nothing is silently lost).
    """
    job_id = create(spec)
    try:
        app.send_task(START_JOB, (job_id,), argsrepr=repr((job_id,)))
    except (BrokerOperationalError, OSError) as exc:
        safe = app.connection_for_write().as_uri()
        message = (f"cannot reach RabbitMQ at {safe}: {exc} "
                   "(is it running? check OPSQ_BROKER_URL)")
        with db.session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                status=JobStatus.ERROR.value, error=message, finished_at=func.now()))
            session.execute(update(HostResult).where(HostResult.job_id == job_id).values(
                status=HostStatus.ERROR.value, error="job was never queued: " + message))
        raise BackendUnavailable(message) from exc
    return AsyncResult(job_id, app=app)


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still record something
        return "unknown"


_COUNTS = text(
    "SELECT status, count(*) AS n FROM host_results WHERE job_id = :job GROUP BY status"
)


def finish(job_id: str) -> dict[str, Any]:
    """Close the job: count its hosts by status, set its final status, return the summary."""
    with db.session_scope() as session:
        counts = {r.status: r.n for r in session.execute(_COUNTS, {"job": job_id})}
        unfinished = counts.get("pending", 0) + counts.get("running", 0)
        ok = counts.get(HostStatus.OK.value, 0)
        total = sum(counts.values())
        status = JobStatus.SUCCEEDED if ok == total and total else JobStatus.FAILED
        values: dict[str, Any] = {
            f"{s.value}_count": counts.get(s.value, 0)
            for s in HostStatus if s.finished
        }
        session.execute(update(Job).where(Job.id == job_id).values(
            status=status.value, finished_at=func.now(),
            duration=func.extract("epoch", func.now() - Job.submitted_at),
            error=f"{unfinished} host(s) never reported" if unfinished else None,
            **values,
        ))
    return summary(job_id)


def _job(session: Any, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r} (opsq jobs lists recent jobs)")
    return job


def summary(job_id: str) -> dict[str, Any]:
    """The job as a JSON-able dict: status, counts, and per host status and exit code."""
    with db.session_scope() as session:
        job = _job(session, job_id)
        rows = session.execute(
            select(HostResult.host, HostResult.status, HostResult.exit_code, HostResult.error)
            .where(HostResult.job_id == job_id).order_by(HostResult.id)
        ).all()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "job_id": job.id,
            "status": job.status,
            "succeeded": job.status == JobStatus.SUCCEEDED.value,
            # Masked: the summary is stored in celery_taskmeta and shown by Flower.
            "command": mask_secrets(job.command),
            "pattern": job.pattern,
            "total": job.host_count,
            "done": sum(n for s, n in counts.items() if HostStatus(s).finished),
            "counts": counts,
            "hosts": {r.host: {"status": r.status, "exit_code": r.exit_code} for r in rows},
            "failed_hosts": {
                r.host: r.error or f"exit code {r.exit_code}"
                for r in rows if r.status != HostStatus.OK.value and HostStatus(r.status).finished
            },
            "submitted_by": job.submitted_by,
            "submitted_at": job.submitted_at.isoformat() if job.submitted_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "duration": job.duration,
            "error": job.error,
        }


def host_results(job_id: str) -> list[dict[str, Any]]:
    """Every host's full result (output included), in inventory order."""
    with db.session_scope() as session:
        _job(session, job_id)
        rows = session.scalars(
            select(HostResult).where(HostResult.job_id == job_id).order_by(HostResult.id)
        ).all()
        return [
            {
                "host": r.host, "status": r.status, "exit_code": r.exit_code,
                "stdout": r.stdout, "stderr": r.stderr, "truncated": r.truncated,
                "stdout_bytes": r.stdout_bytes, "stderr_bytes": r.stderr_bytes,
                "started_at": r.started_at.isoformat() if r.started_at else None,
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "duration": r.duration, "attempt": r.attempt, "worker": r.worker,
                "error": r.error,
            }
            for r in rows
        ]


def recent(limit: int = 20) -> list[dict[str, Any]]:
    """The newest jobs first, without per-host detail."""
    with db.session_scope() as session:
        jobs = session.scalars(
            select(Job).order_by(Job.submitted_at.desc()).limit(limit)
        ).all()
        return [
            {"job_id": j.id, "status": j.status, "command": j.command, "pattern": j.pattern,
             "total": j.host_count, "ok": j.ok_count,
             "submitted_at": j.submitted_at.isoformat(), "duration": j.duration,
             "submitted_by": j.submitted_by}
            for j in jobs
        ]


def wait(
    job_id: str,
    timeout: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Block until the job is finished; returns its summary. Raises TimeoutError."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        with db.session_scope() as session:
            job = _job(session, job_id)
            finished = JobStatus(job.status).finished
            done = session.scalar(
                select(func.count()).select_from(HostResult).where(
                    HostResult.job_id == job_id,
                    HostResult.status.notin_([HostStatus.PENDING.value,
                                              HostStatus.RUNNING.value]))
            )
            total = job.host_count
        if on_progress and (done, total) != last:
            on_progress(done, total)
            last = (done, total)
        if finished:
            return summary(job_id)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout:g} s "
                               f"({done}/{total} hosts done)")
        time.sleep(WAIT_POLL_INTERVAL)
