"""The audit log: who changed what, or was refused it, when, how and from where.

Written in the same transaction as the change, so a change is never without its entry;
a refusal gets an entry of its own (``<action>.refused`` with the reason). Every option
is kept, with secrets masked: commands through ``opsq.jobs.mask_secrets``, webhook URLs
down to scheme and host, passwords and tokens never. Every field is bounded (a hostile
user name or command cannot make a megabyte row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from opsq.store import db
from opsq.store.models import AuditEntry
from opsq.web.lists import bounded, check_offset, contains

#: Entries the audit page and API show at most.
MAX_SHOWN = 1000
#: Characters kept of the user, the action and the target (the columns' sizes or less).
MAX_USER = 64
MAX_ACTION = 64
MAX_TARGET = 256
#: Characters kept of one detail value (a command, a reason), and detail keys kept.
MAX_VALUE = 2048
MAX_KEYS = 40
#: Characters kept of an address (an IPv6 address with a zone fits).
MAX_ADDRESS = 64
#: Detail keys whose text is a command, or JSON that may carry one (masked).
COMMAND_KEYS = ("command", "args", "kwargs")
#: Detail keys holding webhook URLs (kept as scheme, host and port).
URL_KEYS = ("notify",)
#: Detail keys never stored (they could hold a secret however they are masked).
DROPPED_KEYS = ("password", "token", "become_password")


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _value(key: str, value: Any) -> Any:
    from opsq.jobs import mask_secrets
    from opsq.jobs.webhooks import shown

    if key in URL_KEYS and isinstance(value, list):
        return [shown(u) if isinstance(u, str) else "?" for u in value[:20]]
    if key in COMMAND_KEYS:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return _bounded(mask_secrets(text), MAX_VALUE)
    if isinstance(value, str):
        return _bounded(value, MAX_VALUE)
    if isinstance(value, bool | int | float):
        return value
    return _bounded(json.dumps(value, default=str), MAX_VALUE)


def clean(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail as stored: secrets masked or dropped, every value bounded."""
    out: dict[str, Any] = {}
    for key, value in list(detail.items())[:MAX_KEYS]:
        if key in DROPPED_KEYS or value is None:
            continue
        out[_bounded(str(key), MAX_ACTION)] = _value(key, value)
    return out


def record(session: Session | Connection | None, user: Any, action: str,
           target: str | None, detail: dict[str, Any] | None = None,
           address: str | None = None) -> None:
    """Write one entry, in ``session``'s transaction (or a transaction of its own).
    ``user``: a name, or a principal (then how it authenticated is kept too)."""
    detail = dict(detail or {})
    name = user if isinstance(user, str) else user.name
    if not isinstance(user, str) and getattr(user, "token", None):
        detail["via"] = f"token {user.token}"
    values = {"user": _bounded(name, MAX_USER), "action": _bounded(action, MAX_ACTION),
              "target": None if target is None else _bounded(target, MAX_TARGET),
              "detail": clean(detail),
              "address": None if address is None else address[:MAX_ADDRESS]}
    if session is not None:
        session.execute(insert(AuditEntry).values(**values))
        return
    with db.session_scope() as own:
        own.execute(insert(AuditEntry).values(**values))


def refused(user: Any, action: str, target: str | None, reason: str,
            detail: dict[str, Any] | None = None, address: str | None = None) -> None:
    """Record that ``action`` was refused and why (a transaction of its own: nothing
    else was written). Never raises: a refusal is answered even if this fails."""
    try:
        record(None, user, f"{action}.refused", target, {**(detail or {}), "reason": reason},
               address)
    except Exception:  # the database is down: the refusal still reaches the user
        import logging

        logging.getLogger(__name__).warning("could not record refused %s", action,
                                            exc_info=True)


@dataclass(frozen=True)
class Entry:
    at: datetime
    user: str
    action: str
    target: str | None
    detail: dict[str, Any]
    address: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "user": self.user, "action": self.action,
                "target": self.target, "detail": self.detail, "address": self.address}


def entries(limit: int = MAX_SHOWN, user: str | None = None,
            action: str | None = None, offset: int = 0) -> list[Entry]:
    """The newest entries first; ``user`` and ``action`` match anywhere in the value,
    ignoring case (``schedule`` finds every schedule change)."""
    query = (select(AuditEntry).order_by(AuditEntry.id.desc())
             .offset(check_offset(offset)).limit(min(limit, MAX_SHOWN)))
    if user:
        query = query.where(contains(AuditEntry.user, user[:MAX_USER]))
    if action:
        query = query.where(contains(AuditEntry.action, action[:MAX_ACTION]))
    with db.session_scope() as session:
        return [Entry(e.at, e.user, e.action, e.target, dict(e.detail), e.address)
                for e in bounded(session, query)]
