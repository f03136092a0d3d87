"""The job and host state machine: every status, and every transition between them.

Nothing else in opsq changes a job's or a host's status, except ``opsq.jobs.steering``, which
holds the transitions that steer a running job (``running -> pending`` for a retry,
``pending -> skipped`` past a failure limit, ``-> cancelled``) on the same terms. Each
transition is one SQL statement (or one transaction of a few) so that a job's counters
and its host rows can never disagree:

``pending -> running``  (``claim``) a delivery of a per-host task takes the host under a
    *lease*: a token of its own with an expiry it renews while the command runs
    (``renew``). Identity is the token, never the worker's name, which a restarted
    worker keeps.
``running -> ok | failed | timeout | unreachable | error``  (``store``) only the holder of
    the host's lease can write its result; the same statement adds the hosts to the job's
    counters and, for the last host, closes the job. The store notifies waiters
    (``LISTEN opsq_jobs``).
``running -> interrupted``  a later delivery (or the sweeper) finds the lease expired: the
    holder died. Unless the job is re-run safe, the command is not run again.
``running -> pending``  (``reset_dead``) the same, for a re-run-safe job: it runs again,
    never while the first holder's lease is alive.

A lease counts as expired only when PostgreSQL has been up for a whole lease period too,
so a live holder that could not renew while the database was down gets to renew first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from opsq.hostrun.runner import (
    CANCELLED_BEFORE,
    JobOptions,
    Outcome,
)
from opsq.status import FINAL_HOST_STATUSES, FINAL_JOB_STATUSES, HostStatus
from opsq.store.listen import JOBS_CHANNEL


@dataclass(frozen=True)
class ClaimedHost:
    host: str
    target: dict[str, Any]
    attempt: int


@dataclass
class Claim:
    """What one delivery of a per-host task may do with the hosts it was sent.

    ``run``: taken under this delivery's lease, run them. ``deferred``: another delivery
    holds them under a live lease (a broker redelivery while the first still runs): look
    again in ``recheck_in`` seconds. ``closed``: recording interrupted hosts closed the job.
    Hosts already finished are simply absent.
    """

    job: JobOptions | None
    run: list[ClaimedHost] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    recheck_in: float = 0.0
    interrupted: list[str] = field(default_factory=list)
    closed: bool = False


# -- creation -----------------------------------------------------------------------------

_ADD_HOSTS = text(
    """
    INSERT INTO host_results (job_id, host, target, status, batch, not_before, site)
    SELECT :job, h.host, CAST(h.target AS jsonb), 'pending', h.batch,
           CASE WHEN h.batch > 1 THEN 'infinity'::timestamptz END, h.site
    FROM unnest(CAST(:hosts AS text[]), CAST(:targets AS text[]), CAST(:batches AS int[]),
                CAST(:sites AS text[]))
        WITH ORDINALITY AS h(host, target, batch, site, n)
    ORDER BY h.n
    """
)


def add_hosts(conn: Connection, job_id: str, hosts: Sequence[tuple[str, str]],
              batch_size: int | None = None, sites: Sequence[str | None] | None = None
              ) -> None:
    """A new job's hosts, ``pending``: (name, target as JSON), in inventory order (the
    row ids keep it), each with its site (None: the plain fleet queue). One statement
    whatever their number. With ``batch_size``, host i is in batch ``i // batch_size +
    1``; batches after the first wait their turn."""
    batches = [i // batch_size + 1 if batch_size else None for i in range(len(hosts))]
    conn.execute(_ADD_HOSTS, {"job": job_id, "hosts": [h for h, _ in hosts],
                              "targets": [t for _, t in hosts], "batches": batches,
                              "sites": list(sites) if sites else [None] * len(hosts)})


# -- claim ------------------------------------------------------------------------------

#: Lock the given host rows, in id order: every transition that takes several hosts
#: starts with it, so two transactions never lock the same rows in opposite orders.
LOCK_HOSTS = """
    SELECT 1 FROM host_results WHERE job_id = :job AND host = ANY(:hosts)
    ORDER BY id FOR UPDATE;
"""
#: The claim locks first, waiting for any transaction that is changing the rows (a sweep
#: putting them back to pending): the statements after it then see their latest state.
#: Without it, a claim racing such a transaction skips rows its snapshot saw in another
#: status.
_JOB_OPTIONS = text(
    LOCK_HOSTS + """
    SELECT command, command_timeout, connect_timeout, rerun_safe, kind, params, inventory,
           cancel_requested_at, batch_size, retries, retry_delay, retry_on
    FROM jobs WHERE id = :job
    """
)
_LEASE = text(
    """
    INSERT INTO leases (token, job_id, task_id, worker, expires_at)
    VALUES (:token, :job, :task, :worker, now() + make_interval(secs => :ttl))
    ON CONFLICT (token) DO NOTHING
    """
)
_CLAIM_PENDING = text(
    """
    WITH claimed AS (
        UPDATE host_results SET status = 'running', attempt = attempt + 1,
            started_at = now(), finished_at = NULL, worker = :worker, task_id = :task,
            lease_token = :token
        WHERE job_id = :job AND host = ANY(:hosts) AND status = 'pending' AND NOT held
        RETURNING host, target, attempt
    ), started AS (
        UPDATE jobs SET status = 'running', started_at = now()
        WHERE id = :job AND status = 'queued' AND EXISTS (SELECT 1 FROM claimed)
    )
    SELECT host, target, attempt FROM claimed
    """
)
#: A lease is dead when it expired ``grace`` seconds ago (a lease that is gone counts from
#: the host's start) and PostgreSQL itself has been up for a whole lease period: a holder
#: that could not renew during a database outage gets to renew first.
_DEAD = (
    "COALESCE(l.expires_at, h.started_at, '-infinity') "
    "< now() - make_interval(secs => :grace) "
    "AND pg_postmaster_start_time() < now() - make_interval(secs => :ttl)"
)
_OTHERS = text(
    f"""
    SELECT h.host, h.status, h.lease_token, {_DEAD} AS dead,
           GREATEST(EXTRACT(EPOCH FROM l.expires_at - now()), 0) AS expires_in
    FROM host_results h LEFT JOIN leases l ON l.token = h.lease_token
    WHERE h.job_id = :job AND h.host = ANY(:hosts) AND h.status = 'running'
    FOR UPDATE OF h
    """
)
_TAKE_OVER = text(
    """
    UPDATE host_results SET lease_token = :token, worker = :worker, task_id = :task,
        attempt = attempt + CAST(:rerun AS int),
        started_at = CASE WHEN :rerun THEN now() ELSE started_at END
    WHERE job_id = :job AND host = ANY(:hosts) AND status = 'running'
    RETURNING host, target, attempt
    """
)


def claim(
    conn: Connection, job_id: str, hosts: Sequence[str], *, token: str, worker: str,
    task_id: str, ttl: float, adopt: str | None = None,
) -> Claim:
    """Take the job's ``hosts`` for this delivery (one transaction on ``conn``).

    Pending hosts are taken at once; a host still running under a dead lease is written
    off as ``interrupted`` (or taken again when the job is re-run safe); one running under
    a live lease is deferred. ``adopt`` is the token of this task's previous claim, whose
    outcome it never learnt (the connection dropped as it committed): hosts still under
    it never ran, and are taken as pending ones. Returns a Claim whose ``job`` is None
    when the job is gone.
    """
    row = conn.execute(_JOB_OPTIONS, {"job": job_id, "hosts": list(hosts)}).first()
    if row is None:
        return Claim(job=None)
    job = JobOptions(row.command, row.command_timeout, row.connect_timeout, row.rerun_safe,
                     row.kind, row.params or {}, row.inventory, job_id, row.batch_size,
                     row.retries or 0, row.retry_delay, row.retry_on)
    if row.cancel_requested_at is not None:
        # Hosts a sweep put back to pending after the cancel: they never start.
        closed = close_pending(conn, job_id, HostStatus.CANCELLED, CANCELLED_BEFORE)
        return Claim(job=job, closed=closed)
    params = {"job": job_id, "hosts": list(hosts), "token": token, "worker": worker,
              "task": task_id, "ttl": ttl}
    conn.execute(_LEASE, params)
    result = Claim(job=job, run=[
        ClaimedHost(r.host, r.target, r.attempt) for r in conn.execute(_CLAIM_PENDING, params)])
    if len(result.run) == len(hosts):
        return result  # the usual case: a first delivery, every host pending
    taken = {c.host for c in result.run}
    others = conn.execute(_OTHERS, {**params, "hosts": [h for h in hosts if h not in taken],
                                    "grace": 0}).all()
    mine = [r.host for r in others if adopt is not None and r.lease_token == adopt]
    if mine:
        result.run += [ClaimedHost(r.host, r.target, r.attempt) for r in conn.execute(
            _TAKE_OVER, {**params, "hosts": mine, "rerun": False})]
    others = [r for r in others if r.host not in mine]
    dead = [r.host for r in others if r.dead]
    live = [r for r in others if not r.dead]
    result.deferred = [r.host for r in live]
    result.recheck_in = max((float(r.expires_in or 0) for r in live), default=0.0)
    if not dead:
        return result
    if job.rerun_safe:
        result.run += [ClaimedHost(r.host, r.target, r.attempt) for r in conn.execute(
            _TAKE_OVER, {**params, "hosts": dead, "rerun": True})]
    else:
        result.interrupted, result.closed = interrupt(
            conn, job_id, dead, token=token, worker=worker, task_id=task_id)
    return result


def interrupt(conn: Connection, job_id: str, hosts: Sequence[str], *, token: str,
              worker: str, task_id: str) -> tuple[list[str], bool]:
    """``running -> interrupted`` for hosts whose holder died (rows locked by the
    caller): taken under ``token``, then stored and counted like any result. Returns the
    hosts interrupted and whether that closed the job."""
    taken = [r.host for r in conn.execute(_TAKE_OVER, {
        "job": job_id, "hosts": list(hosts), "token": token, "worker": worker,
        "task": task_id, "rerun": False})]
    closed = store(conn, job_id, token, [(h, interrupted_outcome()) for h in taken],
                   release=False)
    return taken, closed


def interrupted_outcome() -> Outcome:
    return Outcome(
        status=HostStatus.INTERRUPTED,
        error="the worker running the command was lost (killed, or cut off for longer "
              "than its lease); the job is not marked safe to re-run, so the command was "
              "not run again")


# -- store ------------------------------------------------------------------------------

_COUNTERS = ",\n".join(
    f"count(*) FILTER (WHERE status = '{s.value}') AS {s.value}" for s in FINAL_HOST_STATUSES)
_SET_COUNTERS = ",\n".join(
    f"{s.value}_count = j.{s.value}_count + c.{s.value}" for s in FINAL_HOST_STATUSES)
_CLOSES = "j.done_count + c.n >= j.host_count"
#: A closing write's end time and duration (seconds from submission).
_CLOSE_TIMES = (
    f"finished_at = CASE WHEN {_CLOSES} THEN now() ELSE j.finished_at END, "
    f"duration = CASE WHEN {_CLOSES} THEN EXTRACT(EPOCH FROM now() - j.submitted_at) "
    "ELSE j.duration END")
_STORE = text(
    LOCK_HOSTS + f"""
    SELECT pg_notify('{JOBS_CHANNEL}', :job);
    WITH v AS (
        SELECT * FROM unnest(CAST(:hosts AS text[]), CAST(:statuses AS text[]),
            CAST(:codes AS int[]), CAST(:outs AS text[]), CAST(:errs AS text[]),
            CAST(:out_bytes AS bigint[]), CAST(:err_bytes AS bigint[]),
            CAST(:truncs AS boolean[]), CAST(:errors AS text[]), CAST(:durations AS float8[]),
            CAST(:changed AS boolean[]), CAST(:shas AS text[]))
        AS v(host, status, exit_code, stdout, stderr, stdout_bytes, stderr_bytes, truncated,
             error, duration, changed, sha256)
    ), stored AS (
        UPDATE host_results h SET status = v.status, exit_code = v.exit_code,
            stdout = CASE WHEN v.status = 'interrupted' THEN h.stdout ELSE v.stdout END,
            stderr = CASE WHEN v.status = 'interrupted' THEN h.stderr ELSE v.stderr END,
            stdout_bytes = v.stdout_bytes,
            stderr_bytes = v.stderr_bytes, truncated = v.truncated, error = v.error,
            changed = v.changed, sha256 = v.sha256, finished_at = now(),
            duration = COALESCE(v.duration, EXTRACT(EPOCH FROM now() - h.started_at))
        FROM v
        WHERE h.job_id = :job AND h.host = v.host AND h.status = 'running'
          AND h.lease_token = :token
        RETURNING h.status
    ), c AS (
        SELECT count(*) AS n, {_COUNTERS} FROM stored
    )
    UPDATE jobs j SET done_count = j.done_count + c.n, {_SET_COUNTERS},
        status = CASE WHEN {_CLOSES} THEN
            CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                 WHEN j.ok_count + c.ok >= j.host_count THEN 'succeeded' ELSE 'failed' END
            ELSE j.status END,
        {_CLOSE_TIMES}
    FROM c
    WHERE j.id = :job AND c.n > 0
    RETURNING j.done_count >= j.host_count AS closed
    """
)
_RELEASE = text("DELETE FROM leases WHERE token = :token")


def clean_text(s: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; everything else survives as decoded.
    return None if s is None else s.replace("\x00", "\ufffd")


def store(
    conn: Connection, job_id: str, token: str, results: Iterable[tuple[str, Outcome]],
    *, release: bool,
) -> bool:
    """Write the hosts' outcomes held under ``token`` and count them into the job, in one
    round trip; True when this write finished the job (exactly one writer sees True).
    Host rows are locked in id order first, as a claim locks them, so the two never
    deadlock.

    A host no longer held by ``token`` (another delivery wrote it off) is left as it is.
    ``release`` drops the lease too (the delivery is done with all its hosts).
    """
    results = list(results)
    closed = False
    if results:
        outcomes = [o for _, o in results]
        row = conn.execute(_STORE, {
            "job": job_id, "token": token, "hosts": [h for h, _ in results],
            "statuses": [o.status.value for o in outcomes],
            "codes": [o.exit_code for o in outcomes],
            "outs": [clean_text(o.stdout) for o in outcomes],
            "errs": [clean_text(o.stderr) for o in outcomes],
            "out_bytes": [o.stdout_bytes for o in outcomes],
            "err_bytes": [o.stderr_bytes for o in outcomes],
            "truncs": [o.truncated for o in outcomes],
            "errors": [clean_text(o.error) for o in outcomes],
            "durations": [o.duration for o in outcomes],
            "changed": [o.changed for o in outcomes],
            "shas": [o.sha256 for o in outcomes],
        }).first()
        closed = bool(row and row.closed)
    if release:
        conn.execute(_RELEASE, {"token": token})
    return closed


#: Hosts of a job that never started, closed at once as one final status (``close_pending``).
_CLOSE_PENDING = f"""
    SELECT pg_notify('{JOBS_CHANNEL}', :job);
    WITH hit AS (
        UPDATE host_results SET status = :status, error = :reason, finished_at = now()
        WHERE job_id = :job AND status = 'pending'
        RETURNING status
    ), c AS (
        SELECT count(*) AS n, {_COUNTERS} FROM hit
    )
    UPDATE jobs j SET done_count = j.done_count + c.n, {_SET_COUNTERS},
        error = CASE WHEN :job_error THEN :reason ELSE j.error END,
        status = CASE WHEN {_CLOSES} THEN
            CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                 WHEN j.done_count = 0 AND :status = 'error' THEN 'error'
                 WHEN j.ok_count + c.ok >= j.host_count THEN 'succeeded' ELSE 'failed' END
            ELSE j.status END,
        {_CLOSE_TIMES}
    FROM c
    WHERE j.id = :job AND c.n > 0
    RETURNING j.done_count >= j.host_count AS closed
    """
_CLOSE_PENDING_LOCKED = text(
    "SELECT 1 FROM host_results WHERE job_id = :job ORDER BY id FOR UPDATE;" + _CLOSE_PENDING)
_CLOSE_PENDING_TEXT = text(_CLOSE_PENDING)


def close_pending(conn: Connection, job_id: str, status: HostStatus, reason: str, *,
                  job_error: bool = False, lock: bool = False) -> bool:
    """End every host of the job that has not started (``pending``) as ``status`` with
    ``reason``, counted like any result; True when that finished the job (exactly one
    writer sees True). The job then ends ``cancelled`` when a cancel was asked, ``error``
    when none of its hosts had ended and they end ``error``, else ``succeeded`` or
    ``failed`` by its counts. ``job_error``: the reason becomes the job's error too.
    ``lock``: lock the job's host rows in id order first, as a claim does, when the
    caller holds none of them.

    The one way hosts are closed without running: a cancel (``cancelled``), the rest of a
    rolling job past its failure limit (``skipped``), a job whose tasks could not be
    published (``error``)."""
    statement = _CLOSE_PENDING_LOCKED if lock else _CLOSE_PENDING_TEXT
    row = conn.execute(statement, {"job": job_id, "status": status.value, "reason": reason,
                                   "job_error": job_error}).first()
    return bool(row and row.closed)


_PAST_DEADLINE = text(
    """
    SELECT j.id, array_remove(array_agg(DISTINCT h.site), NULL) AS sites
    FROM jobs j JOIN host_results h ON h.job_id = j.id AND h.status = 'pending'
    WHERE j.deadline_at <= now() AND j.status IN ('queued', 'running')
    GROUP BY j.id, j.deadline_at ORDER BY j.deadline_at LIMIT :batch
    """
)


def past_deadline(conn: Connection, batch: int) -> list[tuple[str, list[str]]]:
    """Unfinished jobs past their deadline that still have hosts nobody took, with those
    hosts' sites (at most ``batch`` jobs, the longest overdue first)."""
    return [(r.id, sorted(r.sites or [])) for r in conn.execute(_PAST_DEADLINE,
                                                                {"batch": batch})]


def abandon(conn: Connection, job_id: str, reason: str) -> None:
    """Give up on the hosts of a job that were never taken (its tasks could not be
    published): they end as ``error`` with ``reason``. Hosts already running or done keep
    their course; a job none of whose hosts ran ends ``error``."""
    close_pending(conn, job_id, HostStatus.ERROR, reason, job_error=True, lock=True)


# -- leases -----------------------------------------------------------------------------

_RENEW = text(
    "UPDATE leases SET expires_at = now() + make_interval(secs => :ttl) "
    "WHERE token = ANY(:tokens)"
)


def renew(conn: Connection, tokens: Sequence[str], ttl: float) -> None:
    """Push the expiry of the given leases ``ttl`` seconds from now."""
    if tokens:
        conn.execute(_RENEW, {"tokens": list(tokens), "ttl": ttl})


# -- cancelled hosts (see opsq.jobs.steering for cancel itself) ---------------------------------

# -- sweeping ---------------------------------------------------------------------------

_DEAD_HOSTS = text(
    f"""
    SELECT h.job_id, h.host, j.rerun_safe
    FROM host_results h
    JOIN jobs j ON j.id = h.job_id
    LEFT JOIN leases l ON l.token = h.lease_token
    WHERE h.status = 'running' AND {_DEAD}
    ORDER BY h.job_id, h.id
    LIMIT :batch
    FOR UPDATE OF h SKIP LOCKED
    """
)
_RESET = text(
    """
    UPDATE host_results SET status = 'pending', lease_token = NULL
    WHERE job_id = :job AND host = ANY(:hosts) AND status = 'running'
    """
)
_DROP_DEAD_LEASES = text(
    """
    DELETE FROM leases l
    WHERE l.expires_at < now() - make_interval(secs => :grace)
      AND NOT EXISTS (SELECT 1 FROM host_results h
                      WHERE h.lease_token = l.token AND h.status = 'running')
    """
)
_UNPUBLISHED = text(
    """
    SELECT id, hosts, command, batch_size FROM jobs
    WHERE status IN ('queued', 'running') AND published_at IS NULL
      AND submitted_at < now() - make_interval(secs => :grace)
    ORDER BY submitted_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
    """
)
_PUBLISHED = text("UPDATE jobs SET published_at = now() WHERE id = :job")
_STALLED = text(
    """
    SELECT j.id, j.command FROM jobs j
    WHERE j.status IN ('queued', 'running')
      AND j.published_at < now() - make_interval(secs => :stall)
      AND EXISTS (SELECT 1 FROM host_results h
                  WHERE h.job_id = j.id AND h.status = 'pending' AND NOT h.held
                    AND (h.not_before IS NULL
                         OR h.not_before < now() - make_interval(secs => :stall)))
    ORDER BY j.published_at
    LIMIT :batch
    FOR UPDATE OF j SKIP LOCKED
    """
)
#: A job's pending hosts that are due (a later batch or a retry waits its turn).
_PENDING = text(
    """
    SELECT host FROM host_results WHERE job_id = :job AND status = 'pending' AND NOT held
      AND (not_before IS NULL OR not_before < now() - make_interval(secs => :stall))
    ORDER BY id
    """
)
_UNANNOUNCED = text(
    """
    SELECT id FROM jobs
    WHERE status = ANY(:final) AND callback_sent_at IS NULL
      AND finished_at < now() - make_interval(secs => :grace)
    ORDER BY finished_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
    """
)
_ANNOUNCED = text("UPDATE jobs SET callback_sent_at = now() WHERE id = :job")


@dataclass
class DeadHosts:
    """Hosts whose holder's lease is dead, by job: to write off, or to run again."""

    interrupt: dict[str, list[str]] = field(default_factory=dict)
    rerun: dict[str, list[str]] = field(default_factory=dict)


def dead_hosts(conn: Connection, *, ttl: float, grace: float, batch: int) -> DeadHosts:
    """Lock and return running hosts whose lease died ``grace`` seconds ago or more."""
    found = DeadHosts()
    for r in conn.execute(_DEAD_HOSTS, {"ttl": ttl, "grace": grace, "batch": batch}):
        (found.rerun if r.rerun_safe else found.interrupt).setdefault(r.job_id, []).append(
            r.host)
    return found


def reset_dead(conn: Connection, job_id: str, hosts: Sequence[str]) -> None:
    """Put hosts of a re-run-safe job back to pending (their holder is dead)."""
    conn.execute(_RESET, {"job": job_id, "hosts": list(hosts)})


def drop_dead_leases(conn: Connection, grace: float) -> int:
    return conn.execute(_DROP_DEAD_LEASES, {"grace": grace}).rowcount


def unpublished_jobs(conn: Connection, *, grace: float, batch: int) -> list[Any]:
    """Lock and return (id, hosts, command) of queued jobs whose fan-out was never
    published (the submitter died between recording the job and publishing it)."""
    return list(conn.execute(_UNPUBLISHED, {"grace": grace, "batch": batch}))


def mark_published(conn: Connection, job_id: str) -> None:
    conn.execute(_PUBLISHED, {"job": job_id})


def stalled_jobs(conn: Connection, *, stall: float, batch: int) -> list[tuple[str, str,
                                                                         list[str]]]:
    """Lock and return (id, command, pending hosts) of jobs published ``stall`` seconds
    ago or more that still have hosts nobody took: their tasks may be lost (a retry that
    could not be published, a purged queue), or only stuck behind a long queue. Sending
    them again is safe either way: a host is taken once."""
    return [(r.id, r.command,
             list(conn.execute(_PENDING, {"job": r.id, "stall": stall}).scalars()))
            for r in conn.execute(_STALLED, {"stall": stall, "batch": batch}).all()]


def unannounced_jobs(conn: Connection, *, grace: float, batch: int) -> list[str]:
    """Lock and return finished jobs whose callback was never sent (the broker refused it
    as the job closed)."""
    return list(conn.execute(_UNANNOUNCED, {"grace": grace, "batch": batch,
                                            "final": list(FINAL_JOB_STATUSES)}).scalars())


def mark_announced(conn: Connection, job_id: str) -> None:
    conn.execute(_ANNOUNCED, {"job": job_id})
