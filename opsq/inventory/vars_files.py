"""group_vars/ and host_vars/: variables in files beside the inventory, as Ansible reads them.

For a group (or host) NAME, Ansible reads the first of ``group_vars/NAME``,
``NAME.yml``, ``NAME.yaml`` and ``NAME.json`` that exists; a directory of that
name contributes every file in it (sorted, recursively, skipping hidden files,
backups ending in "~" and other extensions), later files overriding earlier
ones.  Files for groups or hosts the inventory does not have are not read.
"""

from __future__ import annotations

import os
from typing import Any

from opsq.errors import InventoryError
from opsq.inventory.builder import _Builder
from opsq.inventory.hosts import _kind
from opsq.inventory.yaml_json import JSON_SUFFIXES, _checked_vars, _load_json, _load_yaml

GROUP_VARS_DIR = "group_vars"
HOST_VARS_DIR = "host_vars"
#: The name itself first, so that a directory NAME/ is found before NAME.yml.
VARS_FILE_EXTENSIONS = ("", ".yml", ".yaml", ".json")
#: How a file encrypted whole with ansible-vault starts.
VAULT_FILE_HEADER = "$ANSIBLE_VAULT;"


def read_vars_files(base_dir: str, builder: _Builder, extra_hosts: tuple[str, ...]) -> None:
    """Read group_vars/ and host_vars/ under base_dir into builder.

    extra_hosts are names with a host_vars file worth reading although the
    inventory lists no such host (the implicit localhost).  Raises
    InventoryError naming the file for one that is unreadable, malformed, not a
    mapping of variables, or encrypted with ansible-vault.
    """
    groups = os.path.join(base_dir, GROUP_VARS_DIR)
    for name in _names_with_files(groups, builder.groups):
        builder.group_file_vars[name] = _read_entity(groups, name)
    hosts = os.path.join(base_dir, HOST_VARS_DIR)
    for name in _names_with_files(hosts, [*builder.hosts, *extra_hosts]):
        builder.host_file_vars[name] = _read_entity(hosts, name)


def _names_with_files(directory: str, names: list[str] | dict[str, Any]) -> list[str]:
    """The names that have a vars file or directory in directory; never fails.

    One listing rather than a stat per name and extension: a large fleet has
    tens of thousands of hosts, few with a host_vars file.
    """
    try:
        present = set(os.listdir(directory))
    except OSError:
        return []
    # Ansible skips names that are absolute paths ("/srv/chroot" hosts).
    return [
        name for name in names
        if not name.startswith(os.sep)
        and any(name + ext in present for ext in VARS_FILE_EXTENSIONS)
    ]


def _read_entity(directory: str, name: str) -> dict[str, Any]:
    """Merge the variables of the first vars file or directory for name.

    Raises InventoryError as read_vars_files() does.
    """
    for ext in VARS_FILE_EXTENSIONS:
        path = os.path.join(directory, name + ext)
        if os.path.isdir(path):
            merged: dict[str, Any] = {}
            for file in _dir_files(path):
                merged.update(_read_file(file, name))
            return merged
        if os.path.exists(path):
            return _read_file(path, name)
    return {}


def _dir_files(path: str) -> list[str]:
    """The vars files of a group_vars/NAME/ directory in Ansible's order; never fails."""
    found: list[str] = []
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return found
    for entry in entries:
        if entry.startswith(".") or entry.endswith("~"):
            continue
        full = os.path.join(path, entry)
        ext = os.path.splitext(entry)[1]
        if os.path.isdir(full) and not ext:
            found.extend(_dir_files(full))
        elif os.path.isfile(full) and ext in VARS_FILE_EXTENSIONS:
            found.append(full)
    return found


def _read_file(path: str, name: str) -> dict[str, Any]:
    """The variables of one vars file (an empty file has none).

    Raises InventoryError as read_vars_files() does.
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"vars file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise InventoryError(f"cannot read vars file {path}: {exc.strerror}") from None
    if text.lstrip().startswith(VAULT_FILE_HEADER):
        raise InventoryError(
            f"vars file {path} is encrypted with ansible-vault, which opsq cannot "
            "decrypt; encrypt single values (!vault) instead, or move the file away"
        )
    if not text.strip():
        return {}
    if os.path.splitext(path)[1].lower() in JSON_SUFFIXES:
        data = _load_json(text, path)
    else:
        data = _load_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InventoryError(
            f"{path}: a vars file must be a mapping of variable names to values, "
            f"got {_kind(data)}"
        )
    line = getattr(data, "line", None)
    return _checked_vars(data, f"{path}:{line}" if line else path, f"{name!r}")
