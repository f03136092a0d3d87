"""Building: both parsers feed a _Builder, which resolves groups into Hosts.

Group nesting, the implicit "all" and "ungrouped" groups and variable
precedence live here; hosts._make_host() turns merged variables into a Host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opsq.errors import InventoryError
from opsq.inventory.hosts import ALL_GROUP, PORT_VARS, UNGROUPED_GROUP, Host, _make_host

_GROUP_NAME_RE = re.compile(r"^[^:\[\]\s]+$")


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
