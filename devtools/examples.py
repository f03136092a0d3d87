"""An example of a business-style periodic task, and how to add your own.

``devtools.examples.birthday_greetings`` finds the customers whose birthday is today and
"sends" each a greeting by recording it in ``greetings`` (a stand-in for an SMS gateway:
swap ``_deliver`` for the real call). Its two tables are the example's, not opsq's: the
task creates them on first use (``ensure_tables``). Workers load it only when asked, from
the repository root (the Makefile puts the root on PYTHONPATH, so ``devtools`` imports)::

    export OPSQ_TASK_MODULES=devtools.examples PYTHONPATH=$PWD
    make restart
    .venv/bin/opsq schedule add birthdays --cron '0 9 * * *' --tz Europe/Paris \\
        --task devtools.examples.birthday_greetings --kwargs '{"tz": "Europe/Paris"}'

Your own tasks: write a module like this one (``@app.task(name=...)``, JSON-able
arguments, no secrets in them) in a package of yours, put its dotted path in
``OPSQ_TASK_MODULES``, restart the workers, and schedule it by name.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from opsq.app import app
from opsq.store import db

GREETING = "Happy birthday, {name}! Best wishes from all of us."
#: Any number: the advisory lock that keeps two first uses from creating the tables at once.
_TABLES_LOCK = 0x6F707371

# The same tables opsq's migration 0003 used to create, so a database that kept them
# (migration 0011 keeps them when they hold rows) goes on working unchanged.
_TABLES = [
    """
    CREATE TABLE IF NOT EXISTS customers (
        id serial PRIMARY KEY,
        name text NOT NULL,
        phone text NOT NULL,
        birthday date NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS customers_birthday_md_idx
        ON customers ((extract(month FROM birthday)), (extract(day FROM birthday)))
    """,
    """
    CREATE TABLE IF NOT EXISTS greetings (
        id serial PRIMARY KEY,
        customer_id integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        sent_on date NOT NULL,
        phone text NOT NULL,
        message text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT greetings_once_a_day UNIQUE (customer_id, sent_on)
    )
    """,
]

# Customers born on 29 February are greeted on 28 February in common years.
_BIRTHDAYS = text(
    """
    SELECT id, name, phone FROM customers
    WHERE (extract(month FROM birthday), extract(day FROM birthday)) = (:month, :day)
       OR (:leap_fallback AND extract(month FROM birthday) = 2
           AND extract(day FROM birthday) = 29)
    ORDER BY id
    """
)
_RECORD = text(
    """
    INSERT INTO greetings (customer_id, sent_on, phone, message)
    VALUES (:cid, :on, :phone, :message)
    ON CONFLICT ON CONSTRAINT greetings_once_a_day DO NOTHING
    RETURNING id
    """
)


def ensure_tables() -> None:
    """Create the example's ``customers`` and ``greetings`` tables if they are missing."""
    with db.get_engine().begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _TABLES_LOCK})
        for ddl in _TABLES:
            conn.execute(text(ddl))


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def birthdays_on(day: date) -> list[dict[str, Any]]:
    """The customers whose birthday falls on ``day``."""
    leap_fallback = day.month == 2 and day.day == 28 and not _is_leap(day.year)
    with db.get_engine().connect() as conn:
        rows = conn.execute(_BIRTHDAYS, {"month": day.month, "day": day.day,
                                         "leap_fallback": leap_fallback}).all()
    return [{"id": r.id, "name": r.name, "phone": r.phone} for r in rows]


def _deliver(conn: Any, customer: dict[str, Any], day: date) -> bool:
    # The "gateway": one row per customer and day; a re-run the same day sends nothing.
    message = GREETING.format(name=customer["name"])
    return conn.execute(_RECORD, {"cid": customer["id"], "on": day,
                                  "phone": customer["phone"], "message": message}
                        ).first() is not None


@app.task(name="devtools.examples.birthday_greetings")
def birthday_greetings(on: str | None = None, tz: str = "UTC") -> dict[str, Any]:
    """Greet today's (or ``on``'s, ISO date) birthdays once; returns who was greeted."""
    day = date.fromisoformat(on) if on else datetime.now(ZoneInfo(tz)).date()
    ensure_tables()
    greeted = []
    with db.get_engine().begin() as conn:
        for customer in birthdays_on(day):
            if _deliver(conn, customer, day):
                greeted.append(customer["name"])
    return {"date": day.isoformat(), "greeted": greeted}
