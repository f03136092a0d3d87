"""schedules, and the schedule a job came from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("expression", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False, server_default="UTC"),
        sa.Column("task", sa.Text, nullable=False),
        sa.Column("args", JSONB, nullable=False, server_default="[]"),
        sa.Column("kwargs", JSONB, nullable=False, server_default="{}"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("last_run_at", sa.DateTime(timezone=True)),
        sa.Column("next_run_at", sa.DateTime(timezone=True)),
        sa.Column("run_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_task_id", sa.String(64)),
        sa.CheckConstraint("kind IN ('cron', 'interval', 'once')", name="schedules_kind_check"),
    )
    op.create_index("schedules_due_idx", "schedules", ["next_run_at"],
                    postgresql_where=sa.text("enabled"))
    op.add_column("jobs", sa.Column(
        "schedule_id", sa.Integer, sa.ForeignKey("schedules.id", ondelete="SET NULL")))
    op.add_column("jobs", sa.Column("schedule", sa.Text))
    op.create_index("jobs_schedule_id_idx", "jobs", ["schedule_id"])


def downgrade() -> None:
    op.drop_index("jobs_schedule_id_idx", "jobs")
    op.drop_column("jobs", "schedule")
    op.drop_column("jobs", "schedule_id")
    op.drop_table("schedules")
