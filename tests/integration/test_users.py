"""``opsq users``: accounts of the web console, kept with hashed passwords and tokens."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys

from helpers import ROOT
from sqlalchemy import text

from opsq.store import db


def opsq(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsq.cli", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, env=dict(os.environ), timeout=60)


def row(sql: str, **params):
    with db.session_scope() as s:
        return s.execute(text(sql), params).first()


def test_add_token_list_rm_with_hashes_at_rest(services):
    name, password = f"ada-{secrets.token_hex(3)}", "correct horse battery"
    added = opsq("users", "add", name, "--role", "operator", stdin=password + "\n")
    assert added.returncode == 0, added.stderr
    stored = row("SELECT password_hash, role FROM users WHERE name = :n", n=name)
    assert stored.role == "operator"
    assert password not in stored.password_hash
    assert stored.password_hash.startswith("$argon2id$")

    token = opsq("users", "token", name)
    assert token.returncode == 0, token.stderr
    issued = token.stdout.strip()
    assert issued.startswith("opsq_") and len(issued) > 40
    kept = row("SELECT t.token_sha256 FROM api_tokens t JOIN users u ON u.id = t.user_id "
               "WHERE u.name = :n", n=name).token_sha256
    assert kept == hashlib.sha256(issued.encode()).hexdigest()
    assert row("SELECT count(*) AS n FROM api_tokens WHERE token_sha256 = :t",
               t=issued).n == 0

    listed = opsq("users", "list")
    assert name in listed.stdout and "operator" in listed.stdout and "tokens 1" in listed.stdout

    actions = [r.action for r in db_rows(
        "SELECT action FROM audit WHERE target = :n ORDER BY id", n=name)]
    assert actions == ["user.add", "user.token"]

    removed = opsq("users", "rm", name)
    assert removed.returncode == 0, removed.stderr
    assert name not in opsq("users", "list").stdout
    assert row("SELECT count(*) AS n FROM api_tokens WHERE token_sha256 = :t",
               t=kept).n == 0
    again = opsq("users", "rm", name)
    assert again.returncode == 2 and f"no user named '{name}'" in again.stderr


def db_rows(sql: str, **params):
    with db.session_scope() as s:
        return s.execute(text(sql), params).all()


def test_duplicate_user_is_refused_with_exit_2(services):
    name = f"bob-{secrets.token_hex(3)}"
    assert opsq("users", "add", name, "--role", "viewer", stdin="pw-one-long\n").returncode == 0
    dup = opsq("users", "add", name, "--role", "admin", stdin="pw-two-long\n")
    assert dup.returncode == 2
    assert f"a user named '{name}' already exists" in dup.stderr
    assert row("SELECT role FROM users WHERE name = :n", n=name).role == "viewer"


def test_bad_name_role_or_password_is_refused(services):
    short = opsq("users", "add", f"c-{secrets.token_hex(3)}", "--role", "viewer", stdin="short\n")
    assert short.returncode == 2 and "8 to 1024 characters" in short.stderr
    bad = opsq("users", "add", "no spaces", "--role", "viewer", stdin="long enough pw\n")
    assert bad.returncode == 2 and "invalid user name" in bad.stderr
    role = opsq("users", "add", "carol", "--role", "root", stdin="long enough pw\n")
    assert role.returncode == 2
    assert row("SELECT count(*) AS n FROM users WHERE name IN ('carol', 'no spaces')").n == 0
