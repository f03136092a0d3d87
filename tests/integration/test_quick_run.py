"""``opsq run CMD -t PATTERN --wait`` on its quick path (opsq.quick): the same table, exit
codes, errors and job as the usual path, from a process that loads neither Celery nor
SQLAlchemy."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers import ROOT
from jobtools import rows

from opsq import jobs

pytestmark = pytest.mark.usefixtures("worker")

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def both(opsq_cli, *args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The command on the quick path, then on the usual one."""
    return opsq_cli(*args), opsq_cli(*args, env={"OPSQ_QUICK": "0"})


def table(out: str) -> list[str]:
    """The result table with what differs between two runs (ids, times) blanked."""
    out = re.sub(UUID, "JOB", out)
    return [re.sub(r"\d+\.\d\ds", "T", line).rstrip() for line in out.splitlines()]


def test_a_quick_run_prints_the_table_the_usual_path_prints(opsq_cli):
    quick, usual = both(opsq_cli, "run", "echo hello from $(hostname -s)", "-t",
                        "host01,host02", "--wait")
    assert quick.returncode == usual.returncode == 0, quick.stderr
    assert table(quick.stdout) == table(usual.stdout)
    assert "host01" in quick.stdout and "ok" in quick.stdout
    assert table(quick.stderr) == table(usual.stderr)
    # The job is an opsq job like any other: rows, summary and its Celery result.
    job_id = re.search(UUID, quick.stderr).group(0)
    assert rows(job_id)["host02"]["status"] == "ok"
    assert jobs.summary(job_id).submitted_by != ""
    assert jobs.submit.__module__  # the facade still loads what it names


def test_a_failing_host_exits_1_and_shows_why(opsq_cli):
    quick, usual = both(opsq_cli, "run", "echo oops >&2; exit 3", "-t", "host01", "--wait")
    assert quick.returncode == usual.returncode == 1
    assert table(quick.stdout) == table(usual.stdout)
    assert re.search(r"host01\s+failed\s+3\s+T\s+oops", "\n".join(table(quick.stdout)))


def test_a_bad_pattern_is_refused_alike_and_records_nothing(opsq_cli):
    before = len(jobs.recent(limit=1000))
    quick, usual = both(opsq_cli, "run", "true", "-t", "nosuchgroup", "--wait")
    assert quick.returncode == usual.returncode == 2
    assert quick.stderr == usual.stderr and "nosuchgroup" in quick.stderr
    assert len(jobs.recent(limit=1000)) == before


def test_the_quick_path_loads_neither_celery_nor_sqlalchemy():
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "opsq.cli", "run", "true", "-t", "host01",
         "--wait"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
              if line.startswith("import time:")}
    assert "kombu" in loaded and "psycopg2" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("celery", "sqlalchemy")}
    # An option the quick path does not take sends the command the usual way.
    usual = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "opsq.cli", "run", "true", "-t", "host01",
         "--wait", "--timeout", "30"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert usual.returncode == 0 and "| celery" in usual.stderr


def test_status_reads_the_line_the_usual_path_prints(opsq_cli):
    done = jobs.submit(jobs.JobSpec(command="true", pattern="host01,host02,host03",
                                    batch_size=2)).get(timeout=60)
    quick, usual = both(opsq_cli, "status", done["job_id"])
    assert quick.returncode == usual.returncode == 0, quick.stderr
    assert quick.stdout == usual.stdout
    assert re.match(rf"{done['job_id']}  succeeded  3/3 hosts done \(3 ok\)  batch 2/2$",
                    quick.stdout.strip())
    missing = both(opsq_cli, "status", "0" * 8 + "-0000-0000-0000-" + "0" * 12)
    assert missing[0].returncode == missing[1].returncode == 2
    assert missing[0].stderr == missing[1].stderr and "no job" in missing[0].stderr
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "opsq.cli", "status",
                          done["job_id"]], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "| sqlalchemy" not in out.stderr


def test_a_stopped_broker_or_database_is_one_clear_line_and_exit_3(opsq_cli):
    before = len(jobs.recent(limit=1000))
    broker = opsq_cli("run", "true", "-t", "host01", "--wait", timeout=60,
                      env={"OPSQ_BROKER_URL": "amqp://guest:s3cret@127.0.0.1:1//"})
    assert broker.returncode == 3, broker.stderr
    assert "cannot reach RabbitMQ" in broker.stderr and "127.0.0.1:1" in broker.stderr
    assert "s3cret" not in broker.stderr and "Traceback" not in broker.stderr
    assert len(jobs.recent(limit=1000)) == before  # nothing was sent, nothing recorded
    # The database away while it waits: the job was sent and still runs; the command says
    # where it could not look.
    database = opsq_cli("run", "echo sent anyway", "-t", "host01", "--wait", timeout=60,
                        env={"OPSQ_DATABASE_URL":
                             "postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/x"})
    assert database.returncode == 3, database.stderr
    assert "cannot reach PostgreSQL at postgresql+psycopg2://postgres:****@127.0.0.1:1/x" \
        in database.stderr
    assert "s3cret" not in database.stderr and "Traceback" not in database.stderr
    job_id = re.search(UUID, database.stderr).group(0)
    assert jobs.wait(job_id, timeout=60).succeeded
    assert rows(job_id)["host01"]["stdout"] == "sent anyway\n"
    quick, _ = both(opsq_cli, "status", job_id)
    broken = opsq_cli("status", job_id, env={"OPSQ_DATABASE_URL":
                                             "postgresql+psycopg2://postgres@127.0.0.1:1/x"})
    assert quick.returncode == 0 and broken.returncode == 3
    assert "cannot reach PostgreSQL" in broken.stderr and "Traceback" not in broken.stderr
