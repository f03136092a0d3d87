"""Schedules: cron lines, intervals and one-off times kept in PostgreSQL.

This module validates and edits them and computes next runs; ``opsq.schedules.beat`` is the
beat scheduler that fires them. Every change goes through here so bad input (a cron
line with six fields or that never fires, an unknown time zone, task or host group, a
timeout or interval out of range, arguments a task cannot take, a duplicate name) is
refused with a clear message before anything is written: a schedule that is accepted
can fire.

Cron lines follow cron's rules on daylight-saving changes. A line whose hour field is a
wildcard (``0 * * * *``, ``*/30 * * * *``) runs on real time: every real hour or half
hour, none skipped when clocks go forward, none doubled when they go back. Any other line
names local times: one that happens twice (clocks going back) fires at its first
occurrence only, and one that does not happen (clocks going forward) fires once, when the
clock jumps (``30 2 * * *`` in Paris on the last Sunday of March fires at 03:00).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from opsq import limits
from opsq.errors import OpsqError
from opsq.store import db
from opsq.store.models import Job, Schedule, ScheduleKind

#: The task a fleet-command schedule sends.
SUBMIT_TASK = "opsq.submit_job"
#: Shortest interval accepted, in seconds: beat looks at the table about once a second.
MIN_INTERVAL = 1.0
#: Longest interval accepted, in days: longer is a typo (and far longer overflows dates).
MAX_INTERVAL_DAYS = 366
MAX_INTERVAL = MAX_INTERVAL_DAYS * 86400.0
#: A cron line must match a date within this many years, or it is refused as one that
#: never fires ('0 0 31 2 *'); it is also how far a next run is looked for.
CRON_HORIZON_YEARS = 5
#: A clock change shorter than this is a daylight-saving shift (cron's threshold too); it
#: bounds how far apart in local time two runs can be while out of order in real time.
CLOCK_SHIFT_WINDOW = timedelta(hours=3)
#: How the jobs a schedule starts record it in ``jobs.submitted_by``.
SUBMITTED_BY_PREFIX = "schedule:"
#: Longest schedule name: 'schedule:NAME' must fit in ``jobs.submitted_by``.
MAX_NAME_LENGTH = Job.__table__.c.submitted_by.type.length - len(SUBMITTED_BY_PREFIX)
#: Longest time zone name looked up (IANA names are far shorter; very long ones make the
#: zone lookup itself fail).
MAX_TIMEZONE_LENGTH = 64
#: Most recent jobs ``recent_jobs`` returns.
MAX_RECENT_JOBS = 10_000
#: Characters of a bad value quoted back in an error message.
SHOWN_CHARS = 40
#: Deepest nesting of --args/--kwargs: Python's JSON reader and writer give up near 1000
#: levels, and a task message is written again at every firing.
MAX_JSON_DEPTH = 100
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
#: Namespace of the task ids of scheduled firings: the same schedule and due time give
#: the same id, so a firing sent twice (beat failed over mid-send) makes one job.
FIRING_NAMESPACE = uuid.UUID("6f707371-0000-4000-8000-736368656475")
#: Built-in maintenance schedule created by ``opsq db upgrade``.
RETENTION_SCHEDULE = "opsq-retention"
RETENTION_CRON = "17 3 * * *"
RETENTION_TASK = "opsq.prune"
RECONCILE_SCHEDULE = "opsq-reconcile"
RECONCILE_EVERY = 60.0
RECONCILE_TASK = "opsq.reconcile"


class ScheduleError(OpsqError):
    """A schedule definition or edit is invalid."""


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short when long."""
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: validated kind, expression and zone."""

    kind: ScheduleKind
    expression: str
    timezone: str = "UTC"

    def next_after(self, now: datetime, previous_due: datetime | None = None) -> datetime | None:
        """The first due time strictly after ``now`` (``None``: a one-off already due).

        An interval keeps its cadence from the previous due time, skipping the runs that
        were missed, so a beat that was down fires once, not once per missed run.
        """
        if self.kind is ScheduleKind.CRON:
            return _cron_next(self.expression, ZoneInfo(self.timezone), now)
        if self.kind is ScheduleKind.INTERVAL:
            step = timedelta(seconds=float(self.expression))
            if previous_due is None:
                return now + step
            missed = math.floor((now - previous_due) / step)
            return previous_due + step * max(missed + 1, 1)
        at = datetime.fromisoformat(self.expression)
        return at if at > now else None


def _local_instants(wall: datetime, zone: ZoneInfo, real_time: bool) -> list[datetime]:
    """The instants (UTC) at which a cron line matching the naive local time ``wall`` fires.

    Usually one. A time that happens twice gives both on ``real_time`` (a wildcard hour),
    else the first. A time that does not happen gives none on ``real_time``, else the
    moment the clock jumps over it.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(zone).replace(tzinfo=None) == wall:  # it happens twice
        return [first, second] if real_time else [first]
    return [] if real_time else [_clock_jump(min(first, second), max(first, second), zone)]


def _clock_jump(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in (before, after] with the UTC offset ``after`` has."""
    offset = after.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), math.ceil(after.timestamp())
    while high - low > 1:  # zone transitions fall on whole seconds
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
            high = mid
        else:
            low = mid
    return datetime.fromtimestamp(high, UTC)


def _cron_next(expression: str, zone: ZoneInfo, now: datetime) -> datetime:
    """The first firing of a cron line strictly after ``now``, by cron's DST rules.

    croniter alone fires a time that happens twice at both occurrences; this walks the
    line's matches in local time and places each with ``_local_instants``. Around a clock
    change, real-time order can differ from local order by at most the shift, so matches
    are read from that far before ``now`` to that far past the best one found. Raises
    CroniterBadDateError if the line matches no date within CRON_HORIZON_YEARS.
    """
    real_time = expression.split()[1].startswith("*")
    start = now.astimezone(zone).replace(tzinfo=None) - CLOCK_SHIFT_WINDOW
    matches = croniter(expression, start, max_years_between_matches=CRON_HORIZON_YEARS)
    best: datetime | None = None
    best_wall = start
    while True:
        try:
            wall = matches.get_next(datetime)
        except CroniterBadDateError:  # no match after best within the horizon
            if best is None:
                raise
            return best
        if best is not None and wall > best_wall + CLOCK_SHIFT_WINDOW:
            return best
        for instant in _local_instants(wall, zone, real_time):
            if instant > now and (best is None or instant < best):
                best, best_wall = instant, wall


def parse_timezone(name: str) -> str:
    """An IANA time zone name, checked; raises ScheduleError."""
    try:
        if len(name) > MAX_TIMEZONE_LENGTH:
            raise ValueError(name)
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone {_shown(name)} (use an IANA name such as "
                            "'UTC' or 'Europe/Paris')") from None
    return name


def parse_every(text: str) -> float:
    """'30s', '10m', '2h', '1d' -> seconds, from MIN_INTERVAL to MAX_INTERVAL."""
    m = _EVERY.match(text)
    if not m:
        raise ScheduleError(f"invalid interval {_shown(text)}: write a number and a unit s, "
                            "m, h or d, e.g. 30s, 10m, 2h")
    return _interval(float(m.group(1)) * _UNITS[m.group(2)], text)


def _interval(seconds: float, text: str) -> float:
    if not seconds <= MAX_INTERVAL:  # also refuses inf (from a 400-digit number)
        raise ScheduleError(f"interval {_shown(text)} is longer than {MAX_INTERVAL_DAYS} days")
    if seconds < MIN_INTERVAL:
        raise ScheduleError(f"interval {_shown(text)} is shorter than {MIN_INTERVAL:g} s")
    return seconds


#: A cron line's fields: name, lowest and highest value, names allowed.
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31),
               ("month", 1, 12), ("day of week", 0, 7))


def _cron_field_problem(index: int, value: str) -> str | None:
    """What is wrong with field ``index`` of a cron line, or None."""
    name, low, high = CRON_FIELDS[index]
    probe = ["*"] * 5
    probe[index] = value
    if croniter.is_valid(" ".join(probe)):
        return None
    for number in re.findall(r"\d+", value):
        if not low <= int(number) <= high:
            return f"{name} {number[:12]} is out of range ({low}-{high})"
    return (f"{name} {_shown(value)} is not valid: use *, N, N-M, N,M or */N "
            f"with values {low}-{high}")


def parse_cron(line: str) -> str:
    """A five-field cron line, normalised; raises ScheduleError naming the field at fault
    if it is malformed, or if it matches no date within CRON_HORIZON_YEARS."""
    fields = line.split()
    normal = " ".join(fields)
    if len(fields) != 5:
        raise ScheduleError(
            f"invalid cron line {_shown(line)}: five fields 'minute hour day-of-month month "
            f"day-of-week' expected, not {len(fields)}, e.g. '0 2 * * *' (02:00 daily)")
    if not croniter.is_valid(normal):
        for i, value in enumerate(fields):
            problem = _cron_field_problem(i, value)
            if problem:
                raise ScheduleError(f"invalid cron line {_shown(line)}: {problem}")
        raise ScheduleError(f"invalid cron line {_shown(line)}")
    try:
        croniter(normal, _now().replace(tzinfo=None),
                 max_years_between_matches=CRON_HORIZON_YEARS).get_next(datetime)
    except CroniterBadDateError:
        raise ScheduleError(f"cron line {_shown(line)} never fires: no date matches it in the next "
                            f"{CRON_HORIZON_YEARS} years (e.g. 31 February)") from None
    return normal


def parse_at(text: str, tz: str) -> str:
    """An ISO 8601 time in the future, as UTC; a time without offset is read in ``tz``
    (a local time that happens twice is its first occurrence; one that does not happen,
    the moment the clock jumps). Raises ScheduleError."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"invalid time {_shown(text)}: use ISO 8601, e.g. "
                            "2026-12-01T09:00") from None
    try:
        if at.tzinfo is None:
            at = _local_instants(at, ZoneInfo(parse_timezone(tz)), real_time=False)[0]
        at = at.astimezone(UTC)
    except OverflowError:
        raise ScheduleError(f"time {_shown(text)} is out of range (years 1 to 9999 in UTC)")\
            from None
    if at <= _now():
        raise ScheduleError(f"--at {text} is in the past")
    return at.isoformat()


def timing(cron: str | None = None, every: str | None = None, at: str | None = None,
           tz: str | None = None) -> Timing:
    """Exactly one of cron / every / at, validated."""
    given = [x for x in (cron, every, at) if x is not None]
    if len(given) != 1:
        raise ScheduleError("give exactly one of --cron, --every or --at")
    zone = parse_timezone(tz or "UTC")
    if cron is not None:
        return Timing(ScheduleKind.CRON, parse_cron(cron), zone)
    if tz is not None and every is not None:
        raise ScheduleError("--tz applies to --cron and --at, not --every")
    if every is not None:
        return Timing(ScheduleKind.INTERVAL, repr(parse_every(every)))
    return Timing(ScheduleKind.ONCE, parse_at(at or "", zone), zone)


def timing_checked(when: Timing) -> Timing:
    """``when`` checked as ``timing`` checks what it builds (for a Timing made directly)."""
    zone = parse_timezone(when.timezone)
    if when.kind is ScheduleKind.CRON:
        return Timing(when.kind, parse_cron(when.expression), zone)
    if when.kind is ScheduleKind.INTERVAL:
        seconds = limits.number(when.expression, "the interval")
        return Timing(when.kind, repr(_interval(seconds, when.expression)), zone)
    return Timing(when.kind, parse_at(when.expression, zone), zone)


class _BadJson(ValueError):
    """JSON that parses but that a task could not be given (raised by parse hooks)."""


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which JSONB refuses
        raise _BadJson(f"{_shown(text)} is not a finite number")
    return value


def _json_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # beyond Python's limit on digits read
        raise _BadJson(f"a number has too many digits ({len(text)})") from None


def _json_constant(text: str) -> Any:
    raise _BadJson(f"{text} is not a finite number")


def parse_json(text: str | None, what: str, kind: type) -> Any:
    """``--args`` (a JSON array) or ``--kwargs`` (an object); raises ScheduleError."""
    if text is None:
        return kind()
    try:
        value = json.loads(text, parse_float=_json_float, parse_int=_json_int,
                           parse_constant=_json_constant)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"--{what} is not valid JSON: {exc}") from None
    except _BadJson as exc:
        raise ScheduleError(f"--{what} cannot be used: {exc}") from None
    except RecursionError:
        raise ScheduleError(f"--{what} is nested too deeply") from None
    if not isinstance(value, kind):
        raise ScheduleError(f"--{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def _check_storable(value: Any, what: str, depth: int = 0) -> None:
    """Refuse a value the ``schedules`` table (JSONB) or a task message cannot carry."""
    if depth > MAX_JSON_DEPTH:
        raise ScheduleError(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    if isinstance(value, str):
        if "\x00" in value:
            raise ScheduleError(f"{what} holds a NUL character, which PostgreSQL cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ScheduleError(f"{what} holds text that is not valid UTF-8") from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ScheduleError(f"{what} holds {value!r}, which is not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ScheduleError(f"{what} has a key that is not a string: {key!r}")
            _check_storable(key, what, depth + 1)
            _check_storable(item, what, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_storable(item, what, depth + 1)
    elif value is not None and not isinstance(value, bool | int):
        raise ScheduleError(f"{what} holds a {type(value).__name__}, which JSON cannot carry")


def known_task(name: str) -> str:
    """Refuse a task name no worker would know (opsq's tasks and OPSQ_TASK_MODULES)."""
    from opsq.app import app

    app.loader.import_default_modules()
    if name not in app.tasks or name.startswith("celery."):
        user = sorted(t for t in app.tasks if not t.startswith("celery."))
        raise ScheduleError(f"unknown task {_shown(name)}; registered tasks: "
                            f"{', '.join(user)} (add your module to OPSQ_TASK_MODULES)")
    return name


def task_call(task: str, args: list[Any], kwargs: dict[str, Any]
              ) -> tuple[list[Any], dict[str, Any]]:
    """The args and kwargs a schedule of ``task`` stores, checked to be a call the task
    can take; a fleet command's kwargs go through ``fleet_kwargs``. Raises OpsqError."""
    from opsq.app import app

    known_task(task)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ScheduleError("--args must be a JSON array and --kwargs a JSON object")
    if task == SUBMIT_TASK:
        if args:
            raise ScheduleError(f"{SUBMIT_TASK} takes no --args: give a command and a "
                                "pattern ('-t PATTERN -- COMMAND')")
        checker = fleet_kwargs
    else:
        checker = app.tasks[task].run
    try:
        signature = inspect.signature(checker)
    except (TypeError, ValueError):  # a callable without a signature: nothing to check
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            shown = signature.replace(return_annotation=inspect.Signature.empty, parameters=[
                p.replace(annotation=inspect.Parameter.empty)
                for p in signature.parameters.values()])
            raise ScheduleError(f"--args/--kwargs do not fit task {task}{shown}: "
                                f"{exc}") from None
    if task == SUBMIT_TASK:
        kwargs = fleet_kwargs(**kwargs)
    _check_storable(args, "--args")
    _check_storable(kwargs, "--kwargs" if task != SUBMIT_TASK else "the command")
    return args, kwargs


def job_kwargs(spec: Any) -> dict[str, Any]:
    """The submit_job kwargs of a whole job (any kind, every option but -K), checked as
    submitting it would check it: ``{"spec": <its stored form>}``, the inventory made
    absolute. Raises OpsqError naming what is refused."""
    from opsq import jobs

    checked = jobs.spec_from_dict(spec)
    if checked.inventory is not None:
        inventory = os.path.abspath(os.path.expanduser(checked.inventory))
        if not os.path.isfile(inventory):
            raise ScheduleError(f"inventory file not found: {inventory}")
        checked = replace(checked, inventory=inventory)
    jobs.plan(checked)
    return {"spec": jobs.spec_to_dict(checked)}


def fleet_kwargs(command: str | None = None, pattern: str | None = None,
                 inventory: str | None = None,
                 timeout: float | None = None, connect_timeout: float | None = None,
                 rerun_safe: bool = False, notify: list[str] | None = None,
                 local_hosts: bool = True, spec: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The submit_job kwargs of a fleet command, checked so that it can run when fired;
    or, with ``spec`` alone, of a whole job (``job_kwargs``).

    The inventory is made absolute (the worker resolving it runs in another directory)
    and must exist; the pattern must resolve against it; the timeouts must be in range;
    the notification URLs must be http(s) URLs (``opsq.jobs.webhooks.check_urls``).
    Raises ScheduleError, InventoryError, PatternError, InvalidNumber or WebhookError.
    """
    from opsq import jobs
    from opsq.jobs import webhooks
    from opsq.settings import get_settings

    if spec is not None:
        if command is not None or pattern is not None or inventory is not None \
                or timeout is not None or connect_timeout is not None or rerun_safe \
                or notify or not local_hosts:
            raise ScheduleError("a schedule runs either a whole job (spec) or a command "
                                "and a pattern; to change a whole job, give it again "
                                "(opsq schedule edit NAME -- run|put|get|script ...)")
        return job_kwargs(spec)
    if not isinstance(command, str) or not isinstance(pattern, str):
        raise ScheduleError("the command and the pattern must be text")
    if not command.strip():
        raise ScheduleError("the command is empty (put it after --)")
    if inventory is not None:
        if not isinstance(inventory, str):
            raise ScheduleError("the inventory must be a file path")
        inventory = os.path.abspath(os.path.expanduser(inventory))
        if not os.path.isfile(inventory):
            raise ScheduleError(f"inventory file not found: {inventory}")
    if not isinstance(rerun_safe, bool):
        raise ScheduleError(f"rerun_safe must be true or false, not {_shown(str(rerun_safe))}")
    if timeout is not None:
        timeout = limits.seconds(timeout, "the timeout", get_settings().max_command_timeout)
    if connect_timeout is not None:
        connect_timeout = limits.seconds(connect_timeout, "the connect timeout",
                                         limits.MAX_CONNECT_TIMEOUT)
    if notify is not None and not isinstance(notify, list):
        raise ScheduleError("notify must be a list of URLs")
    notify = webhooks.check_urls(notify)
    if not isinstance(local_hosts, bool):
        raise ScheduleError("local_hosts must be true or false")
    jobs.check_local_hosts(jobs.load_inventory(inventory).resolve(pattern), local_hosts)
    kwargs: dict[str, Any] = {"command": command, "pattern": pattern}
    for key, value in (("inventory", inventory), ("timeout", timeout),
                       ("connect_timeout", connect_timeout), ("rerun_safe", rerun_safe or None),
                       ("notify", notify or None),
                       ("local_hosts", None if local_hosts else False)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def _now() -> datetime:
    return datetime.now(UTC)


def check_name(name: str) -> str:
    """A schedule name: letters, digits, . _ - : @, at most MAX_NAME_LENGTH of them."""
    if not isinstance(name, str) or not re.fullmatch(r"[\w.:@-]+", name):
        raise ScheduleError(f"invalid schedule name {_shown(str(name))}: letters, digits, "
                            ". _ - : @")
    if len(name) > MAX_NAME_LENGTH:
        raise ScheduleError(f"schedule name {_shown(name)} is too long: at most "
                            f"{MAX_NAME_LENGTH} characters")
    return name


#: Called with the session and the schedule row inside the transaction that changes it,
#: to write what must commit with the change or not at all (the console's audit entry).
OnChange = Callable[[Any, Schedule], None]


#: What a firing does while the schedule's previous job still runs: start nothing
#: (counted in ``skipped_count``), or start another.
OVERLAP_POLICIES = ("skip", "allow")


def check_overlap(value: str) -> str:
    """Raises ScheduleError unless ``value`` is an overlap policy."""
    if value not in OVERLAP_POLICIES:
        raise ScheduleError(f"--overlap must be skip or allow, not {_shown(str(value))}")
    return value


def still_running(session: Any, row: Schedule) -> Job | None:
    """The schedule's previous job if it has not ended (a fleet command's firing id is
    its job id); None otherwise, and for registered tasks, which make no job."""
    if row.task != SUBMIT_TASK or not row.last_task_id:
        return None
    job = session.get(Job, row.last_task_id)
    return job if job is not None and job.status in ("queued", "running") else None


def add(name: str, when: Timing, task: str, args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None, enabled: bool = True,
        on_change: OnChange | None = None, overlap: str = "skip") -> Schedule:
    """Create a schedule. Raises ScheduleError (or another OpsqError) before writing
    anything if it could not fire: a bad name, timing, task or arguments (see
    ``task_call``), or a duplicate name."""
    check_name(name)
    check_overlap(overlap)
    when = timing_checked(when)
    args, kwargs = task_call(task, [] if args is None else args,
                             {} if kwargs is None else kwargs)
    now = _now()
    row = Schedule(name=name, kind=when.kind.value, expression=when.expression,
                   timezone=when.timezone, task=task, args=args, kwargs=kwargs,
                   enabled=enabled, overlap=overlap,
                   next_run_at=when.next_after(now) if enabled else None)
    try:
        with db.session_scope() as session:
            session.add(row)
            session.flush()
            if on_change is not None:
                on_change(session, row)
    except IntegrityError:
        raise ScheduleError(f"a schedule named {name!r} already exists (opsq schedule "
                            "show/edit/rm it)") from None
    return row


def _no_such(name: str) -> ScheduleError:
    return ScheduleError(f"no schedule named {name!r} (opsq schedule list)")


def get(name: str) -> Schedule:
    with db.session_scope() as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name))
        if row is None:
            raise _no_such(name)
        return row


def all_schedules() -> list[Schedule]:
    with db.session_scope() as session:
        return list(session.scalars(select(Schedule).order_by(Schedule.name)))


def edit(name: str, when: Timing | None = None, kwargs_update: dict[str, Any] | None = None,
         enabled: bool | None = None, on_change: OnChange | None = None,
         overlap: str | None = None,
         call: tuple[str, list[Any], dict[str, Any]] | None = None) -> Schedule:
    """Change timing, the fleet command's kwargs, a registered task's ``call`` (task, args,
    kwargs), or enabled; the next run is recomputed.

    The new timing, kwargs and call are checked as ``add`` checks them; nothing changes if
    they are refused (ScheduleError or another OpsqError).
    """
    if call is not None:
        if call[0] == SUBMIT_TASK:
            raise ScheduleError(f"a schedule does not become a fleet command ({SUBMIT_TASK}) "
                                "by an edit: add a new one")
        call_args, call_kwargs = task_call(*call)
    if when is not None:
        when = timing_checked(when)
    if overlap is not None:
        check_overlap(overlap)
    with db.session_scope() as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name).with_for_update())
        if row is None:
            raise _no_such(name)
        if overlap is not None:
            row.overlap = overlap
        if when is not None:
            row.kind, row.expression, row.timezone = (
                when.kind.value, when.expression, when.timezone)
        if kwargs_update:
            if row.task != SUBMIT_TASK:
                raise ScheduleError(f"{name!r} runs task {row.task}; only fleet-command "
                                    "schedules have a command and a pattern")
            # A whole job replaces what the schedule ran; anything else is merged in.
            merged = {**kwargs_update} if "spec" in kwargs_update else \
                {**row.kwargs, **kwargs_update}
            row.kwargs = task_call(SUBMIT_TASK, [], merged)[1]
        if call is not None:
            if row.task == SUBMIT_TASK:
                raise ScheduleError(f"{name!r} runs a fleet command: change its command, "
                                    "pattern or job line, not a task")
            row.task, row.args, row.kwargs = call[0], call_args, call_kwargs
        if enabled is not None:
            row.enabled = enabled
        t = Timing(ScheduleKind(row.kind), row.expression, row.timezone)
        # A fresh start from now: re-enabling never fires the runs missed while disabled.
        row.next_run_at = t.next_after(_now()) if row.enabled else None
        if row.enabled and row.next_run_at is None:
            raise ScheduleError(f"{name!r} was a one-off for {row.expression}, which has "
                                "passed; give it a new --at")
        row.updated_at = func.now()
        if on_change is not None:
            on_change(session, row)
    return get(name)


#: opsq's own upkeep: disabled at most, never removed.
BUILTIN_SCHEDULES = (RETENTION_SCHEDULE, RECONCILE_SCHEDULE)


def remove(name: str, on_change: OnChange | None = None) -> None:
    """Remove a schedule; a built-in one is refused (disable it instead)."""
    if name in BUILTIN_SCHEDULES:
        raise ScheduleError(f"{name!r} is one of opsq's built-in schedules: disable it "
                            "instead (opsq db upgrade would add it again)")
    with db.session_scope() as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name).with_for_update())
        if row is None:
            raise _no_such(name)
        session.delete(row)
        if on_change is not None:
            on_change(session, row)


def firing_id(schedule_id: int, due: datetime) -> str:
    """The task id of one firing: stable for a schedule and due time."""
    return str(uuid.uuid5(FIRING_NAMESPACE, f"{schedule_id}@{due.isoformat()}"))


def send(row: Schedule, task_id: str | None = None) -> str:
    """Send the schedule's task now; fleet commands carry the schedule they came from."""
    from opsq.app import app
    from opsq.jobs import mask_secrets

    kwargs = dict(row.kwargs)
    if row.task == SUBMIT_TASK:
        kwargs.update(schedule_id=row.id, schedule=row.name,
                      submitted_by=f"{SUBMITTED_BY_PREFIX}{row.name}")
    # Flower and celery_taskmeta show what argsrepr/kwargsrepr say, not the raw values.
    shown = masked_kwargs(kwargs)
    result = app.send_task(row.task, args=list(row.args), kwargs=kwargs, task_id=task_id,
                           argsrepr=mask_secrets(repr(list(row.args))),
                           kwargsrepr=repr(shown))
    return result.id


def describe_timing(row: Schedule) -> str:
    """When the schedule fires, in words (``every 600s``, ``cron '0 2 * * *' UTC``)."""
    if row.kind == "interval":
        return f"every {float(row.expression):g}s"
    if row.kind == "cron":
        return f"cron '{row.expression}' {row.timezone}"
    return f"at {row.expression}"


def describe_fleet_job(row: Schedule) -> str | None:
    """What a fleet schedule runs, as shown: ``PATTERN: COMMAND`` with secrets masked
    (a whole job's from its spec); None for a registered task."""
    if row.task != SUBMIT_TASK:
        return None
    kwargs = masked_kwargs(row.kwargs)
    what = kwargs["spec"] if isinstance(kwargs.get("spec"), dict) else kwargs
    return f"{what.get('pattern')}: {what.get('command')}"


def masked_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A schedule's kwargs as shown (CLI, console, API, Flower): commands and other text
    through ``mask_secrets``, webhook URLs cut to scheme, host and port."""
    from opsq.jobs.webhooks import shown

    out = {k: masked(v) for k, v in (kwargs or {}).items()}
    for holder in (out, out.get("spec")):  # a whole job's URLs are in its spec
        if isinstance(holder, dict) and isinstance(holder.get("notify"), list):
            holder["notify"] = [shown(u) if isinstance(u, str) else u
                                for u in holder["notify"]]
    return out


def masked(value: Any) -> Any:
    """``value`` (JSON) with every string in it through ``mask_secrets``, at any depth."""
    from opsq.jobs import mask_secrets

    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    return value


def run_now(name: str, on_change: OnChange | None = None) -> str:
    """Fire a schedule at once, outside its timing; returns the task (job) id."""
    row = get(name)
    task_id = send(row)
    with db.session_scope() as session:
        session.execute(update(Schedule).where(Schedule.id == row.id).values(
            last_run_at=func.now(), run_count=Schedule.run_count + 1, last_task_id=task_id))
        if on_change is not None:
            row.last_task_id = task_id
            on_change(session, row)
    return task_id


def recent_jobs(schedule_id: int, limit: int = 10) -> list[Job]:
    """The schedule's latest jobs, newest first: ``limit`` of them, 0 to MAX_RECENT_JOBS."""
    limit = int(limits.number(limit, "the number of recent jobs", minimum=0,
                              maximum=MAX_RECENT_JOBS, integer=True))
    with db.session_scope() as session:
        return list(session.scalars(
            select(Job).where(Job.schedule_id == schedule_id)
            .order_by(Job.submitted_at.desc()).limit(limit)))


def ensure_builtin() -> None:
    """Create the built-in schedules that are missing (``opsq db upgrade``): daily
    retention, and a reconcile pass every minute."""
    builtin = {
        RETENTION_SCHEDULE: (Timing(ScheduleKind.CRON, RETENTION_CRON, "UTC"), RETENTION_TASK),
        RECONCILE_SCHEDULE: (Timing(ScheduleKind.INTERVAL, repr(RECONCILE_EVERY)),
                             RECONCILE_TASK),
    }
    with db.session_scope() as session:
        present = set(session.scalars(
            select(Schedule.name).where(Schedule.name.in_(list(builtin)))))
    for name, (when, task) in builtin.items():
        if name not in present:
            add(name, when, task)
