"""The audit log: who changed what, when, and from which address.

Written in the same transaction as the change where there is one, so a change is never
without its entry. Commands are masked (``opsq.jobs.mask_secrets``) before they are
kept: the log is read by admins, not by whoever may see the secrets a command carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from opsq import db
from opsq.models import AuditEntry

#: Entries the audit page and API show at most.
MAX_SHOWN = 1000
#: Detail keys whose text is a command (masked before it is stored).
COMMAND_KEYS = ("command",)
#: Detail keys never stored (they could hold a secret however they are masked).
DROPPED_KEYS = ("password", "token", "args", "kwargs", "notify")


def _clean(detail: dict[str, Any]) -> dict[str, Any]:
    from opsq.jobs import mask_secrets

    out: dict[str, Any] = {}
    for key, value in detail.items():
        if key in DROPPED_KEYS or value is None:
            continue
        out[key] = mask_secrets(value) if key in COMMAND_KEYS and isinstance(value, str) \
            else value
    return out


def record(session: Session | None, user: str, action: str, target: str | None,
           detail: dict[str, Any] | None = None, address: str | None = None) -> None:
    """Write one entry, in ``session``'s transaction (or a transaction of its own)."""
    values = {"user": user[:64], "action": action, "target": target,
              "detail": _clean(detail or {}), "address": address}
    if session is not None:
        session.execute(insert(AuditEntry).values(**values))
        return
    with db.session_scope() as own:
        own.execute(insert(AuditEntry).values(**values))


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
            action: str | None = None) -> list[Entry]:
    """The newest entries first."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(min(limit, MAX_SHOWN))
    if user:
        query = query.where(AuditEntry.user == user)
    if action:
        query = query.where(AuditEntry.action == action)
    with db.session_scope() as session:
        return [Entry(e.at, e.user, e.action, e.target, dict(e.detail), e.address)
                for e in session.scalars(query)]
