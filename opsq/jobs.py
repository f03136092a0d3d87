"""Submit, look up and wait for jobs: the API the CLI, make and beat share.

A job is resolved once, at submission: its rows keep the resolved host list, so a
later inventory edit does not change what a running job means. It then fans out as
``chord(group(run_hosts(chunk)...), finish_job)`` published with the callback's task id
equal to the job id, so ``AsyncResult(job_id).get()`` returns the job summary. Status
transitions belong to ``opsq.state``; this module only reads them.
"""

from __future__ import annotations

import getpass
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from celery import Signature, chord, group
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import OperationalError

from opsq import control, db, files, limits, rolling, state, webhooks
from opsq.app import app
from opsq.errors import BackendUnavailable, InventoryError, JobNotFound, OpsqError
from opsq.inventory import Host, Inventory
from opsq.inventory.hosts import CONNECTION_LOCAL
from opsq.models import HostResult, HostStatus, Job, JobStatus
from opsq.notify import Listener
from opsq.settings import DEFAULT_INVENTORY, get_settings

# Tasks are named rather than imported, so submitting does not load Fabric/paramiko.
RUN_HOSTS = "opsq.run_hosts"
FINISH_JOB = "opsq.finish_job"
#: A job of enough hosts fans out as at least this many tasks (see ``chunks``).
MIN_CHUNKS = 8
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
    #: What the job does on each host (opsq.actions): a command, put, get or script; its
    #: parameters, and the file a put or script carries (stored once with the job).
    kind: str = "command"
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    payload: bytes | None = field(default=None, repr=False, hash=False)
    #: Rolling execution (opsq.rolling): hosts per batch (N or "P%"), seconds between
    #: batches, failures after which no further batch starts (N or "P%"); retries of a
    #: failed host, seconds between them, and on what ('failure' or 'unreachable').
    batch_size: str | int | None = None
    batch_pause: float | None = None
    max_fail: str | int | None = None
    retries: int = 0
    retry_delay: float | None = None
    retry_on: str | None = None
    #: URLs the job's summary is POSTed to when it ends (opsq.webhooks).
    notify: list[str] = field(default_factory=list, hash=False)
    #: Whether the job may run on hosts with a local connection (on the worker itself).
    #: Jobs from the console and API may not, unless OPSQ_WEB_LOCAL_HOSTS says so.
    local_hosts: bool = True
    #: These hosts by name instead of what the pattern selects (a re-run: the pattern is
    #: kept to show what the first job meant).
    hosts: list[str] | None = field(default=None, hash=False)
    #: The job this one runs again.
    rerun_of: str | None = None


#: The JobSpec fields a stored job (a schedule's, a by-name client's) may set: everything
#: but who submits it, the schedule it comes from, the file's bytes and re-run bookkeeping.
STORED_FIELDS = ("kind", "command", "pattern", "inventory", "command_timeout",
                 "connect_timeout", "rerun_safe", "params", "batch_size", "batch_pause",
                 "max_fail", "retries", "retry_delay", "retry_on", "notify", "local_hosts")


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The stored form of ``spec`` (JSON): its STORED_FIELDS that are set."""
    default = JobSpec(command="", pattern="")
    return {k: getattr(spec, k) for k in STORED_FIELDS
            if getattr(spec, k) != getattr(default, k) or k in ("kind", "command", "pattern")}


def spec_from_dict(data: Any) -> JobSpec:
    """A JobSpec from its stored form, checked: known fields of the right types, the
    kind's parameters as the command line makes them (``actions.check_params``), and a
    stored file for a put or script. Raises OpsqError naming what is wrong."""
    from opsq import actions

    if not isinstance(data, dict):
        raise OpsqError("a job spec must be an object")
    unknown = set(data) - set(STORED_FIELDS)
    if unknown:
        raise OpsqError(f"a job spec takes no {', '.join(sorted(map(str, unknown)))[:80]}")
    for key in ("command", "pattern"):
        if not isinstance(data.get(key), str):
            raise OpsqError(f"a job spec needs {key} as text")
    kind = data.get("kind", "command")
    params = actions.check_params(kind, data.get("params") or {})
    if params.get("sha256"):
        with db.session_scope() as session:
            if not files.exists(session.connection(), params["sha256"]):
                raise OpsqError(f"the {kind} job's file {params['sha256'][:12]}… is not "
                                "stored: add the schedule from the command line, which "
                                "stores it")
    for key in ("rerun_safe", "local_hosts"):
        if key in data and not isinstance(data[key], bool):
            raise OpsqError(f"{key} must be true or false")
    if data.get("inventory") is not None and not isinstance(data["inventory"], str):
        raise OpsqError("the inventory must be a file path")
    notify = data.get("notify", [])
    if not isinstance(notify, list):
        raise OpsqError("notify must be a list of URLs")
    return JobSpec(**{**{k: v for k, v in data.items() if k != "params"},
                      "kind": kind, "params": params, "notify": list(notify)})


class LocalHostRefused(OpsqError):
    """The pattern selects a host with a local connection where those are not allowed."""


def check_local_hosts(hosts: list[Host], allowed: bool) -> None:
    """Raise LocalHostRefused when ``hosts`` has a local one and they are not allowed."""
    if allowed:
        return
    local = [h.name for h in hosts if h.connection == CONNECTION_LOCAL]
    if local:
        shown = ", ".join(local[:5]) + (f" and {len(local) - 5} more" if len(local) > 5 else "")
        raise LocalHostRefused(
            f"the pattern selects {shown}, with a local connection: the command would run "
            "on the worker itself, which jobs from the console may not do (an admin can "
            "allow it with OPSQ_WEB_LOCAL_HOSTS=1); leave them out of the pattern")


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


#: Called with the recording transaction's connection and the new job's id, to write what
#: must commit with the job or not at all (the console's audit entry).
OnRecord = Callable[[Any, str], None]


def create(spec: JobSpec, job_id: str | None = None) -> str:
    """Resolve the pattern and insert the job with one pending row per host; its id.

    Raises PatternError/InventoryError before anything is written, BackendUnavailable
    when PostgreSQL is down.
    """
    return _record(spec, job_id)[0]


def check_timeouts(command_timeout: float | None, connect_timeout: float | None) -> None:
    """Refuse a deadline that is not a finite number of seconds in range (InvalidNumber)."""
    if connect_timeout is not None:
        limits.seconds(connect_timeout, "the connect timeout", limits.MAX_CONNECT_TIMEOUT)
    limit = get_settings().max_command_timeout
    if command_timeout is not None:
        limits.seconds(command_timeout, "the timeout", math.inf)
    if (command_timeout or get_settings().command_timeout) > limit:
        raise limits.InvalidNumber(
            f"a command timeout above {limit:g} s is refused: RabbitMQ would drop the "
            "worker's channel first (consumer_timeout); raise OPSQ_MAX_COMMAND_TIMEOUT "
            "together with consumer_timeout (deploy/README.md)")


@dataclass(frozen=True)
class Plan:
    """A job spec, checked: its notification URLs, inventory, hosts and rollout."""

    notify: list[str]
    inventory: Inventory
    hosts: list[Host]
    rollout: rolling.Rollout


def plan(spec: JobSpec) -> Plan:
    """Check ``spec`` as submitting it would, writing nothing (the CLI does so before
    asking for a password). Raises OpsqError naming what is refused."""
    if not spec.command.strip():
        raise OpsqError("the command is empty")
    check_timeouts(spec.command_timeout, spec.connect_timeout)
    notify = webhooks.check_urls(spec.notify)
    inv = load_inventory(spec.inventory)
    hosts = inv.resolve(spec.pattern) if spec.hosts is None else _named(inv, spec.hosts)
    check_local_hosts(hosts, spec.local_hosts)
    roll = rolling.resolve(len(hosts), batch=spec.batch_size, pause=spec.batch_pause,
                           max_fail=spec.max_fail, retries=spec.retries,
                           retry_delay=spec.retry_delay, retry_on=spec.retry_on,
                           rerun_safe=spec.rerun_safe)
    if spec.params.get("become_prompt"):
        check_prompt_lifetime(roll, len(hosts), spec.command_timeout, spec.connect_timeout)
    return Plan(notify, inv, hosts, roll)


def _named(inv: Inventory, names: list[str]) -> list[Host]:
    """The hosts named, as the inventory has them now. Raises OpsqError for a name it no
    longer has, or a host opsq cannot run on."""
    gone = [n for n in names if n not in inv.hosts]
    found = inv.resolve(",".join(gone)) if gone and all(
        n in ("localhost", "127.0.0.1", "::1") for n in gone) else []
    if gone and not found:
        raise InventoryError(f"{', '.join(gone[:5])} no longer in the inventory "
                             f"{inv.source}: run the command again with a pattern instead")
    chosen = [inv.hosts[n] for n in names if n in inv.hosts] + found
    # As Inventory.resolve refuses them, and as an InventoryError: the console shows a
    # problem (it names the file) only to an admin's log.
    problems = [h.problem for h in chosen if h.problem]
    if problems:
        raise InventoryError(problems[0])
    return chosen


def _record(spec: JobSpec, job_id: str | None = None, on_record: OnRecord | None = None
            ) -> tuple[str, list[str]]:
    checked = plan(spec)
    notify, inv, hosts, roll = checked.notify, checked.inventory, checked.hosts, checked.rollout
    job_id = job_id or str(uuid.uuid4())
    with db.session_scope() as session:
        if spec.payload is not None:
            files.store(session.connection(), [spec.payload])
        session.execute(insert(Job).values(
            id=job_id, command=spec.command, pattern=spec.pattern, inventory=inv.source,
            hosts=[h.name for h in hosts], host_count=len(hosts),
            status=JobStatus.QUEUED.value, submitted_by=spec.submitted_by or _whoami(),
            command_timeout=spec.command_timeout, connect_timeout=spec.connect_timeout,
            rerun_safe=spec.rerun_safe, schedule_id=spec.schedule_id, schedule=spec.schedule,
            kind=spec.kind, params=spec.params, notify=notify, rerun_of=spec.rerun_of,
            batch_size=roll.batch_size, batch_pause=roll.batch_pause,
            current_batch=1 if roll.batch_size else None, max_fail=roll.max_fail,
            retries=roll.retries, retry_delay=roll.retry_delay, retry_on=roll.retry_on,
        ))
        state.add_hosts(session.connection(), job_id,
                        [(h.name, json.dumps(h.run_record())) for h in hosts],
                        batch_size=roll.batch_size)
        if on_record is not None:
            on_record(session.connection(), job_id)
    return job_id, first_batch([h.name for h in hosts], roll.batch_size)


def check_prompt_lifetime(roll: rolling.Rollout, hosts: int, command_timeout: float | None,
                          connect_timeout: float | None) -> None:
    """Refuse a job with a typed sudo password (-K) that could outlive the broker queue
    keeping it (``opsq.prompted.SECRET_QUEUE_EXPIRES``): its later hosts would find no
    password. The worst case counts every batch's deadlines, the pauses between batches
    and every retry with its delay. Raises OpsqError."""
    from opsq.prompted import SECRET_QUEUE_EXPIRES

    s = get_settings()
    per_run = (command_timeout or s.command_timeout) + (connect_timeout or s.connect_timeout)
    batches = -(-hosts // roll.batch_size) if roll.batch_size else 1
    worst = (batches * per_run + (batches - 1) * (roll.batch_pause or 0)
             + roll.retries * ((roll.retry_delay or 0) + per_run))
    if worst > SECRET_QUEUE_EXPIRES:
        raise OpsqError(
            f"with -K the typed password is kept {SECRET_QUEUE_EXPIRES} s, and this job may "
            f"run {worst:g} s ({batches} batch(es) with their deadlines, pauses and "
            "retries): give the workers the password another way (OPSQ_BECOME_PASSWORD_FILE "
            "or ansible_become_pass), or shorten it (--timeout, --pause, --batch-size, "
            "--retries)")


def first_batch(hosts: list[str], batch_size: int | None) -> list[str]:
    """The hosts a job starts with: all of them, or a rolling job's first batch."""
    return hosts[:batch_size] if batch_size else hosts


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


def chunks(hosts: list[str], size: int) -> list[list[str]]:
    """The job's hosts cut into the tasks that run them, in order and near-equal: at most
    ``size`` hosts each, and at least MIN_CHUNKS tasks when there are that many hosts, so
    several workers can share a job."""
    n = len(hosts)
    count = max(-(-n // size), min(n, MIN_CHUNKS))
    if count == 0:
        return []
    base, extra = divmod(n, count)
    bounds = [i * base + min(i, extra) for i in range(count + 1)]
    return [hosts[bounds[i]:bounds[i + 1]] for i in range(count)]


def callback_signature(job_id: str) -> Signature:
    """The job's chord callback: ``finish_job``, whose task id is the job id."""
    return app.signature(FINISH_JOB, (job_id,)).set(task_id=job_id, argsrepr=repr((job_id,)))


def job_signature(job_id: str, hosts: list[str], command: str, again: str = "") -> chord:
    """The job's chord: ``run_hosts`` per chunk of hosts, then ``finish_job``.

    Task ids derive from the job id, so fanning the same job out again (a submitter that
    died mid-publish, a redelivered ``submit_job``) publishes the same tasks, and their
    hosts are recognised as taken or done instead of run twice. ``again`` names a later
    sending of some of the hosts (the sweep's), whose tasks get ids of their own.
    """
    shown = mask_secrets(command)[:ARGSREPR_COMMAND_LIMIT]
    # A list, not a generator: the backend joins chords of known size itself and would
    # fall back to polling (celery.chord_unlock) for a lazy header.
    header = group([
        app.signature(RUN_HOSTS, (job_id, part), immutable=True).set(
            task_id=_derived_id(job_id, f"chunk/{i}{again}"),
            argsrepr=repr((part, shown)), kwargsrepr=repr({"job": job_id}),
        )
        for i, part in enumerate(chunks(hosts, get_settings().chunk_size))
    ])
    # The chord's own task id becomes the header's group id (the body keeps the job id).
    return chord(header, callback_signature(job_id)).set(
        task_id=_derived_id(job_id, f"hosts{again}"))


def fan_out(job_id: str) -> None:
    """Publish a recorded job's tasks and mark it published; idempotent.

    Raises BackendUnavailable when RabbitMQ refuses the publish (the job stays recorded
    and unpublished: the sweeper publishes it once the broker is back).
    """
    with db.session_scope() as session:
        job = _job(session, job_id)
        hosts, command = first_batch(list(job.hosts), job.batch_size), job.command
    _publish_and_mark(job_id, hosts, command)


def _publish_and_mark(job_id: str, hosts: list[str], command: str) -> None:
    publish(job_id, hosts, command)
    with db.session_scope() as session:
        state.mark_published(session.connection(), job_id)


def publish(job_id: str, hosts: list[str], command: str, again: str = "") -> None:
    """Publish the job's chord. Raises BackendUnavailable when RabbitMQ refuses it."""
    try:
        job_signature(job_id, hosts, command, again).apply_async()
    except (BrokerOperationalError, OSError) as exc:
        raise broker_unavailable(exc) from exc


def send_hosts(job_id: str, hosts: list[str], command: str, tag: str,
               countdown: float = 0) -> None:
    """Send some of a running job's hosts (a later batch, a retry) as tasks of the job's
    chord, after ``countdown`` seconds. ``tag`` makes their task ids (one per sending).
    Raises BackendUnavailable; the sweep resends due hosts nobody took anyway."""
    shown = mask_secrets(command)[:ARGSREPR_COMMAND_LIMIT]
    try:
        for i, part in enumerate(chunks(hosts, get_settings().chunk_size)):
            app.send_task(RUN_HOSTS, (job_id, part), chord=callback_signature(job_id),
                          task_id=_derived_id(job_id, f"{tag}/chunk/{i}"),
                          countdown=countdown or None, argsrepr=repr((part, shown)),
                          kwargsrepr=repr({"job": job_id}))
    except (BrokerOperationalError, OSError) as exc:
        raise broker_unavailable(exc) from exc


def broker_unavailable(exc: Exception) -> BackendUnavailable:
    safe = app.connection_for_write().as_uri()
    return BackendUnavailable(f"cannot reach RabbitMQ at {safe}: {exc} "
                              "(is it running? check OPSQ_BROKER_URL)")


#: Namespace of the ids derived from a job id: fanning a job out again reuses the same
#: group and task ids, so hosts already done, running or queued are recognised instead
#: of run twice.
JOB_ID_NAMESPACE = uuid.UUID("6f707371-0000-4000-8000-6a6f62696473")


def _derived_id(job_id: str, what: str) -> str:
    return str(uuid.uuid5(JOB_ID_NAMESPACE, f"{job_id}/{what}"))


def job_action(job_id: str) -> tuple[str, dict[str, Any]]:
    """The job's kind and parameters. Raises JobNotFound."""
    with db.session_scope() as session:
        job = _job(session, job_id)
        return job.kind, dict(job.params or {})


def job_status(job_id: str) -> JobStatus | None:
    """The job's status, or None when there is no such job."""
    with db.session_scope() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return None if status is None else JobStatus(status)


def submit(spec: JobSpec, before_publish: Callable[[str], None] | None = None,
           on_record: OnRecord | None = None) -> AsyncResult:
    """Record the job and publish its tasks; returns at once with the job's AsyncResult.

    Raises PatternError/InventoryError (nothing written), BackendUnavailable: PostgreSQL
    down (nothing written), or RabbitMQ down (the job row is kept with status ``error``
    and the reason, so nothing is silently lost).
    """
    job_id, hosts = _record(spec, on_record=on_record)
    try:
        if before_publish is not None:
            before_publish(job_id)
        _publish_and_mark(job_id, hosts, spec.command)
    except BackendUnavailable as exc:
        # Some tasks may have gone out before the broker refused one: their hosts run
        # and count as usual; the others end as errors, so the job still ends.
        with db.session_scope() as session:
            state.abandon(session.connection(), job_id, "job was never queued: " + str(exc))
        raise
    return AsyncResult(job_id, app=app)


def rerun_spec(job_id: str, failed_only: bool = False) -> JobSpec:
    """The spec of job ``job_id`` again, on every host it had or (``failed_only``) on those
    that did not end ``ok``, recording which job it repeats. Raises JobNotFound, or
    OpsqError: the job is not finished, nothing failed, or the file it carried is gone."""
    with db.session_scope() as session:
        job = _job(session, job_id)
        if not JobStatus(job.status).finished:
            raise OpsqError(f"job {job_id} is still {job.status}: re-run it once it ends "
                            f"(opsq cancel {job_id} stops it)")
        names = list(job.hosts or [])
        if failed_only:
            ok = set(session.scalars(select(HostResult.host).where(
                HostResult.job_id == job_id, HostResult.status == HostStatus.OK.value)))
            names = [n for n in names if n not in ok]
            if not names:
                raise OpsqError(f"every host of job {job_id} ended ok: nothing to run again")
        if not names:
            raise OpsqError(f"job {job_id} ran on no host ({job.error or 'it never started'})")
        params = dict(job.params or {})
        if params.get("sha256") and not files.exists(session.connection(), params["sha256"]):
            raise OpsqError(f"the file job {job_id} carried is no longer kept: run the "
                            f"{job.kind} again from its file")
        return JobSpec(
            command=job.command, pattern=job.pattern, inventory=job.inventory or None,
            command_timeout=job.command_timeout, connect_timeout=job.connect_timeout,
            rerun_safe=job.rerun_safe, kind=job.kind, params=params,
            batch_size=job.batch_size, batch_pause=job.batch_pause, max_fail=job.max_fail,
            retries=job.retries or 0, retry_delay=job.retry_delay, retry_on=job.retry_on,
            notify=list(job.notify or []), hosts=names, rerun_of=job.id)


def cancel(job_id: str, on_record: OnRecord | None = None) -> JobSummary:
    """Stop a queued or running job: hosts not started end ``cancelled`` now, running ones
    are stopped on their hosts by their workers within about a second (``CancelWatcher``)
    and end ``cancelled``; the job then ends ``cancelled``. Returns the summary as of now.

    Raises JobNotFound, or OpsqError for a job already finished (nothing is changed)."""
    try:
        with db.session_scope() as session:
            status = _job(session, job_id).status
            request = control.cancel(session.connection(), job_id)
            if request.accepted and on_record is not None:
                on_record(session.connection(), job_id)
    except OperationalError as exc:
        raise db.unavailable(exc) from exc
    if not request.accepted:
        raise OpsqError(f"job {job_id} is already {status}: there is nothing to cancel")
    if request.closed:
        # Nothing was running: no host task will close the job and send its callback.
        try:
            callback_signature(job_id).delay([])
            with db.session_scope() as session:
                state.mark_announced(session.connection(), job_id)
        except (BrokerOperationalError, OSError):
            pass  # the sweep sends it once RabbitMQ is back (jobs.callback_sent_at)
    return summary(job_id)


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still record something
        return "unknown"


def _job(session: Any, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise no_such_job(job_id)
    return job


def no_such_job(job_id: str) -> JobNotFound:
    shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
    return JobNotFound(f"no job with id {shown!r} (opsq jobs lists recent jobs)")


# -- typed results ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRun:
    """One host's run of a job: status, exit code, output, timing."""

    host: str
    status: HostStatus
    exit_code: int | None
    stdout: str | None
    stderr: str | None
    truncated: bool
    stdout_bytes: int | None
    stderr_bytes: int | None
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    attempt: int
    worker: str | None
    error: str | None
    #: put: whether the host's file was written; put/get: the file's sha256.
    changed: bool | None = None
    sha256: str | None = None
    #: The batch of a rolling job the host ran in.
    batch: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is HostStatus.OK

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        for k in ("started_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


@dataclass(frozen=True)
class JobSummary:
    """Where a job stands, with each host's status and exit code (not their output)."""

    job_id: str
    status: JobStatus
    command: str  # masked: summaries are stored in celery_taskmeta and shown by Flower
    pattern: str
    total: int
    done: int
    counts: dict[str, int]
    hosts: dict[str, dict[str, Any]]
    failed_hosts: dict[str, str]
    submitted_by: str
    submitted_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    error: str | None
    #: 'command', 'put', 'get' or 'script' (opsq.actions).
    kind: str = "command"
    #: A rolling job: the batch in progress (or the last one) and how many there are.
    batch: int | None = None
    batches: int | None = None
    #: The job this one runs again (``opsq rerun``).
    rerun_of: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @property
    def finished(self) -> bool:
        return self.status.finished

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, as ``AsyncResult(job_id).get()`` returns it."""
        d = asdict(self)
        d["status"] = self.status.value
        d["succeeded"] = self.succeeded
        for k in ("submitted_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] else None
        if d["rerun_of"] is None:  # the summary of a first run is as it always was
            del d["rerun_of"]
        return d


def summary(job_id: str, with_hosts: bool = True) -> JobSummary:
    """The job's summary: status, counts, and per host status and exit code (without
    ``with_hosts``: the counts only, one grouped query however large the job)."""
    with db.session_scope() as session:
        job = _job(session, job_id)
        if with_hosts:
            rows = session.execute(
                select(HostResult.host, HostResult.status, HostResult.exit_code,
                       HostResult.error, HostResult.changed)
                .where(HostResult.job_id == job_id).order_by(HostResult.id)
            ).all()
            counts: dict[str, int] = {}
            for r in rows:
                counts[r.status] = counts.get(r.status, 0) + 1
        else:
            rows = []
            counts = dict(session.execute(
                select(HostResult.status, func.count()).where(HostResult.job_id == job_id)
                .group_by(HostResult.status)).all())
        return JobSummary(
            job_id=job.id, status=JobStatus(job.status), command=mask_secrets(job.command),
            pattern=job.pattern, total=job.host_count, done=job.done_count, counts=counts,
            hosts={r.host: {"status": r.status, "exit_code": r.exit_code,
                            **({} if r.changed is None else {"changed": r.changed})}
                   for r in rows},
            failed_hosts={
                r.host: r.error or f"exit code {r.exit_code}" for r in rows
                if r.status != HostStatus.OK.value and HostStatus(r.status).finished},
            submitted_by=job.submitted_by, submitted_at=job.submitted_at,
            finished_at=job.finished_at, duration=job.duration, error=job.error,
            kind=job.kind, batch=job.current_batch, rerun_of=job.rerun_of,
            batches=-(-job.host_count // job.batch_size) if job.batch_size else None,
        )


def progress(job_id: str) -> JobSummary:
    """The job's summary without its hosts: status and counts (``summary``)."""
    return summary(job_id, with_hosts=False)


#: Characters of each stream kept by ``host_runs(..., preview=True)``.
PREVIEW_CHARS = 512
#: Rows fetched at a time when reading a job's hosts.
HOST_ROWS_PAGE = 1000


def host_runs(job_id: str, preview: bool = False, host: str | None = None,
              offset: int = 0, limit: int | None = None) -> list[HostRun]:
    """Every host's run, in inventory order; with ``preview`` only the first
    PREVIEW_CHARS of each stream are read (a table of a large job stays light); ``host``:
    that host's run only; ``offset``/``limit``: one page of them."""
    out_col, err_col = HostResult.stdout, HostResult.stderr
    if preview:
        out_col, err_col = func.left(out_col, PREVIEW_CHARS), func.left(err_col, PREVIEW_CHARS)
    with db.session_scope() as session:
        _job(session, job_id)
        rows = session.execute(
            select(HostResult.host, HostResult.status, HostResult.exit_code,
                   out_col.label("stdout"), err_col.label("stderr"), HostResult.truncated,
                   HostResult.stdout_bytes, HostResult.stderr_bytes, HostResult.started_at,
                   HostResult.finished_at, HostResult.duration, HostResult.attempt,
                   HostResult.worker, HostResult.error, HostResult.changed,
                   HostResult.sha256, HostResult.batch)
            .where(HostResult.job_id == job_id,
                   *([HostResult.host == host] if host is not None else []))
            .order_by(HostResult.id).offset(offset).limit(limit)
            .execution_options(yield_per=HOST_ROWS_PAGE)
        )
        return [HostRun(**{**r._asdict(), "status": HostStatus(r.status)}) for r in rows]


_ATTEMPTS = text("""
    SELECT host, attempt, status, exit_code, stdout, stderr, error, duration, finished_at
    FROM host_attempts WHERE job_id = :job ORDER BY host, attempt
""")


def attempts(job_id: str) -> list[dict[str, Any]]:
    """The earlier runs of the job's retried hosts (the host rows hold the last runs)."""
    with db.session_scope() as session:
        _job(session, job_id)
        return [{**r._asdict(), "finished_at": r.finished_at.isoformat()}
                for r in session.execute(_ATTEMPTS, {"job": job_id})]


_OUTPUT_SINCE = text("""
    SELECT h.host, h.status, substr(COALESCE(h.stdout, ''), o.out_at + 1) AS out,
           substr(COALESCE(h.stderr, ''), o.err_at + 1) AS err,
           length(COALESCE(h.stdout, '')) AS out_len, length(COALESCE(h.stderr, '')) AS err_len
    FROM unnest(CAST(:hosts AS text[]), CAST(:out_at AS int[]), CAST(:err_at AS int[]))
        AS o(host, out_at, err_at)
    JOIN host_results h ON h.job_id = :job AND h.host = o.host
    ORDER BY h.id
""")


def follow_output(job_id: str, emit: Callable[[str, str, str], None],
                  host: str | None = None, follow: bool = False) -> None:
    """Call ``emit(host, stream, line)`` for each line the job's hosts printed (stream:
    'stdout' or 'stderr'), in the order they reach PostgreSQL. With ``follow``, keep going
    until the job has ended and all its output is out (woken by the job's notifications).
    A line still being written is held until its end, or until its host is done."""
    with db.session_scope() as session:
        _job(session, job_id)
        names = [r for (r,) in session.execute(
            select(HostResult.host).where(HostResult.job_id == job_id)
            .order_by(HostResult.id))]
    if host is not None:
        if host not in names:
            raise OpsqError(f"job {job_id} has no host {host!r}")
        names = [host]
    at = {(n, s): 0 for n in names for s in ("stdout", "stderr")}
    held = {k: "" for k in at}
    with Listener() as listener:
        while True:
            finished = _emit_new(job_id, names, at, held, emit)
            status = job_status(job_id)
            if not follow or (status is not None and status.finished and finished):
                for (name, stream), rest in held.items():
                    if rest:
                        emit(name, stream, rest)
                return
            listener.wait(WAIT_MAX_SLEEP)


def _emit_new(job_id: str, names: list[str], at: dict, held: dict,
              emit: Callable[[str, str, str], None]) -> bool:
    """Emit the complete lines printed since ``at``; True when every host has ended."""
    with db.session_scope() as session:
        rows = session.execute(_OUTPUT_SINCE, {
            "job": job_id, "hosts": names,
            "out_at": [at[(n, "stdout")] for n in names],
            "err_at": [at[(n, "stderr")] for n in names]}).all()
    done = True
    for r in rows:
        ended = HostStatus(r.status).finished
        done = done and ended
        for stream, new, length in (("stdout", r.out, r.out_len), ("stderr", r.err, r.err_len)):
            key = (r.host, stream)
            if length < at[key]:  # a retry started the host's output afresh
                at[key], held[key], new = 0, "", ""
            at[key] += len(new)
            *lines, held[key] = (held[key] + new).split("\n")
            if ended and held[key]:
                lines, held[key] = [*lines, held[key]], ""
            for line in lines:
                emit(r.host, stream, line)
    return done


def host_results(job_id: str) -> list[dict[str, Any]]:
    """Every host's full result (output included) as JSON-able dicts, in inventory order."""
    return [r.as_dict() for r in host_runs(job_id)]


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


#: Seconds a waiter sleeps at most between two looks at its job when no notification
#: comes (one lost to a database restart only delays it).
WAIT_MAX_SLEEP = 1.0

_PROGRESS = text(
    "SELECT status, done_count, host_count, current_batch, "
    + ", ".join(f"{s.value}_count" for s in state.FINAL_HOST_STATUSES)
    + " FROM jobs WHERE id = :job")


def wait(
    job_id: str,
    timeout: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_counts: Callable[[int, int, dict[str, int]], None] | None = None,
) -> JobSummary:
    """Block until the job is finished; returns its summary. Raises TimeoutError.

    ``on_progress(done, total)`` is called when the number of hosts done changes,
    ``on_counts(done, total, counts by status)`` when any count changes.

    Wakes on the job's notifications (``LISTEN``), not by polling; rides out a database
    restart (it looks again once PostgreSQL is back).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last = last_counts = None
    with Listener() as listener:
        while True:
            row, reachable = _progress(job_id)
            if row is None and reachable:
                raise no_such_job(job_id)
            if row is not None:
                progress = (row.done_count, row.host_count)
                if on_progress and progress != last:
                    on_progress(*progress)
                counts = {s.value: getattr(row, f"{s.value}_count")
                          for s in state.FINAL_HOST_STATUSES
                          if getattr(row, f"{s.value}_count")}
                if on_counts and (progress, counts) != last_counts:
                    on_counts(*progress, counts)
                last, last_counts = progress, (progress, counts)
                if JobStatus(row.status).finished:
                    return summary(job_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                done, total = last or (0, 0)
                raise TimeoutError(f"job {job_id} not finished after {timeout:g} s "
                                   f"({done}/{total} hosts done)")
            listener.wait(WAIT_MAX_SLEEP if remaining is None
                          else min(WAIT_MAX_SLEEP, remaining))


def _progress(job_id: str) -> tuple[Any, bool]:
    """The job's (status, done, total) row and whether PostgreSQL answered."""
    try:
        with db.get_engine().connect() as conn:
            return conn.execute(_PROGRESS, {"job": job_id}).first(), True
    except OperationalError:
        db.dispose_all()
        return None, False
