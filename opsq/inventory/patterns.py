"""Ansible host pattern syntax: terms, their operators, subscripts, and the matchers of
glob and ``~regex`` terms.

Inventory.resolve() matches the terms against an inventory's hosts and groups.  A
pattern may come from an untrusted console user, so everything here runs in time
linear in the pattern's length: ``~regex`` terms run in RE2, which cannot backtrack
(Python's ``re`` takes minutes on ``~(.|.)*!`` against a long host name), and the
splitting and glob translation avoid the quadratic scans of their Ansible originals.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import sys
from collections.abc import Callable

import re2

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

#: The longest host pattern accepted, in characters.  An explicit list of several
#: hundred host names fits; the bound keeps the work one pattern can ask of resolve()
#: (terms x hosts) small.
MAX_PATTERN_CHARS = 16_384
#: The longest ``~regex`` term accepted, in characters after the "~".
MAX_REGEX_CHARS = 1_024
#: The memory RE2 may use to compile and run one ``~regex`` term, in bytes; a regex
#: that needs more (``\pL{200}``) is refused as too complex.
MAX_REGEX_MEMORY_BYTES = 2 * 1024 * 1024
#: What a refused regex term is told about the syntax opsq accepts.
REGEX_SYNTAX_HINT = (
    "regex terms are '~' followed by an RE2 regular expression, matched from the start "
    "of the name: Python's syntax without backreferences (\\1, (?P=name)), lookahead or "
    "lookbehind ((?=, (?!, (?<=, (?<!), atomic groups or possessive repeats, with "
    "{m,n} counts up to 1000"
)

#: Where _glob_matcher looks for a character a glob does not hold (Unicode's private use
#: area, which re.escape leaves as it is).
_STAND_IN_FIRST = 0xE000

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.max_mem = MAX_REGEX_MEMORY_BYTES
# RE2 would otherwise print every refused pattern on stderr; the PatternError says it.
_RE2_OPTIONS.log_errors = False

# Ansible's subscript syntax; "-" ranges are deliberately not accepted so that
# web0[1-3] stays an fnmatch character class.
_SUBSCRIPT_RE = re.compile(
    r"^(?P<expr>.+)\[(?:(?P<index>-?[0-9]+)|(?P<start>[0-9]*):(?P<end>[0-9]*))\]$"
)
# Outside a "[...]" expression these end a term of a pattern split on ":" (white space
# too: whatever str.isspace() calls white space, as the \s of Ansible's regex).
_COLON_TERM_ENDS = ":[]"
_RANGE = r"\[[0-9a-z]+:[0-9a-z]+(?::[0-9]+)?\]"
_LABEL = rf"(?:\w|{_RANGE})(?:[\w-]|{_RANGE})*(?<![_-])"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$", re.IGNORECASE)
_HOST_PORT_RE = re.compile(r"^(?:\[(?P<bracketed>.+)\]|(?P<plain>[^:]+)):[0-9]+$")


def _split_pattern(pattern: str) -> list[str]:
    """Split a pattern into terms as Ansible does.

    With a "," the pattern splits on "," only (so "2001:db8::1,web" works);
    otherwise on ":" and white space outside brackets, unless the whole pattern
    is one address (an IPv6 address, or a name or [address] with a :port).
    Raises PatternError for a pattern longer than MAX_PATTERN_CHARS or a stray
    bracket.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(
            f"host pattern is {len(pattern)} characters long, more than the "
            f"{MAX_PATTERN_CHARS} opsq accepts: name a group of the inventory instead "
            "of listing its hosts"
        )
    if "," in pattern:
        parts = pattern.split(",")
    elif _is_single_address(pattern.strip()):
        parts = [pattern]
    else:
        parts, left_over = _colon_terms(pattern)
        stray = left_over - set(": \t\n")
        if stray:
            # Ansible drops an unbalanced bracket silently ('web[' selects web): a typo
            # here must not widen what a job touches.
            raise PatternError(f"pattern {pattern!r} has an unbalanced "
                               f"{''.join(sorted(stray))!r}: close the [...] expression")
    return [part.strip() for part in parts if part.strip()]


def _colon_terms(pattern: str) -> tuple[list[str], set[str]]:
    """The terms of a pattern split on ":", and the characters left outside every term.

    What Ansible's ``re.findall(r"(?:[^\\s:\\[\\]]|\\[[^\\]]*\\])+", pattern)`` finds
    (a term is a run of anything but white space, ":" and brackets, or of whole
    "[...]" expressions), in one pass: the regex scans to the end of the pattern for
    every "[" that no "]" follows, which is quadratic on "[[[[...".  Never fails.
    """
    terms: list[str] = []
    left_over: set[str] = set()
    last_close = pattern.rfind("]")
    start: int | None = None  # where the current term began
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[" and index < last_close:
            after = pattern.index("]", index + 1) + 1  # the whole "[...]" expression
        elif char in _COLON_TERM_ENDS or char.isspace():
            after = None
        else:
            after = index + 1
        if after is None:
            if start is not None:
                terms.append(pattern[start:index])
                start = None
            left_over.add(char)
            index += 1
        else:
            if start is None:
                start = index
            index = after
    if start is not None:
        terms.append(pattern[start:])
    return terms, left_over


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


def _regex_matcher(expr: str, pattern: str) -> Callable[[str], bool]:
    """Compile a "~regex" term for RE2: whether a name matches it from the start, as
    Ansible's ``re.match``.

    RE2 runs in time linear in the name, whatever the regex.  Raises PatternError for
    an empty regex (it would select every host), one longer than MAX_REGEX_CHARS, or
    one RE2 refuses: a backreference, lookaround, a repetition count over 1000, or a
    regex needing more than MAX_REGEX_MEMORY_BYTES.
    """
    body = expr[len(PATTERN_REGEX_PREFIX) :]
    if not body:
        raise PatternError(
            f"empty regular expression '~' in pattern {pattern!r}: write e.g. "
            "'~web[0-9]+' (regex terms are '~' followed by a regular expression), or 'all'"
        )
    if len(body) > MAX_REGEX_CHARS:
        raise PatternError(
            f"regular expression {body[:40]!r}... is {len(body)} characters long, more "
            f"than the {MAX_REGEX_CHARS} opsq accepts; write a shorter regex or name a group"
        )
    try:
        body.encode("utf-8")
        regex = re2.compile(body, _RE2_OPTIONS)
    except UnicodeEncodeError:
        raise PatternError(
            f"regular expression {expr!r} in pattern {pattern!r} is not valid text "
            "(it holds a character that is not Unicode, e.g. from undecodable bytes)"
        ) from None
    except re2.error as exc:
        raise PatternError(
            f"invalid regular expression {expr!r} in pattern {pattern!r}: "
            f"{_re2_reason(exc)}; {REGEX_SYNTAX_HINT}"
        ) from None

    def matches(name: str) -> bool:
        # Bytes, so that a name holding a lone surrogate (JSON "\ud800") cannot make
        # the wrapper's own strict UTF-8 encoding fail.
        return regex.match(name.encode("utf-8", "surrogatepass")) is not None

    return matches


def _re2_reason(exc: Exception) -> str:
    """Say why RE2 refused a regex, in terms a user can act on; never fails."""
    message = exc.args[0] if exc.args else ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    message = str(message)
    if re.fullmatch(r"invalid escape sequence: \\[1-9]", message):
        return f"backreferences are not supported ({message})"
    if message.startswith("invalid perl operator: (?P"):
        return f"named backreferences (?P=name) are not supported ({message})"
    if message.startswith(("invalid perl operator: (?=", "invalid perl operator: (?!",
                           "invalid perl operator: (?<")):
        return f"lookahead and lookbehind assertions are not supported ({message})"
    if message == "invalid escape sequence: \\Z":
        return "\\Z is Python's spelling: write \\z (or $) for the end of the name"
    if message == "pattern too large - compile failed":
        return (f"it is too complex: RE2 would need more than "
                f"{MAX_REGEX_MEMORY_BYTES // (1024 * 1024)} MiB for it")
    return message or "RE2 cannot compile it"


def _glob_matcher(expr: str) -> Callable[[str], bool]:
    """Whether a name matches a glob term, as Ansible's ``fnmatch.translate`` and
    ``re.match``; never fails.

    fnmatch.translate scans to the end of the glob for every "[" that no "]" follows
    (quadratic on "[[[[...").  Such a "[" is a literal: it goes through translate() as a
    stand-in character the glob does not hold, which is then written as "\\[".  The
    translation's atomic groups keep matching free of backtracking.
    """
    last_close = expr.rfind("]")
    tail = expr[last_close + 1 :]
    if "[" not in tail:
        regex = re.compile(fnmatch.translate(expr))
    else:
        stand_in = next(chr(code) for code in range(_STAND_IN_FIRST, sys.maxunicode + 1)
                        if chr(code) not in expr)
        text = fnmatch.translate(expr[: last_close + 1] + tail.replace("[", stand_in))
        regex = re.compile(text.replace(stand_in, re.escape("[")))

    def matches(name: str) -> bool:
        return regex.match(name) is not None

    return matches
