"""The console's HTML pages: server-rendered Jinja2 (autoescaped: host output is shown
as text, never as markup), a form per change, each form POST checked for the session's
CSRF token, and the role checked on the server whatever the page showed.

Handlers that read a form are ``async``; everything they do that blocks (the database,
argon2) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from opsq import jobs, schedules
from opsq.errors import OpsqError
from opsq.store.models import JobStatus, Role
from opsq.web import audit, operations, render, schedule_form, users
from opsq.web.auth import (
    CSRF_FIELD,
    check_csrf,
    client_address,
    csrf_token,
    require,
    session_principal,
    start_session,
)
from opsq.web.lists import MAX_OFFSET
from opsq.web.users import Principal

#: Jobs one page of the jobs list shows.
JOBS_SHOWN = 50
#: Audit entries one page of the audit log shows.
AUDIT_SHOWN = 100
#: Milliseconds between two looks at a running job from its page.
LIVE_POLL_MS = 1000
#: Milliseconds between two looks at the jobs list while it shows unfinished jobs.
JOBS_POLL_MS = 3000
#: Characters of a host's first output line in the job table.
FIRST_LINE_CHARS = 120
#: Hosts one page of a job's host table shows.
HOSTS_PER_PAGE = 100
#: Output groups a job page shows (the largest; the API pages through all of them).
GROUPS_SHOWN = 20
#: Seconds a new API token waits to be shown once after the form that made it.
TOKEN_SHOWN_FOR = 300.0

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True)
render.register(_env)
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
              schedule: str = "", page: int = 1) -> Response:
    who = _user(request)
    filters = {"status": status, "pattern": pattern, "submitter": submitter,
               "schedule": schedule}
    for value in filters.values():
        _text(value)
    error, rows = None, []
    page = min(max(page, 1), MAX_OFFSET // JOBS_SHOWN)
    try:
        chosen = operations.job_status(status)
        # One more than a page: whether there is an older page.
        rows = operations.list_jobs(chosen, pattern, submitter, schedule,
                                    limit=JOBS_SHOWN + 1, offset=(page - 1) * JOBS_SHOWN)
    except OpsqError as exc:
        error = str(exc)
    query = {k: v for k, v in filters.items() if v}
    return _render(request, "jobs.html", who, 400 if error else 200, jobs=rows[:JOBS_SHOWN],
                   filters=filters, statuses=[s.value for s in JobStatus], error=error,
                   page=page, older=len(rows) > JOBS_SHOWN, query=query,
                   poll_ms=JOBS_POLL_MS, per_page=JOBS_SHOWN)


def first_line(text: str | None) -> str:
    line = (text or "").lstrip("\n").split("\n", 1)[0]
    return render.strip_ansi(line)[:FIRST_LINE_CHARS]


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, page: int = 1, q: str = "") -> Response:
    who = _user(request)
    _text(job_id + q)
    summary = jobs.summary(job_id, with_hosts=False)
    error = None
    if q:
        try:
            runs = jobs.host_runs(job_id, preview=True, search=q, limit=HOSTS_PER_PAGE + 1)
        except OpsqError as exc:
            runs, error = [], str(exc)
        pages, page, offset = 1, 1, 0
        more = len(runs) > HOSTS_PER_PAGE
        runs = runs[:HOSTS_PER_PAGE]
    else:
        pages = max(1, -(-summary.total // HOSTS_PER_PAGE))
        page = min(max(page, 1), pages)
        offset = (page - 1) * HOSTS_PER_PAGE
        runs = jobs.host_runs(job_id, preview=True, offset=offset, limit=HOSTS_PER_PAGE)
        more = False
    folded = jobs.groups(job_id, limit=GROUPS_SHOWN)
    return _render(request, "job.html", who, 400 if error else 200, job=summary, runs=runs,
                   first_line=first_line, last_line=last_line, poll_ms=LIVE_POLL_MS,
                   quote=quote, page=page, pages=pages, offset=offset,
                   per_page=HOSTS_PER_PAGE, q=q, search_error=error, more=more,
                   groups=folded, started_at=jobs.first_start(job_id),
                   waiting=[] if summary.finished else jobs.waiting(job_id),
                   counts=sorted(summary.counts.items(), key=lambda i: -i[1]))


def last_line(text: str | None) -> str:
    lines = [line for line in (text or "").split("\n") if line.strip()]
    return render.strip_ansi(lines[-1])[:FIRST_LINE_CHARS] if lines else ""


#: Hosts read at a time while a download streams: memory stays bounded by one page (at
#: most 2 x OPSQ_OUTPUT_LIMIT a host).
DOWNLOAD_PAGE = 20


def _all_runs(job_id: str) -> Iterator[Any]:
    offset = 0
    while True:
        page = jobs.host_runs(job_id, offset=offset, limit=DOWNLOAD_PAGE)
        yield from page
        if len(page) < DOWNLOAD_PAGE:
            return
        offset += DOWNLOAD_PAGE


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff"}


@router.get("/jobs/{job_id}/results.json")
def results_json(request: Request, job_id: str) -> Response:
    """The job's summary and every host's run with its whole output, streamed."""
    _user(request)
    _text(job_id)
    summary = jobs.summary(job_id, with_hosts=False)

    def body() -> Iterator[bytes]:
        yield b'{"job": ' + json.dumps(summary.as_dict()).encode() + b', "hosts": ['
        for i, run in enumerate(_all_runs(job_id)):
            yield (b", " if i else b"") + json.dumps(run.as_dict()).encode()
        yield b"]}\n"

    return StreamingResponse(body(), media_type="application/json",
                             headers=_attachment(f"opsq-job-{summary.job_id[:8]}.json"))


@router.get("/jobs/{job_id}/results.tar.gz")
def results_archive(request: Request, job_id: str) -> Response:
    """The job as plain text files: ``summary.txt``, and per host ``NNNNNN-HOST/stdout.txt``,
    ``stderr.txt`` and ``result.txt`` (NNNNNN: its place in the job). Host names are
    percent-encoded into file names, a leading dot too, so none can climb out of the
    archive's directory (``../x``)."""
    _user(request)
    _text(job_id)
    summary = jobs.summary(job_id, with_hosts=False)
    top = f"opsq-job-{summary.job_id[:8]}"

    def body() -> Iterator[bytes]:
        out = _Chunks()
        with tarfile.open(fileobj=out, mode="w|gz") as tar:
            lines = [f"job {summary.job_id}", f"status {summary.status.value}",
                     f"command {summary.command}", f"pattern {summary.pattern}",
                     f"hosts {summary.done}/{summary.total} done", ""]
            for i, run in enumerate(_all_runs(job_id), start=1):
                # Numbered (so no two hosts, nor a host and summary.txt, share a folder on
                # a case-insensitive disk), percent-encoded, a leading dot too ("..").
                encoded = quote(run.host, safe="")
                name = f"{i:06d}-" + (encoded.replace(".", "%2E", 1) if encoded.startswith(".")
                                       else encoded)
                lines.append(f"{run.host}\t{run.status.value}\t"
                             f"{'' if run.exit_code is None else run.exit_code}")
                result = (f"host {run.host}\nstatus {run.status.value}\nexit "
                          f"{'' if run.exit_code is None else run.exit_code}\n"
                          f"duration {'' if run.duration is None else round(run.duration, 3)}\n"
                          f"error {run.error or ''}\n")
                for file, text in (("stdout.txt", run.stdout), ("stderr.txt", run.stderr),
                                   ("result.txt", result)):
                    _add(tar, f"{top}/{name}/{file}", (text or "").encode())
                yield out.take()
            _add(tar, f"{top}/summary.txt", "\n".join(lines).encode() + b"\n")
        yield out.take()

    return StreamingResponse(body(), media_type="application/gzip",
                             headers=_attachment(f"{top}.tar.gz"))


class _Chunks(io.RawIOBase):
    """A write-only file whose bytes are taken as they come (a streamed archive)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


@router.get("/jobs/{job_id}/hosts/{host}")
def host_page(request: Request, job_id: str, host: str) -> Response:
    who = _user(request)
    _text(job_id + host)
    runs = jobs.host_runs(job_id, host=host)
    if not runs:
        raise HTTPException(404, f"job {job_id[:64]} has no host {host[:64]!r}")
    return _render(request, "host.html", who, job_id=job_id, run=runs[0], quote=quote)


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
               "become_user", "deadline")


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
    """pydantic's refusals in the console's words, each naming its field's label."""
    return "; ".join(v if k == "form" else f"{schedule_form.LABELS.get(k, k)}: {v}"
                     for k, v in schedule_form.validation_errors(exc).items())


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
                   fleet_task=schedules.SUBMIT_TASK, quote=quote,
                   builtin=schedules.BUILTIN_SCHEDULES)


def _schedule_form(request: Request, who: Principal, form: dict[str, str],
                   editing: str | None, errors: dict[str, str] | None = None,
                   status: int = 200) -> Response:
    try:
        offered = sorted(operations.inventories())
    except OpsqError:
        offered = []
    options_open = bool(errors and any(f.name in errors or f.name == "job" for f in
                                       schedule_form.OPTION_FIELDS)) or any(
        form.get(f.name) for f in schedule_form.OPTION_FIELDS) or bool(form.get("job"))
    return _render(request, "schedule_form.html", who, status, form=form, editing=editing,
                   errors=errors or {}, labels=schedule_form.LABELS,
                   option_fields=schedule_form.OPTION_FIELDS, inventories=offered,
                   options_open=options_open or bool(errors and "job" in errors),
                   quote=quote)


@router.get("/schedules/new")
def new_schedule_page(request: Request) -> Response:
    who = _user(request, Role.OPERATOR)
    return _schedule_form(request, who, {"enabled": "on", "tz": "UTC", "what": "fleet"},
                          None)


@router.post("/schedules/new")
async def new_schedule(request: Request) -> Response:
    who = await _who(request, Role.OPERATOR)
    form = await _form(request)
    return await run_in_threadpool(_new_schedule, request, who, form)


def _new_schedule(request: Request, who: Principal, form: dict[str, str]) -> Response:
    try:
        created = schedule_form.new_schedule(form)
        operations.create_schedule(who, created, client_address(request))
    except schedule_form.FormErrors as exc:
        errors = exc.errors
    except OpsqError as exc:
        errors = schedule_form.refused(exc, "job" if form.get("job") else "form").errors
    else:
        return _see("/schedules")
    return _schedule_form(request, who, form, None, errors, 422)


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
    if row.task != schedules.SUBMIT_TASK:
        require(who, Role.ADMIN)  # a registered task's arguments are the admins' to read
    return _schedule_form(request, who, schedule_form.form_of(row), row.name)


@router.post("/schedules/{name}/edit")
async def edit_schedule(request: Request, name: str) -> Response:
    who = await _who(request, Role.OPERATOR)
    form = await _form(request)
    return await run_in_threadpool(_edit_schedule, request, who, name, form)


def _edit_schedule(request: Request, who: Principal, name: str, form: dict[str, str]
                   ) -> Response:
    row = _schedule_or_404(name)
    try:
        edit = schedule_form.schedule_edit(form, row)
        operations.edit_schedule(who, name, edit, client_address(request))
    except schedule_form.FormErrors as exc:
        errors = exc.errors
    except OpsqError as exc:
        errors = schedule_form.refused(exc).errors
    else:
        return _see("/schedules")
    shown = {**schedule_form.form_of(row), **form, "name": row.name}
    return _schedule_form(request, who, shown, name, errors, 422)


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
                   selected=selected, error=error, quote=quote)


#: Runs one page of a host's history shows.
HISTORY_SHOWN = 50


@router.get("/hosts/{name}")
def host_history_page(request: Request, name: str, page: int = 1) -> Response:
    who = _user(request)
    _text(name)
    page = min(max(page, 1), MAX_OFFSET // HISTORY_SHOWN)
    runs = jobs.host_history(name, (page - 1) * HISTORY_SHOWN, HISTORY_SHOWN + 1)
    return _render(request, "host_history.html", who, host=name, runs=runs[:HISTORY_SHOWN],
                   page=page, older=len(runs) > HISTORY_SHOWN, first_line=first_line,
                   quote=quote)


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
def audit_page(request: Request, user: str = "", action: str = "", page: int = 1) -> Response:
    who = _user(request, Role.ADMIN)
    _text(user + action)
    page = min(max(page, 1), MAX_OFFSET // AUDIT_SHOWN)
    rows = audit.entries(AUDIT_SHOWN + 1, user or None, action or None,
                         (page - 1) * AUDIT_SHOWN)
    query = {k: v for k, v in {"user": user, "action": action}.items() if v}
    return _render(request, "audit.html", who, entries=rows[:AUDIT_SHOWN],
                   filters={"user": user, "action": action}, page=page,
                   older=len(rows) > AUDIT_SHOWN, query=query, per_page=AUDIT_SHOWN)
