"""The dev fleet's command line: ``python -m devtools.devfleet up|down|status --dir DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from devtools.devfleet.constants import DEFAULT_HOSTS, DEFAULT_PORT, DEFAULT_SUBNET, FLEET_JSON
from devtools.devfleet.errors import FleetError, SshdNotInstalledError
from devtools.devfleet.fleet import Fleet

EXIT_ERROR = 1
EXIT_NOT_INSTALLED = 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m devtools.devfleet``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m devtools.devfleet",
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
