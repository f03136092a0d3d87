"""What the API and the pages let a user do, each change written to the audit log.

The inputs are pydantic models shared by the JSON API and the HTML forms, and every
check beyond their types is opsq's own (``opsq.jobs``, ``opsq.schedules``), so the
console refuses exactly what the command line refuses, with the same messages.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import select

from opsq import actions, db, jobs, schedules
from opsq.errors import OpsqError
from opsq.models import Job, JobStatus, Schedule
from opsq.web import audit
from opsq.web.users import Principal

#: Longest text field accepted (a command, a pattern), in characters.
MAX_TEXT = 64 * 1024
#: Most jobs a list returns.
MAX_JOBS_LISTED = 1000
#: How the jobs submitted from the console record their submitter.
SUBMITTED_BY_PREFIX = "web:"


def storable(text: str) -> str:
    """Refuse text PostgreSQL cannot store (NUL, lone surrogates), as a 422 not a 500."""
    if "\x00" in text:
        raise ValueError("text may not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid UTF-8") from None
    return text


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(storable)]
ShortText = Annotated[str, Field(max_length=1024), AfterValidator(storable)]


class JobIn(BaseModel):
    """A job to run: what, where, and the options of ``opsq run``."""

    model_config = ConfigDict(extra="forbid")

    command: Text
    pattern: Text
    inventory: ShortText | None = None
    timeout: float | None = Field(None, description="Deadline per host, seconds.")
    connect_timeout: float | None = None
    rerun_safe: bool = False
    become: bool = False
    become_user: ShortText | None = None
    batch_size: ShortText | None = Field(None, description="Hosts per batch: N or P%.")
    pause: float | None = None
    max_fail: ShortText | None = None
    retries: int = Field(0, ge=0, le=1000)
    retry_delay: float | None = None
    retry_on: Literal["failure", "unreachable"] | None = None
    notify: list[ShortText] = Field(default_factory=list, max_length=100)


class ScheduleIn(BaseModel):
    """A new schedule: exactly one of cron/every/at, and either command + pattern (a
    fleet command) or task (+ args, kwargs: JSON values or JSON text)."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    cron: ShortText | None = None
    every: ShortText | None = None
    at: ShortText | None = None
    tz: ShortText | None = None
    command: Text | None = None
    pattern: Text | None = None
    inventory: ShortText | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    rerun_safe: bool = False
    notify: list[ShortText] = Field(default_factory=list, max_length=100)
    task: ShortText | None = None
    args: list[Any] | Text | None = None
    kwargs: dict[str, Any] | Text | None = None
    enabled: bool = True


class ScheduleEdit(BaseModel):
    """Changes to a schedule; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    cron: ShortText | None = None
    every: ShortText | None = None
    at: ShortText | None = None
    tz: ShortText | None = None
    command: Text | None = None
    pattern: Text | None = None
    timeout: float | None = None
    notify: list[ShortText] | None = Field(None, max_length=100)
    enabled: bool | None = None


def _finite(value: float | None, what: str) -> None:
    # float('nan') passes pydantic; opsq's own checks refuse it, but some options
    # (the pause, delays) reach arithmetic first.
    if value is not None and not math.isfinite(value):
        raise OpsqError(f"{what} must be a finite number, not {value!r}")


# -- jobs --------------------------------------------------------------------------------


def submit(who: Principal, job: JobIn, address: str | None) -> str:
    """Submit ``job`` as ``who``; its id. Raises OpsqError (nothing written)."""
    for value, what in ((job.timeout, "the timeout"), (job.connect_timeout,
                        "the connect timeout"), (job.pause, "--pause"),
                        (job.retry_delay, "--retry-delay")):
        _finite(value, what)
    params = actions.become_params(job.become, job.become_user)
    spec = jobs.JobSpec(
        command=job.command, pattern=job.pattern, inventory=job.inventory,
        command_timeout=job.timeout, connect_timeout=job.connect_timeout,
        rerun_safe=job.rerun_safe, submitted_by=SUBMITTED_BY_PREFIX + who.name,
        params=params, batch_size=job.batch_size, batch_pause=job.pause,
        max_fail=job.max_fail, retries=job.retries, retry_delay=job.retry_delay,
        retry_on=job.retry_on, notify=list(job.notify))
    job_id = jobs.submit(spec).id
    audit.record(None, who.name, "job.submit", job_id,
                 {"command": job.command, "pattern": job.pattern}, address)
    return job_id


def cancel(who: Principal, job_id: str, address: str | None) -> jobs.JobSummary:
    result = jobs.cancel(job_id)
    audit.record(None, who.name, "job.cancel", job_id, {}, address)
    return result


def job_row(j: Job) -> dict[str, Any]:
    return {"job_id": j.id, "status": j.status, "command": jobs.mask_secrets(j.command),
            "pattern": j.pattern, "kind": j.kind, "total": j.host_count, "ok": j.ok_count,
            "done": j.done_count, "submitted_by": j.submitted_by, "schedule": j.schedule,
            "submitted_at": j.submitted_at.isoformat() if j.submitted_at else None,
            "finished_at": j.finished_at.isoformat() if j.finished_at else None,
            "duration": j.duration}


def list_jobs(status: JobStatus | None = None, pattern: str | None = None,
              submitter: str | None = None, schedule: str | None = None,
              since: datetime | None = None, until: datetime | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
    """The newest jobs first, filtered."""
    query = select(Job).order_by(Job.submitted_at.desc()).limit(min(limit, MAX_JOBS_LISTED))
    for column, value in ((Job.status, status.value if status else None),
                          (Job.pattern, pattern), (Job.submitted_by, submitter),
                          (Job.schedule, schedule)):
        if value:
            query = query.where(column == value)
    if since is not None:
        query = query.where(Job.submitted_at >= _utc(since, "since"))
    if until is not None:
        query = query.where(Job.submitted_at < _utc(until, "until"))
    with db.session_scope() as session:
        return [job_row(j) for j in session.scalars(query)]


def _utc(value: datetime, what: str) -> datetime:
    """``value`` in UTC (naive: taken as UTC). PostgreSQL refuses UTC offsets beyond
    15:59, which ISO 8601 allows."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise OpsqError(f"{what} is out of range (years 1 to 9999 in UTC)") from None


# -- schedules ---------------------------------------------------------------------------


def _json_value(value: Any, what: str, kind: type) -> Any:
    if isinstance(value, str):
        return schedules.parse_json(value, what, kind) if value.strip() else kind()
    return kind() if value is None else value


def create_schedule(who: Principal, s: ScheduleIn, address: str | None) -> Schedule:
    """Create a schedule as the CLI's ``schedule add`` does. Raises OpsqError."""
    _finite(s.timeout, "the timeout")
    _finite(s.connect_timeout, "the connect timeout")
    when = schedules.timing(s.cron, s.every, s.at, s.tz)
    if s.task:
        if s.command or s.pattern:
            raise schedules.ScheduleError("give either a task or a command and a pattern, "
                                          "not both")
        if s.notify:
            raise schedules.ScheduleError("notify goes with a command and a pattern")
        row = schedules.add(s.name, when, s.task, _json_value(s.args, "args", list),
                            _json_value(s.kwargs, "kwargs", dict), s.enabled)
    else:
        if not s.pattern or not s.command:
            raise schedules.ScheduleError("a fleet schedule needs a command and a pattern "
                                          "(or give a task)")
        if s.args or s.kwargs:
            raise schedules.ScheduleError("args and kwargs go with a task")
        kwargs = {"command": s.command, "pattern": s.pattern, "inventory": s.inventory,
                  "timeout": s.timeout, "connect_timeout": s.connect_timeout,
                  "rerun_safe": s.rerun_safe, "notify": list(s.notify)}
        row = schedules.add(s.name, when, schedules.SUBMIT_TASK, [], kwargs, s.enabled)
    audit.record(None, who.name, "schedule.create", row.name,
                 {"when": describe_timing(row), "task": row.task, "command": s.command,
                  "pattern": s.pattern, "enabled": row.enabled}, address)
    return row


def edit_schedule(who: Principal, name: str, e: ScheduleEdit, address: str | None,
                  action: str = "schedule.edit") -> Schedule:
    """Change a schedule as ``schedule edit/enable/disable`` do. Raises OpsqError."""
    _finite(e.timeout, "the timeout")
    when = None
    if e.cron is not None or e.every is not None or e.at is not None:
        when = schedules.timing(e.cron, e.every, e.at, e.tz)
    elif e.tz is not None:
        raise schedules.ScheduleError("tz goes with cron or at")
    update = {k: v for k, v in (("command", e.command), ("pattern", e.pattern),
                                ("timeout", e.timeout), ("notify", e.notify))
              if v is not None}
    if when is None and not update and e.enabled is None:
        raise schedules.ScheduleError("nothing to change")
    row = schedules.edit(name, when=when, kwargs_update=update, enabled=e.enabled)
    audit.record(None, who.name, action, name,
                 {"when": describe_timing(row) if when else None, "command": e.command,
                  "pattern": e.pattern, "timeout": e.timeout, "enabled": e.enabled},
                 address)
    return row


def remove_schedule(who: Principal, name: str, address: str | None) -> None:
    schedules.remove(name)
    audit.record(None, who.name, "schedule.remove", name, {}, address)


def run_schedule(who: Principal, name: str, address: str | None) -> str:
    task_id = schedules.run_now(name)
    audit.record(None, who.name, "schedule.run", name, {"task_id": task_id}, address)
    return task_id


def find_schedule(name: str) -> Schedule | None:
    with db.session_scope() as session:
        return session.scalar(select(Schedule).where(Schedule.name == name))


def describe_timing(row: Schedule) -> str:
    if row.kind == "interval":
        return f"every {float(row.expression):g}s"
    if row.kind == "cron":
        return f"cron '{row.expression}' {row.timezone}"
    return f"at {row.expression}"


def describe_target(row: Schedule) -> str:
    if row.task == schedules.SUBMIT_TASK:
        return (f"{row.kwargs.get('pattern')}: "
                f"{jobs.mask_secrets(str(row.kwargs.get('command')))}")
    return f"{row.task}"


def schedule_dict(row: Schedule) -> dict[str, Any]:
    kwargs = dict(row.kwargs or {})
    if isinstance(kwargs.get("command"), str):
        kwargs["command"] = jobs.mask_secrets(kwargs["command"])
    if "notify" in kwargs:
        from opsq.webhooks import shown

        kwargs["notify"] = [shown(u) for u in kwargs["notify"]]
    return {"name": row.name, "kind": row.kind, "expression": row.expression,
            "timezone": row.timezone, "when": describe_timing(row), "task": row.task,
            "args": list(row.args or []), "kwargs": kwargs, "enabled": row.enabled,
            "next_run_at": _iso(row.next_run_at), "last_run_at": _iso(row.last_run_at),
            "run_count": row.run_count, "last_task_id": row.last_task_id,
            "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- hosts -------------------------------------------------------------------------------


def host_dict(h: Any) -> dict[str, Any]:
    """A host without its variables (they may hold passwords)."""
    return {"name": h.name, "address": h.address, "port": h.port, "user": h.user,
            "groups": list(h.groups)}


def inventory_view() -> dict[str, Any]:
    inv = jobs.load_inventory()
    return {"source": inv.source,
            "groups": {g: [h for h in inv.hosts if h in members]
                       for g, members in sorted(inv.groups.items())},
            "hosts": [host_dict(h) for h in inv.hosts.values()]}
