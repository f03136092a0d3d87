"""Trusting hosts' SSH keys on purpose: scan, show the fingerprint, record in known_hosts.

A host with any key recorded must present one of them, whatever its type: a host that
was trusted with an RSA key and now offers an ed25519 one is refused like a changed key
(a man in the middle picks the type it offers). Replacing a host's keys is a separate,
explicit command (``opsq hosts retrust``) that shows the old and the new fingerprints.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from enum import IntEnum
from pathlib import Path

import paramiko

from opsq.hostrun.ssh import (
    fingerprint,
    known_hosts_name,
    load_known_hosts,
    scan_host_key,
    ssh_address,
)
from opsq.inventory import Host
from opsq.settings import get_settings

#: Mode of a known_hosts file opsq creates (as ssh does).
KNOWN_HOSTS_MODE = 0o644


class TrustResult(IntEnum):
    """What ``trust`` and ``retrust`` return, as the CLI's exit code."""

    OK = 0
    #: A host's key could not be fetched (down, refused, not SSH).
    UNREACHABLE = 1
    #: A host offered a key that differs from every one recorded for it.
    REFUSED = 2


def recorded_keys(known: paramiko.HostKeys, name: str) -> list[paramiko.PKey]:
    """Every key known_hosts records for ``name`` (hashed entries included), any type."""
    entry = known.lookup(name)
    return list(entry.values()) if entry else []


def key_line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def trust(hosts: Iterable[Host], timeout: float, echo: Callable[[str], None] = print) -> int:
    """Record the key of each SSH host that has none recorded yet.

    A host whose recorded keys do not include the one it offers is refused and left as it
    is. Returns a TrustResult: REFUSED if any host was refused, else UNREACHABLE if any
    could not be reached, else OK.
    """
    path = get_settings().known_hosts_path()
    known = load_known_hosts(path)
    result = TrustResult.OK
    new_lines: list[str] = []
    for host, name, key in _scan(hosts, timeout, echo):
        if key is None:
            result = max(result, TrustResult.UNREACHABLE)
            continue
        recorded = recorded_keys(known, name)
        if key in recorded:
            echo(f"{host.name}: already trusted {fingerprint(key)}")
            continue
        if recorded:
            echo(f"{host.name}: REFUSED: {name} offers {fingerprint(key)} but {path} has "
                 f"{', '.join(fingerprint(k) for k in recorded)} for it. A changed key may "
                 f"be a man in the middle; if the change is expected, check the new "
                 f"fingerprint on the host itself and run 'opsq hosts retrust {host.name}'")
            result = TrustResult.REFUSED
            continue
        new_lines.append(key_line(name, key))
        known.add(name, key.get_name(), key)
        echo(f"{host.name}: trusted {fingerprint(key)}")
    if new_lines:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a", encoding="ascii") as fh:
            fh.writelines(new_lines)
    return int(result)


def retrust(hosts: Iterable[Host], timeout: float, confirm: Callable[[str], bool],
            echo: Callable[[str], None] = print) -> int:
    """Replace each host's recorded keys by the one it offers now, after ``confirm`` says
    yes to a text showing the old and the new fingerprints. Returns a TrustResult
    (UNREACHABLE if a key could not be fetched, REFUSED if a replacement was declined)."""
    path = get_settings().known_hosts_path()
    known = load_known_hosts(path)
    result = TrustResult.OK
    replace: dict[str, paramiko.PKey] = {}
    for host, name, key in _scan(hosts, timeout, echo):
        if key is None:
            result = max(result, TrustResult.UNREACHABLE)
            continue
        recorded = recorded_keys(known, name)
        if recorded == [key]:
            echo(f"{host.name}: already trusted {fingerprint(key)}")
            continue
        old = ", ".join(fingerprint(k) for k in recorded) or "nothing"
        if not confirm(f"{host.name} ({name}): {path} has {old}; the host offers "
                       f"{fingerprint(key)}. Replace?"):
            echo(f"{host.name}: left as it was")
            result = TrustResult.REFUSED
            continue
        replace[name] = key
        echo(f"{host.name}: now trusted {fingerprint(key)} (was {old})")
    if replace:
        _rewrite(path, replace)
    return int(result)


def _scan(hosts: Iterable[Host], timeout: float, echo: Callable[[str], None]
          ) -> Iterable[tuple[Host, str, paramiko.PKey | None]]:
    """(host, known_hosts name, offered key or None when unreachable) per SSH host."""
    for host in hosts:
        if host.connection == "local":
            echo(f"{host.name}: local, no key needed")
            continue
        name = known_hosts_name(ssh_address(host), host.port)
        try:
            key = scan_host_key(host, timeout)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            echo(f"{host.name}: cannot fetch the key from {name}: {exc}")
            yield host, name, None
            continue
        yield host, name, key


def _names_line(line: str, names: set[str]) -> str | None:
    """``line`` without the entries for ``names`` (None when nothing is left of it)."""
    fields = line.split()
    if not fields or fields[0].startswith("#") or fields[0].startswith("@"):
        return line  # comments and markers (@cert-authority, @revoked) stay as they are
    hosts = fields[0].split(",")
    kept = [h for h in hosts if not _matches(h, names)]
    if len(kept) == len(hosts):
        return line
    if not kept:
        return None
    return line.replace(fields[0], ",".join(kept), 1)


def _matches(entry: str, names: set[str]) -> bool:
    if entry.startswith("|1|"):
        salt = entry.split("|")[2]
        return any(paramiko.HostKeys.hash_host(n, salt) == entry for n in names)
    return entry in names


def _rewrite(path: Path, replace: dict[str, paramiko.PKey]) -> None:
    """Drop every line of the hosts in ``replace`` and append their new keys, atomically
    (a reader never sees a half-written file) and keeping the file's mode."""
    lines = path.read_text(encoding="ascii").splitlines(keepends=True) if path.exists() else []
    kept = [x for x in (_names_line(line, set(replace)) for line in lines) if x is not None]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    kept += [key_line(name, key) for name, key in replace.items()]
    mode = path.stat().st_mode & 0o777 if path.exists() else KNOWN_HOSTS_MODE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.writelines(kept)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
