"""The ASGI application of ``opsq web``, and the server that runs it.

FastAPI serves the REST API (its OpenAPI schema at ``/api/v1/openapi.json``) and the
Jinja2 pages; Starlette's SessionMiddleware keeps the login in a signed cookie
(HttpOnly, SameSite=Lax) holding the user's id and session epoch (``opsq.web.auth``).
Around them, outermost first: security headers, the loopback guard of a login-free
console, the session, API authentication, then the body cap: nothing is read of a body
before its sender is known.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from opsq.errors import BackendUnavailable, JobNotFound, OpsqError
from opsq.settings import Settings, get_settings
from opsq.web import api, audit, auth, pages

#: Seconds a login lasts (the session cookie's max age).
SESSION_MAX_AGE = 8 * 3600
#: Headers on every answer: no framing (clickjacking), no MIME sniffing, scripts and
#: styles from this server only (the pages' own inline ones are allowed by nonce-free
#: 'self' plus 'unsafe-inline' for the small inline style and script they carry).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
}

logger = logging.getLogger(__name__)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(api.PREFIX)


def _first_problem(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    return f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid"))


def _install_error_handlers(app: FastAPI) -> None:
    async def answer(request: Request, status: int, message: str,
                     headers: dict[str, str] | None = None) -> Response:
        if _is_api(request):
            return JSONResponse({"error": message}, status_code=status, headers=headers)
        # The page names the logged-in user: a database look-up, off the event loop.
        return await run_in_threadpool(pages.error_page, request, status, message)

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound) -> Response:
        return await answer(request, 404, str(exc))

    @app.exception_handler(BackendUnavailable)
    async def unavailable(request: Request, exc: BackendUnavailable) -> Response:
        return await answer(request, 503, str(exc))

    @app.exception_handler(OpsqError)
    async def refused(request: Request, exc: OpsqError) -> Response:
        return await answer(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return await answer(request, 422, _first_problem(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 401 and not _is_api(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        if exc.status_code == 403 and request.method not in auth.SAFE_METHODS:
            await run_in_threadpool(_audit_forbidden, request, str(exc.detail))
        return await answer(request, exc.status_code, str(exc.detail), exc.headers)


def _audit_forbidden(request: Request, reason: str) -> None:
    """A change refused for the caller's role (or a forged form) goes to the audit log."""
    who = request.scope.get("state", {}).get(auth.PRINCIPAL_STATE)
    if who is None and "session" in request.scope:
        try:
            who = auth.session_principal(request)
        except OpsqError:
            who = None
    if who is None:  # an anonymous caller (a bad CSRF token at login) could flood the log
        return
    audit.refused(who, "access", f"{request.method} {request.url.path}", reason,
                  {}, auth.client_address(request))


def create_app(settings: Settings | None = None, no_auth: bool | None = None) -> FastAPI:
    """The console's ASGI app. ``no_auth``: every visitor is the admin 'anonymous' (the
    caller has checked that this is allowed: ``auth.check_startup``)."""
    s = settings or get_settings()
    app = FastAPI(title="opsq", version="1", summary="Run commands across a fleet of hosts",
                  openapi_url=f"{api.PREFIX}/openapi.json", docs_url=f"{api.PREFIX}/docs",
                  redoc_url=None)
    app.state.no_auth = bool(s.web_no_auth if no_auth is None else no_auth)
    app.state.flower_url = (s.web_flower_url or "").rstrip("/")
    app.state.limiter = auth.LoginLimiter()
    app.state.trusted_proxies = auth.parse_networks(s.web_trusted_proxies,
                                                    "OPSQ_WEB_TRUSTED_PROXIES")
    # Added innermost first: each add_middleware wraps the ones before it. An anonymous
    # API caller is refused before the body cap reads a byte; the session is read first
    # because the API's reads accept it.
    app.add_middleware(auth.BodyLimit, limit=s.web_max_body)
    app.add_middleware(auth.ApiAuthentication, prefix=api.PREFIX)
    app.add_middleware(SessionMiddleware, secret_key=auth.signing_key(s),
                       session_cookie="opsq_session", max_age=SESSION_MAX_AGE,
                       same_site="lax", https_only=s.web_secure_cookies)
    if app.state.no_auth:
        app.add_middleware(auth.LoopbackOnly)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    _install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(pages.router)
    return app


def serve(settings: Settings | None = None) -> None:
    """Run the console on OPSQ_WEB_ADDRESS:OPSQ_WEB_PORT. Raises ConfigError when it would
    have no login (``auth.check_startup``)."""
    import uvicorn

    s = settings or get_settings()
    logging.basicConfig(level=s.log_level, format="%(asctime)s %(levelname)s %(name)s: "
                                                  "%(message)s")
    no_auth = auth.check_startup(s)
    app = create_app(s, no_auth)
    logger.info("opsq web on http://%s:%d/ (API: /api/v1, OpenAPI: /api/v1/openapi.json)",
                s.web_address, s.web_port)
    # proxy_headers off: the client address comes from X-Forwarded-For only when the peer
    # is one of OPSQ_WEB_TRUSTED_PROXIES (auth.client_address); uvicorn's own handling
    # would rewrite the peer for its own list of proxies.
    uvicorn.run(app, host=s.web_address, port=s.web_port, proxy_headers=False,
                log_level=s.log_level.lower(), server_header=False)
