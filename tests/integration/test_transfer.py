"""put, get, script and --become, end to end: real worker, real sshd hosts logging in as
an unprivileged user, a real sudo rule that asks for that user's password.

The fleet's hosts share this machine's file system, so a test looks at a host's files
directly; each test targets one host, so two hosts never race for the same path.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import wait_until
from jobtools import rows, submit_spec_via, wait_for_status
from sqlalchemy import text

from devtools.devfleet import FLEET_USER
from opsq import jobs
from opsq.jobs import kinds
from opsq.store import db

pytestmark = pytest.mark.usefixtures("worker")


def _spec(pattern: str = "host01", **kw) -> jobs.JobSpec:
    return jobs.JobSpec(command="", pattern=pattern, **kw)


def _run(spec: jobs.JobSpec) -> tuple[dict, dict]:
    summary = jobs.submit(spec).get(timeout=90)
    return summary, rows(summary["job_id"])


@pytest.fixture
def remote_dir():
    """A directory on the hosts the fleet user may write in."""
    d = Path(tempfile.mkdtemp(prefix="opsq-put-"))
    entry = pwd.getpwnam(FLEET_USER)
    os.chown(d, entry.pw_uid, entry.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _local(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- put -------------------------------------------------------------------------------------


def test_put_writes_then_reports_unchanged(tmp_path, remote_dir):
    data = b"listen 8080\n" + secrets.token_bytes(64)
    local = _local(tmp_path, "app.conf", data)
    target = remote_dir / "app.conf"
    summary, hosts = _run(kinds.put_spec(_spec(), local, str(target), mode="0640"))
    assert summary["succeeded"] and summary["kind"] == "put"
    assert hosts["host01"]["changed"] is True
    assert hosts["host01"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert target.stat().st_uid == pwd.getpwnam(FLEET_USER).pw_uid
    mtime = target.stat().st_mtime_ns

    summary, hosts = _run(kinds.put_spec(_spec(), local, str(target), mode="0640"))
    assert summary["succeeded"] and hosts["host01"]["changed"] is False
    assert summary["hosts"]["host01"]["changed"] is False
    assert target.stat().st_mtime_ns == mtime  # not written again
    # a different mode alone is a change
    _, hosts = _run(kinds.put_spec(_spec(), local, str(target), mode="0600"))
    assert hosts["host01"]["changed"] is True
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert list(remote_dir.glob(".opsq-put.*")) == []  # no temporary file left


def test_put_backup_keeps_the_old_file(tmp_path, remote_dir):
    target = remote_dir / "motd"
    target.write_bytes(b"old\n")
    _, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, "motd", b"new\n"),
                                     str(target), backup=True))
    assert hosts["host01"]["changed"] is True
    assert target.read_bytes() == b"new\n"
    backups = list(remote_dir.glob("motd.opsq-*"))
    assert [b.read_bytes() for b in backups] == [b"old\n"]


def test_put_into_a_missing_directory_fails_the_host_with_the_reason(tmp_path, remote_dir):
    summary, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, "f", b"x"),
                                           str(remote_dir / "nope" / "f")))
    assert not summary["succeeded"]
    assert hosts["host01"]["status"] == "failed"
    assert "does not exist" in hosts["host01"]["error"]


def test_a_reader_never_sees_part_of_a_file(tmp_path, remote_dir):
    size = 4 * 1024 * 1024
    versions = [bytes([i]) * size for i in (65, 66)]
    locals_ = [_local(tmp_path, f"v{i}", v) for i, v in enumerate(versions)]
    target = remote_dir / "big.bin"
    target.write_bytes(versions[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.add(hashlib.sha256(data).digest())
            if len(data) != size or data not in versions:
                seen.add(b"PARTIAL")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(4):
            _, hosts = _run(kinds.put_spec(_spec(), locals_[(i + 1) % 2], str(target)))
            assert hosts["host01"]["changed"] is True
    finally:
        stop.set()
        reader.join()
    assert b"PARTIAL" not in seen
    assert len(seen) == 2  # both versions were read, nothing else


def test_owner_and_root_files_through_become(tmp_path):
    target = Path("/etc") / f"opsq-test-{secrets.token_hex(4)}.conf"
    try:
        summary, hosts = _run(kinds.put_spec(
            _spec(params=kinds.become_params(True, None)), _local(tmp_path, "c", b"root\n"),
            str(target), owner="root:root", mode="0600"))
        assert summary["succeeded"], hosts["host01"]
        st = target.stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, 0, "0o600")
        # Without become the login user cannot write there: a failed host, with why.
        summary, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, "d", b"x\n"),
                                               str(target)))
        assert hosts["host01"]["status"] == "failed"
        assert "ermission denied" in hosts["host01"]["error"]
        assert target.read_bytes() == b"root\n"
    finally:
        target.unlink(missing_ok=True)


def test_too_large_a_file_is_refused_before_anything_is_queued(tmp_path, opsq_cli):
    local = _local(tmp_path, "big", b"x" * 2048)
    with db.session_scope() as s:
        before = s.execute(text("SELECT count(*) FROM jobs")).scalar()
    out = opsq_cli("put", local, "/tmp/big", "-t", "host01", env={"OPSQ_MAX_FILE": "1024"})
    assert out.returncode == 2 and "OPSQ_MAX_FILE" in out.stderr
    with db.session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM jobs")).scalar() == before


def test_the_file_is_stored_once_per_job_not_per_host(tmp_path, remote_dir):
    data = secrets.token_bytes(1000)
    sha = hashlib.sha256(data).hexdigest()
    summary, hosts = _run(kinds.put_spec(_spec("host01"), _local(tmp_path, "f", data),
                                           str(remote_dir / "f")))
    assert summary["succeeded"]
    with db.session_scope() as s:
        stored = s.execute(text("SELECT count(*), sum(size) FROM files WHERE sha256 = :s"),
                           {"s": sha}).one()
        params = s.execute(text("SELECT params FROM jobs WHERE id = :j"),
                           {"j": summary["job_id"]}).scalar_one()
    assert tuple(stored) == (1, 1000)
    assert params["sha256"] == sha and "content" not in params


# -- get -------------------------------------------------------------------------------------


def test_get_fetches_content_and_sha256(remote_dir, tmp_path, opsq_cli):
    data = secrets.token_bytes(300_000)
    source = remote_dir / "app.log"
    source.write_bytes(data)
    dest = tmp_path / "fetched"
    out = opsq_cli("get", str(source), str(dest), "-t", "host01", "--wait")
    assert out.returncode == 0, out.stderr
    saved = dest / "host01" / str(source).lstrip("/")
    assert saved.read_bytes() == data
    job_id = out.stderr.splitlines()[0].split()[1]
    assert rows(job_id)["host01"]["sha256"] == hashlib.sha256(data).hexdigest()
    # saved again later from the job, as the README says
    again = tmp_path / "again"
    out = opsq_cli("result", job_id, "--save", str(again))
    assert out.returncode == 0, out.stderr
    assert (again / "host01" / str(source).lstrip("/")).read_bytes() == data


def test_get_over_the_fetch_limit_fails_the_host_and_keeps_nothing(remote_dir, start_worker):
    source = remote_dir / "huge.bin"
    source.write_bytes(b"y" * 5000)
    start_worker("fetchcap", {"OPSQ_FETCH_LIMIT": "4096"})
    job_id = submit_spec_via("fetchcap", kinds.get_spec(_spec(), str(source)))
    summary = jobs.wait(job_id, timeout=60)
    host = rows(job_id)["host01"]
    assert not summary.succeeded and host["status"] == "failed"
    assert "fetch limit" in host["error"] and host["sha256"] is None


def test_get_of_a_missing_file_fails_with_the_reason(remote_dir):
    summary, hosts = _run(kinds.get_spec(_spec(), str(remote_dir / "absent")))
    assert hosts["host01"]["status"] == "failed"
    assert "does not exist" in hosts["host01"]["error"]


# -- script ----------------------------------------------------------------------------------

SCRIPT = """#!/bin/sh
echo "args=$#: $1|$2"
echo "dir=$(dirname "$0")"
exit "${EXIT:-0}"
"""


def _script_dirs() -> set[str]:
    return set(glob.glob("/tmp/opsq-script.*"))


def test_script_runs_with_arguments_and_cleans_up(tmp_path):
    before = _script_dirs()
    path = _local(tmp_path, "check.sh", SCRIPT.encode())
    summary, hosts = _run(kinds.script_spec(_spec(), path, ["a b", "$HOME"]))
    assert summary["succeeded"], hosts["host01"]
    out = hosts["host01"]["stdout"]
    assert "args=2: a b|$HOME" in out
    ran_in = out.split("dir=")[1].strip()
    assert ran_in.startswith("/tmp/opsq-script.")
    assert not os.path.exists(ran_in)
    assert _script_dirs() == before


def test_a_failing_script_is_failed(tmp_path):
    path = _local(tmp_path, "fail.sh", b"#!/bin/sh\necho broken >&2\nexit 7\n")
    summary, hosts = _run(kinds.script_spec(_spec(), path, []))
    assert hosts["host01"]["status"] == "failed" and hosts["host01"]["exit_code"] == 7
    assert "broken" in hosts["host01"]["stderr"]


def test_a_script_past_its_deadline_is_killed_and_cleaned_up(tmp_path):
    before = _script_dirs()
    path = _local(tmp_path, "slow.sh", b"#!/bin/sh\necho started\nsleep 60\n")
    began = time.monotonic()
    summary, hosts = _run(kinds.script_spec(_spec(command_timeout=2), path, []))
    assert time.monotonic() - began < 20
    assert hosts["host01"]["status"] == "timeout"
    assert "started" in hosts["host01"]["stdout"]
    wait_until(lambda: _script_dirs() == before, 10, "the script's directory removed")


def test_a_script_without_a_shebang_is_refused(tmp_path):
    with pytest.raises(kinds.ActionError, match="#!"):
        kinds.script_spec(_spec(), _local(tmp_path, "x.sh", b"echo hi\n"), [])


# -- become ----------------------------------------------------------------------------------


def _fleet_password(fleet) -> str:
    return fleet.become_password_path.read_text().strip()


def _inventory_with(fleet, tmp_path: Path, host: str, **hostvars) -> Path:
    """The fleet's inventory with ``hostvars`` added to ``host``."""
    data = yaml.safe_load(fleet.inventory_path.read_text())
    data["all"]["children"]["fleet"]["hosts"][host].update(hostvars)
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump(data))
    return inv


def test_become_root_with_the_workers_password_file():
    summary, hosts = _run(jobs.JobSpec(command="id -u; id -un", pattern="host01",
                                       params=kinds.become_params(True, None)))
    assert summary["succeeded"], hosts["host01"]
    assert hosts["host01"]["stdout"].split() == ["0", "root"]
    assert hosts["host01"]["stderr"] == ""  # the become mark is not the host's output
    summary, hosts = _run(jobs.JobSpec(command="id -un", pattern="host01",
                                       params=kinds.become_params(True, "nobody")))
    assert hosts["host01"]["stdout"].strip() == "nobody"


def test_become_with_the_inventory_password(fleet, tmp_path, start_worker):
    inv = _inventory_with(fleet, tmp_path, "host01", ansible_become_pass=_fleet_password(fleet))
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    start_worker("becomeinv", {"OPSQ_BECOME_PASSWORD_FILE": str(wrong)})
    job_id = submit_spec_via("becomeinv", jobs.JobSpec(
        command="id -u", pattern="host01", inventory=str(inv), params={"become": True}))
    jobs.wait(job_id, timeout=60)
    assert rows(job_id)["host01"]["stdout"].strip() == "0", rows(job_id)["host01"]
    # the other hosts have no inventory password: the worker's (wrong) file is refused
    job_id = submit_spec_via("becomeinv", jobs.JobSpec(
        command="id -u", pattern="host02", inventory=str(inv), params={"become": True}))
    jobs.wait(job_id, timeout=60)
    host = rows(job_id)["host02"]
    assert host["status"] == "error" and "refused the password" in host["error"]


def test_a_wrong_password_is_an_error_not_a_hang(tmp_path, fleet):
    inv = _inventory_with(fleet, tmp_path, "host01", ansible_become_pass="wrong-password")
    began = time.monotonic()
    summary, hosts = _run(kinds.put_spec(
        jobs.JobSpec(command="", pattern="host01", inventory=str(inv),
                     params={"become": True}),
        _local(tmp_path, "f", b"x\nwrong-password\n"), "/tmp/opsq-never-written"))
    assert time.monotonic() - began < 30
    assert hosts["host01"]["status"] == "error"
    assert "refused the password" in hosts["host01"]["error"]
    assert not os.path.exists("/tmp/opsq-never-written")


def _cmdlines() -> str:
    found = []
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            found.append(Path(p).read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
    return "\n".join(found)


def test_the_password_appears_nowhere(fleet, worker, start_flower):
    password = _fleet_password(fleet)
    flower = start_flower()
    job = jobs.submit(jobs.JobSpec(command="sleep 2; id -u", pattern="host01",
                                   params={"become": True}))
    wait_for_status(job.id, "host01", "running")
    seen_in_ps = False
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and not job.ready():
        seen_in_ps |= password in _cmdlines()  # the worker and the host are this machine
        time.sleep(0.05)
    summary = job.get(timeout=60)
    assert summary["succeeded"]
    assert rows(job.id)["host01"]["stdout"] == "0\n"  # it ran as root: sudo took the password
    assert not seen_in_ps
    with db.session_scope() as s:
        for table in ("jobs", "host_results", "celery_taskmeta", "files"):
            dump = s.execute(text(f"SELECT coalesce(string_agg(t::text, ''), '') FROM "
                                  f"{table} t")).scalar_one()
            assert password not in dump, table
    assert password not in worker.log.read_text(errors="replace")
    # Flower saw the job's tasks (their arguments included), not the password
    tasks = wait_until(lambda: (lambda body: job.id in body and body)(
        flower.request("GET", "/api/tasks")[1]), 20, "Flower to list the job's tasks")
    assert password not in tasks


def test_a_put_killed_mid_transfer_never_leaves_a_truncated_file(tmp_path, remote_dir,
                                                                 start_worker):
    data = secrets.token_bytes(90 * 1024 * 1024)
    target = remote_dir / "payload.bin"
    target.write_bytes(b"the old version\n")
    name = f"killput{secrets.token_hex(2)}"
    w = start_worker(name)
    job_id = submit_spec_via(name, kinds.put_spec(_spec(), _local(tmp_path, "p", data),
                                                    str(target)))
    old_size = target.stat().st_size

    def writing() -> bool:
        # bytes are arriving: in the temporary file, or (were it written in place) the target
        partial = [p.stat().st_size for p in remote_dir.glob(".opsq-put.*/new")]
        return any(partial) or (target.exists() and target.stat().st_size != old_size)

    wait_until(writing, 60, "the transfer under way", every=0.005)
    w.stop(signal.SIGKILL)
    summary = jobs.wait(job_id, timeout=90)  # the sweep closes what the dead worker held
    status = rows(job_id)["host01"]["status"]
    assert summary.finished and status in ("interrupted", "ok")
    # the old file, or the whole new one: never a part, never none
    kept = hashlib.sha256(target.read_bytes()).hexdigest()
    assert kept in (hashlib.sha256(b"the old version\n").hexdigest(),
                    hashlib.sha256(data).hexdigest())


def _opsq_with_input(*args: str, typed: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsq.cli", *args], input=typed,
                          capture_output=True, text=True, timeout=120)


def test_become_with_a_password_typed_at_the_prompt(fleet):
    from opsq.app import app
    from opsq.jobs import become_password

    # The worker's password file is right: a wrong typed password shows which one is used.
    out = _opsq_with_input("run", "id -u", "-t", "host01", "--become", "-K", "--wait",
                           "--json", typed="not-it\n")
    assert out.returncode == 1, out.stderr
    host = json.loads(out.stdout)["results"][0]
    assert host["status"] == "error" and "refused the password" in host["error"]

    out = _opsq_with_input("run", "id -u", "-t", "host01", "--become", "-K", "--wait",
                           "--json", typed=_fleet_password(fleet) + "\n")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["results"][0]["stdout"].strip() == "0"
    # the job's callback deleted the password from the broker
    job_id = summary["job_id"]
    wait_until(lambda: _secret_queue_gone(app, become_password.queue_for(job_id).name), 15,
               "the password queue deleted")
    assert _fleet_password(fleet) not in out.stdout + out.stderr


def _secret_queue_gone(app, name: str) -> bool:
    with app.connection_for_read() as conn:
        try:
            conn.default_channel.queue_declare(name, passive=True)
        except Exception as exc:
            return "NOT_FOUND" in str(exc) or "404" in str(exc)
    return False
