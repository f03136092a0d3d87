"""control of running jobs: batches, failure limits, cancel, retries, notifications

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Existing jobs are unbatched, have no failure limit and no retries; their new counters
(skipped, cancelled) start at zero, which is what their host rows say. Nothing is
rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name in ("skipped_count", "cancelled_count"):
        op.add_column("jobs", sa.Column(name, sa.Integer, nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("batch_size", sa.Integer))
    op.add_column("jobs", sa.Column("current_batch", sa.Integer))
    op.add_column("jobs", sa.Column("batch_pause", sa.Float))
    op.add_column("jobs", sa.Column("max_fail", sa.Integer))
    op.add_column("jobs", sa.Column("retries", sa.Integer, nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("retry_delay", sa.Float))
    op.add_column("jobs", sa.Column("retry_on", sa.String(16)))
    op.add_column("jobs", sa.Column("notify", JSONB, nullable=False,
                                    server_default=sa.text("'[]'::jsonb")))
    op.add_column("jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))
    op.add_column("host_results", sa.Column("batch", sa.Integer))
    op.add_column("host_results", sa.Column("not_before", sa.DateTime(timezone=True)))
    op.create_table(
        "host_attempts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("stdout", sa.Text),
        sa.Column("stderr", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("duration", sa.Float),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Index("host_attempts_job_host_idx", "job_id", "host"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("delivered", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("host_attempts")
    op.drop_column("host_results", "not_before")
    op.drop_column("host_results", "batch")
    for name in ("cancel_requested_at", "notify", "retry_on", "retry_delay", "retries",
                 "max_fail", "batch_pause", "current_batch", "batch_size", "cancelled_count",
                 "skipped_count"):
        op.drop_column("jobs", name)
