"""views for the questions operators ask in SQL

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

host_latest: each host's latest finished run. host_daily: runs and failures per host and
day (a failure rate over any window is two sums of it). job_drift: the hosts of a job whose
output differs from the job's most common one. schedule_runs: the jobs schedules started.
Views only: nothing is stored twice, and every existing row shows in them at once.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: Statuses that count as failures (not cancelled or skipped: nothing ran).
FAILURES = "('failed', 'timeout', 'unreachable', 'error', 'interrupted')"

VIEWS = {
    "host_latest": """
        SELECT DISTINCT ON (h.host)
               h.host, h.job_id, j.command, j.pattern, j.submitted_at, h.status,
               h.exit_code, h.finished_at, h.duration, left(h.stdout, 1000) AS stdout_head,
               left(h.stderr, 1000) AS stderr_head, h.error
        FROM host_results h JOIN jobs j ON j.id = h.job_id
        WHERE h.status NOT IN ('pending', 'running')
        ORDER BY h.host, j.submitted_at DESC, h.id DESC
    """,
    "host_daily": f"""
        SELECT host, date_trunc('day', finished_at) AS day, count(*) AS runs,
               count(*) FILTER (WHERE status IN {FAILURES}) AS failures,
               count(*) FILTER (WHERE status = 'ok') AS ok
        FROM host_results
        WHERE finished_at IS NOT NULL AND status NOT IN ('cancelled', 'skipped')
        GROUP BY host, date_trunc('day', finished_at)
    """,
    "job_drift": """
        WITH runs AS (
            SELECT job_id, host, status, exit_code, left(stdout, 200) AS stdout_head,
                   sha256(convert_to(length(coalesce(stdout, '')) || ':'
                                     || coalesce(stdout, '') || ':'
                                     || coalesce(stderr, ''), 'UTF8')) AS output
            FROM host_results WHERE status NOT IN ('pending', 'running')
        ), outputs AS (
            SELECT job_id, output, count(*) AS hosts FROM runs GROUP BY job_id, output
        ), majority AS (
            SELECT DISTINCT ON (job_id) job_id, output, hosts
            FROM outputs ORDER BY job_id, hosts DESC, output
        )
        SELECT r.job_id, r.host, r.status, r.exit_code, r.stdout_head,
               o.hosts AS hosts_with_this_output, m.hosts AS hosts_with_majority_output
        FROM runs r JOIN majority m ON m.job_id = r.job_id
             JOIN outputs o ON o.job_id = r.job_id AND o.output = r.output
        WHERE r.output <> m.output
    """,
    "schedule_runs": """
        SELECT j.schedule, j.schedule_id, j.id AS job_id, j.status, j.submitted_at,
               j.finished_at, j.duration, j.host_count, j.ok_count,
               j.host_count - j.ok_count AS not_ok_count, j.error
        FROM jobs j WHERE j.schedule IS NOT NULL
    """,
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
