"""The console's list filters: text is matched as text (``%`` and ``_`` are not
wildcards), and paging stays within its bound. Pure: SQL compiled, not run."""

from __future__ import annotations

import pytest
from sqlalchemy import column
from sqlalchemy.dialects import postgresql

from opsq.errors import OpsqError
from opsq.web.lists import MAX_OFFSET, check_offset, contains


def _sql(clause) -> tuple[str, dict]:
    compiled = clause.compile(dialect=postgresql.dialect())
    return str(compiled), compiled.params


def test_a_filter_matches_its_text_anywhere_with_wildcards_escaped():
    sql, params = _sql(contains(column("pattern"), "50%_web\\x"))
    assert "ILIKE" in sql and "ESCAPE" in sql
    assert list(params.values()) == ["%50\\%\\_web\\\\x%"]


def test_paging_is_bounded():
    assert check_offset(0) == 0 and check_offset(MAX_OFFSET) == MAX_OFFSET
    for bad in (-1, MAX_OFFSET + 1):
        with pytest.raises(OpsqError):
            check_offset(bad)
