"""Inventory: the hosts and groups of one inventory file.

Loads a file with the INI or the YAML/JSON parser, supplies the implicit
localhost inventory, and resolves host patterns (syntax in patterns.py).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping

from opsq.errors import InventoryError, PatternError
from opsq.inventory.hosts import (
    ALL_GROUP,
    CONNECTION_LOCAL,
    CONNECTION_VAR,
    DEFAULT_SSH_PORT,
    UNGROUPED_GROUP,
    Host,
    _kind,
)
from opsq.inventory.ini import INI_SUFFIXES, _parse_ini
from opsq.inventory.patterns import (
    _SUBSCRIPT_RE,
    GLOB_CHARS,
    KNOWN_HOSTS_HINT,
    PATTERN_ALL,
    PATTERN_EXCLUDE,
    PATTERN_INTERSECT,
    PATTERN_REGEX_PREFIX,
    _apply_subscript,
    _split_pattern,
)
from opsq.inventory.yaml_json import (
    JSON_SUFFIXES,
    YAML_SUFFIXES,
    _load_json,
    _load_yaml,
    _parse_yaml_data,
    _sniff_yaml,
)

IMPLICIT_HOST = "localhost"
IMPLICIT_SOURCE = "<implicit localhost>"
MEMORY_SOURCE = "<memory>"

NOT_FOUND_HINT = "(set OPSQ_INVENTORY or pass -i)"


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
