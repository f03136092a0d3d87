"""Housekeeping: the sweep that closes what dead deliveries left (``opsq.reconcile``,
also run by every worker), and the daily ``opsq-retention`` schedule's ``opsq.prune``."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from opsq.app import app
from opsq.errors import BackendUnavailable
from opsq.jobs import state, steering
from opsq.settings import get_settings
from opsq.status import HostStatus
from opsq.store import db, files

logger = logging.getLogger(__name__)

#: Jobs deleted per transaction, so pruning never holds long locks on a busy table.
PRUNE_BATCH = 1000
#: Rows of a job's per-host tables deleted per transaction: a job of 100,000 hosts is
#: emptied in steps of this many before its row goes, never in one long transaction.
PRUNE_ROWS = 5000

_OLD_JOBS = text(
    """
    SELECT id FROM jobs
    WHERE submitted_at < now() - make_interval(days => :days) AND status = ANY(:final)
    ORDER BY submitted_at LIMIT :batch
    """
)
#: The per-host tables of a job, emptied a step at a time (``PRUNE_ROWS``) before the job.
_PRUNE_ROWS = [text(
    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "
    f"WHERE job_id = ANY(CAST(:jobs AS text[])) LIMIT :rows)")
    for table in ("host_results", "host_attempts")]
#: The jobs, once emptied (leases and notifications, a few rows each, go with them).
_PRUNE_JOBS = text(
    "DELETE FROM jobs WHERE id = ANY(CAST(:jobs AS text[])) AND status = ANY(:final)")
_PRUNE_CHORDS = text(
    "DELETE FROM opsq_chords WHERE created_at < now() - make_interval(days => :days)"
)


#: Rows one sweep handles at most of each kind (the next sweep takes the rest).
SWEEP_BATCH = 100
#: Lease periods after its last publish before a job whose hosts nobody took is sent
#: again (its tasks may be lost; or only queued behind others: sending again is safe).
STALL_PERIODS = 10
#: Longest wait of a sweep for a row lock: it never holds up other work for long.
SWEEP_LOCK_TIMEOUT = "2s"


@dataclass
class SweepReport:
    interrupted: dict[str, list[str]] = field(default_factory=dict)
    rerun: dict[str, list[str]] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)
    resent: dict[str, list[str]] = field(default_factory=dict)
    released: dict[str, list[str]] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _sweeping() -> Iterator[Connection]:
    """A transaction of the sweep, which waits at most SWEEP_LOCK_TIMEOUT for a lock."""
    with db.get_engine().begin() as conn:
        conn.execute(text(f"SET LOCAL lock_timeout = '{SWEEP_LOCK_TIMEOUT}'"))
        yield conn


def sweep(grace: float | None = None) -> SweepReport:
    """Close what dead deliveries left, and publish what a dead submitter did not.

    * a running host whose lease died ``grace`` seconds ago (default: one lease period)
      and was not taken by a redelivery meanwhile: ``interrupted``, or back to pending
      and published again for a re-run-safe job;
    * a queued job recorded ``grace`` seconds ago whose fan-out was never published;
    * held hosts (a pause or retry delay longer than OPSQ_MAX_BROKER_DELAY) whose wait
      is over: they are sent;
    * a job published STALL_PERIODS lease periods ago whose hosts nobody took yet: they
      are sent again;
    * a job past its deadline (``--deadline``) with hosts no worker took (their site's
      workers are down): they end ``unreachable``;
    * a job closed ``grace`` seconds ago whose callback was never sent (the broker was
      away as it closed): it is sent, so Celery and Flower get the job's result.

    Every worker sweeps once a lease period (``LeaseKeeper``) and beat runs
    ``opsq.reconcile`` every minute; concurrent sweeps skip each other's rows.
    """
    from opsq import jobs

    settings = get_settings()
    ttl = settings.lease_ttl
    grace = ttl if grace is None else grace
    token = str(uuid.uuid4())
    who = f"sweeper@{socket.gethostname()}"
    report = SweepReport()
    with _sweeping() as conn:
        dead = state.dead_hosts(conn, ttl=ttl, grace=grace, batch=SWEEP_BATCH)
        for job_id, hosts in dead.interrupt.items():
            if state.interrupt(conn, job_id, hosts, token=token, worker=who, task_id="")[1]:
                report.closed.append(job_id)
        for job_id, hosts in dead.rerun.items():
            state.reset_dead(conn, job_id, hosts)
            # Published before the commit: if RabbitMQ refuses, the hosts stay as they
            # were and the next sweep tries again. A task that arrives first waits for
            # the commit on the rows' locks.
            for i, (queue, part) in enumerate(jobs.routed_chunks(job_id, hosts)):
                app.send_task(jobs.RUN_HOSTS, (job_id, part), queue=queue,
                              chord=jobs.callback_signature(job_id),
                              task_id=str(uuid.uuid5(jobs.JOB_ID_NAMESPACE,
                                                     f"{job_id}/{token}/{i}")))
        state.drop_dead_leases(conn, grace)
        report.interrupted, report.rerun = dead.interrupt, dead.rerun
    with _sweeping() as conn:
        for job in state.unpublished_jobs(conn, grace=grace, batch=SWEEP_BATCH):
            logger.warning("job %s was recorded but never published; publishing it", job.id)
            jobs.publish(job.id, jobs.first_batch(list(job.hosts), job.batch_size),
                         job.command)
            state.mark_published(conn, job.id)
            report.published.append(job.id)
    with _sweeping() as conn:
        due = steering.due_jobs(conn, SWEEP_BATCH)
    for job_id in due:
        # Hosts whose long wait (a pause between batches, a retry delay) is over, a job
        # at a time: sent before the commit, so a job RabbitMQ refuses stays held for the
        # next sweep while the others go.
        try:
            with _sweeping() as conn:
                command, hosts = steering.release(conn, job_id)
                if hosts:
                    jobs.send_hosts(job_id, hosts, command, f"due/{token}")
                    report.released[job_id] = hosts
        except BackendUnavailable as exc:
            logger.warning("job %s: held hosts not sent yet (%s)", job_id, exc)
    with _sweeping() as conn:
        for job_id, command, hosts in state.stalled_jobs(conn, stall=STALL_PERIODS * ttl,
                                                         batch=SWEEP_BATCH):
            logger.warning("job %s: hosts %s still wait for a worker; sending them again",
                           job_id, hosts)
            jobs.publish(job_id, hosts, command, again=f"/again/{token}")
            state.mark_published(conn, job_id)
            report.resent[job_id] = hosts
    with _sweeping() as conn:
        for job_id, sites in state.past_deadline(conn, SWEEP_BATCH):
            # Hosts no worker took by the job's deadline (their site's workers are down).
            where = f" of site {', '.join(sites)}" if sites else ""
            if state.close_pending(conn, job_id, HostStatus.UNREACHABLE,
                                   f"not started by the job's deadline: no worker{where} "
                                   "took it", lock=True):
                report.closed.append(job_id)
            report.expired.append(job_id)
    with _sweeping() as conn:
        # The jobs this sweep closed, and closed jobs whose callback the broker refused:
        # publish before marking, so a refused publish is tried again by the next sweep.
        unannounced = state.unannounced_jobs(conn, grace=grace, batch=SWEEP_BATCH)
        for job_id in dict.fromkeys([*report.closed, *unannounced]):
            jobs.callback_signature(job_id).delay([])
            state.mark_announced(conn, job_id)
            report.announced.append(job_id)
    for job_id, hosts in report.interrupted.items():
        logger.warning("job %s: hosts %s lost their worker: interrupted", job_id, hosts)
    return report


@app.task(name="opsq.reconcile")
def reconcile(grace: float | None = None) -> dict[str, Any]:
    """The sweep (see ``sweep``), as a task beat runs every minute."""
    return sweep(grace).as_dict()


@app.task(name="opsq.prune")
def prune(days: int | None = None) -> dict[str, Any]:
    """Delete finished jobs (and their host results) older than ``days`` (default: the
    retention setting), abandoned chord counters, and Celery's expired results.

    A job still queued or running is never deleted, however old.
    """
    days = get_settings().retention_days if days is None else int(days)
    jobs_deleted = 0
    final = list(state.FINAL_JOB_STATUSES)
    while True:
        with db.get_engine().begin() as conn:
            old = list(conn.scalars(_OLD_JOBS, {"days": days, "batch": PRUNE_BATCH,
                                                 "final": final}))
        for statement in _PRUNE_ROWS:
            while True:
                with db.get_engine().begin() as conn:
                    if conn.execute(statement, {"jobs": old, "rows": PRUNE_ROWS}
                                    ).rowcount < PRUNE_ROWS:
                        break
        with db.get_engine().begin() as conn:
            jobs_deleted += conn.execute(_PRUNE_JOBS, {"jobs": old, "final": final}).rowcount
        if len(old) < PRUNE_BATCH:
            break
    with db.get_engine().begin() as conn:
        chords = conn.execute(_PRUNE_CHORDS, {"days": days}).rowcount
        files_deleted = files.prune(conn)
    app.backend.cleanup()  # celery_taskmeta rows past result_expires
    logger.info("pruned %d jobs, %d chord counters and %d files older than %d days",
                jobs_deleted, chords, files_deleted, days)
    return {"days": days, "jobs_deleted": jobs_deleted, "chords_deleted": chords,
            "files_deleted": files_deleted}
