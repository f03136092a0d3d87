"""Upgrading from the last release's schema keeps every job, host result and schedule
readable, and closes what the old release left running."""

from __future__ import annotations

import secrets
import subprocess

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from opsq.store import db, schema

#: The last release's schema revision.
LAST_RELEASE = "0003"


@pytest.fixture
def old_database(services):
    """A database of its own at the last release's schema, dropped afterwards."""
    name = f"opsq_upgrade_{secrets.token_hex(4)}"
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    schema.create_database(url)
    command.upgrade(schema.alembic_config(url), LAST_RELEASE)
    yield url
    db.get_engine(url).dispose()
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                   check=False, capture_output=True)


def _fill_as_the_last_release_did(conn) -> None:
    conn.execute(text("""
        INSERT INTO schedules (name, kind, expression, task, kwargs)
        VALUES ('nightly', 'cron', '0 2 * * *', 'opsq.submit_job',
                '{"command": "uptime", "pattern": "web"}')"""))
    conn.execute(text("""
        INSERT INTO jobs (id, command, pattern, inventory, hosts, host_count, status,
                          submitted_by, submitted_at, finished_at, duration, ok_count,
                          failed_count, schedule_id, schedule)
        VALUES ('done-job', 'uptime', 'web', 'inv.yml', '["web1", "web2"]', 2, 'failed',
                'alice', now() - interval '1 hour', now() - interval '59 minutes', 60.5,
                1, 1, (SELECT id FROM schedules), 'nightly'),
               ('stuck-job', 'sleep 9', 'web', 'inv.yml', '["web1", "web2"]', 2, 'running',
                'bob', now() - interval '10 minutes', NULL, NULL, 0, 0, NULL, NULL)"""))
    conn.execute(text("""
        INSERT INTO host_results (job_id, host, target, status, exit_code, stdout, attempt,
                                  started_at, worker, task_id)
        VALUES ('done-job', 'web1', '{"name": "web1", "vars": {"ansible_ssh_pass": "hunter2",
                "opsq_timeout": 9}}', 'ok', 0, 'up 3 days', 1,
                now() - interval '1 hour', 'fleet@old', 't1'),
               ('done-job', 'web2', '{"name": "web2"}', 'failed', 1, '', 1,
                now() - interval '1 hour', 'fleet@old', 't2'),
               ('stuck-job', 'web1', '{"name": "web1"}', 'ok', 0, 'slept', 1,
                now() - interval '10 minutes', 'fleet@old', 't3'),
               ('stuck-job', 'web2', '{"name": "web2"}', 'running', NULL, NULL, 1,
                now() - interval '10 minutes', 'fleet@old', 't4')"""))


def test_upgrade_from_the_last_release_keeps_data_and_closes_stuck_jobs(old_database):
    from opsq.jobs import state

    with create_engine(old_database).begin() as conn:
        _fill_as_the_last_release_did(conn)
    command.upgrade(schema.alembic_config(old_database), "head")

    engine = db.get_engine(old_database)
    with engine.connect() as conn:
        jobs_ = {r.id: r for r in conn.execute(text("SELECT * FROM jobs"))}
        hosts = conn.execute(text(
            "SELECT job_id, host, status, stdout FROM host_results ORDER BY id")).all()
        sched = conn.execute(text("SELECT name, kwargs FROM schedules")).one()
    done, stuck = jobs_["done-job"], jobs_["stuck-job"]
    # the finished job reads as before, its counters derived from its rows
    assert (done.status, done.done_count, done.ok_count, done.failed_count, done.duration) == (
        "failed", 2, 1, 1, 60.5)
    assert done.schedule == "nightly" and done.published_at is not None
    assert [tuple(h) for h in hosts] == [
        ("done-job", "web1", "ok", "up 3 days"), ("done-job", "web2", "failed", ""),
        ("stuck-job", "web1", "ok", "slept"), ("stuck-job", "web2", "running", None)]
    assert sched.name == "nightly" and sched.kwargs["command"] == "uptime"
    # the inventory password the old release stored with the job is gone, the rest kept
    with engine.connect() as conn:
        target = conn.execute(text("SELECT target FROM host_results WHERE host = 'web1' "
                                   "AND job_id = 'done-job'")).scalar_one()
    assert target == {"name": "web1", "vars": {"opsq_timeout": 9}}
    # the job the old release left running: one host counted, one still running
    assert (stuck.status, stuck.done_count, stuck.ok_count) == ("running", 1, 1)

    # Its running host has no lease: the sweep closes it, and with it the job.
    with engine.begin() as conn:
        dead = state.dead_hosts(conn, ttl=0, grace=0, batch=10)
        assert dead.interrupt == {"stuck-job": ["web2"]} and dead.rerun == {}
        assert state.interrupt(conn, "stuck-job", ["web2"], token="t", worker="w",
                               task_id="") == (["web2"], True)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, done_count, ok_count, interrupted_count "
                                "FROM jobs WHERE id = 'stuck-job'")).one()
    assert tuple(row) == ("failed", 2, 1, 1)


def test_upgrade_from_the_console_release_keeps_users_and_names_their_tokens(services):
    """0007 (users, tokens, audit) to head: users keep their passwords and roles, their
    tokens keep working under a name of their own, and old sessions are epoch 0."""
    from opsq.web import users

    name = f"opsq_upgrade_{secrets.token_hex(4)}"
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    schema.create_database(url)
    try:
        command.upgrade(schema.alembic_config(url), "0007")
        token = "opsq_" + secrets.token_urlsafe(32)
        with create_engine(url).begin() as conn:
            conn.execute(text("INSERT INTO users (name, password_hash, role) VALUES "
                              "('ada', :h, 'operator'), ('bob', :h, 'viewer')"),
                         {"h": users._hasher.hash("correct horse battery")})
            conn.execute(text("INSERT INTO api_tokens (user_id, token_sha256) SELECT id, :t "
                              "FROM users WHERE name = 'ada'"), {"t": users.token_hash(token)})
            conn.execute(text("INSERT INTO api_tokens (user_id, token_sha256) SELECT id, :t "
                              "FROM users WHERE name = 'ada'"), {"t": "0" * 64})
            conn.execute(text('INSERT INTO audit ("user", action, target, detail) VALUES '
                              "('cli:root', 'user.add', 'ada', '{}')"))
        command.upgrade(schema.alembic_config(url), "head")
        with db.get_engine(url).connect() as conn:
            rows = conn.execute(text("SELECT u.name, u.role, u.session_epoch, t.name AS token, "
                                     "t.expires_at FROM users u LEFT JOIN api_tokens t ON "
                                     "t.user_id = u.id ORDER BY u.name, t.id")).all()
            kept = conn.execute(text("SELECT count(*) FROM audit")).scalar_one()
        assert [(r.name, r.role, r.session_epoch, r.expires_at) for r in rows] == [
            ("ada", "operator", 0, None), ("ada", "operator", 0, None),
            ("bob", "viewer", 0, None)]
        names = [r.token for r in rows if r.token]
        assert len(set(names)) == 2 and all(n.startswith("token-") for n in names)
        assert kept == 1
    finally:
        db.get_engine(url).dispose()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
                        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                       check=False, capture_output=True)


def _example_tables(url: str) -> dict[str, str | None]:
    """The old example's tables that exist in ``url``'s database, with their comments."""
    with db.get_engine(url).connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') AS note FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "AND c.relkind = 'r' AND c.relname IN ('customers', 'greetings')")).all()
    return {r.relname: r.note for r in rows}


def test_a_fresh_database_has_no_example_tables(services):
    assert _example_tables(db.database_url()) == {}


def test_upgrade_drops_the_example_tables_where_they_are_empty(old_database):
    command.upgrade(schema.alembic_config(old_database), "head")
    assert _example_tables(old_database) == {}


def test_upgrade_keeps_example_tables_with_rows_and_says_so(old_database, caplog):
    with create_engine(old_database).begin() as conn:
        conn.execute(text("INSERT INTO customers (name, phone, birthday) VALUES "
                          "('Ada', '+100', '1990-03-14'), ('Bob', '+200', '1985-03-15')"))
        conn.execute(text("INSERT INTO greetings (customer_id, sent_on, phone, message) "
                          "SELECT id, '2026-03-14', phone, 'Happy birthday' FROM customers "
                          "WHERE name = 'Ada'"))
    with caplog.at_level("WARNING", logger="opsq.migrations"):
        command.upgrade(schema.alembic_config(old_database), "head")
    kept = _example_tables(old_database)
    assert set(kept) == {"customers", "greetings"}
    assert all("old birthday example" in note and "DROP TABLE greetings, customers" in note
               for note in kept.values())
    assert "kept greetings and customers" in caplog.text
    with db.get_engine(old_database).connect() as conn:
        assert conn.execute(text("SELECT name FROM customers ORDER BY id")).scalars().all() \
            == ["Ada", "Bob"]
        assert conn.execute(text("SELECT count(*) FROM greetings")).scalar_one() == 1


def test_upgrade_keeps_customers_with_rows_and_drops_empty_greetings(old_database):
    with create_engine(old_database).begin() as conn:
        conn.execute(text("INSERT INTO customers (name, phone, birthday) "
                          "VALUES ('Ada', '+100', '1990-03-14')"))
    command.upgrade(schema.alembic_config(old_database), "head")
    kept = _example_tables(old_database)
    assert list(kept) == ["customers"] and "DROP TABLE customers" in kept["customers"]
    # Down again, the example's tables are back as 0003 made them, without the note.
    command.downgrade(schema.alembic_config(old_database), "0010")
    assert _example_tables(old_database) == {"customers": None, "greetings": None}
