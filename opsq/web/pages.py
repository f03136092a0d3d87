"""The console's HTML pages: server-rendered Jinja2 (autoescaped: host output is shown
as text, never as markup), a form per change, each form POST checked for the session's
CSRF token, and the role checked on the server whatever the page showed."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from opsq import jobs, schedules
from opsq.errors import OpsqError
from opsq.models import JobStatus, Role
from opsq.web import audit, operations, users
from opsq.web.auth import (
    CSRF_FIELD,
    check_csrf,
    client_address,
    csrf_token,
    require,
    session_principal,
)
from opsq.web.users import Principal

#: Jobs the jobs page lists.
JOBS_SHOWN = 100
#: Milliseconds between two looks at a running job from its page.
LIVE_POLL_MS = 1000
#: Characters of a host's first output line in the job table.
FIRST_LINE_CHARS = 120

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True)
templates = Jinja2Templates(env=_env)
router = APIRouter(include_in_schema=False)


def _user(request: Request, role: Role = Role.VIEWER) -> Principal:
    who = session_principal(request)
    if who is None:
        raise HTTPException(401, "log in first")
    require(who, role)
    return who


def _render(request: Request, name: str, who: Principal | None, status: int = 200,
            **context: Any) -> HTMLResponse:
    base = {"user": who, "csrf": csrf_token(request), "csrf_field": CSRF_FIELD,
            "no_auth": request.app.state.no_auth,
            "flower_url": request.app.state.flower_url,
            "operator": bool(who and who.can(Role.OPERATOR)),
            "admin": bool(who and who.can(Role.ADMIN))}
    return templates.TemplateResponse(request, name, {**base, **context},
                                      status_code=status)


def error_page(request: Request, status: int, message: str) -> Response:
    return _render(request, "error.html", session_principal(request), status,
                   status_code=status, message=message)


async def _form(request: Request) -> dict[str, str]:
    """The POSTed form, once its CSRF token is checked (403 otherwise)."""
    form = await request.form()
    check_csrf(request, form.get(CSRF_FIELD))
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _text(value: str) -> str:
    """422 for text PostgreSQL cannot store (a NUL), instead of a database error."""
    try:
        return operations.storable(value)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- login -------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/jobs") -> Response:
    return _render(request, "login.html", None, next=_local(next), error=None)


def _local(url: str) -> str:
    """Only a path on this server (no open redirect to another site)."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url \
        else "/jobs"


@router.post("/login")
async def login(request: Request) -> Response:
    from opsq.web import users

    form = await _form(request)
    name, password = form.get("name", ""), form.get("password", "")
    target = _local(form.get("next", "/jobs"))
    address = client_address(request) or "-"
    limiter = request.app.state.limiter
    keys = (f"address:{address}", f"user:{name}")
    if limiter.blocked(*keys):
        audit.record(None, name or "-", "login.blocked", name, {}, address)
        return _render(request, "login.html", None, 429, next=target,
                       error="too many failed logins: wait a minute and try again")
    who = users.login(name, password)
    if who is None:
        limiter.failed(*keys)
        audit.record(None, name[:64] or "-", "login.failure", name[:64], {}, address)
        return _render(request, "login.html", None, 401, next=target,
                       error="wrong user name or password")
    request.session.clear()  # a new session (and CSRF token) for the new login
    request.session["user"] = who.name
    audit.record(None, who.name, "login.success", who.name, {}, address)
    return _see(target)


@router.post("/logout")
async def logout(request: Request) -> Response:
    await _form(request)
    request.session.clear()
    return _see("/login")


# -- jobs --------------------------------------------------------------------------------


@router.get("/")
def home(request: Request) -> Response:
    return _see("/jobs")


@router.get("/jobs")
def jobs_page(request: Request, status: str = "", pattern: str = "", submitter: str = "",
              schedule: str = "") -> Response:
    who = _user(request)
    filters = {"status": status, "pattern": pattern, "submitter": submitter,
               "schedule": schedule}
    for value in filters.values():
        _text(value)
    chosen = JobStatus(status) if status in {s.value for s in JobStatus} else None
    rows = operations.list_jobs(chosen, pattern, submitter, schedule, limit=JOBS_SHOWN)
    return _render(request, "jobs.html", who, jobs=rows, filters=filters,
                   statuses=[s.value for s in JobStatus])


def first_line(text: str | None) -> str:
    line = (text or "").lstrip("\n").split("\n", 1)[0]
    return line[:FIRST_LINE_CHARS]


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    who = _user(request)
    _text(job_id)
    summary = jobs.summary(job_id)
    runs = jobs.host_runs(job_id, preview=True)
    return _render(request, "job.html", who, job=summary, runs=runs, first_line=first_line,
                   poll_ms=LIVE_POLL_MS, quote=quote)


@router.get("/jobs/{job_id}/hosts/{host}")
def host_page(request: Request, job_id: str, host: str) -> Response:
    who = _user(request)
    _text(job_id + host)
    runs = [r for r in jobs.host_runs(job_id) if r.host == host]
    if not runs:
        raise HTTPException(404, f"job {job_id[:64]} has no host {host[:64]!r}")
    return _render(request, "host.html", who, job_id=job_id, run=runs[0])


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    who = _user(request, Role.OPERATOR)
    await _form(request)
    _text(job_id)
    operations.cancel(who, job_id, client_address(request))
    return _see(f"/jobs/{quote(job_id)}")


# -- run ---------------------------------------------------------------------------------

_RUN_FIELDS = ("command", "pattern", "timeout", "connect_timeout", "batch_size", "pause",
               "max_fail", "retries", "retry_delay", "retry_on", "become_user")


@router.get("/run")
def run_page(request: Request) -> Response:
    who = _user(request, Role.OPERATOR)
    return _render(request, "run.html", who, form={}, error=None)


def _job_from_form(form: dict[str, str]) -> operations.JobIn:
    values: dict[str, Any] = {k: form[k].strip() if k != "command" else form[k]
                              for k in _RUN_FIELDS if form.get(k, "").strip()}
    values["rerun_safe"] = form.get("rerun_safe") == "on"
    values["become"] = form.get("become") == "on"
    return operations.JobIn(**values)


def _validation_message(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e.get("loc", ()))
    return f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg"))


@router.post("/run")
async def run(request: Request) -> Response:
    who = _user(request, Role.OPERATOR)
    form = await _form(request)
    try:
        job_id = operations.submit(who, _job_from_form(form), client_address(request))
    except ValidationError as exc:
        error = _validation_message(exc)
    except OpsqError as exc:
        error = str(exc)
    else:
        return _see(f"/jobs/{quote(job_id)}")
    return _render(request, "run.html", who, 422, form=form, error=error)


# -- schedules ---------------------------------------------------------------------------


@router.get("/schedules")
def schedules_page(request: Request) -> Response:
    who = _user(request)
    rows = schedules.all_schedules()
    return _render(request, "schedules.html", who, schedules=rows,
                   timing=operations.describe_timing, target=operations.describe_target,
                   fleet_task=schedules.SUBMIT_TASK, quote=quote)


_SCHEDULE_FIELDS = ("name", "tz", "command", "pattern", "timeout", "task", "args", "kwargs")


def _timing_fields(form: dict[str, str]) -> dict[str, str]:
    kind, expression = form.get("when_kind", "cron"), form.get("expression", "").strip()
    if kind not in ("cron", "every", "at"):
        raise OpsqError("choose cron, every or at")
    return {kind: expression}


def _schedule_from_form(form: dict[str, str]) -> operations.ScheduleIn:
    values: dict[str, Any] = {k: form[k].strip() for k in _SCHEDULE_FIELDS
                              if form.get(k, "").strip()}
    if form.get("what") == "task":
        for k in ("command", "pattern", "timeout"):
            values.pop(k, None)
    else:
        for k in ("task", "args", "kwargs"):
            values.pop(k, None)
    values.update(_timing_fields(form))
    if "every" in values:  # the zone field keeps its default; an interval has no zone
        values.pop("tz", None)
    values["enabled"] = form.get("enabled") == "on"
    return operations.ScheduleIn(**values)


def _form_of(row: Any) -> dict[str, str]:
    import json

    kind = {"interval": "every", "cron": "cron", "once": "at"}[row.kind]
    expression = f"{float(row.expression):g}s" if row.kind == "interval" else row.expression
    fleet = row.task == schedules.SUBMIT_TASK
    form = {"name": row.name, "when_kind": kind, "expression": expression,
            "tz": row.timezone, "what": "fleet" if fleet else "task",
            "enabled": "on" if row.enabled else ""}
    if fleet:
        form.update(command=row.kwargs.get("command", ""),
                    pattern=row.kwargs.get("pattern", ""),
                    timeout=str(row.kwargs.get("timeout", "")))
    else:
        form.update(task=row.task, args=json.dumps(row.args), kwargs=json.dumps(row.kwargs))
    return form


@router.get("/schedules/new")
def new_schedule_page(request: Request) -> Response:
    who = _user(request, Role.OPERATOR)
    return _render(request, "schedule_form.html", who, form={"enabled": "on", "tz": "UTC"},
                   error=None, editing=None)


@router.post("/schedules/new")
async def new_schedule(request: Request) -> Response:
    who = _user(request, Role.OPERATOR)
    form = await _form(request)
    try:
        operations.create_schedule(who, _schedule_from_form(form), client_address(request))
    except ValidationError as exc:
        error = _validation_message(exc)
    except OpsqError as exc:
        error = str(exc)
    else:
        return _see("/schedules")
    return _render(request, "schedule_form.html", who, 422, form=form, error=error,
                   editing=None)


def _schedule_or_404(name: str) -> Any:
    _text(name)
    row = operations.find_schedule(name)
    if row is None:
        raise HTTPException(404, f"no schedule named {name[:64]!r}")
    return row


@router.get("/schedules/{name}/edit")
def edit_schedule_page(request: Request, name: str) -> Response:
    who = _user(request, Role.OPERATOR)
    row = _schedule_or_404(name)
    return _render(request, "schedule_form.html", who, form=_form_of(row), error=None,
                   editing=row.name)


@router.post("/schedules/{name}/edit")
async def edit_schedule(request: Request, name: str) -> Response:
    who = _user(request, Role.OPERATOR)
    form = await _form(request)
    row = _schedule_or_404(name)
    try:
        values: dict[str, Any] = _timing_fields(form)
        if form.get("tz", "").strip() and "every" not in values:
            values["tz"] = form["tz"].strip()
        if row.task == schedules.SUBMIT_TASK:
            for k in ("command", "pattern", "timeout"):
                if form.get(k, "").strip():
                    values[k] = form[k] if k == "command" else form[k].strip()
        values["enabled"] = form.get("enabled") == "on"
        operations.edit_schedule(who, name, operations.ScheduleEdit(**values),
                                 client_address(request))
    except ValidationError as exc:
        error = _validation_message(exc)
    except OpsqError as exc:
        error = str(exc)
    else:
        return _see("/schedules")
    return _render(request, "schedule_form.html", who, 422, form={**form, "name": name},
                   error=error, editing=name)


@router.post("/schedules/{name}/{action}")
async def schedule_action(request: Request, name: str, action: str) -> Response:
    who = _user(request, Role.OPERATOR)
    await _form(request)
    _schedule_or_404(name)
    address = client_address(request)
    if action == "enable":
        operations.edit_schedule(who, name, operations.ScheduleEdit(enabled=True), address,
                                 "schedule.enable")
    elif action == "disable":
        operations.edit_schedule(who, name, operations.ScheduleEdit(enabled=False), address,
                                 "schedule.disable")
    elif action == "delete":
        operations.remove_schedule(who, name, address)
    elif action == "run":
        task_id = operations.run_schedule(who, name, address)
        if _schedule_or_404(name).task == schedules.SUBMIT_TASK:
            return _see(f"/jobs/{quote(task_id)}")
    else:
        raise HTTPException(404, f"no such action {action[:32]!r}")
    return _see("/schedules")


# -- hosts and audit ---------------------------------------------------------------------


@router.get("/hosts")
def hosts_page(request: Request, pattern: str = "") -> Response:
    who = _user(request)
    view = operations.inventory_view()
    selected, error = None, None
    if pattern:
        _text(pattern)
        try:
            selected = [h.name for h in jobs.resolve(pattern)]
        except OpsqError as exc:
            error = str(exc)
    return _render(request, "hosts.html", who, inventory=view, pattern=pattern,
                   selected=selected, error=error)


# -- users (admins) -------------------------------------------------------------------------


def _users_page(request: Request, who: Principal, status: int = 200, error: str | None = None,
                form: dict[str, str] | None = None, token: tuple[str, str] | None = None
                ) -> Response:
    return _render(request, "users.html", who, status, users=users.all_users(), error=error,
                   form=form or {"role": "viewer"}, roles=[r.value for r in Role], token=token)


@router.get("/users")
def users_page(request: Request) -> Response:
    return _users_page(request, _user(request, Role.ADMIN))


@router.post("/users")
async def add_user(request: Request) -> Response:
    who = _user(request, Role.ADMIN)
    form = await _form(request)
    try:
        users.add(_text(form.get("name", "").strip()), form.get("role", ""),
                  _text(form.get("password", "")), by=who.name,
                  address=client_address(request))
    except OpsqError as exc:
        return _users_page(request, who, 422, error=str(exc),
                           form={k: v for k, v in form.items() if k in ("name", "role")})
    return _see("/users")


@router.post("/users/{name}/{action}")
async def user_action(request: Request, name: str, action: str) -> Response:
    """Remove a user, or make them an API token (shown once: only its hash is kept)."""
    who = _user(request, Role.ADMIN)
    await _form(request)
    _text(name)
    if action not in ("remove", "token"):
        raise HTTPException(404, "no such action")
    if action == "remove" and name == who.name:
        return _users_page(request, who, 422, error="you cannot remove yourself")
    try:
        if action == "remove":
            users.remove(name, by=who.name, address=client_address(request))
            return _see("/users")
        token = users.new_token(name, by=who.name, address=client_address(request))
    except OpsqError as exc:
        return _users_page(request, who, 422, error=str(exc))
    return _users_page(request, who, token=(name, token))


@router.get("/audit")
def audit_page(request: Request, user: str = "", action: str = "") -> Response:
    who = _user(request, Role.ADMIN)
    _text(user + action)
    rows = audit.entries(audit.MAX_SHOWN, user or None, action or None)
    return _render(request, "audit.html", who, entries=rows, filters={"user": user,
                                                                      "action": action})
