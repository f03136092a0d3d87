"""Ansible host pattern syntax: terms, their operators, and subscripts.

Inventory.resolve() matches the terms against an inventory's hosts and groups.
"""

from __future__ import annotations

import re

from opsq.errors import PatternError

KNOWN_HOSTS_HINT = "(opsq hosts all lists the known hosts)"

PATTERN_SEPARATORS = ",:"
PATTERN_EXCLUDE = "!"
PATTERN_INTERSECT = "&"
PATTERN_REGEX_PREFIX = "~"
PATTERN_ALL = ("all", "*")
GLOB_CHARS = "*?["
# Separators inside brackets belong to a subscript, glob class or regex.
_OPENERS = "[({"
_CLOSERS = "])}"

# Ansible's subscript syntax; "-" ranges are deliberately not accepted so that
# web0[1-3] stays an fnmatch character class.
_SUBSCRIPT_RE = re.compile(
    r"^(?P<expr>.+)\[(?:(?P<index>-?[0-9]+)|(?P<start>[0-9]*):(?P<end>[0-9]*))\]$"
)


def _split_pattern(pattern: str) -> list[str]:
    """Split a pattern on ":" and "," outside brackets; never fails."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in pattern:
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth = max(0, depth - 1)
        elif char in PATTERN_SEPARATORS and depth == 0:
            terms.append("".join(current))
            current = []
            continue
        current.append(char)
    terms.append("".join(current))
    return [term.strip() for term in terms if term.strip()]


def _apply_subscript(
    names: list[str], subscript: re.Match[str], expr: str, pattern: str
) -> list[str]:
    """Select by position: [i] one host, [i:j] inclusive (as in Ansible).

    Raises PatternError if the position is outside the matched hosts or the
    range is backwards.
    """
    count = len(names)
    index = subscript.group("index")
    if index is not None:
        position = int(index)
        if not -count <= position < count:
            raise PatternError(
                f"subscript [{index}] in pattern {pattern!r} is out of range: "
                f"{expr!r} has {count} host(s)"
            )
        return [names[position]]
    start_text, end_text = subscript.group("start"), subscript.group("end")
    start = int(start_text) if start_text else 0
    end = int(end_text) if end_text else count - 1
    if start >= count or end < start:
        raise PatternError(
            f"subscript [{start_text}:{end_text}] in pattern {pattern!r} selects "
            f"nothing: {expr!r} has {count} host(s), numbered from 0"
        )
    return names[start : end + 1]
