"""the birthday-greetings example task's tables

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("phone", sa.Text, nullable=False),
        sa.Column("birthday", sa.Date, nullable=False),
    )
    op.create_index(
        "customers_birthday_md_idx", "customers",
        [sa.text("extract(month FROM birthday)"), sa.text("extract(day FROM birthday)")],
    )
    op.create_table(
        "greetings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("customer_id", sa.Integer,
                  sa.ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sent_on", sa.Date, nullable=False),
        sa.Column("phone", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.UniqueConstraint("customer_id", "sent_on", name="greetings_once_a_day"),
    )


def downgrade() -> None:
    op.drop_table("greetings")
    op.drop_table("customers")
