"""The local runner (``ansible_connection=local``) and the fan-out's chunking: pure
tests, no services needed (``make test-fast``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import alive, wait_until

from opsq.hostrun.local import LocalRunner
from opsq.hostrun.runner import RunOptions
from opsq.jobs import MIN_CHUNKS, chunks
from opsq.status import HostStatus


def options(timeout: float = 10, limit: int = 1024) -> RunOptions:
    return RunOptions(command_timeout=timeout, connect_timeout=1, output_limit=limit,
                      known_hosts=Path("/nonexistent"))


def test_exit_codes_and_separate_streams():
    ok = LocalRunner().command("echo out; echo err >&2", options())
    assert (ok.status, ok.exit_code, ok.stdout, ok.stderr) == (HostStatus.OK, 0, "out\n",
                                                                "err\n")
    bad = LocalRunner().command("exit 7", options())
    assert (bad.status, bad.exit_code) == (HostStatus.FAILED, 7)
    killed = LocalRunner().command("kill -TERM $$", options())
    assert (killed.status, killed.exit_code) == (HostStatus.FAILED, 128 + 15)


def test_deadline_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child"
    began = time.monotonic()
    out = LocalRunner().command(f"sleep 30 & echo $! > {pidfile}; echo started; wait", options(0.5))
    assert time.monotonic() - began < 5
    assert (out.status, out.exit_code, out.stdout) == (HostStatus.TIMEOUT, None, "started\n")
    assert "0.5 s" in out.error
    child = int(pidfile.read_text())
    wait_until(lambda: not alive(child), 5, "the background child to go with its shell")


def test_output_is_capped_counted_and_decoded_once():
    big = LocalRunner().command("head -c 100000 /dev/zero | tr '\\0' b", options(limit=4096))
    assert (big.stdout_bytes, len(big.stdout), big.truncated) == (100000, 4096, True)
    # a multi-byte character cut at the limit becomes one U+FFFD: "aaa" and the first two
    # of the euro sign's three bytes are kept
    cut = LocalRunner().command("printf 'aaa\\342\\202\\254'", options(limit=5))
    assert (cut.stdout, cut.stdout_bytes, cut.truncated) == ("aaa\ufffd", 6, True)
    whole = LocalRunner().command("printf 'aaa\\342\\202\\254'", options(limit=6))
    assert (whole.stdout, whole.truncated) == ("aaa\u20ac", False)
    raw = LocalRunner().command(r"printf 'caf\351 ok'", options())
    assert raw.stdout == "caf\ufffd ok"


def test_a_missing_shell_builtin_is_a_failure_not_an_exception():
    out = LocalRunner().command("no-such-command-anywhere", options())
    assert out.status is HostStatus.FAILED and out.exit_code == 127
    assert "not found" in out.stderr


@pytest.mark.parametrize("n, size, expected", [
    (1, 100, [1]),
    (6, 100, [1] * 6),
    (100, 100, [13] * 4 + [12] * 4),
    (1000, 100, [100] * 10),
    (10000, 100, [100] * 100),
    (0, 100, []),
    (20, 3, [3] * 4 + [2] * 4),
    (250, 100, [32, 32] + [31] * 6),
    (2500, 100, [100] * 25),
])
def test_chunks_cover_every_host_once(n, size, expected):
    hosts = [f"h{i}" for i in range(n)]
    parts = chunks(hosts, size)
    assert [len(p) for p in parts] == expected
    assert [h for p in parts for h in p] == hosts
    assert len(parts) >= min(n, MIN_CHUNKS) and all(len(p) <= size for p in parts)



def test_host_output_cannot_drive_the_terminal():
    from opsq.cli import printable, printable_lines

    assert printable("ok\x1b[2J\x1b]0;pwned\x07\rdone") == "ok\\x1b[2J\\x1b]0;pwned\\x07\\x0ddone"
    assert printable("café ✓") == "café ✓"  # printable text stays as it is
    assert printable_lines("a\tb\n\x1b[31mred\n") == "a\tb\n\\x1b[31mred\n"


def test_the_remote_wrapper_never_signals_a_group_it_does_not_lead():
    # Its watchdog stops the command's process group when its stdin ends. Run here, in
    # this test's own process group, with stdin ended at once: it must leave the group
    # (this test runner included) alone and let the command finish.
    import subprocess

    from opsq.hostrun.ssh import wrap_remote

    out = subprocess.run(["/bin/sh", "-c", wrap_remote("sleep 0.3; echo finished")],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    assert (out.returncode, out.stdout) == (0, "finished\n")


def test_the_remote_wrapper_stops_its_own_session_when_stdin_ends():
    import subprocess
    import time

    from opsq.hostrun.ssh import REMOTE_KILL_GRACE, wrap_remote

    began = time.monotonic()
    out = subprocess.run(["/bin/sh", "-c", wrap_remote("sleep 30; echo never")],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=20, start_new_session=True)  # as sshd starts a session
    assert out.stdout == "" and out.returncode != 0
    assert time.monotonic() - began < REMOTE_KILL_GRACE + 5
