"""sites and job deadlines

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

host_results.site: the site whose workers run the host (its inventory's opsq_site, kept
as resolved at submission); NULL for hosts of the plain fleet queue, which every existing
row is. jobs.deadline_at: when the job's hosts that never started end ``unreachable``;
NULL (every existing job): never.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("host_results", sa.Column("site", sa.String(32)))
    op.add_column("jobs", sa.Column("deadline_at", sa.DateTime(timezone=True)))
    op.create_index("jobs_deadline_idx", "jobs", ["deadline_at"],
                    postgresql_where=sa.text("deadline_at IS NOT NULL "
                                             "AND status IN ('queued', 'running')"))


def downgrade() -> None:
    op.drop_index("jobs_deadline_idx", "jobs")
    op.drop_column("jobs", "deadline_at")
    op.drop_column("host_results", "site")
