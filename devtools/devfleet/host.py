"""FleetHost: one sshd of the fleet, its files and its process state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devtools.devfleet.constants import HOST_KEY_FILE, LOG_FILE, PID_FILE, SSHD_CONFIG_FILE
from devtools.devfleet.processes import _alive, _stopped


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
