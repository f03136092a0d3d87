"""Host: one managed machine, and the Ansible variables that say how to reach it.

Also the group names every inventory has and the validation of host fields
(ports, optional strings) that the parsers share.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from opsq import limits
from opsq.errors import InventoryError
from opsq.settings import get_settings

DEFAULT_SSH_PORT = 22
MIN_PORT = 1
MAX_PORT = 65535

ALL_GROUP = "all"
UNGROUPED_GROUP = "ungrouped"

CONNECTION_SSH = "ssh"
CONNECTION_LOCAL = "local"
# Ansible connection plugins that are all "OpenSSH to the host" for opsq.
SSH_CONNECTION_ALIASES = frozenset({"ssh", "smart", "paramiko"})
LOCAL_CONNECTION_ALIASES = frozenset({"local"})

# Legacy name first: Ansible's ssh plugin lists the modern name first and lets the
# last one set win, so ``ansible_ssh_host`` beats ``ansible_host`` wherever each is set
# (a group's ``ansible_ssh_user`` beats a host's ``ansible_user``).
ADDRESS_VARS = ("ansible_ssh_host", "ansible_host")
PORT_VARS = ("ansible_ssh_port", "ansible_port")
USER_VARS = ("ansible_ssh_user", "ansible_user")
KEY_FILE_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
#: The variable the INI/YAML ``host:port`` shorthand sets, as in Ansible.
PORT_SHORTHAND_VAR = "ansible_port"
CONNECTION_VAR = "ansible_connection"
TIMEOUT_VAR = "opsq_timeout"
CONNECT_TIMEOUT_VAR = "opsq_connect_timeout"
#: The site whose workers run a host (``opsq.fleet.<site>``); unset: any worker of
#: ``opsq.fleet``. Settable on hosts and groups, as any variable.
SITE_VAR = "opsq_site"
#: What a site's name may be: it becomes part of a queue and a worker's node name.
_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def check_site(value: Any, where: str) -> str | None:
    """A host's ``opsq_site``, checked (None: no site). Raises InventoryError."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _SITE_NAME.match(value):
        raise InventoryError(f"{where}: {SITE_VAR} must be 1 to 32 lower-case letters, digits "
                             f"or '-', starting with a letter or digit, not {value!r:.60}")
    return value
#: The host variables a run reads (see opsq.hostrun.ssh.RunOptions.resolve).
RUN_VARS = frozenset({TIMEOUT_VAR, CONNECT_TIMEOUT_VAR})
#: How ansible-inventory writes a vault-encrypted value as JSON; opsq keeps it so.
VAULT_KEY = "__ansible_vault"

_DIGITS_RE = re.compile(r"^[0-9]+$")


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
    #: Why opsq cannot run on this host (another ansible_connection such as winrm, a
    #: vault-encrypted connection variable), None when it can.  Inventory.select() lists
    #: such a host; Inventory.resolve(), which a job uses, refuses it.  Derived from
    #: the fields above, so left out of comparisons and of to_dict().
    problem: str | None = field(default=None, compare=False)

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

    @property
    def site(self) -> str | None:
        """The site whose workers run this host (``opsq_site``), checked. Raises
        InventoryError."""
        return check_site(self.vars.get(SITE_VAR), f"host {self.name}")

    def run_record(self) -> dict[str, Any]:
        """What a worker needs to run a command on this host, and nothing else: where and
        how to connect, and opsq's own variables (RUN_VARS). Inventory secrets
        (``ansible_ssh_pass``, ``ansible_become_pass``, group vars...) stay out: this
        record is stored with every job for as long as the job is kept."""
        return {**self.to_dict(),
                "vars": {k: v for k, v in self.vars.items() if k in RUN_VARS}}

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


def _make_host(name: str, merged: dict[str, Any], groups: list[str],
               source: str) -> tuple[Host, str | None]:
    """Turn a host's merged variables into a Host, and why opsq cannot reach it (or None).

    A host opsq cannot reach (another ansible_connection such as winrm, or a connection
    variable that is vault-encrypted) is still loaded, with the reason as its problem:
    only running on it is an error.
    Raises InventoryError naming the file and host for a non-integer or out-of-range
    port, a non-string address/user/key file, or an invalid opsq_timeout /
    opsq_connect_timeout.
    """
    where = f"{source}: host {name!r}"
    _check_run_vars(merged, where)
    vaulted = [key for key in (*ADDRESS_VARS, *PORT_VARS, *USER_VARS, *KEY_FILE_VARS,
                               CONNECTION_VAR) if is_vaulted(merged.get(key))]
    if vaulted:
        plain = {key: value for key, value in merged.items() if key not in vaulted}
        host, _ = _make_host(name, plain, groups, source)
        host.vars.update(copy.deepcopy({key: merged[key] for key in vaulted}))
        problem = (f"{where}: {vaulted[0]} is vault-encrypted, which opsq cannot "
                   "decrypt; set it in plain text for the hosts opsq runs on")
        return replace(host, problem=problem), problem
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
    connection, problem = _connection(merged.get(CONNECTION_VAR), where, name)
    host = Host(
        name=name,
        address=address,
        port=port,
        user=user,
        key_file=key_file,
        connection=connection,
        groups=tuple(groups),
        # Group variables are shared objects; a host must not alias another's.
        vars=copy.deepcopy(merged),
        problem=problem,
    )
    return host, problem


def is_vaulted(value: Any) -> bool:
    """Whether value is a vault-encrypted value as loaded from YAML or JSON; never fails."""
    return isinstance(value, Mapping) and set(value) == {VAULT_KEY}


def _check_run_vars(merged: Mapping[str, Any], where: str) -> None:
    """Refuse an opsq_timeout / opsq_connect_timeout a run could not use.

    Raises InventoryError naming the host, the variable and the allowed range for a
    value that is not a finite number of seconds in range (``nan``, ``-1``, ``abc``).
    """
    maxima = {TIMEOUT_VAR: lambda: get_settings().max_command_timeout,
              CONNECT_TIMEOUT_VAR: lambda: limits.MAX_CONNECT_TIMEOUT}
    for key, maximum in maxima.items():
        if merged.get(key) is None:
            continue
        value = merged[key]
        try:
            limits.seconds(value, f"{where}: {key}", maximum())
        except limits.InvalidNumber as exc:
            raise InventoryError(f"{exc} ({key} is in seconds)") from None


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


def _connection(value: Any, where: str, name: str) -> tuple[str, str | None]:
    """Map ansible_connection to "ssh" or "local" (unset means "ssh"), with a problem.

    Any other connection type (winrm, docker, network_cli...) is kept as written, with
    the reason opsq cannot use it; never fails.
    """
    if value is None or value in SSH_CONNECTION_ALIASES:
        return CONNECTION_SSH, None
    if value in LOCAL_CONNECTION_ALIASES:
        return CONNECTION_LOCAL, None
    return str(value), (
        f"{where}: ansible_connection {value!r} is not supported; opsq can "
        f"use {CONNECTION_SSH!r} (also written 'smart' or 'paramiko') or "
        f"{CONNECTION_LOCAL!r}; leave the host out of the pattern (e.g. 'all:!{name}')"
    )


def _kind(value: Any) -> str:
    """Describe a value's type in YAML terms for error messages."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"
