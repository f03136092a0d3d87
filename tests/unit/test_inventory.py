"""Unit tests for opsq.inventory: Ansible INI/YAML inventories and host patterns.

Pure unit tests: every inventory is a file written under tmp_path, nothing else.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from opsq.errors import InventoryError, PatternError
from opsq.inventory import (
    DEFAULT_SSH_PORT,
    MAX_RANGE_HOSTS,
    Host,
    Inventory,
    expand_host_range,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, name: str = "hosts.ini") -> Inventory:
    return Inventory.load(write(tmp_path, name, text))


def names(hosts: list[Host]) -> list[str]:
    return [host.name for host in hosts]


def load_error(tmp_path: Path, text: str, name: str = "hosts.ini") -> tuple[str, Path]:
    path = write(tmp_path, name, text)
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    return str(info.value), path


# ---------------------------------------------------------------------------
# INI

INI = """
    # a comment
    ; another comment
    lonely.example.com
    [web]
    web[01:03].example.com ansible_user=deploy
    [db]
    db1 ansible_host=10.0.0.5 ansible_port=2200
    db2:2222
    [prod:children]
    web
    db
    [prod:vars]
    env=production
    [web:vars]
    http_port=8080
"""


def test_ini_hosts_in_file_order(tmp_path: Path) -> None:
    inv = load(tmp_path, INI)
    assert list(inv.hosts) == [
        "lonely.example.com",
        "web01.example.com",
        "web02.example.com",
        "web03.example.com",
        "db1",
        "db2",
    ]
    assert inv.source == str(tmp_path / "hosts.ini")


def test_ini_groups_are_transitive_and_include_all_and_ungrouped(tmp_path: Path) -> None:
    inv = load(tmp_path, INI)
    web = {"web01.example.com", "web02.example.com", "web03.example.com"}
    assert inv.groups["web"] == web
    assert inv.groups["db"] == {"db1", "db2"}
    assert inv.groups["prod"] == web | {"db1", "db2"}
    assert inv.groups["ungrouped"] == {"lonely.example.com"}
    assert inv.groups["all"] == set(inv.hosts)
    assert inv.hosts["db1"].groups == ("all", "db", "prod")
    assert inv.hosts["lonely.example.com"].groups == ("all", "ungrouped")


def test_ini_group_vars_and_host_vars(tmp_path: Path) -> None:
    inv = load(tmp_path, INI)
    web01 = inv.hosts["web01.example.com"]
    assert web01.vars == {"env": "production", "http_port": "8080", "ansible_user": "deploy"}
    assert web01.user == "deploy"
    assert inv.hosts["db1"].vars == {
        "env": "production",
        "ansible_host": "10.0.0.5",
        "ansible_port": 2200,
    }
    assert inv.hosts["lonely.example.com"].vars == {}


def test_ini_connection_fields(tmp_path: Path) -> None:
    inv = load(tmp_path, INI)
    db1, db2 = inv.hosts["db1"], inv.hosts["db2"]
    assert (db1.address, db1.port, db1.user, db1.connection) == ("10.0.0.5", 2200, None, "ssh")
    assert (db2.address, db2.port) == ("db2", 2222)
    assert db2.vars == {"env": "production", "ansible_port": 2222}
    lonely = inv.hosts["lonely.example.com"]
    assert (lonely.address, lonely.port, lonely.key_file) == (
        "lonely.example.com",
        DEFAULT_SSH_PORT,
        None,
    )


def test_ini_quoted_values_and_inline_comments(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [web]
        web1 motd="hello world" note='single quoted' secret=pass#word  # trailing comment
        [web:vars]
        greeting = "hi there"   # comment after a quoted value
        plain=several words here
        empty=
        """,
    )
    assert inv.hosts["web1"].vars == {
        "greeting": "hi there",
        "plain": "several words here",
        "empty": "",
        "motd": "hello world",
        "note": "single quoted",
        "secret": "pass",  # as Ansible (shlex with comments): "#" ends the line even here
    }


def test_ini_explicit_ansible_port_beats_host_port_shorthand(tmp_path: Path) -> None:
    inv = load(tmp_path, "web1:2222 ansible_port=2300\nweb2:2400\n")
    assert [(h.name, h.port) for h in inv.hosts.values()] == [("web1", 2300), ("web2", 2400)]


def test_ini_range_with_port(tmp_path: Path) -> None:
    inv = load(tmp_path, "[web]\nweb[1:3]:2201\n")
    assert [(h.name, h.port) for h in inv.hosts.values()] == [
        ("web1", 2201),
        ("web2", 2201),
        ("web3", 2201),
    ]


def test_ini_host_listed_twice_merges_vars_and_groups(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        [web]
        app1 a=1 b=1
        [api]
        app1 b=2
        """,
    )
    assert list(inv.hosts) == ["app1"]
    assert inv.hosts["app1"].groups == ("all", "api", "web")
    assert inv.hosts["app1"].vars == {"a": "1", "b": "2"}


def test_ini_hosts_in_all_section_are_ungrouped(tmp_path: Path) -> None:
    inv = load(tmp_path, "[all]\nsolo\n[ungrouped]\nboth\n[web]\nboth\n")
    assert inv.groups["ungrouped"] == {"solo"}
    assert inv.hosts["both"].groups == ("all", "web")


def test_ini_all_vars_apply_to_every_host(tmp_path: Path) -> None:
    inv = load(tmp_path, "a\n[web]\nb\n[all:vars]\nansible_user=ops\n")
    assert [h.user for h in inv.hosts.values()] == ["ops", "ops"]


def test_ini_undefined_child_group_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[web]\nweb1\n[prod:children]\nweb\nnever_defined\n")
    assert message == (
        f"{path}:5: section [prod:children] names group 'never_defined', which is "
        "declared nowhere; add a [never_defined] section, or fix the group name"
    )


def test_ini_child_group_declared_later_is_accepted(tmp_path: Path) -> None:
    inv = load(tmp_path, "[prod:children]\nweb\n[web]\nweb1\n")
    assert inv.groups["prod"] == {"web1"}


def test_ini_file_with_cfg_and_no_extension_is_ini(tmp_path: Path) -> None:
    assert list(load(tmp_path, "[web]\nweb1\n", name="inv.cfg").hosts) == ["web1"]
    assert list(load(tmp_path, "[web]\nweb2\n", name="hosts").hosts) == ["web2"]
    assert list(load(tmp_path, "web3 a=1\n", name="hosts.prod").hosts) == ["web3"]


# ---------------------------------------------------------------------------
# Connection variables


def test_connection_variables(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        a ansible_host=10.1.1.1 ansible_port=2022 ansible_user=root
        a ansible_ssh_private_key_file=~/.ssh/id_a
        b ansible_private_key_file=/keys/b
        c ansible_connection=local
        d ansible_connection=smart
        e ansible_connection=paramiko
        f ansible_connection=ssh
        """,
    )
    a = inv.hosts["a"]
    assert (a.address, a.port, a.user) == ("10.1.1.1", 2022, "root")
    assert a.key_file == os.path.expanduser("~/.ssh/id_a")
    assert not a.key_file.startswith("~")
    assert inv.hosts["b"].key_file == "/keys/b"
    assert [h.connection for h in inv.hosts.values()] == [
        "ssh",
        "ssh",
        "local",
        "ssh",
        "ssh",
        "ssh",
    ]


def test_ssh_private_key_file_wins_over_private_key_file(tmp_path: Path) -> None:
    inv = load(tmp_path, "a ansible_private_key_file=/k/old ansible_ssh_private_key_file=/k/new\n")
    assert inv.hosts["a"].key_file == "/k/new"


@pytest.mark.parametrize("connection", ["winrm", "network_cli", "docker"])
def test_unsupported_connection_is_an_error_only_when_targeted(
    tmp_path: Path, connection: str
) -> None:
    path = write(tmp_path, "hosts.ini", f"[win]\nbox1 ansible_connection={connection}\n"
                                        "[linux]\nweb1\n")
    inv = Inventory.load(path)
    assert names(inv.resolve("linux")) == ["web1"]
    assert names(inv.resolve("all:!win")) == ["web1"]
    for pattern in ("win", "all", "box1"):
        with pytest.raises(InventoryError) as info:
            inv.resolve(pattern)
        message = str(info.value)
        assert str(path) in message
        assert "'box1'" in message
        assert f"ansible_connection {connection!r} is not supported" in message


@pytest.mark.parametrize("connection", ["winrm", "network_cli", "docker"])
def test_unsupported_connection_is_listed_with_its_problem(
    tmp_path: Path, connection: str
) -> None:
    path = write(tmp_path, "hosts.ini", f"[win]\nbox1 ansible_connection={connection}\n"
                                        "box2 ansible_connection=winrm\n[linux]\nweb1\n")
    inv = Inventory.load(path)
    listed = inv.select("all")
    assert names(listed) == ["box1", "box2", "web1"]
    box1, box2, web1 = listed
    assert box1.connection == connection
    assert box1.problem is not None and box1.problem.startswith(f"{path}: host 'box1': ")
    assert f"ansible_connection {connection!r} is not supported" in box1.problem
    assert box1.problem == inv.hosts["box1"].problem == inv.unusable["box1"]
    assert web1.problem is None
    with pytest.raises(InventoryError) as info:
        inv.resolve("all")  # what a job does: refused, naming the first such host
    assert str(info.value) == box1.problem + " (and 1 more such host(s))"
    assert inv.select("linux") == inv.resolve("linux") == [web1]
    with pytest.raises(PatternError, match="unknown host or group 'nope'"):
        inv.select("win:nope")  # listing still refuses what resolve refuses otherwise
    assert "problem" not in box1.to_dict()


def test_problem_is_set_for_hosts_of_an_inventory_built_in_memory() -> None:
    box = Host(name="box", address="box", connection="winrm")
    inv = Inventory({"box": box}, unusable={"box": "box: winrm is not supported"})
    (listed,) = inv.select("box")
    assert listed.problem == "box: winrm is not supported"
    assert listed == box  # the problem is derived, and left out of comparisons
    with pytest.raises(InventoryError, match="winrm is not supported"):
        inv.resolve("all")


@pytest.mark.parametrize("value", ["abc", "22x", "0", "70000"])
def test_bad_ansible_port_names_host_and_value(tmp_path: Path, value: str) -> None:
    message, path = load_error(tmp_path, f"[web]\nweb7 ansible_port={value}\n")
    assert str(path) in message
    assert "'web7'" in message
    assert repr(value) in message


def test_bad_ansible_port_in_group_vars_names_the_host(tmp_path: Path) -> None:
    message, _ = load_error(tmp_path, "[web]\nweb1\n[web:vars]\nansible_port=ssh\n")
    assert "host 'web1'" in message
    assert "'ssh'" in message


def test_bad_port_in_host_shorthand(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[web]\nweb1:http\n")
    assert f"{path}:2:" in message
    assert "'http'" in message


# ---------------------------------------------------------------------------
# YAML

YAML = """
    all:
      vars:
        v: all
        ntp: pool.ntp.org
      hosts:
        bastion.example.com:
          ansible_port: 2222
      children:
        prod:
          vars:
            v: prod
            env: production
          children:
            web:
              vars:
                v: web
              hosts:
                web[1:2]:
                web3:
                  v: host
                  ansible_host: 192.0.2.3
            db:
              hosts:
                db1:
                  ansible_user: postgres
        zeta:
          vars: {v: zeta, z: 1}
          hosts:
            web1:
            both:
        alpha:
          vars: {v: alpha, a: 1}
          hosts:
            both:
"""


def test_yaml_hosts_and_groups(tmp_path: Path) -> None:
    inv = load(tmp_path, YAML, name="inv.yml")
    assert list(inv.hosts) == ["bastion.example.com", "web1", "web2", "web3", "db1", "both"]
    assert inv.groups["prod"] == {"web1", "web2", "web3", "db1"}
    assert inv.groups["web"] == {"web1", "web2", "web3"}
    assert inv.groups["ungrouped"] == {"bastion.example.com"}
    assert inv.groups["all"] == set(inv.hosts)
    assert inv.hosts["web1"].groups == ("all", "prod", "web", "zeta")


def test_yaml_var_precedence(tmp_path: Path) -> None:
    inv = load(tmp_path, YAML, name="inv.yaml")
    # all < prod (depth 1) < web (depth 2) < host vars
    assert inv.hosts["web2"].vars == {
        "v": "web",
        "ntp": "pool.ntp.org",
        "env": "production",
    }
    assert inv.hosts["web3"].vars["v"] == "host"
    assert inv.hosts["db1"].vars["v"] == "prod"
    # web (depth 2) beats zeta (depth 1) even though zeta comes later in the file
    assert inv.hosts["web1"].vars["v"] == "web"
    assert inv.hosts["web1"].vars["z"] == 1
    # equal depth: alphabetical by group name, so zeta beats alpha
    assert inv.hosts["both"].vars == {"v": "zeta", "ntp": "pool.ntp.org", "a": 1, "z": 1}


def test_yaml_connection_fields(tmp_path: Path) -> None:
    inv = load(tmp_path, YAML, name="inv.yml")
    assert inv.hosts["bastion.example.com"].port == 2222
    assert inv.hosts["web3"].address == "192.0.2.3"
    assert inv.hosts["db1"].user == "postgres"
    assert inv.hosts["web1"].address == "web1"


def test_yaml_non_all_top_level_groups_and_host_port(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        web:
          hosts:
            "web[a:c]:2200":
        db:
          hosts:
            db1: {ansible_connection: local}
          children:
            replicas:
        """,
        name="inv.yml",
    )
    assert [(h.name, h.port) for h in inv.hosts.values()] == [
        ("weba", 2200),
        ("webb", 2200),
        ("webc", 2200),
        ("db1", 22),
    ]
    assert inv.hosts["db1"].connection == "local"
    assert inv.groups["replicas"] == set()
    assert inv.groups["ungrouped"] == set()


def test_yaml_group_defined_in_two_places_is_merged(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        all:
          children:
            prod:
              children:
                web:
            web:
              hosts:
                web1:
              vars:
                role: web
        """,
        name="inv.yml",
    )
    assert inv.groups["prod"] == {"web1"}
    assert inv.hosts["web1"].groups == ("all", "prod", "web")
    assert inv.hosts["web1"].vars == {"role": "web"}


def test_yaml_values_become_json_types(tmp_path: Path) -> None:
    inv = load(
        tmp_path,
        """
        all:
          hosts:
            h1:
              since: 2024-01-31
              ports: [80, 443]
              nested: {1: one, flag: true}
        """,
        name="inv.yml",
    )
    assert inv.hosts["h1"].vars == {
        "since": "2024-01-31",
        "ports": [80, 443],
        "nested": {"1": "one", "flag": True},
    }
    json.dumps(inv.hosts["h1"].to_dict())


def test_host_vars_are_not_shared_between_hosts(tmp_path: Path) -> None:
    inv = load(tmp_path, "all:\n  vars:\n    pkgs: [a]\n  hosts:\n    h1:\n    h2:\n", name="i.yml")
    inv.hosts["h1"].vars["pkgs"].append("b")
    assert inv.hosts["h2"].vars["pkgs"] == ["a"]


def test_json_inventory(tmp_path: Path) -> None:
    data = {"all": {"children": {"web": {"hosts": {"web1": {"ansible_port": "2201"}}}}}}
    inv = load(tmp_path, json.dumps(data), name="inv.json")
    assert list(inv.hosts) == ["web1"]
    assert inv.hosts["web1"].port == 2201
    assert inv.hosts["web1"].vars == {"ansible_port": 2201}


def test_unknown_extension_sniffs_yaml(tmp_path: Path) -> None:
    inv = load(tmp_path, "all:\n  hosts:\n    y1:\n", name="inventory.prod")
    assert list(inv.hosts) == ["y1"]
    inv = load(tmp_path, "web:\n  hosts:\n    y2:\n", name="hosts")
    assert list(inv.hosts) == ["y2"]


# ---------------------------------------------------------------------------
# Host ranges


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web1", ["web1"]),
        ("web[01:03].example.com", ["web01.example.com", "web02.example.com", "web03.example.com"]),
        ("web[8:10]", ["web8", "web9", "web10"]),
        ("web[08:10]", ["web08", "web09", "web10"]),
        ("db[a:c]", ["dba", "dbb", "dbc"]),
        ("db[X:Z]", ["dbX", "dbY", "dbZ"]),
        ("db[a:e:2]", ["dba", "dbc", "dbe"]),
        ("n[0:10:2]", ["n0", "n2", "n4", "n6", "n8", "n10"]),
        ("n[00:04:2]", ["n00", "n02", "n04"]),
        ("r[1:2]-[a:b]", ["r1-a", "r1-b", "r2-a", "r2-b"]),
        ("h[:2]", ["h0", "h1", "h2"]),
    ],
)
def test_expand_host_range(name: str, expected: list[str]) -> None:
    assert expand_host_range(name) == expected


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("web[05:01]", "start '05' is after end '01'"),
        ("web[a:3]", "both be numbers or both single letters"),
        ("web[a:C]", "same case"),
        ("web[01:100]", "same number of digits"),
        ("web[1:3", "without closing ']'"),
        ("web1:3]", "']' without '['"),
        ("web[1]", "expected [start:end]"),
        ("web[1:5:0]", "step '0'"),
        ("web[1:]", "no end"),
        (f"web[0:{MAX_RANGE_HOSTS}]", "more than"),
    ],
)
def test_expand_host_range_errors(name: str, fragment: str) -> None:
    with pytest.raises(InventoryError) as info:
        expand_host_range(name)
    assert fragment in str(info.value)


def test_invalid_range_in_ini_names_file_and_line(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[web]\nweb1\nweb[05:01]\n")
    assert message.startswith(f"{path}:3: ")
    assert "'web[05:01]'" in message


def test_invalid_range_in_yaml_names_file(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "all:\n  hosts:\n    web[a:3]:\n", name="i.yml")
    assert message.startswith(f"{path}:")
    assert "'web[a:3]'" in message


# ---------------------------------------------------------------------------
# Malformed inventories


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[web]\nweb1\n[db\ndb1\n", 3, "unterminated section header '[db'"),
        ("[web]\nweb1\n[web:vars]\nhttp_port 8080\n", 4, "expected key=value"),
        ("[web:stuff]\nweb1\n", 1, "unknown type 'stuff'"),
        ("[web] extra\n", 1, "invalid section header"),
        ("[web]\nweb1 ansible_user\n", 2, "expected key=value after host 'web1'"),
        ("[web]\nansible_user=root\n", 2, "expected a host name"),
        ("[web]\nweb1 motd='oops\n", 2, "No closing quotation"),
        ("[web]\nweb1\n[prod:children]\nweb db\n", 4, "expected a group name"),
        ("[web]\nweb1\n\n[wbe:vars]\nx=1\n", 4, "section [wbe:vars]"),
    ],
)
def test_ini_errors_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    message, path = load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line}: ")
    assert fragment in message


def test_ini_cycle_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(
        tmp_path, "[a:children]\nb\n[b:children]\nc\n[c:children]\na\n[c]\nh1\n"
    )
    assert str(path) in message
    assert "its own ancestor" in message
    assert "a -> b -> c -> a" in message


def test_ini_group_that_is_its_own_child_is_an_error(tmp_path: Path) -> None:
    message, _ = load_error(tmp_path, "[a]\nh1\n[a:children]\na\n")
    assert "group 'a' is its own ancestor" in message


def test_ini_all_as_a_child_is_a_cycle(tmp_path: Path) -> None:
    message, _ = load_error(tmp_path, "[web]\nh1\n[web:children]\nall\n")
    assert "its own ancestor" in message


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    message, path = load_error(
        tmp_path, "all:\n  hosts:\n    web1:\n   bad: [unclosed\n", name="i.yml"
    )
    assert message.startswith(f"{path}:")
    assert "YAML syntax error" in message
    line = int(message[len(f"{path}:") :].split(":")[0])
    assert line in (4, 5)


def test_yaml_top_level_not_a_mapping(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "- web1\n- web2\n", name="i.yml")
    assert str(path) in message
    assert "top level must be a mapping" in message
    assert "got a list" in message


def test_yaml_hosts_list_is_an_error_with_line(tmp_path: Path) -> None:
    message, path = load_error(
        tmp_path, "all:\n  children:\n    web:\n      hosts:\n        - web1\n", name="i.yml"
    )
    assert message.startswith(f"{path}:5: ")
    assert "'hosts' of group 'web' must be a mapping" in message
    assert "got a list" in message


def test_yaml_unknown_group_key_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "all:\n  host:\n    web1:\n", name="i.yml")
    assert message.startswith(f"{path}:2: ")
    assert "unexpected key(s) host" in message


def test_yaml_host_vars_not_a_mapping(tmp_path: Path) -> None:
    message, _ = load_error(tmp_path, "all:\n  hosts:\n    web1: 10.0.0.1\n", name="i.yml")
    assert "variables of host 'web1' in group 'all' must be a mapping" in message


def test_yaml_cycle_across_definitions_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(
        tmp_path,
        """
        all:
          children:
            a:
              children:
                b:
            b:
              children:
                a:
        """,
        name="i.yml",
    )
    assert str(path) in message
    assert "its own ancestor" in message


def test_yaml_nested_self_child_is_an_error(tmp_path: Path) -> None:
    message, _ = load_error(
        tmp_path, "all:\n  children:\n    a:\n      children:\n        a:\n", name="i.yml"
    )
    assert "group 'a' is its own ancestor (cycle a -> a)" in message


def test_yaml_bad_port_names_host_and_value(tmp_path: Path) -> None:
    message, path = load_error(
        tmp_path, "all:\n  hosts:\n    web1:\n      ansible_port: twenty\n", name="i.yml"
    )
    assert str(path) in message
    assert "'web1'" in message
    assert "'twenty'" in message


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, '{\n  "all": {\n    "hosts": {,}\n', name="i.json")
    assert message.startswith(f"{path}:3: JSON syntax error")


def test_dynamic_inventory_json_is_rejected_with_a_hint(tmp_path: Path) -> None:
    text = json.dumps({"_meta": {"hostvars": {}}, "all": {"children": ["ungrouped"]}})
    message, _ = load_error(tmp_path, text, name="i.json")
    assert "--list --yaml" in message


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("hosts.ini", ""),
        ("hosts.ini", "\n   \n"),
        ("hosts.ini", "# only a comment\n; and another\n"),
        ("hosts.yml", ""),
        ("hosts.yml", "# only a comment\n"),
        ("hosts", "\n"),
    ],
)
def test_empty_inventory(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    assert str(info.value) == f"inventory {path} is empty"


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ini"
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    assert str(info.value) == f"inventory file not found: {path} (set OPSQ_INVENTORY or pass -i)"


# ---------------------------------------------------------------------------
# Implicit inventory and from_path_or_default


def test_implicit_inventory() -> None:
    inv = Inventory.implicit()
    assert inv.source == "<implicit localhost>"
    assert list(inv.hosts) == ["localhost"]
    local = inv.hosts["localhost"]
    assert (local.address, local.port, local.user, local.key_file, local.connection) == (
        "localhost",
        22,
        None,
        None,
        "local",
    )
    assert local.groups == ("all", "ungrouped")
    assert inv.groups == {"all": {"localhost"}, "ungrouped": {"localhost"}}
    assert names(inv.resolve("all")) == ["localhost"]
    assert names(inv.resolve("localhost")) == ["localhost"]


def test_from_path_or_default(tmp_path: Path) -> None:
    default = tmp_path / "config" / "inventory.yml"
    assert Inventory.from_path_or_default(None).source == "<implicit localhost>"
    assert (
        Inventory.from_path_or_default(str(default), default_path=str(default)).source
        == "<implicit localhost>"
    )
    explicit = tmp_path / "typo.yml"
    with pytest.raises(InventoryError) as info:
        Inventory.from_path_or_default(str(explicit), default_path=str(default))
    assert str(info.value) == (
        f"inventory file not found: {explicit} (set OPSQ_INVENTORY or pass -i)"
    )
    with pytest.raises(InventoryError):
        Inventory.from_path_or_default(str(explicit))
    real = write(tmp_path, "real.ini", "[web]\nweb1\n")
    inv = Inventory.from_path_or_default(str(real), default_path=str(default))
    assert list(inv.hosts) == ["web1"]
    assert inv.source == str(real)


def test_existing_default_path_is_loaded(tmp_path: Path) -> None:
    default = write(tmp_path, "inventory.yml", "all:\n  hosts:\n    d1:\n")
    inv = Inventory.from_path_or_default(str(default), default_path=str(default))
    assert list(inv.hosts) == ["d1"]


# ---------------------------------------------------------------------------
# Host serialisation


def test_host_round_trips_through_json(tmp_path: Path) -> None:
    inv = load(tmp_path, YAML, name="inv.yml")
    for host in inv.hosts.values():
        record = json.loads(json.dumps(host.to_dict()))
        assert Host.from_dict(record) == host
    assert inv.hosts["web3"].to_dict() == {
        "name": "web3",
        "address": "192.0.2.3",
        "port": 22,
        "user": None,
        "key_file": None,
        "connection": "ssh",
        "groups": ["all", "prod", "web"],
        "vars": {
            "v": "host",
            "ntp": "pool.ntp.org",
            "env": "production",
            "ansible_host": "192.0.2.3",
        },
    }


def test_host_is_hashable_and_to_dict_copies_vars() -> None:
    host = Host(name="h", address="h", vars={"l": [1]})
    assert {host: 1}[host] == 1
    host.to_dict()["vars"]["l"].append(2)
    assert host.vars == {"l": [1]}


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"address": "x"}, "no valid 'name'"),
        ({"name": "h", "port": "ssh"}, "'ssh'"),
        ({"name": "h", "connection": "winrm"}, "'winrm'"),
        ({"name": "h", "groups": "web"}, "'groups'"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_host_from_dict_rejects_corrupt_records(record: object, fragment: str) -> None:
    with pytest.raises(InventoryError) as info:
        Host.from_dict(record)  # type: ignore[arg-type]
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------
# Patterns

FLEET = """
    [web]
    web1
    web2
    web3
    [db]
    db1
    db2
    [prod]
    web1
    web2
    db1
    [staging]
    web3
    db2
    [lb]
    lb.example.com
    [empty]
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Inventory:
    return load(tmp_path, FLEET)


EVERYONE = ["web1", "web2", "web3", "db1", "db2", "lb.example.com"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("all", EVERYONE),
        ("*", EVERYONE),
        ("web", ["web1", "web2", "web3"]),
        ("db2", ["db2"]),
        ("lb.example.com", ["lb.example.com"]),
        ("web*", ["web1", "web2", "web3"]),
        ("*.example.com", ["lb.example.com"]),
        ("web[1-2]", ["web1", "web2"]),
        ("?b", ["db1", "db2", "lb.example.com"]),  # globs match group names db and lb
        ("st*", ["web3", "db2"]),  # a glob matching a group name yields its hosts
        ("web:db", ["web1", "web2", "web3", "db1", "db2"]),
        ("db,web", ["db1", "db2", "web1", "web2", "web3"]),  # union terms in order
        (" db , lb ", ["db1", "db2", "lb.example.com"]),
        ("web:&prod", ["web1", "web2"]),
        ("web:!web3", ["web1", "web2"]),
        ("!web3:web", ["web1", "web2"]),
        ("&prod:web:db", ["web1", "web2", "db1"]),
        ("web:db:&prod:!web2", ["web1", "db1"]),
        ("web:db:&prod:&staging", []),
        ("!web", ["db1", "db2", "lb.example.com"]),
        ("!web:!db", ["lb.example.com"]),
        ("&prod", ["web1", "web2", "db1"]),
        ("~^web[12]$", ["web1", "web2"]),
        ("~^st", ["web3", "db2"]),
        ("~lb", ["lb.example.com"]),
        ("~.*agin", ["web3", "db2"]),  # re.match: anchored at the start
        ("web[0]", ["web1"]),
        ("web[-1]", ["web3"]),
        ("web[1:2]", ["web2", "web3"]),
        ("web[1:]", ["web2", "web3"]),
        ("prod[0:1]:lb", ["web1", "web2", "lb.example.com"]),
        ("db2:web:db1:web1:prod", ["db2", "web1", "web2", "web3", "db1"]),
        ("empty:db1", ["db1"]),
    ],
)
def test_resolve(fleet: Inventory, pattern: str, expected: list[str]) -> None:
    if not expected:
        with pytest.raises(PatternError) as info:
            fleet.resolve(pattern)
        assert str(info.value).startswith(f"pattern {pattern!r} matches no host")
        return
    assert names(fleet.resolve(pattern)) == expected


def test_resolve_returns_host_objects(fleet: Inventory) -> None:
    hosts = fleet.resolve("db1")
    assert hosts == [fleet.hosts["db1"]]
    assert isinstance(hosts[0], Host)


def test_unknown_plain_term_is_an_error(fleet: Inventory) -> None:
    with pytest.raises(PatternError) as info:
        fleet.resolve("web:xyz")
    assert str(info.value) == (
        "unknown host or group 'xyz' in pattern 'web:xyz' (opsq hosts all lists the known hosts)"
    )


@pytest.mark.parametrize("pattern", ["web:!wbe3", "web:&prdo", "!wbe3"])
def test_unknown_name_in_exclusion_or_intersection_is_an_error(
    fleet: Inventory, pattern: str
) -> None:
    term = pattern.rsplit(":", 1)[-1].lstrip("!&")
    with pytest.raises(PatternError) as info:
        fleet.resolve(pattern)
    assert f"unknown host or group {term!r} in pattern {pattern!r}" in str(info.value)


@pytest.mark.parametrize("pattern", ["zz*", "web:!zz*", "~^zz", "web:&~nomatch"])
def test_glob_or_regex_matching_nothing_is_an_error(fleet: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError) as info:
        fleet.resolve(pattern)
    assert str(info.value).startswith(f"pattern {pattern!r} matches no host")


def test_empty_result_is_an_error(fleet: Inventory) -> None:
    with pytest.raises(PatternError) as info:
        fleet.resolve("web:&db")
    assert str(info.value) == (
        "pattern 'web:&db' matches no host (opsq hosts all lists the known hosts)"
    )


def test_known_empty_group_alone_matches_no_host(fleet: Inventory) -> None:
    with pytest.raises(PatternError, match="pattern 'empty' matches no host"):
        fleet.resolve("empty")


@pytest.mark.parametrize("pattern", ["", "   ", ":", " , ", " : "])
def test_empty_pattern_is_an_error(fleet: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError, match="empty host pattern"):
        fleet.resolve(pattern)


@pytest.mark.parametrize("pattern", ["web:!", "&", "web: ! "])
def test_operator_without_term_is_an_error(fleet: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError, match="nothing after"):
        fleet.resolve(pattern)


@pytest.mark.parametrize("pattern", ["web[", "web[0", "web]", "db:web[1:"])
def test_unbalanced_bracket_is_an_error_not_dropped(fleet: Inventory, pattern: str) -> None:
    # Ansible drops the stray bracket and selects the whole group.
    with pytest.raises(PatternError, match="unbalanced"):
        fleet.resolve(pattern)


def test_invalid_regex_is_an_error(fleet: Inventory) -> None:
    with pytest.raises(PatternError) as info:
        fleet.resolve("~web(")
    assert "invalid regular expression '~web('" in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("web[3]", "subscript [3]"),
        ("web[-4]", "subscript [-4]"),
        ("web[5:6]", "subscript [5:6]"),
        ("web[2:1]", "subscript [2:1]"),
    ],
)
def test_subscript_out_of_range_is_an_error(fleet: Inventory, pattern: str, fragment: str) -> None:
    with pytest.raises(PatternError) as info:
        fleet.resolve(pattern)
    assert fragment in str(info.value)
    assert "'web' has 3 host(s)" in str(info.value)


def test_subscript_on_unknown_group_is_an_error(fleet: Inventory) -> None:
    with pytest.raises(PatternError, match="unknown host or group 'nope'"):
        fleet.resolve("nope[0]")


def test_inventory_built_from_hosts_derives_groups() -> None:
    a = Host(name="a", address="10.0.0.1", groups=("all", "web"))
    b = Host(name="b", address="10.0.0.2", groups=("all", "ungrouped"))
    inv = Inventory({"a": a, "b": b})
    assert inv.groups == {"all": {"a", "b"}, "ungrouped": {"b"}, "web": {"a"}}
    assert names(inv.resolve("!web")) == ["b"]


# ---------------------------------------------------------------------------
# Agreement with Ansible: group_vars/, host_vars/, inventory directories


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


VARS_TREE = {
    "hosts.ini": """
        [web]
        web1 x=inline_host
        web2
        [prod:children]
        web
        [prod:vars]
        x=inline_prod
        y=inline_prod
        [web:vars]
        x=inline_web
        [all:vars]
        z=inline_all
    """,
    "group_vars/all.yml": "z: gv_all\nw: gv_all\n",
    "group_vars/prod": "y: gv_prod\nv: gv_prod\n",
    "group_vars/web/10-first.yml": "v: gv_web_first\n",
    "group_vars/web/20-second.yaml": "v: gv_web_second\n",
    "group_vars/web/30-ignored.txt": "v: never\n",
    "group_vars/web/40-backup.yml~": "v: never\n",
    "host_vars/web2.json": '{"x": "hv_json", "ansible_user": "deploy"}',
}


def test_group_vars_and_host_vars_beside_the_file(tmp_path: Path) -> None:
    write_tree(tmp_path, VARS_TREE)
    inv = Inventory.load(tmp_path / "hosts.ini")
    web1, web2 = inv.hosts["web1"].vars, inv.hosts["web2"].vars
    # Ansible's order: inline "all" < inline groups by depth < group_vars/all <
    # group_vars by depth < inline host < host_vars.
    assert (web1["z"], web1["w"]) == ("gv_all", "gv_all")
    assert web1["y"] == "gv_prod"  # a group_vars file beats inline group variables
    assert web1["v"] == "gv_web_second"  # child group's files, in sorted order
    assert web1["x"] == "inline_host"
    assert web2["x"] == "hv_json"  # host_vars beat inline and group variables
    assert inv.hosts["web2"].user == "deploy"


def test_inventory_directory_is_read_like_ansible(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "inv/b.yml": "all:\n  children:\n    web:\n      hosts:\n        web2:\n",
        "inv/a.ini": "[web]\nweb1\n",
        "inv/extra.ini": "[db]\ndb1\n",
        "inv/notes.txt": "[[[ not an inventory\n",
        "inv/ansible.cfg": "[defaults]\n",
        "inv/old.bak": "[web]\nghost1\n",
        "inv/hosts.orig": "[web]\nghost2\n",
        "inv/edit.ini~": "[web]\nghost3\n",
        "inv/.hidden": "[web]\nghost4\n",
        "inv/empty.ini": "",
        "inv/sub/more.ini": "[web]\nweb3\n",
        "inv/group_vars/web.yml": "ansible_user: webuser\n",
        "inv/host_vars/web1.yml": "ansible_port: 2201\n",
    })
    inv = Inventory.load(tmp_path / "inv")
    assert list(inv.hosts) == ["web1", "web2", "db1", "web3"]  # files in sorted order
    assert names(inv.resolve("web")) == ["web1", "web2", "web3"]
    assert (inv.hosts["web1"].user, inv.hosts["web1"].port) == ("webuser", 2201)
    assert inv.source == str(tmp_path / "inv")


def test_inventory_directory_without_inventory_files_is_an_error(tmp_path: Path) -> None:
    write_tree(tmp_path, {"inv/README.md": "hosts\n", "inv/group_vars/all.yml": "x: 1\n"})
    with pytest.raises(InventoryError, match="holds no inventory file"):
        Inventory.load(tmp_path / "inv")


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"group_vars/web.yml": "- a list\n"}, "must be a mapping"),
        ({"group_vars/web.yml": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"}, "ansible-vault"),
        ({"host_vars/web1.yml": "a: [\n"}, "YAML syntax error"),
    ],
)
def test_bad_vars_file_is_an_error_naming_it(
    tmp_path: Path, files: dict[str, str], fragment: str
) -> None:
    write_tree(tmp_path, {"hosts.ini": "[web]\nweb1\n", **files})
    with pytest.raises(InventoryError) as info:
        Inventory.load(tmp_path / "hosts.ini")
    assert str(tmp_path / next(iter(files))) in str(info.value)
    assert fragment in str(info.value)


# ---------------------------------------------------------------------------
# Agreement with Ansible: host order, names and patterns

NESTED = """
    [leaf]
    a1
    [mid]
    m1
    [top]
    t1
    a1
    [top:children]
    mid
    [mid:children]
    leaf
"""


def test_subscripts_follow_ansible_group_order(tmp_path: Path) -> None:
    inv = load(tmp_path, NESTED)
    # The group's own hosts first (t1, a1), then its children's, level by level.
    assert names(inv.resolve("top")) == ["t1", "a1", "m1"]
    assert names(inv.resolve("top[1]")) == ["a1"]
    assert names(inv.resolve("top[2]")) == ["m1"]
    assert names(inv.resolve("mid[1]")) == ["a1"]


def test_union_terms_keep_their_order(tmp_path: Path) -> None:
    inv = load(tmp_path, "[web]\nweb1\n[db]\ndb1\n")
    assert names(inv.resolve("db:web")) == ["db1", "web1"]


def test_legacy_connection_variables_win_as_in_ansible(tmp_path: Path) -> None:
    inv = load(tmp_path, """
        [web]
        web1 ansible_host=10.0.0.1 ansible_ssh_host=10.0.0.2 ansible_port=1 ansible_ssh_port=2
        web2 ansible_user=hostuser
        [web1_only]
        web1 ansible_user=new ansible_ssh_user=old
        [web:vars]
        ansible_ssh_user=groupuser
    """)
    web1, web2 = inv.hosts["web1"], inv.hosts["web2"]
    assert (web1.address, web1.port, web1.user) == ("10.0.0.2", 2, "old")
    assert web2.user == "groupuser"


def test_regex_is_anchored_at_the_start(fleet: Inventory) -> None:
    assert names(fleet.resolve("~web")) == ["web1", "web2", "web3"]
    with pytest.raises(PatternError, match="matches no host"):
        fleet.resolve("~eb")


@pytest.mark.parametrize("pattern", ["~", "web:~", "web:!~"])
def test_empty_regex_is_an_error(fleet: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError) as info:
        fleet.resolve(pattern)
    assert str(info.value).startswith(f"empty regular expression '~' in pattern {pattern!r}")


def test_host_and_group_with_the_same_name_means_the_host(tmp_path: Path) -> None:
    inv = load(tmp_path, "[web]\nweb1\nweb2\n[other]\nweb\n")
    assert names(inv.resolve("web")) == ["web"]
    assert names(inv.resolve("web:web1")) == ["web", "web1"]


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1"])
def test_localhost_names_are_implicit_local_hosts(tmp_path: Path, name: str) -> None:
    inv = load(tmp_path, "[web]\nweb1\n[all:vars]\nopsq_timeout=30\n")
    (host,) = inv.resolve(name)
    assert (host.name, host.connection) == (name, "local")
    assert host.vars["opsq_timeout"] == "30"  # it gets the variables of "all"
    assert names(inv.resolve(f"web1,{name}")) == ["web1", name]
    assert names(inv.resolve("all")) == ["web1"]  # but is not in "all"


def test_listed_localhost_is_used_for_every_localhost_name(tmp_path: Path) -> None:
    inv = load(tmp_path, "[local]\nlocalhost ansible_port=2022\n")
    assert inv.resolve("127.0.0.1") == [inv.hosts["localhost"]]


def test_ipv6_hosts_as_in_ansible(tmp_path: Path) -> None:
    inv = load(tmp_path, """
        [web]
        2001:db8::20
        [2001:db8::31]:2222
        w1 ansible_host=2001:db8::1
    """)
    assert list(inv.hosts) == ["2001:db8::20", "2001:db8::31", "w1"]
    assert (inv.hosts["2001:db8::20"].address, inv.hosts["2001:db8::20"].port) == (
        "2001:db8::20", 22)
    assert inv.hosts["2001:db8::31"].port == 2222
    assert names(inv.resolve("2001:db8::20")) == ["2001:db8::20"]
    assert names(inv.resolve("2001:db8::31,w1")) == ["2001:db8::31", "w1"]


def test_name_with_colons_that_is_not_ipv6_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[web]\nweb:1:2\n")
    assert message.startswith(f"{path}:2: invalid host 'web:1:2'")
    assert "IPv6" in message


# ---------------------------------------------------------------------------
# Agreement with Ansible: what it refuses and what it accepts


def test_semicolon_comment_after_section_header_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[web] ; the web servers\nweb1\n")
    assert message.startswith(f"{path}:1: invalid section header")
    assert "'#'" in message
    assert names(load(tmp_path, "[web] # fine\nweb1\n").resolve("web")) == ["web1"]


def test_integer_yaml_host_name_is_an_error(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "all:\n  hosts:\n    123:\n", name="i.yml")
    assert str(path) in message
    assert "invalid host name 123" in message


def test_yaml_hosts_as_a_string_is_one_host(tmp_path: Path) -> None:
    inv = load(tmp_path, "web:\n  hosts: web1.example.com\n", name="i.yml")
    assert names(inv.resolve("web")) == ["web1.example.com"]


def test_float_variable_name_is_accepted(tmp_path: Path) -> None:
    inv = load(tmp_path, "all:\n  hosts:\n    h1:\n      1.5: x\n", name="i.yml")
    assert inv.hosts["h1"].vars == {"1.5": "x"}


VAULTED = """
    all:
      hosts:
        h1:
          db_password: !vault |
            $ANSIBLE_VAULT;1.1;AES256
            3132
        h2:
          ansible_user: !vault |
            $ANSIBLE_VAULT;1.1;AES256
            3334
"""


def test_vault_values_load_and_block_only_a_host_that_needs_them(tmp_path: Path) -> None:
    path = write(tmp_path, "i.yml", VAULTED)
    inv = Inventory.load(path)
    assert names(inv.resolve("h1")) == ["h1"]
    assert inv.hosts["h1"].vars["db_password"] == {
        "__ansible_vault": "$ANSIBLE_VAULT;1.1;AES256\n3132\n"
    }
    with pytest.raises(InventoryError) as info:
        inv.resolve("h2")
    assert str(info.value).startswith(f"{path}: host 'h2': ansible_user is vault-encrypted")
    (h2,) = inv.select("h2")
    assert h2.problem == str(info.value)
    assert inv.select("h1")[0].problem is None


def test_implicit_localhost_with_a_vaulted_connection_variable_is_listed_not_run(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "i.yml", """
        all:
          vars:
            ansible_user: !vault |
              $ANSIBLE_VAULT;1.1;AES256
              3334
          hosts:
            h1:
    """)
    inv = Inventory.load(path)
    (local,) = inv.select("127.0.0.1")
    assert (local.name, local.connection) == ("127.0.0.1", "local")
    assert local.problem == f"{path}: host '127.0.0.1': ansible_user is vault-encrypted, " \
        "which opsq cannot decrypt; set it in plain text for the hosts opsq runs on"
    with pytest.raises(InventoryError, match="ansible_user is vault-encrypted"):
        inv.resolve("h1:127.0.0.1")


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        prior = f"*a{level - 1}"
        levels.append(f"a{level}: &a{level} [{', '.join([prior] * 10)}]")
    body = "\n".join(f"      {line}" for line in levels)
    path = write(tmp_path, "bomb.yml", f"all:\n  hosts:\n    h1:\n{body}\n")
    started = time.monotonic()
    with pytest.raises(InventoryError) as info:
        Inventory.load(path)
    assert time.monotonic() - started < 5
    assert str(info.value).startswith(f"{path}: YAML aliases expand to more than")


def test_huge_host_range_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[web]\nweb[0:99999999]\n")
    assert message.startswith(f"{path}:2: invalid host range")
    assert f"more than {MAX_RANGE_HOSTS} hosts" in message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("opsq_timeout=abc", "opsq_timeout must be a number, not 'abc'"),
        ("opsq_timeout=nan", "opsq_timeout must be a finite number, not 'nan'"),
        ("opsq_timeout=inf", "opsq_timeout must be a finite number, not 'inf'"),
        ("opsq_timeout=0", "opsq_timeout must be above 0"),
        ("opsq_timeout=1e12", "opsq_timeout must be at most"),
        ("opsq_connect_timeout=-1", "opsq_connect_timeout must be above 0, not '-1'"),
        ("opsq_connect_timeout=inf", "opsq_connect_timeout must be a finite number"),
        ("opsq_connect_timeout=7200", "opsq_connect_timeout must be at most 3600"),
    ],
)
def test_bad_run_variables_are_refused_at_load(tmp_path: Path, line: str, fragment: str) -> None:
    message, path = load_error(tmp_path, f"[web]\nweb1 {line}\n")
    assert message.startswith(f"{path}: host 'web1': {fragment}")


def test_good_run_variables_are_accepted(tmp_path: Path) -> None:
    inv = load(tmp_path, "[web]\nweb1 opsq_timeout=90 opsq_connect_timeout=2.5\n")
    assert inv.hosts["web1"].run_record()["vars"] == {
        "opsq_timeout": "90", "opsq_connect_timeout": "2.5"
    }
