"""Filtering and paging the lists the console and the API show (jobs, audit entries)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from opsq.errors import OpsqError
from opsq.store.db import contains  # noqa: F401  (the lists' filter, shared with searches)

#: The furthest a list may be paged (offset paging reads what it skips).
MAX_OFFSET = 100_000


def check_offset(offset: int) -> int:
    if not 0 <= offset <= MAX_OFFSET:
        raise OpsqError(f"offset must be 0 to {MAX_OFFSET}")
    return offset


#: Seconds a filtered list may take: a substring matches no index, and a rare one reads
#: the whole table.
LIST_TIMEOUT = 5.0


def bounded(session: Any, query: Any) -> list[Any]:
    """The rows of ``query``, cancelled past LIST_TIMEOUT seconds (PostgreSQL's
    ``statement_timeout``): the caller answers with an error, not a stuck thread."""
    session.execute(text(f"SET LOCAL statement_timeout = {int(LIST_TIMEOUT * 1000)}"))
    try:
        return list(session.scalars(query))
    except OperationalError as exc:
        if "statement timeout" not in str(exc):
            raise
        raise OpsqError(f"the list took more than {LIST_TIMEOUT:g} s to filter: give "
                        "longer or rarer filter text, or a status or time range") from None
