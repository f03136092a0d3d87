"""Who a request comes from, and whether it may do what it asks.

The REST API takes ``Authorization: Bearer <token>`` (``opsq users token``); its reads
also accept the console's session cookie, so the pages' live views can call it. The
pages use a signed session cookie (HttpOnly, SameSite=Lax) set at login, and every form
POST carries the session's CSRF token. Roles: a viewer reads; an operator also runs and
cancels jobs and edits schedules; an admin also manages users and reads the audit log.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from fastapi import HTTPException, Request

from opsq.daemons import private_dir
from opsq.dashboard import is_loopback
from opsq.errors import ConfigError
from opsq.models import Role
from opsq.settings import PROJECT_ROOT, Settings, get_settings
from opsq.web import users
from opsq.web.users import Principal

#: Where the cookie signing key is kept when OPSQ_WEB_SECRET is unset (mode 0600).
SECRET_FILE = PROJECT_ROOT / "var" / "web-secret"
#: Random bytes of a generated signing key.
SECRET_BYTES = 32
#: Failed logins allowed per address and per user name within LOGIN_WINDOW seconds.
LOGIN_ATTEMPTS = 5
LOGIN_WINDOW = 60.0
#: The session key holding the CSRF token, and the form field that must repeat it.
CSRF_KEY = "csrf"
CSRF_FIELD = "csrf"
#: The user every visitor is when OPSQ_WEB_NO_AUTH is on.
ANONYMOUS = Principal("anonymous", Role.ADMIN)

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
    only), so that sessions survive a restart."""
    s = settings or get_settings()
    if s.web_secret:
        return s.web_secret
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(SECRET_BYTES))
    return path.read_text().strip()


class LoginLimiter:
    """Counts failed logins per key (an address, a user name) over a sliding window.

    In memory: one ``opsq web`` process serves the console, and a restart forgetting the
    counts only gives an attacker LOGIN_ATTEMPTS more tries.
    """

    def __init__(self, attempts: int = LOGIN_ATTEMPTS, window: float = LOGIN_WINDOW) -> None:
        self.attempts, self.window = attempts, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.attempts for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
            for k in [k for k, v in self._failures.items() if not v]:
                del self._failures[k]


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def api_principal(request: Request) -> Principal:
    """The API caller: a bearer token, or on a read the console's session. 401 otherwise."""
    if request.app.state.no_auth:
        return ANONYMOUS
    token = _bearer(request)
    if token is not None:
        who = users.by_token(token)
    elif request.method in ("GET", "HEAD"):
        who = session_principal(request)
    else:
        who = None
    if who is None:
        raise HTTPException(401, "a valid API token is required (Authorization: Bearer "
                                 "<token>; opsq users token NAME makes one)",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def session_principal(request: Request) -> Principal | None:
    """The logged-in user of the page session, looked up again (a removed or disabled
    user is out at once, whatever their cookie says)."""
    if request.app.state.no_auth:
        return ANONYMOUS
    name = request.session.get("user")
    return users.by_name(name) if isinstance(name, str) else None


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
