"""Steering a running job: its output while it runs, rolling batches and failure limits,
retries, and cancel. Each is a transition of ``opsq.jobs.state``'s machine, written here in
SQL as there: one statement (or one transaction) that keeps a job's counters and its host
rows in agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, text

from opsq.hostrun.runner import CANCELLED_BEFORE, Outcome
from opsq.jobs.state import LOCK_HOSTS, clean_text, close_pending
from opsq.status import HostStatus, JobStatus
from opsq.store.listen import JOBS_CHANNEL

# -- live output --------------------------------------------------------------------------

_APPEND_OUTPUT = text(
    f"""
    WITH v AS (
        SELECT * FROM unnest(CAST(:jobs AS text[]), CAST(:hosts AS text[]),
            CAST(:tokens AS text[]), CAST(:outs AS text[]), CAST(:errs AS text[]))
        AS v(job_id, host, token, out, err)
    ), appended AS (
        UPDATE host_results h SET stdout = COALESCE(h.stdout, '') || v.out,
            stderr = COALESCE(h.stderr, '') || v.err
        FROM v
        WHERE h.job_id = v.job_id AND h.host = v.host AND h.status = 'running'
          AND h.lease_token = v.token
        RETURNING h.job_id
    )
    SELECT pg_notify('{JOBS_CHANNEL}', job_id) FROM (SELECT DISTINCT job_id FROM appended) a
    """
)


def append_output(conn: Connection, chunks: Sequence[tuple[str, str, str, str, str]]) -> None:
    """Add what running hosts printed to their rows: (job, host, lease token, stdout,
    stderr). Only hosts still running under that lease; a stored result replaces it all."""
    if chunks:
        conn.execute(_APPEND_OUTPUT, {
            "jobs": [c[0] for c in chunks], "hosts": [c[1] for c in chunks],
            "tokens": [c[2] for c in chunks], "outs": [clean_text(c[3]) for c in chunks],
            "errs": [clean_text(c[4]) for c in chunks]})


# -- rolling batches ----------------------------------------------------------------------

#: Host statuses that count as failures for ``--max-fail``.
FAILURE_STATUSES = ("failed", "timeout", "unreachable", "error", "interrupted")
_BATCH_STATE = text(
    f"""
    SELECT j.current_batch, j.max_fail, j.batch_pause, j.status,
           {" + ".join(f"j.{s}_count" for s in FAILURE_STATUSES)} AS failures,
           (SELECT count(*) FROM host_results h WHERE h.job_id = j.id
              AND h.batch = j.current_batch AND h.status IN ('pending', 'running')) AS left,
           EXISTS (SELECT 1 FROM host_results h WHERE h.job_id = j.id
              AND h.batch > j.current_batch) AS more
    FROM jobs j WHERE j.id = :job
    """
)
_NEXT_BATCH = text(
    """
    WITH b AS (
        UPDATE jobs SET current_batch = current_batch + 1
        WHERE id = :job AND current_batch = :current
        RETURNING current_batch
    )
    UPDATE host_results h SET not_before = now() + make_interval(secs => :pause)
    FROM b WHERE h.job_id = :job AND h.batch = b.current_batch AND h.status = 'pending'
    RETURNING h.host
    """
)
@dataclass(frozen=True)
class BatchStep:
    """What the end of a batch led to: the next batch's hosts to send after ``pause``
    seconds, or the rest skipped (``closed``: that ended the job)."""

    hosts: list[str] = field(default_factory=list)
    number: int = 0
    pause: float = 0.0
    closed: bool = False


def advance_batch(conn: Connection, job_id: str) -> BatchStep:
    """After a write of a batched job (its job row locked by that write): when the
    current batch is done, release the next one, or, past ``max_fail`` failures, skip
    every host not started and end the job ``failed``. Exactly one writer releases each
    batch."""
    row = conn.execute(_BATCH_STATE, {"job": job_id}).first()
    if row is None or row.current_batch is None or row.left or not row.more:
        return BatchStep()
    if JobStatus(row.status).finished:
        return BatchStep()
    if row.max_fail is not None and row.failures > row.max_fail:
        reason = (f"stopped after {row.failures} failures (more than --max-fail "
                  f"{row.max_fail}); the hosts of later batches were not started")
        return BatchStep(closed=close_pending(conn, job_id, HostStatus.SKIPPED, reason,
                                              job_error=True))
    pause = float(row.batch_pause or 0)
    hosts = [r.host for r in conn.execute(
        _NEXT_BATCH, {"job": job_id, "current": row.current_batch, "pause": pause})]
    return BatchStep(hosts=hosts, number=row.current_batch + 1, pause=pause)


# -- long waits -------------------------------------------------------------------------

_HOLD = text(
    """
    UPDATE host_results SET held = true
    WHERE job_id = :job AND host = ANY(CAST(:hosts AS text[])) AND status = 'pending'
    """
)
#: Jobs with held hosts that are due, the longest waiting first.
_DUE_JOBS = text(
    """
    SELECT job_id FROM host_results
    WHERE held AND status = 'pending' AND not_before <= now()
    GROUP BY job_id ORDER BY min(not_before) LIMIT :batch
    """
)
#: One job's held hosts that are due, no longer held; taken by one sweep (the others
#: skip the rows it locked).
_RELEASE = text(
    """
    WITH due AS (
        SELECT id FROM host_results
        WHERE job_id = :job AND held AND status = 'pending' AND not_before <= now()
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE host_results h SET held = false
    FROM due, jobs j WHERE h.id = due.id AND j.id = h.job_id
    RETURNING h.host, h.id, j.command
    """
)


def hold(conn: Connection, job_id: str, hosts: Sequence[str]) -> None:
    """Keep the wait of these pending hosts (their ``not_before``) in PostgreSQL: the
    sweep sends them when due (``release``) instead of a delayed message, which a
    worker would hold unacknowledged for the whole wait."""
    if hosts:
        conn.execute(_HOLD, {"job": job_id, "hosts": list(hosts)})


def due_jobs(conn: Connection, batch: int) -> list[str]:
    """Jobs with held hosts whose wait is over (at most ``batch``)."""
    return [r.job_id for r in conn.execute(_DUE_JOBS, {"batch": batch})]


def release(conn: Connection, job_id: str) -> tuple[str, list[str]]:
    """The job's command and its held hosts whose wait is over, in inventory order, no
    longer held. The caller sends them before this transaction commits: if it cannot,
    the rollback holds them again for the next sweep."""
    rows = sorted(conn.execute(_RELEASE, {"job": job_id}), key=lambda r: r.id)
    return (rows[0].command if rows else ""), [r.host for r in rows]


def wait_in_broker(delay: float) -> bool:
    """Whether a wait of ``delay`` seconds may be a delayed message (else: ``hold``)."""
    from opsq.settings import get_settings

    return delay <= get_settings().max_broker_delay


# -- retries ------------------------------------------------------------------------------

_REQUEUE = text(
    LOCK_HOSTS + """
    WITH v AS (
        SELECT * FROM unnest(CAST(:hosts AS text[]), CAST(:statuses AS text[]),
            CAST(:codes AS int[]), CAST(:outs AS text[]), CAST(:errs AS text[]),
            CAST(:errors AS text[]), CAST(:durations AS float8[]))
        AS v(host, status, exit_code, stdout, stderr, error, duration)
    ), back AS (
        UPDATE host_results h SET status = 'pending', lease_token = NULL,
            not_before = now() + make_interval(secs => :delay),
            exit_code = v.exit_code, stdout = NULL, stderr = NULL, error = v.error
        FROM v
        WHERE h.job_id = :job AND h.host = v.host AND h.status = 'running'
          AND h.lease_token = :token
        RETURNING h.host, h.attempt
    )
    INSERT INTO host_attempts (job_id, host, attempt, status, exit_code, stdout, stderr,
                               error, duration)
    SELECT :job, v.host, back.attempt, v.status, v.exit_code, v.stdout, v.stderr, v.error,
           v.duration
    FROM v JOIN back ON back.host = v.host
    RETURNING host
    """
)


def requeue(conn: Connection, job_id: str, token: str, results: Iterable[tuple[str, Outcome]],
            delay: float) -> list[str]:
    """``running -> pending`` for hosts to run again after ``delay`` seconds: each run is
    kept in ``host_attempts``; the host row keeps its exit code and error until the next
    run ends, and starts an empty output for it. Only hosts still held under ``token``;
    returns them."""
    results = list(results)
    if not results:
        return []
    outcomes = [o for _, o in results]
    return list(conn.execute(_REQUEUE, {
        "job": job_id, "token": token, "delay": delay, "hosts": [h for h, _ in results],
        "statuses": [o.status.value for o in outcomes],
        "codes": [o.exit_code for o in outcomes],
        "outs": [clean_text(o.stdout) for o in outcomes],
        "errs": [clean_text(o.stderr) for o in outcomes],
        "errors": [clean_text(o.error) for o in outcomes],
        "durations": [o.duration for o in outcomes],
    }).scalars())


# -- cancel -----------------------------------------------------------------------------

_REQUEST_CANCEL = text(
    """
    SELECT 1 FROM host_results WHERE job_id = :job ORDER BY id FOR UPDATE;
    UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now())
    WHERE id = :job AND status IN ('queued', 'running')
    RETURNING id
    """
)
_CANCELLING = text(
    """
    SELECT l.token FROM leases l JOIN jobs j ON j.id = l.job_id
    WHERE l.token = ANY(:tokens) AND j.cancel_requested_at IS NOT NULL
    """
)
@dataclass(frozen=True)
class CancelRequest:
    """What ``cancel`` did: whether the job could still be cancelled, and whether this
    closed it (nothing was running)."""

    accepted: bool
    closed: bool = False


def cancel(conn: Connection, job_id: str) -> CancelRequest:
    """Ask a queued or running job to stop: hosts not started end ``cancelled`` at once;
    workers stop the running ones (``cancelling``) and store them ``cancelled``; the job
    then ends ``cancelled``. A finished job is left as it is (``accepted`` False)."""
    if conn.execute(_REQUEST_CANCEL, {"job": job_id}).first() is None:
        return CancelRequest(accepted=False)
    return CancelRequest(accepted=True, closed=close_pending(
        conn, job_id, HostStatus.CANCELLED, CANCELLED_BEFORE))


def cancelling(conn: Connection, tokens: Sequence[str]) -> list[str]:
    """Of the given leases, those whose job was asked to stop."""
    if not tokens:
        return []
    return [r.token for r in conn.execute(_CANCELLING, {"tokens": list(tokens)})]
