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

    python -m devtools.devfleet up --dir DIR [-n N] [--subnet 127.0.1] [--port 2222]
    python -m devtools.devfleet status --dir DIR
    python -m devtools.devfleet down --dir DIR

Modules, each importing only those listed before it:

* ``constants``: addresses, the login user, sshd paths, timeouts, modes, file names.
* ``errors``: FleetError and SshdNotInstalledError.
* ``processes``: /proc scanning, signals, tearing process trees down.
* ``host``: FleetHost, one sshd and its files.
* ``files``: atomic writes, keys, and the files a fleet generates (FleetFiles).
* ``system``: root/OpenSSH checks, the fleet user, /run/sshd, bind checks, banners.
* ``fleet``: Fleet, the API.
* ``cli``: ``main``, run by ``__main__``.
"""

from __future__ import annotations

from devtools.devfleet.cli import EXIT_ERROR, EXIT_NOT_INSTALLED, main
from devtools.devfleet.constants import (
    DEFAULT_HOSTS,
    DEFAULT_PORT,
    DEFAULT_SUBNET,
    DIR_MODE,
    FLEET_HOME,
    FLEET_JSON,
    FLEET_SHELL,
    FLEET_USER,
    HOST_KEY_FILE,
    HOSTS_SUBDIR,
    KILL_GRACE_S,
    LOCK_FILE,
    LOG_FILE,
    LOG_TAIL_LINES,
    MAX_HOSTS,
    PENALTIES_MIN_VERSION,
    PID_FILE,
    POLL_INTERVAL_S,
    PRIVATE_KEY_MODE,
    PROBE_TIMEOUT_S,
    PUBLIC_FILE_MODE,
    SHELL_RC_FILES,
    SSH_KEYGEN,
    SSHD_CONFIG_FILE,
    SSHD_ENV,
    SSHD_PATH,
    SSHD_PRIVSEP_DIR,
    SSHD_PRIVSEP_MODE,
    START_TIMEOUT_S,
    TERM_GRACE_S,
    TOOL_TIMEOUT_S,
    UP_DEADLINE_S,
)
from devtools.devfleet.errors import FleetError, SshdNotInstalledError
from devtools.devfleet.fleet import Fleet
from devtools.devfleet.host import FleetHost
from devtools.devfleet.system import ensure_fleet_user

__all__ = [
    "DEFAULT_HOSTS",
    "DEFAULT_PORT",
    "DEFAULT_SUBNET",
    "DIR_MODE",
    "EXIT_ERROR",
    "EXIT_NOT_INSTALLED",
    "FLEET_HOME",
    "FLEET_JSON",
    "FLEET_SHELL",
    "FLEET_USER",
    "Fleet",
    "FleetError",
    "FleetHost",
    "HOSTS_SUBDIR",
    "HOST_KEY_FILE",
    "KILL_GRACE_S",
    "LOCK_FILE",
    "LOG_FILE",
    "LOG_TAIL_LINES",
    "MAX_HOSTS",
    "PENALTIES_MIN_VERSION",
    "PID_FILE",
    "POLL_INTERVAL_S",
    "PRIVATE_KEY_MODE",
    "PROBE_TIMEOUT_S",
    "PUBLIC_FILE_MODE",
    "SHELL_RC_FILES",
    "SSHD_CONFIG_FILE",
    "SSHD_ENV",
    "SSHD_PATH",
    "SSHD_PRIVSEP_DIR",
    "SSHD_PRIVSEP_MODE",
    "SSH_KEYGEN",
    "START_TIMEOUT_S",
    "SshdNotInstalledError",
    "TERM_GRACE_S",
    "TOOL_TIMEOUT_S",
    "UP_DEADLINE_S",
    "ensure_fleet_user",
    "main",
]
