"""One program on one host with bytes in and bounded bytes out: the primitive that file
transfers, scripts and ``become`` are built on.

Fabric's runner (``opsq.ssh``) serves plain commands, whose output is text. Copying a
file needs its bytes on the program's stdin, fetching one needs stdout as bytes, and a
sudo password must reach sudo without a process argument or a file on either side: all
three are a program with a stdin stream. ``exec_ssh`` runs it on a paramiko channel of a
pooled connection, ``exec_local`` as a child process of the worker; both stop at a
deadline and keep at most a given number of bytes of each stream.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from fabric import Connection

from opsq.stopper import Stopper

#: Bytes moved per read or write.
CHUNK_SIZE = 64 * 1024
#: Seconds one wait on the channel lasts before the deadline is looked at again.
POLL_INTERVAL = 0.5
#: The shell a local program runs in.
LOCAL_SHELL = "/bin/sh"
#: PATH of a local program: the system's directories, not the worker's own PATH.
LOCAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: LANG of a local program when the worker has none.
LOCAL_LANG = "C.UTF-8"


@dataclass
class Capture:
    """One stream's bounded capture: the first ``limit`` bytes, and the total count."""

    limit: int
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    @property
    def overflowed(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        return decode(bytes(self.kept))


def decode(data: bytes) -> str:
    """UTF-8 with replacement, once; a character cut at the limit becomes one U+FFFD."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=True)


@dataclass
class Exec:
    """What the program did: its exit code (None when it was killed at the deadline)."""

    exit_code: int | None
    stdout: Capture
    stderr: Capture
    timed_out: bool = False


def _watching(stopper: Stopper | None, kill) -> contextlib.AbstractContextManager:
    return stopper.watching(kill) if stopper else contextlib.nullcontext()


def exec_ssh(conn: Connection, command: str, stdin: bytes, timeout: float,
             out_limit: int, err_limit: int, stopper: Stopper | None = None,
             keep_stdin: bool = False) -> Exec:
    """Run ``command`` through the connection's SSH transport, feeding it ``stdin``.

    Raises paramiko.SSHException/OSError when the transport fails (the caller decides
    whether the program may have started). The channel is closed at the deadline.
    """
    deadline = time.monotonic() + timeout
    out, err = Capture(out_limit), Capture(err_limit)
    conn.open()
    chan = conn.client.get_transport().open_session(timeout=timeout)
    with _watching(stopper, chan.close):
        return _exec_on(chan, command, stdin, deadline, timeout, out, err, keep_stdin)


def _exec_on(chan, command: str, stdin: bytes, deadline: float, timeout: float,
             out: Capture, err: Capture, keep_stdin: bool) -> Exec:
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        view = memoryview(stdin)
        for start in range(0, len(view), CHUNK_SIZE):
            chan.settimeout(max(deadline - time.monotonic(), 0.001))
            chan.sendall(view[start:start + CHUNK_SIZE])
        if not keep_stdin:  # kept open: a remote watchdog waits for it to close
            chan.shutdown_write()
        chan.settimeout(0.0)
        with selectors.DefaultSelector() as sel:
            sel.register(chan, selectors.EVENT_READ)
            while True:
                drained = _drain(chan, out, err)
                if chan.exit_status_ready() and drained:
                    return Exec(chan.recv_exit_status(), out, err)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Exec(None, out, err, timed_out=True)
                sel.select(min(remaining, POLL_INTERVAL))
    except TimeoutError:
        return Exec(None, out, err, timed_out=True)
    finally:
        chan.close()


def _drain(chan, out: Capture, err: Capture) -> bool:
    """Read what the channel holds; True when nothing was left to read."""
    idle = True
    while chan.recv_ready():
        out.add(chan.recv(CHUNK_SIZE))
        idle = False
    while chan.recv_stderr_ready():
        err.add(chan.recv_stderr(CHUNK_SIZE))
        idle = False
    return idle


def local_env() -> dict[str, str]:
    """The whole environment of a program run on the worker for a host with a local
    connection: PATH, HOME, LANG, USER, LOGNAME and SHELL, and nothing else.

    The worker's own environment holds its secrets (OPSQ_DATABASE_URL, OPSQ_WEB_SECRET,
    the broker's password, cloud keys): whoever may run ``env`` on a local host must not
    read them, so nothing is inherited from it but LANG. User and home come from the
    password database, not from variables the worker was started with.
    """
    uid = os.geteuid()
    try:
        account = pwd.getpwuid(uid)
        user, home = account.pw_name, account.pw_dir or "/"
    except KeyError:  # a uid without a passwd entry (some containers)
        user, home = str(uid), "/"
    return {"PATH": LOCAL_PATH, "HOME": home, "LANG": os.environ.get("LANG") or LOCAL_LANG,
            "USER": user, "LOGNAME": user, "SHELL": LOCAL_SHELL}


def exec_local(command: str, stdin: bytes, timeout: float, out_limit: int,
               err_limit: int, stopper: Stopper | None = None,
               keep_stdin: bool = False) -> Exec:
    """Run ``command`` in a shell on the worker, in its own process group (killed whole
    at the deadline) and with only ``local_env()``. Raises OSError when the shell cannot
    start."""
    proc = subprocess.Popen([LOCAL_SHELL, "-c", command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=local_env(), start_new_session=True)
    feeder = threading.Thread(target=_feed, args=(proc, stdin, keep_stdin), daemon=True)
    feeder.start()
    out, err = Capture(out_limit), Capture(err_limit)
    deadline = time.monotonic() + timeout
    timed_out = False
    with _watching(stopper, lambda: _killpg(proc)), selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
        sel.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
        while sel.get_map() and not timed_out:
            remaining = deadline - time.monotonic()
            timed_out = remaining <= 0
            for key, _ in sel.select(max(remaining, 0)):
                data = os.read(key.fd, CHUNK_SIZE)
                if data:
                    key.data.add(data)
                else:
                    sel.unregister(key.fileobj)
    try:
        proc.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out:
        _killpg(proc)
        proc.wait()
    feeder.join()
    with contextlib.suppress(OSError):
        proc.stdin.close()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if timed_out:
        return Exec(None, out, err, timed_out=True)
    code = proc.returncode
    return Exec(code if code >= 0 else 128 - code, out, err)


def _killpg(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _feed(proc: subprocess.Popen, data: bytes, keep_open: bool) -> None:
    # A program that exits without reading all of its input is not an error here.
    with contextlib.suppress(BrokenPipeError, OSError):
        view = memoryview(data)
        for start in range(0, len(view), CHUNK_SIZE):
            proc.stdin.write(view[start:start + CHUNK_SIZE])  # type: ignore[union-attr]
    if not keep_open:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.close()  # type: ignore[union-attr]
    else:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.flush()  # type: ignore[union-attr]
