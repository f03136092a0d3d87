"""``make soak SECONDS=3600``: does the fleet worker's memory stay flat under steady load?

Starts its own throwaway database, vhost, 20 sshd hosts and one fleet worker (as the tests
do), then keeps 4 jobs in flight until SECONDS have passed: plain jobs on every host,
rolling jobs (5 hosts a batch) and jobs cancelled while their hosts run, in turn. Every
10 s it samples the worker's resident memory (VmRSS) into ``var/soak.csv``.

At the end it prints jobs, host results, the RSS once warmed up (the median of the samples
of the first 10 % of the run, at least 2 minutes in) and at the end (median of the last
10 %), and fails (exit 1) when the end is more than 10 % above the warmed-up figure.

``SOAK_TRACE=1`` starts the worker with ``tracemalloc`` and prints, at the end, the source
lines whose allocations grew most since the warm-up: where memory is kept, when it is.
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests import conftest  # noqa: E402  (sets the throwaway environment before opsq)

SECONDS = float(os.environ.get("SOAK_SECONDS", "3600"))
HOSTS = int(os.environ.get("SOAK_HOSTS", "20"))
IN_FLIGHT = 4
SAMPLE_EVERY = 10.0
#: Allowed growth of the worker's RSS from warmed up to the end.
MAX_GROWTH = 0.10
TRACE = os.environ.get("SOAK_TRACE") == "1"
CSV = conftest.ROOT / "var" / "soak.csv"
TRACE_DIR = conftest.WORK / "trace"

#: Loaded by the traced worker's interpreter (``sitecustomize``): snapshots tracemalloc at
#: the warm-up mark and at the end, when the files named in the environment appear.
SITECUSTOMIZE = '''
import os, threading, time, tracemalloc
from pathlib import Path

def _watch(d):
    done = set()
    while True:
        for name in ("warm", "end"):
            if name not in done and (d / (name + ".ask")).exists():
                tracemalloc.take_snapshot().dump(str(d / (name + ".snap")))
                done.add(name)
        time.sleep(1)

if os.environ.get("SOAK_TRACE_DIR") and "celery" in " ".join(__import__("sys").argv):
    tracemalloc.start(8)
    threading.Thread(target=_watch, args=(Path(os.environ["SOAK_TRACE_DIR"]),),
                     daemon=True).start()
'''


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Load:
    """IN_FLIGHT threads, each submitting a job, waiting for it, and again."""

    def __init__(self, until: float) -> None:
        self.until = until
        self.jobs = self.results = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def one(self, turn: int) -> None:
        from opsq import jobs

        kind = turn % 3
        if kind == 0:
            spec = jobs.JobSpec(command="echo $((RANDOM)); uname -n", pattern="fleet")
        elif kind == 1:
            spec = jobs.JobSpec(command="echo rolling", pattern="fleet", batch_size=5)
        else:
            spec = jobs.JobSpec(command="sleep 5", pattern="fleet")
        result = jobs.submit(spec)
        if kind == 2:
            time.sleep(0.3)
            jobs.cancel(result.id)
        s = jobs.wait(result.id, timeout=120)
        with self.lock:
            self.jobs += 1
            self.results += s.total

    def loop(self, index: int) -> None:
        turn = index
        while time.monotonic() < self.until:
            try:
                self.one(turn)
            except Exception as exc:  # noqa: BLE001  (counted and shown, the soak goes on)
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(1)
            turn += 1


def trace_report() -> None:
    import tracemalloc

    warm = tracemalloc.Snapshot.load(str(TRACE_DIR / "warm.snap"))
    end = tracemalloc.Snapshot.load(str(TRACE_DIR / "end.snap"))
    print("\nallocations that grew most from the warm-up to the end (tracemalloc):")
    for stat in end.compare_to(warm, "traceback")[:15]:
        print(f"  {stat.size_diff / 1024:+9.0f} KiB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-6:]:
            print("     " + line)


def ask_snapshot(name: str) -> None:
    (TRACE_DIR / f"{name}.ask").touch()
    deadline = time.monotonic() + 120
    while not (TRACE_DIR / f"{name}.snap").exists() and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(2)  # the dump is written in place: let it finish


def main() -> int:
    conftest.FLEET_SUBNET = "127.0.4"
    conftest.create_services()
    from devtools.devfleet import Fleet

    fleet = Fleet(conftest.FLEET_DIR, n=HOSTS, subnet=conftest.FLEET_SUBNET)
    fleet.up()
    env = {}
    if TRACE:
        TRACE_DIR.mkdir(parents=True, exist_ok=True)
        (TRACE_DIR / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = {"PYTHONPATH": f"{TRACE_DIR}:{os.environ.get('PYTHONPATH', '')}",
               "SOAK_TRACE_DIR": str(TRACE_DIR)}
    worker = conftest.Worker("soakworker", env)
    pid = worker.proc.pid
    start = time.monotonic()
    load = Load(start + SECONDS)
    threads = [threading.Thread(target=load.loop, args=(i,), daemon=True)
               for i in range(IN_FLIGHT)]
    for t in threads:
        t.start()
    samples: list[tuple[float, float, int, int]] = []
    warm_mark = max(120.0, SECONDS * 0.1)
    warm_asked = False
    CSV.parent.mkdir(parents=True, exist_ok=True)
    try:
        with CSV.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["seconds", "rss_mb", "jobs", "host_results"])
            while time.monotonic() - start < SECONDS:
                time.sleep(SAMPLE_EVERY)
                elapsed = time.monotonic() - start
                row = (round(elapsed), round(rss_mb(pid), 1), load.jobs, load.results)
                samples.append(row)
                writer.writerow(row)
                out.flush()
                if TRACE and not warm_asked and elapsed >= warm_mark:
                    ask_snapshot("warm")
                    warm_asked = True
        for t in threads:
            t.join(150)
        if TRACE:
            ask_snapshot("end")
    finally:
        worker.stop()
        shutil.copy(worker.log, conftest.ROOT / "var" / "soak-worker.log")
        if TRACE and (TRACE_DIR / "end.snap").exists():
            trace_report()
        fleet.down()
        conftest.drop_services()
    tail = max(1, len(samples) // 10)
    warm = [r for _, r, _, _ in (s for s in samples if s[0] >= warm_mark)][:tail]
    end = [r for _, r, _, _ in samples[-tail:]]
    warm_mb, end_mb = statistics.median(warm or end), statistics.median(end)
    growth = end_mb / warm_mb - 1
    print(f"\nsoak {SECONDS:.0f} s, {IN_FLIGHT} jobs in flight on {HOSTS} SSH hosts: "
          f"{load.jobs} jobs, {load.results} host results, {len(load.errors)} errors")
    for e in sorted(set(load.errors))[:10]:
        print(f"  error: {e}")
    print(f"fleet worker RSS: {samples[0][1]:.0f} MB at {samples[0][0]} s, "
          f"{warm_mb:.0f} MB warmed up ({warm_mark:.0f} s on), {end_mb:.0f} MB at the end, "
          f"peak {max(r for _, r, _, _ in samples):.0f} MB: {growth:+.1%} "
          f"(allowed +{MAX_GROWTH:.0%}); samples in {CSV}")
    return 0 if growth <= MAX_GROWTH and not load.errors else 1


if __name__ == "__main__":
    sys.exit(main())
