"""``make bench``: opsq's jobs timed side by side with what their parts allow, same run.

Starts its own throwaway database, vhost, sshd fleet and one fleet worker (as the tests
do), then times, each after a warm-up and reported as median and p90:

* 1,000 ``ansible_connection=local`` hosts running ``true``: ``jobs.submit()`` until
  ``AsyncResult.get()`` has the summary, against the floor: the same 1,000 ``sh -c true``
  from a Python thread pool as wide as the worker's;
* 100 SSH hosts over warm connections: submit -> ``get()`` against Fabric's
  ThreadingGroup over connections already open;
* 1 SSH host, warm: submit -> ``get()`` against one Fabric ``run`` over an open connection;
* ``opsq run true -t host001 --wait`` as a whole CLI process against a fresh
  ``python -c`` that opens a Fabric connection and runs ``true``;
* last, 10,000 local hosts, once, with the fleet worker's peak RSS; then the same hosts
  printing three distinct outputs, folded (``jobs.groups`` and ``opsq result --fold``).

The machine is noisy: compare the ratios, not the seconds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The tests' support modules import each other by name, as pytest's pythonpath has it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests import conftest  # noqa: E402  (sets the throwaway environment before opsq)

#: Where the worker's log is kept after the run (the scratch directory is removed).
ROOT_LOG = conftest.ROOT / "var" / "bench-worker.log"
#: Runs per measurement (after one warm-up run).
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
#: SSH hosts in the fleet; local hosts in the two local jobs.
SSH_HOSTS = int(os.environ.get("BENCH_SSH_HOSTS", "100"))
LOCAL_HOSTS = int(os.environ.get("BENCH_LOCAL_HOSTS", "1000"))
HUGE_HOSTS = int(os.environ.get("BENCH_HUGE_HOSTS", "10000"))
#: Which measurements to run (all by default): local, ssh, one, cli, huge, fold.
GROUPS = set(os.environ.get("BENCH_GROUPS", "local,ssh,one,cli,huge,fold").split(","))
#: Targets from the execution core's issue: opsq / anchor at most.
TARGETS = {"local": 1.5, "ssh": 1.3, "cli": 1.2}
#: Target for one warm SSH host, submit -> get(), in seconds.
ONE_HOST_TARGET = 0.06


def timed(fn: Callable[[], object], runs: int = RUNS) -> list[float]:
    fn()  # warm-up: imports, pooled connections, first-time costs
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def local_inventory(path: Path, n: int) -> Path:
    path.write_text("[local]\n" + "".join(
        f"l{i:05d} ansible_connection=local\n" for i in range(n)))
    return path


def rss_peak_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


Rows = list[tuple[str, str, list[float], str]]  # (group, measurement, times, role)


def job(pattern: str, inventory: str | None = None, n: int | None = None) -> None:
    """Submit ``true`` on ``pattern`` and wait for the summary, as a client would."""
    from opsq import jobs

    s = jobs.submit(jobs.JobSpec(command="true", pattern=pattern, inventory=inventory)
                    ).get(timeout=600)
    assert s["succeeded"] and (n is None or s["total"] == n), s


def local_jobs(rows: Rows) -> None:
    """The per-host cost of opsq itself: hosts that need no SSH."""
    from opsq.settings import get_settings

    width = get_settings().host_concurrency
    inv = str(local_inventory(conftest.WORK / "local.ini", LOCAL_HOSTS))
    pool = ThreadPoolExecutor(width)

    def floor() -> None:
        list(pool.map(lambda _: subprocess.run(["sh", "-c", "true"]), range(LOCAL_HOSTS)))

    group = f"{LOCAL_HOSTS} local hosts"
    rows.append((group, f"floor: {LOCAL_HOSTS} x sh -c true, {width} threads",
                 timed(floor), "anchor"))
    rows.append((group, "opsq: submit -> AsyncResult.get()",
                 timed(lambda: job("local", inv, LOCAL_HOSTS)), "local"))
    pool.shutdown()


def huge_job(rows: Rows, notes: list[str], worker_pid: int) -> None:
    """One very large job, last: the database's clean-up after it would slow what follows."""
    huge = str(local_inventory(conftest.WORK / "huge.ini", HUGE_HOSTS))
    t0 = time.perf_counter()
    job("local", huge, HUGE_HOSTS)
    rows.append((f"{HUGE_HOSTS} local hosts", "opsq: submit -> AsyncResult.get() (once)",
                 [time.perf_counter() - t0], "info"))
    notes.append(f"fleet worker peak RSS after the {HUGE_HOSTS}-host job: "
                 f"{rss_peak_mb(worker_pid):.0f} MB (target < 500 MB)")
    if "fold" in GROUPS:
        fold_job(rows, huge)


def fold_job(rows: Rows, inventory: str) -> None:
    """Folding a large job's results: HUGE_HOSTS hosts printing three distinct outputs."""
    from opsq import jobs

    s = jobs.submit(jobs.JobSpec(command="expr $$ % 3", pattern="local", inventory=inventory)
                    ).get(timeout=600)
    found = jobs.groups(s["job_id"])
    assert found.total == 3, found.total
    group = f"fold {HUGE_HOSTS} hosts, 3 outputs"
    rows.append((group, "opsq: jobs.groups() (target < 1 s)",
                 timed(lambda: jobs.groups(s["job_id"])), "info"))
    rows.append((group, "opsq: `opsq result JOB --fold` (whole process)",
                 timed(lambda: subprocess.run(
                     [sys.executable, "-m", "opsq.cli", "result", s["job_id"], "--fold"],
                     check=False, capture_output=True)), "info"))


def ssh_jobs(rows: Rows, fleet) -> None:
    """Jobs over SSH with the worker's connections already open, against Fabric's."""
    from fabric import Connection, ThreadingGroup

    from devtools.devfleet import FLEET_USER

    kw = {"user": FLEET_USER, "port": fleet.hosts[0].port,
          "connect_kwargs": {"key_filename": [str(fleet.client_key_path)]}}
    if "ssh" in GROUPS:
        group = f"{SSH_HOSTS} SSH hosts, warm"
        warm = ThreadingGroup(*[h.address for h in fleet.hosts], **kw)
        rows.append((group, "anchor: fabric ThreadingGroup, open connections",
                     timed(lambda: warm.run("true", hide=True)), "anchor"))
        warm.close()
        rows.append((group, "opsq: submit -> AsyncResult.get()",
                     timed(lambda: job("fleet", n=SSH_HOSTS)), "ssh"))
    if "one" in GROUPS:
        group = "1 SSH host, warm"
        one = Connection(fleet.hosts[0].address, **kw)
        rows.append((group, "anchor: fabric Connection.run, open connection",
                     timed(lambda: one.run("true", hide=True)), "anchor"))
        one.close()
        rows.append((group, "opsq: submit -> AsyncResult.get()",
                     timed(lambda: job(fleet.hosts[0].name, n=1)), "one"))


def cli_runs(rows: Rows, fleet) -> None:
    """Whole processes: the opsq command against a fresh Python running Fabric."""
    from devtools.devfleet import FLEET_USER

    group = "CLI, 1 SSH host"
    h = fleet.hosts[0]
    fresh = (f"from fabric import Connection; Connection({h.address!r}, user={FLEET_USER!r},"
             f" port={h.port}, connect_kwargs={{'key_filename': "
             f"[{str(fleet.client_key_path)!r}]}}).run('true', hide=True)")
    rows.append((group, "anchor: fresh `python -c` Fabric run",
                 timed(lambda: subprocess.run([sys.executable, "-c", fresh], check=True)),
                 "anchor"))
    rows.append((group, f"opsq: `opsq run true -t {h.name} --wait`",
                 timed(lambda: subprocess.run(
                     [sys.executable, "-m", "opsq.cli", "run", "true", "-t", h.name,
                      "--wait"], check=True, capture_output=True)), "cli"))


def report(rows: Rows, notes: list[str]) -> None:
    print(f"\n{RUNS} runs each after a warm-up; command `true`; seconds; "
          "ratio = median / the group's anchor median\n")
    print(f"{'group':<22} {'measurement':<48} {'median':>8} {'p90':>8} {'ratio':>7} "
          f"{'target':>8}")
    anchor: dict[str, float] = {}
    for group, name, xs, role in rows:
        med = statistics.median(xs)
        if role == "anchor":
            anchor[group] = med
        ratio = f"{med / anchor[group]:7.2f}" if group in anchor else f"{'-':>7}"
        target = f"<= {TARGETS[role]:g}" if role in TARGETS else (
            f"<={ONE_HOST_TARGET:g}s" if role == "one" else "")
        print(f"{group:<22} {name:<48} {med:8.3f} {p90(xs):8.3f} {ratio} {target:>8}")
    for note in notes:
        print(note)


def main() -> None:
    conftest.FLEET_SUBNET = "127.0.3"
    conftest.create_services()
    from devtools.devfleet import Fleet

    fleet = Fleet(conftest.FLEET_DIR, n=SSH_HOSTS, subnet=conftest.FLEET_SUBNET)
    fleet.up()
    worker = conftest.Worker("benchworker")
    rows: Rows = []
    notes: list[str] = []
    try:
        if "local" in GROUPS:
            local_jobs(rows)
        if GROUPS & {"ssh", "one"}:
            ssh_jobs(rows, fleet)
        if "cli" in GROUPS:
            cli_runs(rows, fleet)
        if "huge" in GROUPS:
            huge_job(rows, notes, worker.proc.pid)
    finally:
        worker.stop()
        ROOT_LOG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(worker.log, ROOT_LOG)
        print(f"worker log: {ROOT_LOG}")
        fleet.down()
        conftest.drop_services()
    report(rows, notes)


if __name__ == "__main__":
    main()
