"""A local fleet of real OpenSSH servers on loopback addresses.

Stands in for real hosts in the demo and the integration tests: every host is
its own ``sshd`` process listening on its own loopback address ``{subnet}.K``
(K = 1..N) on a fixed port, with its own ed25519 host key, so hosts have
distinct fingerprints and can be hung (SIGSTOP), killed or re-keyed one by one.

Linux routes the whole 127.0.0.0/8 through ``lo``, so binding 127.0.1.K needs
no extra interface configuration.

Must run as root: sshd has to switch to the login user, and the fleet creates
that (unprivileged, dedicated) user. Nothing in root's or any user's ``~/.ssh``
is touched: the client key, authorized_keys and known_hosts all live in the
fleet's base directory.

CLI::

    python -m opsq.devfleet up --dir DIR [-n N] [--subnet 127.0.1] [--port 2222]
    python -m opsq.devfleet status --dir DIR
    python -m opsq.devfleet down --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_PORT = 2222
DEFAULT_SUBNET = "127.0.1"  # hosts are f"{subnet}.{k}"
FLEET_USER = "opsqfleet"  # dedicated unprivileged login user
FLEET_HOME = Path("/var/lib/opsqfleet")
FLEET_SHELL = "/bin/sh"  # dash reads no rc file for `sh -c`, so commands start fast

DEFAULT_HOSTS = 5  # fleet size when neither n nor an existing fleet.json says otherwise
MAX_HOSTS = 254  # K runs 1..N in the last octet of the subnet

SSHD_PATH = Path("/usr/sbin/sshd")  # sshd re-execs itself, so it needs an absolute path
SSH_KEYGEN = "ssh-keygen"
SSHD_PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without its privsep chroot
SSHD_PRIVSEP_MODE = 0o755
# sshd execs user commands with this environment, not ours; give the daemon a
# minimal one so nothing from the calling process (pytest, venv) leaks into it.
SSHD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# OpenSSH >= 9.8 penalises sources that fail auth or drop early; every fleet
# client comes from loopback, so tests that provoke failures would lock
# themselves out. Older sshds reject the keyword, hence the version gate.
PENALTIES_MIN_VERSION = (9, 8)

UP_DEADLINE_S = 15.0  # whole fleet: from starting the sshds to every banner read
START_TIMEOUT_S = 10.0  # one `sshd` invocation, until its parent returns after daemonizing
TOOL_TIMEOUT_S = 30.0  # ssh-keygen / useradd / usermod
PROBE_TIMEOUT_S = 1.0  # one connect + banner read while waiting for a host
POLL_INTERVAL_S = 0.02  # between liveness / readiness polls
TERM_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
KILL_GRACE_S = 2.0  # after SIGKILL, before giving up
LOG_TAIL_LINES = 15  # lines of a host's sshd log quoted in errors

PRIVATE_KEY_MODE = 0o600  # ssh and sshd refuse private keys readable by others
PUBLIC_FILE_MODE = 0o644  # configs, public keys, authorized_keys (read as FLEET_USER)
DIR_MODE = 0o755

FLEET_JSON = "fleet.json"
LOCK_FILE = ".lock"
HOSTS_SUBDIR = "hosts"
HOST_KEY_FILE = "ssh_host_ed25519_key"
SSHD_CONFIG_FILE = "sshd_config"
PID_FILE = "sshd.pid"
LOG_FILE = "sshd.log"

# Files in the fleet user's home that a shell may source on every command.
SHELL_RC_FILES = (".bashrc", ".profile", ".bash_profile", ".bash_login", ".bash_logout",
                  ".zshrc", ".zshenv", ".kshrc")


class FleetError(RuntimeError):
    """The fleet cannot be set up, started or stopped; the message says why."""


class SshdNotInstalledError(FleetError):
    """The OpenSSH server (or ssh-keygen) is missing on this machine."""


# --------------------------------------------------------------------------- processes


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


# --------------------------------------------------------------------------- files


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    """Atomically write ``text`` to ``path`` with ``mode``; return True if content changed."""
    try:
        if path.read_text() == text:
            os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def _run_tool(argv: list[str], what: str) -> None:
    """Run a setup tool (ssh-keygen, useradd, ...) and turn failure into a FleetError."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise SshdNotInstalledError(f"{argv[0]} not found while trying to {what}: install "
                               f"openssh-server (apt-get install openssh-server)") from exc
    if proc.returncode != 0:
        raise FleetError(f"cannot {what}: `{' '.join(argv)}` exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()}")


def _generate_key(path: Path, comment: str) -> None:
    """Create an ed25519 keypair at ``path`` / ``path.pub``, replacing any partial one."""
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    _run_tool([SSH_KEYGEN, "-t", "ed25519", "-N", "", "-q", "-C", comment, "-f", str(path)],
              f"generate the ed25519 key {path}")
    os.chmod(path, PRIVATE_KEY_MODE)
    os.chmod(path.with_name(path.name + ".pub"), PUBLIC_FILE_MODE)


def _have_key(path: Path) -> bool:
    """True if both halves of the keypair at ``path`` exist."""
    return path.is_file() and path.with_name(path.name + ".pub").is_file()


def _make_traversable(directory: Path) -> None:
    """Give "others" search (x) permission on ``directory`` and every ancestor.

    sshd reads AuthorizedKeysFile as the login user, so the whole path to it must
    be traversable by FLEET_USER (pytest's tmp dirs, for one, are 0700). Only the
    x bit is added: nothing becomes listable or writable.
    """
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path``, or a note that it is missing."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


# --------------------------------------------------------------------------- system setup


def _check_installed() -> None:
    """Raise SshdNotInstalledError unless sshd and ssh-keygen are available."""
    if not os.access(SSHD_PATH, os.X_OK) or shutil.which(SSH_KEYGEN) is None:
        raise SshdNotInstalledError(f"{SSHD_PATH} or {SSH_KEYGEN} not found: install "
                                    f"openssh-server (apt-get install openssh-server)")


def _check_root() -> None:
    """Raise FleetError unless running as root (sshd must switch to FLEET_USER)."""
    if os.geteuid() != 0:
        raise FleetError("the dev fleet must be managed as root: sshd needs root to log "
                         f"in as {FLEET_USER} and the fleet creates that user")


def _sshd_version() -> tuple[int, int]:
    """(major, minor) of the installed OpenSSH server, (0, 0) if unparseable."""
    # `sshd -V` prints the version to stderr and exits (non-zero before 9.x; ignored).
    proc = subprocess.run([str(SSHD_PATH), "-V"], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT_S, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stderr + proc.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _shadow_password(user: str) -> str | None:
    """The password field of ``user`` in /etc/shadow, or None if absent."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    return None


def ensure_fleet_user() -> None:
    """Create FLEET_USER if missing and keep its account fit for fast key-only logins."""
    try:
        entry = pwd.getpwnam(FLEET_USER)
    except KeyError:
        # An empty skeleton: the home gets no .bashrc/.profile (pyenv inits and the like).
        with tempfile.TemporaryDirectory(prefix="opsqfleet-skel-") as skel:
            try:
                # '*' (not useradd's default '!'): with UsePAM no, sshd treats a
                # '!' password as a locked account and refuses even key logins.
                _run_tool(["useradd", "--system", "--create-home", "--home-dir", str(FLEET_HOME),
                           "--skel", skel, "--shell", FLEET_SHELL, "--password", "*",
                           FLEET_USER], f"create the user {FLEET_USER}")
            except FleetError:
                # Another process (a parallel test worker) may have won the race.
                try:
                    pwd.getpwnam(FLEET_USER)
                except KeyError:
                    raise
        entry = pwd.getpwnam(FLEET_USER)
    if entry.pw_shell != FLEET_SHELL:
        _run_tool(["usermod", "--shell", FLEET_SHELL, FLEET_USER], f"set {FLEET_USER}'s shell")
    if (_shadow_password(FLEET_USER) or "").startswith("!"):
        _run_tool(["usermod", "--password", "*", FLEET_USER], f"unlock {FLEET_USER} for sshd")
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(mode=DIR_MODE, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    # The account is ours alone; any rc file would be sourced by some shells on
    # every remote command, and each ssh round trip should pay only for ssh.
    for name in SHELL_RC_FILES:
        (home / name).unlink(missing_ok=True)


def _ensure_privsep_dir() -> None:
    """Create /run/sshd (sshd's privilege-separation chroot) if missing."""
    SSHD_PRIVSEP_DIR.mkdir(mode=SSHD_PRIVSEP_MODE, exist_ok=True)
    os.chmod(SSHD_PRIVSEP_DIR, SSHD_PRIVSEP_MODE)


def _check_bindable(address: str, port: int, name: str) -> None:
    """Fail clearly if ``address:port`` cannot be bound before sshd tries it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option sshd uses, so a port in TIME_WAIT does not count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            hint = ("another process already listens there (another fleet on the same "
                    "subnet? pick another --subnet or --port)" if exc.errno == 98 else
                    "the address is not local (on Linux lo routes all of 127.0.0.0/8)")
            raise FleetError(f"{name}: cannot bind {address}:{port}: {exc.strerror}; {hint}") \
                from exc


def _read_banner(address: str, port: int) -> bool:
    """True if something accepts TCP on ``address:port`` and sends an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT_S) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"SSH-")
    except OSError:
        return False


# --------------------------------------------------------------------------- model


@dataclass
class FleetHost:
    """One sshd of the fleet: its name, where it listens, and its private directory."""

    name: str  # "host01", "host02", ...
    address: str  # "127.0.1.1"
    port: int
    dir: Path  # host key, sshd_config, pid file, log

    @property
    def number(self) -> int:
        """K in ``{subnet}.K`` (1-based)."""
        return int(self.address.rsplit(".", 1)[1])

    @property
    def host_key_path(self) -> Path:
        """The host's private ed25519 key (``.pub`` beside it)."""
        return self.dir / HOST_KEY_FILE

    @property
    def config_path(self) -> Path:
        """The host's sshd_config."""
        return self.dir / SSHD_CONFIG_FILE

    @property
    def pid_path(self) -> Path:
        """Where the listening sshd writes its pid."""
        return self.dir / PID_FILE

    @property
    def log_path(self) -> Path:
        """The host's sshd log (``-E``), LogLevel VERBOSE."""
        return self.dir / LOG_FILE

    @property
    def known_hosts_name(self) -> str:
        """The host's name as ssh writes it in known_hosts."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts_line(self) -> str:
        """``[addr]:port keytype base64`` for the host's current key."""
        keytype, b64 = (self.host_key_path.with_name(HOST_KEY_FILE + ".pub")
                        .read_text().split()[:2])
        return f"{self.known_hosts_name} {keytype} {b64}"

    def pid(self) -> int | None:
        """Pid of the listening sshd (from its pid file, checked alive and ours), else None."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            # Guards against pid reuse: sshd keeps "-f <our config>" in its title.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (FileNotFoundError, ProcessLookupError):
            return None
        return pid if str(self.config_path).encode() in cmdline else None

    def state(self) -> str:
        """"up", "stopped" (SIGSTOPped, i.e. hung) or "down"."""
        pid = self.pid()
        if pid is None:
            return "down"
        return "stopped" if _stopped(pid) else "up"


class Fleet:
    """N local sshd processes on ``{subnet}.1..N:port`` plus their client-side files."""

    def __init__(self, base_dir: str | Path, n: int | None = None,
                 subnet: str = DEFAULT_SUBNET, port: int = DEFAULT_PORT) -> None:
        """Describe a fleet in ``base_dir``; nothing is created until ``up()``.

        ``n`` defaults to the size recorded in ``base_dir/fleet.json`` if there is
        one, else DEFAULT_HOSTS.
        """
        self.base_dir = Path(base_dir).resolve()
        if n is None:
            recorded = self._read_record()
            n = int(recorded["n"]) if recorded else DEFAULT_HOSTS
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"fleet size must be 1..{MAX_HOSTS}, got {n}")
        octets = subnet.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) <= 255 for o in octets) \
                or octets[0] != "127":
            raise ValueError(f"subnet must be three octets inside 127.0.0.0/8, got {subnet!r}")
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be 1..65535, got {port}")
        self.n = n
        self.subnet = subnet
        self.port = port
        width = 3 if n > 99 else 2
        self.hosts: list[FleetHost] = [
            FleetHost(name=f"host{k:0{width}d}", address=f"{subnet}.{k}", port=port,
                      dir=self.base_dir / HOSTS_SUBDIR / f"host{k:0{width}d}")
            for k in range(1, n + 1)
        ]
        self.inventory_path = self.base_dir / "inventory.yml"
        self.known_hosts_path = self.base_dir / "known_hosts"
        self.client_key_path = self.base_dir / "id_ed25519"
        self.authorized_keys_path = self.base_dir / "authorized_keys"
        self.record_path = self.base_dir / FLEET_JSON

    def __repr__(self) -> str:
        """Short description for logs and test output."""
        return (f"Fleet({str(self.base_dir)!r}, n={self.n}, subnet={self.subnet!r}, "
                f"port={self.port})")

    @classmethod
    def load(cls, base_dir: str | Path) -> Fleet:
        """Re-open the fleet recorded in ``base_dir/fleet.json`` (written by ``up``)."""
        path = Path(base_dir).resolve() / FLEET_JSON
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise FleetError(f"no fleet in {path.parent}: {FLEET_JSON} is missing "
                             f"(run `python -m opsq.devfleet up --dir {path.parent}`)") from exc
        return cls(base_dir, n=int(record["n"]), subnet=record["subnet"], port=int(record["port"]))

    # ----------------------------------------------------------------- lookup

    def host(self, name: str) -> FleetHost:
        """The host called ``name`` (KeyError listing the valid names otherwise)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in {self!r}; hosts are "
                       f"{self.hosts[0].name}..{self.hosts[-1].name}")

    # ----------------------------------------------------------------- lifecycle

    def up(self) -> None:
        """Create whatever is missing, start every sshd not running, wait until all answer.

        Idempotent. Raises FleetError naming the host and its log if an sshd does
        not send its SSH banner within UP_DEADLINE_S.
        """
        _check_installed()
        _check_root()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._retire_previous_fleet()
            ensure_fleet_user()
            _ensure_privsep_dir()
            self.base_dir.chmod(DIR_MODE)
            _make_traversable(self.base_dir)
            (self.base_dir / HOSTS_SUBDIR).mkdir(mode=DIR_MODE, exist_ok=True)

            if not _have_key(self.client_key_path):
                _generate_key(self.client_key_path, f"{FLEET_USER}-client")
            os.chmod(self.client_key_path, PRIVATE_KEY_MODE)
            client_pub = self.client_key_path.with_name(self.client_key_path.name + ".pub")
            _write_if_changed(self.authorized_keys_path, client_pub.read_text(), PUBLIC_FILE_MODE)

            penalties = _sshd_version() >= PENALTIES_MIN_VERSION
            fresh_keys: set[str] = set()
            to_start: list[FleetHost] = []
            for host in self.hosts:
                host.dir.mkdir(mode=DIR_MODE, exist_ok=True)
                if not _have_key(host.host_key_path):
                    _generate_key(host.host_key_path, f"{FLEET_USER}-{host.name}")
                    fresh_keys.add(host.name)
                os.chmod(host.host_key_path, PRIVATE_KEY_MODE)
                changed = _write_if_changed(host.config_path, self._sshd_config(host, penalties),
                                            PUBLIC_FILE_MODE)
                running = host.pid() is not None
                if running and (changed or host.name in fresh_keys):
                    # A running sshd keeps the config and key it started with.
                    self._stop(host)
                    running = False
                if not running:
                    to_start.append(host)

            self._write_known_hosts(trust=fresh_keys)
            self._write_inventory()
            self._write_record()
            # Check every address first: a collision should not leave half a fleet running.
            for host in to_start:
                _check_bindable(host.address, host.port, host.name)
            for host in to_start:
                self._spawn(host)
            self._wait_ready(to_start)
            # A host SIGSTOPped earlier is running but would not answer; up means up.
            for host in self.hosts:
                if host.state() == "stopped":
                    self.cont_host(host.name)

    def down(self) -> None:
        """Stop every sshd of this fleet and all their connections; leave the files."""
        with self._locked():
            self._terminate_hosts(self.hosts)

    def stop_host(self, name: str) -> None:
        """SIGSTOP the host's sshd and every process below it: the host hangs."""
        host = self.host(name)
        pid = self._require_pid(host)
        # Listener first so it cannot fork while we walk; then repeat until no new
        # descendant appears (a child may have forked just before being stopped).
        stopped: set[int] = set()
        pending = [pid]
        while pending:
            _signal_all(pending, signal.SIGSTOP)
            stopped.update(pending)
            pending = [p for p in _descendants([pid]) if p not in stopped]

    def cont_host(self, name: str) -> None:
        """SIGCONT the host's sshd and every process below it (undoes stop_host)."""
        host = self.host(name)
        pid = self._require_pid(host)
        _signal_all([pid, *_descendants([pid])], signal.SIGCONT)

    def kill_host(self, name: str) -> None:
        """Stop the host's sshd and its connections until start_host: unreachable host."""
        with self._locked():
            self._stop(self.host(name))

    def start_host(self, name: str) -> None:
        """(Re)start the host's sshd if it is not running and wait until it answers."""
        host = self.host(name)
        with self._locked():
            if host.pid() is None:
                self._spawn(host)
                self._wait_ready([host])
            elif host.state() == "stopped":
                self.cont_host(name)

    def rekey_host(self, name: str) -> None:
        """Give the host a NEW host key and restart it; known_hosts is left stale on purpose.

        Simulates a re-installed host or a man in the middle: strict host key
        checking against ``known_hosts_path`` fails until ``trust_host(name)``.
        """
        host = self.host(name)
        with self._locked():
            self._stop(host)
            _generate_key(host.host_key_path, f"{FLEET_USER}-{host.name}")
            self._spawn(host)
            self._wait_ready([host])

    def trust_host(self, name: str) -> None:
        """Write the host's current key into known_hosts (undoes the effect of rekey_host)."""
        with self._locked():
            self._write_known_hosts(trust={self.host(name).name})

    def status(self) -> list[tuple[FleetHost, int | None, str]]:
        """(host, pid, "up"/"stopped"/"down") for every host."""
        return [(h, h.pid(), h.state()) for h in self.hosts]

    # ----------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise fleet operations on this base_dir across processes (flock)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.base_dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_record(self) -> dict | None:
        """The parsed fleet.json of base_dir, or None."""
        try:
            return json.loads((self.base_dir / FLEET_JSON).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _retire_previous_fleet(self) -> None:
        """Stop hosts of an earlier, different fleet in this dir before forgetting them.

        If ``up`` is called with another n/subnet/port, fleet.json gets rewritten
        and hosts it no longer lists would otherwise keep running untracked.
        """
        record = self._read_record()
        if not record:
            return
        try:
            previous = Fleet(self.base_dir, n=int(record["n"]), subnet=record["subnet"],
                             port=int(record["port"]))
        except (KeyError, ValueError):
            return
        keep = {(h.name, h.address, h.port) for h in self.hosts}
        for host in previous.hosts:
            if (host.name, host.address, host.port) not in keep:
                self._stop(host)

    def _require_pid(self, host: FleetHost) -> int:
        """The host's sshd pid, or FleetError if it is not running."""
        pid = host.pid()
        if pid is None:
            raise FleetError(f"{host.name} ({host.address}:{host.port}) is not running")
        return pid

    def _stop(self, host: FleetHost) -> None:
        """Terminate one host's listener, its connections and its leftover commands."""
        self._terminate_hosts([host])

    @staticmethod
    def _terminate_hosts(hosts: list[FleetHost]) -> None:
        """Terminate the listeners of ``hosts`` and everything that belongs to them.

        That is each listener's process tree, plus processes that escaped it:
        per-connection sshds still holding a host's log after their listener
        died, and remote commands that outlived their connection.
        """
        parents = _parent_map()
        roots = [pid for pid in (h.pid() for h in hosts) if pid is not None]
        extra = [*_holders_of({str(h.log_path) for h in hosts}, parents),
                 *_session_orphans({(h.address, h.port) for h in hosts}, parents)]
        _terminate(roots, extra=extra)
        for host in hosts:
            host.pid_path.unlink(missing_ok=True)

    def _sshd_config(self, host: FleetHost, penalties: bool) -> str:
        """The sshd_config text for ``host``."""
        lines = [
            f"# Generated by opsq.devfleet for {host.name}; rewritten by every `up`.",
            f"ListenAddress {host.address}:{host.port}",
            f"HostKey {host.host_key_path}",
            f"PidFile {host.pid_path}",
            # Outside any home directory, so no real user's ~/.ssh is ever read or written.
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            f"AllowUsers {FLEET_USER}",
            # Tests open many connections at once; the defaults (10:30:100) would drop them.
            "MaxStartups 200:30:400",
            "MaxSessions 200",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            # A ~/.ssh/rc would run before every command; the fleet user has none anyway.
            "PermitUserRC no",
            "X11Forwarding no",
            "Subsystem sftp internal-sftp",
            "AcceptEnv LANG LC_*",
        ]
        if penalties:
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"

    def _spawn(self, host: FleetHost) -> None:
        """Start the host's sshd (it daemonizes and writes its pid file)."""
        _check_bindable(host.address, host.port, host.name)
        host.pid_path.unlink(missing_ok=True)
        argv = [str(SSHD_PATH), "-f", str(host.config_path), "-E", str(host.log_path)]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=SSHD_ENV,
                                  timeout=START_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise FleetError(f"{host.name}: `{' '.join(argv)}` did not daemonize within "
                             f"{START_TIMEOUT_S}s; see {host.log_path}") from exc
        if proc.returncode != 0:
            stderr = f" ({proc.stderr.strip()})" if proc.stderr.strip() else ""
            raise FleetError(f"{host.name}: sshd exited {proc.returncode} at startup{stderr}; "
                             f"log {host.log_path}:\n{_tail(host.log_path)}")

    def _wait_ready(self, hosts: list[FleetHost]) -> None:
        """Wait until each host accepts TCP, sends its banner and has written its pid file."""
        deadline = time.monotonic() + UP_DEADLINE_S
        for host in hosts:
            while not (_read_banner(host.address, host.port) and host.pid() is not None):
                if time.monotonic() >= deadline:
                    raise FleetError(
                        f"{host.name} ({host.address}:{host.port}) sent no SSH banner within "
                        f"{UP_DEADLINE_S}s; see its log {host.log_path}:\n{_tail(host.log_path)}")
                time.sleep(POLL_INTERVAL_S)

    def _write_known_hosts(self, trust: set[str]) -> None:
        """Write one known_hosts line per host.

        A host's existing line is kept unless its name is in ``trust`` (a key
        ``up`` just generated, or ``trust_host``): rekey_host must stay detectable
        across later ``up`` calls.
        """
        existing: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.known_hosts_path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    existing[line.split()[0]] = line
        lines = []
        for host in self.hosts:
            kept = existing.get(host.known_hosts_name)
            lines.append(host.known_hosts_line() if host.name in trust or kept is None else kept)
        _write_if_changed(self.known_hosts_path, "\n".join(lines) + "\n", PUBLIC_FILE_MODE)

    def _write_inventory(self) -> None:
        """Write the Ansible-style YAML inventory: groups fleet, odd and even."""
        key = str(self.client_key_path)
        inventory = {
            "all": {
                "vars": {},
                "children": {
                    "fleet": {"hosts": {
                        h.name: {"ansible_host": h.address, "ansible_port": h.port,
                                 "ansible_user": FLEET_USER, "ansible_ssh_private_key_file": key}
                        for h in self.hosts}},
                    "odd": {"hosts": {h.name: None for h in self.hosts if h.number % 2}},
                    "even": {"hosts": {h.name: None for h in self.hosts if not h.number % 2}},
                },
            },
        }
        header = (f"# Generated by opsq.devfleet ({self.n} local sshd hosts); "
                  f"known_hosts: {self.known_hosts_path}\n")
        _write_if_changed(self.inventory_path,
                          header + yaml.safe_dump(inventory, sort_keys=False), PUBLIC_FILE_MODE)

    def _write_record(self) -> None:
        """Write fleet.json so ``Fleet.load`` can find this fleet from another process."""
        record = {
            "n": self.n, "subnet": self.subnet, "port": self.port,
            "hosts": [{"name": h.name, "address": h.address, "port": h.port, "dir": str(h.dir)}
                      for h in self.hosts],
        }
        _write_if_changed(self.record_path, json.dumps(record, indent=2) + "\n", PUBLIC_FILE_MODE)


# --------------------------------------------------------------------------- CLI

EXIT_ERROR = 1
EXIT_NOT_INSTALLED = 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m opsq.devfleet``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m opsq.devfleet",
                                     description="Local fleet of sshd hosts on loopback.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="create and start the fleet (idempotent)")
    up.add_argument("--dir", required=True, type=Path, help="fleet base directory")
    up.add_argument("-n", type=int, default=None,
                    help=f"number of hosts (default: as recorded, else {DEFAULT_HOSTS})")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help="first three octets, in 127/8")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="port every host listens on")
    for command, text in (("down", "stop every sshd of the fleet"),
                          ("status", "show each host's state")):
        sub.add_parser(command, help=text).add_argument("--dir", required=True, type=Path,
                                                        help="fleet base directory")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            fleet = Fleet(args.dir, n=args.n, subnet=args.subnet, port=args.port)
            started = time.monotonic()
            fleet.up()
            print(f"fleet of {fleet.n} hosts up in {time.monotonic() - started:.1f}s "
                  f"({fleet.hosts[0].address}..{fleet.hosts[-1].address}:{fleet.port})")
            print(f"inventory:   {fleet.inventory_path}")
            print(f"known_hosts: {fleet.known_hosts_path}")
            print(f"client key:  {fleet.client_key_path}")
        elif args.command == "down":
            if not (args.dir / FLEET_JSON).exists():
                print(f"no fleet in {args.dir}; nothing to stop", file=sys.stderr)
                return 0
            Fleet.load(args.dir).down()
            print(f"fleet in {args.dir} is down")
        else:
            fleet = Fleet.load(args.dir)
            for host, pid, state in fleet.status():
                print(f"{host.name}  {host.address}:{host.port}  "
                      f"pid={pid if pid is not None else '-':<8} {state}")
    except SshdNotInstalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    except (FleetError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
