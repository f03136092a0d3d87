"""``opsq run COMMAND -t PATTERN --wait``, started like a small tool.

The usual path loads Celery and SQLAlchemy (about 0.4 s) before it does anything. For the
plain case (one command on a pattern, waiting for the table, no option beyond
``-i``/``--rerun-safe``) this path needs neither:

* it resolves the pattern as the usual path does, so a typo, a missing inventory or a bad
  ``opsq_site`` is refused the same way, with nothing written;
* it publishes ``opsq.submit_job`` with kombu, in a message built to Celery's task
  protocol 2 (a test compares it with the one Celery itself builds for the same call);
  the control worker records and fans the job out as for any by-name client, and a rule
  the client does not check ends the job ``error`` with the reason, which is printed;
* it waits on the jobs channel (``LISTEN``) and reads the result table with psycopg2.

``opsq status JOB`` (without ``--json``) reads its line the same way (``status``).

Unlike the usual path, a PostgreSQL restart while the command waits ends it with exit 3
(the job goes on: ``opsq result JOB --wait`` picks it up).

The job id, its rows and its Celery result are those of a job the usual path submits
(Flower sees the task from its receipt on: there is no ``task-sent`` event). Set
``OPSQ_QUICK=0`` to take the usual path anyway.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opsq.errors import BackendUnavailable, JobNotFound, OpsqError
from opsq.status import HostStatus, JobStatus

#: The task that records and fans out a job on a control worker.
SUBMIT_JOB = "opsq.submit_job"
#: Options the quick path takes; any other one set sends the command the usual way.
QUICK_OPTIONS = frozenset({"pattern", "inventory", "rerun_safe", "wait_"})
#: Seconds without the job recorded before the operator is told what it waits for.
UNRECORDED_NOTICE = 10.0
#: Longest pause between two looks at the job (a notification lost to a database restart
#: only delays the answer).
MAX_NAP = 1.0
#: Characters of each stream read for the result table (it shows one line).
PREVIEW_CHARS = 200
#: Seconds to wait for PostgreSQL to accept a connection.
DB_CONNECT_TIMEOUT = 5


def enabled() -> bool:
    """Whether the quick paths may be taken (``OPSQ_QUICK=0`` turns them off)."""
    return os.environ.get("OPSQ_QUICK", "1") != "0"


def eligible(command: str, opts: dict[str, Any]) -> bool:
    """Whether ``opsq run`` with these options can take the quick path."""
    if not enabled() or not command.strip() or not opts["wait_"]:
        return False
    return all(not value or name in QUICK_OPTIONS for name, value in opts.items())


@dataclass(frozen=True)
class Row:
    """One host's line of the result table, as ``opsq.jobs.host_runs`` gives it."""

    host: str
    status: HostStatus
    exit_code: int | None
    duration: float | None
    truncated: bool
    error: str | None
    stdout: str | None
    stderr: str | None

    @property
    def succeeded(self) -> bool:
        return self.status is HostStatus.OK


@dataclass(frozen=True)
class Finished:
    """What the table's last line says of the job."""

    job_id: str
    status: JobStatus
    counts: dict[str, int]
    duration: float | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


def submit_message(job_id: str, kwargs: dict[str, Any], kwargsrepr: str) -> tuple[
        dict[str, Any], dict[str, Any], list[Any]]:
    """(headers, properties, body) of the ``opsq.submit_job`` task message, Celery's task
    protocol 2, as ``celery.app.amqp.AMQP.as_task_v2`` builds it."""
    headers = {
        "lang": "py", "task": SUBMIT_JOB, "id": job_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": job_id, "parent_id": None, "argsrepr": "()",
        "kwargsrepr": kwargsrepr, "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }
    properties = {"correlation_id": job_id, "reply_to": ""}
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return headers, properties, body


def publish(job_id: str, spec: dict[str, Any], submitted_by: str) -> None:
    """Send ``opsq.submit_job`` for the job to the control queue, as Celery would.
    Raises BackendUnavailable when RabbitMQ does not take it."""
    from kombu import Connection
    from kombu.exceptions import OperationalError as BrokerError

    from opsq.jobs.spec import mask_secrets
    from opsq.queues import CONTROL_QUEUE, declared
    from opsq.settings import get_settings

    settings = get_settings()
    kwargs = {"spec": spec, "submitted_by": submitted_by}
    shown = {**kwargs, "spec": {**spec, "command": mask_secrets(spec["command"])}}
    headers, properties, body = submit_message(job_id, kwargs, repr(shown))
    queue = declared(CONTROL_QUEUE, settings.queue_type)
    conn = Connection(settings.broker_url, connect_timeout=4,
                      transport_options={"confirm_publish": True})
    try:
        with conn.Producer() as producer:
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                             serializer="json", headers=headers, declare=[queue],
                             delivery_mode=2, retry=True,
                             retry_policy={"max_retries": 3, "interval_start": 0,
                                           "interval_step": 0.5, "interval_max": 1},
                             **properties)
    except (BrokerError, OSError) as exc:
        raise BackendUnavailable.broker(conn.as_uri(), exc) from exc
    finally:
        conn.release()


def _dsn(url: str) -> str:
    """libpq's form of opsq's SQLAlchemy database URL."""
    scheme, sep, rest = url.removeprefix("db+").partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgresql") else url


def _unavailable(exc: Exception) -> BackendUnavailable:
    from opsq.jobs.spec import mask_secrets
    from opsq.settings import get_settings

    return BackendUnavailable.database(mask_secrets(get_settings().database_url), exc)


@contextlib.contextmanager
def _cursor() -> Iterator[tuple[Any, Any]]:
    """(connection, cursor) on opsq's database, autocommit; PostgreSQL unreachable or lost
    is BackendUnavailable."""
    import psycopg2

    from opsq.settings import get_settings

    try:
        conn = psycopg2.connect(_dsn(get_settings().database_url),
                                connect_timeout=DB_CONNECT_TIMEOUT)
    except psycopg2.OperationalError as exc:
        raise _unavailable(exc) from exc
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield conn, cur
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        raise _unavailable(exc) from exc
    finally:
        conn.close()


def wait(job_id: str, notice: Any) -> tuple[Finished, list[Row]]:
    """Block until the job is finished; its end and its hosts' rows. ``notice(text)`` is
    told once when no control worker has recorded the job after UNRECORDED_NOTICE s."""
    from opsq.store import JOBS_CHANNEL

    with _cursor() as (conn, cur):
        cur.execute(f"LISTEN {JOBS_CHANNEL}")
        started, told = time.monotonic(), False
        while True:
            cur.execute("SELECT status, duration, error FROM jobs WHERE id = %s",
                        (job_id,))
            job = cur.fetchone()
            if job is not None and JobStatus(job[0]).finished:
                break
            if job is None and not told and time.monotonic() - started > UNRECORDED_NOTICE:
                notice(f"job {job_id} is not recorded yet: it waits in RabbitMQ for a "
                       "control worker (opsq.control)")
                told = True
            if not conn.notifies:
                ready, _, _ = select.select([conn], [], [], MAX_NAP)
                if ready:
                    conn.poll()
            conn.notifies.clear()
        cur.execute(
            "SELECT host, status, exit_code, duration, truncated, error, "
            "left(stdout, %(n)s), left(stderr, %(n)s) FROM host_results "
            "WHERE job_id = %(job)s ORDER BY id", {"job": job_id, "n": PREVIEW_CHARS})
        rows = [Row(r[0], HostStatus(r[1]), *r[2:]) for r in cur.fetchall()]
    counts = dict(collections.Counter(r.status.value for r in rows))
    return Finished(job_id, JobStatus(job[0]), counts, job[1], job[2]), rows


def run(command: str, opts: dict[str, Any]) -> tuple[str, Any]:
    """Check the pattern, publish the job; (its id, a function waiting for its end)."""
    from opsq.inventory import IMPLICIT_SOURCE, MEMORY_SOURCE, load_inventory
    from opsq.jobs.spec import whoami

    inv = load_inventory(opts["inventory"])
    hosts = inv.resolve(opts["pattern"])
    for h in hosts:
        h.site  # noqa: B018  (an opsq_site that is not a site's name is refused here)
    spec: dict[str, Any] = {"command": command, "pattern": opts["pattern"],
                            # the file the pattern was resolved in, as the usual path records
                            "inventory": None if inv.source in (IMPLICIT_SOURCE, MEMORY_SOURCE)
                            else inv.source}
    if opts["rerun_safe"]:
        spec["rerun_safe"] = True
    job_id = str(uuid.uuid4())
    publish(job_id, {k: v for k, v in spec.items() if v is not None}, whoami())
    return job_id, lambda notice: wait(job_id, notice)


def refused(finished: Finished) -> OpsqError | None:
    """The refusal a job that never ran ends with (the control worker's reason)."""
    if finished.status is JobStatus.ERROR and not finished.counts:
        return OpsqError(finished.error or "the job was refused")
    return None


@dataclass(frozen=True)
class Standing:
    """Where a job stands, as ``opsq status`` prints it (``jobs.progress`` gives the same)."""

    job_id: str
    status: JobStatus
    done: int
    total: int
    counts: dict[str, int]
    batch: int | None
    batches: int | None
    error: str | None
    #: Whether some of its pending hosts belong to a site (whose workers may be missing).
    site_pending: bool

    @property
    def finished(self) -> bool:
        return self.status.finished


def status(job_id: str) -> Standing:
    """The job's standing, in three small queries. Raises JobNotFound."""
    with _cursor() as (_, cur):
        cur.execute("SELECT status, done_count, host_count, current_batch, batch_size, "
                    "error FROM jobs WHERE id = %s", (job_id,))
        job = cur.fetchone()
        if job is None:
            raise JobNotFound.of(job_id)
        cur.execute("SELECT status, count(*) FROM host_results WHERE job_id = %s "
                    "GROUP BY status", (job_id,))
        counts = dict(cur.fetchall())
        cur.execute("SELECT EXISTS (SELECT 1 FROM host_results WHERE job_id = %s "
                    "AND status = 'pending' AND site IS NOT NULL)", (job_id,))
        site_pending = bool(cur.fetchone()[0])
    status_, done, total, batch, batch_size, error = job
    return Standing(job_id, JobStatus(status_), done, total, counts, batch,
                    -(-total // batch_size) if batch_size else None, error, site_pending)
