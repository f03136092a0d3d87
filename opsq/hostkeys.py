"""Trusting hosts' SSH keys on purpose: scan, show the fingerprint, record in known_hosts.

A key already recorded is left alone; a host whose key differs from the recorded one
is refused here too (remove the old line first): trusting is never silent replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import paramiko

from opsq.inventory import Host
from opsq.settings import get_settings
from opsq.ssh import fingerprint, known_hosts_name, load_known_hosts, scan_host_key


def trust(hosts: Iterable[Host], timeout: float, echo: Callable[[str], None] = print) -> int:
    """Record each SSH host's key in known_hosts; returns 0, or 1 if any host failed."""
    path = get_settings().known_hosts_path()
    known = load_known_hosts(path)
    failures = 0
    new_lines: list[str] = []
    for host in hosts:
        if host.connection == "local":
            echo(f"{host.name}: local, no key needed")
            continue
        name = known_hosts_name(host.address, host.port)
        try:
            key = scan_host_key(host, timeout)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            echo(f"{host.name}: cannot fetch the key from {name}: {exc}")
            failures += 1
            continue
        recorded = known.lookup(name)
        if recorded and key.get_name() in recorded:
            if recorded[key.get_name()] == key:
                echo(f"{host.name}: already trusted {fingerprint(key)}")
                continue
            echo(f"{host.name}: REFUSED: {name} offers {fingerprint(key)} but {path} has "
                 f"{fingerprint(recorded[key.get_name()])}; remove the old line "
                 f"(ssh-keygen -R '{name}' -f {path}) if the change is expected")
            failures += 1
            continue
        new_lines.append(f"{name} {key.get_name()} {key.get_base64()}\n")
        known.add(name, key.get_name(), key)
        echo(f"{host.name}: trusted {fingerprint(key)}")
    if new_lines:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("a", encoding="ascii") as fh:
            fh.writelines(new_lines)
    return 1 if failures else 0
