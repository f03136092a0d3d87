"""Steering running jobs: deadlines and cancel reach the host's processes, rolling batches
stop after too many failures, retries run flaky hosts again. Real worker, real sshd hosts
(on this machine, so a test looks at the hosts' processes in /proc)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import secrets
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import FLEET_SUBNET
from helpers import wait_until
from jobtools import HOST_NUMBER, rows, submit_via, wait_for_status

from opsq import jobs

pytestmark = pytest.mark.usefixtures("worker")
#: Seconds the remote side may take to end a stopped command (TERM, then KILL after 2 s).
REMOTE_STOP_WITHIN = 5


def _processes(marker: str) -> list[int]:
    """Pids of processes whose command line contains ``marker``."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            cmd = Path(path).read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmd and "pytest" not in cmd:
                found.append(int(path.split("/")[2]))
    return found


def _sleep_command() -> tuple[str, str]:
    """A long sleep with a number nobody else uses, and that number (to find it in ps)."""
    n = f"{600 + secrets.randbelow(300)}.{secrets.randbelow(10**6):06d}"
    return f"sleep {n}", f"sleep {n}"


def test_a_timed_out_command_leaves_no_process_on_the_host():
    command, marker = _sleep_command()
    summary = jobs.submit(jobs.JobSpec(command=command, pattern="host01",
                                       command_timeout=2)).get(timeout=60)
    assert summary["hosts"]["host01"]["status"] == "timeout"
    wait_until(lambda: not _processes(marker), REMOTE_STOP_WITHIN, "the remote sleep gone")


def test_a_killed_worker_leaves_no_process_on_the_host(start_worker):
    command, marker = _sleep_command()
    name = f"victim{secrets.token_hex(2)}"
    w = start_worker(name)
    job_id = submit_via(name, command, "host02")
    wait_for_status(job_id, "host02", "running")
    wait_until(lambda: _processes(marker), 10, "the remote sleep started")
    w.stop(signal.SIGKILL)
    wait_until(lambda: not _processes(marker), REMOTE_STOP_WITHIN, "the remote sleep gone")


def test_background_children_of_a_finished_command_keep_running():
    command, marker = _sleep_command()
    summary = jobs.submit(jobs.JobSpec(
        command=f"nohup {command} >/dev/null 2>&1 & echo started", pattern="host03",
    )).get(timeout=60)
    assert summary["succeeded"]
    try:
        time.sleep(REMOTE_STOP_WITHIN)
        assert _processes(marker), "a command's daemon was killed after it exited"
    finally:
        for pid in _processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_cancel_stops_running_hosts_on_their_host(opsq_cli):
    command, marker = _sleep_command()
    job = jobs.submit(jobs.JobSpec(command=command, pattern="fleet"))
    total = len(jobs.summary(job.id).hosts)
    wait_until(lambda: len(_processes(marker)) >= total, 20, "every host's sleep started")
    began = time.monotonic()
    out = opsq_cli("cancel", job.id)
    assert out.returncode == 0, out.stderr
    summary = jobs.wait(job.id, timeout=30)
    assert time.monotonic() - began < 10
    assert summary.status.value == "cancelled"
    assert {r["status"] for r in rows(job.id).values()} == {"cancelled"}
    assert all("stopped on the host" in r["error"] for r in rows(job.id).values())
    wait_until(lambda: not _processes(marker), REMOTE_STOP_WITHIN, "every sleep gone")
    # the job's result is there for Celery too, and says cancelled
    assert job.get(timeout=30)["status"] == "cancelled"


def test_cancel_of_a_queued_job_cancels_every_host(opsq_cli):
    job_id = jobs.create(jobs.JobSpec(command="true", pattern="fleet"))  # never published
    out = opsq_cli("cancel", job_id)
    assert out.returncode == 0, out.stderr
    summary = jobs.summary(job_id)
    assert summary.status.value == "cancelled" and summary.finished
    assert set(summary.counts) == {"cancelled"}
    assert all(r["error"].startswith("cancelled before it started")
               for r in rows(job_id).values())


def test_cancel_of_a_finished_job_says_so_and_changes_nothing(opsq_cli):
    summary = jobs.submit(jobs.JobSpec(command="true", pattern="host01")).get(timeout=60)
    out = opsq_cli("cancel", summary["job_id"])
    assert out.returncode == 2
    assert "already succeeded" in out.stderr and "Traceback" not in out.stderr
    after = jobs.summary(summary["job_id"])
    assert after.status.value == "succeeded" and after.counts == {"ok": 1}


# -- rolling batches -------------------------------------------------------------------------


def _times(job_id: str) -> dict[int, tuple[float, float]]:
    """Per batch: (first start, last end), in seconds since the epoch."""
    spans: dict[int, list[float]] = {}
    for r in rows(job_id).values():
        b = r["batch"]
        start = datetime.fromisoformat(r["started_at"]).timestamp()
        end = datetime.fromisoformat(r["finished_at"]).timestamp()
        lo, hi = spans.get(b, [start, end])
        spans[b] = [min(lo, start), max(hi, end)]
    return {b: (lo, hi) for b, (lo, hi) in spans.items()}


def test_batches_run_one_after_another_with_a_pause(opsq_cli):
    job = jobs.submit(jobs.JobSpec(command="sleep 0.3", pattern="fleet", batch_size="2",
                                   batch_pause=1))
    summary = job.get(timeout=120)
    assert summary["succeeded"]
    hosts = rows(job.id)
    assert [hosts[h]["batch"] for h in sorted(hosts)] == [1, 1, 2, 2, 3, 3]
    spans = _times(job.id)
    for b in (2, 3):
        # the batch started once the previous one had ended, and the pause had passed
        assert spans[b][0] >= spans[b - 1][1] + 0.9, spans
    out = opsq_cli("status", job.id)
    assert "batch 3/3" in out.stdout


def test_a_percentage_batch_size_is_of_the_jobs_hosts():
    job = jobs.submit(jobs.JobSpec(command="true", pattern="fleet", batch_size="50%"))
    job.get(timeout=120)
    assert sorted(r["batch"] for r in rows(job.id).values()) == [1, 1, 1, 2, 2, 2]


def test_too_many_failures_stop_the_rollout():
    # hosts 1 and 2 (batch 1) fail: more than --max-fail 1, so batches 2 and 3 never start
    job = jobs.submit(jobs.JobSpec(command=f"{HOST_NUMBER}; [ $n -gt 2 ]", pattern="fleet",
                                   batch_size=2, max_fail=1))
    summary = job.get(timeout=120)
    assert summary["status"] == "failed"
    assert summary["counts"] == {"failed": 2, "skipped": 4}
    skipped = [r for r in rows(job.id).values() if r["status"] == "skipped"]
    assert all("stopped after 2 failures" in r["error"] for r in skipped)
    assert all(r["started_at"] is None for r in skipped)
    assert "stopped after 2 failures" in jobs.summary(job.id).error


def test_failures_within_the_limit_let_the_rollout_go_on():
    job = jobs.submit(jobs.JobSpec(command=f"{HOST_NUMBER}; [ $n -ne 1 ]", pattern="fleet",
                                   batch_size=2, max_fail="20%"))  # 20 % of 6: 1 failure
    summary = job.get(timeout=120)
    assert summary["counts"] == {"failed": 1, "ok": 5}


def test_a_worker_killed_between_batches_does_not_lose_the_rest(start_worker):
    name = f"batcher{secrets.token_hex(2)}"
    w = start_worker(name)
    spec = jobs.JobSpec(command="true", pattern="fleet", batch_size=3, batch_pause=3)
    job_id = submit_via(name, spec.command, spec.pattern, batch_size=3, batch_pause=3)
    wait_until(lambda: all(r["status"] == "ok" for r in rows(job_id).values()
                           if r["batch"] == 1), 30, "batch 1 done")
    w.stop(signal.SIGKILL)  # during the pause: batch 2 is an unacknowledged ETA task
    summary = jobs.wait(job_id, timeout=120)  # the session's worker takes it over
    assert summary.succeeded and summary.counts == {"ok": 6}


@pytest.mark.parametrize(("options", "reason"), [
    (["--batch-size", "0"], "at least 1"),
    (["--batch-size", "150%"], "more than every host"),
    (["--batch-size", "x"], "percentage"),
    (["--pause", "nan", "--batch-size", "2"], "finite"),
    (["--pause", "5"], "needs --batch-size"),
    (["--max-fail", "1"], "needs --batch-size"),
    (["--retries", "3"], "--rerun-safe"),
    (["--retries", "99", "--rerun-safe"], "at most"),
    (["--retry-delay", "2"], "need --retries"),
])
def test_bad_rollout_options_are_refused(opsq_cli, options, reason):
    before = len(jobs.recent(1000))
    out = opsq_cli("run", "true", "-t", "fleet", *options)
    assert out.returncode == 2 and reason in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert len(jobs.recent(1000)) == before


# -- retries -----------------------------------------------------------------------------------


def test_a_flaky_host_is_retried_and_every_attempt_kept(tmp_path):
    marker = f"/tmp/opsq-flaky-{secrets.token_hex(4)}"
    command = (f"if [ -e {marker} ]; then echo second; else touch {marker}; echo first; "
               "exit 1; fi")
    try:
        job = jobs.submit(jobs.JobSpec(command=command, pattern="host01", retries=2,
                                       retry_delay=1, rerun_safe=True))
        began = time.monotonic()
        summary = job.get(timeout=60)
        assert time.monotonic() - began >= 0.9  # the delay was kept
    finally:
        Path(marker).unlink(missing_ok=True)
    assert summary["succeeded"]
    host = rows(job.id)["host01"]
    assert (host["status"], host["attempt"], host["stdout"]) == ("ok", 2, "second\n")
    earlier = jobs.attempts(job.id)
    assert [(a["attempt"], a["status"], a["exit_code"], a["stdout"]) for a in earlier] == [
        (1, "failed", 1, "first\n")]


def test_retries_end_with_the_last_attempts_status():
    job = jobs.submit(jobs.JobSpec(command="echo no; exit 3", pattern="host02", retries=2,
                                   rerun_safe=True))
    summary = job.get(timeout=60)
    host = rows(job.id)["host02"]
    assert summary["status"] == "failed" and (host["attempt"], host["exit_code"]) == (3, 3)
    assert [a["attempt"] for a in jobs.attempts(job.id)] == [1, 2]


def test_retry_on_unreachable_leaves_failed_commands_alone(fleet, tmp_path):
    inv = tmp_path / "inv.yml"
    inv.write_text(fleet.inventory_path.read_text() +
                   "\n".join(["    ghosts:", "      hosts:", "        ghost:",
                              f"          ansible_host: {FLEET_SUBNET}.251",
                              "          ansible_port: 2222", ""]))
    job = jobs.submit(jobs.JobSpec(command="exit 4", pattern="host03:ghost", inventory=str(inv),
                                   retries=1, retry_on="unreachable"))
    summary = job.get(timeout=90)
    hosts = rows(job.id)
    assert hosts["host03"]["attempt"] == 1 and hosts["host03"]["status"] == "failed"
    assert hosts["ghost"]["attempt"] == 2 and hosts["ghost"]["status"] == "unreachable"
    assert summary["status"] == "failed"


# -- live output -------------------------------------------------------------------------------


def test_output_reaches_the_database_while_the_command_runs():
    job = jobs.submit(jobs.JobSpec(command="echo first; sleep 5; echo second",
                                   pattern="host04"))
    wait_for_status(job.id, "host04", "running")
    host = wait_until(lambda: (lambda r: "first" in (r["stdout"] or "") and r)(
        rows(job.id)["host04"]), 4, "the first line stored while the command runs")
    assert host["status"] == "running" and "second" not in host["stdout"]
    job.get(timeout=60)
    assert rows(job.id)["host04"]["stdout"] == "first\nsecond\n"


def test_logs_follow_prints_lines_as_they_come_prefixed_by_host(opsq_cli):
    job = jobs.submit(jobs.JobSpec(
        command="for i in 1 2 3; do echo line$i; sleep 0.7; done; echo oops >&2",
        pattern="host01:host02"))
    out = opsq_cli("logs", job.id, "-f", timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for host in ("host01", "host02"):
        assert [ln for ln in lines if ln.startswith(f"{host} |")] == [
            f"{host} | line1", f"{host} | line2", f"{host} | line3"]
        assert f"{host} ! oops" in lines
    assert jobs.summary(job.id).finished  # -f returned once the job had ended
    one = opsq_cli("logs", job.id, "host02")
    assert one.stdout.splitlines() == ["host02 | line1", "host02 | line2", "host02 | line3",
                                       "host02 ! oops"]


def test_run_wait_stream_shows_output_then_the_table(opsq_cli):
    out = opsq_cli("run", "echo to-out; echo to-err >&2", "-t", "host05", "--wait",
                   "--stream")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("host05 | to-out\nhost05 ! to-err\n")
    assert "HOST" in out.stdout  # the result table follows
    assert "1/1 hosts done (1 ok)" in out.stderr


def test_a_lost_worker_keeps_what_its_host_printed(start_worker):
    name = f"printer{secrets.token_hex(2)}"
    w = start_worker(name)
    job_id = submit_via(name, "echo before-the-crash; sleep 60", "host06")
    wait_until(lambda: "before-the-crash" in (rows(job_id)["host06"]["stdout"] or ""), 15,
               "the output stored while running")
    w.stop(signal.SIGKILL)
    summary = jobs.wait(job_id, timeout=90)
    host = rows(job_id)["host06"]
    assert summary.finished and host["status"] == "interrupted"
    assert host["stdout"] == "before-the-crash\n"


def test_a_command_run_through_sudo_is_stopped_at_its_deadline_too():
    command, marker = _sleep_command()
    summary = jobs.submit(jobs.JobSpec(command=command, pattern="host05", command_timeout=2,
                                       params={"become": True})).get(timeout=60)
    assert summary["hosts"]["host05"]["status"] == "timeout"
    wait_until(lambda: not _processes(marker), REMOTE_STOP_WITHIN, "the sudo'd sleep gone")


# -- what a cancel or a deadline records ---------------------------------------------------
# The runner opsq puts on Fabric's connections, tried on invoke's local runner (the same
# Runner machinery, no SSH) where a race must be hit every time, and over SSH.


def _capped_local(before_start=None, after_exit=None):
    """A runner with opsq's capture and kill decisions over invoke's Local runner;
    ``before_start(runner)`` runs as the process is being set up, ``after_exit(runner)``
    once it has exited, before its result is collected."""
    import invoke
    from invoke.runners import Local

    from opsq.hostrun.ssh import _CappedOutput

    class Hooked(Local):
        def start(self, *args, **kwargs):
            if before_start:
                before_start(self)
            return super().start(*args, **kwargs)

        def returncode(self):
            code = super().returncode()
            if after_exit:
                after_exit(self)
            return code

    class CappedLocal(_CappedOutput, Hooked):
        pass

    return CappedLocal(invoke.Context())


def _options(stopper=None, timeout: float = 10):
    from opsq.hostrun.runner import RunOptions

    return RunOptions(command_timeout=timeout, connect_timeout=3, output_limit=4096,
                      known_hosts=Path("/nonexistent"), stopper=stopper)


@pytest.mark.parametrize("late", ["cancel", "kill"])
@pytest.mark.parametrize(("command", "status", "code"),
                         [("exit 0", "ok", 0), ("exit 3", "failed", 3)])
def test_a_kill_landing_after_the_exit_keeps_the_exit(late, command, status, code):
    from opsq.hostrun.ssh import _execute

    outcome = _execute(_capped_local(after_exit=lambda r: getattr(r, late)()), command,
                       _options())
    assert (outcome.status.value, outcome.exit_code, outcome.error) == (status, code, None)


def test_a_cancel_before_the_start_runs_nothing(tmp_path):
    from opsq.hostrun.runner import CANCELLED_BEFORE
    from opsq.hostrun.ssh import _execute
    from opsq.hostrun.stopper import Stopper

    stopper = Stopper()
    stopper.stop()
    outcome = _execute(_capped_local(), f"touch {tmp_path}/ran", _options(stopper))
    assert (outcome.status.value, outcome.error) == ("cancelled", CANCELLED_BEFORE)
    time.sleep(0.5)
    assert not (tmp_path / "ran").exists()


def test_a_cancel_during_setup_stops_the_command(tmp_path):
    from opsq.hostrun.runner import CANCELLED_WHILE
    from opsq.hostrun.ssh import _execute
    from opsq.hostrun.stopper import Stopper

    stopper = Stopper()
    began = time.monotonic()
    outcome = _execute(_capped_local(before_start=lambda r: stopper.stop()),
                       f"sleep 1; touch {tmp_path}/ran", _options(stopper))
    assert (outcome.status.value, outcome.exit_code, outcome.error) == \
        ("cancelled", None, CANCELLED_WHILE)
    time.sleep(1.5 - (time.monotonic() - began))
    assert not (tmp_path / "ran").exists()


def test_a_cancel_while_running_is_cancelled_and_a_deadline_a_timeout():
    import threading

    from opsq.hostrun.runner import CANCELLED_WHILE
    from opsq.hostrun.ssh import _execute
    from opsq.hostrun.stopper import Stopper

    stopper = Stopper()
    threading.Timer(0.3, stopper.stop).start()
    outcome = _execute(_capped_local(), "exec sleep 5", _options(stopper))
    assert (outcome.status.value, outcome.exit_code, outcome.error) == \
        ("cancelled", None, CANCELLED_WHILE)
    timed = _execute(_capped_local(), "exec sleep 5", _options(timeout=0.3))
    assert (timed.status.value, timed.exit_code) == ("timeout", None)


def test_a_cancel_while_the_ssh_channel_opens_is_not_lost(fleet, monkeypatch):
    from fabric import Connection

    from devtools.devfleet import FLEET_USER
    from opsq.hostrun.runner import RunOptions
    from opsq.hostrun.ssh import ConnectionPool, run_on
    from opsq.hostrun.stopper import Stopper
    from opsq.inventory import Host
    from opsq.settings import get_settings

    h = fleet.hosts[0]
    host = Host(name=h.name, address=h.address, port=h.port, user=FLEET_USER,
                key_file=str(fleet.client_key_path))
    stopper = Stopper()
    opening = Connection.create_session

    def create_session(self):
        channel = opening(self)
        stopper.stop()  # the cancel arrives before the runner holds the channel
        return channel

    monkeypatch.setattr(Connection, "create_session", create_session)
    options = dataclasses.replace(RunOptions.resolve(host, get_settings()), stopper=stopper)
    pool = ConnectionPool(idle_seconds=0)
    began = time.monotonic()
    outcome = run_on(host, "sleep 3; echo finished", options, pool)
    pool.close_all()
    assert outcome.status.value == "cancelled", (outcome.status, outcome.error)
    assert "finished" not in outcome.stdout and time.monotonic() - began < 2.5
