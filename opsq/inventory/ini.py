"""Parse Ansible's INI inventory format into a _Builder.

``[group]``, ``[group:vars]`` and ``[group:children]`` sections, host ranges,
``host:port``, and inline ``key=value`` host variables (kept as strings,
except ports).
"""

from __future__ import annotations

import re
import shlex

from opsq.errors import InventoryError
from opsq.inventory.builder import _GROUP_NAME_RE, _Builder
from opsq.inventory.hosts import UNGROUPED_GROUP
from opsq.inventory.ranges import _expand_host_pattern

INI_SUFFIXES = frozenset({".ini", ".cfg"})

INI_COMMENT_PREFIXES = ("#", ";")
INI_SECTION_KINDS = ("hosts", "vars", "children")
INI_DEFAULT_SECTION_KIND = "hosts"

_INI_SECTION_RE = re.compile(r"^\[([^:\]\[\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")


def _parse_ini(text: str, source: str) -> _Builder:
    """Parse Ansible's INI inventory format.

    Raises InventoryError naming file and line for a malformed section header,
    an unknown section type, a vars line without "=", a malformed host line or
    range, and a [g:vars] section for a group declared nowhere else (a typo
    there would silently drop the variables).  A file of only comments is
    empty and raises too.
    """
    builder = _Builder(source)
    group, kind = UNGROUPED_GROUP, INI_DEFAULT_SECTION_KIND
    vars_only: dict[str, int] = {}  # group -> line of its first [g:vars]
    saw_content = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(INI_COMMENT_PREFIXES):
            continue
        saw_content = True
        where = f"{source}:{lineno}"
        if line.startswith("["):
            group, kind = _parse_ini_section(line, where)
            if kind == "vars":
                builder.group(group)
                vars_only.setdefault(group, lineno)
            else:
                builder.declare(group)
        elif kind == "vars":
            key, value = _parse_ini_var(line, group, where)
            builder.group(group).vars[key] = value
        elif kind == "children":
            builder.add_child(group, _parse_ini_child(line, group, where))
        else:
            _parse_ini_host_line(line, group, where, builder)
    if not saw_content:
        raise InventoryError(f"inventory {source} is empty")
    for name, lineno in vars_only.items():
        if name not in builder.declared:
            raise InventoryError(
                f"{source}:{lineno}: section [{name}:vars] is for group {name!r}, "
                f"which is declared nowhere else; add a [{name}] or "
                f"[{name}:children] section, or fix the group name"
            )
    return builder


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


def _parse_ini_var(line: str, group: str, where: str) -> tuple[str, str]:
    """Parse a "key=value" line of a [group:vars] section.

    Raises InventoryError for a missing "=", an empty or spaced key, or an
    unbalanced quote.
    """
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep:
        raise InventoryError(f"{where}: expected key=value in section [{group}:vars], got {line!r}")
    if not key or any(char.isspace() for char in key):
        raise InventoryError(f"{where}: invalid variable name {key!r} in {line!r}")
    return key, _ini_value(value, where)


def _ini_value(raw: str, where: str) -> str:
    """Unquote an INI variable value; an unquoted multi-word value stays as is.

    Raises InventoryError for an unbalanced quote.
    """
    text = _strip_inline_comment(raw).strip()
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise InventoryError(f"{where}: cannot parse value {raw.strip()!r}: {exc}") from None
    if len(tokens) == 1:
        return tokens[0]
    return text if tokens else ""


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


#: Characters that make shlex's split differ from a plain white-space split.
_SHELL_QUOTING = frozenset("'\"\\")


def _parse_ini_host_line(line: str, group: str, where: str, builder: _Builder) -> None:
    """Add the hosts of one "name[:port] key=value ..." line to builder.

    Raises InventoryError for unbalanced quotes, a token that is not
    key=value, or an invalid name, port or range.
    """
    text = _strip_inline_comment(line)
    try:
        # shlex is slow (~40 ms for 1,000 lines); a line without quotes or escapes splits
        # the same on white space.
        tokens = text.split() if not _SHELL_QUOTING & set(text) else shlex.split(text)
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
    host_vars: dict[str, str] = {}
    for token in assignments:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise InventoryError(f"{where}: expected key=value after host {entry!r}, got {token!r}")
        host_vars[key] = value
    names, port = _expand_host_pattern(entry, where)
    for name in names:
        builder.add_host(name, group, host_vars, port, where)


def _strip_inline_comment(text: str) -> str:
    """Cut a "#" comment that starts a word outside quotes; never fails.

    Unlike shlex's own comment handling, "pass#word" keeps its "#".
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
