"""The core job path end to end: real RabbitMQ, PostgreSQL, worker and sshd hosts."""

from __future__ import annotations

import json
import time

import pytest
from conftest import FLEET_SUBNET
from helpers import ROOT, wait_until
from jobtools import HOST_NUMBER, rows, run_job, run_on_worker, taskmeta
from sqlalchemy import text

from opsq import jobs
from opsq.app import app
from opsq.store import db
from opsq.worker.fleet_tasks import submit_job

pytestmark = pytest.mark.usefixtures("worker")



def test_mixed_exit_codes_are_results_not_failures():
    summary = run_job(f"{HOST_NUMBER}; echo out$n; echo err$n >&2; [ $n -le 3 ] || exit $n")
    assert summary["status"] == "failed"
    assert summary["total"] == 6
    assert summary["counts"] == {"ok": 3, "failed": 3}
    assert sorted(summary["failed_hosts"]) == ["host04", "host05", "host06"]
    got = rows(summary["job_id"])
    for k in range(1, 7):
        r = got[f"host{k:02d}"]
        assert r["stdout"] == f"out{k}\n"
        assert r["stderr"] == f"err{k}\n"
        assert r["exit_code"] == (0 if k <= 3 else k)
        assert r["status"] == ("ok" if k <= 3 else "failed")
        assert r["duration"] is not None and r["duration"] >= 0
        assert r["worker"].startswith("fleetworker@")
        assert r["attempt"] == 1


def test_a_finished_job_published_again_runs_nothing_twice(worker):
    from opsq.jobs.submission import _derived_id

    result = jobs.submit(jobs.JobSpec(command="echo once", pattern="host01"))
    assert result.get(timeout=30)["succeeded"]
    task_id = _derived_id(result.id, "chunk/0")
    jobs.fan_out(result.id)  # as a redelivered submission would
    # The worker took the second delivery of the same task and finished with it...
    wait_until(lambda: worker.log.read_text().count(f"[{task_id}] succeeded") == 2, 30,
               "the second delivery to be processed")
    # ...without running the host again.
    r = rows(result.id)["host01"]
    assert (r["attempt"], r["status"], r["stdout"]) == (1, "ok", "once\n")
    assert jobs.summary(result.id).counts == {"ok": 1}


def test_async_result_get_returns_the_summary_and_the_id_is_the_job_id():
    result = jobs.submit(jobs.JobSpec(command="sleep 1; echo hi", pattern="host01"))
    assert not result.ready()  # the id came back at once, before the host ran
    summary = result.get(timeout=30)
    assert summary["job_id"] == result.id
    assert summary["succeeded"] is True
    assert summary["hosts"] == {"host01": {"status": "ok", "exit_code": 0}}
    assert result.ready() and result.successful()


def test_submit_job_task_delay_gives_the_job_id():
    result = submit_job.delay("echo from-delay", "odd")
    summary = result.get(timeout=30)
    assert summary["job_id"] == result.id
    assert sorted(summary["hosts"]) == ["host01", "host03", "host05"]
    assert all(r["stdout"] == "from-delay\n" for r in jobs.host_results(result.id))
    assert jobs.summary(result.id).submitted_by.startswith("celery:")


def test_command_timeout_kills_only_that_host():
    start = time.monotonic()
    summary = run_job(f"{HOST_NUMBER}; [ $n = 2 ] && sleep 30; echo done", pattern="host0[1-3]",
                      command_timeout=1.5)
    elapsed = time.monotonic() - start
    assert summary["hosts"]["host02"]["status"] == "timeout"
    assert summary["hosts"]["host01"]["status"] == "ok"
    assert summary["hosts"]["host03"]["status"] == "ok"
    assert "1.5 s" in summary["failed_hosts"]["host02"]
    assert elapsed < 15, elapsed


def test_hung_host_sigstop_ends_as_timeout_within_its_deadline(fleet):
    fleet.stop_host("host05")
    try:
        start = time.monotonic()
        summary = run_job("echo alive", pattern="fleet", connect_timeout=2, command_timeout=3)
        elapsed = time.monotonic() - start
    finally:
        fleet.cont_host("host05")
    assert summary["hosts"]["host05"]["status"] == "timeout", summary["failed_hosts"]
    assert summary["counts"] == {"ok": 5, "timeout": 1}
    # connect (2 s) + command (3 s) deadline, plus scheduling slack
    assert elapsed < 10, elapsed
    # the host recovers and is usable again once resumed
    assert run_job("true", pattern="host05")["succeeded"]


def test_host_without_sshd_is_unreachable_after_retries(tmp_path, fleet):
    inv = tmp_path / "inv.yml"
    inv.write_text(
        "all:\n  hosts:\n"
        f"    ghost:\n      ansible_host: {FLEET_SUBNET}.250\n      ansible_port: 2222\n"
        "      ansible_user: opsqfleet\n"
        f"      ansible_ssh_private_key_file: {fleet.client_key_path}\n"
    )
    summary = run_job("true", pattern="ghost", inventory=str(inv))
    r = rows(summary["job_id"])["ghost"]
    assert r["status"] == "unreachable"
    assert "refused" in r["error"] and "2 attempts" in r["error"]
    assert summary["status"] == "failed"


def test_changed_host_key_is_refused_with_fingerprints(fleet):
    assert run_job("true", pattern="host06")["succeeded"]
    fleet.rekey_host("host06")
    try:
        summary = run_job("echo should-not-run", pattern="host06")
    finally:
        fleet.trust_host("host06")  # later tests use the host again
    r = rows(summary["job_id"])["host06"]
    assert r["status"] == "error"
    assert "CHANGED" in r["error"] and "SHA256:" in r["error"]
    assert r["stdout"] in (None, "")


def test_unknown_host_key_is_refused_then_trusted_explicitly(tmp_path, opsq_cli, start_worker):
    known = tmp_path / "known_hosts"
    known.write_text("")
    env = {"OPSQ_KNOWN_HOSTS": str(known)}
    # The worker checks keys against its own known_hosts: point a second worker at ours.
    start_worker("strictworker", extra_env=env)
    summary = run_on_worker("true", "host02", "strictworker")
    r = rows(summary["job_id"])["host02"]
    assert r["status"] == "error"
    assert "not in" in r["error"] and "SHA256:" in r["error"]
    assert "opsq hosts trust host02" in r["error"]

    out = opsq_cli("hosts", "trust", "host02", env=env)
    assert out.returncode == 0, out.stderr
    assert "trusted" in out.stdout and "SHA256:" in out.stdout
    assert f"[{FLEET_SUBNET}.2]:2222 ssh-ed25519 " in known.read_text()
    again = opsq_cli("hosts", "trust", "host02", env=env)
    assert "already trusted" in again.stdout
    assert known.read_text().count(f"{FLEET_SUBNET}.2") == 1

    assert run_on_worker("true", "host02", "strictworker")["succeeded"]


def test_large_output_is_capped_and_flagged():
    summary = run_job("head -c 5242880 /dev/zero | tr '\\0' a; echo tail >&2", pattern="host01")
    r = rows(summary["job_id"])["host01"]
    assert r["status"] == "ok"
    assert r["truncated"] is True
    assert r["stdout_bytes"] == 5 * 1024 * 1024
    assert len(r["stdout"]) == 1024 * 1024 and set(r["stdout"]) == {"a"}
    assert r["stderr"] == "tail\n"


def test_non_utf8_output_is_decoded_with_replacement():
    summary = run_job(r"printf 'caf\351 \377\376 ok\n'; printf '\000x' >&2", pattern="host01")
    r = rows(summary["job_id"])["host01"]
    assert r["status"] == "ok"
    assert r["stdout"] == "caf\ufffd \ufffd\ufffd ok\n"
    assert r["stderr"] == "\ufffdx"
    assert r["truncated"] is False


def test_local_connection_runs_without_ssh(tmp_path):
    inv = tmp_path / "inv.ini"
    inv.write_text("[here]\nlocalhost ansible_connection=local\n")
    summary = run_job("echo local-$((6*7))", pattern="here", inventory=str(inv))
    assert summary["succeeded"]
    assert rows(summary["job_id"])["localhost"]["stdout"] == "local-42\n"


def test_cli_run_prints_job_id_at_once_then_result(opsq_cli):
    start = time.monotonic()
    out = opsq_cli("run", "sleep 2; echo later", "-t", "host01")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    assert time.monotonic() - start < 2 + 3  # returned before the command could finish
    assert jobs.summary(job_id).status in ("queued", "running")
    res = opsq_cli("result", job_id, "--wait", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["status"] == "succeeded"
    assert data["results"][0]["stdout"] == "later\n"
    st = opsq_cli("status", job_id)
    assert "succeeded" in st.stdout and "1/1 hosts done" in st.stdout
    listed = opsq_cli("jobs", "-n", "50")
    assert job_id in listed.stdout


def test_cli_wait_exit_code_and_table(opsq_cli):
    out = opsq_cli("run", f"{HOST_NUMBER}; echo hello$n; exit $((n % 2))", "-t", "fleet:!host06",
                   "--wait")
    assert out.returncode == 1, out.stderr
    assert "5/5 hosts done" in out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["HOST", "STATUS", "EXIT", "TIME", "OUTPUT"]
    assert any(ln.split()[:3] == ["host02", "ok", "0"] and "hello2" in ln for ln in lines)
    assert any(ln.split()[:3] == ["host03", "failed", "1"] for ln in lines)
    assert "host06" not in out.stdout
    ok = opsq_cli("run", "true", "-t", "even:!host06", "--wait", "--json")
    assert ok.returncode == 0
    assert sorted(json.loads(ok.stdout)["hosts"]) == ["host02", "host04"]


def test_bad_pattern_and_inventory_are_refused_before_queuing(tmp_path, opsq_cli):
    with db.session_scope() as s:
        before = s.execute(text("SELECT count(*) FROM jobs")).scalar()
    out = opsq_cli("run", "true", "-t", "nosuchgroup")
    assert out.returncode == 2
    assert "nosuchgroup" in out.stderr
    out = opsq_cli("run", "true", "-t", "fleet:!nosuchhost")
    assert out.returncode == 2 and "nosuchhost" in out.stderr
    bad = tmp_path / "bad.ini"
    bad.write_text("[web\nhost1\n")
    out = opsq_cli("run", "true", "-t", "all", "-i", str(bad))
    assert out.returncode == 2
    assert f"{bad}:1:" in out.stderr and "section header" in out.stderr
    missing = opsq_cli("run", "true", "-t", "all", "-i", str(tmp_path / "nope.yml"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    unknown = opsq_cli("result", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 2 and "no job" in unknown.stderr
    with db.session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM jobs")).scalar() == before


def test_hosts_lists_what_a_pattern_resolves_to(opsq_cli):
    out = opsq_cli("hosts", "fleet:!host03:&odd")
    assert out.returncode == 0, out.stderr
    assert [ln.split()[0] for ln in out.stdout.splitlines()] == ["host01", "host05"]
    assert f"opsqfleet@{FLEET_SUBNET}.1:2222" in out.stdout


def test_stopped_broker_gives_a_clear_error_and_keeps_the_record(opsq_cli):
    out = opsq_cli("run", "true", "-t", "host01",
                   env={"OPSQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}, timeout=60)
    assert out.returncode == 3
    assert "cannot reach RabbitMQ" in out.stderr and "127.0.0.1:1" in out.stderr
    with db.session_scope() as s:
        row = s.execute(text(
            "SELECT status, error FROM jobs ORDER BY submitted_at DESC LIMIT 1")).one()
    assert row.status == "error" and "RabbitMQ" in row.error


def test_stopped_database_gives_a_clear_error(opsq_cli):
    out = opsq_cli("run", "true", "-t", "host01",
                   env={"OPSQ_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/x"})
    assert out.returncode == 3
    assert "cannot reach PostgreSQL at postgresql+psycopg2://postgres@127.0.0.1:1/x" in out.stderr
    assert "Traceback" not in out.stderr


def test_readme_sql_returns_the_rows():
    summary = run_job(f"{HOST_NUMBER}; echo sql$n; exit $((n == 4))")
    readme = ROOT / "README.md"
    blocks = readme.read_text(encoding="utf-8").split("```sql")[1:]
    queries = [b.split("```")[0].strip() for b in blocks]
    assert len(queries) >= 4
    with db.get_engine().connect() as conn:
        for q in queries:
            result = conn.execute(text(q), {"job_id": summary["job_id"]}).all()
            assert result, f"README query returned nothing:\n{q}"
    with db.get_engine().connect() as conn:
        failed = conn.execute(text(queries[1]), {"job_id": summary["job_id"]}).all()
    assert [r.host for r in failed] == ["host04"]


def test_job_chord_is_joined_by_the_job_row_not_by_polling():
    result = jobs.submit(jobs.JobSpec(command="sleep 1", pattern="odd"))
    summary = result.get(timeout=30)
    assert summary["succeeded"]
    with db.session_scope() as s:
        chords = s.execute(text("SELECT count(*) FROM opsq_chords")).scalar()
        unlocks = s.execute(text(
            "SELECT count(*) FROM celery_taskmeta WHERE name = 'celery.chord_unlock'")).scalar()
        job = s.execute(text("SELECT done_count, ok_count FROM jobs WHERE id = :j"),
                        {"j": result.id}).one()
    assert (chords, unlocks) == (0, 0)
    assert tuple(job) == (3, 3)
    # the callback ran and stored the summary under the job id, for Celery and Flower
    meta = wait_until(lambda: taskmeta(result.id), 10, "the callback's result")
    assert meta == ("SUCCESS", "opsq.finish_job")


def test_timeout_beyond_the_broker_consumer_timeout_is_refused(opsq_cli):
    out = opsq_cli("run", "true", "-t", "host01", "--timeout", "7200")
    assert out.returncode == 2 and "consumer_timeout" in out.stderr


def test_many_concurrent_jobs_all_finish():
    # Hundreds of tasks finishing at once make the worker publish events and chord
    # callbacks from many threads: a worker that deadlocks on its own broker connection
    # (seen with publisher confirms on the event connection) leaves jobs unfinished.
    for _ in range(6):
        batch = [jobs.submit(jobs.JobSpec(command="true", pattern="fleet")) for _ in range(30)]
        for r in batch:
            assert r.get(timeout=60, interval=0.05)["succeeded"]


def test_ssh_config_gateway_is_refused_not_half_checked(tmp_path, start_worker):
    # Fabric reads the worker's ~/.ssh/config and would build the jump host itself,
    # accepting any key: opsq refuses such a host instead.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host {FLEET_SUBNET}.3\n    ProxyJump {FLEET_SUBNET}.1:2222\n")
    start_worker("jumpworker", extra_env={"HOME": str(home)})
    summary = run_on_worker("echo should-not-run", "host03", "jumpworker")
    r = rows(summary["job_id"])["host03"]
    assert r["status"] == "error" and "ProxyJump" in r["error"]
    assert r["stdout"] in (None, "")


def test_idle_connections_of_hosts_not_used_again_are_closed(fleet):
    from devtools.devfleet import FLEET_USER
    from opsq.hostrun.runner import RunOptions
    from opsq.hostrun.ssh import ConnectionPool, open_connection
    from opsq.inventory import Host
    from opsq.settings import get_settings

    def host(name: str) -> Host:
        h = next(h for h in fleet.hosts if h.name == name)
        return Host(name=h.name, address=h.address, port=h.port, user=FLEET_USER,
                    key_file=str(fleet.client_key_path))

    pool = ConnectionPool(idle_seconds=0.5)
    a, b = host("host01"), host("host02")
    opts = RunOptions.resolve(a, get_settings())
    first = open_connection(a, opts)
    pool.checkin(pool.key(a, opts), first)
    time.sleep(1)
    pool.checkin(pool.key(b, opts), open_connection(b, opts))  # host01 is never used again
    assert not first.is_connected
    assert pool.checkout(pool.key(a, opts)) is None
    assert pool.checkout(pool.key(b, opts)) is not None
    pool.close_all()


def test_a_pooled_connection_is_replaced_after_its_share_of_channels(fleet, monkeypatch):
    # paramiko remembers every channel a transport opened: a connection kept for days of
    # commands would grow the worker without bound, so the pool retires a worn one.
    from devtools.devfleet import FLEET_USER
    from opsq.hostrun import ssh
    from opsq.hostrun.runner import RunOptions
    from opsq.inventory import Host
    from opsq.settings import get_settings

    monkeypatch.setattr(ssh, "MAX_CHANNELS_PER_CONNECTION", 3)
    h = next(h for h in fleet.hosts if h.name == "host01")
    host = Host(name=h.name, address=h.address, port=h.port, user=FLEET_USER,
                key_file=str(fleet.client_key_path))
    opts = RunOptions.resolve(host, get_settings())
    pool = ssh.ConnectionPool(idle_seconds=60)
    key = pool.key(host, opts)
    conn = ssh.open_connection(host, opts)
    for used in range(1, 4):
        conn.run("true", hide=True, in_stream=False)
        pool.checkin(key, conn)
        if used < 3:
            assert pool.checkout(key) is conn
    assert not conn.is_connected  # the third channel wore it out: closed, not kept
    assert pool.checkout(key) is None
    pool.close_all()


def test_a_start_queued_by_the_previous_release_still_runs_its_job():
    # An upgrade with messages in flight: the old release sent one opsq.start_job per job.
    job_id = jobs.create(jobs.JobSpec(command="echo upgraded", pattern="host03"))
    started = time.monotonic()
    app.send_task("opsq.start_job", (job_id,))
    summary = app.AsyncResult(job_id).get(timeout=30)
    assert summary["succeeded"]
    # sooner than the sweep would have published the job (a lease period, 3 s, of grace)
    assert time.monotonic() - started < 2.5
    assert rows(job_id)["host03"]["stdout"] == "upgraded\n"


def test_inventory_secrets_are_not_stored_with_the_job(tmp_path):
    inv = tmp_path / "inv.yml"
    inv.write_text(
        "all:\n  vars:\n    db_password: s3cret-group\n  children:\n    here:\n      hosts:\n"
        "        localhost:\n          ansible_connection: local\n"
        "          ansible_ssh_pass: hunter2\n          ansible_become_pass: hunter3\n"
        "          opsq_timeout: 7\n")
    summary = run_job("echo ran", pattern="here", inventory=str(inv))
    assert summary["succeeded"]
    with db.session_scope() as s:
        target = s.execute(text("SELECT target::text FROM host_results WHERE job_id = :j"),
                           {"j": summary["job_id"]}).scalar_one()
    for secret in ("s3cret-group", "hunter2", "hunter3", "db_password", "ssh_pass"):
        assert secret not in target
    assert json.loads(target)["vars"] == {"opsq_timeout": 7}  # what the run reads stays


@pytest.mark.parametrize("kwargs", [{"schedule_id": 987654}, {"timeout": -5}],
                         ids=["schedule-removed", "bad-option"])
def test_a_submission_that_cannot_become_a_job_leaks_no_command(kwargs):
    # Such a submission ends as a job with status error and the reason; the task never
    # fails with its arguments (the raw command) stored in celery_taskmeta or an error.
    command = "echo deploy --password=hunter2"
    result = submit_job.apply_async((command, "host01"), kwargs)
    summary = result.get(timeout=30)
    assert summary["status"] == "error" and summary["error"]
    assert "hunter2" not in json.dumps(summary)
    with db.session_scope() as s:
        stored = s.execute(text(
            "SELECT count(*) FROM celery_taskmeta WHERE encode(result, 'escape') LIKE :p "
            "OR encode(args, 'escape') LIKE :p OR encode(kwargs, 'escape') LIKE :p "
            "OR traceback LIKE :p"), {"p": "%hunter2%"}).scalar()
        error = s.execute(text("SELECT error FROM jobs WHERE id = :j"),
                          {"j": result.id}).scalar_one()
    assert stored == 0
    assert "hunter2" not in error


def test_result_table_escapes_terminal_control_from_hosts(opsq_cli):
    summary = run_job(r"printf 'a\033[2J\033]0;pwned\007b\n'", pattern="host01")
    table = opsq_cli("result", summary["job_id"])
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout
    assert "a\\x1b[2J\\x1b]0;pwned\\x07b" in table.stdout
    # piped (not a terminal), -o passes the bytes through for other tools
    raw = opsq_cli("result", summary["job_id"], "-o")
    assert "a\x1b[2J\x1b]0;pwned\x07b\n" in raw.stdout


def test_make_run_passes_the_command_untouched():
    import subprocess


    typed = "echo '$HOME' `id -u` \"$(uname)\" $$x"
    out = subprocess.run(["make", "-s", "run", f"CMD={typed}", "TARGET=host01"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[-1]
    with db.session_scope() as s:
        stored = s.execute(text("SELECT command FROM jobs WHERE id = :j"),
                           {"j": job_id}).scalar_one()
    assert stored == typed
