"""Faults as production meets them, against real processes: workers SIGKILLed and
restarted under the same node name, PostgreSQL and RabbitMQ stopped for a while, a
worker's broker connection cut mid-command, a submitter that died mid-publish. In every
case the job ends on its own, every host has a final status, the job's counts equal its
rows, and no command runs twice unless the job is re-run safe.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import wait_until
from jobtools import nodes, pg, rows, run_job, submit_via, taskmeta, wait_for_status
from sqlalchemy import text

from opsq import jobs
from opsq.app import app
from opsq.errors import BackendUnavailable
from opsq.store import db

pytestmark = pytest.mark.usefixtures("worker")


def test_a_fan_out_cut_short_is_completed_by_the_sweeper(monkeypatch):
    # The submitter dies after publishing three of the job's six tasks: nothing tells
    # the workers about the rest but the job row, which stays unpublished.
    from kombu import Producer
    from kombu.exceptions import OperationalError

    spec = jobs.JobSpec(command="echo ran", pattern="fleet")
    job_id = jobs.create(spec)
    real_publish, sent = Producer.publish, []

    def publish_then_crash(self, body, *args, routing_key=None, **kwargs):
        if routing_key == "opsq.fleet":
            if len(sent) == 3:
                raise OperationalError("simulated crash mid-publish")
            sent.append(routing_key)
        return real_publish(self, body, *args, routing_key=routing_key, **kwargs)

    monkeypatch.setattr(Producer, "publish", publish_then_crash)
    with pytest.raises(BackendUnavailable):
        jobs.fan_out(job_id)
    monkeypatch.setattr(Producer, "publish", real_publish)
    summary = app.AsyncResult(job_id).get(timeout=60)
    assert summary["succeeded"] and summary["counts"] == {"ok": 6}
    assert {(r["attempt"], r["stdout"]) for r in jobs.host_results(job_id)} == {(1, "ran\n")}


def test_a_job_recorded_by_a_submitter_that_died_is_published_and_runs():
    # The control worker (or any submitter) killed between recording the job and
    # publishing its tasks: the workers' sweep publishes it.
    job_id = jobs.create(jobs.JobSpec(command="echo late", pattern="even"))
    start = time.monotonic()
    summary = app.AsyncResult(job_id).get(timeout=60)
    assert summary["succeeded"] and summary["counts"] == {"ok": 3}
    assert time.monotonic() - start < 20  # a lease period of grace, then a sweep


def test_a_duplicate_delivery_while_the_first_still_runs_is_deferred():
    # As when a worker's broker connection drops mid-task: RabbitMQ redelivers the
    # message while the first delivery goes on running (and renewing its lease).
    result = jobs.submit(jobs.JobSpec(command="sleep 5; echo first", pattern="host01"))
    wait_for_status(result.id, "host01", "running")
    with db.session_scope() as s:
        task_id = s.execute(text("SELECT task_id FROM host_results WHERE job_id = :j"),
                            {"j": result.id}).scalar_one()
    app.send_task(jobs.RUN_HOSTS, (result.id, ["host01"]), task_id=task_id)
    time.sleep(4)  # past the lease period (3 s): the live holder kept renewing it
    r = rows(result.id)["host01"]
    assert (r["status"], r["attempt"]) == ("running", 1), "the live run was written off"
    summary = result.get(timeout=30)
    r = rows(result.id)["host01"]
    assert (r["status"], r["attempt"], r["stdout"]) == ("ok", 1, "first\n")
    # the job was closed by the real result, not early by the duplicate
    assert summary["counts"] == {"ok": 1} and summary["succeeded"]
    assert summary["finished_at"] >= r["finished_at"]


@pytest.mark.parametrize("same_name", [True, False], ids=["same-name", "new-name"])
@pytest.mark.parametrize("rerun_safe", [False, True], ids=["once-only", "rerun-safe"])
def test_worker_killed_mid_command_and_restarted_ends_the_job(start_worker, rerun_safe,
                                                              same_name):
    # SIGKILL, then the worker comes back as systemd and celery multi bring it back:
    # under the same node name (or another worker takes over the queue).
    name = f"crashy{int(rerun_safe)}{int(same_name)}"
    first = start_worker(name)
    job_id = submit_via(name, "sleep 3; echo finished", "host0[3-4]", rerun_safe=rerun_safe)
    wait_for_status(job_id, "host03", "running")
    wait_for_status(job_id, "host04", "running")
    first.stop(signal.SIGKILL)  # the tasks were not acknowledged: RabbitMQ re-queues them
    killed_at = time.monotonic()
    second = start_worker(name if same_name else f"{name}b")
    app.control.add_consumer(f"q.{name}", destination=[
        n for n in nodes() if n.startswith(second.name + "@")], reply=True)
    summary = app.AsyncResult(job_id).get(timeout=60)
    assert time.monotonic() - killed_at < 30
    got = rows(job_id)
    assert summary["total"] == 2 and sum(summary["counts"].values()) == 2
    for host in ("host03", "host04"):
        r = got[host]
        if rerun_safe:
            assert (r["status"], r["attempt"], r["stdout"]) == ("ok", 2, "finished\n")
        else:
            assert (r["status"], r["attempt"]) == ("interrupted", 1)
            assert "not marked safe to re-run" in r["error"]
    assert summary["status"] == ("succeeded" if rerun_safe else "failed")
    with db.session_scope() as s:
        counts = s.execute(text("SELECT done_count, interrupted_count, ok_count FROM jobs "
                                "WHERE id = :j"), {"j": job_id}).one()
    assert tuple(counts) == ((2, 0, 2) if rerun_safe else (2, 2, 0))


def test_database_restart_mid_job_loses_nothing():
    result = jobs.submit(jobs.JobSpec(command="sleep 3; echo kept", pattern="odd"))
    deadline = time.monotonic() + 30
    while {r["status"] for r in jobs.host_results(result.id)} != {"running"}:
        assert time.monotonic() < deadline, jobs.host_results(result.id)
        time.sleep(0.05)
    pg("stop")
    try:
        time.sleep(4)  # the commands finish while PostgreSQL is down
    finally:
        pg("start")
    summary = result.get(timeout=120)
    assert summary["succeeded"], summary
    assert {r["stdout"] for r in jobs.host_results(result.id)} == {"kept\n"}
    # and the next job runs normally on the same worker
    assert run_job("echo after", pattern="host01")["succeeded"]


def test_broker_restart_the_worker_reconnects_and_jobs_run():
    import subprocess

    before = run_job("echo before", pattern="host01")
    assert before["succeeded"]
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True)
    try:
        time.sleep(2)
    finally:
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True)
    # the worker reconnects by itself (no restart) and takes new work
    deadline = time.monotonic() + 60
    while True:
        try:
            summary = jobs.submit(jobs.JobSpec(command="echo after", pattern="even")).get(
                timeout=60)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert summary["succeeded"] and summary["total"] == 3


def _rabbit(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


def _running(job_id: str, n: int) -> None:
    wait_until(lambda: [r["status"] for r in jobs.host_results(job_id)] == ["running"] * n,
               30, "every host running")


def _consistent(job_id: str) -> dict:
    """The job's counters equal its host rows, and every host is final."""
    with db.session_scope() as s:
        job = s.execute(text("SELECT * FROM jobs WHERE id = :j"), {"j": job_id}).one()
    got = jobs.host_results(job_id)
    by_status: dict[str, int] = {}
    for r in got:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    assert "running" not in by_status and "pending" not in by_status, by_status
    assert job.done_count == job.host_count == len(got)
    for status, n in by_status.items():
        assert getattr(job, f"{status}_count") == n, (status, by_status)
    return by_status


def test_postgres_stopped_for_a_minute_mid_job():
    result = jobs.submit(jobs.JobSpec(command="sleep 3; echo kept", pattern="odd"))
    _running(result.id, 3)
    pg("stop")
    try:
        time.sleep(60)  # the commands finish while PostgreSQL is down
    finally:
        pg("start")
    back = time.monotonic()
    summary = result.get(timeout=60)
    assert time.monotonic() - back < 30
    assert summary["succeeded"], summary
    assert _consistent(result.id) == {"ok": 3}
    assert {(r["attempt"], r["stdout"]) for r in jobs.host_results(result.id)} == {
        (1, "kept\n")}
    assert run_job("echo after", pattern="host01")["succeeded"]


def test_postgres_refusing_connections_mid_job():
    import psycopg2

    result = jobs.submit(jobs.JobSpec(command="sleep 2; echo kept", pattern="even"))
    _running(result.id, 3)
    hogs = []
    try:  # take every connection PostgreSQL has: "sorry, too many clients already"
        while True:
            hogs.append(psycopg2.connect(host="127.0.0.1", user="postgres",
                                         dbname="postgres", connect_timeout=3))
    except psycopg2.OperationalError as exc:
        assert "too many" in str(exc) or "reserved" in str(exc), exc
    try:
        time.sleep(8)  # the commands finish; their results cannot be written yet
    finally:
        for conn in hogs:
            conn.close()
    summary = result.get(timeout=60)
    assert summary["succeeded"], summary
    assert _consistent(result.id) == {"ok": 3}
    assert {r["attempt"] for r in jobs.host_results(result.id)} == {1}


def test_rabbitmq_stopped_15s_mid_job_then_new_jobs_run_at_once():
    result = jobs.submit(jobs.JobSpec(command="sleep 3; echo kept", pattern="fleet"))
    _running(result.id, 6)
    _rabbit("stop_app")
    try:
        time.sleep(15)
    finally:
        _rabbit("start_app")
        _rabbit("await_startup")
    back = time.monotonic()
    summary = result.get(timeout=60)  # closed in PostgreSQL while the broker was away
    assert summary["succeeded"] and summary["counts"] == {"ok": 6}
    assert _consistent(result.id) == {"ok": 6}
    assert {r["attempt"] for r in jobs.host_results(result.id)} == {1}
    # the callback the broker refused as the job closed is sent once it is back, so
    # Celery (and Flower) get the job's result too
    wait_until(lambda: taskmeta(result.id) == ("SUCCESS", "opsq.finish_job"), 30,
               "the job's callback")
    # the worker took its redeliveries and new work promptly, without a restart
    after = wait_until(_submit_when_broker_takes_it, 30, "a job accepted by the broker")
    assert after.get(timeout=30)["succeeded"]
    assert time.monotonic() - back < 30


def _submit_when_broker_takes_it():
    try:
        return jobs.submit(jobs.JobSpec(command="echo after", pattern="even"))
    except BackendUnavailable:
        return None


def _connections_of(pid: int) -> list[str]:
    """RabbitMQ's ids (Erlang pids) of the AMQP connections process ``pid`` holds."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", "dport", "= :5672"],
                         capture_output=True, text=True, check=True).stdout
    ports = [line.split()[2].rsplit(":", 1)[1] for line in out.splitlines()
             if f"pid={pid}," in line]
    listed = subprocess.run(["rabbitmqctl", "-q", "--no-table-headers", "list_connections",
                             "pid", "name"], capture_output=True, text=True, check=True)
    return [line.split("\t")[0] for line in listed.stdout.splitlines()
            if any(f":{p} ->" in line for p in ports)]


@pytest.mark.parametrize("rerun_safe", [False, True], ids=["once-only", "rerun-safe"])
def test_amqp_connection_cut_mid_command_runs_it_once(start_worker, rerun_safe):
    # Worker A runs the command; its broker connections are cut, so RabbitMQ redelivers
    # the task to worker B, which consumes the same queue. A is alive and keeps its
    # lease: B must neither run the command again nor write the host off.
    name = f"cut{int(rerun_safe)}"
    a = start_worker(f"{name}a")
    # The fleet's hosts are this machine: the command leaves a line per run here.
    marker = Path(tempfile.gettempdir()) / f"opsq-cut-{secrets.token_hex(4)}"
    marker.touch()
    marker.chmod(0o666)
    job_id = submit_via(a.name, f"echo run >> {marker}; sleep 6; echo done", "host02",
                        rerun_safe=rerun_safe)
    wait_for_status(job_id, "host02", "running")
    b = start_worker(f"{name}b")
    app.control.add_consumer(f"q.{a.name}", destination=[
        n for n in nodes() if n.startswith(b.name + "@")], reply=True)
    cut = _connections_of(a.proc.pid)
    assert cut, "worker A holds no broker connection?"
    for conn in cut:
        _rabbit("close_connection", conn, "cut by the test")
    summary = app.AsyncResult(job_id).get(timeout=60)
    assert summary["succeeded"] and summary["counts"] == {"ok": 1}
    r = rows(job_id)["host02"]
    assert (r["status"], r["attempt"], r["stdout"]) == ("ok", 1, "done\n")
    assert marker.read_text() == "run\n"  # the command ran once
    assert "Connection to broker lost" in a.log.read_text()  # the cut did happen
    marker.unlink()
    assert _consistent(job_id) == {"ok": 1}


def test_hosts_whose_tasks_were_lost_are_sent_again():
    # Published, but the tasks never reach a worker (a retry the broker refused, a
    # purged queue): the job would wait forever for hosts nobody takes.
    job_id = jobs.create(jobs.JobSpec(command="echo found", pattern="odd"))
    with db.session_scope() as s:
        s.execute(text("UPDATE jobs SET published_at = now() WHERE id = :j"), {"j": job_id})
    started = time.monotonic()
    summary = app.AsyncResult(job_id).get(timeout=90)
    assert summary["succeeded"] and summary["counts"] == {"ok": 3}
    assert _consistent(job_id) == {"ok": 3}
    # not before ten lease periods (30 s here): hosts queued behind others are not rushed
    assert 25 < time.monotonic() - started < 60


def test_a_claim_whose_commit_answer_was_lost_is_taken_over_by_its_retry():
    # The claim committed, but its connection dropped before the answer came back: the
    # task retries believing nothing happened. Its retry carries the first claim's token
    # and takes those hosts as its own; anyone else would have to wait them out.
    from opsq.hostrun.runner import Outcome
    from opsq.jobs import state
    from opsq.status import HostStatus

    job_id = jobs.create(jobs.JobSpec(command="true", pattern="host0[1-2]"))
    hosts = ["host01", "host02"]
    common = {"worker": "w@test", "task_id": "t", "ttl": 30}
    with db.get_engine().begin() as conn:
        first = state.claim(conn, job_id, hosts, token="lost-answer", **common)
    assert [c.host for c in first.run] == hosts
    with db.get_engine().begin() as conn:
        stranger = state.claim(conn, job_id, hosts, token="another-delivery", **common)
        assert (stranger.run, stranger.deferred) == ([], hosts)
        conn.rollback()
    with db.get_engine().begin() as conn:
        retry = state.claim(conn, job_id, hosts, token="the-retry", adopt="lost-answer",
                            **common)
    assert ([c.host for c in retry.run], retry.deferred, retry.interrupted) == (hosts, [], [])
    assert {c.attempt for c in retry.run} == {1}  # it never ran: still the first attempt
    with db.get_engine().begin() as conn:
        assert state.store(conn, job_id, "the-retry",
                           [(h, Outcome(HostStatus.OK, exit_code=0))
                            for h in hosts], release=True)
    assert _consistent(job_id) == {"ok": 2}
