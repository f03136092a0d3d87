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
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from opsq import db
from opsq.errors import OpsqError
from opsq.models import ApiToken, Role, User
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
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_hasher = PasswordHasher()
#: Verified against when the user does not exist, so that a login takes as long for an
#: unknown name as for a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class UserError(OpsqError):
    """A user name, role or password is refused, or the user does not exist."""


@dataclass(frozen=True)
class Principal:
    """Who makes a request: a user's name and role."""

    name: str
    role: Role

    def can(self, needed: Role) -> bool:
        return self.role.rank >= needed.rank


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise UserError(f"invalid user name {name[:MAX_NAME_LENGTH]!r}: up to "
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


def new_token(name: str, by: str, address: str | None = None) -> str:
    """A new API token for the user; only its hash is kept, so it is shown once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    with db.session_scope() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise _no_such(name)
        session.add(ApiToken(user_id=user.id, token_sha256=token_hash(token)))
        audit.record(session, by, "user.token", name, {}, address)
    return token


@dataclass(frozen=True)
class UserInfo:
    name: str
    role: str
    created_at: datetime
    disabled: bool
    tokens: int


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


def login(name: str, password: str) -> Principal | None:
    """The user if ``password`` is theirs (and they are not disabled), else None."""
    if len(password) > MAX_PASSWORD_LENGTH or len(name) > MAX_NAME_LENGTH:
        return None
    with db.session_scope() as session:
        user = session.scalar(select(User).where(User.name == name))
        stored = user.password_hash if user is not None else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        if _hasher.check_needs_rehash(stored):
            user.password_hash = _hasher.hash(password)
        return Principal(user.name, Role(user.role))


def by_name(name: str) -> Principal | None:
    """The user named ``name`` as of now (None: removed or disabled since they logged in)."""
    with db.session_scope() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None or user.disabled:
            return None
        return Principal(user.name, Role(user.role))


def by_token(token: str) -> Principal | None:
    """The user holding API token ``token`` (None: unknown, or its user is disabled)."""
    with db.session_scope() as session:
        row = session.execute(
            select(User, ApiToken.id).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_sha256 == token_hash(token))).first()
        if row is None or row[0].disabled:
            return None
        session.execute(update(ApiToken).where(ApiToken.id == row[1])
                        .values(last_used_at=func.now()))
        return Principal(row[0].name, Role(row[0].role))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _no_such(name: str) -> UserError:
    return UserError(f"no user named {name!r} (opsq users list)")
