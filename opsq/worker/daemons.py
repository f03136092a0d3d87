"""Worker and beat daemons: ``celery multi`` for the workers, ``celery beat --detach``.

Two worker nodes: ``fleet`` (threads pool, many slots, queue ``opsq.fleet``) for SSH work
and ``control`` (prefork, two processes, queues ``opsq.control`` and ``celery``, where
plain Celery clients send ``opsq.submit_job``) for bookkeeping, with pid
files and logs under the run and log directories from settings. ``stop`` is a warm
shutdown that waits for running tasks (tasks are acknowledged late, so queued ones stay in
RabbitMQ). A pid file left by a killed daemon is reported and removed before starting.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from opsq.app import CONTROL_QUEUES, FLEET_QUEUE, fleet_queue
from opsq.settings import PROJECT_ROOT, get_settings

NODES = ("fleet", "control")


def nodes(sites: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The nodes this machine runs: ``fleet`` and ``control``; on a site's machine
    (``--site``), a ``fleet-<site>`` node per site and nothing else (the control node and
    beat run where the database is)."""
    return tuple(f"fleet-{site}" for site in sites) if sites else NODES
#: Processes of the control node's prefork pool.
CONTROL_CONCURRENCY = 2
#: Seconds ``stop`` waits for beat to exit after SIGTERM before SIGKILL.
BEAT_STOP_TIMEOUT = 15
#: Seconds a node has to answer ``status``'s ping.
PING_TIMEOUT = 2.0
#: Mode of the directories opsq creates for pid files, logs and Flower's state: logs hold
#: commands and host output, so only the daemons' user reads them.
PRIVATE_DIR_MODE = 0o700
#: Mode opsq tightens its existing log, pid and state files to.
PRIVATE_FILE_MODE = 0o600
#: umask of the daemons opsq starts, so each file they create is private as well.
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) for this user only, and tighten it if it
    already exists with group or other bits.

    A shared directory (sticky, like /tmp), one of another user or the home directory is
    left alone: its mode is not opsq's to change.
    """
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    st = path.stat()
    if (st.st_mode & 0o077 and st.st_uid == os.geteuid() and not st.st_mode & stat.S_ISVTX
            and path.resolve() != Path.home().resolve()):
        path.chmod(PRIVATE_DIR_MODE)


def private_files(paths: Iterable[Path]) -> None:
    """Remove group and other bits from this user's regular files among ``paths``."""
    for p in paths:
        st = p.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
            p.chmod(PRIVATE_FILE_MODE)


def celery_bin() -> list[str]:
    return [sys.executable, "-m", "celery"]


def multi_args(action: str, sites: tuple[str, ...] = ()) -> list[str]:
    """The ``celery multi`` command line for ``action`` (start, stopwait, restart...)."""
    s = get_settings()
    run, log = s.run_path(), s.log_path()
    head = [*celery_bin(), "multi", action, *nodes(sites), "-A", "opsq", "-l", s.log_level,
            f"--pidfile={run}/%n.pid", f"--logfile={log}/%n%I.log"]
    if sites:
        return head + [arg for site in sites for arg in (
            f"-Q:fleet-{site}", fleet_queue(site), f"-P:fleet-{site}", "threads",
            f"-c:fleet-{site}", str(s.fleet_concurrency))]
    return head + [
        "-Q:fleet", FLEET_QUEUE, "-P:fleet", "threads", "-c:fleet", str(s.fleet_concurrency),
        "-Q:control", CONTROL_QUEUES, "-P:control", "prefork",
        "-c:control", str(CONTROL_CONCURRENCY),
    ]


def beat_pidfile() -> Path:
    return get_settings().run_path() / "beat.pid"


def beat_args() -> list[str]:
    s = get_settings()
    return [*celery_bin(), "-A", "opsq", "beat", "--detach", "-l", s.log_level,
            f"--pidfile={beat_pidfile()}", f"--logfile={s.log_path()}/beat.log",
            f"--schedule={s.run_path()}/beat-schedule"]


@dataclass
class PidInfo:
    name: str
    path: Path
    pid: int | None
    alive: bool


def read_pid(name: str, path: Path) -> PidInfo:
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return PidInfo(name, path, None, False)
    return PidInfo(name, path, pid, _is_celery(pid))


def _is_celery(pid: int) -> bool:
    # Alive, not a zombie, and a celery process: a recycled pid is not our daemon.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"celery" in cmdline


def pidfiles(sites: tuple[str, ...] = ()) -> list[PidInfo]:
    run = get_settings().run_path()
    beat = [] if sites else [read_pid("beat", beat_pidfile())]
    return [read_pid(n, run / f"{n}.pid") for n in nodes(sites)] + beat


def clear_stale(echo: Callable[[str], None] = print, sites: tuple[str, ...] = ()
                ) -> list[str]:
    """Remove pid files whose process is gone; returns their names."""
    cleared = []
    for info in pidfiles(sites):
        if info.path.exists() and not info.alive:
            echo(f"stale pid file {info.path} (pid {info.pid} is not running): removed")
            info.path.unlink()
            cleared.append(info.name)
    return cleared


def _run(args: list[str]) -> int:
    # celery multi and beat --detach create the pid files and logs: they inherit the umask.
    return subprocess.run(args, cwd=PROJECT_ROOT,
                          preexec_fn=lambda: os.umask(PRIVATE_UMASK)).returncode


def _private_run_and_log_dirs() -> None:
    s = get_settings()
    for d in (s.run_path(), s.log_path()):
        private_dir(d)
        private_files(d.iterdir())


def start(with_beat: bool = True, echo: Callable[[str], None] = print,
          sites: tuple[str, ...] = ()) -> int:
    _private_run_and_log_dirs()
    clear_stale(echo, sites)
    rc = _run(multi_args("start", sites))
    if with_beat and not sites and rc == 0:
        beat = read_pid("beat", beat_pidfile())
        if beat.alive:
            echo(f"beat already running (pid {beat.pid})")
        else:
            rc = _run(beat_args())
            echo("> beat: started" if rc == 0 else "> beat: FAILED to start")
    return rc


def stop(with_beat: bool = True, echo: Callable[[str], None] = print,
         sites: tuple[str, ...] = ()) -> int:
    """Warm shutdown: wait for running tasks to finish, then exit."""
    rc = _run(multi_args("stopwait", sites))
    if with_beat and not sites:
        stop_beat(echo)
    clear_stale(echo, sites)
    return rc


def stop_beat(echo: Callable[[str], None] = print) -> None:
    beat = read_pid("beat", beat_pidfile())
    if not beat.alive or beat.pid is None:
        return
    os.kill(beat.pid, signal.SIGTERM)
    deadline = time.monotonic() + BEAT_STOP_TIMEOUT
    while time.monotonic() < deadline and _is_celery(beat.pid):
        time.sleep(0.1)
    if _is_celery(beat.pid):
        os.kill(beat.pid, signal.SIGKILL)
    beat.path.unlink(missing_ok=True)
    echo(f"> beat: stopped (pid {beat.pid})")


def restart(with_beat: bool = True, echo: Callable[[str], None] = print,
            sites: tuple[str, ...] = ()) -> int:
    _private_run_and_log_dirs()
    clear_stale(echo, sites)
    rc = _run(multi_args("restart", sites))
    if with_beat and not sites:
        stop_beat(echo)
        beat_rc = _run(beat_args())  # schedules keep firing even if a node failed
        rc = rc or beat_rc
    return rc


def status(echo: Callable[[str], None] = print, sites: tuple[str, ...] = ()) -> int:
    """Each node's pid and whether it answers a Celery ping; 0 when all are up."""
    from opsq.app import app

    host = socket.gethostname()
    answers: set[str] = set()
    try:
        for reply in app.control.ping(timeout=PING_TIMEOUT) or []:
            answers.update(reply)
    except Exception as exc:  # broker down: still show the pid files
        echo(f"cannot ping through the broker: {exc}")
    ok = True
    for info in pidfiles(sites):
        if info.name == "beat":
            state = "running" if info.alive else "not running"
            ping = "-"
        else:
            state = "running" if info.alive else ("stale pid file" if info.path.exists()
                                                  else "not running")
            ping = "answers ping" if f"{info.name}@{host}" in answers else "no ping reply"
        ok = ok and info.alive and ping != "no ping reply"
        echo(f"{info.name:<8} pid {info.pid or '-':<8} {state:<15} {ping}")
    echo(connection_budget(sites))
    return 0 if ok else 1


def connections(sites: tuple[str, ...] = ()) -> int:
    """The PostgreSQL connections this machine's daemons may open: a fleet node (threads:
    one process, the full pool) per site, or the fleet node, the control node's parent and
    its CONTROL_CONCURRENCY children, and beat (one task at a time: the small pool)."""
    from opsq.store import db

    full, small = db.connections_per_process(), db.connections_per_process(small=True)
    return len(sites) * full if sites else full + (1 + CONTROL_CONCURRENCY + 1) * small


def connection_budget(sites: tuple[str, ...] = ()) -> str:
    """This machine's daemons' PostgreSQL connections at most, against what the server
    has left, as one line (``opsq daemons status``)."""
    from opsq.errors import BackendUnavailable, ConfigError
    from opsq.store import db

    try:
        return "PostgreSQL: " + db.check_budget(connections(sites), "these daemons")
    except ConfigError as exc:
        return f"PostgreSQL: OVER BUDGET: {exc}"
    except BackendUnavailable as exc:
        return f"PostgreSQL: budget not checked ({exc})"
