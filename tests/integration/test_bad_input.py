"""Bad input, the way operators type it: every case exits 2 with a one-line reason on
stderr, prints no traceback, and writes nothing (no job, host result or schedule).

Each case runs the real ``opsq`` command against the test database; the inventories it
reads are written to a temporary directory (``{dir}`` in an argument).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from opsq import jobs
from opsq.store import db

GOOD = ("local:\n  hosts:\n    l1: {ansible_connection: local}\n"
        "    l2: {ansible_connection: local}\n")

# A YAML "billion laughs": each level refers to the one before ten times.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
    for i in range(8)) + "all:\n  hosts:\n    h1: {v: *i}\n"

INVENTORIES = {
    "good.yml": GOOD,
    "broken.yml": "all:\n  hosts:\n    web1: {ansible_host: 10.0.0.1\n",
    "list.yml": "- web1\n- web2\n",
    "bomb.yml": ALIAS_BOMB,
    "timeout_abc.ini": "web1 ansible_connection=local opsq_timeout=abc\n",
    "timeout_nan.ini": "web1 ansible_connection=local opsq_timeout=nan\n",
    "timeout_neg.yml": "all:\n  hosts:\n    web1: {ansible_connection: local, opsq_timeout: -5}\n",
    "connect_neg.ini": "web1 ansible_connection=local opsq_connect_timeout=-1\n",
    "connect_inf.ini": "web1 ansible_connection=local opsq_connect_timeout=inf\n",
    "port_abc.ini": "web1 ansible_port=abc\n",
    "port_big.ini": "web1 ansible_port=70000\n",
    "port_zero.yml": "all:\n  hosts:\n    web1: {ansible_port: 0}\n",
    "range_huge.ini": "[web]\nweb[0:99999999]\n",
    "range_backwards.ini": "[web]\nweb[9:1]\n",
    "children_unknown.ini": "[web]\nweb1\n[prod:children]\nweb\nnosuchgroup\n",
    "header_comment.ini": "[web] ; the web tier\nweb1\n",
    "int_host.yml": "all:\n  hosts:\n    42: {}\n",
    "not_utf8.ini": "[web]\nweb1 note=\udcff\n",
    "empty.yml": "",
    "json_broken.json": '{"all": {"hosts": ["web1",}}',
    "unclosed_section.ini": "[web\nweb1\n",
}

#: (case id, argv after ``opsq``, words one of which the reason must contain).
CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # daemons: a site name that cannot be a queue or a node name, for each subcommand
    *[(f"daemons-{sub}-bad-site", ["daemons", sub, "--site", "EU West!"], ("opsq_site must",))
      for sub in ("start", "stop", "restart", "status")],
    # metrics: a port that is not one
    ("metrics-port-0", ["metrics", "--port", "0"], ("range",)),
    # run: a deadline that is not a number of seconds in range
    ("run-deadline-nan", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                          "--deadline", "nan"], ("deadline", "finite", "nan")),
    # run: a typed sudo password (-K) kept shorter than the job may run; refused before
    # the prompt (the test gives no password)
    ("run-K-outlives-password", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                                 "--become", "-K", "--batch-size", "1", "--pause", "3600"],
     ("is kept 3600 s",)),
    # put, get, script, logs, cancel, users: one refusal each at least
    ("put-missing-file", ["put", "{dir}/no-such-file", "/tmp/x", "-t", "all",
                          "-i", "{dir}/good.yml"], ("no-such-file",)),
    ("get-dot-dot", ["get", "/etc/../../etc/hostname", "{dir}/fetched", "-t", "all",
                     "-i", "{dir}/good.yml"], ("..",)),
    ("get-dest-is-a-file", ["get", "/etc/hostname", "{dir}/good.yml", "-t", "all",
                            "-i", "{dir}/good.yml"], ("not a directory", "directory")),
    ("script-missing-file", ["script", "{dir}/no-such-script", "-t", "all",
                             "-i", "{dir}/good.yml"], ("no-such-script",)),
    ("logs-unknown-job", ["logs", "00000000-0000-0000-0000-000000000000"], ("no job",)),
    ("cancel-unknown-job", ["cancel", "00000000-0000-0000-0000-000000000000"], ("no job",)),
    ("rerun-unknown-job", ["rerun", "00000000-0000-0000-0000-000000000000"], ("no job",)),
    ("rerun-unfinished", ["rerun", "{queued}", "--failed"], ("still",)),
    ("schedule-disable-unknown", ["schedule", "disable", "no-such-schedule"],
     ("no schedule",)),
    ("users-add-bad-name", ["users", "add", "no spaces", "--role", "viewer"],
     ("invalid user name",)),
    ("users-token-unknown", ["users", "token", "no-such-user"], ("no user",)),
    ("users-token-bad-lifetime", ["users", "token", "no-such-user", "--expires", "forever"],
     ("lifetime",)),
    ("users-tokens-unknown", ["users", "tokens", "no-such-user"], ("no user",)),
    ("users-revoke-unknown", ["users", "revoke", "no-such-user", "t1"], ("no user",)),
    ("users-role-unknown", ["users", "role", "no-such-user", "admin"], ("no user",)),
    ("users-role-bad", ["users", "role", "no-such-user", "root"], ("root",)),
    ("users-passwd-bad-name", ["users", "passwd", "no spaces"], ("invalid user name",)),
    ("users-rm-unknown", ["users", "rm", "no-such-user"], ("no user",)),
    # run: deadlines
    ("run-timeout-nan", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                         "--timeout", "nan"], ("finite",)),
    ("run-timeout-inf", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                         "--timeout", "inf"], ("finite",)),
    ("run-timeout-negative", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                              "--timeout", "-1"], ("above 0",)),
    ("run-timeout-zero", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                          "--timeout", "0"], ("above 0",)),
    ("run-timeout-word", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                          "--timeout", "abc"], ("number",)),
    ("run-timeout-overflow", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                              "--timeout", "1e400"], ("finite",)),
    ("run-timeout-too-long", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                              "--timeout", "99999999"], ("consumer_timeout",)),
    ("run-connect-inf", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                         "--connect-timeout", "inf"], ("finite",)),
    ("run-connect-nan", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                         "--connect-timeout", "nan"], ("finite",)),
    ("run-connect-negative", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                              "--connect-timeout", "-1"], ("above 0",)),
    ("run-connect-too-long", ["run", "true", "-t", "all", "-i", "{dir}/good.yml",
                              "--connect-timeout", "1e9"], ("at most",)),
    # run: command and pattern
    ("run-empty-command", ["run", "", "-t", "all", "-i", "{dir}/good.yml"], ("empty",)),
    ("run-blank-command", ["run", "   ", "-t", "all", "-i", "{dir}/good.yml"], ("empty",)),
    ("run-no-target", ["run", "true", "-i", "{dir}/good.yml"], ("--target",)),
    ("run-unknown-option", ["run", "true", "-t", "all", "--hosts", "x"], ("no such option",)),
    ("run-unknown-group", ["run", "true", "-t", "nosuchgroup", "-i", "{dir}/good.yml"],
     ("nosuchgroup",)),
    ("run-empty-pattern", ["run", "true", "-t", "", "-i", "{dir}/good.yml"], ("pattern",)),
    ("run-empty-regex", ["run", "true", "-t", "~", "-i", "{dir}/good.yml"], ("regex",)),
    ("run-bad-regex", ["run", "true", "-t", "~l(", "-i", "{dir}/good.yml"], ("regex",)),
    ("run-bad-subscript", ["run", "true", "-t", "local[", "-i", "{dir}/good.yml"],
     ("local[",)),
    ("run-subscript-out-of-range", ["run", "true", "-t", "local[9]", "-i", "{dir}/good.yml"],
     ("local[9]", "match")),
    ("run-excluded-everything", ["run", "true", "-t", "all:!local", "-i", "{dir}/good.yml"],
     ("no host", "matches no", "nothing")),
    # run: inventory files
    ("run-missing-inventory", ["run", "true", "-t", "all", "-i", "{dir}/nope.yml"],
     ("nope.yml",)),
    ("run-broken-yaml", ["run", "true", "-t", "all", "-i", "{dir}/broken.yml"],
     ("broken.yml",)),
    ("run-yaml-list", ["run", "true", "-t", "all", "-i", "{dir}/list.yml"], ("list.yml",)),
    ("run-alias-bomb", ["run", "true", "-t", "all", "-i", "{dir}/bomb.yml"], ("alias",)),
    ("run-inventory-timeout-word", ["run", "true", "-t", "all", "-i",
                                    "{dir}/timeout_abc.ini"], ("opsq_timeout",)),
    ("run-inventory-timeout-nan", ["run", "true", "-t", "all", "-i",
                                   "{dir}/timeout_nan.ini"], ("opsq_timeout",)),
    ("run-inventory-timeout-negative", ["run", "true", "-t", "all", "-i",
                                        "{dir}/timeout_neg.yml"], ("opsq_timeout",)),
    ("run-inventory-connect-negative", ["run", "true", "-t", "all", "-i",
                                        "{dir}/connect_neg.ini"], ("opsq_connect_timeout",)),
    ("run-inventory-connect-inf", ["run", "true", "-t", "all", "-i",
                                   "{dir}/connect_inf.ini"], ("opsq_connect_timeout",)),
    ("run-inventory-port-word", ["run", "true", "-t", "all", "-i", "{dir}/port_abc.ini"],
     ("port",)),
    ("run-inventory-port-too-big", ["run", "true", "-t", "all", "-i", "{dir}/port_big.ini"],
     ("port",)),
    ("run-inventory-port-zero", ["run", "true", "-t", "all", "-i", "{dir}/port_zero.yml"],
     ("port",)),
    ("run-inventory-huge-range", ["run", "true", "-t", "all", "-i", "{dir}/range_huge.ini"],
     ("range",)),
    ("run-inventory-backwards-range", ["run", "true", "-t", "all", "-i",
                                       "{dir}/range_backwards.ini"], ("range",)),
    ("run-inventory-unknown-child", ["run", "true", "-t", "all", "-i",
                                     "{dir}/children_unknown.ini"], ("nosuchgroup",)),
    ("run-inventory-header-comment", ["run", "true", "-t", "all", "-i",
                                      "{dir}/header_comment.ini"], ("header_comment.ini",)),
    ("run-inventory-int-host", ["run", "true", "-t", "all", "-i", "{dir}/int_host.yml"],
     ("42",)),
    ("run-inventory-not-utf8", ["run", "true", "-t", "all", "-i", "{dir}/not_utf8.ini"],
     ("utf-8",)),
    ("run-inventory-empty", ["run", "true", "-t", "all", "-i", "{dir}/empty.yml"],
     ("no host", "empty", "matches no")),
    ("run-inventory-broken-json", ["run", "true", "-t", "all", "-i",
                                   "{dir}/json_broken.json"], ("json_broken.json",)),
    ("run-inventory-unclosed-section", ["run", "true", "-t", "all", "-i",
                                        "{dir}/unclosed_section.ini"], ("unclosed_section",)),
    ("run-inventory-is-a-device", ["run", "true", "-t", "all", "-i", "/dev/null/x"],
     ("/dev/null/x",)),
    # hosts
    ("hosts-unknown", ["hosts", "nosuch", "-i", "{dir}/good.yml"], ("nosuch",)),
    ("hosts-no-pattern", ["hosts"], ("missing argument",)),
    ("hosts-two-patterns", ["hosts", "l1", "l2", "-i", "{dir}/good.yml"], ("usage",)),
    ("hosts-empty-regex", ["hosts", "~", "-i", "{dir}/good.yml"], ("regex",)),
    ("hosts-alias-bomb", ["hosts", "all", "-i", "{dir}/bomb.yml"], ("alias",)),
    ("hosts-trust-no-pattern", ["hosts", "trust"], ("usage",)),
    ("hosts-trust-timeout-negative", ["hosts", "trust", "all", "-i", "{dir}/good.yml",
                                      "--timeout", "-1"], ("above 0",)),
    ("hosts-trust-timeout-nan", ["hosts", "trust", "all", "-i", "{dir}/good.yml",
                                 "--timeout", "nan"], ("finite",)),
    ("hosts-trust-timeout-inf", ["hosts", "trust", "all", "-i", "{dir}/good.yml",
                                 "--timeout", "inf"], ("finite",)),
    # result / status
    ("result-not-a-uuid", ["result", "abc"], ("no job",)),
    ("result-unknown-job", ["result", "00000000-0000-0000-0000-000000000000"], ("no job",)),
    ("result-empty-id", ["result", ""], ("no job",)),
    ("result-unfinished", ["result", "{queued}"], ("not finished",)),
    ("result-wait-timeout-nan", ["result", "{queued}", "--wait", "--timeout", "nan"],
     ("finite",)),
    ("result-wait-timeout-negative", ["result", "{queued}", "--wait", "--timeout", "-1"],
     ("above 0",)),
    ("result-escape-in-id", ["result", "a\x1b[2J"], ("no job",)),
    ("status-unknown-job", ["status", "00000000-0000-0000-0000-000000000000"], ("no job",)),
    ("status-not-a-uuid", ["status", "x" * 5000], ("no job",)),
    ("status-no-id", ["status"], ("missing argument",)),
    # jobs
    ("jobs-negative", ["jobs", "-n", "-1"], ("range",)),
    ("jobs-zero", ["jobs", "-n", "0"], ("range",)),
    ("jobs-word", ["jobs", "-n", "abc"], ("integer",)),
    ("jobs-huge", ["jobs", "-n", "99999999999999999999"], ("range",)),
    # schedules
    ("schedule-every-huge", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                             "{dir}/good.yml", "--every", "99999999999d"], ("interval",)),
    ("schedule-every-zero", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                             "{dir}/good.yml", "--every", "0s"], ("interval",)),
    ("schedule-every-word", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                             "{dir}/good.yml", "--every", "often"], ("interval",)),
    ("schedule-cron-never", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                             "{dir}/good.yml", "--cron", "0 0 31 2 *"], ("never",)),
    ("schedule-cron-malformed", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                                 "{dir}/good.yml", "--cron", "every day"], ("cron",)),
    ("schedule-cron-out-of-range", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                                    "{dir}/good.yml", "--cron", "61 * * * *"], ("cron",)),
    ("schedule-at-far-future-tz", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                                   "{dir}/good.yml", "--at", "9999-12-31T23:59", "--tz",
                                   "America/Los_Angeles"], ("9999",)),
    ("schedule-at-past", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                          "{dir}/good.yml", "--at", "2000-01-01T00:00"], ("past",)),
    ("schedule-at-garbage", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                             "{dir}/good.yml", "--at", "tomorrow"], ("tomorrow",)),
    ("schedule-unknown-zone", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                               "{dir}/good.yml", "--cron", "0 * * * *", "--tz", "Mars/Base"],
     ("Mars/Base",)),
    ("schedule-two-timings", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                              "{dir}/good.yml", "--cron", "0 * * * *", "--every", "5m"],
     ("one of",)),
    ("schedule-no-timing", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                            "{dir}/good.yml"], ("--cron",)),
    ("schedule-timeout-negative", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                                   "{dir}/good.yml", "--every", "5m", "--timeout", "-5"],
     ("timeout",)),
    ("schedule-timeout-nan", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                              "{dir}/good.yml", "--every", "5m", "--timeout", "nan"],
     ("timeout", "finite")),
    ("schedule-connect-inf", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                              "{dir}/good.yml", "--every", "5m", "--connect-timeout", "inf"],
     ("timeout", "finite")),
    ("schedule-name-too-long", ["schedule", "add", "s" * 200, "true", "-t", "all", "-i",
                                "{dir}/good.yml", "--every", "5m"], ("name",)),
    ("schedule-name-empty", ["schedule", "add", "", "true", "-t", "all", "-i",
                             "{dir}/good.yml", "--every", "5m"], ("name",)),
    ("schedule-missing-inventory", ["schedule", "add", "s1", "true", "-t", "all", "-i",
                                    "no/such/inventory.yml", "--every", "5m"],
     ("inventory.yml",)),
    ("schedule-unknown-pattern", ["schedule", "add", "s1", "true", "-t", "nosuchgroup",
                                  "-i", "{dir}/good.yml", "--every", "5m"], ("nosuchgroup",)),
    ("schedule-command-without-target", ["schedule", "add", "s1", "true", "--every", "5m"],
     ("--target", "-t")),
    ("schedule-nothing-to-run", ["schedule", "add", "s1", "--every", "5m"],
     ("command", "--task")),
    ("schedule-unknown-task", ["schedule", "add", "s1", "--task", "opsq.no_such_task",
                               "--every", "5m"], ("opsq.no_such_task",)),
    ("schedule-args-overflow", ["schedule", "add", "s1", "--task", "opsq.prune", "--args",
                                "[1e400]", "--every", "5m"], ("--args",)),
    ("schedule-args-not-array", ["schedule", "add", "s1", "--task", "opsq.prune", "--args",
                                 '{"a": 1}', "--every", "5m"], ("--args",)),
    ("schedule-kwargs-not-object", ["schedule", "add", "s1", "--task", "opsq.prune",
                                    "--kwargs", "[1]", "--every", "5m"], ("--kwargs",)),
    ("schedule-args-not-json", ["schedule", "add", "s1", "--task", "opsq.prune", "--args",
                                "[1,", "--every", "5m"], ("--args",)),
    ("schedule-edit-unknown", ["schedule", "edit", "nosuchschedule", "--every", "5m"],
     ("nosuchschedule",)),
    ("schedule-edit-every-zero", ["schedule", "edit", "kept", "--every", "0s"],
     ("interval",)),
    ("schedule-edit-cron-never", ["schedule", "edit", "kept", "--cron", "0 0 30 2 *"],
     ("never",)),
    ("schedule-edit-unknown-pattern", ["schedule", "edit", "kept", "-t", "nosuchgroup"],
     ("nosuchgroup",)),
    ("schedule-edit-timeout-negative", ["schedule", "edit", "kept", "--timeout", "-5"],
     ("timeout",)),
    ("schedule-show-negative", ["schedule", "show", "kept", "-n", "-1"], ("at least",)),
    ("schedule-rm-unknown", ["schedule", "rm", "nosuchschedule"], ("nosuchschedule",)),
    ("schedule-enable-unknown", ["schedule", "enable", "nosuchschedule"],
     ("nosuchschedule",)),
    ("schedule-run-now-unknown", ["schedule", "run-now", "nosuchschedule"],
     ("nosuchschedule",)),
]


def _snapshot() -> str:
    """A digest of everything a command could write: jobs, host results, schedules."""
    with db.session_scope() as s:
        parts = [
            s.execute(text(f"SELECT coalesce(string_agg(t::text, '|' ORDER BY t::text), '') "
                           f"FROM {table} t")).scalar_one()
            for table in ("jobs", "host_results", "schedules")
        ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@pytest.fixture(scope="module")
def inventories(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-inventories")
    for name, content in INVENTORIES.items():
        (d / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    return d


@pytest.fixture(scope="module")
def setup(services, inventories):
    """A queued job (never published) and a schedule named ``kept``, for the cases that
    need something to exist."""
    queued = jobs.create(jobs.JobSpec(command="true", pattern="all",
                                      inventory=str(inventories / "good.yml")))
    with db.session_scope() as s:
        kept = s.execute(text("SELECT 1 FROM schedules WHERE name = 'kept'")).first()
    if kept is None:
        subprocess.run([sys.executable, "-m", "opsq.cli", "schedule", "add", "kept", "true",
                        "-t", "all", "-i", str(inventories / "good.yml"), "--every", "1h",
                        "--disabled"], check=True, capture_output=True)
    return {"dir": str(inventories), "queued": queued}


#: Commands that take input but have no case here, and why.
NO_CASE = {
    ("schedule", "list"): "its only option is a flag (--json)",
}


def _commands(group=None, path=()):
    """Every ``opsq`` command that takes an argument or option, as its words."""
    import click

    from opsq.cli import main

    for name, cmd in (group or main).commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        elif [p for p in cmd.params if p.name != "help"]:
            yield (*path, name)


def test_every_command_that_takes_input_has_a_case():
    assert len({c[0] for c in CASES}) == len(CASES)  # ids are unique
    covered = {tuple(c[1][:2]) for c in CASES} | {tuple(c[1][:1]) for c in CASES}
    missing = [" ".join(cmd) for cmd in _commands()
               if cmd not in covered and cmd not in NO_CASE]
    assert not missing, f"commands with no refusal case in CASES: {missing}"


@pytest.mark.parametrize(("argv", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_reason_and_writes_nothing(setup, argv, reason):
    argv = [a.replace("{dir}", setup["dir"]).replace("{queued}", setup["queued"])
            for a in argv]
    before = _snapshot()
    out = subprocess.run([sys.executable, "-m", "opsq.cli", *argv], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ), stdin=subprocess.DEVNULL,
                         errors="replace")
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-2000:]
    assert out.returncode == 2, (out.returncode, out.stdout[-500:], out.stderr[-2000:])
    last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    assert last.startswith(("opsq: ", "Error: ")), out.stderr
    assert any(word.lower() in last.lower() for word in reason), (reason, last)
    assert _snapshot() == before, "a refused command wrote to the database"
