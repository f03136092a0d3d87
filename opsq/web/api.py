"""The REST API under ``/api/v1``: jobs, schedules, hosts and the audit log, as JSON.

Authenticated by ``Authorization: Bearer <token>`` (401 without a valid one, 403 when the
user's role is too low). A refused input answers 422 with ``{"error": "<message>"}`` and
changes nothing: the checks are opsq's own, the same as the command line's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict

from opsq import jobs
from opsq.errors import OpsqError
from opsq.settings import get_settings
from opsq.store.models import JobStatus, Role
from opsq.web import audit, operations, streams, users
from opsq.web.auth import api_principal, client_address, require
from opsq.web.lists import MAX_OFFSET
from opsq.web.operations import JobIn, ScheduleEdit, ScheduleIn, ShortText
from opsq.web.users import Principal

PREFIX = "/api/v1"
#: Answers every endpoint may give besides its own, for the OpenAPI schema.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong token"},
    403: {"description": "the user's role is too low"},
    422: {"description": "refused input: {\"error\": message}"},
}

#: Hosts of a job one page of ``/jobs/{id}/hosts`` holds by default, and at most.
HOSTS_PAGE = 100
MAX_HOSTS_PAGE = 1000

# The scheme the OpenAPI document declares (its "Authorize" button); the check itself is
# auth.ApiAuthentication's, before the body is read.
_bearer_scheme = HTTPBearer(auto_error=False, description="An API token: opsq users token "
                                                          "NAME, or the Users page")
router = APIRouter(prefix=PREFIX, responses=COMMON_RESPONSES,
                   dependencies=[Security(_bearer_scheme)])
Caller = Annotated[Principal, Depends(api_principal)]
JobId = Annotated[ShortText, Path()]
Name = Annotated[ShortText, Path()]


class JobCreated(BaseModel):
    job_id: str


class Resolved(BaseModel):
    pattern: str
    hosts: list[dict[str, Any]]


def _operator(who: Caller) -> Principal:
    """The caller, if an operator: checked before the body, so a viewer gets 403 whatever
    they send."""
    require(who, Role.OPERATOR)
    return who


Operator = Annotated[Principal, Depends(_operator)]


def _schedule_or_404(name: str) -> Any:
    row = operations.find_schedule(name)
    if row is None:
        raise HTTPException(404, f"no schedule named {name[:64]!r}")
    return row


# -- jobs --------------------------------------------------------------------------------


@router.post("/jobs", status_code=201, response_model=JobCreated, tags=["jobs"])
def submit_job(job: JobIn, who: Operator, request: Request) -> dict[str, str]:
    """Run a command on the hosts a pattern selects (operator)."""
    return {"job_id": operations.submit(who, job, client_address(request))}


@router.get("/jobs", tags=["jobs"])
def list_jobs(who: Caller, status: JobStatus | None = None,
              pattern: Annotated[ShortText | None, Query()] = None,
              submitter: Annotated[ShortText | None, Query()] = None,
              schedule: Annotated[ShortText | None, Query()] = None,
              since: datetime | None = None, until: datetime | None = None,
              limit: Annotated[int, Query(ge=1, le=operations.MAX_JOBS_LISTED)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
              ) -> list[dict[str, Any]]:
    """Recent jobs, newest first, filtered by status, by text the pattern, submitter or
    schedule contains (any case), and by submission time (``since`` inclusive, ``until``
    exclusive); ``offset`` skips that many (the next page)."""
    return operations.list_jobs(status, pattern, submitter, schedule, since, until, limit,
                                offset)


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: JobId, who: Caller) -> dict[str, Any]:
    """The job's summary: status, counts, each host's status and exit code; ``waiting``
    says which sites' hosts wait for a worker ("waiting for a worker of site us")."""
    summary = jobs.summary(job_id)
    return {**summary.as_dict(), "waiting": [] if summary.finished else jobs.waiting(job_id)}


@router.get("/jobs/{job_id}/hosts", tags=["jobs"])
def job_hosts(job_id: JobId, who: Caller, preview: bool = False,
              offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
              limit: Annotated[int, Query(ge=1, le=MAX_HOSTS_PAGE)] = HOSTS_PAGE,
              host: Annotated[ShortText | None, Query()] = None,
              search: Annotated[ShortText | None, Query(max_length=200)] = None,
              ) -> list[dict[str, Any]]:
    """One page of the hosts' results with their output, in inventory order (``preview``:
    512 characters of each stream, the first ones, or the last ones of a host still
    running; ``host``: that host only; ``search``: hosts whose output contains that text,
    any case). The job's ``total`` says how many there are. A running host's ``elapsed``
    counts the seconds since it started."""
    return [r.as_dict() for r in jobs.host_runs(job_id, preview=preview, host=host,
                                                offset=offset, limit=limit, search=search)]


@router.get("/jobs/{job_id}/groups", tags=["jobs"])
def job_groups(job_id: JobId, who: Caller,
               offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
               limit: Annotated[int, Query(ge=1, le=jobs.MAX_GROUPS_PAGE)] = 100
               ) -> dict[str, Any]:
    """The job's results folded: each distinct output once, under the hosts that printed
    it in ClusterShell's notation (``web[01-97]``), the largest group first, with the
    hosts' statuses and exit codes; ``total`` counts the groups of every page."""
    found = jobs.groups(job_id, offset=offset, limit=limit)
    return {"groups": [g.as_dict() for g in found.groups], "total": found.total,
            "offset": offset, "limit": limit}


@router.get("/metrics", tags=["metrics"], response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text format"}})
def metrics(who: Caller) -> PlainTextResponse:
    """opsq's Prometheus metrics (any role's token: scrape with ``authorization:
    credentials``): jobs and host results by status, job and host duration histograms,
    tasks waiting per fleet queue, hosts interrupted and retried."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from opsq.worker.metrics import registry

    return PlainTextResponse(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)


#: Seconds between two keep-alive comments of an idle event stream.
EVENTS_KEEPALIVE = 15.0


@router.get("/jobs/{job_id}/events", tags=["jobs"],
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "server-sent events, one per change"},
                       429: {"description": "the caller's streams are at their limit"}})
async def job_events(job_id: JobId, who: Caller) -> StreamingResponse:
    """Server-sent events: a ``progress`` event (status, hosts done, counts) each time the
    job changes, until it has ended, and an ``output`` event when running hosts printed
    more (their output is stored every second). 429 when the caller already holds
    OPSQ_WEB_STREAMS_PER_USER streams.

    A waiting stream holds no thread and no database connection: the process's one
    ``LISTEN`` (``opsq.web.streams``) wakes it when its job is announced, and it reads the
    job then, or after EVENTS_KEEPALIVE seconds without news."""
    try:
        sub = streams.hub().subscribe(job_id, who.name, get_settings().web_streams_per_user)
    except streams.TooManyStreams as exc:
        raise HTTPException(429, str(exc)) from exc
    try:  # subscribed first, so that no change between this read and the stream is missed
        first = await streams.read(jobs.progress, job_id)  # 404 before the stream starts
    except BaseException:
        sub.close()
        raise

    async def stream() -> AsyncIterator[str]:
        s, last, woke = first, None, False
        with sub:
            while True:
                now = (s.status.value, s.done, tuple(sorted(s.counts.items())))
                if now != last:
                    data = {"status": s.status.value, "done": s.done, "total": s.total,
                            "counts": s.counts}
                    yield f"event: progress\ndata: {json.dumps(data)}\n\n"
                    last = now
                elif woke:  # announced without a count changing: running hosts' output
                    yield "event: output\ndata: {}\n\n"
                if s.finished:
                    return
                woke = await sub.wait(EVENTS_KEEPALIVE)
                if not woke:
                    yield ": keep-alive\n\n"
                s = await streams.read(jobs.progress, job_id)

    return streams.EventStream(stream(), sub)


class RerunIn(BaseModel):
    """Which hosts a re-run takes: every host of the job, or (``failed``) those that did
    not end ok."""

    model_config = ConfigDict(extra="forbid")

    failed: bool = False


@router.post("/jobs/{job_id}/rerun", status_code=201, response_model=JobCreated,
             tags=["jobs"])
def rerun_job(job_id: JobId, who: Operator, request: Request,
              body: RerunIn | None = None) -> dict[str, str]:
    """Run a finished job again, as it was submitted (operator); the new job records
    which job it repeats (``rerun_of``)."""
    failed = bool(body and body.failed)
    return {"job_id": operations.rerun(who, job_id, failed, client_address(request))}


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: JobId, who: Operator, request: Request) -> dict[str, Any]:
    """Cancel a queued or running job (operator)."""
    return operations.cancel(who, job_id, client_address(request)).as_dict()


# -- schedules ---------------------------------------------------------------------------


@router.get("/schedules", tags=["schedules"])
def list_schedules(who: Caller) -> list[dict[str, Any]]:
    from opsq import schedules

    return [operations.schedule_dict(r) for r in schedules.all_schedules()]


@router.post("/schedules", status_code=201, tags=["schedules"])
def create_schedule(body: ScheduleIn, who: Operator, request: Request) -> dict[str, Any]:
    """Create a schedule (operator); refused as ``opsq schedule add`` refuses it."""
    row = operations.create_schedule(who, body, client_address(request))
    return operations.schedule_dict(row)


@router.get("/schedules/{name}", tags=["schedules"])
def get_schedule(name: Name, who: Caller) -> dict[str, Any]:
    return operations.schedule_dict(_schedule_or_404(name))


@router.patch("/schedules/{name}", tags=["schedules"])
def edit_schedule(name: Name, body: ScheduleEdit, who: Operator, request: Request
                  ) -> dict[str, Any]:
    """Change a schedule's timing, command, pattern, timeout, notify or enabled."""
    _schedule_or_404(name)
    row = operations.edit_schedule(who, name, body, client_address(request))
    return operations.schedule_dict(row)


@router.delete("/schedules/{name}", status_code=204, tags=["schedules"])
def delete_schedule(name: Name, who: Operator, request: Request) -> Response:
    _schedule_or_404(name)
    operations.remove_schedule(who, name, client_address(request))
    return Response(status_code=204)


@router.post("/schedules/{name}/enable", tags=["schedules"])
def enable_schedule(name: Name, who: Operator, request: Request) -> dict[str, Any]:
    _schedule_or_404(name)
    row = operations.edit_schedule(who, name, ScheduleEdit(enabled=True),
                                   client_address(request), "schedule.enable")
    return operations.schedule_dict(row)


@router.post("/schedules/{name}/disable", tags=["schedules"])
def disable_schedule(name: Name, who: Operator, request: Request) -> dict[str, Any]:
    _schedule_or_404(name)
    row = operations.edit_schedule(who, name, ScheduleEdit(enabled=False),
                                   client_address(request), "schedule.disable")
    return operations.schedule_dict(row)


@router.post("/schedules/{name}/run", tags=["schedules"])
def run_schedule(name: Name, who: Operator, request: Request) -> dict[str, str]:
    """Fire the schedule now; its task id (a fleet command's job id)."""
    _schedule_or_404(name)
    return {"task_id": operations.run_schedule(who, name, client_address(request))}


# -- hosts and audit ---------------------------------------------------------------------


InventoryName = Annotated[ShortText | None, Query(description="An inventory's name "
                                                               "(unset: the first)")]


@router.get("/hosts", tags=["hosts"])
def inventory(who: Caller, inventory: InventoryName = None) -> dict[str, Any]:
    """An inventory's groups (with their hosts) and hosts (without their variables), and
    the names of the inventories the console offers."""
    return operations.inventory_view(inventory)


@router.get("/hosts/resolve", response_model=Resolved, tags=["hosts"])
def resolve(pattern: Annotated[ShortText, Query()], who: Caller,
            inventory: InventoryName = None) -> dict[str, Any]:
    """The hosts a pattern selects, in inventory order."""
    return {"pattern": pattern,
            "hosts": [operations.host_dict(h) for h in operations.resolve(pattern,
                                                                          inventory)]}


@router.get("/hosts/{name}/results", tags=["hosts"])
def host_history(name: Annotated[ShortText, Path()], who: Caller,
                 offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                 limit: Annotated[int, Query(ge=1, le=jobs.MAX_HISTORY_PAGE)] = 50,
                 ) -> list[dict[str, Any]]:
    """A host's runs across jobs, the newest job first: the job, its command, the host's
    status, exit code, time and the first 512 characters of its output."""
    return jobs.host_history(name, offset, limit)


@router.get("/audit", tags=["audit"])
def audit_log(who: Caller, user: Annotated[ShortText | None, Query()] = None,
              action: Annotated[ShortText | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=audit.MAX_SHOWN)] = 100,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
              ) -> list[dict[str, Any]]:
    """The newest audit entries first (admin); ``user`` and ``action`` match text they
    contain (any case); ``offset`` skips that many (the next page)."""
    require(who, Role.ADMIN)
    return [e.as_dict() for e in audit.entries(limit, user, action, offset)]


@router.get("/me", tags=["users"])
def me(who: Caller) -> dict[str, str | None]:
    """Who the token belongs to, their role, and the token's name."""
    return {"name": who.name, "role": who.role.value, "token": who.token}


# -- users and their tokens ------------------------------------------------------------


class TokenIn(BaseModel):
    """A new API token: its name (unique per user) and lifetime (``90d``, ``12h``,
    ``2w``; unset or ``never``: until revoked)."""

    model_config = ConfigDict(extra="forbid")

    name: ShortText | None = None
    expires: ShortText | None = None


def _self_or_admin(who: Principal, name: str) -> None:
    if who.name != name:
        require(who, Role.ADMIN)


@router.get("/users", tags=["users"])
def list_users(who: Caller) -> list[dict[str, Any]]:
    """Every user with their role (admin)."""
    require(who, Role.ADMIN)
    return [u.as_dict() for u in users.all_users()]


@router.get("/users/{name}/tokens", tags=["users"])
def list_tokens(name: Name, who: Caller) -> list[dict[str, Any]]:
    """A user's API tokens: name, times, expiry; never the tokens (admin, or yourself)."""
    _self_or_admin(who, name)
    return [t.as_dict() for t in users.tokens(name)]


@router.post("/users/{name}/tokens", status_code=201, tags=["users"])
def create_token(name: Name, body: TokenIn, who: Caller, request: Request
                 ) -> dict[str, Any]:
    """A new API token for the user, shown this once (admin, or yourself)."""
    _self_or_admin(who, name)
    address = client_address(request)
    try:
        made, token = users.new_token(name, by=who.name, address=address,
                                      token_name=body.name,
                                      lifetime=users.parse_lifetime(body.expires),
                                      not_after=who.token_expires, returning=True)
    except OpsqError as exc:
        audit.refused(who, "user.token", name, str(exc), body.model_dump(), address)
        raise
    return {**made.as_dict(), "token": token}


@router.delete("/users/{name}/tokens/{token}", status_code=204, tags=["users"])
def revoke_token(name: Name, token: Name, who: Caller, request: Request) -> Response:
    """Revoke the user's token by its name or id (admin, or yourself)."""
    _self_or_admin(who, name)
    address = client_address(request)
    try:
        users.revoke(name, token, by=who.name, address=address)
    except OpsqError as exc:
        audit.refused(who, "user.revoke", name, str(exc), {"token_name": token}, address)
        raise
    return Response(status_code=204)
