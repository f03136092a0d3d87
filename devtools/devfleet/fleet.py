"""Fleet: the dev fleet's API, used by the demo and the tests.

up/down for the whole fleet, and per-host faults: stop_host (hang), kill_host,
rekey_host (new host key), with cont_host, start_host and trust_host to undo them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from devtools.devfleet.constants import (
    BECOME_PASSWORD_FILE,
    DEFAULT_HOSTS,
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    DIR_MODE,
    FLEET_JSON,
    FLEET_USER,
    HOSTS_SUBDIR,
    LOCK_FILE,
    MAX_HOSTS,
    PENALTIES_MIN_VERSION,
    POLL_INTERVAL_S,
    PRIVATE_KEY_MODE,
    PUBLIC_FILE_MODE,
    SSHD_ENV,
    SSHD_PATH,
    START_TIMEOUT_S,
    UP_DEADLINE_S,
)
from devtools.devfleet.errors import FleetError
from devtools.devfleet.files import (
    FleetFiles,
    _generate_key,
    _have_key,
    _make_traversable,
    _tail,
    _write_if_changed,
)
from devtools.devfleet.host import FleetHost
from devtools.devfleet.processes import (
    _descendants,
    _holders_of,
    _parent_map,
    _session_orphans,
    _signal_all,
    _terminate,
)
from devtools.devfleet.system import (
    _check_bindable,
    _check_installed,
    _check_root,
    _ensure_privsep_dir,
    _read_banner,
    _sshd_version,
    ensure_fleet_user,
    ensure_sudo,
)


class Fleet(FleetFiles):
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
        #: The fleet user's sudo password (OPSQ_BECOME_PASSWORD_FILE for ``--become``).
        self.become_password_path = self.base_dir / BECOME_PASSWORD_FILE
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
                             f"(run `python -m devtools.devfleet up --dir {path.parent}`)") from exc
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
            if shutil.which("sudo"):
                _write_if_changed(self.become_password_path, ensure_sudo() + "\n",
                                  PRIVATE_KEY_MODE)
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
