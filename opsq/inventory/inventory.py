"""Inventory: the hosts and groups of one inventory file or directory.

Loads files with the INI or the YAML/JSON parser, reads group_vars/ and
host_vars/ beside them, supplies the implicit localhost, and resolves host
patterns (syntax in patterns.py) the way Ansible does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from opsq.errors import InventoryError, PatternError
from opsq.inventory.builder import Built, _Builder
from opsq.inventory.hosts import (
    ALL_GROUP,
    CONNECTION_LOCAL,
    CONNECTION_VAR,
    DEFAULT_SSH_PORT,
    UNGROUPED_GROUP,
    Host,
    _kind,
    _make_host,
)
from opsq.inventory.ini import INI_SUFFIXES, _parse_ini
from opsq.inventory.patterns import (
    _SUBSCRIPT_RE,
    GLOB_CHARS,
    HOST_MATCH_CHARS,
    KNOWN_HOSTS_HINT,
    PATTERN_EXCLUDE,
    PATTERN_INTERSECT,
    PATTERN_REGEX_PREFIX,
    _apply_subscript,
    _glob_matcher,
    _regex_matcher,
    _split_pattern,
)
from opsq.inventory.vars_files import read_vars_files
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
#: Names that mean this machine even when the inventory does not list them
#: (Ansible's C.LOCALHOST): a pattern naming one gets a local host.
LOCALHOST_NAMES = ("127.0.0.1", "localhost", "::1")

NOT_FOUND_HINT = "(set OPSQ_INVENTORY or pass -i)"

#: Entries of an inventory directory that are not inventory sources, as in Ansible
#: (INVENTORY_IGNORE_EXTS, which adds .orig, .cfg and .retry to REJECT_EXTS, and the
#: names it always skips).
INVENTORY_IGNORE_SUFFIXES = (
    ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst",
    ".orig", ".cfg", ".retry",
)
INVENTORY_IGNORE_NAMES = frozenset({"host_vars", "group_vars", "vars_plugins"})


class Inventory:
    """The hosts and groups of one inventory, and pattern resolution."""

    hosts: dict[str, Host]
    groups: dict[str, set[str]]
    source: str
    #: Hosts opsq cannot run on (another ansible_connection...): name -> why (as their
    #: Host.problem).
    unusable: dict[str, str]

    def __init__(
        self,
        hosts: Mapping[str, Host],
        groups: Mapping[str, Iterable[str]] | None = None,
        source: str = MEMORY_SOURCE,
        unusable: Mapping[str, str] | None = None,
    ) -> None:
        """Wrap already-built hosts; groups default to those the hosts name.

        A group given as a list keeps its order (a pattern's subscripts count in
        it); a set is taken in the order of hosts.  Never fails; use load() or
        implicit() to build from a file or default.
        """
        self.hosts = dict(hosts)
        self._position = {name: i for i, name in enumerate(self.hosts)}
        if groups is None:
            derived: dict[str, list[str]] = {ALL_GROUP: [], UNGROUPED_GROUP: []}
            for host in self.hosts.values():
                for group in dict.fromkeys((ALL_GROUP, *host.groups)):
                    derived.setdefault(group, []).append(host.name)
            groups = derived
        self._members: dict[str, list[str]] = {}
        for name, members in groups.items():
            ordered = list(members)
            if isinstance(members, (set, frozenset)):
                ordered.sort(key=lambda host: self._position.get(host, len(self._position)))
            self._members[name] = ordered
        for special in (ALL_GROUP, UNGROUPED_GROUP):
            self._members.setdefault(special, [])
        self.groups = {name: set(members) for name, members in self._members.items()}
        self.source = source
        self.unusable = dict(unusable or {})
        self._all_vars: dict[str, Any] = {}
        self._host_file_vars: dict[str, dict[str, Any]] = {}
        # implicit()'s inventory: its "localhost" stands for Ansible's implicit one.
        self._builtin = False

    def __repr__(self) -> str:
        return (
            f"Inventory(source={self.source!r}, hosts={len(self.hosts)}, groups={len(self.groups)})"
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Inventory:
        """Read an inventory file or directory, with its group_vars/ and host_vars/.

        A file: .yml/.yaml/.json are YAML (JSON via the json module for precise
        error positions), .ini/.cfg are INI; any other or no extension is YAML if
        the text parses to something shaped like a YAML inventory, else INI.
        A directory: every file in it (and in its subdirectories), in sorted
        order, except those Ansible skips (hidden, group_vars/, host_vars/, and
        backups and documents such as "~", .bak, .orig, .cfg, .md, .txt).
        group_vars/ and host_vars/ are read beside a file, inside a directory.
        Raises InventoryError naming the file (and the line where known) if it
        is missing, unreadable, empty or malformed, or if a directory holds no
        inventory file.
        """
        source = os.path.expanduser(os.fspath(path))
        builder = _Builder(source)
        if os.path.isdir(source):
            files = _directory_sources(source)
            if not files:
                raise InventoryError(
                    f"inventory directory {source} holds no inventory file "
                    "(files ending in .cfg, .bak, .orig, .md, .txt, '~'... are skipped)"
                )
            for file in files:
                _parse_file(file, builder, allow_empty=True)
            base_dir = source
        else:
            _parse_file(source, builder, allow_empty=False)
            base_dir = os.path.dirname(source) or os.curdir
        read_vars_files(base_dir, builder, LOCALHOST_NAMES)
        return cls._from_built(builder.build(source), source)

    @classmethod
    def _from_built(cls, built: Built, source: str) -> Inventory:
        inventory = cls(built.hosts, built.members, source, built.unusable)
        inventory._all_vars = built.all_vars
        inventory._host_file_vars = built.host_file_vars
        return inventory

    @classmethod
    def implicit(cls) -> Inventory:
        """Return the built-in inventory: "localhost", reached without SSH.

        As Ansible's implicit localhost with no inventory, it answers to "localhost",
        "127.0.0.1" and "::1", named by the first of them a pattern uses.  Unlike
        Ansible (where "all" is then empty), "all" selects it.  Never fails.
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
        members = [IMPLICIT_HOST]
        inventory = cls(
            {IMPLICIT_HOST: host},
            {ALL_GROUP: list(members), UNGROUPED_GROUP: list(members)},
            IMPLICIT_SOURCE,
        )
        inventory._builtin = True
        return inventory

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
        """Return the hosts an Ansible host pattern selects, to run a job on them.

        As select(), and raises InventoryError if a selected host is one opsq
        cannot reach (its ``problem``: another ansible_connection, a vaulted
        connection variable), naming the first of them.
        """
        selected = self.select(pattern)
        problems = [host.problem for host in selected if host.problem is not None]
        if problems:
            more = f" (and {len(problems) - 1} more such host(s))" if len(problems) > 1 else ""
            raise InventoryError(problems[0] + more)
        return selected

    def select(self, pattern: str) -> list[Host]:
        """Return the hosts an Ansible host pattern selects, in Ansible's order, to list
        them: hosts opsq cannot reach are included, with their ``problem`` set.

        Union terms are collected first, in the order written, then every "&"
        term intersects and every "!" term excludes, wherever they appear; with
        no union term the start is "all".  A group contributes its own hosts,
        then its children's, level by level; a union term that is a host name
        means that host even if a group has the same name.  "localhost",
        "127.0.0.1" and "::1" are this machine (a local host) when the
        inventory does not list them.  Raises PatternError if the pattern is
        empty or malformed, names an unknown host or group (also in "&"/"!"
        terms: a typo there would silently select the host meant to be
        excluded), has a glob/regex that matches nothing, or selects no host
        at all.
        """
        if not isinstance(pattern, str):
            raise PatternError(f"host pattern must be a string, got {_kind(pattern)}")
        terms = _split_pattern(pattern)
        if not terms:
            raise PatternError(
                f"empty host pattern {pattern!r}: give a host or group name, "
                f"or 'all' for every host {KNOWN_HOSTS_HINT}"
            )
        unions: list[list[Host]] = []
        intersections: list[list[Host]] = []
        exclusions: list[list[Host]] = []
        implicit: dict[str, Host] = {}
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
            if not operator and body in self.hosts and not self._names_localhost(body):
                unions.append([self.hosts[body]])
                continue
            found = self._match_term(body, pattern, implicit)
            {PATTERN_EXCLUDE: exclusions, PATTERN_INTERSECT: intersections}.get(
                operator, unions
            ).append(found)
        if self._builtin and implicit:
            # The built-in "localhost" is the machine a localhost name has named.
            unions, intersections, exclusions = (
                [[self._as_implicit(host, implicit) for host in found] for found in lists]
                for lists in (unions, intersections, exclusions)
            )
        selected = _unique([host for found in unions for host in found])
        if not unions:
            selected = [self._as_implicit(self.hosts[name], implicit)
                        for name in self._members[ALL_GROUP]]
        for found in intersections:
            keep = {host.name for host in found}
            selected = [host for host in selected if host.name in keep]
        for found in exclusions:
            drop = {host.name for host in found}
            selected = [host for host in selected if host.name not in drop]
        if not selected:
            raise PatternError(f"pattern {pattern!r} matches no host {KNOWN_HOSTS_HINT}")
        return [self._with_problem(host) for host in selected]

    def _names_localhost(self, name: str) -> bool:
        """Whether name, in the built-in inventory, means its implicit localhost."""
        return self._builtin and name in LOCALHOST_NAMES

    def _as_implicit(self, host: Host, implicit: dict[str, Host]) -> Host:
        """The built-in localhost as the name a pattern gave it; any other host as is."""
        if self._builtin and implicit and host is self.hosts.get(IMPLICIT_HOST):
            return next(iter(implicit.values()))
        return host

    def _with_problem(self, host: Host) -> Host:
        """host, with the problem ``unusable`` records for it if it lacks one."""
        problem = self.unusable.get(host.name)
        if host.problem is None and problem is not None and self.hosts.get(host.name) is host:
            return replace(host, problem=problem)
        return host

    def _match_term(self, term: str, pattern: str, implicit: dict[str, Host]) -> list[Host]:
        """Return the hosts one pattern term selects, in Ansible's order.

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
        if names is None:
            return [self._localhost(expr, implicit)]
        if subscript is not None:
            names = _apply_subscript(names, subscript, expr, pattern)
        return [self.hosts[name] for name in names]

    def _match_expr(self, expr: str, pattern: str) -> list[str] | None:
        """Return the host names a term without subscript selects, None for the
        implicit localhost.

        As Ansible: the hosts of every matching group (in the order groups were
        defined), then matching host names if no group matched or the term is a
        regex or has one of HOST_MATCH_CHARS.  Duplicates stay: a subscript
        counts them, as Ansible's does.  Raises PatternError as _match_term() does.
        """
        if self._names_localhost(expr):
            return None
        is_regex = expr.startswith(PATTERN_REGEX_PREFIX)
        matches: Callable[[str], bool] | None = None
        if is_regex:
            matches = _regex_matcher(expr, pattern)
        elif any(char in expr for char in GLOB_CHARS):
            matches = _glob_matcher(expr)
        group_hits = _matching(matches, expr, self._members)
        names = [host for group in group_hits for host in self._members[group]]
        host_hits: list[str] = []
        if not group_hits or is_regex or any(char in expr for char in HOST_MATCH_CHARS):
            host_hits = _matching(matches, expr, self.hosts)
        names += host_hits
        if group_hits or host_hits:
            return names
        if expr in LOCALHOST_NAMES:
            return None
        if matches is not None:
            raise PatternError(
                f"pattern {pattern!r} matches no host: {expr!r} matches no host "
                f"or group name {KNOWN_HOSTS_HINT}"
            )
        hint = ""
        if ":" in expr and "," in pattern:
            hint = " (in a pattern with ',', ':' does not separate terms)"
        raise PatternError(
            f"unknown host or group {expr!r} in pattern {pattern!r}{hint} {KNOWN_HOSTS_HINT}"
        )

    def _localhost(self, name: str, implicit: dict[str, Host]) -> Host:
        """The host a localhost name means when the inventory lists no such host.

        An inventory host named like localhost if there is one (as Ansible),
        else one implicit local host per select(), named by the first such term,
        with the variables of "all" and its host_vars file (in the built-in
        inventory, its "localhost" so named).
        """
        listed = next((h for h in self.hosts if h in LOCALHOST_NAMES), None)
        if listed is not None and not self._builtin:
            return self.hosts[listed]
        if not implicit:
            if self._builtin:
                builtin = self.hosts[IMPLICIT_HOST]
                host = builtin if name == IMPLICIT_HOST else replace(
                    builtin, name=name, address=name)
            else:
                host_vars = {
                    **self._all_vars,
                    CONNECTION_VAR: CONNECTION_LOCAL,
                    **self._host_file_vars.get(name, {}),
                }
                host, _ = _make_host(name, host_vars, [], self.source)
            implicit[name] = host
        return next(iter(implicit.values()))


def _matching(
    matches: Callable[[str], bool] | None, expr: str, names: Mapping[str, Any]
) -> list[str]:
    """The names a glob or regex matcher accepts, in order; with no matcher, expr
    itself if it is one of names (a dict look-up, not a scan).  Never fails.
    """
    if matches is None:
        return [expr] if expr in names else []
    return [name for name in names if matches(name)]


def _unique(hosts: list[Host]) -> list[Host]:
    """Drop repeated hosts, keeping the first; never fails."""
    seen: set[str] = set()
    kept: list[Host] = []
    for host in hosts:
        if host.name not in seen:
            seen.add(host.name)
            kept.append(host)
    return kept


def _directory_sources(directory: str) -> list[str]:
    """The inventory files of a directory, recursively, in Ansible's order.

    Raises InventoryError if the directory cannot be listed.
    """
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise InventoryError(
            f"cannot read inventory directory {directory}: {exc.strerror}"
        ) from None
    found: list[str] = []
    for entry in entries:
        if (
            entry.startswith(".")
            or entry in INVENTORY_IGNORE_NAMES
            or entry.endswith(INVENTORY_IGNORE_SUFFIXES)
        ):
            continue
        full = os.path.join(directory, entry)
        if os.path.isdir(full):
            found.extend(_directory_sources(full))
        else:
            found.append(full)
    return found


def _parse_file(source: str, builder: _Builder, allow_empty: bool) -> None:
    """Parse one inventory file into builder, choosing the format by extension.

    Raises InventoryError as Inventory.load() does; an empty file only when
    not allow_empty (a directory may hold empty files, as Ansible allows).
    """
    text = _read_text(source)
    if not text.strip():
        if allow_empty:
            return
        raise InventoryError(f"inventory {source} is empty")
    suffix = os.path.splitext(source)[1].lower()
    if suffix in JSON_SUFFIXES:
        _parse_yaml_data(_load_json(text, source), source, builder)
    elif suffix in YAML_SUFFIXES:
        _parse_yaml_data(_load_yaml(text, source), source, builder)
    elif suffix in INI_SUFFIXES:
        _parse_ini(text, source, builder)
    else:
        data = _sniff_yaml(text, source)
        if data is None:
            _parse_ini(text, source, builder)
        else:
            _parse_yaml_data(data, source, builder)


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


def load_inventory(path: str | None = None) -> Inventory:
    """The inventory at ``path``, else ``OPSQ_INVENTORY``; the implicit localhost if the
    default file does not exist."""
    from opsq.settings import DEFAULT_INVENTORY, get_settings

    settings = get_settings()
    chosen = path or str(settings.inventory_path())
    default = str(settings.inventory_path()) if settings.inventory == DEFAULT_INVENTORY else None
    return Inventory.from_path_or_default(chosen, default_path=default)
