"""opsq's inventory reading and host patterns, checked against ansible-core itself.

For each small inventory below, one ansible-core subprocess answers every pattern
(hosts in order, and the address, port and user its ssh plugin would use, and a
few variables); opsq must give the same answer, or refuse where Ansible finds no
host.  ansible-core is GPL: it is only run here, never imported by opsq.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opsq.errors import InventoryError, PatternError
from opsq.inventory import DEFAULT_SSH_PORT, Inventory

pytest.importorskip("ansible")

#: Variables whose merged value is compared (written as strings in every case).
COMPARED_VARS = ("x", "y", "z")

PROBE = r"""
import json, sys
from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import connection_loader
from ansible.vars.manager import VariableManager
try:
    from ansible.parsing.vault import VaultSecretsContext
    VaultSecretsContext.initialize(VaultSecretsContext(secrets=[]))
except ImportError:
    pass

source, patterns, compared = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
loader = DataLoader()
try:
    inventory = InventoryManager(loader=loader, sources=[source])
except AnsibleError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit(0)
connection_loader.get("ssh", class_only=True)
answers = {}
for pattern in patterns:
    # A fresh inventory per pattern: Ansible names the implicit localhost after the
    # first pattern that asks for it, and keeps it for the rest of the run.
    inventory = InventoryManager(loader=loader, sources=[source])
    variables = VariableManager(loader=loader, inventory=inventory)
    rows = []
    for host in inventory.get_hosts(pattern):
        hostvars = variables.get_vars(host=host, include_hostvars=False)
        options = C.config.get_plugin_options("connection", "ssh", variables=hostvars)
        rows.append([host.name, str(options.get("host")), options.get("port"),
                     options.get("remote_user"),
                     {key: str(hostvars[key]) for key in compared if key in hostvars}])
    answers[pattern] = rows
print(json.dumps({"answers": answers}))
"""

# Each case: files to write, the inventory path given to both, the patterns asked.
CASES: dict[str, tuple[dict[str, str], str, list[str]]] = {
    "ini": (
        {
            "hosts.ini": """
                lonely.example.com
                [web]
                web1 ansible_host=10.0.0.1 ansible_ssh_host=10.0.0.2 ansible_ssh_port=2
                [web]
                web1 ansible_port=1
                web2 ansible_user=hostuser x=host
                web[3:4]:2200
                [db]
                db1
                db2 ansible_ssh_user=legacy ansible_user=modern
                [prod:children]
                web
                db
                [prod:vars]
                x=prod
                y=prod
                [web:vars]
                y=web
                ansible_ssh_user=groupuser
                [all:vars]
                z=all
                x=all
            """,
        },
        "hosts.ini",
        [
            "all", "*", "web", "db", "prod", "web[0]", "web[-1]", "web[1:]", "prod[3:4]",
            "db:web", "db,web", "web:&prod", "web:!web2", "!db", "&prod:db", "~web", "~eb",
            "~.*eb", "w*", "*.example.com", "lonely.example.com",
            "db2:web:db1:web1:prod", "localhost", "127.0.0.1", "web1,localhost,::1",
        ],
    ),
    "nested_order": (
        {
            "hosts.ini": """
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
                [other]
                a1
                o1
            """,
        },
        "hosts.ini",
        ["all", "top", "top[0]", "top[1]", "top[2]", "mid[1]", "top[1:]", "t*", "~(top|other)",
         "other:top"],
    ),
    "host_named_like_group": (
        {"hosts.ini": "[web]\nweb1\nweb2\n[other]\nweb\n[both:children]\nweb\nother\n"},
        "hosts.ini",
        ["web", "both:!web", "both:&web", "web:web1", "we*"],
    ),
    "yaml": (
        {
            "inventory.yml": """
                all:
                  vars:
                    z: all
                  hosts:
                    direct1:
                      ansible_host: 192.0.2.9
                      secret: !vault |
                        $ANSIBLE_VAULT;1.1;AES256
                        3132
                      1.5: float-named
                  children:
                    web:
                      hosts: web1.example.com
                      vars:
                        x: web
                    db:
                      hosts:
                        db1:
                          ansible_port: 2201
                          ansible_user: dbadmin
                        db2:
                      children:
                        replicas:
                          hosts:
                            rep1:
                            db1:
                    prod:
                      children:
                        web:
                        db:
            """,
        },
        "inventory.yml",
        ["all", "web", "db", "db[1]", "db[2]", "prod", "prod[3]", "~rep", "*1*",
         "prod:!replicas", "localhost"],
    ),
    "directory": (
        {
            "inv/01-hosts.ini": """
                [web]
                web1 x=inline_host
                web2
                [db]
                db1
                [prod:children]
                web
                db
                [web:vars]
                x=inline_web
                y=inline_web
                [prod:vars]
                y=inline_prod
            """,
            "inv/02-more.yml": """
                all:
                  hosts:
                    extra1:
                  children:
                    db:
                      hosts:
                        db2:
            """,
            "inv/notes.txt": "not an inventory [[[\n",
            "inv/old.ini.bak": "[web]\nghost1\n",
            "inv/ansible.cfg": "[defaults]\n",
            "inv/03-hosts.ini~": "[web]\nghost2\n",
            "inv/.hidden": "[web]\nghost3\n",
            "inv/group_vars/all.yml": "x: gv_all\nz: gv_all\nansible_user: alluser\n",
            "inv/group_vars/web/a.yml": "y: gv_web_a\n",
            "inv/group_vars/web/b.yaml": "y: gv_web_b\nansible_ssh_user: webuser\n",
            "inv/group_vars/web/c.txt": "y: never_read\n",
            "inv/group_vars/prod": "z: gv_prod\n",
            "inv/group_vars/db.json": '{"ansible_port": 2300}',
            "inv/host_vars/web2.yml": "x: hv\nansible_port: 2222\n",
            "inv/host_vars/db1": "ansible_host: 10.1.1.1\n",
            "inv/host_vars/localhost.yml": "z: local_hv\n",
        },
        "inv",
        ["all", "web", "web[1]", "db", "prod[2]", "localhost", "extra1"],
    ),
    "vars_beside_file": (
        {
            "site/hosts": "[web]\nweb1\nweb2 ansible_user=inline\n",
            "site/group_vars/all/main.yml": "ansible_user: fromall\nx: all\n",
            "site/group_vars/web.yml": "x: web\n",
            "site/host_vars/web2.yml": "ansible_user: fromfile\n",
        },
        "site/hosts",
        ["all", "web1", "web2"],
    ),
    "ipv6": (
        {
            "hosts.ini": """
                [web]
                w1 ansible_host=2001:db8::1
                2001:db8::20
                [2001:db8::31]:2222
                [db]
                db1
            """,
        },
        "hosts.ini",
        ["web", "2001:db8::20", "2001:db8::31", "2001:db8::20,db1", "web[1]"],
    ),
    # "#" in host lines (shlex with comments: a comment even inside a word) and in
    # [group:vars] lines (a comment only after a Python literal), and values as Ansible
    # reads them (Python literals), on both the fast path and the shlex path.
    "ini_comments": (
        {
            "hosts.ini": r"""
                [h]
                q1 x=ops#2 y=1
                q2 x=ops #2 y=1
                q3 x="ops#2" y=1
                q4 ansible_user=ops#2 ansible_port=2200
                q5 x='a b'#c y=2
                q6 x=a\#b y=3
                q7#c x=1
                q8 x="8080 # c" y=[1,2]#c
                q9 x="'quoted'" y=0x10 z=None
                q10 x=a"#"b y=1_000 z=(1,2)
                q11	x=tab#	y=2
                q12 x=é#ü y=b'by'
                q13 x="b'by'" y=1j z=...
                [h:vars]
                ansible_port=2300
                [g1]
                v1
                [g1:vars]
                x=ops#2
                y=ops #2
                z=8080 # the port
                [g2]
                v2
                [g2:vars]
                x="ops" # comment
                y='ops'#c
                z=a b # c
                [g3]
                v3
                [g3:vars]
                x=[1, 2] # a list
                y=#only
                z= it's
                [g4]
                v4
                [g4:vars]
                x=True # yes
                y=(1, 2)#tuple
                z="it's" # quoted
                ansible_port=2201 # ssh
                ansible_user=deploy#2
                [top:children]
                g1  # the first
                g2
            """,
        },
        "hosts.ini",
        ["all", "q4", "g4"],
    ),
    # Hosts opsq cannot run on are still selected, as Ansible selects them: listing
    # shows them (with Host.problem), only running on them is refused.
    "unsupported_connections": (
        {
            "hosts.ini": """
                [win]
                box1 ansible_connection=winrm ansible_user=Administrator ansible_port=5986
                [containers]
                c1 ansible_connection=docker
                [linux]
                web1 ansible_connection=smart
                web2
                [all:vars]
                x=all
            """,
        },
        "hosts.ini",
        ["all", "win", "box1", "linux:box1", "all:!win", "~(box|c)", "*1", "containers[0]"],
    ),
    # ~regex terms run in RE2 in opsq, in Python's re in Ansible: the same answers.
    "regex_terms": (
        {
            "hosts.ini": """
                [web]
                web1
                web02
                WEB3
                [db]
                db-1.example.com
                app_1
            """,
        },
        "hosts.ini",
        [r"~web\d+", "~(?i)web", r"~.*\.example\.com$", "~web0?[12]$", r"~[a-z]+_\d",
         "~(web|db)", "~w.*?1", "~^db", r"~\w+-\d", "~web[0-9]{2}", "~[^w]", "~(x|)app",
         r"~\bdb", "~(?P<n>web)1", "~WEB|app"],
    ),
    "localhost_listed": (
        {"hosts.ini": "[local]\nlocalhost ansible_port=2022\n[web]\nweb1\n"},
        "hosts.ini",
        ["all", "localhost", "127.0.0.1", "web1:127.0.0.1"],
    ),
}

# Inventories Ansible cannot parse: opsq must refuse them too.
REFUSED: dict[str, tuple[str, str]] = {
    "undefined_child": ("hosts.ini", "[web]\nweb1\n[prod:children]\nweb\nnope\n"),
    "semicolon_after_section": ("hosts.ini", "[web] ; the web servers\nweb1\n"),
    "integer_yaml_host": ("hosts.yml", "all:\n  hosts:\n    123:\n"),
    "unhashable_literal": ("hosts.ini", "[web]\nweb1\n[web:vars]\nx={[1]: 2}\n"),
}


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def _ansible(root: Path, source: str, patterns: list[str]) -> dict:
    """Ask ansible-core, in a clean environment, what the patterns select."""
    config = root / "empty-ansible.cfg"
    config.write_text("", encoding="utf-8")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(root / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        "ANSIBLE_HOST_PATTERN_MISMATCH": "ignore",
        "ANSIBLE_DEPRECATION_WARNINGS": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(root / source), json.dumps(patterns),
         json.dumps(COMPARED_VARS)],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _opsq(inventory: Inventory, pattern: str) -> list[list] | None:
    """opsq's answer in the probe's shape; None when opsq refuses the pattern.

    What select() lists, as Ansible's get_hosts(): hosts opsq cannot run on included.
    """
    try:
        hosts = inventory.select(pattern)
    except PatternError:
        return None
    return [
        [h.name, h.address, h.port, h.user,
         {key: str(h.vars[key]) for key in COMPARED_VARS if key in h.vars}]
        for h in hosts
    ]


def _normalised(rows: list[list]) -> list[list]:
    # Without a port variable Ansible leaves the port to ssh, which uses 22.
    return [[name, address, DEFAULT_SSH_PORT if port is None else port, user, found]
            for name, address, port, user, found in rows]


@pytest.mark.parametrize("case", sorted(CASES))
def test_opsq_selects_what_ansible_selects(tmp_path: Path, case: str) -> None:
    files, source, patterns = CASES[case]
    _write(tmp_path, files)
    _assert_same_answers(_ansible(tmp_path, source, patterns),
                         Inventory.load(tmp_path / source), patterns)


#: Patterns naming this machine, asked of opsq's built-in inventory (no inventory file)
#: and of Ansible with an inventory that lists no host: its implicit localhost answers
#: to "localhost", "127.0.0.1" and "::1", named by the first a pattern uses.
BUILTIN_PATTERNS = [
    "localhost", "127.0.0.1", "::1", "127.0.0.1:localhost", "localhost,::1",
    "::1,127.0.0.1", "127.0.0.1[0]", "all:127.0.0.1", "127.0.0.1:all", "localhost:!127.0.0.1",
]


def test_builtin_inventory_answers_localhost_names_as_ansible(tmp_path: Path) -> None:
    _write(tmp_path, {"empty.ini": "# no host at all\n"})
    inventory = Inventory.implicit()
    _assert_same_answers(_ansible(tmp_path, "empty.ini", BUILTIN_PATTERNS), inventory,
                         BUILTIN_PATTERNS)
    # Deliberately unlike Ansible, where "all" is empty with no inventory.
    assert [host.name for host in inventory.resolve("all")] == ["localhost"]
    assert inventory.resolve("127.0.0.1")[0].connection == "local"


def _assert_same_answers(expected: dict, inventory: Inventory, patterns: list[str]) -> None:
    assert "error" not in expected, expected
    for pattern in patterns:
        wanted = _normalised(expected["answers"][pattern])
        got = _opsq(inventory, pattern)
        if not wanted:
            # Ansible only warns about a pattern matching nothing; opsq refuses it.
            assert got is None, (pattern, got)
        else:
            assert got == wanted, pattern


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_opsq_refuses_what_ansible_cannot_parse(tmp_path: Path, case: str) -> None:
    name, text = REFUSED[case]
    _write(tmp_path, {name: text})
    assert "error" in _ansible(tmp_path, name, ["all"])
    with pytest.raises(InventoryError) as info:
        Inventory.load(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)
