"""INI host lines: the fast split (no shlex for lines without quotes or escapes) must
split exactly as Ansible's ``shlex.split(line, comments=True)``, "#" comments included."""

from __future__ import annotations

import shlex

import pytest

from opsq.inventory.builder import _Builder
from opsq.inventory.ini import _parse_ini_host_line

hypothesis = pytest.importorskip("hypothesis")
strategies = pytest.importorskip("hypothesis.strategies")


def _host_vars(line: str) -> dict[str, object] | None:
    builder = _Builder("hosts.ini")
    try:
        _parse_ini_host_line(line, "web", "hosts.ini:1", builder)
    except Exception:
        return None
    return {name: dict(definition.vars) for name, definition in builder.hosts.items()}


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(strategies.text(alphabet="ab=#1 \t\xa0\x0c", min_size=1, max_size=20))
def test_fast_split_is_shlex_with_comments(line: str) -> None:
    line = line.strip()
    hypothesis.assume("a" in line and not line.startswith("#"))
    quoted = line.replace("a", "'a'", 1)  # the same line, forced through shlex
    assert shlex.split(quoted, comments=True) == shlex.split(line, comments=True)
    assert _host_vars(line) == _host_vars(quoted)


def test_hash_ends_a_host_line_even_inside_a_word() -> None:
    assert _host_vars("q4 ansible_user=ops#2 ansible_port=2200") == {
        "q4": {"ansible_user": "ops"}}
    assert _host_vars("q4 'ansible_user=ops#2' ansible_port=2200#x") == {
        "q4": {"ansible_user": "ops#2", "ansible_port": "2200"}}
