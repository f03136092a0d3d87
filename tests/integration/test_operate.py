"""Running opsq as an operator does: daemons through celery multi, and Flower."""

from __future__ import annotations

import ast
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, alive, free_port, wait_until

from opsq import jobs


class Daemons:
    """``opsq daemons ...`` run as a user would, in their own directories and vhost."""

    def __init__(self, tmp: Path, broker_url: str) -> None:
        self.run_dir, self.log_dir = tmp / "run", tmp / "log"
        self.env = {**os.environ, "OPSQ_RUN_DIR": str(self.run_dir),
                    "OPSQ_LOG_DIR": str(self.log_dir), "OPSQ_BROKER_URL": broker_url,
                    "OPSQ_FLEET_CONCURRENCY": "16"}

    def opsq(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "opsq.cli", *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def pids(self) -> dict[str, int]:
        out = {}
        for name in ("fleet", "control", "beat"):
            f = self.run_dir / f"{name}.pid"
            if f.exists():
                out[name] = int(f.read_text().strip())
        return out

    def all_up(self) -> bool:
        return self.opsq("daemons", "status").stdout.count("answers ping") == 2


@pytest.fixture
def daemons(tmp_path, own_vhost, fleet):
    d = Daemons(tmp_path, own_vhost)
    yield d
    d.opsq("daemons", "stop")
    for pid in d.pids().values():  # whatever a failed test left behind
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_start_run_restart_stop(daemons):
    out = daemons.opsq("daemons", "start")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(daemons.all_up, 60, "both nodes answering a ping")
    first = daemons.pids()
    assert set(first) == {"fleet", "control", "beat"}
    assert all(alive(p) for p in first.values())

    run = daemons.opsq("run", "echo via-daemons", "-t", "odd", "--wait", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["counts"] == {"ok": 3}

    # a job in flight across a restart still completes, every host accounted for
    job = daemons.opsq("run", "sleep 2; echo survived", "-t", "fleet")
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip()
    time.sleep(0.5)
    out = daemons.opsq("daemons", "restart")
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(daemons.all_up, 60, "nodes back after restart")
    second = daemons.pids()
    assert second["fleet"] != first["fleet"] and second["control"] != first["control"]
    assert not alive(first["fleet"]) and not alive(first["control"])
    summary = jobs.wait(job_id, timeout=60)
    assert summary.succeeded and summary.counts == {"ok": 6}
    assert {r["stdout"] for r in jobs.host_results(job_id)} == {"survived\n"}

    out = daemons.opsq("daemons", "stop")
    assert out.returncode == 0, out.stdout + out.stderr
    assert daemons.pids() == {}
    assert not any(alive(p) for p in second.values())
    status = daemons.opsq("daemons", "status")
    assert status.returncode == 1 and "not running" in status.stdout


def test_stale_pidfile_is_reported_cleared_and_does_not_block_start(daemons):
    dead = subprocess.Popen(["true"])
    dead.wait()
    daemons.run_dir.mkdir(parents=True)
    (daemons.run_dir / "fleet.pid").write_text(f"{dead.pid}\n")
    out = daemons.opsq("daemons", "start", "--no-beat")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"stale pid file {daemons.run_dir / 'fleet.pid'} (pid {dead.pid}" in out.stdout
    wait_until(daemons.all_up, 60, "both nodes up despite the stale pid file")
    assert daemons.pids()["fleet"] != dead.pid


# -- Flower ----------------------------------------------------------------------------


class Flower:
    def __init__(self, tmp: Path, user: str, password: str) -> None:
        self.port = free_port()
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.env = {**os.environ, "OPSQ_FLOWER_USER": user, "OPSQ_FLOWER_PASSWORD": password,
                    "OPSQ_FLOWER_PORT": str(self.port), "OPSQ_FLOWER_DB": str(tmp / "flower.db")}
        self.log = tmp / "flower.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "opsq.cli", "flower"], cwd=ROOT,
                                     env=self.env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: self.get("/healthcheck", auth=False)[0] == 200, 30, "Flower up")
        # Flower only sees events of workers it knows: wait until it lists one.
        wait_until(lambda: json.loads(self.get("/api/workers?refresh=1")[1] or "{}"), 30,
                   "Flower to see the worker")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # Flower saves its state on the way out
            self.proc.wait(30)

    def get(self, path: str, auth: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""


@pytest.fixture
def flower(tmp_path, worker):
    f = Flower(tmp_path, "operator", secrets.token_urlsafe(12))
    f.start()
    yield f
    f.stop()


def test_flower_refuses_to_start_without_credentials(opsq_cli):
    out = opsq_cli("flower", env={"OPSQ_FLOWER_USER": "", "OPSQ_FLOWER_PASSWORD": ""})
    assert out.returncode == 2
    assert "OPSQ_FLOWER_USER and OPSQ_FLOWER_PASSWORD" in out.stderr
    out = opsq_cli("flower", env={"OPSQ_FLOWER_NO_AUTH": "1", "OPSQ_FLOWER_ADDRESS": "0.0.0.0"})
    assert out.returncode == 2 and "loopback" in out.stderr


def test_flower_shows_a_job_with_auth_and_without_secrets(flower):
    summary = jobs.submit(jobs.JobSpec(command="echo flower --password=hunter2",
                                       pattern="even")).get(timeout=60)
    job_id = summary["job_id"]

    def tasks() -> dict:
        code, body = flower.get("/api/tasks?limit=500")
        assert code == 200
        return json.loads(body)

    listed = wait_until(lambda: (t := tasks()).get(job_id, {}).get("state") == "SUCCESS" and t,
                        20, "the job's callback in Flower")
    assert listed[job_id]["name"] == "opsq.finish_job"
    # The job's tasks, each showing the hosts it covers and the masked command.
    per_chunk = [t for t in listed.values()
                 if t["name"] == "opsq.run_hosts" and job_id in (t.get("kwargs") or "")]
    covered = [h for t in per_chunk for h in ast.literal_eval(t["args"])[0]]
    assert sorted(covered) == ["host02", "host04", "host06"]
    assert all("--password=****" in t["args"] for t in per_chunk)
    assert "hunter2" not in json.dumps(listed)

    assert flower.get("/api/tasks", auth=False)[0] == 401
    assert flower.get("/tasks", auth=False)[0] == 401
    code, metrics = flower.get("/metrics", auth=False)
    assert code == 200 and "flower_events_total" in metrics

    # persistent state: a restarted Flower still knows the job
    flower.stop()
    flower.start()
    assert job_id in tasks()


def test_plain_celery_multi_from_celerys_docs_works_against_the_app(tmp_path, own_vhost, fleet):
    env = {**os.environ, "OPSQ_BROKER_URL": own_vhost}
    opts = [f"--pidfile={tmp_path}/%n.pid", f"--logfile={tmp_path}/%n%I.log"]
    celery = [sys.executable, "-m", "celery"]
    out = subprocess.run([*celery, "multi", "start", "w1", "-A", "opsq", "-l", "info", *opts],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    pidfile = tmp_path / "w1.pid"
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30,
                         "w1's pid file"))
    try:
        d = Daemons(tmp_path, own_vhost)
        run = d.opsq("run", "echo plain-multi", "-t", "host01", "--wait", "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["results"][0]["stdout"] == "plain-multi\n"
    finally:
        out = subprocess.run([*celery, "multi", "stopwait", "w1", "-A", "opsq", *opts],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # stopwait returns once the pid stops answering signals; /proc may show it a moment
    # longer while it is reaped.
    wait_until(lambda: not alive(pid), 10, "w1 gone")
    assert not (tmp_path / "w1.pid").exists()
