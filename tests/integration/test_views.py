"""The SQL views of the README's questions, queried against rows real jobs wrote: each
host's latest run, failures per host and day, the hosts that drifted from their job's
majority, and the runs of schedules."""

from __future__ import annotations

import secrets

from helpers import wait_until
from jobtools import HOST_NUMBER, run_job
from sqlalchemy import text

from opsq import jobs, schedules
from opsq.store import db


def _rows(sql: str, **params) -> list[dict]:
    with db.session_scope() as s:
        return [dict(r._mapping) for r in s.execute(text(sql), params)]


def test_drift_lists_the_hosts_whose_output_differs_from_their_job_s_majority(worker):
    tag = secrets.token_hex(3)
    done = run_job(f"{HOST_NUMBER}; if [ $n = 3 ]; then echo {tag}-old; else echo {tag}-new; "
                   "fi")
    drift = _rows("SELECT host, stdout_head, hosts_with_this_output, hosts_with_majority_output "
                  "FROM job_drift WHERE job_id = :j", j=done["job_id"])
    assert drift == [{"host": "host03", "stdout_head": f"{tag}-old\n",
                      "hosts_with_this_output": 1, "hosts_with_majority_output": 5}]
    same = run_job("echo same")
    assert _rows("SELECT * FROM job_drift WHERE job_id = :j", j=same["job_id"]) == []


_WEEK = """
    SELECT host, sum(failures) AS failures, sum(runs) AS runs
    FROM host_daily WHERE day >= date_trunc('day', now()) - interval '7 days'
      AND host IN ('host01', 'host02') GROUP BY host"""


def _week() -> dict[str, tuple[int, int]]:
    return {r["host"]: (int(r["failures"]), int(r["runs"])) for r in _rows(_WEEK)}


def test_latest_run_and_daily_failures_per_host(worker):
    # Other tests ran on these hosts too: what these two jobs add is what is checked.
    before = _week()
    first = run_job("true", pattern="host0[1-2]")
    second = run_job(f"{HOST_NUMBER}; [ $n = 2 ] && exit 4; true", pattern="host0[1-2]")
    latest = {r["host"]: r for r in _rows(
        "SELECT host, job_id, status, exit_code FROM host_latest "
        "WHERE host IN ('host01', 'host02')")}
    assert latest["host01"]["job_id"] == second["job_id"] != first["job_id"]
    assert (latest["host02"]["status"], latest["host02"]["exit_code"]) == ("failed", 4)
    after = _week()
    added = {h: (after[h][0] - before.get(h, (0, 0))[0], after[h][1] - before.get(h, (0, 0))[1])
             for h in after}
    assert added == {"host01": (0, 2), "host02": (1, 2)}


def test_schedule_runs_lists_the_jobs_a_schedule_started(worker):
    name = f"view-{secrets.token_hex(3)}"
    schedules.add(name, schedules.timing(every="1h"), schedules.SUBMIT_TASK,
                  kwargs=schedules.fleet_kwargs("true", "host01"), enabled=False)
    try:
        job_id = schedules.run_now(name)
        wait_until(lambda: jobs.job_status(job_id) and jobs.job_status(job_id).finished,
                   60, "the schedule's job")
        runs = _rows("SELECT job_id, status, host_count, ok_count, not_ok_count "
                     "FROM schedule_runs WHERE schedule = :n", n=name)
        assert runs == [{"job_id": job_id, "status": "succeeded", "host_count": 1,
                         "ok_count": 1, "not_ok_count": 0}]
    finally:
        schedules.remove(name)


def test_the_readme_s_schedule_queries_run(worker):
    from helpers import ROOT

    blocks = (ROOT / "README.md").read_text().split("```postgresql")[1:]
    statements = [q.strip() for b in blocks for q in b.split("```")[0].split(";") if q.strip()]
    assert len(statements) >= 2
    with db.session_scope() as s:
        for q in statements:
            s.execute(text(q)).all()  # a schedule of that name may not exist: no error
