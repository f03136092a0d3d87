"""What the API and the pages let a user do, each change written to the audit log.

The inputs are pydantic models shared by the JSON API and the HTML forms, and every
check beyond their types is opsq's own (``opsq.jobs``, ``opsq.schedules``), so the
console refuses what the command line refuses, with the same messages, and more: a
console user is not a user of the control node, so they choose an inventory by the name
an admin gave it (never a path), reach local hosts only where an admin allows it, and
schedule registered tasks only as an admin. Every change is audited in its own
transaction, and every refusal with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import click
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import select

from opsq import jobs, schedules
from opsq.errors import InventoryError, OpsqError
from opsq.jobs import kinds
from opsq.settings import PROJECT_ROOT, get_settings
from opsq.store import db
from opsq.store.models import Job, JobStatus, Role, Schedule
from opsq.web import audit
from opsq.web.lists import bounded, check_offset, contains
from opsq.web.users import Principal

#: Longest text field accepted (a command, a pattern), in characters.
MAX_TEXT = 64 * 1024
#: Most jobs a list returns.
MAX_JOBS_LISTED = 1000
#: How the jobs submitted from the console record their submitter.
SUBMITTED_BY_PREFIX = "web:"
#: The console's inventory when OPSQ_WEB_INVENTORIES is unset (OPSQ_INVENTORY).
DEFAULT_INVENTORY_NAME = "default"
#: Tasks opsq sends itself, with arguments only it can make: never scheduled from the
#: console (a fleet command is scheduled with a command and a pattern instead).
INTERNAL_TASKS = frozenset({"opsq.submit_job", "opsq.run_hosts", "opsq.run_on_host",
                            "opsq.start_job", "opsq.finish_job", "opsq.notify"})

logger = logging.getLogger(__name__)


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
    inventory: ShortText | None = Field(
        None, description="The name of an inventory the console offers (GET /hosts "
                          "lists them); unset: the first.")
    timeout: float | None = Field(None, description="Deadline per host, seconds.")
    connect_timeout: float | None = None
    rerun_safe: bool = False
    become: bool = False
    become_user: ShortText | None = None
    batch_size: ShortText | int | None = Field(None, description="Hosts per batch: N or P%.")
    pause: float | None = None
    max_fail: ShortText | int | None = None
    retries: int = Field(0, ge=0, le=1000)
    retry_delay: float | None = None
    retry_on: Literal["failure", "unreachable"] | None = None
    notify: list[ShortText] = Field(default_factory=list, max_length=100)
    deadline: float | None = Field(None, description="Seconds after submission at which "
                                   "hosts no worker took (their site's workers are down) "
                                   "end unreachable.")


class ScheduleIn(BaseModel):
    """A new schedule: exactly one of cron/every/at, and either command + pattern (a
    fleet command) or task (+ args, kwargs: JSON values or JSON text; admins only)."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText
    cron: ShortText | None = None
    every: ShortText | None = None
    at: ShortText | None = None
    tz: ShortText | None = None
    command: Text | None = None
    pattern: Text | None = None
    inventory: ShortText | None = Field(None, description="An inventory's name, as for "
                                                          "jobs.")
    timeout: float | None = None
    connect_timeout: float | None = None
    rerun_safe: bool = False
    notify: list[ShortText] = Field(default_factory=list, max_length=100)
    job: Text | None = Field(
        None, description="A whole job instead of command and pattern: an opsq run line as "
                          "typed at the command line ('run \\'apt-get -y upgrade\\' -t web "
                          "--batch-size 25% --become'), every option but -K, --wait and -i "
                          "(the inventory field names it).")
    task: ShortText | None = None
    args: list[Any] | Text | None = None
    kwargs: dict[str, Any] | Text | None = None
    enabled: bool = True
    overlap: Literal["skip", "allow"] = Field(
        "skip", description="While the previous job still runs: skip the firing, or allow "
                            "another job.")


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
    overlap: Literal["skip", "allow"] | None = None
    job: Text | None = Field(None, description="A fleet schedule's whole job, replacing "
                                               "what it ran: an opsq run line, as for new "
                                               "schedules.")
    inventory: ShortText | None = Field(None, description="With job: the inventory's name "
                                                          "(unset: the one it runs on).")
    task: ShortText | None = Field(None, description="A registered task's schedule: its "
                                                     "task, with args and kwargs (admins).")
    args: list[Any] | Text | None = None
    kwargs: dict[str, Any] | Text | None = None


def _finite(value: float | None, what: str) -> None:
    # float('nan') passes pydantic; opsq's own checks refuse it, but some options
    # (the pause, delays) reach arithmetic first.
    if value is not None and not math.isfinite(value):
        raise OpsqError(f"{what} must be a finite number, not {value!r}")


# -- inventories -------------------------------------------------------------------------


def inventories() -> dict[str, str]:
    """The inventories the console offers, by name: OPSQ_WEB_INVENTORIES (``name=path``
    pairs, comma-separated), else OPSQ_INVENTORY as "default". Raises OpsqError for a
    malformed setting."""
    s = get_settings()
    if not s.web_inventories.strip():
        return {DEFAULT_INVENTORY_NAME: str(s.inventory_path())}
    out: dict[str, str] = {}
    for pair in (p.strip() for p in s.web_inventories.split(",")):
        name, sep, path = pair.partition("=")
        if not pair:
            continue
        if not sep or not name.strip() or not path.strip():
            raise OpsqError("OPSQ_WEB_INVENTORIES is malformed: give name=path pairs, "
                            "comma-separated (an admin must fix it)")
        where = Path(path.strip()).expanduser()
        out[name.strip()] = str(where if where.is_absolute() else PROJECT_ROOT / where)
    return out


def inventory_path(name: str | None) -> str:
    """The path of the console's inventory ``name`` (None: the first one). Raises
    OpsqError for a name the console does not offer, listing those it does."""
    offered = inventories()
    if name is None or name == "":
        return next(iter(offered.values()))
    if name not in offered:
        raise OpsqError(f"unknown inventory {name[:64]!r}: choose one of "
                        f"{', '.join(sorted(offered))} (an admin sets them in "
                        "OPSQ_WEB_INVENTORIES)")
    return offered[name]


def inventory_name(path: str) -> str:
    """The console's name of the inventory at ``path``, or "(set on the command line)"."""
    try:
        offered = inventories()
    except OpsqError:
        offered = {}
    return next((n for n, p in offered.items() if p == path), "(set on the command line)")


@contextlib.contextmanager
def inventory_errors(name: str | None) -> Iterator[None]:
    """Turn an error reading an inventory into one that quotes nothing of the file (its
    lines may hold secrets): the reason goes to the server's log, for an admin."""
    try:
        yield
    except InventoryError as exc:
        shown = name or next(iter(inventories()))
        logger.warning("inventory %r cannot be used: %s", shown, exc)
        raise OpsqError(f"the inventory {shown[:64]!r} cannot be used for this: an admin "
                        "finds the reason in the console's log, or with opsq hosts "
                        "PATTERN -i PATH") from None


def resolve(pattern: str, inventory: str | None = None) -> list[Any]:
    """The hosts ``pattern`` selects in the console's inventory ``inventory``, those opsq
    cannot run on included (their ``problem`` says why)."""
    path = inventory_path(inventory)
    with inventory_errors(inventory):
        return jobs.load_inventory(path).select(pattern)


def _offered(path: str | None) -> bool:
    """Whether the inventory at ``path`` (None: OPSQ_INVENTORY) is one the console offers."""
    return (path or str(get_settings().inventory_path())) in inventories().values()


def _local_hosts() -> bool:
    return get_settings().web_local_hosts


def _inventory_name(row: Schedule) -> str | None:
    """The console's name of the inventory a fleet schedule runs on (None: the first)."""
    spec = row.kwargs.get("spec") if isinstance(row.kwargs.get("spec"), dict) else {}
    path = row.kwargs.get("inventory") or spec.get("inventory") \
        or str(get_settings().inventory_path())
    return next((name for name, p in inventories().items() if p == path), None)


# -- jobs --------------------------------------------------------------------------------


def submit(who: Principal, job: JobIn, address: str | None) -> str:
    """Submit ``job`` as ``who``; its id. Raises OpsqError (nothing written but the
    refusal's audit entry)."""
    detail = job.model_dump()
    try:
        for value, what in ((job.timeout, "the timeout"), (job.connect_timeout,
                            "the connect timeout"), (job.pause, "the pause"),
                            (job.retry_delay, "the retry delay"),
                            (job.deadline, "the deadline")):
            _finite(value, what)
        params = kinds.become_params(job.become, job.become_user)
        spec = jobs.JobSpec(
            command=job.command, pattern=job.pattern,
            inventory=inventory_path(job.inventory),
            command_timeout=job.timeout, connect_timeout=job.connect_timeout,
            rerun_safe=job.rerun_safe, submitted_by=SUBMITTED_BY_PREFIX + who.name,
            params=params, batch_size=job.batch_size, batch_pause=job.pause,
            max_fail=job.max_fail, retries=job.retries, retry_delay=job.retry_delay,
            retry_on=job.retry_on, notify=list(job.notify), local_hosts=_local_hosts(),
            deadline=job.deadline)

        def audited(conn: Any, job_id: str) -> None:
            audit.record(conn, who, "job.submit", job_id, detail, address)

        with inventory_errors(job.inventory):
            return jobs.submit(spec, on_record=audited).id
    except OpsqError as exc:
        audit.refused(who, "job.submit", None, str(exc), detail, address)
        raise


def rerun(who: Principal, job_id: str, failed_only: bool, address: str | None) -> str:
    """Run job ``job_id`` again as ``who`` (its hosts, or the failed ones); the new job's
    id. Refused (OpsqError, audited) as a new submission would be, and for a job with a
    typed sudo password or on an inventory the console does not offer."""
    detail = {"rerun_of": job_id, "failed_only": failed_only}
    try:
        spec = jobs.rerun_spec(job_id, failed_only)
        if spec.params.get("become_prompt"):
            raise OpsqError(f"job {job_id} used a typed sudo password (-K), which the "
                            "console cannot give: run it again with opsq rerun")
        if not _offered(spec.inventory):
            raise OpsqError(f"job {job_id} ran on an inventory the console does not offer: "
                            "run it again with opsq rerun")
        path = spec.inventory or str(get_settings().inventory_path())
        spec = replace(spec, submitted_by=SUBMITTED_BY_PREFIX + who.name,
                       local_hosts=_local_hosts())

        def audited(conn: Any, new_id: str) -> None:
            audit.record(conn, who, "job.rerun", new_id, detail, address)

        with inventory_errors(inventory_name(path)):
            return jobs.submit(spec, on_record=audited).id
    except OpsqError as exc:
        audit.refused(who, "job.rerun", job_id, str(exc), detail, address)
        raise


def cancel(who: Principal, job_id: str, address: str | None) -> jobs.JobSummary:
    def audited(conn: Any, job_id: str) -> None:
        audit.record(conn, who, "job.cancel", job_id, {}, address)

    try:
        return jobs.cancel(job_id, on_record=audited)
    except OpsqError as exc:
        audit.refused(who, "job.cancel", job_id, str(exc), {}, address)
        raise


def job_row(j: Job) -> dict[str, Any]:
    return {"job_id": j.id, "status": j.status, "command": jobs.mask_secrets(j.command),
            "pattern": j.pattern, "kind": j.kind, "total": j.host_count, "ok": j.ok_count,
            "done": j.done_count, "submitted_by": j.submitted_by, "schedule": j.schedule,
            "submitted_at": j.submitted_at.isoformat() if j.submitted_at else None,
            "finished_at": j.finished_at.isoformat() if j.finished_at else None,
            "duration": j.duration}


def job_status(value: str | None) -> JobStatus | None:
    """The status a filter names; an unknown one is refused with the known ones."""
    if not value:
        return None
    try:
        return JobStatus(value)
    except ValueError:
        raise OpsqError(f"unknown status {value[:32]!r}: one of "
                        f"{', '.join(s.value for s in JobStatus)}") from None


def list_jobs(status: JobStatus | None = None, pattern: str | None = None,
              submitter: str | None = None, schedule: str | None = None,
              since: datetime | None = None, until: datetime | None = None,
              limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """The newest jobs first, filtered: the pattern, submitter and schedule filters match
    anywhere in the value, ignoring case (``operator`` finds ``web:operator``)."""
    query = (select(Job).order_by(Job.submitted_at.desc(), Job.id)
             .offset(check_offset(offset)).limit(min(limit, MAX_JOBS_LISTED)))
    if status is not None:
        query = query.where(Job.status == status.value)
    for column, value in ((Job.pattern, pattern), (Job.submitted_by, submitter),
                          (Job.schedule, schedule)):
        if value:
            query = query.where(contains(column, value))
    if since is not None:
        query = query.where(Job.submitted_at >= _utc(since, "since"))
    if until is not None:
        query = query.where(Job.submitted_at < _utc(until, "until"))
    with db.session_scope() as session:
        return [job_row(j) for j in bounded(session, query)]


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


def _audited(who: Principal, action: str, detail: dict[str, Any], address: str | None
             ) -> schedules.OnChange:
    def write(session: Any, row: Schedule) -> None:
        audit.record(session, who, action, row.name,
                     {"when": describe_timing(row), **detail}, address)

    return write


def _check_task(who: Principal, task: str) -> None:
    if task in INTERNAL_TASKS:
        raise schedules.ScheduleError(
            f"{task[:64]} is sent by opsq itself and cannot be scheduled here; schedule a "
            "fleet command with a command and a pattern")
    if not who.can(Role.ADMIN):
        raise schedules.ScheduleError("scheduling a registered task needs the admin role "
                                      "(operators schedule fleet commands)")


def create_schedule(who: Principal, s: ScheduleIn, address: str | None) -> Schedule:
    """Create a schedule as the CLI's ``schedule add`` does. Raises OpsqError."""
    detail = s.model_dump(exclude={"name"})
    try:
        _finite(s.timeout, "the timeout")
        _finite(s.connect_timeout, "the connect timeout")
        when = schedules.timing(s.cron, s.every, s.at, s.tz)
        on_change = _audited(who, "schedule.create", detail, address)
        if s.task:
            if s.command or s.pattern:
                raise schedules.ScheduleError("give either a task or a command and a "
                                              "pattern, not both")
            if s.notify or s.inventory:
                raise schedules.ScheduleError("notify and inventory go with a command and "
                                              "a pattern")
            _check_task(who, s.task)
            return schedules.add(s.name, when, s.task, _json_value(s.args, "args", list),
                                 _json_value(s.kwargs, "kwargs", dict), s.enabled,
                                 on_change=on_change, overlap=s.overlap)
        if s.job is not None:
            if s.command or s.pattern or s.notify or s.timeout is not None \
                    or s.connect_timeout is not None or s.rerun_safe or s.args or s.kwargs:
                raise schedules.ScheduleError("with a job line, give its options in the line")
            with inventory_errors(s.inventory):
                return schedules.add(s.name, when, schedules.SUBMIT_TASK, [],
                                     job_line_kwargs(s.job, s.inventory), s.enabled,
                                     on_change=on_change, overlap=s.overlap)
        if not s.pattern or not s.command:
            raise schedules.ScheduleError("a fleet schedule needs a command and a pattern "
                                          "(or a job line, or a task)")
        if s.args or s.kwargs:
            raise schedules.ScheduleError("args and kwargs go with a task")
        path = inventory_path(s.inventory)
        if not Path(path).is_file():
            with inventory_errors(s.inventory):
                raise InventoryError(f"{path}: not a file")
        kwargs = {"command": s.command, "pattern": s.pattern,
                  "inventory": path, "timeout": s.timeout,
                  "connect_timeout": s.connect_timeout, "rerun_safe": s.rerun_safe,
                  "notify": list(s.notify), "local_hosts": _local_hosts()}
        with inventory_errors(s.inventory):
            return schedules.add(s.name, when, schedules.SUBMIT_TASK, [], kwargs, s.enabled,
                                 on_change=on_change, overlap=s.overlap)
    except OpsqError as exc:
        audit.refused(who, "schedule.create", s.name, str(exc), detail, address)
        raise


#: Options of a job line the console refuses: it names inventories itself, and nothing in
#: the line may make the server open a path of its own.
_LINE_PATHS = ("-i", "--inventory")


def job_line_kwargs(line: str, inventory: str | None) -> dict[str, Any]:
    """A schedule's kwargs for a job line typed into the console: an ``opsq run`` line
    (a put's or script's file, a get's local directory would be paths of this server),
    on the console's inventory ``inventory``, under the console's local-host rule.
    Raises OpsqError."""
    import shlex

    from opsq.cli import job_line_spec

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise OpsqError(f"the job line does not parse: {exc}") from None
    if not words or words[0] != "run":
        raise OpsqError("the console schedules 'run' job lines; a put, get or script "
                        "carries local files and is scheduled from the command line")
    options = words[1:words.index("--")] if "--" in words else words[1:]  # then the command
    if any(w in _LINE_PATHS or w.startswith(("--inventory=", "-i")) for w in options
           if w.startswith("-")):
        raise OpsqError("choose the inventory with the inventory field, not -i in the line")
    if any(w in ("--help", "-h") for w in options):
        raise OpsqError("a job line runs a job; --help shows nothing here")
    path = inventory_path(inventory)
    # The inventory first: no option of the line can take it as its value.
    try:
        spec = job_line_spec([words[0], "-i", path, *words[1:]])
    except (OpsqError, click.ClickException) as exc:  # never the server's path in an answer
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        raise OpsqError(message.replace(path, inventory or "the inventory")) from None
    return {"spec": jobs.spec_to_dict(replace(spec, local_hosts=_local_hosts()))}


def _may_change(who: Principal, name: str, changes_what: bool = False) -> Schedule:
    """The schedule, if ``who`` may change it: a registered task's (opsq's own upkeep
    among them) only an admin; what a fleet command runs (``changes_what``) only on an
    inventory the console offers. Raises ScheduleError."""
    row = schedules.get(name)
    if row.task != schedules.SUBMIT_TASK and not who.can(Role.ADMIN):
        raise schedules.ScheduleError(f"{name!r} runs the registered task {row.task}: "
                                      "only an admin changes, fires or removes it")
    if changes_what and row.task == schedules.SUBMIT_TASK:
        spec = row.kwargs.get("spec") if isinstance(row.kwargs.get("spec"), dict) else {}
        if not _offered(row.kwargs.get("inventory") or spec.get("inventory")):
            raise schedules.ScheduleError(
                f"{name!r} runs on an inventory the console does not offer (it was made on "
                "the command line): change its command or pattern there (opsq schedule "
                "edit)")
    return row


def edit_schedule(who: Principal, name: str, e: ScheduleEdit, address: str | None,
                  action: str = "schedule.edit") -> Schedule:
    """Change a schedule as ``schedule edit/enable/disable`` do. Raises OpsqError."""
    detail = e.model_dump(exclude_none=True)
    try:
        row = _may_change(who, name, changes_what=e.command is not None
                          or e.pattern is not None or e.notify is not None
                          or e.timeout is not None or e.job is not None)
        _finite(e.timeout, "the timeout")
        when = None
        if e.cron is not None or e.every is not None or e.at is not None:
            when = schedules.timing(e.cron, e.every, e.at, e.tz)
        elif e.tz is not None:
            raise schedules.ScheduleError("tz goes with cron or at")
        update = {k: v for k, v in (("command", e.command), ("pattern", e.pattern),
                                    ("timeout", e.timeout), ("notify", e.notify))
                  if v is not None}
        if e.job is not None:
            if update:
                raise schedules.ScheduleError("with a job line, give its options in the line")
            update = job_line_kwargs(e.job, e.inventory or _inventory_name(row))
        elif e.inventory is not None:
            raise schedules.ScheduleError("an inventory goes with a job line")
        call = None
        if e.task is not None or e.args is not None or e.kwargs is not None:
            if update:
                raise schedules.ScheduleError("give either a task or a fleet command")
            task = e.task or row.task
            _check_task(who, task)
            call = (task, _json_value(e.args, "args", list) if e.args is not None
                    else list(row.args or []),
                    _json_value(e.kwargs, "kwargs", dict) if e.kwargs is not None
                    else dict(row.kwargs or {}))
        if when is None and not update and call is None and e.enabled is None \
                and e.overlap is None:
            raise schedules.ScheduleError("nothing to change")
        if update and "spec" not in update:
            # What the console changes runs under the console's rules, whoever made it.
            update["local_hosts"] = _local_hosts()
        with inventory_errors(None):
            return schedules.edit(name, when=when, kwargs_update=update, enabled=e.enabled,
                                  on_change=_audited(who, action, detail, address),
                                  overlap=e.overlap, call=call)
    except OpsqError as exc:
        audit.refused(who, action, name, str(exc), detail, address)
        raise


def remove_schedule(who: Principal, name: str, address: str | None) -> None:
    try:
        _may_change(who, name)
        schedules.remove(name, on_change=_audited(who, "schedule.remove", {}, address))
    except OpsqError as exc:
        audit.refused(who, "schedule.remove", name, str(exc), {}, address)
        raise


def run_schedule(who: Principal, name: str, address: str | None) -> str:
    def write(session: Any, row: Schedule) -> None:
        audit.record(session, who, "schedule.run", name, {"task_id": row.last_task_id},
                     address)

    try:
        _may_change(who, name)
        return schedules.run_now(name, on_change=write)
    except OpsqError as exc:
        audit.refused(who, "schedule.run", name, str(exc), {}, address)
        raise


def find_schedule(name: str) -> Schedule | None:
    with db.session_scope() as session:
        return session.scalar(select(Schedule).where(Schedule.name == name))


describe_timing = schedules.describe_timing


def describe_target(row: Schedule) -> str:
    return schedules.describe_fleet_job(row) or row.task


def schedule_dict(row: Schedule) -> dict[str, Any]:
    kwargs = schedules.masked_kwargs(row.kwargs)
    for holder in (kwargs, kwargs.get("spec")):  # a name, never a path of the server
        if isinstance(holder, dict) and isinstance(holder.get("inventory"), str):
            holder["inventory"] = inventory_name(holder["inventory"])
        if isinstance(holder, dict) and isinstance(holder.get("params"), dict):
            holder["params"].pop("source", None)  # the file's path on the machine it came from
    return {"name": row.name, "kind": row.kind, "expression": row.expression,
            "timezone": row.timezone, "when": describe_timing(row), "task": row.task,
            "args": schedules.masked(list(row.args or [])), "kwargs": kwargs,
            "enabled": row.enabled,
            "next_run_at": _iso(row.next_run_at), "last_run_at": _iso(row.last_run_at),
            "run_count": row.run_count, "last_task_id": row.last_task_id,
            "overlap": row.overlap, "skipped_count": row.skipped_count,
            "last_skipped_at": _iso(row.last_skipped_at),
            "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# -- hosts -------------------------------------------------------------------------------


def host_dict(h: Any) -> dict[str, Any]:
    """A host without its variables (they may hold passwords), and why opsq cannot run
    on it if it cannot (without the inventory's path on the server)."""
    problem = getattr(h, "problem", None)
    if problem:
        problem = problem.partition(": ")[2] or problem
    return {"name": h.name, "address": h.address, "port": h.port, "user": h.user,
            "groups": list(h.groups), "local": h.connection == "local", "problem": problem}


def inventory_view(name: str | None = None) -> dict[str, Any]:
    """The console's inventory ``name``: its groups and hosts (no path, no variables)."""
    path = inventory_path(name)
    with inventory_errors(name):
        inv = jobs.load_inventory(path)
    return {"inventory": name or next(iter(inventories())),
            "inventories": sorted(inventories()),
            "groups": {g: [h for h in inv.hosts if h in members]
                       for g, members in sorted(inv.groups.items())},
            "hosts": [host_dict(h) for h in inv.hosts.values()]}
