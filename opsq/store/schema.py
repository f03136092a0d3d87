"""Create opsq's database if needed and bring its schema to the latest migration."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from opsq.store import db

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The database to connect to when opsq's own does not exist yet.
MAINTENANCE_DB = "postgres"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at opsq's migrations and database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["database_url"] = db.database_url(url)
    return cfg


def create_database(url: str | None = None) -> bool:
    """Create the database named in ``url`` when it is missing; True if it was created."""
    target = make_url(db.database_url(url))
    admin = create_engine(
        target.set(database=MAINTENANCE_DB), isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": db.CONNECT_TIMEOUT},
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": target.database},
            ).first()
            if exists:
                return False
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
            return True
    except OperationalError as exc:
        raise db.unavailable(exc, url) from exc
    finally:
        admin.dispose()


def upgrade(url: str | None = None) -> None:
    """Create the database if needed, then run every pending migration."""
    create_database(url)
    try:
        command.upgrade(alembic_config(url), "head")
    except OperationalError as exc:
        raise db.unavailable(exc, url) from exc
