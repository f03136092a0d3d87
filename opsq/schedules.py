"""Schedules: cron lines, intervals and one-off times kept in PostgreSQL.

This module validates and edits them and computes next runs; ``opsq.scheduler`` is the
beat scheduler that fires them. Every change goes through here so bad input (a cron
line with six fields, an unknown time zone, task or host group, a duplicate name) is
refused with a clear message before anything is written.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from opsq import db
from opsq.errors import OpsqError
from opsq.models import Job, Schedule, ScheduleKind

#: The task a fleet-command schedule sends.
SUBMIT_TASK = "opsq.submit_job"
#: Shortest interval accepted, in seconds: beat looks at the table about once a second.
MIN_INTERVAL = 1.0
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
            local = now.astimezone(ZoneInfo(self.timezone))
            return croniter(self.expression, local).get_next(datetime).astimezone(UTC)
        if self.kind is ScheduleKind.INTERVAL:
            step = timedelta(seconds=float(self.expression))
            if previous_due is None:
                return now + step
            missed = math.floor((now - previous_due) / step)
            return previous_due + step * max(missed + 1, 1)
        at = datetime.fromisoformat(self.expression)
        return at if at > now else None


def parse_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name such as "
                            "'UTC' or 'Europe/Paris')") from None
    return name


def parse_every(text: str) -> float:
    """'30s', '10m', '2h', '1d' -> seconds."""
    m = _EVERY.match(text)
    if not m:
        raise ScheduleError(f"invalid interval {text!r}: write a number and a unit s, m, h "
                            "or d, e.g. 30s, 10m, 2h")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < MIN_INTERVAL:
        raise ScheduleError(f"interval {text!r} is shorter than {MIN_INTERVAL:g} s")
    return seconds


def parse_cron(line: str) -> str:
    fields = line.split()
    if len(fields) != 5 or not croniter.is_valid(" ".join(fields)):
        raise ScheduleError(
            f"invalid cron line {line!r}: five fields 'minute hour day-of-month month "
            "day-of-week' expected, e.g. '0 2 * * *' (02:00 daily)")
    return " ".join(fields)


def parse_at(text: str, tz: str) -> str:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ScheduleError(f"invalid time {text!r}: use ISO 8601, e.g. 2026-12-01T09:00")\
            from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=ZoneInfo(tz))
    return at.astimezone(UTC).isoformat()


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


def parse_json(text: str | None, what: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"--{what} is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ScheduleError(f"--{what} must be a JSON {'array' if kind is list else 'object'}")
    return value


def known_task(name: str) -> str:
    """Refuse a task name no worker would know (opsq's tasks and OPSQ_TASK_MODULES)."""
    from opsq.app import app

    app.loader.import_default_modules()
    if name not in app.tasks or name.startswith("celery."):
        user = sorted(t for t in app.tasks if not t.startswith("celery."))
        raise ScheduleError(f"unknown task {name!r}; registered tasks: {', '.join(user)} "
                            "(add your module to OPSQ_TASK_MODULES)")
    return name


def fleet_kwargs(command: str, pattern: str, inventory: str | None = None,
                 timeout: float | None = None, connect_timeout: float | None = None
                 ) -> dict[str, Any]:
    """The submit_job kwargs of a fleet command, after checking the pattern resolves."""
    from opsq import jobs

    if not command.strip():
        raise ScheduleError("the command is empty (put it after --)")
    jobs.resolve(pattern, inventory)
    kwargs: dict[str, Any] = {"command": command, "pattern": pattern}
    for key, value in (("inventory", inventory), ("timeout", timeout),
                       ("connect_timeout", connect_timeout)):
        if value is not None:
            kwargs[key] = value
    return kwargs


def _now() -> datetime:
    return datetime.now(UTC)


def add(name: str, when: Timing, task: str, args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None, enabled: bool = True) -> Schedule:
    """Create a schedule. Raises ScheduleError on a duplicate name or an unknown task."""
    if not name or not re.fullmatch(r"[\w.:@-]+", name):
        raise ScheduleError(f"invalid schedule name {name!r}: letters, digits, . _ - : @")
    known_task(task)
    now = _now()
    row = Schedule(name=name, kind=when.kind.value, expression=when.expression,
                   timezone=when.timezone, task=task, args=args or [], kwargs=kwargs or {},
                   enabled=enabled, next_run_at=when.next_after(now) if enabled else None)
    if when.kind is ScheduleKind.ONCE and datetime.fromisoformat(when.expression) <= now:
        raise ScheduleError(f"--at {when.expression} is in the past")
    try:
        with db.session_scope() as session:
            session.add(row)
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
         enabled: bool | None = None) -> Schedule:
    """Change timing, the fleet command's kwargs, or enabled; the next run is recomputed."""
    with db.session_scope() as session:
        row = session.scalar(select(Schedule).where(Schedule.name == name).with_for_update())
        if row is None:
            raise _no_such(name)
        if when is not None:
            row.kind, row.expression, row.timezone = (
                when.kind.value, when.expression, when.timezone)
        if kwargs_update:
            if row.task != SUBMIT_TASK:
                raise ScheduleError(f"{name!r} runs task {row.task}; only fleet-command "
                                    "schedules have a command and a pattern")
            merged = {**row.kwargs, **kwargs_update}
            row.kwargs = fleet_kwargs(merged["command"], merged["pattern"],
                                      merged.get("inventory"), merged.get("timeout"),
                                      merged.get("connect_timeout"))
        if enabled is not None:
            row.enabled = enabled
        t = Timing(ScheduleKind(row.kind), row.expression, row.timezone)
        # A fresh start from now: re-enabling never fires the runs missed while disabled.
        row.next_run_at = t.next_after(_now()) if row.enabled else None
        if row.enabled and row.next_run_at is None:
            raise ScheduleError(f"{name!r} was a one-off for {row.expression}, which has "
                                "passed; give it a new --at")
        row.updated_at = func.now()
    return get(name)


def remove(name: str) -> None:
    with db.session_scope() as session:
        if not session.execute(delete(Schedule).where(Schedule.name == name)).rowcount:
            raise _no_such(name)


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
                      submitted_by=f"schedule:{row.name}")
    # Flower and celery_taskmeta show what argsrepr/kwargsrepr say, not the raw values.
    shown = {k: mask_secrets(v) if isinstance(v, str) else v for k, v in kwargs.items()}
    result = app.send_task(row.task, args=list(row.args), kwargs=kwargs, task_id=task_id,
                           argsrepr=mask_secrets(repr(list(row.args))),
                           kwargsrepr=repr(shown))
    return result.id


def run_now(name: str) -> str:
    """Fire a schedule at once, outside its timing; returns the task (job) id."""
    row = get(name)
    task_id = send(row)
    with db.session_scope() as session:
        session.execute(update(Schedule).where(Schedule.id == row.id).values(
            last_run_at=func.now(), run_count=Schedule.run_count + 1, last_task_id=task_id))
    return task_id


def recent_jobs(schedule_id: int, limit: int = 10) -> list[Job]:
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
