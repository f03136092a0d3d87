"""hosts whose wait is kept in PostgreSQL, not in a delayed message

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

host_results.held: a pending host of a later batch or a retry whose wait is longer than
OPSQ_MAX_BROKER_DELAY; the sweep sends it once its not_before has passed, so no message is
held unacknowledged past RabbitMQ's consumer_timeout. Existing rows: not held.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("host_results", sa.Column("held", sa.Boolean, nullable=False,
                                            server_default=sa.false()))
    op.create_index("host_results_held_due", "host_results", ["not_before"],
                    postgresql_where=sa.text("held"))


def downgrade() -> None:
    op.drop_index("host_results_held_due", "host_results")
    op.drop_column("host_results", "held")
