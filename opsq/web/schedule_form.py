"""The console's schedule form: its fields, read into the API's models, and each refusal
put next to the field it is about, in the console's words.

A fleet schedule's job options are the fields of ``opsq.jobs.spec.JOB_OPTIONS`` that the
API takes: set any of them and the schedule stores the whole job (an ``opsq run`` line
read by the command line's own parser, so every door checks it alike).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from opsq import jobs, schedules
from opsq.errors import OpsqError
from opsq.jobs.spec import JOB_OPTIONS
from opsq.jobs.webhooks import shown
from opsq.store.models import Schedule
from opsq.web import operations


@dataclass(frozen=True)
class OptionField:
    """A job option on the form: its field name (the API's), label and input."""

    name: str
    label: str
    kind: str = "text"  # text, number, check, choice, lines
    hint: str = ""
    choices: tuple[str, ...] = ()


#: The job options the form offers beyond command, pattern, inventory and timeout, in the
#: console's words. Every option of JOB_OPTIONS the API takes has a label here
#: (tests/unit/test_job_definition.py).
OPTION_FIELDS = (
    OptionField("connect_timeout", "Connect timeout (s)", "number"),
    OptionField("rerun_safe", "Safe to run again on a host whose worker died", "check"),
    OptionField("become", "Run as another user (sudo)", "check"),
    OptionField("become_user", "As user", hint="root unless given"),
    OptionField("batch_size", "Batch size", hint="hosts at a time: N or P%"),
    OptionField("pause", "Pause between batches (s)", "number"),
    OptionField("max_fail", "Stop after failures", hint="start no further batch past N or "
                                                       "P% failed hosts"),
    OptionField("retries", "Retries of a failed host", "number"),
    OptionField("retry_delay", "Delay between retries (s)", "number"),
    OptionField("retry_on", "Retry on", "choice", choices=("", "failure", "unreachable")),
    OptionField("notify", "Notify URLs", "lines", hint="one http(s) URL a line: the job's "
                                                      "summary is POSTed there when it ends"),
    OptionField("deadline", "Deadline (s)", "number", hint="hosts no worker took by then "
                                                          "end unreachable"),
)
#: Labels of the form's other fields, by field name.
LABELS = {"name": "Name", "expression": "When", "tz": "Time zone", "command": "Command",
          "pattern": "Hosts (pattern)", "inventory": "Inventory",
          "timeout": "Timeout per host (s)", "job": "Job line", "task": "Task",
          "args": "Args", "kwargs": "Kwargs", "overlap": "While its previous job runs",
          **{f.name: f.label for f in OPTION_FIELDS}}
#: The command line's flags of each field (the messages shared with the command line
#: name options by their flags).
_FLAGS = {**{o.cli: o.api for o in JOB_OPTIONS if o.api},
          "--cron": "expression", "--every": "expression", "--at": "expression",
          "--tz": "tz", "--args": "args", "--kwargs": "kwargs", "--overlap": "overlap",
          "--ask-become-pass": "job", "-K": "job", "--target": "pattern", "-t": "pattern"}
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[tK])\b")


def console_words(message: str) -> str:
    """A message shared with the command line, its flags named as the form names them
    (``--batch-size`` becomes "Batch size")."""
    def label(m: re.Match) -> str:
        field = _FLAGS.get(m.group(1))
        return f"“{LABELS[field]}”" if field in LABELS else m.group(1)

    return _FLAG.sub(label, message)


def field_of(message: str, default: str) -> str:
    """The form field a refusal is about (the first flag or keyword it names)."""
    m = _FLAG.search(message)
    if m and m.group(1) in _FLAGS:
        return _FLAGS[m.group(1)]
    lowered = message.lower()
    for words, field in (("cron line", "expression"), ("interval", "expression"),
                         ("time zone", "tz"), ("timezone", "tz"), ("one-off", "expression"),
                         ("in the past", "expression"), ("schedule name", "name"),
                         ("the name", "name"), ("pattern", "pattern"),
                         ("inventory", "inventory"), ("task", "task"), ("json", "kwargs"),
                         ("job line", "job"), ("timeout", "timeout")):
        if words in lowered:
            return field
    return default


def validation_errors(exc: ValidationError) -> dict[str, str]:
    """pydantic's refusals by field, in the console's words."""
    out: dict[str, str] = {}
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if not isinstance(p, int)]
        field = loc[0] if loc else "form"
        kind = e.get("type", "")
        if kind == "missing":
            text = "required"
        elif kind.startswith(("float", "int")):
            text = "a number is needed here"
        elif kind in ("string_too_long", "too_long"):
            text = "too long"
        else:
            text = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        out.setdefault(field if field in LABELS else "form", text)
    return out


class FormErrors(Exception):
    """The form's refusals, by field ("form": about no one field)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def refused(exc: OpsqError, default: str = "form") -> FormErrors:
    message = str(exc)
    return FormErrors({field_of(message, default): console_words(message)})


def _set(form: dict[str, str], name: str) -> bool:
    return bool(form.get(name, "").strip())


def _job_line(form: dict[str, str], command: str) -> str | None:
    """An ``opsq run`` line of the form's command, pattern, timeout and options, when any
    option is set (None: a plain fleet command)."""
    if not any(_set(form, f.name) for f in OPTION_FIELDS):
        return None
    # The command comes last, after "--": a command starting with "-" stays a command.
    words = ["run", "-t", form.get("pattern", "").strip()]
    if _set(form, "timeout"):
        words += ["--timeout", form["timeout"].strip()]
    flags = {o.api: o.cli for o in JOB_OPTIONS if o.api}
    for f in OPTION_FIELDS:
        value = form.get(f.name, "").strip()
        if not value:
            continue
        if f.kind == "check":
            words.append(flags[f.name])
        elif f.kind == "lines":
            for url in value.splitlines():
                if url.strip():
                    words += [flags[f.name], url.strip()]
        else:
            words += [flags[f.name], value]
    return shlex.join([*words, "--", command])


def _plain_line(fleet: dict[str, Any]) -> str:
    """The job line of a plain fleet command (command, pattern, timeout)."""
    timeout = ["--timeout", str(fleet["timeout"])] if "timeout" in fleet else []
    return shlex.join(["run", "-t", fleet["pattern"], *timeout, "--", fleet["command"]])


def _timing(form: dict[str, str]) -> dict[str, str]:
    kind, expression = form.get("when_kind", "cron"), form.get("expression", "").strip()
    if kind not in ("cron", "every", "at"):
        raise FormErrors({"expression": "choose a cron line, an interval or a time"})
    if not expression:
        raise FormErrors({"expression": {"cron": "give a cron line such as 0 2 * * *",
                                          "every": "give an interval such as 10m",
                                          "at": "give a time such as 2026-12-24T09:00"}[kind]})
    timing = {kind: expression}
    if kind != "every" and _set(form, "tz"):
        timing["tz"] = form["tz"].strip()
    return timing


def new_schedule(form: dict[str, str]) -> operations.ScheduleIn:
    """The API model of a new schedule's form. Raises FormErrors."""
    values: dict[str, Any] = {"name": form.get("name", "").strip(), **_timing(form),
                              "enabled": form.get("enabled") == "on",
                              "overlap": form.get("overlap", "skip") or "skip"}
    if not values["name"]:
        raise FormErrors({"name": "give the schedule a name"})
    task_fields = [f for f in ("task", "args", "kwargs") if _set(form, f)]
    fleet_fields = [f for f in ("command", "pattern", "timeout", "job",
                                *(o.name for o in OPTION_FIELDS)) if _set(form, f)]
    if form.get("what") == "task" and fleet_fields:
        raise FormErrors({fleet_fields[0]: "a registered task's schedule runs no command on "
                                           "hosts: clear this, or choose a command on hosts"})
    if form.get("what") != "task" and task_fields:
        raise FormErrors({task_fields[0]: "a command on hosts runs no registered task: clear "
                                          "this, or choose a registered task"})
    if form.get("what") == "task":
        if not _set(form, "task"):
            raise FormErrors({"task": "give the registered task to run"})
        values.update(task=form["task"].strip(), args=form.get("args", "").strip() or None,
                      kwargs=form.get("kwargs", "").strip() or None)
    else:
        values.update(_fleet(form, stored_command=None))
    try:
        return operations.ScheduleIn(**values)
    except ValidationError as exc:
        raise FormErrors(validation_errors(exc)) from None


def _fleet(form: dict[str, str], stored_command: str | None) -> dict[str, Any]:
    """A fleet schedule's fields: a job line, or command and pattern (with a job line
    made of them when options are set)."""
    line = form.get("job", "").strip()
    fields = ("command", "pattern", "timeout", *(f.name for f in OPTION_FIELDS))
    if line:
        extra = [f for f in fields if _set(form, f)]
        if extra:
            raise FormErrors({"job": "give either a job line or the fields above it ("
                                     f"{', '.join(LABELS[f] for f in extra)}), not both"})
        return {"job": line, "inventory": form.get("inventory") or None}
    command = form.get("command", "")
    if not command.strip():
        if stored_command is None:
            raise FormErrors({"command": "give the command to run"})
        command = stored_command
    if not _set(form, "pattern"):
        raise FormErrors({"pattern": "give the hosts to run on (a pattern such as web:&prod)"})
    made = _job_line(form, command)
    if made is not None:
        return {"job": made, "inventory": form.get("inventory") or None}
    out: dict[str, Any] = {"command": command, "pattern": form["pattern"].strip(),
                           "inventory": form.get("inventory") or None}
    if _set(form, "timeout"):
        out["timeout"] = form["timeout"].strip()
    return out


def schedule_edit(form: dict[str, str], row: Schedule) -> operations.ScheduleEdit:
    """The API model of an edit form of ``row``. Raises FormErrors."""
    values: dict[str, Any] = {**_timing(form), "enabled": form.get("enabled") == "on"}
    if _set(form, "overlap"):
        values["overlap"] = form["overlap"].strip()
    if row.task == schedules.SUBMIT_TASK and _fleet_changed(form, row):
        if _kind(row) != "command":
            # A put, get or script carries a file of the machine it was added on: the
            # console changes its timing only (its "command" is a description).
            raise FormErrors({"form": f"this schedule runs a {_kind(row)} made on the "
                                      "command line: change what it runs there (opsq "
                                      "schedule edit); here, its timing only"})
        form = {**form, "notify": _kept_notify(form.get("notify", ""), row)}
        fleet = _fleet(form, stored_command=_stored_command(row))
        if "job" in fleet or "spec" in row.kwargs:
            if "job" not in fleet:  # a whole job before: a whole job again
                fleet = {"job": _plain_line(fleet), "inventory": fleet.get("inventory")}
            values.update(fleet)
        else:
            values.update({k: v for k, v in fleet.items() if k != "inventory"})
            if fleet.get("inventory") and fleet["inventory"] != _name(
                    row.kwargs.get("inventory")):  # another inventory: the whole job again
                values.update(job=_plain_line(fleet), inventory=fleet["inventory"])
                for k in ("command", "pattern", "timeout"):
                    values.pop(k, None)
    elif row.task != schedules.SUBMIT_TASK:
        values.update(task=form.get("task", "").strip() or row.task,
                      args=form.get("args", "").strip() or "[]",
                      kwargs=form.get("kwargs", "").strip() or "{}")
    try:
        return operations.ScheduleEdit(**values)
    except ValidationError as exc:
        raise FormErrors(validation_errors(exc)) from None


#: The fields of what a fleet schedule runs.
_FLEET_FIELDS = ("pattern", "timeout", "inventory", "job", *(f.name for f in OPTION_FIELDS))


def _same(a: str, b: str) -> bool:
    """Two field values alike (a browser sends a textarea's line breaks as CRLF)."""
    return a.replace("\r\n", "\n").strip() == b.replace("\r\n", "\n").strip()


def _fleet_changed(form: dict[str, str], row: Schedule) -> bool:
    """Whether the form changes what a fleet schedule runs (an edit of its timing alone
    leaves it, whatever inventory it was made on)."""
    stored = form_of(row)
    return _set(form, "command") or any(
        not _same(form.get(k, ""), stored.get(k, "")) for k in _FLEET_FIELDS)


def _kind(row: Schedule) -> str:
    spec = row.kwargs.get("spec")
    return str(spec.get("kind", "command")) if isinstance(spec, dict) else "command"


def _stored_notify(row: Schedule) -> list[str]:
    spec = row.kwargs.get("spec")
    holder = spec if isinstance(spec, dict) else row.kwargs
    return [str(u) for u in holder.get("notify") or []]


def _kept_notify(text: str, row: Schedule) -> str:
    """The notification URLs a form means: a line left as shown (masked: a URL's path
    may hold a token) keeps its stored URL."""
    stored = {shown(u): u for u in _stored_notify(row)}
    return "\n".join(stored.get(line.strip(), line.strip())
                     for line in text.replace("\r\n", "\n").splitlines() if line.strip())


def _stored_command(row: Schedule) -> str:
    spec = row.kwargs.get("spec")
    if isinstance(spec, dict):
        return str(spec.get("command", ""))
    return str(row.kwargs.get("command", ""))


def form_of(row: Schedule) -> dict[str, str]:
    """The edit form of a schedule as stored. The command is not shown (it may hold a
    secret): the field stays empty, which keeps it; its masked text is the placeholder."""
    kind = {"interval": "every", "cron": "cron", "once": "at"}[row.kind]
    expression = f"{_exact(row.expression)}s" if row.kind == "interval" else row.expression
    form = {"name": row.name, "when_kind": kind, "expression": expression,
            "tz": row.timezone or "", "enabled": "on" if row.enabled else "",
            "overlap": row.overlap}
    if row.task != schedules.SUBMIT_TASK:
        form.update(what="task", task=row.task, args=json.dumps(row.args or []),
                    kwargs=json.dumps(row.kwargs or {}))
        return form
    form.update(what="fleet", command="", command_shown=jobs.mask_secrets(_stored_command(row)))
    spec = row.kwargs.get("spec")
    if isinstance(spec, dict):
        params = spec.get("params") or {}
        form.update(pattern=str(spec.get("pattern", "")),
                    timeout=_number(spec.get("command_timeout")),
                    inventory=_name(spec.get("inventory")),
                    connect_timeout=_number(spec.get("connect_timeout")),
                    rerun_safe="on" if spec.get("rerun_safe") else "",
                    become="on" if params.get("become") else "",
                    become_user=str(params.get("become_user") or ""),
                    batch_size=_text(spec.get("batch_size")),
                    pause=_number(spec.get("batch_pause")),
                    max_fail=_text(spec.get("max_fail")),
                    retries=_number(spec.get("retries") or None),
                    retry_delay=_number(spec.get("retry_delay")),
                    retry_on=str(spec.get("retry_on") or ""),
                    notify="\n".join(shown(u) for u in spec.get("notify") or []),
                    deadline=_number(spec.get("deadline")))
    else:
        form.update(pattern=str(row.kwargs.get("pattern", "")),
                    timeout=_number(row.kwargs.get("timeout")),
                    inventory=_name(row.kwargs.get("inventory")),
                    connect_timeout=_number(row.kwargs.get("connect_timeout")),
                    rerun_safe="on" if row.kwargs.get("rerun_safe") else "",
                    notify="\n".join(shown(u) for u in row.kwargs.get("notify") or []))
    return form


def _exact(value: Any) -> str:
    """A number as the parsers read it back, without an exponent or lost digits."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _number(value: Any) -> str:
    return "" if value is None else _exact(value)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _name(path: Any) -> str:
    return operations.inventory_name(path) if isinstance(path, str) else ""
