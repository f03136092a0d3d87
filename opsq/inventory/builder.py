"""Building: the parsers feed a _Builder, which resolves groups into Hosts.

Group nesting, the implicit "all" and "ungrouped" groups, Ansible's host order
within a group and variable precedence live here; hosts._make_host() turns
merged variables into a Host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opsq.errors import InventoryError
from opsq.inventory.hosts import (
    ALL_GROUP,
    PORT_SHORTHAND_VAR,
    UNGROUPED_GROUP,
    Host,
    _make_host,
)

_GROUP_NAME_RE = re.compile(r"^[^:\[\]\s]+$")

#: Sets a group's rank among groups of the same depth, as in Ansible; not a variable.
GROUP_PRIORITY_VAR = "ansible_group_priority"
DEFAULT_GROUP_PRIORITY = 1


@dataclass
class _GroupDef:
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    # The hosts listed directly in the group, in the order first listed (a dict: an
    # ordered set, so an inventory of 100,000 hosts is read in linear time).
    hosts: dict[str, None] = field(default_factory=dict)
    priority: int = DEFAULT_GROUP_PRIORITY


@dataclass
class _HostDef:
    vars: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)


@dataclass
class Built:
    """What a _Builder resolves to: the hosts, every group's hosts in Ansible's order
    (the group's own hosts, then its children's, level by level), the groups in the
    order they were defined, and why opsq cannot reach some hosts."""

    hosts: dict[str, Host]
    members: dict[str, list[str]]
    unusable: dict[str, str]
    # For the implicit localhost: the variables of "all" (inventory, then group_vars),
    # and the host_vars files, by host name.
    all_vars: dict[str, Any] = field(default_factory=dict)
    host_file_vars: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Builder:
    """Accumulates groups, hosts and variables as the parsers read one inventory."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.groups: dict[str, _GroupDef] = {}
        self.hosts: dict[str, _HostDef] = {}
        # Variables of group_vars/ and host_vars/ files, by group or host name.
        self.group_file_vars: dict[str, dict[str, Any]] = {}
        self.host_file_vars: dict[str, dict[str, Any]] = {}
        for special in (ALL_GROUP, UNGROUPED_GROUP):
            self.group(special)

    def group(self, name: str) -> _GroupDef:
        return self.groups.setdefault(name, _GroupDef())

    def declare(self, name: str) -> _GroupDef:
        return self.group(name)

    def add_child(self, parent: str, child: str, declare_child: bool = True) -> None:
        kids = self.declare(parent).children
        if declare_child:
            self.declare(child)
        if child not in kids:
            kids.append(child)

    def set_group_var(self, group: str, key: str, value: Any, where: str) -> None:
        """Set a variable of group; ansible_group_priority sets its rank instead.

        Raises InventoryError if the priority is not an integer.
        """
        if key != GROUP_PRIORITY_VAR:
            self.group(group).vars[key] = value
            return
        try:
            self.group(group).priority = int(value)
        except (TypeError, ValueError):
            raise InventoryError(
                f"{where}: {GROUP_PRIORITY_VAR} of group {group!r} must be an integer, "
                f"got {value!r}"
            ) from None

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
        definition = self.declare(group)
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = _HostDef()
            # Like Ansible: the host:port shorthand counts where the host first
            # appears, explicit variables override it.
            if port is not None:
                host.vars[PORT_SHORTHAND_VAR] = port
        host.vars.update(host_vars)
        if group not in host.groups:
            host.groups.append(group)
        definition.hosts.setdefault(name)

    def build(self, source: str) -> Built:
        """Resolve group nesting, host order and variable precedence into Hosts.

        Raises InventoryError for a group that is its own ancestor, or a host
        whose variables are invalid (source names the inventory in messages).
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
        self._fill_ungrouped()

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

        hosts: dict[str, Host] = {}
        unusable: dict[str, str] = {}
        for name, definition in self.hosts.items():
            all_groups: set[str] = {ALL_GROUP}
            for group in self._direct_groups(name, definition):
                all_groups |= ancestors_of(group)
            ranked = sorted(
                all_groups - {ALL_GROUP},
                key=lambda g: (depth_of(g), self.groups[g].priority, g),
            )
            merged = self._merge(ranked, [definition.vars, self.host_file_vars.get(name, {})])
            host, problem = _make_host(name, merged, sorted(all_groups), source)
            hosts[name] = host
            if problem is not None:
                unusable[name] = problem
        members = {name: self._ordered_hosts(name) for name in self.groups}
        return Built(hosts, members, unusable, self._merge([], []), self.host_file_vars)

    def _direct_groups(self, name: str, definition: _HostDef) -> list[str]:
        """The groups a host is listed in, "ungrouped" only if in no other; never fails."""
        direct = [g for g in definition.groups if g not in (ALL_GROUP, UNGROUPED_GROUP)]
        return direct or [UNGROUPED_GROUP]

    def _fill_ungrouped(self) -> None:
        """Make "ungrouped" list exactly the hosts in no other group, as Ansible does."""
        ungrouped = self.groups[UNGROUPED_GROUP]
        lonely = dict.fromkeys(
            name for name, definition in self.hosts.items()
            if self._direct_groups(name, definition) == [UNGROUPED_GROUP]
        )
        kept = [name for name in ungrouped.hosts if name in lonely]
        ungrouped.hosts = dict.fromkeys([*kept, *lonely])

    def _merge(
        self, ranked: list[str], host_layers: list[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """Merge variables in Ansible's order of precedence, lowest first.

        "all" in the inventory, the other groups in the inventory (by depth,
        priority, name), group_vars/all, group_vars of the other groups (same
        order), then host_layers (the host's own variables, then host_vars).
        """
        merged: dict[str, Any] = dict(self.groups[ALL_GROUP].vars)
        for group in ranked:
            merged.update(self.groups[group].vars)
        merged.update(self.group_file_vars.get(ALL_GROUP, {}))
        for group in ranked:
            merged.update(self.group_file_vars.get(group, {}))
        for layer in host_layers:
            merged.update(layer)
        return merged

    def _ordered_hosts(self, name: str) -> list[str]:
        """A group's hosts as Ansible's Group.get_hosts() lists them; never fails.

        The group's own hosts, then those of its children, then of theirs, level
        by level.  (Within a level Ansible walks groups in set order; this walks
        them in the order they were listed, the order Ansible gives when only
        one group per level has children.)
        """
        order: list[str] = []
        seen_hosts: set[str] = set()
        seen_groups = {name}
        level = [name]
        while level:
            for group in level:
                for host in self.groups[group].hosts:
                    if host not in seen_hosts:
                        seen_hosts.add(host)
                        order.append(host)
            following: list[str] = []
            for group in level:
                for child in self.groups[group].children:
                    if child not in seen_groups:
                        seen_groups.add(child)
                        following.append(child)
            level = following
        return order

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
