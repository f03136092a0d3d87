"""A job's one definition: ``JobSpec`` (kind, target and every option), checked once.

The command line, the API and console, the schedules' stored jobs and by-name Celery
clients all make a ``JobSpec``; ``spec_to_dict``/``spec_from_dict`` are its stored form
(a schedule's job, a re-run's source) and its by-name form, checked as the command line
checks it.
"""

from __future__ import annotations

import getpass
import math
import re
from dataclasses import dataclass, field
from typing import Any

from opsq import limits
from opsq.errors import OpsqError
from opsq.inventory import Host
from opsq.inventory.hosts import CONNECTION_LOCAL
from opsq.jobs import rolling
from opsq.settings import get_settings

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
    #: What the job does on each host (opsq.jobs.kinds): a command, put, get or script; its
    #: parameters, and the file a put or script carries (stored once with the job).
    kind: str = "command"
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    payload: bytes | None = field(default=None, repr=False, hash=False)
    #: Rolling execution (opsq.jobs.rolling): hosts per batch (N or "P%"), seconds between
    #: batches, failures after which no further batch starts (N or "P%"); retries of a
    #: failed host, seconds between them, and on what ('failure' or 'unreachable').
    batch_size: str | int | None = None
    batch_pause: float | None = None
    max_fail: str | int | None = None
    retries: int = 0
    retry_delay: float | None = None
    retry_on: str | None = None
    #: URLs the job's summary is POSTed to when it ends (opsq.jobs.webhooks).
    notify: list[str] = field(default_factory=list, hash=False)
    #: Whether the job may run on hosts with a local connection (on the worker itself).
    #: Jobs from the console and API may not, unless OPSQ_WEB_LOCAL_HOSTS says so.
    local_hosts: bool = True
    #: These hosts by name instead of what the pattern selects (a re-run: the pattern is
    #: kept to show what the first job meant).
    hosts: list[str] | None = field(default=None, hash=False)
    #: The job this one runs again.
    rerun_of: str | None = None
    #: Seconds after submission at which hosts that never started (no worker of their
    #: site took them) end ``unreachable``; None: they wait.
    deadline: float | None = None


@dataclass(frozen=True)
class JobOption:
    """One option of a job as each door spells it: the JobSpec field (``params.KEY`` for a
    kind's parameter), ``opsq run``'s flag, and the API/console field (None: that door
    does not take it, and ``why`` says why)."""

    spec: str
    cli: str
    api: str | None
    why: str = ""


#: Every option of a job. The command line, the API model and the stored form are
#: checked against this list (tests/unit/test_job_definition.py): an option added to
#: JobSpec and here, but missing from a door, fails there.
JOB_OPTIONS = (
    JobOption("pattern", "--target", "pattern"),
    JobOption("inventory", "--inventory", "inventory"),
    JobOption("command_timeout", "--timeout", "timeout"),
    JobOption("connect_timeout", "--connect-timeout", "connect_timeout"),
    JobOption("rerun_safe", "--rerun-safe", "rerun_safe"),
    JobOption("params.become", "--become", "become"),
    JobOption("params.become_user", "--become-user", "become_user"),
    JobOption("params.become_prompt", "--ask-become-pass", None,
              "a typed password exists only at a terminal; it is never stored"),
    JobOption("batch_size", "--batch-size", "batch_size"),
    JobOption("batch_pause", "--pause", "pause"),
    JobOption("max_fail", "--max-fail", "max_fail"),
    JobOption("retries", "--retries", "retries"),
    JobOption("retry_delay", "--retry-delay", "retry_delay"),
    JobOption("retry_on", "--retry-on", "retry_on"),
    JobOption("notify", "--notify", "notify"),
    JobOption("deadline", "--deadline", "deadline"),
)


#: The JobSpec fields a stored job (a schedule's, a by-name client's) may set: everything
#: but who submits it, the schedule it comes from, the file's bytes and re-run bookkeeping.
STORED_FIELDS = ("kind", "command", "pattern", "inventory", "command_timeout",
                 "connect_timeout", "rerun_safe", "params", "batch_size", "batch_pause",
                 "max_fail", "retries", "retry_delay", "retry_on", "notify", "local_hosts",
                 "deadline")


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """The stored form of ``spec`` (JSON): its STORED_FIELDS that are set."""
    default = JobSpec(command="", pattern="")
    return {k: getattr(spec, k) for k in STORED_FIELDS
            if getattr(spec, k) != getattr(default, k) or k in ("kind", "command", "pattern")}


def spec_from_dict(data: Any) -> JobSpec:
    """A JobSpec from its stored form, checked: known fields of the right types, the
    kind's parameters as the command line makes them (``kinds.check_params``), and a
    stored file for a put or script. Raises OpsqError naming what is wrong."""
    from opsq.jobs import kinds

    if not isinstance(data, dict):
        raise OpsqError("a job spec must be an object")
    unknown = set(data) - set(STORED_FIELDS)
    if unknown:
        raise OpsqError(f"a job spec takes no {', '.join(sorted(map(str, unknown)))[:80]}")
    for key in ("command", "pattern"):
        if not isinstance(data.get(key), str):
            raise OpsqError(f"a job spec needs {key} as text")
    kind = data.get("kind", "command")
    params = kinds.check_params(kind, data.get("params") or {})
    if params.get("sha256"):
        from opsq.store import db, files

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



def check_timeouts(command_timeout: float | None, connect_timeout: float | None,
                   deadline: float | None = None) -> None:
    """Refuse a deadline that is not a finite number of seconds in range (InvalidNumber)."""
    if deadline is not None:
        limits.seconds(deadline, "the job's deadline", limits.MAX_WAIT)
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



def check_prompt_lifetime(roll: rolling.Rollout, hosts: int, command_timeout: float | None,
                          connect_timeout: float | None) -> None:
    """Refuse a job with a typed sudo password (-K) that could outlive the broker queue
    keeping it (``opsq.jobs.become_password.SECRET_QUEUE_EXPIRES``): its later hosts would find no
    password. The worst case counts every batch's deadlines, the pauses between batches
    and every retry with its delay. Raises OpsqError."""
    from opsq.jobs.become_password import SECRET_QUEUE_EXPIRES

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


def whoami() -> str:
    """Who submits from this process: the login name (``submitted_by``)."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still record something
        return "unknown"
