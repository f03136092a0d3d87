"""Running a job again: every host, or only those that did not end ok, from the CLI, the
API and the job page; the new job says which job it repeats."""

from __future__ import annotations

import json
import re
import secrets

import httpx
import pytest
from sqlalchemy import text
from webtools import Web, make_account

from opsq import jobs
from opsq.store import db

API = "/api/v1"
#: Fails on the first and third hosts (by the address their sshd listens on) the first
#: time, succeeds everywhere after.
FLAKY = ("ip=$(echo $SSH_CONNECTION | cut -d' ' -f3); m=/tmp/opsq-rerun-{tag}-$ip; "
         "case $ip in *.1|*.3) test -e $m || {{ touch $m; exit 4; }};; esac; echo ran")


def _rerun_of(job_id: str) -> str | None:
    with db.session_scope() as s:
        return s.execute(text("SELECT rerun_of FROM jobs WHERE id = :j"),
                         {"j": job_id}).scalar_one()


def _first_run(opsq_cli, tag: str) -> str:
    tag = f"{tag}-{secrets.token_hex(4)}"
    r = opsq_cli("run", FLAKY.format(tag=tag), "-t", "fleet[0:3]", "--json")
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["job_id"]
    summary = jobs.wait(job_id, timeout=60)
    assert summary.counts == {"ok": 2, "failed": 2}, summary.counts
    return job_id


def test_rerun_failed_runs_only_the_hosts_that_did_not_end_ok(worker, opsq_cli):
    first = _first_run(opsq_cli, "cli")
    r = opsq_cli("rerun", first, "--failed", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded (2 ok)" in r.stdout
    again = jobs.recent(5)[0]["job_id"]
    summary = jobs.summary(again)
    assert set(summary.hosts) == {h for h, v in jobs.summary(first).hosts.items()
                                  if v["status"] != "ok"}
    assert _rerun_of(again) == first and summary.pattern == "fleet[0:3]"
    everything = opsq_cli("rerun", first, "--json")
    assert everything.returncode == 0, everything.stderr
    whole = json.loads(everything.stdout)
    assert whole["rerun_of"] == first
    assert jobs.wait(whole["job_id"], timeout=60).total == 4
    # nothing failed: refused, nothing written
    nothing = opsq_cli("rerun", whole["job_id"], "--failed")
    assert nothing.returncode == 2 and "nothing to run again" in nothing.stderr
    missing = opsq_cli("rerun", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 2 and "no job" in missing.stderr


def test_a_running_job_is_not_rerun(worker, opsq_cli):
    r = opsq_cli("run", "sleep 5", "-t", "host01", "--json")
    job_id = json.loads(r.stdout)["job_id"]
    again = opsq_cli("rerun", job_id)
    assert again.returncode == 2 and "still" in again.stderr
    jobs.wait(job_id, timeout=30)


@pytest.fixture(scope="module")
def accounts(services):
    return make_account("operator", "rr"), make_account("viewer", "rr")


@pytest.fixture(scope="module")
def web(accounts, tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("web") / "web.log")
    yield w
    w.stop()


def test_rerun_from_the_api_and_the_job_page(worker, web, accounts, opsq_cli):
    first = _first_run(opsq_cli, "web")
    operator, viewer = accounts
    with web.client(viewer.token) as c:
        assert c.post(f"{API}/jobs/{first}/rerun", json={"failed": True}).status_code == 403
    with web.client(operator.token) as c:
        r = c.post(f"{API}/jobs/{first}/rerun", json={"failed": True})
        assert r.status_code == 201, r.text
        again = r.json()["job_id"]
        done = jobs.wait(again, timeout=60)
        assert done.total == 2 and done.succeeded
        assert c.get(f"{API}/jobs/{again}").json()["rerun_of"] == first
    with db.session_scope() as s:
        entry = s.execute(text("SELECT detail FROM audit WHERE action = 'job.rerun' AND "
                               "target = :j"), {"j": again}).scalar_one()
    assert entry["rerun_of"] == first and entry["failed_only"] is True
    # the page: both buttons for an operator on a finished job, and the link back
    c = httpx.Client(base_url=web.url, timeout=30)
    try:
        csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        c.post("/login", data={"csrf": csrf, "name": operator.name,
                               "password": operator.password})
        page = c.get(f"/jobs/{first}").text
        assert 'id="rerun"' in page and 'id="rerun-failed"' in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        made = c.post(f"/jobs/{first}/rerun", data={"csrf": csrf})
        assert made.status_code == 303
        third = made.headers["location"].rsplit("/", 1)[1]
        assert jobs.wait(third, timeout=60).total == 4
        assert f'href="/jobs/{first}"' in c.get(f"/jobs/{third}").text
    finally:
        c.close()
