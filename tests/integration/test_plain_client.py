"""A client that knows nothing of opsq (only Celery, a broker URL and a db+postgresql
result backend) submits a job by task name and reads its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jobtools import rows

#: What the client installs: Celery with its SQLAlchemy result backend, and a driver.
CLIENT_PACKAGES = ["celery[sqlalchemy]", "psycopg2-binary"]

CLIENT = textwrap.dedent("""
    import json, sys
    from celery import Celery

    broker, backend, command, pattern = sys.argv[1:5]
    try:
        import opsq  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("opsq is importable: this is not a plain client")
    app = Celery("plain", broker=broker, backend=backend)
    result = app.send_task("opsq.submit_job", args=[command, pattern])
    print(json.dumps({"id": result.id, "summary": result.get(timeout=90)}))
""")


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *CLIENT_PACKAGES],
                   check=True, capture_output=True)
    return venv / "bin" / "python"


def test_a_plain_celery_client_submits_by_name_and_gets_the_summary(worker, plain_python,
                                                                      tmp_path):
    backend = "db+" + os.environ["OPSQ_DATABASE_URL"]
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = subprocess.run(
        [str(plain_python), str(script), os.environ["OPSQ_BROKER_URL"], backend,
         "echo plain-$((40+2))", "fleet"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout)
    summary = answer["summary"]
    assert summary["job_id"] == answer["id"]
    assert summary["status"] == "succeeded"
    assert summary["total"] == len(summary["hosts"]) > 1
    results = rows(answer["id"])
    assert {r["status"] for r in results.values()} == {"ok"}
    assert {r["stdout"].strip() for r in results.values()} == {"plain-42"}


def test_a_task_no_opsq_worker_knows_fails_instead_of_waiting(worker, plain_python,
                                                              tmp_path):
    backend = "db+" + os.environ["OPSQ_DATABASE_URL"]
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent("""
        import sys
        from celery import Celery

        app = Celery("plain", broker=sys.argv[1], backend=sys.argv[2])
        try:
            app.send_task("opsq.no_such_task", args=[1]).get(timeout=60)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """))
    out = subprocess.run([str(plain_python), str(script), os.environ["OPSQ_BROKER_URL"],
                          backend], capture_output=True, text=True, timeout=90,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("NotRegistered"), out.stdout
