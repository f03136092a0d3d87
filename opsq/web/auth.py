"""Who a request comes from, and whether it may do what it asks.

The REST API takes ``Authorization: Bearer <token>`` (``opsq users token``); its reads
also accept the console's session cookie, so the pages' live views can call it. API
callers are authenticated before their body is read (``ApiAuthentication``). The pages
use a signed session cookie (HttpOnly, SameSite=Lax, Secure with
OPSQ_WEB_SECURE_COOKIES) holding the user's id and session epoch: logout, a password or
role change and removal end it. Every form POST carries the session's CSRF token.
Roles: a viewer reads; an operator also runs and cancels jobs and edits schedules; an
admin also manages users, schedules registered tasks and reads the audit log.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from opsq.errors import ConfigError
from opsq.settings import PROJECT_ROOT, Settings, get_settings
from opsq.store.models import Role
from opsq.web import users
from opsq.web.users import Principal, Session
from opsq.worker.daemons import private_dir
from opsq.worker.flower import is_loopback

#: Where the cookie signing key is kept when OPSQ_WEB_SECRET is unset (mode 0600).
SECRET_FILE = PROJECT_ROOT / "var" / "web-secret"
#: Random bytes of a generated signing key.
SECRET_BYTES = 32
#: Shortest signing key accepted, in bytes (a shorter or empty one is refused at start).
MIN_SECRET_BYTES = 32
#: Failed logins allowed for one user name from one address within LOGIN_WINDOW seconds,
#: and from one address whatever the names (higher: several users share a NAT or proxy).
LOGIN_ATTEMPTS = 5
ADDRESS_ATTEMPTS = 50
LOGIN_WINDOW = 60.0
#: Keys the login limiter remembers at most; the oldest are forgotten first.
LIMITER_KEYS = 100_000
#: The session key holding the CSRF token, and the form field that must repeat it.
CSRF_KEY = "csrf"
CSRF_FIELD = "csrf"
#: Session keys of the logged-in user's id and session epoch.
USER_ID_KEY = "uid"
EPOCH_KEY = "epoch"
#: The user every visitor is when OPSQ_WEB_NO_AUTH is on.
ANONYMOUS = Principal("anonymous", Role.ADMIN)
#: Methods that change nothing (no Origin check, and the API accepts the session).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: Paths of the API anyone may read: its description.
PUBLIC_API_PATHS = ("/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/oauth2-redirect")
#: The request state key holding an authenticated API caller.
PRINCIPAL_STATE = "principal"

logger = logging.getLogger(__name__)


def check_startup(settings: Settings | None = None) -> bool:
    """Refuse to serve without a login: True when running without auth (loopback only,
    OPSQ_WEB_NO_AUTH set). Raises ConfigError otherwise when no user exists."""
    s = settings or get_settings()
    if s.web_no_auth:
        if not is_loopback(s.web_address):
            raise ConfigError(
                f"OPSQ_WEB_NO_AUTH is only allowed on a loopback address, not "
                f"{s.web_address!r}: create a user (opsq users add NAME --role admin)")
        logger.warning("OPSQ_WEB_NO_AUTH is set: every visitor is an admin named "
                       "'anonymous' (loopback only)")
        return True
    if users.count() == 0:
        raise ConfigError(
            "the web console runs commands on your hosts, so it needs a login: create a "
            "user first (opsq users add NAME --role admin), or set OPSQ_WEB_NO_AUTH=1 to "
            "run it without one on a loopback address only")
    return False


def signing_key(settings: Settings | None = None, path: Path = SECRET_FILE) -> str:
    """OPSQ_WEB_SECRET, else the key kept in ``path`` (created once, readable by this user
    only), so that sessions survive a restart. Raises ConfigError for a key shorter than
    MIN_SECRET_BYTES (an empty file included): anyone could forge its cookies."""
    s = settings or get_settings()
    if s.web_secret is not None:
        return _long_enough(s.web_secret, "OPSQ_WEB_SECRET")
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _long_enough(path.read_text().strip(), str(path))
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(SECRET_BYTES))
    return path.read_text().strip()


def _long_enough(key: str, where: str) -> str:
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the console's signing key ({where}) has {len(key.encode())} bytes; it needs "
            f"at least {MIN_SECRET_BYTES} random ones (python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'), or remove the file to have one made")
    return key


class LoginLimiter:
    """Counts failed logins per key over a sliding window: per (name, address) with a low
    cap, per address with a higher one, so that guessing one user's password from an
    address is slow while other users of that address (or of a proxy) still log in.

    In memory: one ``opsq web`` process serves the console, and a restart forgetting the
    counts only gives an attacker LOGIN_ATTEMPTS more tries. Keys whose failures are all
    older than the window are forgotten, and at most ``max_keys`` are kept.
    """

    def __init__(self, attempts: int = LOGIN_ATTEMPTS, window: float = LOGIN_WINDOW,
                 address_attempts: int = ADDRESS_ATTEMPTS, max_keys: int = LIMITER_KEYS
                 ) -> None:
        self.attempts, self.window = attempts, window
        self.address_attempts, self.max_keys = address_attempts, max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(name: str, address: str) -> tuple[str, str]:
        """The (name, address) and address keys. An IPv6 address counts as its /64: one
        host commonly holds the whole network."""
        try:
            ip = ipaddress.ip_address(address)
            if ip.version == 6:
                address = str(ipaddress.ip_network(f"{ip}/64", strict=False))
        except ValueError:
            pass
        return f"user:{name[:64]}@{address}", f"address:{address}"

    def attempt(self, name: str, address: str) -> bool:
        """Count a login attempt before its password is checked; False (and nothing
        counted) when the name or the address is blocked. Checking and counting at once
        keeps a burst of concurrent guesses within the limits; a login that succeeds
        takes its count back (``succeeded``)."""
        now = time.monotonic()
        pair, addr = self.keys(name, address)
        with self._lock:
            if (self._count(pair, now) >= self.attempts
                    or self._count(addr, now) >= self.address_attempts):
                return False
            for key in (pair, addr):
                self._failures.setdefault(key, deque()).append(now)
                self._failures.move_to_end(key)
            self._forget(now)
            return True

    def succeeded(self, name: str, address: str) -> None:
        """A login that ``attempt`` counted succeeded: it was no failure."""
        with self._lock:
            for key in self.keys(name, address):
                times = self._failures.get(key)
                if times:
                    times.pop()

    def _count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) if times else 0

    def _forget(self, now: float) -> None:
        # The least recently failed keys come first: drop them while they are stale or
        # while there are too many.
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if len(self._failures) <= self.max_keys and times and times[-1] > now - self.window:
                return
            del self._failures[key]

    def __len__(self) -> int:
        return len(self._failures)


def parse_networks(text: str, what: str) -> tuple[ipaddress.IPv4Network |
                                                  ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or CIDRs. Raises ConfigError naming the bad one."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"{what}: {part[:64]!r} is not an address or network "
                              "(CIDR)") from None
    return tuple(out)


def _trusted(address: str, proxies: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(request: Request) -> str | None:
    """The client's address: the peer's, or behind a trusted proxy (OPSQ_WEB_TRUSTED_
    PROXIES) the last X-Forwarded-For entry not itself a trusted proxy. A header from
    any other peer is ignored (anyone could write it)."""
    peer = request.client.host if request.client else None
    proxies = getattr(request.app.state, "trusted_proxies", ())
    if peer is None or not proxies or not _trusted(peer, proxies):
        return peer
    forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a header the proxy did not write cleanly: trust nothing in it
        if not _trusted(hop, proxies):
            return hop
    return peer


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized() -> HTTPException:
    return HTTPException(401, "a valid API token is required (Authorization: Bearer "
                              "<token>; opsq users token NAME makes one)",
                         headers={"WWW-Authenticate": "Bearer"})


def authenticate_api(request: Request) -> Principal | None:
    """The API caller: a bearer token, or on a read the console's session (blocking: the
    database is asked)."""
    if request.app.state.no_auth:
        return ANONYMOUS
    token = _bearer(request)
    if token is not None:
        return users.by_token(token)
    if request.method in SAFE_METHODS:
        return session_principal(request)
    return None


def api_principal(request: Request) -> Principal:
    """The API caller authenticated by ``ApiAuthentication`` (401 otherwise)."""
    who = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if who is None:
        who = authenticate_api(request)  # an app without the middleware (never served)
    if who is None:
        raise _unauthorized()
    return who


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def _answer(send: Send, status: int, message: str,
                  headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ApiAuthentication:
    """ASGI middleware: every API request but the schema is authenticated before its body
    is read, so an anonymous caller gets 401 whatever they send (never 413 or 422 after
    the server parsed it). The caller is kept in the request state for the handlers."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefix + "/") \
                or path in PUBLIC_API_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        who = await run_in_threadpool(authenticate_api, request)
        if who is None:
            error = _unauthorized()
            await _answer(send, 401, str(error.detail), error.headers)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE] = who
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413 before it
    is parsed: at once when Content-Length says so, else when the bytes read pass it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = (f"the request body is larger than {self.limit} bytes "
                   "(OPSQ_WEB_MAX_BODY)")
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    await _answer(send, 413, message, {"Connection": "close"})
                    return
        seen = 0

        async def bounded() -> MutableMapping[str, Any]:
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, message)
            return event

        await self.app(scope, bounded, send)


def _host_name(host_header: str) -> str:
    try:
        return urlsplit(f"//{host_header}").hostname or ""
    except ValueError:
        return ""


def _is_loopback_name(name: str) -> bool:
    return name == "localhost" or is_loopback(name)


class LoopbackOnly:
    """ASGI middleware of the login-free console (OPSQ_WEB_NO_AUTH): it answers only
    requests naming a loopback host (a page of another site that re-points its own name
    at 127.0.0.1, DNS rebinding, names itself), and refuses writes that a browser says
    come from another origin (``Origin``, ``Sec-Fetch-Site``): any web page the user opens
    could otherwise post to it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive,
                       send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        host = headers.get("host", "")
        if not _is_loopback_name(_host_name(host)):
            await _answer(send, 421, "this console answers only on a loopback address "
                                     "(localhost, 127.0.0.1, [::1]): it has no login")
            return
        if scope.get("method", "GET") not in SAFE_METHODS:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            foreign = (origin is not None and not _same_origin(origin, host)) or \
                (site is not None and site not in ("same-origin", "none"))
            if foreign:
                await _answer(send, 403, "a change from another site is refused: this "
                                         "console has no login, so only its own pages may "
                                         "change things")
                return
        await self.app(scope, receive, send)


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def session_principal(request: Request) -> Principal | None:
    """The logged-in user of the page session, looked up again: a user removed,
    disabled, logged out or whose password or role changed since is out at once,
    whatever their cookie says (blocking: the database is asked)."""
    if request.app.state.no_auth:
        return ANONYMOUS
    uid, epoch = request.session.get(USER_ID_KEY), request.session.get(EPOCH_KEY)
    if not (isinstance(uid, int) and isinstance(epoch, int)):
        return None
    return users.by_session(Session(uid, epoch))


def start_session(request: Request, held: Session) -> None:
    """A new session (and CSRF token) for a login."""
    request.session.clear()
    request.session[USER_ID_KEY] = held.user_id
    request.session[EPOCH_KEY] = held.epoch


def require(who: Principal, role: Role) -> None:
    if not who.can(role):
        raise HTTPException(403, f"this needs the {role.value} role; you are "
                                 f"{who.role.value}")


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = request.session[CSRF_KEY] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, given: object) -> None:
    """403 unless ``given`` is the session's CSRF token."""
    expected = request.session.get(CSRF_KEY)
    if not (isinstance(expected, str) and isinstance(given, str)
            and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the "
                                 "page and try again")
