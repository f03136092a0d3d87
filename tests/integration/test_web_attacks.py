"""Attacks on a real ``opsq web``, by role: each is refused, and nothing changes.

The console is a multi-user service: a viewer or an operator is not a user of the
control node, and everything they send is hostile until checked. Every row of the
tables below is an attack that worked on an earlier release.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import text
from webtools import ROOT, Web, make_account

from opsq.store import db

API = "/api/v1"
#: A host name long enough that a backtracking regex engine never finishes matching it.
LONG_NAME = "h" * 120
#: A line of the broken inventory the console offers: it must never reach a user.
PLANTED_SECRET = "s3cr3t-in-the-inventory"


def rows(sql: str, **params):
    with db.session_scope() as s:
        return s.execute(text(sql), params).all()


def count(table_where: str, **params) -> int:
    return rows(f"SELECT count(*) AS n FROM {table_where}", **params)[0].n


def state() -> tuple:
    """What an attack may not change: jobs, schedules, users, tokens, and audit entries
    other than refusals and logins."""
    return (count("jobs"), count("host_results"),
            [tuple(r) for r in rows("SELECT name, kwargs::text, enabled FROM schedules "
                                    "ORDER BY name")],
            [tuple(r) for r in rows("SELECT name, role, session_epoch FROM users "
                                    "ORDER BY name")],
            count("api_tokens"),
            count("audit WHERE action NOT LIKE '%.refused' AND action NOT LIKE 'login.%'"))


@pytest.fixture(scope="module")
def accounts(services):
    return {role: make_account(role, "atk") for role in ("viewer", "operator", "admin")}


@pytest.fixture(scope="module")
def inventories(fleet, tmp_path_factory):
    """The inventories an admin gave the console: the fleet's, one with a local host,
    and one that cannot be read (its text holds a secret)."""
    where = tmp_path_factory.mktemp("inventories")
    local = where / "local.yml"
    local.write_text("all:\n  hosts:\n    worker-itself:\n      ansible_connection: local\n"
                     f"    {LONG_NAME}:\n      ansible_host: 127.0.0.1\n"
                     "  children:\n    web:\n      hosts:\n        web1:\n"
                     "          ansible_host: 127.0.0.1\n          ansible_port: 9\n"
                     "    win:\n      hosts:\n        box1:\n"
                     "          ansible_connection: winrm\n")
    hidden = where / "hidden.yml"  # an inventory the console does not offer
    hidden.write_text("all:\n  hosts:\n    h1:\n      ansible_host: 127.0.0.1\n"
                      "      ansible_port: 9\n")
    broken = where / "broken.ini"
    broken.write_text(f"[web]\nweb1 ansible_password={PLANTED_SECRET} ansible_port=x:y:z\n"
                      f"[web:children\n{PLANTED_SECRET}\n")
    return {"default": str(fleet.base_dir / "inventory.yml"), "withlocal": str(local),
            "broken": str(broken), "_hidden": str(hidden)}


@pytest.fixture(scope="module")
def web(accounts, inventories, tmp_path_factory):
    setting = ",".join(f"{k}={v}" for k, v in inventories.items() if not k.startswith("_"))
    w = Web(tmp_path_factory.mktemp("web") / "web.log",
            {"OPSQ_WEB_INVENTORIES": setting, "OPSQ_WEB_MAX_BODY": str(64 * 1024),
             # as deployed: no internal network allowed for webhooks
             "OPSQ_WEBHOOK_ALLOWED_NETWORKS": ""})
    yield w
    w.stop()


FLEET = {"command": "true", "pattern": "fleet"}
#: (role, method, path, JSON body, status, what the answer says)
API_ATTACKS = [
    # operator -> admin: a typed path read the web host's files and quoted them
    ("operator", "POST", "/jobs", {**FLEET, "inventory": "/proc/self/environ"}, 422,
     "unknown inventory"),
    ("operator", "POST", "/jobs", {**FLEET, "inventory": "var/web-secret"}, 422,
     "unknown inventory"),
    ("operator", "POST", "/jobs", {**FLEET, "inventory": "../../etc/passwd"}, 422,
     "unknown inventory"),
    ("operator", "POST", "/schedules", {"name": "a1", "every": "1h", **FLEET,
                                        "inventory": "/etc/shadow"}, 422,
     "unknown inventory"),
    ("operator", "POST", "/jobs", {**FLEET, "inventory": "broken"}, 422,
     "cannot be used"),
    ("viewer", "GET", "/hosts?inventory=/proc/self/environ", None, 422, "unknown inventory"),
    ("viewer", "GET", "/hosts/resolve?pattern=all&inventory=broken", None, 422,
     "cannot be used"),
    # operator -> shell on the worker: local hosts
    ("operator", "POST", "/jobs", {"command": "env", "pattern": "localhost"}, 422,
     "local connection"),
    ("operator", "POST", "/jobs", {"command": "env", "pattern": "all:!win",
                                   "inventory": "withlocal"}, 422, "local connection"),
    ("operator", "POST", "/schedules", {"name": "a2", "every": "1h", "command": "env",
                                        "pattern": "localhost"}, 422, "local connection"),
    ("operator", "PATCH", "/schedules/atk-keep", {"pattern": "localhost"}, 422,
     "local connection"),
    # registered tasks: admins only, opsq's own never
    ("operator", "POST", "/schedules", {"name": "a3", "every": "1h", "task": "opsq.prune"},
     422, "admin role"),
    ("admin", "POST", "/schedules", {"name": "a4", "every": "1h", "task": "opsq.submit_job",
                                     "kwargs": {"command": "env", "pattern": "localhost",
                                                "inventory": "/etc/passwd"}}, 422,
     "cannot be scheduled here"),
    ("admin", "POST", "/schedules", {"name": "a5", "every": "1h", "task": "opsq.run_hosts",
                                     "args": ["x", ["localhost"]]}, 422,
     "cannot be scheduled here"),
    # an operator and the schedules an admin or the command line made
    ("operator", "PATCH", "/schedules/atk-task", {"every": "1s"}, 422, "only an admin"),
    ("operator", "POST", "/schedules/atk-task/disable", {}, 422, "only an admin"),
    ("operator", "POST", "/schedules/atk-task/run", {}, 422, "only an admin"),
    ("operator", "DELETE", "/schedules/atk-task", None, 422, "only an admin"),
    ("operator", "DELETE", "/schedules/opsq-reconcile", None, 422, "only an admin"),
    ("operator", "PATCH", "/schedules/atk-cli", {"command": "env"}, 422,
     "does not offer"),
    # job lines: nothing that makes the server open a path, run locally or store -K
    ("operator", "POST", "/schedules", {"name": "j1", "every": "1h",
                                        "job": "put /etc/shadow /tmp/x -t fleet"}, 422,
     "command line"),
    ("operator", "POST", "/schedules", {"name": "j2", "every": "1h",
                                        "job": "run true -t fleet -i /proc/self/environ"}, 422,
     "inventory field"),
    ("operator", "POST", "/schedules", {"name": "j3", "every": "1h",
                                        "job": "run true -t fleet --inventory=/etc/passwd"},
     422, "inventory field"),
    ("operator", "POST", "/schedules", {"name": "j4", "every": "1h",
                                        "job": "run env -t localhost"}, 422,
     "local connection"),
    ("operator", "POST", "/schedules", {"name": "j5", "every": "1h",
                                        "job": "run true -t fleet --become -K"}, 422, "-K"),
    ("operator", "POST", "/schedules", {"name": "j6", "every": "1h",
                                        "job": "run 'unclosed -t fleet"}, 422, "parse"),
    # webhooks to internal addresses
    ("operator", "POST", "/jobs", {**FLEET, "notify": ["http://169.254.169.254/latest"]}, 422,
     "169.254.169.254"),
    ("operator", "POST", "/jobs", {**FLEET, "notify": ["http://127.0.0.1:15672/api"]}, 422,
     "127.0.0.1"),
    # one role up: a viewer writes, an operator reads or changes users
    ("viewer", "POST", "/jobs", FLEET, 403, "operator role"),
    ("viewer", "POST", "/schedules/atk-keep/run", {}, 403, "operator role"),
    ("viewer", "DELETE", "/schedules/atk-keep", None, 403, "operator role"),
    ("operator", "GET", "/audit", None, 403, "admin role"),
    ("operator", "GET", "/users", None, 403, "admin role"),
    ("operator", "GET", "/users/{admin}/tokens", None, 403, "admin role"),
    ("operator", "POST", "/users/{admin}/tokens", {"name": "mine"}, 403, "admin role"),
    ("viewer", "DELETE", "/users/{operator}/tokens/1", None, 403, "admin role"),
]


@pytest.mark.parametrize("role,method,path,body,status,message", API_ATTACKS,
                         ids=[f"{r} {m} {p} {s}" for r, m, p, _, s, _m in API_ATTACKS])
def test_api_attack_is_refused_and_changes_nothing(web, accounts, inventories, role, method,
                                                   path, body, status, message):
    from opsq import schedules

    with web.client(accounts["operator"].token) as op:
        if op.get(f"{API}/schedules/atk-keep").status_code == 404:
            made = op.post(f"{API}/schedules", json={"name": "atk-keep", "every": "1h",
                                                     **FLEET})
            assert made.status_code == 201, made.text
    with web.client(accounts["admin"].token) as admin:
        if admin.get(f"{API}/schedules/atk-task").status_code == 404:
            made = admin.post(f"{API}/schedules", json={"name": "atk-task", "every": "1h",
                                                        "task": "opsq.prune"})
            assert made.status_code == 201, made.text
    if not any(r.name == "atk-cli" for r in schedules.all_schedules()):
        schedules.add("atk-cli", schedules.timing(every="1h"), schedules.SUBMIT_TASK, [],
                      {"command": "uptime", "pattern": "h1",
                       "inventory": inventories["_hidden"]})
    schedules.ensure_builtin()
    path = path.format(**{r: a.name for r, a in accounts.items()})
    before = state()
    with web.client(accounts[role].token) as c:
        r = c.request(method, API + path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    for leak in (PLANTED_SECRET, "OPSQ_DATABASE_URL", "OPSQ_WEB_SECRET="):
        assert leak not in r.text
    assert state() == before


def test_a_refusal_is_audited_with_its_reason_and_options(web, accounts):
    with web.client(accounts["operator"].token) as c:
        r = c.post(f"{API}/jobs", json={"command": "curl -u ops:hunter2 x", "pattern": "fleet",
                                        "inventory": "/proc/self/environ",
                                        "notify": ["https://hooks.example/T0K3N"],
                                        "become": True, "batch_size": "50%"})
    assert r.status_code == 422
    entry = rows("SELECT \"user\", action, detail FROM audit WHERE action = "
                 "'job.submit.refused' ORDER BY id DESC LIMIT 1")[0]
    assert entry.user == accounts["operator"].name
    detail = entry.detail
    assert "unknown inventory" in detail["reason"] and detail["via"].startswith("token ")
    assert detail["inventory"] == "/proc/self/environ" and detail["become"] is True
    assert detail["batch_size"] == "50%"
    assert detail["notify"] == ["https://hooks.example/..."]
    assert "hunter2" not in json.dumps(detail) and "T0K3N" not in json.dumps(detail)


def test_a_submitted_job_is_audited_in_its_own_transaction_with_every_option(web, accounts):
    with web.client(accounts["operator"].token) as c:
        r = c.post(f"{API}/jobs", json={"command": "echo TOKEN=abc", "pattern": "fleet[0]",
                                        "inventory": "default", "timeout": 20,
                                        "batch_size": 1, "rerun_safe": True, "retries": 1})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
    entry = rows("SELECT detail FROM audit WHERE action = 'job.submit' AND target = :j",
                 j=job_id)
    assert len(entry) == 1
    detail = entry[0].detail
    assert detail["command"] == "echo TOKEN=****" and detail["inventory"] == "default"
    assert (detail["timeout"], detail["batch_size"], detail["retries"]) == (20, 1, 1)


def test_the_pattern_tester_lists_hosts_opsq_cannot_run_on_without_server_paths(
        web, accounts, inventories):
    with web.client(accounts["viewer"].token) as c:
        r = c.get(f"{API}/hosts/resolve", params={"pattern": "win",
                                                  "inventory": "withlocal"})
    assert r.status_code == 200, r.text
    box = r.json()["hosts"][0]
    assert box["name"] == "box1" and "winrm" in box["problem"]
    assert inventories["withlocal"] not in r.text


def test_a_hostile_regex_gets_a_refusal_and_the_console_keeps_answering(web, accounts,
                                                                          inventories):
    """~(.|.)*! against a long host name held the GIL for minutes."""
    with web.client(accounts["viewer"].token) as c:
        began = time.monotonic()
        r = c.get(f"{API}/hosts/resolve", params={"pattern": "~(.|.)*!",
                                                  "inventory": "withlocal"}, timeout=60)
        assert r.status_code in (200, 422), r.text
        assert c.get(f"{API}/me", timeout=5).status_code == 200
        for pattern in ("~(a+)+$", "~(\\w+)\\1", "~" + "(" * 5000):
            r = c.get(f"{API}/hosts/resolve", params={"pattern": pattern,
                                                      "inventory": "withlocal"}, timeout=60)
            assert r.status_code in (200, 422), (pattern, r.text)
    assert time.monotonic() - began < 50  # a backtracking engine takes minutes here


# -- anonymous callers ---------------------------------------------------------------------


def test_an_anonymous_body_is_refused_before_it_is_read(web, accounts):
    with web.client() as c:
        big = b'{"command": "' + b"x" * (50 * 1024 * 1024) + b'"}'
        r = c.post(f"{API}/jobs", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 401
        assert c.post(f"{API}/jobs", content=b"{not json",
                      headers={"Content-Type": "application/json"}).status_code == 401
        assert c.post(f"{API}/schedules", json={"name": 5}).status_code == 401
    with web.client(accounts["operator"].token) as c:
        r = c.post(f"{API}/jobs", content=b'{"command": "' + b"x" * (100 * 1024) + b'"}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "OPSQ_WEB_MAX_BODY" in r.json()["error"]
        # a body sent without a length (chunked) is cut off at the cap too
        chunks = (b"x" * 8192 for _ in range(20))
        r = c.post(f"{API}/jobs", content=chunks, headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_a_forged_or_old_format_cookie_is_not_a_login(web, accounts):
    import base64

    from itsdangerous import TimestampSigner

    forged = base64.b64encode(json.dumps({"user": accounts["admin"].name}).encode())
    signed = TimestampSigner("wrong key, not the server's").sign(forged).decode()
    c = httpx.Client(base_url=web.url, cookies={"opsq_session": signed})
    try:
        assert c.get("/users").status_code == 303
        assert c.get(f"{API}/audit").status_code == 401
    finally:
        c.close()


# -- sessions and tokens -------------------------------------------------------------------


def _login(web, name: str, password: str) -> httpx.Client:
    c = httpx.Client(base_url=web.url, timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"csrf": csrf, "name": name, "password": password})
    assert r.status_code == 303, r.text
    return c


def _csrf(c: httpx.Client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get("/jobs").text).group(1)


def _replay(web, cookie: str, path: str = "/jobs") -> int:
    with httpx.Client(base_url=web.url, cookies={"opsq_session": cookie}) as c:
        return c.get(path).status_code


@pytest.mark.parametrize("ending", ["logout", "password", "role", "removal"])
def test_a_session_ends_for_good(web, accounts, ending, opsq_cli):
    from opsq.web import users

    name, password = f"sess-{ending}-{secrets.token_hex(3)}", "a long enough password"
    users.add(name, "operator", password, by="test")
    c = _login(web, name, password)
    try:
        cookie = c.cookies["opsq_session"]
        assert _replay(web, cookie) == 200
        if ending == "logout":
            assert c.post("/logout", data={"csrf": _csrf(c)}).status_code == 303
            assert rows("SELECT count(*) AS n FROM audit WHERE action = 'user.logout' AND "
                        "target = :n", n=name)[0].n == 1
        elif ending == "password":
            r = subprocess.run([sys.executable, "-m", "opsq.cli", "users", "passwd", name],
                               cwd=ROOT, input="another long password\n", text=True,
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stderr
        elif ending == "role":
            assert opsq_cli("users", "role", name, "viewer").returncode == 0
        else:
            users.remove(name, by="test")
            users.add(name, "admin", password, by="test")  # the same name, another user
        assert _replay(web, cookie) == 303  # back to the login page
        assert _replay(web, cookie, "/users") == 303
    finally:
        c.close()
        users.remove(name, by="test")


def test_tokens_are_named_listed_expire_and_are_revoked(web, accounts):
    admin = accounts["admin"]
    target = make_account("viewer", "tok")
    with web.client(admin.token) as c:
        made = c.post(f"{API}/users/{target.name}/tokens", json={"name": "ci", "expires": "1h"})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        listed = c.get(f"{API}/users/{target.name}/tokens").json()
        assert "ci" in [t["name"] for t in listed] and made.json()["name"] == "ci"
        assert all("token" not in t for t in listed)
        dup = c.post(f"{API}/users/{target.name}/tokens", json={"name": "ci"})
        assert dup.status_code == 422 and "already has a token" in dup.json()["error"]
    with web.client(token) as mine:
        assert mine.get(f"{API}/me").json()["token"] == "ci"
        # a token cannot make one that outlives it
        child = mine.post(f"{API}/users/{target.name}/tokens", json={"name": "child"})
        assert child.status_code == 201, child.text
        assert child.json()["expires_at"] == made.json()["expires_at"]
        assert mine.delete(f"{API}/users/{target.name}/tokens/child").status_code == 204
        digits = mine.post(f"{API}/users/{target.name}/tokens", json={"name": "7"})
        assert digits.status_code == 422 and "needs a letter" in digits.json()["error"]
    used = rows("SELECT last_used_at FROM api_tokens WHERE name = 'ci' AND user_id = "
                "(SELECT id FROM users WHERE name = :n)", n=target.name)[0].last_used_at
    assert used is not None
    # expired: the row stays listed, the token is refused
    with db.session_scope() as s:
        s.execute(text("UPDATE api_tokens SET expires_at = now() - interval '1 second' "
                       "WHERE name = 'ci'"))
    with web.client(token) as mine:
        assert mine.get(f"{API}/me").status_code == 401
    # a viewer revokes their own token; then it is gone
    with web.client(target.token) as own:
        assert own.delete(f"{API}/users/{target.name}/tokens/ci").status_code == 204
        assert "ci" not in [t["name"] for t in own.get(
            f"{API}/users/{target.name}/tokens").json()]
    with web.client(token) as mine:
        assert mine.get(f"{API}/me").status_code == 401


def test_the_cli_lists_and_revokes_tokens(services, opsq_cli):
    account = make_account("viewer", "clitok")
    made = opsq_cli("users", "token", account.name, "--name", "deploy", "--expires", "90d")
    assert made.returncode == 0, made.stderr
    listed = opsq_cli("users", "tokens", account.name)
    assert "deploy" in listed.stdout and "expires 20" in listed.stdout
    assert made.stdout.strip() not in listed.stdout
    bad = opsq_cli("users", "token", account.name, "--expires", "forever")
    assert bad.returncode == 2 and "lifetime" in bad.stderr
    revoked = opsq_cli("users", "revoke", account.name, "deploy")
    assert revoked.returncode == 0 and "deploy" in revoked.stdout
    assert "deploy" not in opsq_cli("users", "tokens", account.name).stdout
    again = opsq_cli("users", "revoke", account.name, "deploy")
    assert again.returncode == 2 and "no token" in again.stderr


# -- login limits --------------------------------------------------------------------------


def test_guessing_one_password_does_not_lock_out_the_others(web):
    from opsq.web import users

    victim, other = (f"lim-{secrets.token_hex(3)}" for _ in range(2))
    for n in (victim, other):
        users.add(n, "viewer", "the right password", by="test")
    c = httpx.Client(base_url=web.url, timeout=30)
    try:
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        codes = [c.post("/login", data={"csrf": csrf, "name": victim, "password": "wrong"
                                        }).status_code for _ in range(6)]
        assert codes[:5] == [401] * 5 and codes[5] == 429
        blocked = c.post("/login", data={"csrf": csrf, "name": victim,
                                         "password": "the right password"})
        assert blocked.status_code == 429
        # another user from the same address is not locked out
        ok = c.post("/login", data={"csrf": csrf, "name": other,
                                    "password": "the right password"})
        assert ok.status_code == 303
    finally:
        c.close()
    # a forged X-Forwarded-For from a peer that is not a trusted proxy changes nothing
    spoof = httpx.Client(base_url=web.url, headers={"X-Forwarded-For": "203.0.113.7"})
    try:
        csrf = re.search(r'name="csrf" value="([^"]+)"', spoof.get("/login").text).group(1)
        r = spoof.post("/login", data={"csrf": csrf, "name": victim,
                                       "password": "the right password"})
        assert r.status_code == 429
    finally:
        spoof.close()
    entries = rows("SELECT address FROM audit WHERE target = :v AND action LIKE 'login%'",
                   v=victim)
    assert {e.address for e in entries} == {"127.0.0.1"}


def test_a_burst_of_guesses_is_held_to_the_limit(web):
    """Checked and counted at once: 20 guesses sent together get at most 5 checks."""
    import concurrent.futures

    from opsq.web import users

    victim = f"burst-{secrets.token_hex(3)}"
    users.add(victim, "viewer", "the right password", by="test")

    def guess(_: int) -> int:
        with httpx.Client(base_url=web.url, timeout=60) as c:
            csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
            return c.post("/login", data={"csrf": csrf, "name": victim,
                                          "password": "wrong"}).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(guess, range(20)))
    assert codes.count(401) <= 5 and codes.count(429) >= 15, codes


def test_a_huge_login_name_makes_a_bounded_audit_row(web):
    c = httpx.Client(base_url=web.url, timeout=30)
    try:
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        name = "n" * 60_000
        assert c.post("/login", data={"csrf": csrf, "name": name,
                                      "password": "x"}).status_code == 401
    finally:
        c.close()
    entry = rows("SELECT \"user\", target FROM audit WHERE action = 'login.failure' "
                 "ORDER BY id DESC LIMIT 1")[0]
    assert len(entry.user) <= 64 and len(entry.target) <= 256


# -- the login-free console ----------------------------------------------------------------


@pytest.fixture(scope="module")
def open_console(services, tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("open") / "web.log", {"OPSQ_WEB_NO_AUTH": "1"})
    yield w
    w.stop()


def test_the_login_free_console_obeys_only_its_own_pages(open_console):
    from opsq import schedules

    name = f"open-{secrets.token_hex(3)}"
    with open_console.client() as c:
        assert c.post(f"{API}/schedules", json={"name": name, "every": "1h", **FLEET},
                      headers={"Origin": open_console.url}).status_code == 201
        before = state()
        # a web page the user opens posts to the console (a body-less "simple" request)
        for headers in ({"Origin": "https://evil.example", "Content-Type": "text/plain"},
                        {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "null"}):
            r = c.post(f"{API}/schedules/{name}/disable", headers=headers)
            assert r.status_code == 403, (headers, r.text)
            assert "another site" in r.json()["error"]
        # DNS rebinding: the attacker's name, pointed at 127.0.0.1
        r = c.get(f"{API}/schedules", headers={"Host": f"evil.example:{open_console.port}"})
        assert r.status_code == 421
        r = c.post(f"{API}/schedules/{name}/disable",
                   headers={"Host": f"rebind.example:{open_console.port}",
                            "Origin": f"http://rebind.example:{open_console.port}"})
        assert r.status_code == 421
        assert state() == before and schedules.get(name).enabled
        # its own page, and a command-line client (no Origin), still work
        assert c.post(f"{API}/schedules/{name}/disable",
                      headers={"Origin": open_console.url,
                               "Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert c.post(f"{API}/schedules/{name}/enable").status_code == 200
        assert c.get(f"{API}/me", headers={"Host": "localhost"}).status_code == 200
        assert c.delete(f"{API}/schedules/{name}").status_code == 204


# -- every route, one role up --------------------------------------------------------------


def _routes(web) -> list[tuple[str, str]]:
    schema = web.client().get(f"{API}/openapi.json").json()
    return [(m.upper(), p) for p, ms in schema["paths"].items() for m in ms]


def test_a_viewer_and_an_operator_probe_every_route_one_role_up(web, accounts):
    """Every write the API has is refused to a viewer; every admin route to an operator;
    the pages likewise. Nothing changes."""
    before = state()
    fill = {"{job_id}": "nope", "{name}": accounts["admin"].name, "{token}": "nope"}
    viewer_ok, operator_ok = 0, 0
    for method, path in _routes(web):
        url = path
        for k, v in fill.items():
            url = url.replace(k, v)
        with web.client(accounts["viewer"].token) as c:
            r = c.request(method, url, json={} if method in ("POST", "PATCH") else None)
            if method != "GET":
                assert r.status_code == 403, (method, path, r.text)
                viewer_ok += 1
        if path.startswith((f"{API}/audit", f"{API}/users")):
            with web.client(accounts["operator"].token) as c:
                r = c.request(method, url, json={} if method in ("POST", "PATCH") else None)
                assert r.status_code == 403, (method, path, r.text)
                operator_ok += 1
    assert viewer_ok >= 10 and operator_ok >= 4
    for who, page_posts in (("viewer", ["/run", "/schedules/new", "/jobs/nope/cancel",
                                         "/schedules/atk-keep/delete"]),
                            ("operator", ["/users", f"/users/{accounts['admin'].name}/remove",
                                          f"/users/{accounts['admin'].name}/token",
                                          f"/users/{accounts['admin'].name}/role"])):
        c = _login(web, accounts[who].name, accounts[who].password)
        try:
            csrf = _csrf(c)
            for path in page_posts:
                r = c.post(path, data={"csrf": csrf, "role": "admin", "name": "x",
                                       "password": "a long enough password"})
                assert r.status_code == 403, (who, path, r.text[:200])
            if who == "operator":
                assert c.get("/users").status_code == 403
                assert c.get("/audit").status_code == 403
        finally:
            c.close()
    assert state() == before
    assert count("audit WHERE action = 'access.refused'") >= viewer_ok


def test_the_cli_masks_what_the_console_masks(services, opsq_cli, fleet):
    name = f"masked-{secrets.token_hex(3)}"
    added = opsq_cli("schedule", "add", name, "--every", "1h", "-t", "fleet",
                     "--notify", "https://hooks.example/services/T0K3N", "--",
                     "curl", "-H", "Authorization: Bearer abc.def", "-u", "ops:hunter2", "x")
    assert added.returncode == 0, added.stderr
    try:
        for args in (("schedule", "list"), ("schedule", "list", "--json"),
                     ("schedule", "show", name)):
            out = opsq_cli(*args)
            assert out.returncode == 0, out.stderr
            assert name in out.stdout
            for secret in ("hunter2", "abc.def", "T0K3N"):
                assert secret not in out.stdout, (args, secret)
    finally:
        opsq_cli("schedule", "rm", name)


def test_the_openapi_document_declares_the_bearer_scheme(web):
    schema = web.client().get(f"{API}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())


def test_the_console_refuses_to_start_with_a_short_key(tmp_path):
    import os

    r = subprocess.run([sys.executable, "-m", "opsq.cli", "web"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OPSQ_WEB_SECRET": "short"})
    assert r.returncode == 2 and "at least 32" in r.stderr


def test_secure_cookies_when_asked(web, tmp_path):
    w = Web(tmp_path / "web.log", {"OPSQ_WEB_SECURE_COOKIES": "1"})
    try:
        with httpx.Client(base_url=w.url, timeout=30) as c:
            assert "secure" in c.get("/login").headers["set-cookie"].lower()
    finally:
        w.stop()
    # not by default: a console on plain HTTP must still log in
    with httpx.Client(base_url=web.url, timeout=30) as c:
        assert "secure" not in c.get("/login").headers["set-cookie"].lower()


def test_a_jobs_hosts_come_one_page_at_a_time(web, accounts, worker):
    with web.client(accounts["operator"].token) as c:
        job_id = c.post(f"{API}/jobs", json={"command": "true", "pattern": "fleet"}
                        ).json()["job_id"]
        for _ in range(600):
            if c.get(f"{API}/jobs/{job_id}").json()["status"] == "succeeded":
                break
            time.sleep(0.1)
        every = [h["host"] for h in c.get(f"{API}/jobs/{job_id}/hosts").json()]
        page = c.get(f"{API}/jobs/{job_id}/hosts", params={"offset": 2, "limit": 2}).json()
        assert [h["host"] for h in page] == every[2:4]
        one = c.get(f"{API}/jobs/{job_id}/hosts", params={"host": every[-1]}).json()
        assert [h["host"] for h in one] == [every[-1]]
        assert c.get(f"{API}/jobs/{job_id}/hosts", params={"limit": 5000}).status_code == 422
    session = _login(web, accounts["viewer"].name, accounts["viewer"].password)
    try:
        host_page = session.get(f"/jobs/{job_id}/hosts/{every[0]}")
        assert host_page.status_code == 200 and every[0] in host_page.text
        assert session.get(f"/jobs/{job_id}/hosts/nosuchhost").status_code == 404
    finally:
        session.close()
