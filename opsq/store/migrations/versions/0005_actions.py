"""jobs that put, get or run a script: the job's action, the files jobs carry or fetch

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Every existing job is a command job (``kind`` 'command', no parameters); existing host
results have no ``changed`` flag or sha256. Nothing is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("kind", sa.String(16), nullable=False,
                                    server_default="command"))
    op.add_column("jobs", sa.Column("params", JSONB, nullable=False,
                                    server_default=sa.text("'{}'::jsonb")))
    op.add_column("host_results", sa.Column("changed", sa.Boolean))
    op.add_column("host_results", sa.Column("sha256", sa.String(64)))
    # Pruning looks files up from both sides.
    op.create_index("host_results_sha256_idx", "host_results", ["sha256"],
                    postgresql_where=sa.text("sha256 IS NOT NULL"))
    op.create_index("jobs_file_idx", "jobs", [sa.text("(params->>'sha256')")],
                    postgresql_where=sa.text("params ? 'sha256'"))
    op.create_table(
        "files",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("files")
    op.drop_index("jobs_file_idx", "jobs")
    op.drop_index("host_results_sha256_idx", "host_results")
    op.drop_column("host_results", "sha256")
    op.drop_column("host_results", "changed")
    op.drop_column("jobs", "params")
    op.drop_column("jobs", "kind")
