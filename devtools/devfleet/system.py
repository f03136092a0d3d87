"""Machine-level setup and probes.

Root and OpenSSH checks, the fleet user and its sudo rule, sshd's privsep directory,
whether an address can be bound, and SSH banners.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from devtools.devfleet.constants import (
    DIR_MODE,
    FLEET_HOME,
    FLEET_SHELL,
    FLEET_USER,
    PRIVATE_KEY_MODE,
    PROBE_TIMEOUT_S,
    SHELL_RC_FILES,
    SSH_KEYGEN,
    SSHD_PATH,
    SSHD_PRIVSEP_DIR,
    SSHD_PRIVSEP_MODE,
    SUDO_PASSWORD_BYTES,
    SUDO_PASSWORD_STORE,
    SUDOERS_FILE,
    TOOL_TIMEOUT_S,
)
from devtools.devfleet.errors import FleetError, SshdNotInstalledError
from devtools.devfleet.files import _run_tool


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


def ensure_sudo() -> str:
    """Give FLEET_USER a password (the machine's fleet sudo password, made once) and a
    sudo rule that asks for it; returns the password. Needs sudo installed."""
    if shutil.which("sudo") is None:
        raise FleetError("sudo is not installed (apt-get install sudo): --become needs it")
    store = SUDO_PASSWORD_STORE
    if not store.exists():
        store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = store.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(SUDO_PASSWORD_BYTES) + "\n")
        os.chmod(tmp, PRIVATE_KEY_MODE)
        os.replace(tmp, store)
    password = store.read_text().strip()
    # chpasswd reads "user:password" on stdin: the password is on no command line.
    result = subprocess.run(["chpasswd"], input=f"{FLEET_USER}:{password}\n", text=True,
                            capture_output=True, timeout=TOOL_TIMEOUT_S)
    if result.returncode != 0:
        raise FleetError(f"cannot set {FLEET_USER}'s password: {result.stderr.strip()}")
    rule = (f"Defaults:{FLEET_USER} lecture=never\n"
            f"{FLEET_USER} ALL=(ALL:ALL) ALL\n")
    if not SUDOERS_FILE.exists() or SUDOERS_FILE.read_text() != rule:
        tmp = SUDOERS_FILE.with_name(".opsq-devfleet.tmp")  # sudo ignores names with a dot
        tmp.write_text(rule)
        os.chmod(tmp, 0o440)
        os.replace(tmp, SUDOERS_FILE)
    return password
