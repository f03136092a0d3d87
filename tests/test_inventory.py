"""Unit tests for opsq.inventory: Ansible INI/YAML inventories and host patterns.

Pure unit tests: every inventory is a file written under tmp_path, nothing else.
"""

from __future__ import annotations

import json
import os
import textwrap
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
        "secret": "pass#word",
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


def test_ini_undefined_child_group_is_an_empty_group(tmp_path: Path) -> None:
    inv = load(tmp_path, "[web]\nweb1\n[prod:children]\nweb\nnever_defined\n")
    assert inv.groups["never_defined"] == set()
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


def test_unsupported_connection_is_an_error_naming_the_host(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[win]\nbox1 ansible_connection=winrm\n")
    assert str(path) in message
    assert "'box1'" in message
    assert "'winrm'" in message


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
        ("db,web", ["web1", "web2", "web3", "db1", "db2"]),
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
        ("~example", ["lb.example.com"]),
        ("~agin", ["web3", "db2"]),  # re.search, not re.match, on group names
        ("web[0]", ["web1"]),
        ("web[-1]", ["web3"]),
        ("web[1:2]", ["web2", "web3"]),
        ("web[1:]", ["web2", "web3"]),
        ("prod[0:1]:lb", ["web1", "web2", "lb.example.com"]),
        ("db2:web:db1:web1:prod", ["web1", "web2", "web3", "db1", "db2"]),
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


@pytest.mark.parametrize("pattern", ["", "   ", ":", " , : "])
def test_empty_pattern_is_an_error(fleet: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError, match="empty host pattern"):
        fleet.resolve(pattern)


@pytest.mark.parametrize("pattern", ["web:!", "&", "web: ! "])
def test_operator_without_term_is_an_error(fleet: Inventory, pattern: str) -> None:
    with pytest.raises(PatternError, match="nothing after"):
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
