"""the birthday example's tables leave opsq's schema

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

0003 created ``customers`` and ``greetings`` in every database for the example task, which
now lives outside opsq (``devtools.examples``, not shipped) and creates its tables itself.
Each table is dropped where it is empty. One that holds rows is kept, with a comment on the
table and a warning in the upgrade's log: the rows may be someone's, so dropping them is
left to an administrator. A fresh database thus ends with neither table.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("opsq.migrations")

#: Dropped in this order: greetings references customers.
EXAMPLE_TABLES = ("greetings", "customers")
#: The comment a kept table carries; {drop} is the statement that drops what was kept.
KEPT_NOTE = ("Left over from opsq's old birthday example (migration 0003); opsq does not "
             "use it. Drop it once its rows are no longer needed: {drop}")


def _exists(conn: sa.Connection, table: str) -> bool:
    return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"),
                        {"t": f"public.{table}"}).scalar_one()


def upgrade() -> None:
    conn = op.get_bind()
    present = [t for t in EXAMPLE_TABLES if _exists(conn, t)]
    if not present:
        return
    # No row may arrive between the count and the drop.
    conn.execute(sa.text(f"LOCK TABLE {', '.join(present)} IN ACCESS EXCLUSIVE MODE"))
    kept = [t for t in present
            if conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {t})")).scalar_one()]
    for table in present:
        if table not in kept:
            op.drop_table(table)
    if not kept:
        return
    drop = f"DROP TABLE {', '.join(kept)}"
    note = KEPT_NOTE.format(drop=drop).replace("'", "''")
    for table in kept:
        op.execute(f"COMMENT ON TABLE {table} IS '{note}'")
    log.warning("kept %s: they hold rows, and opsq no longer uses them (they belonged to "
                "the old birthday example). Once the rows are no longer needed: %s",
                " and ".join(kept), drop)


def downgrade() -> None:
    # 0003's tables, where this upgrade dropped them; kept ones lose the note.
    op.execute("""
        CREATE TABLE IF NOT EXISTS customers (
            id serial PRIMARY KEY,
            name text NOT NULL,
            phone text NOT NULL,
            birthday date NOT NULL
        )""")
    op.execute("""
        CREATE INDEX IF NOT EXISTS customers_birthday_md_idx
            ON customers ((extract(month FROM birthday)), (extract(day FROM birthday)))""")
    op.execute("""
        CREATE TABLE IF NOT EXISTS greetings (
            id serial PRIMARY KEY,
            customer_id integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
            sent_on date NOT NULL,
            phone text NOT NULL,
            message text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT greetings_once_a_day UNIQUE (customer_id, sent_on)
        )""")
    for table in EXAMPLE_TABLES:
        op.execute(f"COMMENT ON TABLE {table} IS NULL")
