"""Submit, look up and wait for jobs: the API the CLI, make and beat share.

A job is resolved once, at submission: its rows keep the resolved host list, so a
later inventory edit does not change what a running job means. It then fans out as
``chord(group(run_hosts(chunk)...), finish_job)`` published with the callback's task id
equal to the job id, so ``AsyncResult(job_id).get()`` returns the job summary. Status
transitions belong to ``opsq.jobs.state``; this module only reads them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Signature, chord, group
from celery.result import AsyncResult
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import OperationalError

from opsq.app import app, fleet_queue
from opsq.errors import BackendUnavailable, InventoryError, OpsqError
from opsq.inventory import Host, Inventory, load_inventory
from opsq.jobs import rolling, state, steering, webhooks
from opsq.jobs.results import JobSummary, job_row, summary
from opsq.jobs.spec import (
    JobSpec,
    check_local_hosts,
    check_prompt_lifetime,
    check_timeouts,
    mask_secrets,
    whoami,
)
from opsq.settings import get_settings
from opsq.store import db, files
from opsq.store.models import HostResult, HostStatus, Job, JobStatus

# Tasks are named rather than imported, so submitting does not load Fabric/paramiko.
RUN_HOSTS = "opsq.run_hosts"
FINISH_JOB = "opsq.finish_job"
#: A job of enough hosts fans out as at least this many tasks (see ``chunks``).
MIN_CHUNKS = 8
#: Characters of a command shown in Flower's argument column.
ARGSREPR_COMMAND_LIMIT = 200

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
    check_timeouts(spec.command_timeout, spec.connect_timeout, spec.deadline)
    notify = webhooks.check_urls(spec.notify)
    inv = load_inventory(spec.inventory)
    hosts = inv.resolve(spec.pattern) if spec.hosts is None else _named(inv, spec.hosts)
    check_local_hosts(hosts, spec.local_hosts)
    for h in hosts:
        h.site  # noqa: B018  (an opsq_site that is not a site's name is refused here)
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
            status=JobStatus.QUEUED.value, submitted_by=spec.submitted_by or whoami(),
            command_timeout=spec.command_timeout, connect_timeout=spec.connect_timeout,
            rerun_safe=spec.rerun_safe, schedule_id=spec.schedule_id, schedule=spec.schedule,
            kind=spec.kind, params=spec.params, notify=notify, rerun_of=spec.rerun_of,
            batch_size=roll.batch_size, batch_pause=roll.batch_pause,
            current_batch=1 if roll.batch_size else None, max_fail=roll.max_fail,
            retries=roll.retries, retry_delay=roll.retry_delay, retry_on=roll.retry_on,
            deadline_at=(func.now() + timedelta(seconds=spec.deadline)
                         if spec.deadline is not None else None),
        ))
        state.add_hosts(session.connection(), job_id,
                        [(h.name, json.dumps(h.run_record())) for h in hosts],
                        batch_size=roll.batch_size, sites=[h.site for h in hosts])
        if on_record is not None:
            on_record(session.connection(), job_id)
    return job_id, first_batch([h.name for h in hosts], roll.batch_size)


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
            status=JobStatus.ERROR.value, submitted_by=spec.submitted_by or whoami(),
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


_SITES = text("SELECT host, site FROM host_results WHERE job_id = :job "
              "AND host = ANY(CAST(:hosts AS text[])) AND site IS NOT NULL")


def routed_chunks(job_id: str, hosts: list[str]) -> list[tuple[str, list[str]]]:
    """The job's hosts as (queue, chunk) pairs: each site's hosts go to its queue
    (``opsq.fleet.<site>``), in chunks of their own; hosts without a site to
    ``opsq.fleet``. Inventory order is kept within each site."""
    with db.session_scope() as session:
        site_of = dict(session.execute(_SITES, {"job": job_id, "hosts": list(hosts)}).all())
    by_site: dict[str | None, list[str]] = {}
    for h in hosts:
        by_site.setdefault(site_of.get(h), []).append(h)
    return [(fleet_queue(site), part) for site, members in by_site.items()
            for part in chunks(members, get_settings().chunk_size)]


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
            task_id=_derived_id(job_id, f"chunk/{i}{again}"), queue=queue,
            argsrepr=repr((part, shown)), kwargsrepr=repr({"job": job_id}),
        )
        for i, (queue, part) in enumerate(routed_chunks(job_id, hosts))
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
        job = job_row(session, job_id)
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
        for i, (queue, part) in enumerate(routed_chunks(job_id, hosts)):
            app.send_task(RUN_HOSTS, (job_id, part), chord=callback_signature(job_id),
                          task_id=_derived_id(job_id, f"{tag}/chunk/{i}"), queue=queue,
                          countdown=countdown or None, argsrepr=repr((part, shown)),
                          kwargsrepr=repr({"job": job_id}))
    except (BrokerOperationalError, OSError) as exc:
        raise broker_unavailable(exc) from exc


def broker_unavailable(exc: Exception) -> BackendUnavailable:
    return BackendUnavailable.broker(app.connection_for_write().as_uri(), exc)


#: Namespace of the ids derived from a job id: fanning a job out again reuses the same
#: group and task ids, so hosts already done, running or queued are recognised instead
#: of run twice.
JOB_ID_NAMESPACE = uuid.UUID("6f707371-0000-4000-8000-6a6f62696473")


def _derived_id(job_id: str, what: str) -> str:
    return str(uuid.uuid5(JOB_ID_NAMESPACE, f"{job_id}/{what}"))


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
        job = job_row(session, job_id)
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
            status = job_row(session, job_id).status
            request = steering.cancel(session.connection(), job_id)
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
