"""Helpers of the job tests: submit, look at rows, steer which worker runs a job."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from sqlalchemy import text

from opsq import jobs
from opsq.app import app
from opsq.store import db

# Each fleet host K answers on 127.0.2.K; the command finds K from the server address
# sshd puts in SSH_CONNECTION, so hosts can behave differently.
HOST_NUMBER = "n=$(echo $SSH_CONNECTION | cut -d' ' -f3 | cut -d. -f4)"


def run_job(command: str, pattern: str = "fleet", **kw) -> dict:
    result = jobs.submit(jobs.JobSpec(command=command, pattern=pattern, **kw))
    return result.get(timeout=60)


def rows(job_id: str) -> dict[str, dict]:
    return {r["host"]: r for r in jobs.host_results(job_id)}


def run_on_worker(command: str, pattern: str, worker_name: str, **spec) -> dict:
    return app.AsyncResult(submit_via(worker_name, command, pattern, **spec)).get(timeout=60)


def submit_via(worker_name: str, command: str, pattern: str, **spec) -> str:
    """Submit a job whose tasks only ``worker_name`` consumes (its own queue)."""
    return submit_spec_via(worker_name, jobs.JobSpec(command=command, pattern=pattern, **spec))


def submit_spec_via(worker_name: str, spec: jobs.JobSpec) -> str:
    """Submit ``spec`` so that only ``worker_name`` runs its tasks (its own queue)."""
    queue = f"q.{worker_name}"
    app.control.add_consumer(queue, destination=[n for n in nodes() if worker_name in n],
                             reply=True)
    job_id = jobs.create(spec)
    job = jobs.summary(job_id)
    sig = jobs.job_signature(job_id, list(job.hosts), spec.command)
    for t in sig.tasks:
        t.set(queue=queue)
    sig.apply_async()
    with db.session_scope() as s:
        s.execute(text("UPDATE jobs SET published_at = now() WHERE id = :j"), {"j": job_id})
    return job_id


def wait_for_status(job_id: str, host: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rows(job_id)[host]["status"] == status:
            return
        time.sleep(0.05)
    raise AssertionError(f"{host} never reached {status}: {rows(job_id)[host]}")


def nodes() -> list[str]:
    return [k for r in app.control.ping(timeout=1) for k in r]


def pg(action: str) -> None:
    """Stop or start the machine's PostgreSQL cluster ("start" also accepts a cluster that
    something else started meanwhile, and waits until it accepts connections)."""
    version = sorted(Path("/etc/postgresql").iterdir())[0].name
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action,
                    *(["-m", "fast"] if action == "stop" else [])], check=action == "stop")
    if action == "start":
        deadline = time.monotonic() + 60
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.2)


def taskmeta(task_id: str):
    """(status, task name) of the task's row in celery_taskmeta, or None."""
    with db.session_scope() as s:
        row = s.execute(text("SELECT status, name FROM celery_taskmeta WHERE task_id = :t"),
                        {"t": task_id}).first()
    return tuple(row) if row else None
