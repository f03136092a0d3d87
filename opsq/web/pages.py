"""The console's HTML pages: server-rendered Jinja2 (autoescaped: host output is shown
as text, never as markup), a form per change, each form POST checked for the session's
CSRF token, and the role checked on the server whatever the page showed.

Handlers that read a form are ``async``; everything they do that blocks (the database,
argon2) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from opsq import jobs, schedules
from opsq.errors import OpsqError
from opsq.store.models import JobStatus, Role
from opsq.web import audit, operations, users
from opsq.web.auth import (
    CSRF_FIELD,
    check_csrf,
    client_address,
    csrf_token,
    require,
    session_principal,
    start_session,
)
from opsq.web.users import Principal

#: Jobs the jobs page lists.
JOBS_SHOWN = 100
#: Milliseconds between two looks at a running job from its page.
LIVE_POLL_MS = 1000
#: Characters of a host's first output line in the job table.
FIRST_LINE_CHARS = 120
#: Hosts one page of a job's host table shows.
HOSTS_PER_PAGE = 100
#: Seconds a new API token waits to be shown once after the form that made it.
TOKEN_SHOWN_FOR = 300.0

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


async def _who(request: Request, role: Role = Role.VIEWER) -> Principal:
    """``_user`` from an async handler: the lookup runs in the thread pool."""
    return await run_in_threadpool(_user, request, role)


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
    form = await _form(request)
    name, password = form.get("name", ""), form.get("password", "")
    target = _local(form.get("next", "/jobs"))
    address = client_address(request) or "-"
    limiter = request.app.state.limiter
    if not limiter.attempt(name, address):
        await run_in_threadpool(audit.record, None, name or "-", "login.blocked", name,
                                {}, address)
        return _render(request, "login.html", None, 429, next=target,
                       error="too many failed logins: wait a minute and try again")
    found = await run_in_threadpool(users.login, name, password)
    if found is None:
        await run_in_threadpool(audit.record, None, name or "-", "login.failure", name,
                                {}, address)
        return _render(request, "login.html", None, 401, next=target,
                       error="wrong user name or password")
    limiter.succeeded(name, address)
    who, held = found
    start_session(request, held)  # a new session (and CSRF token) for the new login
    await run_in_threadpool(audit.record, None, who.name, "login.success", who.name, {},
                            address)
    return _see(target)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session here and everywhere else: every cookie the user holds is retired
    (a signed cookie copied elsewhere would otherwise stay valid)."""
    await _form(request)
    who = await run_in_threadpool(session_principal, request)
    if who is not None and not request.app.state.no_auth:
        await run_in_threadpool(users.end_sessions, who.name, who.name,
                                client_address(request))
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
def job_page(request: Request, job_id: str, page: int = 1) -> Response:
    who = _user(request)
    _text(job_id)
    summary = jobs.summary(job_id)
    pages = max(1, -(-summary.total // HOSTS_PER_PAGE))
    page = min(max(page, 1), pages)
    offset = (page - 1) * HOSTS_PER_PAGE
    runs = jobs.host_runs(job_id, preview=True, offset=offset, limit=HOSTS_PER_PAGE)
    return _render(request, "job.html", who, job=summary, runs=runs, first_line=first_line,
                   poll_ms=LIVE_POLL_MS, quote=quote, page=page, pages=pages,
                   offset=offset, per_page=HOSTS_PER_PAGE)


@router.get("/jobs/{job_id}/hosts/{host}")
def host_page(request: Request, job_id: str, host: str) -> Response:
    who = _user(request)
    _text(job_id + host)
    runs = jobs.host_runs(job_id, host=host)
    if not runs:
        raise HTTPException(404, f"job {job_id[:64]} has no host {host[:64]!r}")
    return _render(request, "host.html", who, job_id=job_id, run=runs[0])


@router.post("/jobs/{job_id}/rerun")
async def rerun_job(request: Request, job_id: str) -> Response:
    who = await _who(request, Role.OPERATOR)
    form = await _form(request)
    _text(job_id)
    new_id = await run_in_threadpool(operations.rerun, who, job_id,
                                     form.get("failed") == "on", client_address(request))
    return _see(f"/jobs/{quote(new_id)}")


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    who = await _who(request, Role.OPERATOR)
    await _form(request)
    _text(job_id)
    await run_in_threadpool(operations.cancel, who, job_id, client_address(request))
    return _see(f"/jobs/{quote(job_id)}")


# -- run ---------------------------------------------------------------------------------

_RUN_FIELDS = ("command", "pattern", "inventory", "timeout", "connect_timeout",
               "batch_size", "pause", "max_fail", "retries", "retry_delay", "retry_on",
               "become_user")


def _inventory_names() -> list[str]:
    try:
        return list(operations.inventories())
    except OpsqError:
        return []


@router.get("/run")
def run_page(request: Request) -> Response:
    who = _user(request, Role.OPERATOR)
    return _render(request, "run.html", who, form={}, error=None,
                   inventories=_inventory_names())


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
    who = await _who(request, Role.OPERATOR)
    form = await _form(request)
    return await run_in_threadpool(_run, request, who, form)


def _run(request: Request, who: Principal, form: dict[str, str]) -> Response:
    try:
        job_id = operations.submit(who, _job_from_form(form), client_address(request))
    except ValidationError as exc:
        error = _validation_message(exc)
        audit.refused(who, "job.submit", None, error, {"command": form.get("command"),
                                                       "pattern": form.get("pattern")},
                      client_address(request))
    except OpsqError as exc:
        error = str(exc)
    else:
        return _see(f"/jobs/{quote(job_id)}")
    return _render(request, "run.html", who, 422, form=form, error=error,
                   inventories=_inventory_names())


# -- schedules ---------------------------------------------------------------------------


@router.get("/schedules")
def schedules_page(request: Request) -> Response:
    who = _user(request)
    rows = schedules.all_schedules()
    return _render(request, "schedules.html", who, schedules=rows,
                   timing=operations.describe_timing, target=operations.describe_target,
                   fleet_task=schedules.SUBMIT_TASK, quote=quote)


_SCHEDULE_FIELDS = ("name", "tz", "command", "pattern", "timeout", "task", "args", "kwargs",
                    "overlap", "job")


def _timing_fields(form: dict[str, str]) -> dict[str, str]:
    kind, expression = form.get("when_kind", "cron"), form.get("expression", "").strip()
    if kind not in ("cron", "every", "at"):
        raise OpsqError("choose cron, every or at")
    return {kind: expression}


def _schedule_from_form(form: dict[str, str]) -> operations.ScheduleIn:
    values: dict[str, Any] = {k: form[k].strip() for k in _SCHEDULE_FIELDS
                              if form.get(k, "").strip()}
    if form.get("what") == "task":
        for k in ("command", "pattern", "timeout", "job"):
            values.pop(k, None)
    else:
        for k in ("task", "args", "kwargs"):
            values.pop(k, None)
        if "job" in values:  # a whole job line: the three fields above are not its
            for k in ("command", "pattern", "timeout"):
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
            "enabled": "on" if row.enabled else "", "overlap": row.overlap}
    if fleet:
        # The command is not shown as stored (it may hold a secret): the field stays
        # empty, which keeps it; its masked text is the placeholder.
        form.update(command="", command_shown=jobs.mask_secrets(row.kwargs.get("command", "")),
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
    who = await _who(request, Role.OPERATOR)
    form = await _form(request)
    return await run_in_threadpool(_new_schedule, request, who, form)


def _new_schedule(request: Request, who: Principal, form: dict[str, str]) -> Response:
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
    who = await _who(request, Role.OPERATOR)
    form = await _form(request)
    return await run_in_threadpool(_edit_schedule, request, who, name, form)


def _edit_schedule(request: Request, who: Principal, name: str, form: dict[str, str]
                   ) -> Response:
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
        if form.get("overlap", "").strip():
            values["overlap"] = form["overlap"].strip()
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
    who = await _who(request, Role.OPERATOR)
    await _form(request)
    return await run_in_threadpool(_schedule_action, request, who, name, action)


def _schedule_action(request: Request, who: Principal, name: str, action: str) -> Response:
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
def hosts_page(request: Request, pattern: str = "", inventory: str = "") -> Response:
    who = _user(request)
    _text(pattern + inventory)
    view = operations.inventory_view(inventory or None)
    selected, error = None, None
    if pattern:
        try:
            selected = [h.name for h in operations.resolve(pattern, inventory or None)]
        except OpsqError as exc:
            error = str(exc)
    return _render(request, "hosts.html", who, inventory=view, pattern=pattern,
                   selected=selected, error=error)


# -- users (admins) -------------------------------------------------------------------------


class _ShownOnce:
    """New API tokens waiting to be shown once, by a random key the redirect carries:
    the form answers with a redirect (a refresh makes nothing), and the token is never
    in a URL or a cookie. In memory: one ``opsq web`` process serves the console."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[float, str, str, str]] = {}
        self._lock = threading.Lock()

    def put(self, admin: str, name: str, token: str) -> str:
        key = secrets.token_urlsafe(16)
        now = time.monotonic()
        with self._lock:
            for k in [k for k, v in self._held.items() if v[0] < now]:
                del self._held[k]
            self._held[key] = (now + TOKEN_SHOWN_FOR, admin, name, token)
        return key

    def take(self, admin: str, key: str) -> tuple[str, str] | None:
        with self._lock:
            held = self._held.get(key)
            if held is None or held[1] != admin or held[0] < time.monotonic():
                return None
            del self._held[key]
            return held[2], held[3]


_shown_once = _ShownOnce()


def _users_page(request: Request, who: Principal, status: int = 200, error: str | None = None,
                form: dict[str, str] | None = None, token: tuple[str, str] | None = None
                ) -> Response:
    listed = users.all_users()
    held = {u.name: users.tokens(u.name) for u in listed if u.tokens}
    return _render(request, "users.html", who, status, users=listed, error=error,
                   form=form or {"role": "viewer"}, roles=[r.value for r in Role], token=token,
                   tokens=held, quote=quote)


@router.get("/users")
def users_page(request: Request, shown: str = "") -> Response:
    who = _user(request, Role.ADMIN)
    token = _shown_once.take(who.name, shown) if shown else None
    return _users_page(request, who, token=token)


@router.post("/users")
async def add_user(request: Request) -> Response:
    who = await _who(request, Role.ADMIN)
    form = await _form(request)
    return await run_in_threadpool(_add_user, request, who, form)


def _add_user(request: Request, who: Principal, form: dict[str, str]) -> Response:
    address = client_address(request)
    name = _text(form.get("name", "").strip())
    try:
        users.add(name, form.get("role", ""), _text(form.get("password", "")), by=who.name,
                  address=address)
    except OpsqError as exc:
        audit.refused(who, "user.add", name, str(exc), {"role": form.get("role")}, address)
        return _users_page(request, who, 422, error=str(exc),
                           form={k: v for k, v in form.items() if k in ("name", "role")})
    return _see("/users")


_USER_ACTIONS = ("remove", "token", "role", "revoke")


@router.post("/users/{name}/{action}")
async def user_action(request: Request, name: str, action: str) -> Response:
    """Remove a user, change their role, make them an API token (shown once: only its
    hash is kept) or revoke one."""
    who = await _who(request, Role.ADMIN)
    form = await _form(request)
    _text(name)
    if action not in _USER_ACTIONS:
        raise HTTPException(404, "no such action")
    return await run_in_threadpool(_user_action, request, who, name, action, form)


def _user_action(request: Request, who: Principal, name: str, action: str,
                 form: dict[str, str]) -> Response:
    address = client_address(request)
    if action in ("remove", "role") and name == who.name:
        return _users_page(request, who, 422, error=f"you cannot {action} yourself here: "
                                                    "ask another admin")
    try:
        if action == "remove":
            users.remove(name, by=who.name, address=address)
        elif action == "role":
            users.set_role(name, form.get("role", ""), by=who.name, address=address)
        elif action == "revoke":
            users.revoke(name, _text(form.get("token", "")), by=who.name, address=address)
        else:
            token = users.new_token(
                name, by=who.name, address=address,
                token_name=_text(form.get("token_name", "").strip()) or None,
                lifetime=users.parse_lifetime(form.get("expires")))
            return _see(f"/users?shown={_shown_once.put(who.name, name, token)}")
    except OpsqError as exc:
        audit.refused(who, f"user.{action}", name, str(exc), {}, address)
        return _users_page(request, who, 422, error=str(exc))
    return _see("/users")


@router.get("/audit")
def audit_page(request: Request, user: str = "", action: str = "") -> Response:
    who = _user(request, Role.ADMIN)
    _text(user + action)
    rows = audit.entries(audit.MAX_SHOWN, user or None, action or None)
    return _render(request, "audit.html", who, entries=rows, filters={"user": user,
                                                                      "action": action})
