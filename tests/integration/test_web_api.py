"""The REST API of ``opsq web``, against a real server, worker and sshd fleet."""

from __future__ import annotations

import html
import json
import re
import secrets
import subprocess
import sys
import time

import httpx
import pytest
from helpers import wait_until
from sqlalchemy import text
from webtools import ROOT, Web, make_account

from opsq.store import db

API = "/api/v1"


@pytest.fixture(scope="module")
def accounts(services):
    return {role: make_account(role, "api") for role in ("viewer", "operator", "admin")}


@pytest.fixture(scope="module")
def web(accounts, worker, tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("web") / "web.log")
    yield w
    w.stop()


def _endpoints(web: Web) -> list[tuple[str, str]]:
    schema = web.client().get(f"{API}/openapi.json").json()
    out = []
    for path, methods in schema["paths"].items():
        for method in methods:
            out.append((method.upper(), path.replace("{job_id}", "nope")
                        .replace("{name}", "nope")))
    return out


def test_every_endpoint_refuses_a_missing_or_wrong_token(web, accounts):
    endpoints = _endpoints(web)
    assert len(endpoints) >= 14
    for token in (None, "opsq_wrong", accounts["viewer"].token + "x"):
        with web.client(token) as c:
            for method, path in endpoints:
                r = c.request(method, path, json={} if method in ("POST", "PATCH") else None)
                assert r.status_code == 401, (method, path, token, r.text)
                assert "token" in r.json()["error"]


def test_a_viewer_reads_but_every_write_is_403(web, accounts):
    with web.client(accounts["viewer"].token) as c:
        me = c.get(f"{API}/me").json()
        assert (me["name"], me["role"]) == (accounts["viewer"].name, "viewer")
        assert me["token"].startswith("token-")
        assert c.get(f"{API}/jobs").status_code == 200
        assert c.get(f"{API}/schedules").status_code == 200
        assert c.get(f"{API}/audit").status_code == 403
        for method, path in _endpoints(web):
            if method != "GET":
                r = c.request(method, path, json={"command": "true", "pattern": "fleet"}
                              if path == f"{API}/jobs" else {})
                assert r.status_code == 403, (method, path, r.text)
    assert count("jobs WHERE submitted_by = :u", u="web:" + accounts["viewer"].name) == 0


def test_an_operator_runs_a_job_on_the_fleet(web, accounts):
    op = accounts["operator"]
    with web.client(op.token) as c:
        r = c.post(f"{API}/jobs", json={"command": "echo hello from $(hostname -s) "
                                                   "TOKEN=s3cret", "pattern": "fleet",
                                        "timeout": 20})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        summary = wait_until(lambda: _finished(c, job_id), 60, "the job to finish")
        assert summary["status"] == "succeeded"
        assert summary["submitted_by"] == f"web:{op.name}"
        hosts = c.get(f"{API}/jobs/{job_id}/hosts").json()
        assert len(hosts) == 6 and all(h["status"] == "ok" for h in hosts)
        assert all(h["stdout"].startswith("hello from") for h in hosts)
        listed = c.get(f"{API}/jobs", params={"submitter": f"web:{op.name}",
                                              "status": "succeeded"}).json()
        assert [j["job_id"] for j in listed] == [job_id]
        assert "TOKEN=****" in listed[0]["command"]
        assert c.get(f"{API}/jobs", params={"submitter": f"web:{op.name}",
                                            "status": "failed"}).json() == []
        assert c.get(f"{API}/jobs/not-a-job").status_code == 404
        again = c.post(f"{API}/jobs/{job_id}/cancel")
        assert again.status_code == 422 and "already succeeded" in again.json()["error"]
    with web.client(accounts["admin"].token) as c:
        entries = c.get(f"{API}/audit", params={"user": op.name}).json()
    submitted = [e for e in entries if e["action"] == "job.submit"]
    assert submitted[0]["target"] == job_id and submitted[0]["address"] == "127.0.0.1"
    assert "s3cret" not in json.dumps(entries)


def _finished(c, job_id):
    s = c.get(f"{API}/jobs/{job_id}").json()
    return s if s["status"] in ("succeeded", "failed", "error", "cancelled") else None


def test_an_operator_cancels_a_running_job(web, accounts):
    with web.client(accounts["operator"].token) as c:
        job_id = c.post(f"{API}/jobs", json={"command": "sleep 30",
                                             "pattern": "fleet"}).json()["job_id"]
        wait_until(lambda: c.get(f"{API}/jobs/{job_id}").json()["status"] == "running", 30,
                   "the job to run")
        assert c.post(f"{API}/jobs/{job_id}/cancel").status_code == 200
        assert wait_until(lambda: _finished(c, job_id), 30, "the cancel")["status"] == \
            "cancelled"


def test_schedule_crud_through_the_api(web, accounts):
    name = "api-crud"
    with web.client(accounts["operator"].token) as c:
        r = c.post(f"{API}/schedules", json={"name": name, "every": "1h",
                                             "command": "uptime", "pattern": "fleet"})
        assert r.status_code == 201, r.text
        assert r.json()["when"] == "every 3600s" and r.json()["enabled"] is True
        assert name in [s["name"] for s in c.get(f"{API}/schedules").json()]
        got = c.get(f"{API}/schedules/{name}").json()
        assert got["kwargs"] == {"command": "uptime", "pattern": "fleet",
                                 "inventory": "default", "local_hosts": False}
        edited = c.patch(f"{API}/schedules/{name}", json={"cron": "30 2 * * *",
                                                          "tz": "Europe/Paris",
                                                          "command": "df -h /"})
        assert edited.status_code == 200, edited.text
        assert edited.json()["when"] == "cron '30 2 * * *' Europe/Paris"
        assert edited.json()["kwargs"]["command"] == "df -h /"
        assert c.post(f"{API}/schedules/{name}/disable").json()["next_run_at"] is None
        assert c.post(f"{API}/schedules/{name}/enable").json()["enabled"] is True
        job_id = c.post(f"{API}/schedules/{name}/run").json()["task_id"]
        done = wait_until(lambda: _exists(c, job_id) and _finished(c, job_id), 60,
                          "the schedule's job")
        assert done["status"] == "succeeded"
        assert c.get(f"{API}/jobs", params={"schedule": name}).json()[0]["job_id"] == job_id
        task = {"name": "api-task", "every": "1d", "task": "opsq.prune", "args": "[]"}
        refused = c.post(f"{API}/schedules", json=task)
        assert refused.status_code == 422 and "admin role" in refused.json()["error"]
        with web.client(accounts["admin"].token) as admin:
            made = admin.post(f"{API}/schedules", json=task)
            assert made.status_code == 201, made.text
            gone = c.delete(f"{API}/schedules/api-task")  # an operator may not
            assert gone.status_code == 422 and "only an admin" in gone.json()["error"]
            assert admin.delete(f"{API}/schedules/api-task").status_code == 204
        assert c.delete(f"{API}/schedules/{name}").status_code == 204
        assert c.get(f"{API}/schedules/{name}").status_code == 404
    actions = [r.action for r in rows("SELECT action FROM audit WHERE target = :n "
                                      "ORDER BY id", n=name)]
    assert actions == ["schedule.create", "schedule.edit", "schedule.disable",
                       "schedule.enable", "schedule.run", "schedule.remove"]


def test_a_schedule_of_a_whole_job_line_through_the_api(web, accounts):
    with web.client(accounts["operator"].token) as c:
        r = c.post(f"{API}/schedules", json={
            "name": "api-line", "every": "1h", "overlap": "allow",
            "job": "run 'echo rolled' -t fleet --batch-size 3 --retries 1 --rerun-safe "
                   "--timeout 30"})
        assert r.status_code == 201, r.text
        spec = r.json()["kwargs"]["spec"]
        assert (spec["kind"], spec["command"], spec["batch_size"], spec["retries"],
                spec["command_timeout"]) == ("command", "echo rolled", "3", 1, 30.0)
        assert spec["inventory"] == "default" and spec["local_hosts"] is False
        assert r.json()["overlap"] == "allow"
        job_id = c.post(f"{API}/schedules/api-line/run").json()["task_id"]
        done = wait_until(lambda: _exists(c, job_id) and _finished(c, job_id), 60,
                          "the schedule's job")
        assert done["status"] == "succeeded" and done["batches"] == 2
        assert c.delete(f"{API}/schedules/api-line").status_code == 204


def _exists(c, job_id):
    return c.get(f"{API}/jobs/{job_id}").status_code == 200


FLEET = {"command": "true", "pattern": "fleet"}
BAD_INPUTS = [
    ("POST", "/schedules", {"name": "b1", "cron": "61 * * * *", **FLEET}, "invalid cron line"),
    ("POST", "/schedules", {"name": "b2", "cron": "0 0 31 2 *", **FLEET}, "never fires"),
    ("POST", "/schedules", {"name": "b3", "every": "0s", **FLEET}, "shorter than"),
    ("POST", "/schedules", {"name": "b4", "every": "10m", "command": "true",
                            "pattern": "nosuchgroup"}, "nosuchgroup"),
    ("POST", "/schedules", {"name": "b5", "every": "10m", "timeout": "nan", **FLEET},
     "finite"),
    ("POST", "/schedules", {"name": "x" * 200, "every": "10m", **FLEET}, "too long"),
    ("POST", "/schedules", {"name": "b7", "every": "10m", "task": "opsq.prune",
                            "args": "[1,"}, "not valid JSON"),
    ("POST", "/schedules", {"name": "b8", "every": "10m", "task": "no.such.task"},
     "unknown task"),
    ("POST", "/schedules", {"name": "b9", "at": "2001-01-01T00:00", **FLEET}, "in the past"),
    ("POST", "/schedules", {"name": "b10", "cron": "0 2 * * *", "tz": "Mars/Base",
                            **FLEET}, "unknown time zone"),
    ("POST", "/schedules", {"name": "b11", "cron": "0 2 * * *", "every": "1h", **FLEET},
     "exactly one"),
    ("POST", "/schedules", {"name": "b12", "every": "1h", "command": "a\x00b",
                            "pattern": "fleet"}, "NUL"),
    ("PATCH", "/schedules/api-keep", {"every": "-5m"}, "invalid interval"),
    ("PATCH", "/schedules/api-keep", {"pattern": "fleet:&nothing"}, "nothing"),
    ("POST", "/jobs", {"command": "true", "pattern": "nosuchgroup"}, "nosuchgroup"),
    ("POST", "/jobs", {**FLEET, "timeout": "nan"}, "finite"),
    ("POST", "/jobs", {**FLEET, "timeout": -1}, "above 0"),
    ("POST", "/jobs", {**FLEET, "timeout": 1e9}, "is refused"),
    ("POST", "/jobs", {"command": "  ", "pattern": "fleet"}, "empty"),
    ("POST", "/jobs", {**FLEET, "batch_size": "0"}, "batch-size"),
    ("POST", "/jobs", {**FLEET, "retries": 3}, "rerun-safe"),
    ("POST", "/jobs", {**FLEET, "notify": ["file:///etc/passwd"]}, "http"),
    ("POST", "/jobs", {**FLEET, "become": True, "become_user": "root; rm"},
     "not a user name"),
    ("POST", "/jobs", {**FLEET, "colour": "red"}, "colour"),
    ("POST", "/jobs", {"pattern": "fleet"}, "command"),
]


def _table_state() -> tuple:
    return (count("jobs"), count("host_results"),
            count("audit WHERE action NOT LIKE '%.refused'"),
            [tuple(r) for r in rows("SELECT name, kind, expression, timezone, kwargs::text, "
                                    "enabled FROM schedules ORDER BY name")])


@pytest.mark.parametrize("method,path,body,message", BAD_INPUTS,
                         ids=[f"{m} {p} {msg}" for m, p, _, msg in BAD_INPUTS])
def test_bad_input_is_422_with_a_message_and_nothing_written(web, accounts, method, path,
                                                             body, message):
    # Registered tasks are scheduled by admins; everything else by an operator.
    role = "admin" if "task" in body else "operator"
    with web.client(accounts[role].token) as c:
        if c.get(f"{API}/schedules/api-keep").status_code == 404:
            assert c.post(f"{API}/schedules", json={"name": "api-keep", "every": "1h",
                                                    **FLEET}).status_code == 201
        before = _table_state()
        refusals = count("audit WHERE action LIKE '%.refused'")
        r = c.request(method, API + path, json=body)
        assert r.status_code == 422, r.text
        assert message in r.json()["error"]
        assert _table_state() == before
        if r.json()["error"] != "invalid request" and "extra" not in r.text.lower():
            # opsq's own refusals are audited (pydantic's, before any handler, are not)
            assert count("audit WHERE action LIKE '%.refused'") >= refusals


def test_nan_in_raw_json_is_refused(web, accounts):
    with web.client(accounts["operator"].token) as c:
        before = _table_state()
        r = c.post(f"{API}/jobs", content='{"command": "true", "pattern": "fleet", '
                                          '"timeout": NaN}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "finite" in r.json()["error"]
        assert _table_state() == before


def test_hosts_resolve_and_inventory(web, accounts):
    with web.client(accounts["viewer"].token) as c:
        r = c.get(f"{API}/hosts/resolve", params={"pattern": "fleet[0:1]"})
        assert r.status_code == 200, r.text
        assert [h["name"] for h in r.json()["hosts"]] == ["host01", "host02"]
        assert "vars" not in r.json()["hosts"][0]
        bad = c.get(f"{API}/hosts/resolve", params={"pattern": "nosuchgroup"})
        assert bad.status_code == 422 and "nosuchgroup" in bad.json()["error"]
        inv = c.get(f"{API}/hosts").json()
        assert len(inv["groups"]["fleet"]) == 6
        assert {h["name"] for h in inv["hosts"]} >= set(inv["groups"]["fleet"])


def test_schemathesis_finds_no_server_error(accounts, worker, tmp_path):
    """Fuzzed requests with a valid operator token: none may get a 5xx. The server gets an
    inventory of hosts on a closed port, so fuzzed commands are submitted but run nowhere."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    fleet:\n      hosts:\n"
                         + "".join(f"        host0{i}:\n          ansible_host: 127.0.0.1\n"
                                   f"          ansible_port: 9\n" for i in (1, 2)))
    web = Web(tmp_path / "web.log", {"OPSQ_INVENTORY": str(inventory)})
    report = tmp_path / "junit.xml"
    try:
        r = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{web.url}{API}/openapi.json",
             "--header", f"Authorization: Bearer {accounts['operator'].token}",
             "--checks", "not_a_server_error", "--max-examples", "30",
             "--phases", "examples,fuzzing", "--report", "junit",
             "--report-junit-path", str(report), "--seed", "1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        web.stop()
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    suite = report.read_text()
    assert 'failures="0"' in suite and 'errors="0"' in suite
    assert suite.count("<testcase ") >= 16


def count(table_where: str, **params) -> int:
    return rows(f"SELECT count(*) AS n FROM {table_where}", **params)[0].n


def rows(sql: str, **params):
    with db.session_scope() as s:
        return s.execute(text(sql), params).all()


def test_refuses_to_start_without_a_user(tmp_path):
    """On a database with no user, and with OPSQ_WEB_NO_AUTH off a loopback address."""
    import os

    from opsq.store import schema

    empty = os.environ["OPSQ_DATABASE_URL"] + "_nousers"
    schema.upgrade(empty)
    try:
        for extra, message in (({}, "it needs a login"),
                               ({"OPSQ_WEB_NO_AUTH": "1", "OPSQ_WEB_ADDRESS": "0.0.0.0"},
                                "only allowed on a loopback address")):
            r = subprocess.run([sys.executable, "-m", "opsq.cli", "web"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "OPSQ_DATABASE_URL": empty, **extra})
            assert r.returncode == 2 and message in r.stderr, r.stderr
        w = Web(tmp_path / "web.log", {"OPSQ_DATABASE_URL": empty, "OPSQ_WEB_NO_AUTH": "1"})
        try:
            page = w.client().get("/jobs")
            assert page.status_code == 200 and "anonymous (admin)" in page.text
            assert "everyone is admin" in page.text
            assert "every visitor is an admin named 'anonymous'" in w.log.read_text()
        finally:
            w.stop()
    finally:
        for engine in list(db._engines.values()):
            engine.dispose()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
                        f'DROP DATABASE IF EXISTS "{empty.rsplit("/", 1)[1]}" WITH (FORCE)'],
                       check=False, capture_output=True)


def test_job_events_stream_each_change_until_the_job_ends(web, accounts):
    with web.client(accounts["viewer"].token) as viewer, \
            web.client(accounts["operator"].token) as op:
        job_id = op.post(f"{API}/jobs", json={"command": "sleep 1", "pattern": "fleet"}
                         ).json()["job_id"]
        began = time.monotonic()
        with viewer.stream("GET", f"{API}/jobs/{job_id}/events", timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events, kind = [], None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: ") and kind == "progress":
                    events.append(json.loads(line[len("data: "):]))
        assert time.monotonic() - began < 30  # the stream ended with the job
        assert events[-1]["status"] == "succeeded" and events[-1]["done"] == 6
        assert [e["done"] for e in events] == sorted(e["done"] for e in events)
        assert len(events) >= 2  # it reported progress before the end
        assert viewer.get(f"{API}/jobs/not-a-job/events").status_code == 404


def _session(web, account) -> tuple[httpx.Client, str]:
    """A browser-like client logged in as ``account``, and a CSRF token of its session."""
    c = httpx.Client(base_url=web.url, timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"csrf": csrf, "name": account.name,
                               "password": account.password})
    assert r.status_code == 303, r.text
    page = c.get("/schedules/new").text
    return c, re.search(r'name="csrf" value="([^"]+)"', page).group(1)


FORM_FLEET = {"what": "fleet", "command": "true", "pattern": "fleet", "tz": "UTC"}
BAD_FORMS = [
    ({"name": "f1", "when_kind": "cron", "expression": "61 * * * *", **FORM_FLEET},
     "invalid cron line"),
    ({"name": "f2", "when_kind": "cron", "expression": "0 0 31 2 *", **FORM_FLEET},
     "never fires"),
    ({"name": "f3", "when_kind": "every", "expression": "0s", **FORM_FLEET}, "shorter than"),
    ({"name": "f4", "when_kind": "every", "expression": "10m", **FORM_FLEET,
      "pattern": "nosuchgroup"}, "nosuchgroup"),
    ({"name": "f5", "when_kind": "every", "expression": "10m", **FORM_FLEET,
      "timeout": "nan"}, "finite"),
    ({"name": "x" * 200, "when_kind": "every", "expression": "10m", **FORM_FLEET},
     "too long"),
    ({"name": "f7", "when_kind": "every", "expression": "10m", "what": "task",
      "task": "opsq.prune", "args": "[1,"}, "not valid JSON"),
    ({"name": "f8", "when_kind": "every", "expression": "10m", "what": "task",
      "task": "no.such.task"}, "unknown task"),
    ({"name": "f9", "when_kind": "at", "expression": "2001-01-01T00:00", **FORM_FLEET},
     "in the past"),
    ({"name": "f10", "when_kind": "cron", "expression": "0 2 * * *", **FORM_FLEET,
      "tz": "Mars/Base"}, "unknown time zone"),
]


@pytest.mark.parametrize("form,message", BAD_FORMS, ids=[m for _, m in BAD_FORMS])
def test_the_schedule_form_refuses_bad_input_beside_the_form(web, accounts, form, message):
    client, csrf = _session(web, accounts["admin" if form["what"] == "task" else "operator"])
    try:
        before = _table_state()
        r = client.post("/schedules/new", data={"csrf": csrf, "enabled": "on", **form})
        assert r.status_code == 422
        assert message in html.unescape(r.text)
        assert 'name="expression"' in r.text  # the form again, with the message
        assert _table_state()[-1] == before[-1] and _table_state()[0] == before[0]
    finally:
        client.close()


def test_admins_manage_users_in_the_console_and_others_cannot(web, accounts):
    from opsq.web import users

    name = f"console-made-{secrets.token_hex(3)}"
    admin, csrf = _session(web, accounts["admin"])
    try:
        r = admin.post("/users", data={"csrf": csrf, "name": name, "role": "viewer",
                                       "password": "a long enough password"})
        assert r.status_code == 303, r.text
        made = {u.name: u for u in users.all_users()}[name]
        assert made.role == "viewer"
        assert users.login(name, "a long enough password") is not None
        again = admin.post("/users", data={"csrf": csrf, "name": name, "role": "viewer",
                                           "password": "a long enough password"})
        assert again.status_code == 422 and "already exists" in html.unescape(again.text)
        made = admin.post(f"/users/{name}/token", data={"csrf": csrf,
                                                        "token_name": "console-made"})
        assert made.status_code == 303  # a refresh of the answer makes nothing
        token_page = admin.get(made.headers["location"])
        token = re.search(r'<code class="mono">([^<]+)</code>', token_page.text).group(1)
        assert users.by_token(token).name == name
        again_shown = admin.get(made.headers["location"])
        assert token not in again_shown.text  # shown once
        assert [t.name for t in users.tokens(name)] == ["console-made"]
        forged = admin.post(f"/users/{name}/remove", data={"csrf": "forged"})
        assert forged.status_code == 403 and users.by_name(name) is not None
        assert admin.post(f"/users/{name}/remove", data={"csrf": csrf}).status_code == 303
        assert users.by_name(name) is None
    finally:
        admin.close()
    operator, csrf = _session(web, accounts["operator"])
    try:
        assert operator.get("/users").status_code == 403
        r = operator.post("/users", data={"csrf": csrf, "name": "sneaky", "role": "admin",
                                          "password": "a long enough password"})
        assert r.status_code == 403 and users.by_name("sneaky") is None
    finally:
        operator.close()
    actions = [a for a, t in rows("SELECT action, target FROM audit WHERE target = :t",
                                  t=name)]
    assert actions == ["user.add", "user.add.refused", "user.token", "user.remove"]


def test_the_schedule_form_takes_a_job_line(web, accounts):
    client, csrf = _session(web, accounts["operator"])
    try:
        r = client.post("/schedules/new", data={
            "csrf": csrf, "name": "form-line", "when_kind": "every", "expression": "1h",
            "what": "fleet", "enabled": "on", "overlap": "skip",
            "job": "run 'echo from the form' -t fleet --retries 1 --rerun-safe"})
        assert r.status_code == 303, r.text[-500:]
        row = [s for s in rows("SELECT kwargs FROM schedules WHERE name = 'form-line'")][0]
        assert row.kwargs["spec"]["command"] == "echo from the form"
        bad = client.post("/schedules/new", data={
            "csrf": csrf, "name": "form-line-2", "when_kind": "every", "expression": "1h",
            "what": "fleet", "job": "script /etc/shadow -t fleet"})
        assert bad.status_code == 422 and "command line" in html.unescape(bad.text)
    finally:
        client.close()
    with web.client(accounts["operator"].token) as c:
        assert c.delete(f"{API}/schedules/form-line").status_code == 204


def test_a_viewer_reads_a_job_folded_by_output(web, accounts):
    from jobtools import HOST_NUMBER

    with web.client(accounts["operator"].token) as c:
        job_id = c.post(f"{API}/jobs", json={
            "command": f"{HOST_NUMBER}; if [ $n -le 2 ]; then echo low; else echo high; fi",
            "pattern": "host0[1-4]"}).json()["job_id"]
        wait_until(lambda: _finished(c, job_id), 60, "the job")
    with web.client(accounts["viewer"].token) as c:
        got = c.get(f"{API}/jobs/{job_id}/groups").json()
        assert got["total"] == 2
        # Groups of the same size come in inventory order.
        assert [(g["hosts"], g["count"], g["stdout"], g["statuses"]) for g in got["groups"]] \
            == [("host[01-02]", 2, "low\n", {"ok": 2}), ("host[03-04]", 2, "high\n", {"ok": 2})]
        page = c.get(f"{API}/jobs/{job_id}/groups", params={"offset": 1, "limit": 1}).json()
        assert (page["total"], [g["hosts"] for g in page["groups"]]) == (2, ["host[03-04]"])
        assert c.get(f"{API}/jobs/{job_id}/groups", params={"limit": 0}).status_code == 422
