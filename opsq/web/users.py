"""Users of the web console and REST API, their passwords and API tokens.

Passwords are kept as argon2id hashes (memory-hard: a stolen table is slow to attack);
API tokens are long random strings kept as their SHA-256 only (they carry 256 bits of
chance, so a fast hash loses nothing and lets a request be checked with one lookup).
Every change is written to the audit log (``opsq.web.audit``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from opsq.errors import OpsqError
from opsq.store import db
from opsq.store.models import ApiToken, Role, User
from opsq.web import audit

#: Longest user name (the ``users.name`` column).
MAX_NAME_LENGTH = 64
#: Shortest password accepted, in characters.
MIN_PASSWORD_LENGTH = 8
#: Longest password accepted, in characters (hashing a megabyte per login is a DoS).
MAX_PASSWORD_LENGTH = 1024
#: Random bytes of an API token (shown base64url-encoded, with TOKEN_PREFIX).
TOKEN_BYTES = 32
#: Marks opsq's tokens, so a leaked one is recognisable in logs and secret scanners.
TOKEN_PREFIX = "opsq_"
#: Longest API token lifetime accepted, in days.
MAX_TOKEN_DAYS = 3650
#: API tokens one user may hold at once.
MAX_TOKENS_PER_USER = 50
#: Password hashes verified at once: each argon2 check takes 64 MiB and a core, so a
#: burst of logins queues here instead of exhausting memory.
CONCURRENT_HASHES = 4
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_LIFETIME = re.compile(r"([0-9]{1,5})([hdw])")
_LIFETIME_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_hasher = PasswordHasher()
_hashing = threading.BoundedSemaphore(CONCURRENT_HASHES)
#: Verified against when the user does not exist, so that a login takes as long for an
#: unknown name as for a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class UserError(OpsqError):
    """A user name, role or password is refused, or the user does not exist."""


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a user's name and role, and the API token's name when the
    request came with one."""

    name: str
    role: Role
    token: str | None = None
    #: When the token the request came with expires (None: never, or no token).
    token_expires: datetime | None = None

    def can(self, needed: Role) -> bool:
        return self.role.rank >= needed.rank

    @property
    def via(self) -> str:
        """How the request was authenticated, for the audit log."""
        return f"token {self.token}" if self.token else "session"


@dataclass(frozen=True)
class Session:
    """What a console session cookie holds: the user's id (a removed and re-added name
    is another id) and their session epoch when they logged in."""

    user_id: int
    epoch: int


def check_name(name: str, what: str = "user name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise UserError(f"invalid {what} {str(name)[:MAX_NAME_LENGTH]!r}: up to "
                        f"{MAX_NAME_LENGTH} letters, digits, . _ @ -, starting with a letter "
                        "or digit")
    return name


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}: viewer, operator or admin") from None


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise UserError(f"a password needs {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} "
                        "characters")
    return password


def add(name: str, role: str, password: str, by: str, address: str | None = None) -> None:
    """Create a user. Raises UserError for a bad name, role or password, or a duplicate."""
    check_name(name)
    checked = check_role(role)
    check_password(password)
    try:
        with db.session_scope() as session:
            session.add(User(name=name, role=checked.value,
                             password_hash=_hasher.hash(password)))
            session.flush()
            audit.record(session, by, "user.add", name, {"role": checked.value}, address)
    except IntegrityError:
        raise UserError(f"a user named {name!r} already exists (opsq users list)") from None


def remove(name: str, by: str, address: str | None = None) -> None:
    """Remove a user and their tokens. Raises UserError when there is no such user."""
    with db.session_scope() as session:
        if not session.execute(delete(User).where(User.name == name)).rowcount:
            raise _no_such(name)
        audit.record(session, by, "user.remove", name, {}, address)


def parse_lifetime(text: str | None) -> timedelta | None:
    """A token lifetime: ``N`` then ``h``, ``d`` or ``w`` (``90d``); empty or ``never``:
    None. Raises UserError."""
    if text is None or text.strip() in ("", "never"):
        return None
    m = _LIFETIME.fullmatch(text.strip())
    lifetime = int(m.group(1)) * _LIFETIME_UNITS[m.group(2)] if m else None
    if lifetime is None or not timedelta(hours=1) <= lifetime <= timedelta(MAX_TOKEN_DAYS):
        raise UserError(f"a token lifetime is a number and h, d or w (90d), from 1h to "
                        f"{MAX_TOKEN_DAYS}d, or 'never'; not {str(text)[:32]!r}")
    return lifetime


def new_token(name: str, by: str, address: str | None = None, token_name: str | None = None,
              lifetime: timedelta | None = None, not_after: datetime | None = None,
              returning: bool = False) -> Any:
    """A new API token for the user, named ``token_name`` (default: token-<random>), valid
    for ``lifetime`` (None: until revoked), and never past ``not_after`` (the expiry of
    the token used to ask: a token cannot make one that outlives it). Only its hash is
    kept, so it is shown once. Returns the token (``returning``: its TokenInfo too).
    Raises UserError for an unknown user, a name taken or all digits (ids are), or a
    user holding MAX_TOKENS_PER_USER tokens."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    label = check_name(token_name, "token name") if token_name else \
        f"token-{secrets.token_hex(3)}"
    if label.isdigit():
        raise UserError(f"a token name needs a letter ({label[:16]!r} reads as a token id)")
    expires = datetime.now(UTC) + lifetime if lifetime is not None else None
    if not_after is not None and (expires is None or expires > not_after):
        expires = not_after
    try:
        with db.session_scope() as session:
            user = session.scalar(select(User).where(User.name == name).with_for_update())
            if user is None:
                raise _no_such(name)
            held = session.scalar(select(func.count()).select_from(ApiToken)
                                  .where(ApiToken.user_id == user.id)) or 0
            if held >= MAX_TOKENS_PER_USER:
                raise UserError(f"{name} holds {held} tokens, the most allowed: revoke one "
                                f"first (opsq users tokens {name})")
            row = ApiToken(user_id=user.id, token_sha256=token_hash(token), name=label,
                           expires_at=expires)
            session.add(row)
            session.flush()
            info = TokenInfo(row.id, row.name, row.created_at or datetime.now(UTC), None,
                             expires)
            audit.record(session, by, "user.token", name,
                         {"token_name": label,
                          "expires_at": expires.isoformat() if expires else None}, address)
    except IntegrityError:
        raise UserError(f"{name} already has a token named {label!r} (opsq users tokens "
                        f"{name})") from None
    return (info, token) if returning else token


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed: never the token itself."""

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "created_at": _iso(self.created_at),
                "last_used_at": _iso(self.last_used_at),
                "expires_at": _iso(self.expires_at), "expired": self.expired}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def tokens(name: str) -> list[TokenInfo]:
    """The user's API tokens, oldest first. Raises UserError for an unknown user."""
    with db.session_scope() as session:
        user_id = session.scalar(select(User.id).where(User.name == name))
        if user_id is None:
            raise _no_such(name)
        rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user_id)
                               .order_by(ApiToken.id))
        return [TokenInfo(t.id, t.name, t.created_at, t.last_used_at, t.expires_at)
                for t in rows]


def revoke(name: str, token: str, by: str, address: str | None = None) -> str:
    """Delete the user's token named ``token`` (or with that id); its name. Raises
    UserError when the user has no such token."""
    with db.session_scope() as session:
        user_id = session.scalar(select(User.id).where(User.name == name))
        if user_id is None:
            raise _no_such(name)
        which = ApiToken.name == token
        if token.isdigit() and len(token) < 10:
            which = which | (ApiToken.id == int(token))
        label = session.scalar(delete(ApiToken).where(ApiToken.user_id == user_id, which)
                               .returning(ApiToken.name))
        if label is None:
            raise UserError(f"{name} has no token {token[:MAX_NAME_LENGTH]!r} (opsq users "
                            f"tokens {name})")
        audit.record(session, by, "user.revoke", name, {"token_name": label}, address)
        return label


def set_password(name: str, password: str, by: str, address: str | None = None) -> None:
    """Change the user's password; their console sessions end. Raises UserError."""
    check_password(password)
    _change(name, by, address, "user.password", {}, password_hash=_hasher.hash(password))


def set_role(name: str, role: str, by: str, address: str | None = None) -> None:
    """Change the user's role; their console sessions end. Raises UserError."""
    checked = check_role(role)
    _change(name, by, address, "user.role", {"role": checked.value}, role=checked.value)


def end_sessions(name: str, by: str, address: str | None = None,
                 action: str = "user.logout") -> None:
    """End every console session of the user (logout ends them all: a cookie cannot be
    taken back from a browser, so the epoch it was signed with is retired)."""
    _change(name, by, address, action, {})


def _change(name: str, by: str, address: str | None, action: str, detail: dict[str, str],
            **values: str) -> None:
    with db.session_scope() as session:
        changed = session.execute(
            update(User).where(User.name == name)
            .values(session_epoch=User.session_epoch + 1, **values)).rowcount
        if not changed:
            raise _no_such(name)
        audit.record(session, by, action, name, detail, address)


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: str
    created_at: datetime
    disabled: bool
    tokens: int

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "created_at": _iso(self.created_at),
                "disabled": self.disabled, "tokens": self.tokens}


def all_users() -> list[UserInfo]:
    with db.session_scope() as session:
        counts = (select(ApiToken.user_id, func.count().label("n"))
                  .group_by(ApiToken.user_id).subquery())
        rows = session.execute(
            select(User, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.user_id == User.id).order_by(User.name)).all()
        return [UserInfo(u.name, u.role, u.created_at, u.disabled, n) for u, n in rows]


def count() -> int:
    """How many users can log in."""
    with db.session_scope() as session:
        return session.scalar(select(func.count()).select_from(User)
                              .where(User.disabled.is_(False))) or 0


def login(name: str, password: str) -> tuple[Principal, Session] | None:
    """The user and a session for them if ``password`` is theirs (and they are not
    disabled), else None. The hash is checked with no database connection held, at most
    CONCURRENT_HASHES at a time."""
    if len(password) > MAX_PASSWORD_LENGTH or len(name) > MAX_NAME_LENGTH:
        return None
    with db.session_scope() as session:
        user = session.execute(
            select(User.id, User.name, User.role, User.password_hash, User.disabled,
                   User.session_epoch).where(User.name == name)).first()
    stored = user.password_hash if user is not None else _DUMMY_HASH
    with _hashing:
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        rehashed = _hasher.hash(password) if _hasher.check_needs_rehash(stored) else None
    if user is None or user.disabled:
        return None
    if rehashed is not None:
        with db.session_scope() as session:
            session.execute(update(User).where(User.id == user.id)
                            .values(password_hash=rehashed))
    return Principal(user.name, Role(user.role)), Session(user.id, user.session_epoch)


def by_name(name: str) -> Principal | None:
    """The user named ``name`` as of now (None: removed or disabled)."""
    with db.session_scope() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None or user.disabled:
            return None
        return Principal(user.name, Role(user.role))


def by_session(held: Session) -> Principal | None:
    """The user of a console session as of now: None when they were removed, disabled,
    logged out, or had their password or role changed since it began."""
    with db.session_scope() as session:
        user = session.get(User, held.user_id)
        if user is None or user.disabled or user.session_epoch != held.epoch:
            return None
        return Principal(user.name, Role(user.role))


def by_token(token: str) -> Principal | None:
    """The user holding API token ``token`` (None: unknown or expired, or its user is
    disabled); the token's last use is recorded."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_PASSWORD_LENGTH:
        return None
    with db.session_scope() as session:
        row = session.execute(
            select(User, ApiToken.id, ApiToken.name, ApiToken.expires_at)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_sha256 == token_hash(token),
                   (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > func.now()))
        ).first()
        if row is None or row[0].disabled:
            return None
        session.execute(update(ApiToken).where(ApiToken.id == row[1])
                        .values(last_used_at=func.now()))
        return Principal(row[0].name, Role(row[0].role), token=row[2], token_expires=row[3])


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _no_such(name: str) -> UserError:
    return UserError(f"no user named {name!r} (opsq users list)")
