"""Parse Ansible's INI inventory format into a _Builder.

``[group]``, ``[group:vars]`` and ``[group:children]`` sections, host ranges,
``host:port``, and inline ``key=value`` host variables.  Lines and values are read
as Ansible's ini plugin reads them: a host line is split as ``shlex.split(line,
comments=True)`` does, so a "#" outside quotes ends it even inside a word
(``ansible_user=ops#2`` is ``ops``); a value is a Python literal if it parses as one
(``8080 # web port`` is 8080, ``"a b"`` is ``a b``), else its text as written
(``ops #2`` in a [group:vars] line is all of ``ops #2``).  Values are kept as text,
as Ansible would print them (``0x10`` is ``16``); ``None`` stays None.
"""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import Any

from opsq.errors import InventoryError
from opsq.inventory.builder import _GROUP_NAME_RE, _Builder
from opsq.inventory.hosts import UNGROUPED_GROUP
from opsq.inventory.ranges import _expand_host_pattern

INI_SUFFIXES = frozenset({".ini", ".cfg"})

INI_COMMENT_PREFIXES = ("#", ";")
INI_SECTION_KINDS = ("hosts", "vars", "children")
INI_DEFAULT_SECTION_KIND = "hosts"

# As Ansible: only a "#" comment may follow a section header on its line.
_INI_SECTION_RE = re.compile(r"^\[([^:\]\[\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_INI_SEMICOLON_AFTER_SECTION_RE = re.compile(r"^\[[^\]]*\]\s*;")
# "[2001:db8::1]:2222" starts like a section header but is a host with a port.
_INI_BRACKETED_HOST_RE = re.compile(r"^\[[^\]]+\]:[0-9]+(?:\s|$)")


def _parse_ini(text: str, source: str, builder: _Builder | None = None) -> _Builder:
    """Parse Ansible's INI inventory format into builder (a new one by default).

    Raises InventoryError naming file and line for a malformed section header
    (also one followed by a ";" comment, which Ansible refuses), an unknown
    section type, a vars line without "=", a malformed host line or range, a
    [g:children] entry naming a group with no [g] or [g:children] section in
    the file or earlier, and a [g:vars] section for a group declared nowhere
    else (a typo there would silently drop the variables).  A file of only
    comments is empty and raises too.
    """
    builder = builder if builder is not None else _Builder(source)
    builder.source = source
    group, kind = UNGROUPED_GROUP, INI_DEFAULT_SECTION_KIND
    vars_only: dict[str, int] = {}  # group -> line of its first [g:vars]
    # Children named before their own section: child -> (line, parents), as Ansible.
    pending: dict[str, tuple[int, list[str]]] = {}
    saw_content = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(INI_COMMENT_PREFIXES):
            continue
        saw_content = True
        where = f"{source}:{lineno}"
        if _is_section(line, where):
            group, kind = _parse_ini_section(line, where)
            if kind == "vars":
                if group not in builder.groups:
                    vars_only.setdefault(group, lineno)
                builder.group(group)
                continue
            builder.declare(group)
            vars_only.pop(group, None)
            _, parents = pending.pop(group, (0, []))
            for parent in parents:
                builder.add_child(parent, group)
        elif kind == "vars":
            key, value = _parse_ini_var(line, group, where)
            builder.set_group_var(group, key, value, where)
        elif kind == "children":
            child = _parse_ini_child(line, group, where)
            if child in builder.groups:
                builder.add_child(group, child, declare_child=False)
            else:
                pending.setdefault(child, (lineno, []))[1].append(group)
        else:
            _parse_ini_host_line(line, group, where, builder)
    if not saw_content:
        raise InventoryError(f"inventory {source} is empty")
    for child, (lineno, parents) in pending.items():
        raise InventoryError(
            f"{source}:{lineno}: section [{parents[-1]}:children] names group {child!r}, "
            f"which is declared nowhere; add a [{child}] section, or fix the group name"
        )
    for name, lineno in vars_only.items():
        raise InventoryError(
            f"{source}:{lineno}: section [{name}:vars] is for group {name!r}, "
            f"which is declared nowhere else; add a [{name}] or "
            f"[{name}:children] section, or fix the group name"
        )
    return builder


def _is_section(line: str, where: str) -> bool:
    """Whether a line is a section header rather than a host, var or child line.

    As in Ansible, "[2001:db8::1]:2222" is a host.  Raises InventoryError for a
    header followed by a ";" comment.
    """
    if not line.startswith("[") or _INI_BRACKETED_HOST_RE.match(line):
        return False
    if _INI_SEMICOLON_AFTER_SECTION_RE.match(line):
        raise InventoryError(
            f"{where}: invalid section header {line!r}: only a '#' comment "
            "may follow a section header (Ansible refuses ';' there)"
        )
    return True


def _parse_ini_section(line: str, where: str) -> tuple[str, str]:
    """Return (group, kind) of a "[group]" or "[group:kind]" header.

    Raises InventoryError for an unterminated or malformed header or an
    unknown kind.
    """
    match = _INI_SECTION_RE.match(line)
    if match is None:
        if "]" not in line:
            raise InventoryError(f"{where}: unterminated section header {line!r}: missing ']'")
        raise InventoryError(
            f"{where}: invalid section header {line!r}: expected [group], "
            "[group:vars] or [group:children]"
        )
    name, kind = match.group(1), match.group(2) or INI_DEFAULT_SECTION_KIND
    if kind not in INI_SECTION_KINDS:
        raise InventoryError(
            f"{where}: section [{name}:{kind}] has unknown type {kind!r}: use "
            f"[{name}], [{name}:vars] or [{name}:children]"
        )
    return name, kind


def _parse_ini_var(line: str, group: str, where: str) -> tuple[str, str | None]:
    """Parse a "key=value" line of a [group:vars] section (the value as _ini_value()).

    Raises InventoryError for a missing "=", an empty or spaced key, or a value
    _ini_value() refuses.
    """
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep:
        raise InventoryError(f"{where}: expected key=value in section [{group}:vars], got {line!r}")
    if not key or any(char.isspace() for char in key):
        raise InventoryError(f"{where}: invalid variable name {key!r} in {line!r}")
    return key, _ini_value(value, where)


def _ini_value(raw: str, where: str) -> str | None:
    """A variable's value as Ansible's ini plugin reads it, kept as text.

    As Ansible: the stripped text, read as a Python literal if it is one (a trailing
    "# comment" is then dropped, as Python drops it; a string literal gives its
    text), else the text as written, "#" and all.  Other literals become the text
    Ansible prints for them ("0x10" is "16", "(1, 2)" is "[1, 2]"); None stays None
    (unset, as in Ansible).  Raises InventoryError for a literal Ansible cannot read
    either (an unhashable dict key, nesting too deep to parse).
    """
    text = raw.strip()
    if not _LITERAL_START_RE.match(text):
        return text  # a name, a path, an address...: not a literal; skip the parser
    try:
        with warnings.catch_warnings():
            # As Ansible: "\d" in a string literal is not worth a warning here.
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    except (TypeError, RecursionError, MemoryError) as exc:
        raise InventoryError(f"{where}: cannot read value {text[:80]!r}: {exc}") from None
    if value is None or isinstance(value, str):
        return value
    return str(_as_ansible_keeps(value))


def _as_ansible_keeps(value: Any) -> Any:
    """A literal as Ansible's ini plugin keeps it: tuples and sets as lists, bytes as
    text, complex numbers and "..." as their text; never fails."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_as_ansible_keeps(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_ansible_keeps(item) for key, item in value.items()}
    if value is Ellipsis:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _parse_ini_child(line: str, group: str, where: str) -> str:
    """Return the group name on a line of a [group:children] section.

    Raises InventoryError if the line is not a single group name.
    """
    name = _strip_inline_comment(line).strip()
    if not _GROUP_NAME_RE.match(name):
        raise InventoryError(
            f"{where}: expected a group name in section [{group}:children], got {line!r}"
        )
    return name


#: Characters that make shlex's split differ from cutting at the first "#" and
#: splitting on SHLEX_WHITESPACE.
_SHELL_QUOTING = frozenset("'\"\\")
#: How a Python literal can start (a number, a sign, a quote, a bracket, a constant, or
#: a prefixed string such as b'...'): anything else is no literal for ast.literal_eval.
_LITERAL_START_RE = re.compile(r"""[0-9.+\-'"(\[{]|(?:True|False|None)\b|[rRbBuUfF]{1,2}['"]""")
#: What shlex splits on (not str.split()'s wider set: "\xa0" is part of a word).
_SHLEX_WORD_RE = re.compile(r"[^ \t\r\n]+")


def _parse_ini_host_line(line: str, group: str, where: str, builder: _Builder) -> None:
    """Add the hosts of one "name[:port] key=value ..." line to builder.

    Raises InventoryError for unbalanced quotes, a token that is not
    key=value, or an invalid name, port or range.
    """
    try:
        # As Ansible: shlex.split(line, comments=True), where "#" outside quotes ends
        # the line even inside a word.  shlex is slow (~40 ms for 1,000 lines); a line
        # without quotes or escapes splits the same at its first "#" and white space.
        if _SHELL_QUOTING & set(line):
            tokens = shlex.split(line, comments=True)
        else:
            tokens = _SHLEX_WORD_RE.findall(line.partition("#")[0])
    except ValueError as exc:
        raise InventoryError(f"{where}: cannot parse host line {line!r}: {exc}") from None
    if not tokens:
        return
    entry, *assignments = tokens
    if "=" in entry:
        raise InventoryError(
            f"{where}: expected a host name before the key=value variables, "
            f"got {entry!r} (variables for a group go in a [{group}:vars] section)"
        )
    host_vars: dict[str, str | None] = {}
    for token in assignments:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise InventoryError(f"{where}: expected key=value after host {entry!r}, got {token!r}")
        host_vars[key] = _ini_value(value, where)
    names, port = _expand_host_pattern(entry, where)
    for name in names:
        builder.add_host(name, group, host_vars, port, where)


def _strip_inline_comment(text: str) -> str:
    """Cut a "#" comment that starts a word outside quotes; never fails.

    For [group:children] lines, where Ansible's group name pattern lets "web#2" be a
    name and "web #2" the name "web" with a comment.
    """
    quote: str | None = None
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quote is not None:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                escaped = True
        elif char == "\\":
            escaped = True
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            return text[:index]
    return text
