"""Filtering and paging the lists the console and the API show (jobs, audit entries)."""

from __future__ import annotations

from typing import Any

from opsq.errors import OpsqError

#: The furthest a list may be paged (offset paging reads what it skips).
MAX_OFFSET = 100_000


def contains(column: Any, value: str) -> Any:
    """``column`` holds ``value`` anywhere, case-insensitively; ``%``, ``_`` and ``\\``
    in ``value`` are matched as themselves."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{escaped}%", escape="\\")


def check_offset(offset: int) -> int:
    if not 0 <= offset <= MAX_OFFSET:
        raise OpsqError(f"offset must be 0 to {MAX_OFFSET}")
    return offset
