"""Processes of the fleet: /proc scanning, signals, and tearing process trees down.

Everything here works on pids; nothing knows about hosts or files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from devtools.devfleet.constants import FLEET_USER, KILL_GRACE_S, POLL_INTERVAL_S, TERM_GRACE_S
from devtools.devfleet.errors import FleetError


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Return (state letter, ppid) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parens; the fields after the last ')' are fixed.
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie.

    Killed daemons are re-parented to pid 1, which in containers often does not
    reap them; a zombie is as dead as it gets, so it must not count.
    """
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _stopped(pid: int) -> bool:
    """True if ``pid`` is stopped by a signal (or by a tracer)."""
    st = _proc_stat(pid)
    return st is not None and st[0] in ("T", "t")


def _parent_map() -> dict[int, int]:
    """Map every live pid to its parent pid, from one pass over /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None and st[0] not in ("Z", "X"):
                parents[int(entry.name)] = st[1]
    return parents


def _descendants(roots: Iterable[int], parents: dict[int, int] | None = None) -> list[int]:
    """All live descendants of ``roots`` (recursively), parents before children."""
    parents = _parent_map() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    queue = list(roots)
    while queue:
        for child in children.get(queue.pop(0), []):
            if child not in found:
                found.append(child)
                queue.append(child)
    return found


def _holders_of(paths: set[str], parents: dict[int, int]) -> list[int]:
    """Pids of sshd processes that hold one of ``paths`` open.

    Per-connection sshd processes keep the host's ``-E`` log open. After the
    listener has died they are re-parented away, so this is how ``down`` still
    finds them. Only processes named sshd* are inspected, to keep the scan cheap.
    """
    holders = []
    for pid in parents:
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in paths:
                    holders.append(pid)
                    break
    return holders


def _session_orphans(endpoints: set[tuple[str, int]], parents: dict[int, int]) -> list[int]:
    """Pids of FLEET_USER processes started by a session on one of ``endpoints``.

    A remote command without a pty outlives its connection (sshd does not HUP
    it), is re-parented away from the sshd tree, and would keep running after
    ``down``. sshd puts ``SSH_CONNECTION=<client> <cport> <server> <sport>`` in
    every session's environment, which pins the process to one fleet host even
    when several fleets share FLEET_USER.
    """
    try:
        uid = pwd.getpwnam(FLEET_USER).pw_uid
    except KeyError:
        return []
    found = []
    for pid in parents:
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for var in environ:
            if var.startswith(b"SSH_CONNECTION="):
                fields = var.split(b"=", 1)[1].decode(errors="replace").split()
                if len(fields) == 4 and fields[3].isdigit() \
                        and (fields[2], int(fields[3])) in endpoints:
                    found.append(pid)
                break
    return found


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each pid, ignoring ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until every pid is dead; return the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in pids if _alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        remaining = [p for p in remaining if _alive(p)]
    return remaining


def _terminate(roots: list[int], extra: Iterable[int] = ()) -> None:
    """Stop ``roots``, their descendants and ``extra`` for good.

    SIGCONT first, because a SIGSTOPped process would hold SIGTERM pending
    forever; SIGTERM for a clean exit; SIGKILL for whatever ignores it.
    """
    targets = list(dict.fromkeys([*roots, *_descendants(roots), *extra]))
    if not targets:
        return
    _signal_all(targets, signal.SIGCONT)
    # Roots first so a listener cannot fork new children mid-teardown.
    _signal_all(targets, signal.SIGTERM)
    survivors = _wait_gone(targets, TERM_GRACE_S)
    if survivors:
        _signal_all(survivors, signal.SIGKILL)
        survivors = _wait_gone(survivors, KILL_GRACE_S)
    if survivors:
        raise FleetError(f"processes {survivors} survived SIGKILL; check `ps -o pid,stat,cmd -p "
                         f"{','.join(map(str, survivors))}`")
