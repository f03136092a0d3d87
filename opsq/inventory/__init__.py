"""Read Ansible INI/YAML inventories and resolve Ansible host patterns.

Operators already describe their fleet in Ansible inventories, so opsq reads
those files rather than inventing a format of its own.  Ansible itself is GPL
and far larger than what we need, so this package re-implements the static
part, checked against ansible-core by tests/test_inventory_ansible.py:

* INI: ``[group]``, ``[group:vars]``, ``[group:children]`` sections (a child
  group must have its own section; only "#" comments may follow a header),
  host ranges (``web[01:20]``, ``db[a:f]``, ``[0:10:2]``), ``host:port``,
  IPv6 addresses (``[2001:db8::1]:2222`` with a port), and inline
  ``key=value`` variables.  "#" comments and values are read as Ansible reads
  them (a host line as ``shlex.split(line, comments=True)``, a value as a Python
  literal when it is one) and kept as text.
* YAML (and JSON): ``group: {hosts: ..., vars: ..., children: ...}``,
  recursively, with the same host ranges; ``!vault`` values are kept as
  ansible-inventory prints them and never decrypted; aliases that expand
  beyond MAX_YAML_NODES are refused.
* A directory of such files, in sorted order, skipping what Ansible skips.
* ``group_vars/`` and ``host_vars/`` beside the file (inside a directory),
  with Ansible's precedence, and ``ansible_group_priority``.
* Connection variables as Ansible's ssh plugin reads them (``ansible_ssh_*``
  beat the modern names); a host opsq cannot reach (winrm, docker, a vaulted
  ``ansible_user``...) loads with the reason as its ``problem``:
  Inventory.select() lists it, Inventory.resolve() (what a job runs on)
  refuses it.
* Patterns: ``all``/``*``, host and group names, globs, ``~regex`` (matched
  from the start, in RE2: no backreferences or lookaround, and linear time
  whatever the regex), unions (``:`` or ``,``; with a "," only ","), ``&``
  intersections, ``!`` exclusions, ``[i]``/``[i:j]`` subscripts, in
  Ansible's host order; ``localhost``, ``127.0.0.1`` and ``::1`` are implicit
  local hosts, named by the first such term (also in the built-in inventory,
  whose "localhost" is all there is without an inventory file).  As in
  Ansible, globs and regexes also see the group names "all" and "ungrouped".
  A pattern is at most MAX_PATTERN_CHARS long and a regex at most
  MAX_REGEX_CHARS, since patterns may come from console users.

Not supported: dynamic inventory scripts and plugins, vault-encrypted files,
vars plugins, Ansible's ``[x-y]`` subscripts (``web0[1-3]`` is a glob here).
Where Ansible warns and goes on (an unknown name, an unparsable file in a
directory) opsq refuses.

Modules, each importing only those listed before it:

* ``hosts``: Host, and turning Ansible variables into one.
* ``ranges``: host ranges and the ``host:port`` shorthand.
* ``builder``: group nesting, host order and variable precedence.
* ``ini``, ``yaml_json``: the two file formats.
* ``vars_files``: ``group_vars/`` and ``host_vars/``.
* ``patterns``: host pattern syntax.
* ``inventory``: Inventory (loading files and directories, the implicit
  localhost, select() to list and resolve() to run).
"""

from __future__ import annotations

from opsq.inventory.hosts import (
    ADDRESS_VARS,
    ALL_GROUP,
    CONNECTION_LOCAL,
    CONNECTION_SSH,
    CONNECTION_VAR,
    DEFAULT_SSH_PORT,
    KEY_FILE_VARS,
    LOCAL_CONNECTION_ALIASES,
    MAX_PORT,
    MIN_PORT,
    PORT_VARS,
    SSH_CONNECTION_ALIASES,
    UNGROUPED_GROUP,
    USER_VARS,
    Host,
)
from opsq.inventory.ini import (
    INI_COMMENT_PREFIXES,
    INI_DEFAULT_SECTION_KIND,
    INI_SECTION_KINDS,
    INI_SUFFIXES,
)
from opsq.inventory.inventory import (
    IMPLICIT_HOST,
    IMPLICIT_SOURCE,
    INVENTORY_IGNORE_NAMES,
    INVENTORY_IGNORE_SUFFIXES,
    LOCALHOST_NAMES,
    MEMORY_SOURCE,
    NOT_FOUND_HINT,
    Inventory,
    load_inventory,
)
from opsq.inventory.patterns import (
    GLOB_CHARS,
    KNOWN_HOSTS_HINT,
    MAX_PATTERN_CHARS,
    MAX_REGEX_CHARS,
    MAX_REGEX_MEMORY_BYTES,
    PATTERN_ALL,
    PATTERN_EXCLUDE,
    PATTERN_INTERSECT,
    PATTERN_REGEX_PREFIX,
    PATTERN_SEPARATORS,
)
from opsq.inventory.ranges import MAX_RANGE_HOSTS, expand_host_range
from opsq.inventory.vars_files import GROUP_VARS_DIR, HOST_VARS_DIR, VARS_FILE_EXTENSIONS
from opsq.inventory.yaml_json import (
    JSON_SUFFIXES,
    MAX_VAR_DEPTH,
    MAX_YAML_NODES,
    YAML_GROUP_KEYS,
    YAML_SUFFIXES,
)

__all__ = [
    "ADDRESS_VARS",
    "ALL_GROUP",
    "CONNECTION_LOCAL",
    "CONNECTION_SSH",
    "CONNECTION_VAR",
    "DEFAULT_SSH_PORT",
    "GLOB_CHARS",
    "GROUP_VARS_DIR",
    "HOST_VARS_DIR",
    "IMPLICIT_HOST",
    "IMPLICIT_SOURCE",
    "INI_COMMENT_PREFIXES",
    "INI_DEFAULT_SECTION_KIND",
    "INI_SECTION_KINDS",
    "INI_SUFFIXES",
    "INVENTORY_IGNORE_NAMES",
    "INVENTORY_IGNORE_SUFFIXES",
    "JSON_SUFFIXES",
    "KEY_FILE_VARS",
    "KNOWN_HOSTS_HINT",
    "LOCALHOST_NAMES",
    "LOCAL_CONNECTION_ALIASES",
    "MAX_PATTERN_CHARS",
    "MAX_PORT",
    "MAX_RANGE_HOSTS",
    "MAX_REGEX_CHARS",
    "MAX_REGEX_MEMORY_BYTES",
    "MAX_VAR_DEPTH",
    "MAX_YAML_NODES",
    "MEMORY_SOURCE",
    "MIN_PORT",
    "NOT_FOUND_HINT",
    "PATTERN_ALL",
    "PATTERN_EXCLUDE",
    "PATTERN_INTERSECT",
    "PATTERN_REGEX_PREFIX",
    "PATTERN_SEPARATORS",
    "PORT_VARS",
    "SSH_CONNECTION_ALIASES",
    "UNGROUPED_GROUP",
    "USER_VARS",
    "VARS_FILE_EXTENSIONS",
    "YAML_GROUP_KEYS",
    "YAML_SUFFIXES",
    "Host",
    "Inventory",
    "expand_host_range",
    "load_inventory",
]
