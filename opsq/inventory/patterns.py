"""Ansible host pattern syntax: terms, their operators, and subscripts.

Inventory.resolve() matches the terms against an inventory's hosts and groups.
"""

from __future__ import annotations

import ipaddress
import re

from opsq.errors import PatternError

KNOWN_HOSTS_HINT = "(opsq hosts all lists the known hosts)"

PATTERN_SEPARATORS = ",:"
PATTERN_EXCLUDE = "!"
PATTERN_INTERSECT = "&"
PATTERN_REGEX_PREFIX = "~"
PATTERN_ALL = ("all", "*")
GLOB_CHARS = "*?["
# As Ansible: a term with one of these is matched against host names even when it
# matches group names (a plain group name is not).
HOST_MATCH_CHARS = ".?*["

# Ansible's subscript syntax; "-" ranges are deliberately not accepted so that
# web0[1-3] stays an fnmatch character class.
_SUBSCRIPT_RE = re.compile(
    r"^(?P<expr>.+)\[(?:(?P<index>-?[0-9]+)|(?P<start>[0-9]*):(?P<end>[0-9]*))\]$"
)
# Without ",", ":" separates terms, except in a pattern that is one address: an IPv6
# address, [address]:port or name:port (Ansible's rule).  A term is then a run of
# anything but white space, ":" and brackets, or a whole [...] expression.
_COLON_TERM_RE = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_RANGE = r"\[[0-9a-z]+:[0-9a-z]+(?::[0-9]+)?\]"
_LABEL = rf"(?:\w|{_RANGE})(?:[\w-]|{_RANGE})*(?<![_-])"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.IGNORECASE)
_HOST_PORT_RE = re.compile(r"^(?:\[(?P<bracketed>.+)\]|(?P<plain>[^:]+)):[0-9]+$")


def _split_pattern(pattern: str) -> list[str]:
    """Split a pattern into terms as Ansible does. Raises PatternError for a stray bracket.

    With a "," the pattern splits on "," only (so "2001:db8::1,web" works);
    otherwise on ":" and white space outside brackets, unless the whole pattern
    is one address (an IPv6 address, or a name or [address] with a :port).
    """
    if "," in pattern:
        parts = pattern.split(",")
    elif _is_single_address(pattern.strip()):
        parts = [pattern]
    else:
        parts = _COLON_TERM_RE.findall(pattern)
        stray = set(_COLON_TERM_RE.sub("", pattern)) - set(": \t\n")
        if stray:
            # Ansible drops an unbalanced bracket silently ('web[' selects web): a typo
            # here must not widen what a job touches.
            raise PatternError(f"pattern {pattern!r} has an unbalanced "
                               f"{''.join(sorted(stray))!r}: close the [...] expression")
    return [part.strip() for part in parts if part.strip()]


def _is_single_address(text: str) -> bool:
    """Whether text is an IPv6 address, or a host name/address with a :port."""
    if ":" not in text:
        return False
    if _is_ipv6(text):
        return True
    match = _HOST_PORT_RE.match(text)
    if match is None:
        return False
    host = match.group("bracketed") or match.group("plain")
    return _is_ipv6(host) or bool(_HOSTNAME_RE.match(host))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


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
