"""A job's results as the CLI, API and console read them: typed summaries, host rows,
attempts, output while it runs, and waiting for the end (LISTEN/NOTIFY, no polling)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import defer

from opsq.errors import JobNotFound, OpsqError
from opsq.jobs import state
from opsq.jobs.spec import mask_secrets
from opsq.store import db
from opsq.store.listen import Listener
from opsq.store.models import HostResult, HostStatus, Job, JobStatus


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
    #: A running host: seconds since it started (by the database's clock).
    elapsed: float | None = None

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
    #: 'command', 'put', 'get' or 'script' (opsq.jobs.kinds).
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
        job = job_row(session, job_id)
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


#: Seconds an output search may take before it is refused (it reads every host's output).
SEARCH_TIMEOUT = 5.0
#: Characters of a search.
MAX_SEARCH_CHARS = 200


def host_runs(job_id: str, preview: bool = False, host: str | None = None,
              offset: int = 0, limit: int | None = None,
              search: str | None = None) -> list[HostRun]:
    """Every host's run, in inventory order; with ``preview`` only PREVIEW_CHARS of each
    stream are read (a table of a large job stays light): the first ones, or of a host
    still running the last ones (what it prints now). ``host``: that host's run only;
    ``offset``/``limit``: one page of them; ``search``: only hosts whose output contains
    that text (any case), refused past SEARCH_TIMEOUT seconds."""
    out_col, err_col = HostResult.stdout, HostResult.stderr
    if preview:
        running = HostResult.status == HostStatus.RUNNING.value
        out_col, err_col = (
            case((running, func.right(col, PREVIEW_CHARS)), else_=func.left(col, PREVIEW_CHARS))
            for col in (out_col, err_col))
    elapsed = case((HostResult.status == HostStatus.RUNNING.value,
                    func.extract("epoch", func.now() - HostResult.started_at)), else_=None)
    where = [HostResult.job_id == job_id]
    if host is not None:
        where.append(HostResult.host == host)
    if search:
        if len(search) > MAX_SEARCH_CHARS:
            raise OpsqError(f"a search is at most {MAX_SEARCH_CHARS} characters")
        where.append(or_(db.contains(HostResult.stdout, search),
                         db.contains(HostResult.stderr, search)))
    with db.session_scope() as session:
        job_row(session, job_id)
        if search:
            session.execute(text(f"SET LOCAL statement_timeout = {int(SEARCH_TIMEOUT * 1000)}"))
        try:
            rows = session.execute(
                select(HostResult.host, HostResult.status, HostResult.exit_code,
                       out_col.label("stdout"), err_col.label("stderr"),
                       HostResult.truncated, HostResult.stdout_bytes, HostResult.stderr_bytes,
                       HostResult.started_at, HostResult.finished_at, HostResult.duration,
                       HostResult.attempt, HostResult.worker, HostResult.error,
                       HostResult.changed, HostResult.sha256, HostResult.batch,
                       elapsed.label("elapsed"))
                .where(*where)
                .order_by(HostResult.id).offset(offset).limit(limit)
                .execution_options(yield_per=HOST_ROWS_PAGE)
            )
            return [HostRun(**{**r._asdict(), "status": HostStatus(r.status),
                               "elapsed": None if r.elapsed is None else float(r.elapsed)})
                    for r in rows]
        except OperationalError as exc:
            if "statement timeout" in str(exc):
                raise OpsqError(f"the search took more than {SEARCH_TIMEOUT:g} s; search "
                                "for something longer or rarer") from None
            raise


_ATTEMPTS = text("""
    SELECT host, attempt, status, exit_code, stdout, stderr, error, duration, finished_at
    FROM host_attempts WHERE job_id = :job ORDER BY host, attempt
""")


def attempts(job_id: str) -> list[dict[str, Any]]:
    """The earlier runs of the job's retried hosts (the host rows hold the last runs)."""
    with db.session_scope() as session:
        job_row(session, job_id)
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
        job_row(session, job_id)
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


def job_action(job_id: str) -> tuple[str, dict[str, Any]]:
    """The job's kind and parameters. Raises JobNotFound."""
    with db.session_scope() as session:
        job = job_row(session, job_id)
        return job.kind, dict(job.params or {})


def job_status(job_id: str) -> JobStatus | None:
    """The job's status, or None when there is no such job."""
    with db.session_scope() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return None if status is None else JobStatus(status)


def job_row(session: Any, job_id: str) -> Job:
    # The host list (100,000 names for a large job) is read only where used.
    job = session.get(Job, job_id, options=[defer(Job.hosts)])
    if job is None:
        raise no_such_job(job_id)
    return job


def no_such_job(job_id: str) -> JobNotFound:
    return JobNotFound.of(job_id)


# -- folded results ----------------------------------------------------------------------

#: Seconds folding a job's output may take.
GROUPS_TIMEOUT = 20.0
#: Groups one request returns at most (a job of distinct outputs has a group per host).
MAX_GROUPS_PAGE = 1000
#: Host names NodeSet folds: ClusterShell reads brackets, commas, "@", "!", "&" and "^"
#: in a name as syntax (``a[1-99999999]`` would expand), so other names stay as they are.
_FOLDABLE = re.compile(r"^[A-Za-z._-]*[0-9]{0,18}[A-Za-z._-]*$")
_DIGITS = re.compile(r"[0-9]+")
_GROUPS = text("""
    WITH g AS (
        SELECT encode(sha256(convert_to(
                   length(coalesce(stdout, '')) || ':' || coalesce(stdout, '') || ':'
                   || length(coalesce(stderr, '')) || ':' || coalesce(stderr, '') || ':'
                   || coalesce(error, '') || ':'
                   || CASE WHEN status IN ('pending', 'running') THEN status ELSE '' END,
                   'UTF8')), 'hex') AS k, id, host, status, exit_code
        FROM host_results WHERE job_id = :job
    )
    SELECT k, count(*) AS n, min(id) AS first, array_agg(host ORDER BY id) AS hosts,
           array_agg(DISTINCT exit_code) FILTER (WHERE exit_code IS NOT NULL) AS codes,
           count(*) OVER () AS total
    FROM g GROUP BY k ORDER BY count(*) DESC, min(id)
    OFFSET :offset LIMIT :limit
""")
_GROUP_STATUSES = text("""
    SELECT encode(sha256(convert_to(
               length(coalesce(stdout, '')) || ':' || coalesce(stdout, '') || ':'
               || length(coalesce(stderr, '')) || ':' || coalesce(stderr, '') || ':'
               || coalesce(error, '') || ':'
               || CASE WHEN status IN ('pending', 'running') THEN status ELSE '' END,
               'UTF8')), 'hex') AS k,
           status, count(*) AS n
    FROM host_results WHERE job_id = :job GROUP BY 1, 2
""")
_FIRSTS = text("""
    SELECT id, left(stdout, :chars) AS stdout, left(stderr, :chars) AS stderr,
           length(stdout) AS stdout_chars, length(stderr) AS stderr_chars, error
    FROM host_results WHERE id = ANY(CAST(:ids AS bigint[]))
""")
#: Characters of each stream a group shows (the host's page has all of it).
GROUP_PREVIEW_CHARS = 16 * 1024
#: Names of one group folded at most; a larger group lists its count and first names.
MAX_FOLDED_NAMES = 20_000


def fold(names: list[str]) -> str:
    """Host names in ClusterShell's NodeSet notation (``web[01-97],db1``); a name NodeSet
    would read as syntax is listed as it is."""
    from ClusterShell.NodeSet import NOGROUP_RESOLVER, NodeSet

    # NodeSet folds a name with one number in linear time; names with several numbers
    # (rack2-node07) cost it far more than linear, so those are listed as they are.
    plain, other = [], []
    for n in names:
        (plain if _FOLDABLE.match(n) and len(_DIGITS.findall(n)) <= 1 else other).append(n)
    folded = str(NodeSet.fromlist(plain, resolver=NOGROUP_RESOLVER)) if plain else ""
    return ",".join([folded, *other] if folded else other)


@dataclass(frozen=True)
class OutputGroup:
    """Hosts of a job that printed the same thing (stdout, stderr and opsq's error)."""

    hosts: str
    count: int
    statuses: dict[str, int]
    exit_codes: list[int]
    #: The first GROUP_PREVIEW_CHARS of each stream; ``*_chars``: their whole length.
    stdout: str | None
    stderr: str | None
    error: str | None
    stdout_chars: int = 0
    stderr_chars: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Groups:
    groups: list[OutputGroup]
    #: How many distinct outputs the job has (all pages).
    total: int


def groups(job_id: str, offset: int = 0, limit: int = MAX_GROUPS_PAGE) -> Groups:
    """The job's hosts grouped by what they printed, the largest group first (ties: in
    inventory order), each with its hosts folded (``web[01-97]``), its count, statuses
    and exit codes. Hosts still running group by their output so far."""
    if not offset >= 0 or not 1 <= limit <= MAX_GROUPS_PAGE:
        raise OpsqError(f"offset must be 0 or more and limit 1 to {MAX_GROUPS_PAGE}")
    with db.session_scope() as session:
        job_row(session, job_id)
        conn = session.connection()
        # Every host's whole output is hashed: bounded, so that asking again and again for
        # a huge job's groups cannot tie the database up.
        conn.execute(text(f"SET LOCAL statement_timeout = {int(GROUPS_TIMEOUT * 1000)}"))
        try:
            rows = conn.execute(_GROUPS, {"job": job_id, "offset": offset,
                                          "limit": limit}).all()
            keys = {r.k for r in rows}
            statuses: dict[str, dict[str, int]] = {}
            if keys:
                for r in conn.execute(_GROUP_STATUSES, {"job": job_id}):
                    if r.k in keys:
                        statuses.setdefault(r.k, {})[r.status] = r.n
        except OperationalError as exc:
            if "statement timeout" in str(exc):
                raise OpsqError(f"folding this job's output took more than "
                                f"{GROUPS_TIMEOUT:g} s; page through its hosts instead"
                                ) from None
            raise
        firsts = {r.id: r for r in conn.execute(
            _FIRSTS, {"ids": [r.first for r in rows], "chars": GROUP_PREVIEW_CHARS})}
    out = []
    for r in rows:
        first = firsts[r.first]
        names = list(r.hosts)
        hosts = fold(names) if len(names) <= MAX_FOLDED_NAMES else (
            f"{', '.join(names[:20])}, … ({len(names) - 20} more)")
        out.append(OutputGroup(hosts=hosts, count=r.n, statuses=statuses.get(r.k, {}),
                               exit_codes=sorted(r.codes or []), stdout=first.stdout,
                               stderr=first.stderr, error=first.error,
                               stdout_chars=first.stdout_chars or 0,
                               stderr_chars=first.stderr_chars or 0))
    return Groups(groups=out, total=rows[0].total if rows else 0)


def first_start(job_id: str) -> datetime | None:
    """When the job's first host started (None before any did)."""
    with db.session_scope() as session:
        return session.execute(select(func.min(HostResult.started_at))
                               .where(HostResult.job_id == job_id)).scalar()


#: Runs one page of a host's history shows at most.
MAX_HISTORY_PAGE = 500
_HISTORY = text("""
    SELECT h.job_id, j.command, j.kind, j.pattern, j.submitted_at, j.submitted_by,
           h.status, h.exit_code, h.duration, h.finished_at, h.error,
           left(h.stdout, :chars) AS stdout, left(h.stderr, :chars) AS stderr
    FROM host_results h JOIN jobs j ON j.id = h.job_id
    WHERE h.host = :host
    ORDER BY j.submitted_at DESC, h.id DESC
    OFFSET :offset LIMIT :limit
""")


def host_history(host: str, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
    """A host's runs across jobs, the newest job first: the job, its command (masked), the
    host's status, exit code, time and the start of its output."""
    if not offset >= 0 or not 1 <= limit <= MAX_HISTORY_PAGE:
        raise OpsqError(f"offset must be 0 or more and limit 1 to {MAX_HISTORY_PAGE}")
    with db.session_scope() as session:
        session.execute(text(f"SET LOCAL statement_timeout = {int(SEARCH_TIMEOUT * 1000)}"))
        try:
            rows = session.execute(_HISTORY, {"host": host, "offset": offset, "limit": limit,
                                              "chars": PREVIEW_CHARS}).all()
        except OperationalError as exc:
            if "statement timeout" not in str(exc):
                raise
            raise OpsqError(f"the host's history took more than {SEARCH_TIMEOUT:g} s to "
                            "read; page less far") from None
    out = []
    for r in rows:
        d = r._asdict()
        d["command"] = mask_secrets(d["command"])
        for k in ("submitted_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] else None
        out.append(d)
    return out


_PENDING_SITES = text("""
    SELECT site, count(*) AS n FROM host_results
    WHERE job_id = :job AND status = 'pending' AND site IS NOT NULL
    GROUP BY site ORDER BY site
""")


def waiting(job_id: str) -> list[str]:
    """Why hosts of the job have not started, when it is their site's workers: "waiting
    for a worker of site us (3 hosts)" for each site with pending hosts whose queue no
    worker consumes (asked of RabbitMQ). Empty when every site has a worker, or when the
    broker cannot be asked."""
    from opsq.app import app
    from opsq.queues import fleet_queue, queue_state

    with db.session_scope() as session:
        pending = session.execute(_PENDING_SITES, {"job": job_id}).all()
    if not pending:
        return []
    key = (job_id, tuple(pending))
    held = _waiting_seen.get(key)
    if held is not None and held[0] > time.monotonic():
        return held[1]  # a live page asks every second: RabbitMQ is asked every few
    out = []
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            for row in pending:
                if queue_state(conn, fleet_queue(row.site))[1] == 0:  # no consumer
                    out.append(f"waiting for a worker of site {row.site} ({row.n} "
                               f"host{'s' if row.n != 1 else ''})")
    except Exception:  # the broker away: nothing known, nothing said
        return []
    if len(_waiting_seen) > WAITING_SEEN_MAX:
        _waiting_seen.clear()
    _waiting_seen[key] = (time.monotonic() + WAITING_TTL, out)
    return out


#: Seconds an answer of ``waiting`` is reused, and answers kept at most.
WAITING_TTL = 5.0
WAITING_SEEN_MAX = 1000
_waiting_seen: dict[tuple, tuple[float, list[str]]] = {}
