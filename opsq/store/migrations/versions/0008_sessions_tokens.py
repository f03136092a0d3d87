"""console sessions that can be revoked, and named API tokens with an expiry

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

users.session_epoch: logout, a password or role change raise it, and every session cookie
signed with an older one is refused. api_tokens.name (unique per user; existing tokens
are named token-<id>) and api_tokens.expires_at (existing tokens: none).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("session_epoch", sa.Integer, nullable=False,
                                     server_default="0"))
    op.add_column("api_tokens", sa.Column("name", sa.String(64)))
    op.execute("UPDATE api_tokens SET name = 'token-' || id")
    op.alter_column("api_tokens", "name", nullable=False)
    op.create_unique_constraint("api_tokens_user_name", "api_tokens", ["user_id", "name"])
    op.add_column("api_tokens", sa.Column("expires_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("api_tokens", "expires_at")
    op.drop_constraint("api_tokens_user_name", "api_tokens")
    op.drop_column("api_tokens", "name")
    op.drop_column("users", "session_epoch")
