"""Prometheus metrics, scraped as Prometheus would (a bearer token against the console,
or ``opsq metrics`` on its own port), checked against the jobs that ran."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from helpers import ROOT, free_port, wait_until
from jobtools import run_job
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from webtools import Web, make_account

from opsq.store import db


@pytest.fixture(scope="module")
def viewer(services):
    return make_account("viewer", "metrics")


@pytest.fixture(scope="module")
def web(viewer, worker, tmp_path_factory):
    w = Web(tmp_path_factory.mktemp("web") / "web.log")
    yield w
    w.stop()


def _samples(body: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def _count(sql: str) -> int:
    with db.session_scope() as s:
        return s.execute(text(sql)).scalar()


def test_the_console_serves_metrics_that_match_the_jobs(web, viewer):
    run_job("true")
    run_job("exit 3", pattern="host01")
    with web.client() as anonymous:
        assert anonymous.get("/api/v1/metrics").status_code == 401
    with web.client(viewer.token) as c:
        r = c.get("/api/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = _samples(r.text)
    assert got[("opsq_jobs", (("status", "succeeded"),))] == _count(
        "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
    assert got[("opsq_jobs", (("status", "failed"),))] == _count(
        "SELECT count(*) FROM jobs WHERE status = 'failed'") >= 1
    assert got[("opsq_host_results", (("status", "failed"),))] == _count(
        "SELECT count(*) FROM host_results WHERE status = 'failed'") >= 1
    finished = _count("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL "
                      "AND duration IS NOT NULL")
    assert got[("opsq_job_duration_seconds_count", ())] == finished
    assert got[("opsq_job_duration_seconds_bucket", (("le", "+Inf"),))] == finished
    assert got[("opsq_job_duration_seconds_bucket", (("le", "1.0"),))] <= finished
    assert ("opsq_queue_tasks", (("queue", "opsq.fleet"),)) in got


def test_opsq_metrics_serves_them_on_a_port_of_its_own(services):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "opsq.cli", "metrics", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def scraped():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.HTTPError:
                return None

        r = wait_until(scraped, 30, "opsq metrics to answer")
        got = _samples(r.text)
        assert got[("opsq_jobs", (("status", "succeeded"),))] == _count(
            "SELECT count(*) FROM jobs WHERE status = 'succeeded'")
    finally:
        proc.terminate()
        proc.wait(10)
