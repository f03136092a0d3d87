"""The runner contract (``opsq.hostrun.runner.Runner``): every test here runs against
both implementations, the local runner (a child of this process) and the SSH runner (a
real sshd host of the test fleet, over a Fabric connection). A behaviour one of them
lacks fails here, whichever it is.

The fleet's sshd hosts run on this machine, so a test can look at what a command left
behind (a pid file, a marker) from the outside.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import alive, wait_until

from opsq.hostrun.local import LocalRunner
from opsq.hostrun.runner import CANCELLED_BEFORE, CANCELLED_WHILE, Runner, RunOptions
from opsq.hostrun.ssh import SshRunner, open_connection
from opsq.hostrun.stopper import Stopper
from opsq.inventory import Host
from opsq.status import HostStatus

#: Seconds a command may take to go once killed (SSH: TERM, then KILL after 2 s).
KILL_GRACE = 10.0
LIMIT = 4096


class Recorder:
    """Live output as a runner hands it over (what opsq.worker.live_output receives)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.chunks: list[tuple[float, str, bytes]] = []

    def add(self, stream: str, data: bytes) -> None:
        with self.lock:
            self.chunks.append((time.monotonic(), stream, data))

    def text(self, stream: str = "stdout") -> str:
        with self.lock:
            return b"".join(d for _, s, d in self.chunks if s == stream).decode()


@dataclass
class Subject:
    """One runner under test: ``make(stopper)`` builds it; ``known_hosts`` for options."""

    kind: str
    known_hosts: Path
    make: object

    def runner(self, stopper: Stopper | None = None) -> Runner:
        return self.make(stopper)  # type: ignore[operator]

    def options(self, timeout: float = 20, limit: int = LIMIT, stopper: Stopper | None = None,
                live: Recorder | None = None) -> RunOptions:
        return RunOptions(command_timeout=timeout, connect_timeout=5, output_limit=limit,
                          known_hosts=self.known_hosts, stopper=stopper, live=live)


@pytest.fixture(params=["local", "ssh"])
def subject(request) -> Iterator[Subject]:
    if request.param == "local":
        yield Subject("local", Path("/nonexistent"), lambda stopper: LocalRunner(stopper))
        return
    from devtools.devfleet import FLEET_USER
    from opsq.settings import get_settings

    fleet = request.getfixturevalue("fleet")
    h = fleet.hosts[0]
    host = Host(name=h.name, address=h.address, port=h.port, user=FLEET_USER,
                key_file=str(fleet.client_key_path))
    known = get_settings().known_hosts_path()
    opened = []

    def make(stopper: Stopper | None) -> Runner:
        conn = open_connection(host, RunOptions(command_timeout=20, connect_timeout=5,
                                                output_limit=LIMIT, known_hosts=known))
        opened.append(conn)
        return SshRunner(conn, stopper)

    yield Subject("ssh", known, make)
    for conn in opened:
        conn.close()


@pytest.fixture
def shared(tmp_path) -> Path:
    """A directory the fleet's user (the SSH runner's commands) may write into."""
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path("/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o711)
    return tmp_path


# -- command: the operator's command ---------------------------------------------------


def test_exit_codes_and_separate_streams(subject):
    ok = subject.runner().command("echo out; echo err >&2", subject.options())
    assert (ok.status, ok.exit_code, ok.stdout, ok.stderr, ok.error) == (
        HostStatus.OK, 0, "out\n", "err\n", None)
    bad = subject.runner().command("echo before; exit 7", subject.options())
    assert (bad.status, bad.exit_code, bad.stdout) == (HostStatus.FAILED, 7, "before\n")
    missing = subject.runner().command("no-such-command-anywhere", subject.options())
    assert (missing.status, missing.exit_code) == (HostStatus.FAILED, 127)


def test_the_deadline_kills_the_command_and_what_it_started(subject, shared):
    pidfile = shared / "child"
    began = time.monotonic()
    out = subject.runner().command(
        f"sleep 300 & echo $! > {pidfile}; echo started; wait", subject.options(timeout=1.5))
    assert time.monotonic() - began < 1.5 + KILL_GRACE
    assert (out.status, out.exit_code, out.stdout) == (HostStatus.TIMEOUT, None, "started\n")
    assert "1.5 s" in out.error
    child = int(pidfile.read_text())
    wait_until(lambda: not alive(child), KILL_GRACE, "the command's background child to go")


def test_output_is_capped_counted_and_decoded_once(subject):
    big = subject.runner().command("head -c 100000 /dev/zero | tr '\\0' b",
                                   subject.options(limit=4096))
    assert (big.status, big.stdout_bytes, len(big.stdout), big.truncated) == (
        HostStatus.OK, 100000, 4096, True)
    assert set(big.stdout) == {"b"}
    # A character cut at the limit becomes one U+FFFD: "aaa" and two of the euro's bytes.
    cut = subject.runner().command("printf 'aaa\\342\\202\\254'", subject.options(limit=5))
    assert (cut.stdout, cut.stdout_bytes, cut.truncated) == ("aaa\ufffd", 6, True)
    whole = subject.runner().command("printf 'aaa\\342\\202\\254'", subject.options(limit=6))
    assert (whole.stdout, whole.truncated) == ("aaa\u20ac", False)
    raw = subject.runner().command(r"printf 'caf\351 ok'", subject.options())
    assert raw.stdout == "caf\ufffd ok"


def test_output_reaches_the_live_receiver_while_the_command_runs(subject):
    live = Recorder()
    ended: list[float] = []

    def run() -> None:
        subject.runner().command("echo first; sleep 3; echo second >&2; echo third",
                                 subject.options(live=live))
        ended.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: "first" in live.text(), 10, "the first line while the command runs")
    assert not ended, "the first line came only once the command had ended"
    thread.join(30)
    assert live.text() == "first\nthird\n"
    assert live.text("stderr") == "second\n"


def test_a_cancel_stops_a_running_command(subject, shared):
    pidfile = shared / "child"
    stopper, live = Stopper(), Recorder()
    result = []
    thread = threading.Thread(target=lambda: result.append(subject.runner(stopper).command(
        f"sleep 300 & echo $! > {pidfile}; echo started; wait",
        subject.options(timeout=120, stopper=stopper, live=live))))
    thread.start()
    wait_until(lambda: "started" in live.text(), 10, "the command to start")
    began = time.monotonic()
    stopper.stop()
    thread.join(KILL_GRACE + 5)
    assert result, "the cancelled command never ended"
    assert time.monotonic() - began < KILL_GRACE
    assert (result[0].status, result[0].error) == (HostStatus.CANCELLED, CANCELLED_WHILE)
    assert result[0].stdout == "started\n"
    child = int(pidfile.read_text())
    wait_until(lambda: not alive(child), KILL_GRACE, "the command's background child to go")


def test_a_cancel_that_came_first_starts_nothing(subject, shared):
    marker = shared / "ran"
    stopper = Stopper()
    stopper.stop()
    out = subject.runner(stopper).command(f"touch {marker}",
                                          subject.options(stopper=stopper))
    assert (out.status, out.error) == (HostStatus.CANCELLED, CANCELLED_BEFORE)
    time.sleep(0.5)
    assert not marker.exists()


def test_a_command_that_ended_before_the_cancel_keeps_its_status(subject):
    stopper = Stopper()
    out = subject.runner(stopper).command("echo done", subject.options(stopper=stopper))
    stopper.stop()  # too late: nothing is watching any more
    assert (out.status, out.exit_code) == (HostStatus.OK, 0)


# -- exec: opsq's own programs ----------------------------------------------------------


def test_exec_passes_bytes_in_and_out_exactly(subject):
    data = os.urandom(3 * 1024 * 1024 + 17)
    result = subject.runner().exec("sha256sum; printf 'x\\000y' >&2; exit 3", data, 30,
                                   LIMIT)
    assert result.exit_code == 3 and not result.timed_out
    assert result.stdout.text().split()[0] == hashlib.sha256(data).hexdigest()
    assert bytes(result.stderr.kept) == b"x\x00y"
    echoed = subject.runner().exec("cat", data[:1000], 30, 2000)
    assert bytes(echoed.stdout.kept) == data[:1000]


def test_exec_keeps_at_most_its_limit_and_counts_the_rest(subject):
    result = subject.runner().exec("head -c 50000 /dev/zero", b"", 30, 1000)
    assert (result.exit_code, len(result.stdout.kept), result.stdout.total) == (0, 1000, 50000)
    assert result.stdout.overflowed
    # stderr keeps at least ERROR_LIMIT bytes, whatever the stdout limit
    noisy = subject.runner().exec("head -c 20000 /dev/zero >&2", b"", 30, 10)
    assert len(noisy.stderr.kept) == 20000


def test_exec_stops_at_its_deadline(subject):
    began = time.monotonic()
    result = subject.runner().exec("echo started; sleep 300", b"", 1.5, LIMIT)
    assert time.monotonic() - began < 1.5 + KILL_GRACE
    assert (result.exit_code, result.timed_out) == (None, True)
    assert result.stdout.text() == "started\n"


def test_exec_can_be_cancelled(subject):
    stopper = Stopper()
    result = []
    thread = threading.Thread(target=lambda: result.append(
        subject.runner(stopper).exec("echo started; sleep 300", b"", 120, LIMIT)))
    thread.start()
    time.sleep(1.0)
    began = time.monotonic()
    stopper.stop()
    thread.join(KILL_GRACE + 5)
    assert time.monotonic() - began < KILL_GRACE
    assert result and result[0].exit_code != 0 and not result[0].timed_out
