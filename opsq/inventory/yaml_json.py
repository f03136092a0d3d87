"""Parse YAML and JSON inventories into a _Builder.

``group: {hosts: ..., vars: ..., children: ...}``, recursively, with the same
host ranges as INI.  Variables become plain JSON types, so that a Host can be
stored as JSON.  (Not named yaml.py, which would shadow PyYAML's name here.)
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from opsq.errors import InventoryError
from opsq.inventory.builder import _GROUP_NAME_RE, _Builder
from opsq.inventory.hosts import ALL_GROUP, VAULT_KEY, _kind
from opsq.inventory.ranges import _expand_host_pattern

# Deeper variable nesting than this is almost surely a recursive YAML alias.
MAX_VAR_DEPTH = 100
#: The most values a YAML document may hold once its aliases are expanded: a few
#: hundred bytes of nested aliases ("billion laughs") would otherwise expand to
#: billions.  A 10,000-host inventory with 20 variables each holds ~400,000.
MAX_YAML_NODES = 2_000_000
#: Ansible's tags: an encrypted value (kept as ansible-inventory prints it) and a
#: string not to be templated (a plain string for opsq, which templates nothing).
YAML_VAULT_TAG = "!vault"
YAML_UNSAFE_TAG = "!unsafe"

YAML_SUFFIXES = frozenset({".yml", ".yaml"})
JSON_SUFFIXES = frozenset({".json"})
YAML_GROUP_KEYS = ("hosts", "vars", "children")


class _YamlMapping(dict):  # type: ignore[type-arg]
    """A dict that remembers the line its YAML mapping started on."""

    line: int | None = None


class _YamlSequence(list):  # type: ignore[type-arg]
    """A list that remembers the line its YAML sequence started on."""

    line: int | None = None


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader whose collections carry line numbers for error messages; libyaml's
    parser when PyYAML has it (ten times faster: a 1,000-host inventory in milliseconds)."""


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


def _construct_vault(loader: _YamlLoader, node: yaml.Node) -> dict[str, str]:
    return {VAULT_KEY: loader.construct_scalar(node)}


def _construct_unsafe(loader: _YamlLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_YamlLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_YamlLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_YamlLoader.add_constructor(YAML_VAULT_TAG, _construct_vault)
_YamlLoader.add_constructor(YAML_UNSAFE_TAG, _construct_unsafe)


def _bounded_load(text: str, source: str) -> Any:
    """Parse YAML text safely, refusing aliases that expand beyond MAX_YAML_NODES.

    Raises yaml.YAMLError on a syntax error, InventoryError for an alias bomb or a
    recursive alias.  The check walks the node graph once, counting each shared
    node by its expanded size, so it costs what the file's size does.
    """
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, source) > MAX_YAML_NODES:
            raise InventoryError(
                f"{source}: YAML aliases expand to more than {MAX_YAML_NODES:,} values "
                "(nested aliases that multiply, a 'billion laughs' document?); write "
                "the values out instead"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], source: str) -> int:
    """How many nodes node stands for once aliases are expanded (memoised by node).

    Raises InventoryError for an alias that contains itself or nesting too deep to walk.
    """
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise InventoryError(f"{source}: a YAML alias contains itself (recursive anchor)")
        return sizes[key]
    sizes[key] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    try:
        for child in children:
            total += _expanded_size(child, sizes, source)
            if total > MAX_YAML_NODES:
                break  # enough to refuse; the rest need not be walked
    except RecursionError:
        raise InventoryError(f"{source}: YAML nested too deeply to read") from None
    sizes[key] = total
    return total


def _load_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely.

    Raises InventoryError naming the file, the line of the YAML mark and the
    problem on a syntax error, or for aliases that expand beyond MAX_YAML_NODES.
    """
    try:
        return _bounded_load(text, source)
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


def _sniff_yaml(text: str, source: str) -> Any | None:
    """Return the parsed YAML if text looks like a YAML inventory, else None.

    Raises InventoryError only for an alias bomb (as _load_yaml()); anything else
    that is not clearly YAML is left to the INI parser.
    """
    try:
        data = _bounded_load(text, source)
    except (yaml.YAMLError, RecursionError):
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


def _parse_yaml_data(data: Any, source: str, builder: _Builder | None = None) -> _Builder:
    """Walk a parsed YAML/JSON inventory into builder (a new one by default).

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
    builder = builder if builder is not None else _Builder(source)
    builder.source = source
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
        if isinstance(value, str):
            value = {value: None}  # as Ansible: "hosts: web1" names one host
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
            checked = _checked_vars(value, value_where, f"group {name!r}")
            for var, var_value in checked.items():
                builder.set_group_var(name, var, var_value, value_where)
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
        if not isinstance(entry, str):
            # Ansible cannot parse the file then: quote the name ("'123':").
            raise InventoryError(
                f"{where}: invalid host name {entry!r} in group {group!r}: host names "
                f"are strings; quote it ('{entry}':)"
            )
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
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            key = str(key)  # as Ansible, which only warns about such a name
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


def _at(source: str, line: int | None) -> str:
    """Format "file:line", or just the file when the line is unknown."""
    return f"{source}:{line}" if line is not None else source
