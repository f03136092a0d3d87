"""Read Ansible INI/YAML inventories and resolve Ansible host patterns.

Operators already describe their fleet in Ansible inventories, so opsq reads
those files rather than inventing a format of its own.  Ansible itself is GPL
and far larger than what we need, so this package re-implements a small subset:

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

Modules, each importing only those listed before it:

* ``hosts``: Host, and turning Ansible variables into one.
* ``ranges``: host ranges and the ``host:port`` shorthand.
* ``builder``: group nesting and variable precedence, shared by the parsers.
* ``ini``, ``yaml_json``: the two file formats.
* ``patterns``: host pattern syntax.
* ``inventory``: Inventory (loading, the implicit localhost, resolve()).
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
    MEMORY_SOURCE,
    NOT_FOUND_HINT,
    Inventory,
)
from opsq.inventory.patterns import (
    GLOB_CHARS,
    KNOWN_HOSTS_HINT,
    PATTERN_ALL,
    PATTERN_EXCLUDE,
    PATTERN_INTERSECT,
    PATTERN_REGEX_PREFIX,
    PATTERN_SEPARATORS,
)
from opsq.inventory.ranges import MAX_RANGE_HOSTS, expand_host_range
from opsq.inventory.yaml_json import (
    JSON_SUFFIXES,
    MAX_VAR_DEPTH,
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
    "IMPLICIT_HOST",
    "IMPLICIT_SOURCE",
    "INI_COMMENT_PREFIXES",
    "INI_DEFAULT_SECTION_KIND",
    "INI_SECTION_KINDS",
    "INI_SUFFIXES",
    "JSON_SUFFIXES",
    "KEY_FILE_VARS",
    "KNOWN_HOSTS_HINT",
    "LOCAL_CONNECTION_ALIASES",
    "MAX_PORT",
    "MAX_RANGE_HOSTS",
    "MAX_VAR_DEPTH",
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
    "YAML_GROUP_KEYS",
    "YAML_SUFFIXES",
    "Host",
    "Inventory",
    "expand_host_range",
]
