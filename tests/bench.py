"""``make bench``: the wall time of a fleet job, side by side with baselines, same process.

Starts its own throwaway database, vhost, sshd fleet and one fleet worker (as the tests
do), then times, for 20 and 100 hosts running ``true``:

* baseline: Fabric's ThreadingGroup from this process, fresh connections (no queue);
* baseline: the same ThreadingGroup over connections already open;
* opsq, Python API: ``jobs.submit()`` until ``AsyncResult.get()`` returns the summary;
* opsq, Python API: ``jobs.submit()`` alone (how soon the caller has its job id);
* opsq, CLI: ``opsq run true -t ... --wait`` as a subprocess (interpreter start included).

Prints median and p90 over several runs, and ratios against the first baseline. The
machine is noisy: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from tests import conftest  # sets the throwaway environment before opsq is imported

#: Where the worker's log is kept after the run (the scratch directory is removed).
ROOT_LOG = conftest.ROOT / "var" / "bench-worker.log"
#: Runs per measurement (after one warm-up run).
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
#: Fleet sizes measured.
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "20,100").split(",")]
#: Worker threads: enough for the largest fleet to run at once.
CONCURRENCY = max(SIZES)


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


def main() -> None:
    conftest.FLEET_SUBNET = "127.0.3"
    conftest.create_services()
    from fabric import ThreadingGroup

    from opsq import jobs
    from opsq.devfleet import Fleet

    fleet = Fleet(conftest.FLEET_DIR, n=max(SIZES), subnet=conftest.FLEET_SUBNET)
    fleet.up()
    worker = conftest.Worker("benchworker", concurrency=CONCURRENCY)
    rows: list[tuple[int, str, list[float]]] = []
    try:
        for n in SIZES:
            hosts = fleet.hosts[:n]
            pattern = f"fleet[0:{n - 1}]"
            kw = {"user": "opsqfleet", "port": hosts[0].port,
                  "connect_kwargs": {"key_filename": [str(fleet.client_key_path)]}}
            addrs = [h.address for h in hosts]

            def fresh(addrs: list[str] = addrs, kw: dict = kw) -> None:
                g = ThreadingGroup(*addrs, **kw)
                g.run("true", hide=True)
                g.close()

            rows.append((n, "baseline: fabric ThreadingGroup, fresh connections",
                         timed(fresh)))
            warm = ThreadingGroup(*addrs, **kw)
            rows.append((n, "baseline: fabric ThreadingGroup, open connections",
                         timed(lambda w=warm: w.run("true", hide=True))))
            warm.close()

            def api(p: str = pattern, n: int = n) -> None:
                s = jobs.submit(jobs.JobSpec(command="true", pattern=p)).get(
                    timeout=120, interval=0.01)
                assert s["succeeded"] and s["total"] == n, s

            rows.append((n, "opsq: jobs.submit() -> AsyncResult.get() summary", timed(api)))

            pending: list = []

            def submit_only(p: str = pattern, pending: list = pending) -> None:
                pending.append(jobs.submit(jobs.JobSpec(command="true", pattern=p)))

            rows.append((n, "opsq: jobs.submit() returns the job id", timed(submit_only)))
            for r in pending:
                r.get(timeout=120)

            def cli(p: str = pattern) -> None:
                subprocess.run([sys.executable, "-m", "opsq.cli", "run", "true", "-t", p,
                                "--wait"], check=True, capture_output=True)

            rows.append((n, "opsq: `opsq run true --wait` (CLI process)", timed(cli)))
    finally:
        worker.stop()
        kept = ROOT_LOG
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(worker.log, kept)
        print(f"worker log: {kept}")
        fleet.down()
        conftest.drop_services()

    print(f"\n{RUNS} runs each after a warm-up; command `true`; seconds; "
          f"ratio = median / fresh-connection baseline median\n")
    print(f"{'hosts':>5}  {'measurement':<52} {'median':>8} {'p90':>8} {'ratio':>7}")
    base: dict[int, float] = {}
    for n, name, xs in rows:
        med = statistics.median(xs)
        base.setdefault(n, med)
        print(f"{n:>5}  {name:<52} {med:8.3f} {p90(xs):8.3f} {med / base[n]:7.2f}")


if __name__ == "__main__":
    main()
