"""jobs, host results, chord counters, and Celery's result tables

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from celery.backends.database.session import ResultModelBase
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Celery's result tables (celery_taskmeta, celery_tasksetmeta) as its models define
    # them, with the extended columns (task name, args, worker) opsq turns on.
    import celery.backends.database.models  # noqa: F401  (registers the models)

    ResultModelBase.metadata.create_all(op.get_bind())

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("pattern", sa.Text, nullable=False),
        sa.Column("inventory", sa.Text, nullable=False),
        sa.Column("hosts", JSONB, nullable=False),
        sa.Column("host_count", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("submitted_by", sa.String(128), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration", sa.Float),
        sa.Column("command_timeout", sa.Float),
        sa.Column("connect_timeout", sa.Float),
        sa.Column("rerun_safe", sa.Boolean, nullable=False, server_default=sa.false()),
        *[
            sa.Column(f"{name}_count", sa.Integer, nullable=False, server_default="0")
            for name in ("ok", "failed", "timeout", "unreachable", "error", "interrupted")
        ],
        sa.Column("error", sa.Text),
    )
    op.create_index("jobs_status_idx", "jobs", ["status"])
    op.create_index("jobs_submitted_at_idx", "jobs", ["submitted_at"])

    op.create_table(
        "host_results",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("target", JSONB, nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("exit_code", sa.Integer),
        sa.Column("stdout", sa.Text),
        sa.Column("stderr", sa.Text),
        sa.Column("stdout_bytes", sa.BigInteger),
        sa.Column("stderr_bytes", sa.BigInteger),
        sa.Column("truncated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration", sa.Float),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", sa.Text),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("job_id", "host", name="host_results_job_host_key"),
    )
    op.create_index("host_results_host_idx", "host_results", ["host"])
    op.create_index("host_results_status_idx", "host_results", ["status"])

    op.create_table(
        "opsq_chords",
        sa.Column("group_id", sa.String(155), primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("callback_id", sa.String(155), index=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True)),
        sa.Column("published", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )
    op.create_table(
        "opsq_chord_parts",
        sa.Column("group_id", sa.String(155),
                  sa.ForeignKey("opsq_chords.group_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("task_id", sa.String(155), primary_key=True),
        sa.Column("group_index", sa.Integer),
        sa.Column("state", sa.String(50), nullable=False),
        sa.Column("result", sa.LargeBinary),
    )


def downgrade() -> None:
    op.drop_table("opsq_chord_parts")
    op.drop_table("opsq_chords")
    op.drop_table("host_results")
    op.drop_table("jobs")
