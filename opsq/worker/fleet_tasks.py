"""The tasks of a job: ``opsq.run_hosts`` runs the command on a chunk of the job's hosts,
``opsq.finish_job`` is the chord callback that records the summary as the job id's
Celery result, and ``opsq.submit_job`` submits from anywhere Celery can send a task
(``submit_job.delay(...)``, beat, another service).

A ``run_hosts`` delivery takes its hosts under a lease (``opsq.jobs.state``), runs them on the
worker's shared host thread pool, and writes their results in small batches as they
finish: a crash loses at most the hosts still running, never those already done. A
``LeaseKeeper`` thread per worker process renews the leases of the deliveries in
progress; a ``Sweeper`` thread closes what dead deliveries left
(``opsq.worker.maintenance_tasks.sweep``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import worker_ready, worker_shutdown
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.exc import IntegrityError

from opsq import jobs
from opsq.app import app
from opsq.errors import BackendUnavailable, InventoryError, JobNotFound, OpsqError
from opsq.hostrun import programs
from opsq.hostrun.runner import (
    CANCELLED_BEFORE,
    CANCELLED_UNSEEN,
    JobOptions,
    Outcome,
    RunOptions,
)
from opsq.hostrun.ssh import ConnectionPool
from opsq.hostrun.stopper import Stopper
from opsq.inventory import Host
from opsq.jobs import become_password, state, steering, webhooks
from opsq.jobs.state import Claim, ClaimedHost
from opsq.settings import get_settings
from opsq.status import HostStatus
from opsq.store import db, files
from opsq.worker.live_output import Flusher, LiveOutput

logger = logging.getLogger(__name__)

#: How a task that cannot reach PostgreSQL before it has done anything waits for it:
#: retried through the broker, backing off exponentially (with jitter) up to 30 s, 100
#: times at most: well over the 5-minute outage opsq is built to outlast.
WAIT_FOR_SERVICES = {"retry_backoff": True, "retry_backoff_max": 30, "max_retries": 100}
#: The same for a host task's claim, which retries by hand to carry its token.
CLAIM_RETRIES = WAIT_FOR_SERVICES["max_retries"]
CLAIM_BACKOFF_MAX = WAIT_FOR_SERVICES["retry_backoff_max"]
#: Looks at hosts another delivery holds, at most: a holder renews its lease until its
#: hosts end, which their deadlines bound; this only stops a loop that never ends.
DEFER_RETRIES = 10_000
#: Seconds a finished host's result may wait to be written with others of its task.
#: Results that finish while a write is under way go in the next one anyway; a longer
#: wait only added latency (measured: 100 SSH hosts 0.44 s at 0.05, 0.31 s at 0.005;
#: 1,000 local hosts 0.85 s and 0.78 s).
FLUSH_INTERVAL = 0.005
#: Seconds between two looks for a cancelled job while this process runs hosts.
CANCEL_POLL = 1.0
#: Results written in one statement at most.
FLUSH_MAX = 500
#: Local hosts (``ansible_connection=local``) run at once per worker CPU. Their commands
#: compete for the worker's own CPUs, and a few threads start processes faster than
#: hundreds do (1,000 ``true``: 0.48 s from 16 threads, 0.70 s from 256, on 2 cores).
LOCAL_RUNS_PER_CPU = 8

_pool: ConnectionPool | None = None
_executors: dict[bool, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def connection_pool() -> ConnectionPool:
    """This worker process's SSH connection pool."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ConnectionPool(get_settings().pool_idle)
        return _pool


def host_executor(local: bool = False) -> ThreadPoolExecutor:
    """This worker process's threads for host runs, shared by all its tasks: SSH hosts
    (waiting on the network: many) or local hosts (using the worker's CPUs: a few)."""
    with _lock:
        if local not in _executors:
            width = (LOCAL_RUNS_PER_CPU * (os.cpu_count() or 1) if local
                     else get_settings().host_concurrency)
            _executors[local] = ThreadPoolExecutor(
                width, thread_name_prefix="opsq-local" if local else "opsq-host")
        return _executors[local]


class LeaseKeeper(threading.Thread):
    """Renews the leases of this process's deliveries in progress, every third of the
    lease period, in one statement. Nothing else runs on this thread: a slow broker or a
    long sweep must never hold a renewal back."""

    def __init__(self) -> None:
        super().__init__(name="opsq-lease-keeper", daemon=True)
        self.ttl = get_settings().lease_ttl
        self._tokens: dict[str, Stopper] = {}
        self._tokens_lock = threading.Lock()
        self._stopping = threading.Event()

    def hold(self, token: str) -> Stopper:
        """Keep ``token``'s lease alive until released; its runs stop with the Stopper."""
        with self._tokens_lock:
            return self._tokens.setdefault(token, Stopper())

    def release(self, token: str) -> None:
        with self._tokens_lock:
            self._tokens.pop(token, None)

    def held(self) -> dict[str, Stopper]:
        with self._tokens_lock:
            return dict(self._tokens)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(self.ttl / 3):
            with self._tokens_lock:
                tokens = list(self._tokens)
            try:
                with db.get_engine().begin() as conn:
                    state.renew(conn, tokens, self.ttl)
            except Exception as exc:
                logger.warning("could not renew %d lease(s): %s", len(tokens), exc)


class CancelWatcher(threading.Thread):
    """Stops this process's runs of a job ``opsq cancel`` was asked to stop: every
    CANCEL_POLL seconds while it holds leases, one indexed query."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        super().__init__(name="opsq-cancel-watcher", daemon=True)
        self.keeper = keeper
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(CANCEL_POLL):
            held = self.keeper.held()
            if not held:
                continue
            try:
                with db.get_engine().begin() as conn:
                    doomed = steering.cancelling(conn, list(held))
            except Exception as exc:
                logger.warning("could not look for cancelled jobs: %s", exc)
                continue
            for token in doomed:
                if not held[token].stopped.is_set():
                    logger.info("stopping the runs of lease %s: its job was cancelled", token)
                    held[token].stop()


class Sweeper(threading.Thread):
    """Runs the sweep (``opsq.worker.maintenance_tasks.sweep``) once a lease period. Every
    worker does, safely: a sweep skips rows another one has locked."""

    def __init__(self) -> None:
        super().__init__(name="opsq-sweeper", daemon=True)
        self.ttl = get_settings().lease_ttl
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        from opsq.worker.maintenance_tasks import sweep

        while not self._stopping.wait(self.ttl):
            try:
                sweep()
            except Exception as exc:
                logger.warning("sweep failed (will try again): %s", exc)


_keeper: LeaseKeeper | None = None
_sweeper: Sweeper | None = None
_watcher: CancelWatcher | None = None
_flusher: Flusher | None = None


def output_flusher() -> Flusher:
    """This process's writer of running hosts' output, started on first use."""
    global _flusher
    with _lock:
        if _flusher is None or not _flusher.is_alive():
            _flusher = Flusher()
            _flusher.start()
        return _flusher


def lease_keeper() -> LeaseKeeper:
    """This process's lease keeper, started on first use."""
    global _keeper, _watcher
    with _lock:
        if _keeper is None or not _keeper.is_alive():
            _keeper = LeaseKeeper()
            _keeper.start()
            _watcher = CancelWatcher(_keeper)
            _watcher.start()
        return _keeper


@worker_ready.connect
def _start_threads(**_: Any) -> None:
    global _sweeper
    lease_keeper()
    with _lock:
        if _sweeper is None:
            _sweeper = Sweeper()
            _sweeper.start()


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    for thread in (_keeper, _sweeper, _watcher, _flusher):
        if thread is not None:
            thread.stop()
    if _pool is not None:
        _pool.close_all()


# ignore_result: the hosts' outcomes live in host_results; the return value only tells
# the backend's chord join whether this task closed the job. Flower still shows every
# state from the task events.
# Retries: see _claim (PostgreSQL unavailable before anything ran) and _execute (hosts
# another delivery holds).
@app.task(name=jobs.RUN_HOSTS, bind=True, ignore_result=True)
def run_hosts(self: Task, job_id: str, hosts: list[str], claimed_as: str | None = None
              ) -> dict[str, Any]:
    """Run the job's command on ``hosts`` and store each outcome; never raises for a host.

    A delivery of hosts another delivery already ran, runs, or lost is safe: finished
    hosts are skipped, hosts under a live lease are looked at again later (a retry through
    the broker), hosts whose holder died are recorded ``interrupted`` (or run again for a
    re-run-safe job). See ``opsq.jobs.state``. ``claimed_as``: the token of this task's
    previous claim, which may have committed unseen (see ``_claim``).
    """
    return _execute(self, job_id, list(hosts), claimed_as)


@app.task(name="opsq.run_on_host", bind=True, ignore_result=True)
def run_on_host(self: Task, job_id: str, host: str | list[str],
                claimed_as: str | None = None) -> dict[str, Any]:
    """One host's task as the previous release queued it; runs as ``run_hosts`` (and is
    retried with a list of hosts, as ``run_hosts`` is)."""
    return _execute(self, job_id, [host] if isinstance(host, str) else list(host),
                    claimed_as)


@app.task(name="opsq.start_job", autoretry_for=(BackendUnavailable,), **WAIT_FOR_SERVICES)
def start_job(job_id: str) -> None:
    """A job's start as the previous release queued it: publish its fan-out (idempotent)."""
    if (status := jobs.job_status(job_id)) is not None and not status.finished:
        jobs.fan_out(job_id)


def _execute(task: Task, job_id: str, hosts: list[str], claimed_as: str | None
             ) -> dict[str, Any]:
    ttl = get_settings().lease_ttl
    token = str(uuid.uuid4())
    claim = _claim(task, job_id, hosts, token, ttl, claimed_as)
    if claim.job is None:
        logger.error("job %s no longer exists (deleted?): hosts %s skipped", job_id, hosts)
        return {"job_id": job_id, "closed": False}
    closed = claim.closed
    keeper = lease_keeper()
    stopper = keeper.hold(token)
    try:
        closed = _run_claimed(job_id, token, claim.job, claim.run, stopper) or closed
    finally:
        keeper.release(token)
    if claim.interrupted:
        logger.warning("job %s: hosts %s were interrupted (their worker was lost)",
                       job_id, claim.interrupted)
    if claim.deferred and not closed:
        # Another delivery holds these hosts under a live lease (the broker redelivered
        # while the first still runs): look again once that lease could have ended.
        logger.info("job %s: hosts %s still run elsewhere; looking again in %.0f s",
                    job_id, claim.deferred, claim.recheck_in)
        raise task.retry(args=(job_id, claim.deferred), kwargs={},
                         max_retries=DEFER_RETRIES, countdown=min(claim.recheck_in + 1, ttl))
    return {"job_id": job_id, "closed": closed}


def _claim(task: Task, job_id: str, hosts: list[str], token: str, ttl: float,
           adopt: str | None) -> Claim:
    """Claim the hosts; while PostgreSQL is unavailable, retry through the broker with
    back-off (nothing ran yet). The retry carries this claim's token: if the commit went
    through and only its answer was lost, the retry takes those hosts as its own instead
    of finding them held under a lease nobody renews."""
    try:
        with db.get_engine().begin() as conn:
            return state.claim(conn, job_id, hosts, token=token, ttl=ttl, adopt=adopt,
                               worker=task.request.hostname or "unknown",
                               task_id=task.request.id or "")
    except IntegrityError:  # the job was deleted under us (its lease had nothing to refer to)
        return Claim(job=None)
    except db.RETRYABLE as exc:
        logger.warning("job %s: cannot claim hosts (%s); retrying", job_id, exc)
        raise task.retry(
            args=(job_id, hosts), kwargs={"claimed_as": token}, exc=db.unavailable(exc),
            max_retries=CLAIM_RETRIES,
            countdown=get_exponential_backoff_interval(
                factor=1, retries=task.request.retries, maximum=CLAIM_BACKOFF_MAX,
                full_jitter=True)) from exc


def _run_claimed(job_id: str, token: str, job: JobOptions, hosts: list[ClaimedHost],
                 stopper: Stopper) -> bool:
    """Run the hosts on the shared threads, writing results in batches as they finish;
    True when one of the writes closed the job. The last write drops the lease."""
    finished: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()
    for h in hosts:
        future = host_executor(h.target.get("connection") == "local").submit(_run_one, h, job,
                                                                             stopper, token)
        future.add_done_callback(lambda f, name=h.host: finished.put((name, f)))
    left = len(hosts)
    closed = False
    attempts = {h.host: h.attempt for h in hosts}
    while True:
        batch: list[tuple[str, Outcome]] = []
        if left:
            name, future = finished.get()
            batch.append((name, future.result()))
            window_ends = time.monotonic() + FLUSH_INTERVAL
            while len(batch) < min(left, FLUSH_MAX):
                try:
                    name, future = finished.get(timeout=max(0.0, window_ends
                                                            - time.monotonic()))
                except queue.Empty:
                    break
                batch.append((name, future.result()))
            left -= len(batch)
        closed = _flush(job_id, token, job, batch, attempts, last=not left) or closed
        if not left:
            return closed


def _run_one(claimed: ClaimedHost, job: JobOptions, stopper: Stopper, token: str) -> Outcome:
    if stopper.stopped.is_set():  # cancelled while it waited for a thread
        return Outcome(status=HostStatus.CANCELLED, error=CANCELLED_BEFORE)
    began = time.monotonic()
    settings = get_settings()
    live = LiveOutput(job.job_id, claimed.host, token, settings.output_limit)
    flusher = output_flusher()
    flusher.watch(live)
    try:
        target = Host.from_dict(claimed.target)
        options = replace(RunOptions.resolve(target, settings, job.command_timeout,
                                             job.connect_timeout), stopper=stopper, live=live)
        # A runner decides itself whether a cancel stopped a command (an exit before
        # the kill keeps its status); the programs of put, get, script and become are
        # told here.
        plain = job.kind == "command" and not job.params.get("become")
        try:
            become = (become_password.become_for(target.name, job,
                                                 settings.become_password_file)
                      if job.params.get("become") else None)
            payload = (files.load(job.params["sha256"]) if job.kind in ("put", "script")
                       else b"")
        except OpsqError as exc:
            outcome = Outcome(status=HostStatus.ERROR, error=str(exc))
        else:
            outcome = programs.perform(target, job, options, connection_pool(),
                                       settings.fetch_limit, become, payload)
    except Exception as exc:  # a bug in opsq: record it on the host, keep the job alive
        logger.exception("host %s: unexpected error", claimed.host)
        outcome = Outcome(status=HostStatus.ERROR, error=f"{type(exc).__name__}: {exc}")
        plain = False
    finally:
        flusher.forget(live)
    outcome.duration = time.monotonic() - began
    if stopper.stopped.is_set() and not outcome.succeeded and not plain \
            and outcome.status != HostStatus.CANCELLED:
        outcome.status, outcome.exit_code = HostStatus.CANCELLED, None
        outcome.error = CANCELLED_UNSEEN
    return outcome


def _flush(job_id: str, token: str, job: JobOptions, results: list[tuple[str, Outcome]],
           attempts: dict[str, int], last: bool) -> bool:
    """Write a batch of outcomes (hosts with retries left go back to pending instead);
    at the end of a rolling job's batch, send the next. True when this closed the job."""
    fetched = [o.content for _, o in results if o.content is not None]
    again = [(h, o) for h, o in results if job.retries_left(o, attempts.get(h, 1))]
    retried = {h for h, _ in again}
    final = [(h, o) for h, o in results if h not in retried]

    def write() -> tuple[bool, list[str], steering.BatchStep]:
        with db.get_engine().begin() as conn:
            files.store(conn, fetched)
            requeued = steering.requeue(conn, job_id, token, again, job.retry_delay or 0)
            closed = state.store(conn, job_id, token, final, release=last)
            step = steering.BatchStep()
            if job.batch_size and final and not closed:
                step = steering.advance_batch(conn, job_id)
            # A long wait is kept in PostgreSQL: the sweep sends the hosts when due.
            if requeued and not steering.wait_in_broker(job.retry_delay or 0):
                steering.hold(conn, job_id, requeued)
                requeued = []
            if step.hosts and not steering.wait_in_broker(step.pause):
                steering.hold(conn, job_id, step.hosts)
                step = replace(step, hosts=[])
            return closed or step.closed, requeued, step

    # The commands ran: wait out a database outage rather than lose their results.
    closed, requeued, step = db.retrying(
        write, f"storing {len(results)} result(s) of job {job_id}")
    for hosts, tag, countdown in ((requeued, f"retry/{token}", job.retry_delay or 0),
                                  (step.hosts, f"batch/{step.number}", step.pause)):
        if hosts:
            try:
                jobs.send_hosts(job_id, hosts, job.command, tag, countdown)
            except BackendUnavailable as exc:  # the sweep sends due hosts nobody took
                logger.warning("job %s: could not send hosts %s (%s)", job_id, hosts, exc)
    return closed


@app.task(name=jobs.FINISH_JOB, bind=True, autoretry_for=(BackendUnavailable,),
          **WAIT_FOR_SERVICES)
def finish_job(self: Task, results: list[Any], job_id: str) -> dict[str, Any]:
    """The chord callback, sent once the job is closed: its result is the job summary,
    under the job id (``AsyncResult(job_id).get()``, Flower). A password typed at the
    job's prompt is dropped from the broker here."""
    if jobs.job_action(job_id)[1].get("become_prompt"):
        become_password.forget(app, job_id)
    summary = jobs.summary(job_id).as_dict()
    _queue_notifications(job_id)
    return summary


def _queue_notifications(job_id: str) -> None:
    """One ``opsq.notify`` task per URL of the job, with ids derived from the job's: a
    callback that runs again queues tasks that find their URL already handled. A broker
    that refuses them loses them (logged): the job's summary must still be stored."""
    try:
        for index in range(len(webhooks.urls(job_id))):
            send_notification.apply_async((job_id, index),
                                          task_id=webhooks.task_id(job_id, index))
    except (BrokerOperationalError, OSError) as exc:
        logger.error("job %s: its notifications could not be queued: %s", job_id, exc)


@app.task(name="opsq.notify", bind=True, ignore_result=True,
          autoretry_for=(BackendUnavailable,), **WAIT_FOR_SERVICES)
def send_notification(self: Task, job_id: str, index: int) -> None:
    """POST the ended job's summary to its URL number ``index``, once; a failed attempt
    is retried through the broker, backing off, for an hour (``opsq.jobs.webhooks``), except
    one refused for its address (not global, not allowed). The receiver's answer never
    changes the job. The task carries no URL: webhook URLs often hold a token, and task
    arguments show in Flower."""
    try:
        payload = webhooks.body(jobs.summary(job_id).as_dict())
    except JobNotFound:  # pruned meanwhile: nothing left to tell
        return
    sent = webhooks.attempt(job_id, index, payload, first=not self.request.retries)
    if sent is None or sent.delivered:
        return
    where = f"job {job_id}: notification {index + 1} ({webhooks.shown(sent.url)})"
    if sent.permanent:  # a refused address: trying again cannot mend it
        logger.error("%s: attempt %d: %s", where, sent.number, sent.error)
        return
    delay = webhooks.retry_delay(sent.number)
    if delay is None:
        logger.error("%s: given up after %d attempts; the last: %s", where, sent.number,
                     sent.error)
        return
    raise self.retry(countdown=delay, max_retries=None,
                     exc=webhooks.WebhookError(f"{where}: attempt {sent.number}: {sent.error}"))


@app.task(name="opsq.submit_job", bind=True, autoretry_for=(BackendUnavailable,),
          **WAIT_FOR_SERVICES)
def submit_job(
    self: Task,
    command: str | None = None,
    pattern: str | None = None,
    *,
    inventory: str | None = None,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    rerun_safe: bool = False,
    submitted_by: str | None = None,
    schedule_id: int | None = None,
    schedule: str | None = None,
    notify: list[str] | None = None,
    local_hosts: bool = True,
    spec: dict[str, Any] | None = None,
) -> None:
    """Resolve, record and fan out a job from a worker; this task's id is the job id, so
    ``AsyncResult(id).get()`` returns the job summary as with ``opsq.jobs.submit``.

    A submission that cannot become a job (the pattern or inventory no longer resolves,
    a bad option, its schedule removed meanwhile) is kept as a job with status ``error``
    and the reason. The task itself never fails with its arguments on record: Celery
    would store them, unmasked, in ``celery_taskmeta`` and show them in Flower. It waits
    out PostgreSQL (retried through the broker); a fan-out RabbitMQ refuses is left to
    the sweep. A second delivery of the same firing (same task id) fans the recorded job
    out again, idempotently, unless it is finished.
    """
    job_id = self.request.id
    who = submitted_by or f"celery:{self.request.hostname}"
    try:
        if spec is not None:  # a whole job: any kind, every option but -K
            if command is not None or pattern is not None:
                raise OpsqError("give either spec or command and pattern, not both")
            job = replace(jobs.spec_from_dict(spec), submitted_by=who,
                          schedule_id=schedule_id, schedule=schedule)
        else:
            if not isinstance(command, str) or not isinstance(pattern, str):
                raise OpsqError("opsq.submit_job needs a command and a pattern (or spec)")
            job = jobs.JobSpec(
                command=command, pattern=pattern, inventory=inventory,
                command_timeout=timeout, connect_timeout=connect_timeout,
                rerun_safe=rerun_safe, submitted_by=who, schedule_id=schedule_id,
                schedule=schedule, notify=list(notify or []),
                local_hosts=local_hosts is not False)
    except OpsqError as exc:
        bare = jobs.JobSpec(command=str(command or "?"), pattern=str(pattern or "?"),
                            submitted_by=who, schedule_id=schedule_id, schedule=schedule)
        jobs.record_failed_submission(bare, job_id, str(exc))
        raise Ignore() from None
    try:
        jobs.create(job, job_id=job_id)
    except BackendUnavailable:
        raise
    except IntegrityError:
        status = jobs.job_status(job_id)
        if status is None:  # not a duplicate: its schedule was removed meanwhile
            jobs.record_failed_submission(replace(job, schedule_id=None), job_id,
                                          "the job could not be recorded (its schedule "
                                          "was removed meanwhile?)")
            raise Ignore() from None
        if status.finished:
            logger.warning("job %s is finished: duplicate submission ignored", job_id)
            raise Ignore() from None
        # A redelivery after a crash between recording and fanning out, or a firing sent
        # twice: fan out again, idempotently.
    except OpsqError as exc:  # the pattern, the inventory or an option
        reason = str(exc)
        if isinstance(exc, InventoryError):  # its lines may hold secrets; viewers read this
            logger.warning("job %s: %s", job_id, exc)
            reason = ("the inventory could not be read (the reason is in the worker's log; "
                      "opsq hosts PATTERN -i PATH shows it)")
        jobs.record_failed_submission(job, job_id, reason)
        raise Ignore() from None
    try:
        jobs.fan_out(job_id)
    except BackendUnavailable as exc:
        logger.warning("job %s is recorded; the sweep publishes it once it can (%s)",
                       job_id, exc)
    # This task's id is the job id: its own result must not be stored under it (the
    # job's callback stores the summary there). Ignore acks without storing, and the
    # caller's AsyncResult still waits for the job (ignore_result would make get()
    # return None at once).
    raise Ignore()
