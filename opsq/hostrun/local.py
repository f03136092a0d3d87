"""The local runner: programs run on the worker itself, for hosts with
``ansible_connection=local`` (the implicit ``localhost`` among them).

Each program is a child of the worker in a session (and process group) of its own, so a
deadline or a cancel kills it with everything it started. It gets ``local_env()``, none of
the worker's own variables: those hold the worker's secrets.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import threading
import time

from opsq.hostrun.runner import (
    CANCELLED_BEFORE,
    CANCELLED_WHILE,
    CHUNK_SIZE,
    ERROR_LIMIT,
    Capture,
    Exec,
    Outcome,
    RunOptions,
    watching,
)
from opsq.hostrun.stopper import Stopper
from opsq.status import HostStatus

#: The shell a local program runs in, as Ansible's local connection does.
LOCAL_SHELL = "/bin/sh"
#: PATH of a local program: the system's directories, not the worker's own PATH.
LOCAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: LANG of a local program when the worker has none.
LOCAL_LANG = "C.UTF-8"


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


class LocalRunner:
    """The ``Runner`` (``opsq.hostrun.runner``) of a host with a local connection."""

    def __init__(self, stopper: Stopper | None = None) -> None:
        self.stopper = stopper

    def command(self, command: str, options: RunOptions) -> Outcome:
        """As the SSH runner: a command the cancel killed ends ``cancelled``; one that
        exited before it keeps its status; a cancel that came first starts nothing."""
        stopper = options.stopper
        if stopper is not None and stopper.stopped.is_set():
            return Outcome(status=HostStatus.CANCELLED, error=CANCELLED_BEFORE)
        out, err = Capture(options.output_limit), Capture(options.output_limit)
        try:
            code, cancelled = _run(command, None, False, options.command_timeout, out, err,
                                   stopper, options.live)
        except OSError as exc:
            return Outcome(status=HostStatus.ERROR, error=f"cannot start {LOCAL_SHELL}: {exc}")
        outcome = Outcome(
            status=HostStatus.OK, stdout=out.text(), stderr=err.text(),
            stdout_bytes=out.total, stderr_bytes=err.total,
            truncated=out.overflowed or err.overflowed)
        if cancelled:
            outcome.status, outcome.error = HostStatus.CANCELLED, CANCELLED_WHILE
            return outcome
        if code is None:
            outcome.status = HostStatus.TIMEOUT
            outcome.error = f"command still running after {options.command_timeout:g} s; killed"
            return outcome
        outcome.exit_code = code
        outcome.status = HostStatus.OK if code == 0 else HostStatus.FAILED
        return outcome

    def exec(self, program: str, stdin: bytes, timeout: float, limit: int,
             keep_stdin: bool = False) -> Exec:
        """Raises OSError when the shell cannot start."""
        out, err = Capture(limit), Capture(max(limit, ERROR_LIMIT))
        code, cancelled = _run(program, stdin, keep_stdin, timeout, out, err, self.stopper,
                               None)
        return Exec(code, out, err, timed_out=code is None and not cancelled)


def _run(command: str, stdin: bytes | None, keep_stdin: bool, timeout: float,
         out: Capture, err: Capture, stopper: Stopper | None, live: object
         ) -> tuple[int | None, bool]:
    """Run ``command`` in LOCAL_SHELL with ``stdin`` (None: no input at all) until it
    ends or ``timeout`` passes. Returns its exit code (128+N when a signal N killed it,
    as sh says; None when it was killed at the deadline) and whether ``stopper`` killed
    it while it ran. ``live`` gets the output as it arrives."""
    proc = subprocess.Popen(
        [LOCAL_SHELL, "-c", command],
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=local_env(),
        start_new_session=True)
    feeder = None
    if stdin is not None:
        feeder = threading.Thread(target=_feed, args=(proc, stdin, keep_stdin), daemon=True)
        feeder.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    cancelled = threading.Event()

    def cancel() -> None:
        if proc.poll() is None:  # an exit before the cancel keeps its status
            cancelled.set()
            _kill_group(proc)

    with watching(stopper, cancel), selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
        sel.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
        while sel.get_map() and not timed_out:
            remaining = deadline - time.monotonic()
            timed_out = remaining <= 0
            for key, _ in sel.select(max(remaining, 0)):
                data = os.read(key.fd, CHUNK_SIZE)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                key.data.add(data)
                if live is not None:
                    live.add("stdout" if key.data is out else "stderr", data)  # type: ignore[attr-defined]
    try:
        proc.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out:
        _kill_group(proc)
        proc.wait()
    if feeder is not None:
        feeder.join()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if cancelled.is_set():
        return None, True
    if timed_out:
        return None, False
    code = proc.returncode
    return (code if code >= 0 else 128 - code), False


def _kill_group(proc: subprocess.Popen) -> None:
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
