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

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from opsq import jobs
from opsq.models import JobStatus, Role
from opsq.settings import get_settings
from opsq.web import audit, operations, streams
from opsq.web.auth import api_principal, client_address, require
from opsq.web.operations import JobIn, ScheduleEdit, ScheduleIn, ShortText
from opsq.web.users import Principal

PREFIX = "/api/v1"
#: Answers every endpoint may give besides its own, for the OpenAPI schema.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong token"},
    403: {"description": "the user's role is too low"},
    422: {"description": "refused input: {\"error\": message}"},
}

router = APIRouter(prefix=PREFIX, responses=COMMON_RESPONSES)
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
              ) -> list[dict[str, Any]]:
    """Recent jobs, newest first, filtered by status, pattern, submitter, schedule and
    submission time (``since`` inclusive, ``until`` exclusive)."""
    return operations.list_jobs(status, pattern, submitter, schedule, since, until, limit)


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: JobId, who: Caller) -> dict[str, Any]:
    """The job's summary: status, counts, each host's status and exit code."""
    return jobs.summary(job_id).as_dict()


@router.get("/jobs/{job_id}/hosts", tags=["jobs"])
def job_hosts(job_id: JobId, who: Caller, preview: bool = False) -> list[dict[str, Any]]:
    """Each host's result with its output (``preview``: the first 512 characters)."""
    return [r.as_dict() for r in jobs.host_runs(job_id, preview=preview)]


#: Seconds between two keep-alive comments of an idle event stream.
EVENTS_KEEPALIVE = 15.0


@router.get("/jobs/{job_id}/events", tags=["jobs"],
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "server-sent events, one per change"},
                       429: {"description": "the caller's streams are at their limit"}})
async def job_events(job_id: JobId, who: Caller) -> StreamingResponse:
    """Server-sent events: a ``progress`` event (status, hosts done, counts) each time the
    job changes, until it has ended. 429 when the caller already holds
    OPSQ_WEB_STREAMS_PER_USER streams.

    A waiting stream holds no thread and no database connection: the process's one
    ``LISTEN`` (``opsq.web.streams``) wakes it when its job is announced, and it reads the
    job then, or after EVENTS_KEEPALIVE seconds without news."""
    try:
        sub = streams.hub().subscribe(job_id, who.name, get_settings().web_streams_per_user)
    except streams.TooManyStreams as exc:
        raise HTTPException(429, str(exc)) from exc
    try:  # subscribed first, so that no change between this read and the stream is missed
        first = await streams.read(jobs.summary, job_id)  # 404 before the stream starts
    except BaseException:
        sub.close()
        raise

    async def stream() -> AsyncIterator[str]:
        s, last = first, None
        with sub:
            while True:
                now = (s.status.value, s.done, tuple(sorted(s.counts.items())))
                if now != last:
                    data = {"status": s.status.value, "done": s.done, "total": s.total,
                            "counts": s.counts}
                    yield f"event: progress\ndata: {json.dumps(data)}\n\n"
                    last = now
                if s.finished:
                    return
                if not await sub.wait(EVENTS_KEEPALIVE):
                    yield ": keep-alive\n\n"
                s = await streams.read(jobs.summary, job_id)

    return streams.EventStream(stream(), sub)


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


@router.get("/hosts", tags=["hosts"])
def inventory(who: Caller) -> dict[str, Any]:
    """The inventory's groups (with their hosts) and hosts (without their variables)."""
    return operations.inventory_view()


@router.get("/hosts/resolve", response_model=Resolved, tags=["hosts"])
def resolve(pattern: Annotated[ShortText, Query()], who: Caller) -> dict[str, Any]:
    """The hosts a pattern selects, in inventory order."""
    return {"pattern": pattern,
            "hosts": [operations.host_dict(h) for h in jobs.resolve(pattern)]}


@router.get("/audit", tags=["audit"])
def audit_log(who: Caller, user: Annotated[ShortText | None, Query()] = None,
              action: Annotated[ShortText | None, Query()] = None,
              limit: Annotated[int, Query(ge=1, le=audit.MAX_SHOWN)] = 100,
              ) -> list[dict[str, Any]]:
    """The newest audit entries first (admin)."""
    require(who, Role.ADMIN)
    return [e.as_dict() for e in audit.entries(limit, user, action)]


@router.get("/me", tags=["users"])
def me(who: Caller) -> dict[str, str]:
    """Who the token belongs to, and their role."""
    return {"name": who.name, "role": who.role.value}
