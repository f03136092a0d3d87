"""re-runs and the overlap policy of schedules

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

jobs.rerun_of: the job a re-run repeats (no foreign key: the first may be pruned first).
schedules.overlap ('skip' or 'allow', existing schedules: 'skip', as new ones), and
schedules.skipped_count / last_skipped_at: firings skipped because the schedule's previous
job was still running.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("rerun_of", sa.String(36)))
    op.add_column("schedules", sa.Column("overlap", sa.String(8), nullable=False,
                                         server_default="skip"))
    op.create_check_constraint("schedules_overlap", "schedules",
                               "overlap IN ('skip', 'allow')")
    op.add_column("schedules", sa.Column("skipped_count", sa.Integer, nullable=False,
                                         server_default="0"))
    op.add_column("schedules", sa.Column("last_skipped_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("schedules", "last_skipped_at")
    op.drop_column("schedules", "skipped_count")
    op.drop_constraint("schedules_overlap", "schedules")
    op.drop_column("schedules", "overlap")
    op.drop_column("jobs", "rerun_of")
