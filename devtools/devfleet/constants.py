"""Constants of the dev fleet.

Addresses, the login user, sshd paths, timeouts, file modes and the names of
the files in a fleet's base directory.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_PORT = 2222
DEFAULT_SUBNET = "127.0.1"  # hosts are f"{subnet}.{k}"
FLEET_USER = "opsqfleet"  # dedicated unprivileged login user
FLEET_HOME = Path("/var/lib/opsqfleet")
#: The fleet user's sudo rule: every command as any user, with the user's password, so
#: ``--become`` is exercised as on real hosts. The password is the machine's, shared by
#: every fleet on it (they log in as the same user), kept where only root reads it; each
#: fleet's directory gets a copy (BECOME_PASSWORD_FILE) for its workers.
SUDOERS_FILE = Path("/etc/sudoers.d/opsq-devfleet")
SUDO_PASSWORD_STORE = Path("/var/lib/opsq-devfleet/become-password")
BECOME_PASSWORD_FILE = "become-password"
SUDO_PASSWORD_BYTES = 18  # of randomness, URL-safe text
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
