"""Read Ansible INI/YAML inventories and resolve Ansible host patterns.

Operators already describe their fleet in Ansible inventories, so opsq reads
those files rather than inventing a format of its own.  Ansible itself is GPL
and far larger than what we need, so this module re-implements a small subset:

* INI: ``[group]``, ``[group:vars]``, ``[group:children]`` sections, host
  ranges (``web[01:20]``, ``db[a:f]``, ``[0:10:2]``), ``host:port``, and
  inline ``key=value`` host variables (kept as strings, except ports).
* YAML (and JSON): ``group: {hosts: ..., vars: ..., children: ...}``,
  recursively, with the same host ranges.
* Patterns: ``all``/``*``, host and group names, globs, ``~regex``, unions
  (``:`` or ``,``), ``&`` intersections, ``!`` exclusions, ``[i]``/``[i:j]``
  subscripts.  Terms split on ":" and "," outside brackets and parentheses,
  so a regex term needs those characters inside a group or class.  As in
  Ansible, globs and regexes also see the group names "all" and "ungrouped".

Not supported: dynamic inventory scripts and plugins, inventory directories,
``host_vars/`` and ``group_vars/`` directories, ``ansible_group_priority``,
IPv6 addresses as host names.
"""

from __future__ import annotations

import copy
import datetime
import fnmatch
import json
import math
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from opsq.errors import InventoryError, PatternError

DEFAULT_SSH_PORT = 22
MIN_PORT = 1
MAX_PORT = 65535

# A typo such as web[1:1000000] should be an error, not a memory blow-up.
MAX_RANGE_HOSTS = 65536
# Deeper variable nesting than this is almost surely a recursive YAML alias.
MAX_VAR_DEPTH = 100

ALL_GROUP = "all"
UNGROUPED_GROUP = "ungrouped"

IMPLICIT_HOST = "localhost"
IMPLICIT_SOURCE = "<implicit localhost>"
MEMORY_SOURCE = "<memory>"

CONNECTION_SSH = "ssh"
CONNECTION_LOCAL = "local"
# Ansible connection plugins that are all "OpenSSH to the host" for opsq.
SSH_CONNECTION_ALIASES = frozenset({"ssh", "smart", "paramiko"})
LOCAL_CONNECTION_ALIASES = frozenset({"local"})

# Modern name first: it wins when an old inventory sets both spellings.
ADDRESS_VARS = ("ansible_host", "ansible_ssh_host")
PORT_VARS = ("ansible_port", "ansible_ssh_port")
USER_VARS = ("ansible_user", "ansible_ssh_user")
KEY_FILE_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
CONNECTION_VAR = "ansible_connection"

YAML_SUFFIXES = frozenset({".yml", ".yaml"})
JSON_SUFFIXES = frozenset({".json"})
INI_SUFFIXES = frozenset({".ini", ".cfg"})
YAML_GROUP_KEYS = ("hosts", "vars", "children")

INI_COMMENT_PREFIXES = ("#", ";")
INI_SECTION_KINDS = ("hosts", "vars", "children")
INI_DEFAULT_SECTION_KIND = "hosts"

NOT_FOUND_HINT = "(set OPSQ_INVENTORY or pass -i)"
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

_INI_SECTION_RE = re.compile(r"^\[([^:\]\[\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
_GROUP_NAME_RE = re.compile(r"^[^:\[\]\s]+$")
_DIGITS_RE = re.compile(r"^[0-9]+$")
_LETTER_RE = re.compile(r"^[a-zA-Z]$")
# Ansible's subscript syntax; "-" ranges are deliberately not accepted so that
# web0[1-3] stays an fnmatch character class.
_SUBSCRIPT_RE = re.compile(
    r"^(?P<expr>.+)\[(?:(?P<index>-?[0-9]+)|(?P<start>[0-9]*):(?P<end>[0-9]*))\]$"
)


@dataclass(frozen=True)
class Host:
    """One managed machine and how to reach it."""

    name: str
    address: str
    port: int = DEFAULT_SSH_PORT
    user: str | None = None
    key_file: str | None = None
    connection: str = CONNECTION_SSH
    groups: tuple[str, ...] = (ALL_GROUP,)
    # Excluded from the hash: dicts are unhashable and the name identifies a host.
    vars: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict of every field, e.g. for a database row.

        Never fails: vars are JSON-serialisable by construction.
        """
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "key_file": self.key_file,
            "connection": self.connection,
            "groups": list(self.groups),
            "vars": copy.deepcopy(self.vars),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Host:
        """Rebuild a Host from the output of to_dict().

        Raises InventoryError if the record is not a mapping, lacks "name", or
        a field has the wrong type (a corrupt or hand-edited record).  Unknown
        keys are ignored so that older code can read newer records.
        """
        if not isinstance(d, Mapping):
            raise InventoryError(f"host record must be a mapping, got {_kind(d)}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise InventoryError(f"host record has no valid 'name': {d!r}")
        where = f"host record {name!r}"
        address = d.get("address", name)
        if not isinstance(address, str) or not address:
            raise InventoryError(f"{where}: 'address' must be a non-empty string")
        port = _parse_port(d.get("port", DEFAULT_SSH_PORT), where)
        user = _optional_str(d.get("user"), f"{where}: 'user'")
        key_file = _optional_str(d.get("key_file"), f"{where}: 'key_file'")
        connection = d.get("connection", CONNECTION_SSH)
        if connection not in (CONNECTION_SSH, CONNECTION_LOCAL):
            raise InventoryError(
                f"{where}: 'connection' must be {CONNECTION_SSH!r} or "
                f"{CONNECTION_LOCAL!r}, got {connection!r}"
            )
        groups = d.get("groups", [ALL_GROUP])
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) for g in groups):
            raise InventoryError(f"{where}: 'groups' must be a list of strings")
        host_vars = d.get("vars", {})
        if not isinstance(host_vars, Mapping):
            raise InventoryError(f"{where}: 'vars' must be a mapping")
        return cls(
            name=name,
            address=address,
            port=port,
            user=user,
            key_file=key_file,
            connection=connection,
            groups=tuple(groups),
            vars=copy.deepcopy(dict(host_vars)),
        )


class Inventory:
    """The hosts and groups of one inventory file, and pattern resolution."""

    hosts: dict[str, Host]
    groups: dict[str, set[str]]
    source: str

    def __init__(
        self,
        hosts: Mapping[str, Host],
        groups: Mapping[str, Iterable[str]] | None = None,
        source: str = MEMORY_SOURCE,
    ) -> None:
        """Wrap already-built hosts; groups default to those the hosts name.

        Never fails; use load() or implicit() to build from a file or default.
        """
        self.hosts = dict(hosts)
        if groups is None:
            derived: dict[str, set[str]] = {ALL_GROUP: set(), UNGROUPED_GROUP: set()}
            for host in self.hosts.values():
                for group in (ALL_GROUP, *host.groups):
                    derived.setdefault(group, set()).add(host.name)
            groups = derived
        self.groups = {name: set(members) for name, members in groups.items()}
        for special in (ALL_GROUP, UNGROUPED_GROUP):
            self.groups.setdefault(special, set())
        self.source = source
        self._position = {name: i for i, name in enumerate(self.hosts)}

    def __repr__(self) -> str:
        return (
            f"Inventory(source={self.source!r}, hosts={len(self.hosts)}, groups={len(self.groups)})"
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Inventory:
        """Read an INI, YAML or JSON inventory file, choosing by extension.

        .yml/.yaml/.json are YAML (JSON via the json module for precise error
        positions), .ini/.cfg are INI; any other or no extension is YAML if
        the text parses to something shaped like a YAML inventory, else INI.
        Raises InventoryError naming the file (and the line where known) if
        the file is missing, unreadable, empty or malformed.
        """
        source = os.path.expanduser(os.fspath(path))
        text = _read_text(source)
        if not text.strip():
            raise InventoryError(f"inventory {source} is empty")
        suffix = os.path.splitext(source)[1].lower()
        if suffix in JSON_SUFFIXES:
            builder = _parse_yaml_data(_load_json(text, source), source)
        elif suffix in YAML_SUFFIXES:
            builder = _parse_yaml_data(_load_yaml(text, source), source)
        elif suffix in INI_SUFFIXES:
            builder = _parse_ini(text, source)
        else:
            data = _sniff_yaml(text)
            builder = _parse_ini(text, source) if data is None else _parse_yaml_data(data, source)
        hosts, groups = builder.build()
        return cls(hosts, groups, source)

    @classmethod
    def implicit(cls) -> Inventory:
        """Return the built-in inventory: "localhost", reached without SSH.

        Never fails.
        """
        host = Host(
            name=IMPLICIT_HOST,
            address=IMPLICIT_HOST,
            port=DEFAULT_SSH_PORT,
            user=None,
            key_file=None,
            connection=CONNECTION_LOCAL,
            groups=(ALL_GROUP, UNGROUPED_GROUP),
            vars={CONNECTION_VAR: CONNECTION_LOCAL},
        )
        members = {IMPLICIT_HOST}
        return cls(
            {IMPLICIT_HOST: host},
            {ALL_GROUP: set(members), UNGROUPED_GROUP: set(members)},
            IMPLICIT_SOURCE,
        )

    @classmethod
    def from_path_or_default(
        cls,
        path: str | os.PathLike[str] | None,
        default_path: str | os.PathLike[str] | None = None,
    ) -> Inventory:
        """Load path, falling back to implicit() when no inventory was chosen.

        None, or a missing file that is the default_path (the operator never
        asked for it), gives implicit().  Raises InventoryError if a path
        given explicitly does not exist, or as load() does.
        """
        if path is None:
            return cls.implicit()
        source = os.path.expanduser(os.fspath(path))
        if not os.path.exists(source):
            if default_path is not None and _same_path(source, default_path):
                return cls.implicit()
            raise InventoryError(f"inventory file not found: {source} {NOT_FOUND_HINT}")
        return cls.load(source)

    def resolve(self, pattern: str) -> list[Host]:
        """Return the hosts an Ansible host pattern selects, in inventory order.

        Union terms are collected first, then every "&" term intersects and
        every "!" term excludes, wherever they appear; with no union term the
        start is every host.  Raises PatternError if the pattern is empty or
        malformed, names an unknown host or group (also in "&"/"!" terms: a
        typo there would silently select the host meant to be excluded), has
        a glob/regex that matches nothing, or selects no host at all.
        """
        if not isinstance(pattern, str):
            raise PatternError(f"host pattern must be a string, got {_kind(pattern)}")
        terms = _split_pattern(pattern)
        if not terms:
            raise PatternError(
                f"empty host pattern {pattern!r}: give a host or group name, "
                f"or 'all' for every host {KNOWN_HOSTS_HINT}"
            )
        unions: list[set[str]] = []
        intersections: list[set[str]] = []
        exclusions: list[set[str]] = []
        # Every term is matched even once the result is empty, so that a typo
        # anywhere in the pattern is reported rather than hidden.
        for term in terms:
            operator = term[0] if term[0] in PATTERN_EXCLUDE + PATTERN_INTERSECT else ""
            body = term[len(operator) :].strip()
            if not body:
                raise PatternError(
                    f"nothing after {operator!r} in pattern {pattern!r}: write e.g. "
                    f"'web:{operator}web3'"
                )
            names = set(self._match_term(body, pattern))
            if operator == PATTERN_EXCLUDE:
                exclusions.append(names)
            elif operator == PATTERN_INTERSECT:
                intersections.append(names)
            else:
                unions.append(names)
        selected = set().union(*unions) if unions else set(self.hosts)
        for names in intersections:
            selected &= names
        for names in exclusions:
            selected -= names
        if not selected:
            raise PatternError(f"pattern {pattern!r} matches no host {KNOWN_HOSTS_HINT}")
        return [host for name, host in self.hosts.items() if name in selected]

    def _match_term(self, term: str, pattern: str) -> list[str]:
        """Return the host names one pattern term selects, in inventory order.

        Raises PatternError for an unknown name, a glob/regex matching no host
        or group name, an invalid regex, or an out-of-range subscript.
        """
        expr, subscript = term, None
        # A regex may legitimately end in a character class, so it has no
        # subscript (as in Ansible).
        if not term.startswith(PATTERN_REGEX_PREFIX):
            match = _SUBSCRIPT_RE.match(term)
            if match:
                expr = match.group("expr")
                subscript = match
        names = self._match_expr(expr, pattern)
        if subscript is None:
            return names
        return _apply_subscript(names, subscript, expr, pattern)

    def _match_expr(self, expr: str, pattern: str) -> list[str]:
        """Return the host names a term without subscript selects.

        Raises PatternError as _match_term() does.
        """
        if expr in PATTERN_ALL:
            return list(self.hosts)
        if expr.startswith(PATTERN_REGEX_PREFIX):
            try:
                regex = re.compile(expr[len(PATTERN_REGEX_PREFIX) :])
            except re.error as exc:
                raise PatternError(
                    f"invalid regular expression {expr!r} in pattern {pattern!r}: "
                    f"{exc}; regex terms are '~' followed by a Python regex"
                ) from None
            group_hits = [g for g in self.groups if regex.search(g)]
            host_hits = [h for h in self.hosts if regex.search(h)]
        elif any(char in expr for char in GLOB_CHARS):
            group_hits = [g for g in self.groups if fnmatch.fnmatchcase(g, expr)]
            host_hits = [h for h in self.hosts if fnmatch.fnmatchcase(h, expr)]
        else:
            group_hits = [expr] if expr in self.groups else []
            host_hits = [expr] if expr in self.hosts else []
            if not group_hits and not host_hits:
                raise PatternError(
                    f"unknown host or group {expr!r} in pattern {pattern!r} {KNOWN_HOSTS_HINT}"
                )
        if not group_hits and not host_hits:
            raise PatternError(
                f"pattern {pattern!r} matches no host: {expr!r} matches no host "
                f"or group name {KNOWN_HOSTS_HINT}"
            )
        names = set(host_hits)
        for group in group_hits:
            names |= self.groups[group]
        return self._in_order(names)

    def _in_order(self, names: Iterable[str]) -> list[str]:
        """Sort host names into inventory order; never fails for known names."""
        return sorted(names, key=self._position.__getitem__)


def expand_host_range(name: str) -> list[str]:
    """Expand Ansible host ranges: web[01:03] -> web01, web02, web03.

    Supports numeric ranges (leading zeros set the width), single-letter
    ranges (db[a:c]), strides ([0:10:2]) and several ranges in one name.
    Raises InventoryError (without file context; callers add it) for an
    unbalanced bracket, a start after the end, mixed or malformed bounds,
    a non-positive stride, or more than MAX_RANGE_HOSTS names.
    """
    start = name.find("[")
    if start == -1:
        if "]" in name:
            raise InventoryError(f"invalid host range in {name!r}: ']' without '['")
        return [name]
    end = name.find("]", start)
    if end == -1:
        raise InventoryError(f"invalid host range in {name!r}: '[' without closing ']'")
    head, body, tail = name[:start], name[start + 1 : end], name[end + 1 :]
    values = _range_values(body, name)
    tails = expand_host_range(tail)
    if len(values) * len(tails) > MAX_RANGE_HOSTS:
        raise InventoryError(f"host range {name!r} expands to more than {MAX_RANGE_HOSTS} hosts")
    return [head + value + rest for value in values for rest in tails]


def _range_values(body: str, name: str) -> list[str]:
    """Return the values of one range body such as "01:20" or "a:f:2".

    Raises InventoryError as expand_host_range() does.
    """
    bad = f"invalid host range {name!r}"
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise InventoryError(f"{bad}: expected [start:end] or [start:end:step]")
    first, last = parts[0].strip(), parts[1].strip()
    step_text = parts[2].strip() if len(parts) == 3 else "1"
    if not _DIGITS_RE.match(step_text) or int(step_text) == 0:
        raise InventoryError(f"{bad}: step {step_text!r} must be a positive integer")
    step = int(step_text)
    if not last:
        raise InventoryError(f"{bad}: the range has no end")
    if not first and _DIGITS_RE.match(last):
        first = "0"  # Ansible: [:5] means [0:5]
    if _DIGITS_RE.match(first) and _DIGITS_RE.match(last):
        width = 0
        if first.startswith("0") and len(first) > 1:
            # Zero-padded ranges must say the width the same way at both ends.
            if len(first) != len(last):
                raise InventoryError(
                    f"{bad}: zero-padded start {first!r} and end {last!r} "
                    "must have the same number of digits"
                )
            width = len(first)
        low, high = int(first), int(last)
    elif _LETTER_RE.match(first) and _LETTER_RE.match(last) and first.islower() == last.islower():
        width = -1
        low, high = ord(first), ord(last)
    else:
        raise InventoryError(
            f"{bad}: start {first!r} and end {last!r} must both be numbers or "
            "both single letters of the same case"
        )
    if low > high:
        raise InventoryError(f"{bad}: start {first!r} is after end {last!r}")
    if (high - low) // step + 1 > MAX_RANGE_HOSTS:
        raise InventoryError(f"{bad}: expands to more than {MAX_RANGE_HOSTS} hosts")
    if width < 0:
        return [chr(code) for code in range(low, high + 1, step)]
    return [str(number).zfill(width) for number in range(low, high + 1, step)]


# --------------------------------------------------------------------------
# Building: both parsers feed a _Builder, which resolves groups into Hosts.


@dataclass
class _GroupDef:
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class _HostDef:
    vars: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


class _Builder:
    """Accumulates groups, hosts and variables as a parser reads a file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: dict[str, _GroupDef] = {}
        self.hosts: dict[str, _HostDef] = {}
        # Groups that something other than a [g:vars] section brought into being.
        self.declared: set[str] = {ALL_GROUP, UNGROUPED_GROUP}
        for special in (ALL_GROUP, UNGROUPED_GROUP):
            self.group(special)

    def group(self, name: str) -> _GroupDef:
        return self.groups.setdefault(name, _GroupDef())

    def declare(self, name: str) -> _GroupDef:
        self.declared.add(name)
        return self.group(name)

    def add_child(self, parent: str, child: str) -> None:
        kids = self.declare(parent).children
        self.declare(child)
        if child not in kids:
            kids.append(child)

    def add_host(
        self,
        name: str,
        group: str,
        host_vars: Mapping[str, Any],
        port: int | None,
        where: str,
    ) -> None:
        if not name or any(char.isspace() for char in name):
            raise InventoryError(f"{where}: invalid host name {name!r}")
        self.declare(group)
        host = self.hosts.setdefault(name, _HostDef())
        # Like Ansible: the host:port shorthand first, explicit variables after.
        if port is not None:
            host.vars[PORT_VARS[0]] = port
        host.vars.update(host_vars)
        if group not in host.groups:
            host.groups.append(group)

    def build(self) -> tuple[dict[str, Host], dict[str, set[str]]]:
        """Resolve group nesting and variable precedence into Hosts.

        Raises InventoryError for a group that is its own ancestor, or a host
        whose connection variables are invalid.
        """
        parents: dict[str, list[str]] = {name: [] for name in self.groups}
        for parent, group in self.groups.items():
            for child in group.children:
                parents[child].append(parent)
        # Every group without a parent hangs off "all", as in Ansible.
        for name in self.groups:
            if name != ALL_GROUP and not parents[name]:
                parents[name].append(ALL_GROUP)
                self.groups[ALL_GROUP].children.append(name)
        self._check_cycles()

        depth: dict[str, int] = {}
        ancestors: dict[str, frozenset[str]] = {}

        def depth_of(name: str) -> int:
            if name not in depth:
                depth[name] = 1 + max((depth_of(p) for p in parents[name]), default=-1)
            return depth[name]

        def ancestors_of(name: str) -> frozenset[str]:
            if name not in ancestors:
                found = {name}
                for parent in parents[name]:
                    found |= ancestors_of(parent)
                ancestors[name] = frozenset(found)
            return ancestors[name]

        members: dict[str, set[str]] = {name: set() for name in self.groups}
        hosts: dict[str, Host] = {}
        for name, definition in self.hosts.items():
            direct = set(definition.groups) - {ALL_GROUP, UNGROUPED_GROUP}
            # Ansible: "ungrouped" holds exactly the hosts in no other group.
            if not direct:
                direct = {UNGROUPED_GROUP}
            all_groups: set[str] = {ALL_GROUP}
            for group in direct:
                all_groups |= ancestors_of(group)
            for group in all_groups:
                members[group].add(name)
            merged: dict[str, Any] = {}
            for group in sorted(all_groups, key=lambda g: (depth_of(g), g)):
                merged.update(self.groups[group].vars)
            merged.update(definition.vars)
            hosts[name] = _make_host(name, merged, sorted(all_groups), self.source)
        return hosts, members

    def _check_cycles(self) -> None:
        """Raise InventoryError naming the loop if a group contains itself."""
        done: set[str] = set()

        def visit(name: str, path: list[str]) -> None:
            if name in path:
                loop = " -> ".join([*path[path.index(name) :], name])
                raise InventoryError(
                    f"{self.source}: group {name!r} is its own ancestor "
                    f"(cycle {loop}); remove one of these children entries"
                )
            if name in done:
                return
            path.append(name)
            for child in self.groups[name].children:
                visit(child, path)
            path.pop()
            done.add(name)

        for name in self.groups:
            visit(name, [])


def _make_host(name: str, merged: dict[str, Any], groups: list[str], source: str) -> Host:
    """Turn a host's merged variables into a Host.

    Raises InventoryError naming the file and host for a non-integer or
    out-of-range port, a non-string address/user/key file, or an
    ansible_connection opsq cannot use.
    """
    where = f"{source}: host {name!r}"
    for key in PORT_VARS:
        if merged.get(key) is not None:
            merged[key] = _parse_port(merged[key], f"{where}: {key}")
    port_var = _first_set(merged, PORT_VARS)
    port = DEFAULT_SSH_PORT if port_var is None else merged[port_var]
    address = _str_var(merged, ADDRESS_VARS, where) or name
    user = _str_var(merged, USER_VARS, where)
    key_file = _str_var(merged, KEY_FILE_VARS, where)
    if key_file is not None:
        key_file = os.path.expanduser(key_file)
    return Host(
        name=name,
        address=address,
        port=port,
        user=user,
        key_file=key_file,
        connection=_connection(merged.get(CONNECTION_VAR), where),
        groups=tuple(groups),
        # Group variables are shared objects; a host must not alias another's.
        vars=copy.deepcopy(merged),
    )


def _first_set(merged: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """Return the first of keys whose value is set (not None); never fails."""
    return next((key for key in keys if merged.get(key) is not None), None)


def _str_var(merged: Mapping[str, Any], keys: tuple[str, ...], where: str) -> str | None:
    """Return the first set variable of keys as a string, None if unset/empty.

    Raises InventoryError if the value is not a string or an integer.
    """
    key = _first_set(merged, keys)
    if key is None:
        return None
    return _optional_str(merged[key], f"{where}: {key}") or None


def _optional_str(value: Any, where: str) -> str | None:
    """Return value as a string (None stays None); integers are accepted.

    Raises InventoryError for any other type.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InventoryError(f"{where} must be a string, got {value!r}")


def _parse_port(value: Any, where: str) -> int:
    """Return value as a TCP port number.

    Raises InventoryError naming where and the value if it is not an integer
    (or a string of digits) between MIN_PORT and MAX_PORT.
    """
    port: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and _DIGITS_RE.match(value.strip()):
        port = int(value.strip())
    if port is None or not MIN_PORT <= port <= MAX_PORT:
        raise InventoryError(
            f"{where}: port must be an integer from {MIN_PORT} to {MAX_PORT}, got {value!r}"
        )
    return port


def _connection(value: Any, where: str) -> str:
    """Map ansible_connection to "ssh" or "local" (unset means "ssh").

    Raises InventoryError naming the host for any other connection type.
    """
    if value is None or value in SSH_CONNECTION_ALIASES:
        return CONNECTION_SSH
    if value in LOCAL_CONNECTION_ALIASES:
        return CONNECTION_LOCAL
    raise InventoryError(
        f"{where}: ansible_connection {value!r} is not supported; opsq can "
        f"use {CONNECTION_SSH!r} (also written 'smart' or 'paramiko') or "
        f"{CONNECTION_LOCAL!r}"
    )


def _split_host_port(token: str, where: str) -> tuple[str, int | None]:
    """Split the INI/YAML "host:port" shorthand; ranges keep their colons.

    Raises InventoryError if the part after the colon is not a valid port
    or nothing precedes it.
    """
    colon = token.rfind(":")
    if colon == -1:
        return token, None
    head, tail = token[:colon], token[colon + 1 :]
    if head.count("[") != head.count("]"):
        return token, None  # the colon belongs to a range such as web[1:3]
    if not head:
        raise InventoryError(f"{where}: host {token!r} has a port but no name")
    if not _DIGITS_RE.match(tail):
        raise InventoryError(
            f"{where}: invalid host {token!r}: the part after ':' must be a "
            f"port number, got {tail!r}"
        )
    return head, _parse_port(tail, f"{where}: host {token!r}")


def _expand_host_pattern(token: str, where: str) -> tuple[list[str], int | None]:
    """Return the host names and optional port one inventory host entry names.

    Raises InventoryError, prefixed with where, for a bad port or range.
    """
    head, port = _split_host_port(token, where)
    try:
        return expand_host_range(head), port
    except InventoryError as exc:
        raise InventoryError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------
# INI


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


def _parse_ini_host_line(line: str, group: str, where: str, builder: _Builder) -> None:
    """Add the hosts of one "name[:port] key=value ..." line to builder.

    Raises InventoryError for unbalanced quotes, a token that is not
    key=value, or an invalid name, port or range.
    """
    try:
        tokens = shlex.split(_strip_inline_comment(line))
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


# --------------------------------------------------------------------------
# YAML / JSON


class _YamlMapping(dict):  # type: ignore[type-arg]
    """A dict that remembers the line its YAML mapping started on."""

    line: int | None = None


class _YamlSequence(list):  # type: ignore[type-arg]
    """A list that remembers the line its YAML sequence started on."""

    line: int | None = None


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader whose collections carry line numbers for error messages."""


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode) -> Iterator[_YamlMapping]:
    data = _YamlMapping()
    data.line = node.start_mark.line + 1
    # Yield before filling, as PyYAML's own constructors do, so aliases work.
    yield data
    data.update(loader.construct_mapping(node))


def _construct_sequence(loader: _YamlLoader, node: yaml.SequenceNode) -> Iterator[_YamlSequence]:
    data = _YamlSequence()
    data.line = node.start_mark.line + 1
    yield data
    data.extend(loader.construct_sequence(node))


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_YamlLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _load_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely.

    Raises InventoryError naming the file, the line of the YAML mark and the
    problem on a syntax error.
    """
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise InventoryError(f"{where}: YAML syntax error: {what}") from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"{source}: YAML syntax error: {exc}") from None


def _load_json(text: str, source: str) -> Any:
    """Parse JSON text.

    Raises InventoryError naming the file, line and problem on a syntax error.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InventoryError(f"{source}:{exc.lineno}: JSON syntax error: {exc.msg}") from None


def _sniff_yaml(text: str) -> Any | None:
    """Return the parsed YAML if text looks like a YAML inventory, else None.

    Never fails: anything that is not clearly YAML is left to the INI parser.
    """
    try:
        data = yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict) or not data:
        return None
    if ALL_GROUP in data:
        return data
    values = list(data.values())
    shaped = all(
        value is None or (isinstance(value, dict) and set(value) <= set(YAML_GROUP_KEYS))
        for value in values
    )
    return data if shaped and any(isinstance(value, dict) for value in values) else None


def _parse_yaml_data(data: Any, source: str) -> _Builder:
    """Walk a parsed YAML/JSON inventory into a builder.

    Raises InventoryError if the document is empty or not a mapping of groups,
    or (via _parse_yaml_group) if a group is malformed.
    """
    if data is None:
        raise InventoryError(f"inventory {source} is empty")
    line = getattr(data, "line", None)
    if not isinstance(data, dict):
        raise InventoryError(
            f"{_at(source, line)}: the top level must be a mapping of group names "
            f"(usually 'all:') to groups, got {_kind(data)}"
        )
    if isinstance(data.get("plugin"), str):
        raise InventoryError(
            f"{source}: inventory plugin configurations are not supported; export "
            "a static inventory with 'ansible-inventory -i FILE --list --yaml'"
        )
    if "_meta" in data:
        raise InventoryError(
            f"{source}: this is dynamic-inventory output ('_meta'), which is not "
            "supported; export with 'ansible-inventory -i FILE --list --yaml'"
        )
    builder = _Builder(source)
    for name, body in data.items():
        _parse_yaml_group(builder, name, body, line, ())
    return builder


def _parse_yaml_group(
    builder: _Builder, name: Any, body: Any, line: int | None, stack: tuple[str, ...]
) -> None:
    """Add one YAML group (and, recursively, its children) to builder.

    Raises InventoryError naming file, line and group for a non-string group
    name, a group that is its own ancestor, a body that is not a mapping,
    unknown keys, and hosts/vars/children that are not mappings.
    """
    source = builder.source
    if not isinstance(name, str) or not _GROUP_NAME_RE.match(name):
        raise InventoryError(f"{_at(source, line)}: invalid group name {name!r}")
    if name in stack:
        loop = " -> ".join([*stack[stack.index(name) :], name])
        raise InventoryError(
            f"{_at(source, line)}: group {name!r} is its own ancestor (cycle {loop})"
        )
    builder.declare(name)
    if body is None:
        return
    line = getattr(body, "line", line)
    where = _at(source, line)
    if not isinstance(body, dict):
        raise InventoryError(
            f"{where}: group {name!r} must be a mapping with 'hosts', 'vars' "
            f"and/or 'children', got {_kind(body)}"
        )
    unknown = [str(key) for key in body if key not in YAML_GROUP_KEYS]
    if unknown:
        raise InventoryError(
            f"{where}: group {name!r} has unexpected key(s) {', '.join(unknown)}: "
            "expected 'hosts', 'vars' or 'children' (hosts go under 'hosts:')"
        )
    # In document order, so that hosts keep the order they are written in.
    for key, value in body.items():
        if value is None:
            continue
        value_where = _at(source, getattr(value, "line", line))
        if not isinstance(value, dict):
            example = {
                "hosts": "'web1.example.com:' entries",
                "vars": "'name: value' entries",
                "children": "'groupname:' entries",
            }[key]
            raise InventoryError(
                f"{value_where}: '{key}' of group {name!r} must be a mapping of "
                f"{example}, got {_kind(value)}"
            )
        if key == "vars":
            builder.group(name).vars.update(_checked_vars(value, value_where, f"group {name!r}"))
        elif key == "hosts":
            _parse_yaml_hosts(builder, name, value, value_where)
        else:
            for child, child_body in value.items():
                _parse_yaml_group(builder, child, child_body, line, (*stack, name))
                builder.add_child(name, child)


def _parse_yaml_hosts(builder: _Builder, group: str, hosts: Mapping[Any, Any], where: str) -> None:
    """Add the entries of a group's "hosts:" mapping to builder.

    Raises InventoryError for a non-string host name, host variables that
    are not a mapping, or an invalid port or range.
    """
    for entry, host_vars in hosts.items():
        if isinstance(entry, bool) or not isinstance(entry, (str, int)):
            raise InventoryError(f"{where}: invalid host name {entry!r} in group {group!r}")
        entry = str(entry)
        vars_line = getattr(host_vars, "line", None)
        host_where = where if vars_line is None else _at(builder.source, vars_line)
        if host_vars is None:
            host_vars = {}
        if not isinstance(host_vars, dict):
            raise InventoryError(
                f"{where}: variables of host {entry!r} in group {group!r} must be "
                f"a mapping, got {_kind(host_vars)}"
            )
        checked = _checked_vars(host_vars, host_where, f"host {entry!r}")
        names, port = _expand_host_pattern(entry, host_where)
        for name in names:
            builder.add_host(name, group, checked, port, host_where)


def _checked_vars(mapping: Mapping[Any, Any], where: str, owner: str) -> dict[str, Any]:
    """Return mapping as plain JSON-able variables.

    Raises InventoryError for a non-string variable name or a value that
    cannot be stored as JSON.
    """
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise InventoryError(f"{where}: variable names of {owner} must be strings, got {key!r}")
        result[key] = _jsonable(value, f"{where}: variable {key!r} of {owner}", 0)
    return result


def _jsonable(value: Any, where: str, depth: int) -> Any:
    """Convert a YAML value to plain JSON types (dates become ISO strings).

    Raises InventoryError for binary data, non-finite floats (PostgreSQL's
    JSON types reject them), other non-JSON types, or nesting deeper than
    MAX_VAR_DEPTH (a recursive alias).
    """
    if depth > MAX_VAR_DEPTH:
        raise InventoryError(f"{where} is nested too deeply (a recursive YAML alias?)")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InventoryError(f"{where} is {value!r}, which JSON cannot store")
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if key is None or isinstance(key, (bool, int, float)):
                key = json.dumps(key)  # what json.dumps would turn the key into
            if not isinstance(key, str):
                raise InventoryError(f"{where} has a non-string key {key!r}")
            result[key] = _jsonable(item, where, depth + 1)
        return result
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, where, depth + 1) for item in value]
    if isinstance(value, (set, frozenset)):
        items = [_jsonable(item, where, depth + 1) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    raise InventoryError(
        f"{where} has a value of type {type(value).__name__}, which JSON cannot store"
    )


# --------------------------------------------------------------------------
# Patterns and small helpers


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


def _read_text(source: str) -> str:
    """Return the file's text.

    Raises InventoryError if it is missing, a directory, unreadable or not
    UTF-8.
    """
    try:
        with open(source, encoding="utf-8-sig") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InventoryError(f"inventory file not found: {source} {NOT_FOUND_HINT}") from None
    except IsADirectoryError:
        raise InventoryError(
            f"inventory {source} is a directory; give the inventory file itself"
        ) from None
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"inventory {source} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {source}: {exc.strerror}") from None


def _same_path(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Compare two paths after ~ expansion and normalisation; never fails."""

    def norm(path: str | os.PathLike[str]) -> str:
        return os.path.normcase(os.path.abspath(os.path.expanduser(os.fspath(path))))

    return norm(a) == norm(b)


def _at(source: str, line: int | None) -> str:
    """Format "file:line", or just the file when the line is unknown."""
    return f"{source}:{line}" if line is not None else source


def _kind(value: Any) -> str:
    """Describe a value's type in YAML terms for error messages."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"
