"""execution core v2: leases on running hosts, incremental job counters, published mark

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Existing jobs stay readable and consistent: every job's ``done_count`` and per-status
counters are recomputed from its host rows, and every existing job counts as published
(the previous release published a job as it recorded it), and every finished one as
announced (its callback ran). Hosts left ``running`` by the
previous release have no lease, so the sweeper treats their holder as dead and closes
them (``interrupted``, or run again for a re-run-safe job): no job of the old release
stays running forever. Stored host records lose the inventory variables a run does not
read (the previous release kept every one, passwords included).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STATUSES = ("ok", "failed", "timeout", "unreachable", "error", "interrupted")


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("token", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("task_id", sa.String(155)),
        sa.Column("worker", sa.Text),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.add_column("host_results", sa.Column("lease_token", sa.String(36)))
    # The sweeper and the claim look at running hosts only: keep that index small.
    op.create_index("host_results_running_idx", "host_results", ["lease_token"],
                    postgresql_where=sa.text("status = 'running'"))
    op.add_column("jobs", sa.Column("done_count", sa.Integer, nullable=False,
                                    server_default="0"))
    op.add_column("jobs", sa.Column("published_at", sa.DateTime(timezone=True)))
    op.add_column("jobs", sa.Column("callback_sent_at", sa.DateTime(timezone=True)))
    counts = ", ".join(
        f"{s}_count = (SELECT count(*) FROM host_results h "
        f"WHERE h.job_id = jobs.id AND h.status = '{s}')" for s in _STATUSES)
    finals = ", ".join(f"'{s}'" for s in _STATUSES)
    op.execute(
        f"UPDATE jobs SET {counts}, published_at = submitted_at, "
        f"callback_sent_at = finished_at, "
        f"done_count = (SELECT count(*) FROM host_results h "
        f"WHERE h.job_id = jobs.id AND h.status IN ({finals}))")


    # Earlier releases stored every inventory variable of every host with every job
    # (passwords included): keep only the variables a run reads.
    op.execute(
        "UPDATE host_results SET target = jsonb_set(target, '{vars}', COALESCE(("
        "SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(target->'vars') AS e "
        "WHERE e.key IN ('opsq_timeout', 'opsq_connect_timeout')), '{}'::jsonb)) "
        "WHERE jsonb_typeof(target->'vars') = 'object'")


def downgrade() -> None:
    op.drop_column("jobs", "callback_sent_at")
    op.drop_column("jobs", "published_at")
    op.drop_column("jobs", "done_count")
    op.drop_index("host_results_running_idx", table_name="host_results")
    op.drop_column("host_results", "lease_token")
    op.drop_table("leases")
