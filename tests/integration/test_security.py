"""What opsq refuses to do on a user's behalf: Flower control, silent host-key changes,
a forwarded SSH agent, files others can read."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, wait_until
from sqlalchemy import text

from opsq.store import db

#: Seconds a task sent through Flower would take at most to become a job.
SUBMIT_GRACE = 5


# -- Flower -----------------------------------------------------------------------------


def _jobs_with(command: str) -> int:
    with db.session_scope() as s:
        return s.execute(text("SELECT count(*) FROM jobs WHERE command = :c"),
                         {"c": command}).scalar_one()


#: Flower's endpoints that run, stop or re-time tasks or steer workers, with a body each.
CONTROL_ENDPOINTS = [
    ("/api/task/apply/opsq.submit_job", {"args": ["{command}", "host01"]}),
    ("/api/task/async-apply/opsq.submit_job", {"args": ["{command}", "host01"]}),
    ("/api/task/send-task/opsq.submit_job", {"args": ["{command}", "host01"]}),
    ("/api/task/revoke/{task}?terminate=true", None),
    ("/api/task/abort/{task}", None),
    ("/api/task/rate-limit/opsq.run_hosts?workername={worker}&ratelimit=1", None),
    ("/api/task/timeout/opsq.run_hosts?workername={worker}&hard=1", None),
    ("/api/worker/pool/grow/{worker}?n=1", None),
    ("/api/worker/pool/shrink/{worker}?n=1", None),
    ("/api/worker/pool/autoscale/{worker}?min=1&max=2", None),
    ("/api/worker/pool/restart/{worker}", None),
    ("/api/worker/queue/add-consumer/{worker}?queue=stolen", None),
    ("/api/worker/queue/cancel-consumer/{worker}?queue=opsq.fleet", None),
    ("/api/worker/shutdown/{worker}", None),
]


def test_flower_is_read_only_by_default(start_flower):
    flower = start_flower()
    command = f"echo flower-read-only-{secrets.token_hex(4)}"
    # A worker name Flower does not know: were the guard missing, control requests would
    # be answered 404 rather than act on the test's worker.
    fill = {"command": command, "task": secrets.token_hex(16), "worker": "nobody@nowhere"}
    for path, body in CONTROL_ENDPOINTS:
        body = json.loads(json.dumps(body).replace("{command}", command)) if body else None
        code, reply = flower.request("POST", path.format(**fill), body)
        assert code == 403, (path, code, reply)
        assert "read-only" in reply
    assert flower.request("POST", CONTROL_ENDPOINTS[1][0], CONTROL_ENDPOINTS[1][1],
                          auth=False)[0] == 401
    time.sleep(SUBMIT_GRACE)
    assert _jobs_with(command) == 0
    # watching still works
    code, workers = flower.request("GET", "/api/workers")
    assert code == 200 and any("fleetworker" in w for w in json.loads(workers))
    assert flower.request("GET", "/api/tasks?limit=5")[0] == 200
    assert flower.request("GET", "/tasks")[0] == 200
    assert flower.request("GET", "/api/task/types")[0] == 200
    # what Flower saves lists every task's arguments: its user's eyes only
    flower.stop()
    assert any(flower.state_dir.iterdir())
    assert _open_to_others(flower.state_dir) == []


def test_flower_control_is_an_explicit_setting(start_flower):
    flower = start_flower({"OPSQ_FLOWER_CONTROL": "1"})
    command = f"echo flower-control-{secrets.token_hex(4)}"
    code, reply = flower.request("POST", "/api/task/async-apply/opsq.submit_job",
                                 {"args": [command, "host01"]})
    assert code == 200, reply
    wait_until(lambda: _jobs_with(command) == 1, SUBMIT_GRACE * 4, "the job Flower submitted")


# -- host keys --------------------------------------------------------------------------


def _fleet_host(fleet, name: str):
    from devtools.devfleet import FLEET_USER
    from opsq.inventory import Host

    h = next(h for h in fleet.hosts if h.name == name)
    return Host(name=h.name, address=h.address, port=h.port, user=FLEET_USER,
                key_file=str(fleet.client_key_path))


def _connect(host, known_hosts: Path):
    import dataclasses

    from opsq.hostrun.runner import RunOptions
    from opsq.hostrun.ssh import open_connection
    from opsq.settings import get_settings

    opts = dataclasses.replace(RunOptions.resolve(host, get_settings()), known_hosts=known_hosts)
    return open_connection(host, opts)


def test_a_key_of_another_type_is_not_trusted_beside_the_recorded_one(tmp_path, fleet,
                                                                       opsq_cli):
    import paramiko

    from opsq.errors import HostKeyError
    from opsq.hostrun.ssh import fingerprint, known_hosts_name

    host01 = _fleet_host(fleet, "host01")
    name = known_hosts_name(host01.address, host01.port)
    recorded = paramiko.RSAKey.generate(2048)  # what known_hosts has; the host offers ed25519
    known = tmp_path / "known_hosts"
    line = f"{name} ssh-rsa {recorded.get_base64()}\n"
    known.write_text(line)
    env = {"OPSQ_KNOWN_HOSTS": str(known)}

    out = opsq_cli("hosts", "trust", "host01", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "host01: REFUSED" in out.stdout and fingerprint(recorded) in out.stdout
    assert "opsq hosts retrust host01" in out.stdout
    assert known.read_text() == line

    # the other hosts are trusted as usual, the refused one stays as it was
    out = opsq_cli("hosts", "trust", "host01:host02", env=env)
    assert out.returncode == 2
    assert "host02: trusted" in out.stdout
    lines = known.read_text().splitlines(keepends=True)
    assert lines[0] == line and len(lines) == 2 and name not in lines[1]

    # and a connection refuses it as a changed key, not as a first contact
    with pytest.raises(HostKeyError, match="CHANGED") as refused:
        _connect(host01, known)
    assert fingerprint(recorded) in str(refused.value)

    # replacing is explicit, and shows both fingerprints
    out = opsq_cli("hosts", "retrust", "host01", "--yes", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    offered = _connect(host01, known)
    try:
        assert fingerprint(recorded) in out.stdout
        assert fingerprint(offered.client.get_transport().get_remote_server_key()) in out.stdout
    finally:
        offered.close()
    text_now = known.read_text()
    assert "ssh-rsa" not in text_now and f"{name} ssh-ed25519 " in text_now
    assert lines[1] in text_now


def test_retrust_keeps_the_recorded_key_unless_confirmed(tmp_path, fleet):
    import paramiko

    from opsq.hostrun.ssh import known_hosts_name

    host01 = _fleet_host(fleet, "host01")
    known = tmp_path / "known_hosts"
    line = (f"{known_hosts_name(host01.address, host01.port)} ssh-rsa "
            f"{paramiko.RSAKey.generate(2048).get_base64()}\n")
    known.write_text(line)
    out = subprocess.run([sys.executable, "-m", "opsq.cli", "hosts", "retrust", "host01"],
                         cwd=ROOT, env={**os.environ, "OPSQ_KNOWN_HOSTS": str(known)},
                         input="n\n", capture_output=True, text=True, timeout=60)
    assert "Replace?" in out.stdout and out.returncode == 2
    assert known.read_text() == line


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e9"])
def test_trust_timeout_must_be_a_sane_number_of_seconds(opsq_cli, value, tmp_path):
    known = tmp_path / "known_hosts"
    out = opsq_cli("hosts", "trust", "host01", "--timeout", value,
                   env={"OPSQ_KNOWN_HOSTS": str(known)})
    assert out.returncode == 2, out.stderr
    assert "--timeout" in out.stderr and "Traceback" not in out.stderr
    assert not known.exists()


# -- the worker's ssh_config ------------------------------------------------------------


@pytest.fixture
def ssh_agent(tmp_path):
    """A running ssh-agent with a key loaded; its socket path."""
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, 10, "ssh-agent's socket")
        key = tmp_path / "agent_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
                       check=True, capture_output=True)
        yield sock
    finally:
        agent.terminate()
        agent.wait(10)


def test_the_workers_ssh_config_neither_forwards_its_agent_nor_breaks_timeouts(
        tmp_path, fleet, ssh_agent, start_worker):
    from jobtools import rows, run_on_worker

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n    ForwardAgent yes\n    ConnectTimeout 5\n")
    start_worker("agentworker", extra_env={"HOME": str(home), "SSH_AUTH_SOCK": str(ssh_agent)})
    summary = run_on_worker("echo agent=${SSH_AUTH_SOCK:-none}", "host01", "agentworker")
    r = rows(summary["job_id"])["host01"]
    assert (r["status"], r["error"]) == ("ok", None)
    assert r["stdout"] == "agent=none\n"



# -- file permissions -------------------------------------------------------------------


def _open_to_others(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that group or others may read or enter."""
    return [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in [root, *root.rglob("*")]
            if p.stat().st_mode & 0o077]


def test_daemons_write_logs_and_pid_files_for_their_user_only(tmp_path, own_vhost, fleet):
    run_dir, log_dir = tmp_path / "var" / "run", tmp_path / "var" / "log"
    log_dir.mkdir(parents=True, mode=0o755)  # left open by an earlier release
    old_log = log_dir / "fleet.log"
    old_log.write_text("earlier output\n")
    old_log.chmod(0o644)
    env = {**os.environ, "OPSQ_RUN_DIR": str(run_dir), "OPSQ_LOG_DIR": str(log_dir),
           "OPSQ_BROKER_URL": own_vhost, "OPSQ_FLEET_CONCURRENCY": "4"}

    def opsq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "opsq.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    try:
        out = opsq("daemons", "start")
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: opsq("daemons", "status").stdout.count("answers ping") == 2, 60,
                   "both nodes answering a ping")
        wait_until(lambda: (run_dir / "beat.pid").exists() and (log_dir / "beat.log").exists(),
                   30, "beat's pid file and log")
        assert {"fleet.pid", "control.pid", "beat.pid"} <= {p.name for p in run_dir.iterdir()}
        assert {"fleet.log", "control.log", "beat.log"} <= {p.name for p in log_dir.iterdir()}
        assert _open_to_others(run_dir) == []
        assert _open_to_others(log_dir) == []
    finally:
        opsq("daemons", "stop")
