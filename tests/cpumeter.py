"""CPU seconds per part of opsq (workers, RabbitMQ, PostgreSQL, client) from /proc, for
``make bench``: what each part spends per host result while a job runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Clock ticks per second, the unit of /proc/<pid>/stat's CPU times.
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU s, reaped children's CPU s) of ``pid``, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return int(fields[1]), (utime + stime) / TICK, (cutime + cstime) / TICK


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            tree.setdefault(st[0], []).append(int(entry.name))
    return tree


def tree_cpu(pid: int, tree: dict[int, list[int]]) -> tuple[float, float]:
    """(``pid``'s own CPU s, its descendants' CPU s, live or reaped)."""
    st = _stat(pid)
    if st is None:
        return 0.0, 0.0
    below = st[2]
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        if (cst := _stat(child)) is not None:
            below += cst[1]
            todo += tree.get(child, [])
    return st[1], below


def pids_named(name: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def postmaster_pid() -> int:
    for pidfile in Path("/var/run/postgresql").glob("*.pid"):
        return int(pidfile.read_text().split()[0])
    raise RuntimeError("no PostgreSQL pid file in /var/run/postgresql")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


class CpuMeter:
    """CPU seconds each part of opsq spends between ``start()`` and ``stop()``: the fleet
    workers (own, and the local commands they start), the control worker (with its pool),
    RabbitMQ, PostgreSQL (every backend), the submitting client, and the machine."""

    def __init__(self, fleet_pids: list[int], control_pid: int, others: dict[str, list[int]]
                 | None = None) -> None:
        self.fleet_pids, self.control_pid = fleet_pids, control_pid
        self.others = others or {}

    def sample(self) -> dict[str, float]:
        tree = _children()
        fleet = [tree_cpu(p, tree) for p in self.fleet_pids]
        control = tree_cpu(self.control_pid, tree)
        pg = tree_cpu(postmaster_pid(), tree)
        times = os.times()
        out = {
            "fleet worker": sum(own for own, _ in fleet),
            "local commands (sh -c)": sum(below for _, below in fleet),
            "control worker": sum(control),
            "RabbitMQ": sum(sum(tree_cpu(p, tree)) for p in pids_named("beam.smp")),
            "PostgreSQL": sum(pg),
            "client (submit + wait)": times.user + times.system,
            "machine (all cores)": machine_busy()[0],
        }
        for name, pids in self.others.items():
            out[name] = sum(sum(tree_cpu(p, tree)) for p in pids)
        return out

    def start(self) -> None:
        self.t0, self.before = time.perf_counter(), self.sample()

    def stop(self) -> tuple[float, dict[str, float]]:
        after = self.sample()
        return time.perf_counter() - self.t0, {k: after[k] - self.before[k] for k in after}
