"""``make bench``: opsq's jobs timed side by side with what their parts allow, same run.

Starts its own throwaway database, vhost, sshd fleet and one fleet worker (as the tests
do), then times, each after a warm-up and reported as median and p90:

* 1,000 ``ansible_connection=local`` hosts running ``true``: ``jobs.submit()`` until
  ``AsyncResult.get()`` has the summary, against the floor: the same 1,000 ``sh -c true``
  from a Python thread pool as wide as the worker's;
* 100 SSH hosts over warm connections: submit -> ``get()`` against Fabric's
  ThreadingGroup over connections already open;
* 1 SSH host, warm: submit -> ``get()`` against one Fabric ``run`` over an open connection;
* ``opsq run true -t host001 --wait`` as a whole CLI process (its quick path, and the usual
  one) against a fresh ``python -c`` that opens a Fabric connection and runs ``true``;
* 10,000 local hosts, once, with the CPU each part spends per host result (fleet and
  control workers, RabbitMQ, PostgreSQL, the client; from ``/proc``) and the fleet
  worker's peak RSS; then the same hosts printing three distinct outputs, folded
  (``jobs.groups`` and ``opsq result --fold``);
* 1, 2 and 4 fleet workers, each in a network namespace of its own (a "machine" reaching
  RabbitMQ and PostgreSQL over a veth pair), on 4,000 local hosts: host results per
  second, and what each part spent;
* last, 100,000 local hosts, once: the workers' peak RSS, ``opsq status`` and ``opsq
  result --fold`` while and after it runs, the console's job page, and retention pruning
  it while other jobs are recorded.

The machine is noisy: compare the ratios, not the seconds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The tests' support modules import each other by name, as pytest's pythonpath has it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tests import conftest  # noqa: E402  (sets the throwaway environment before opsq)
from tests.cpumeter import CpuMeter  # noqa: E402

#: Where the worker's log is kept after the run (the scratch directory is removed).
ROOT_LOG = conftest.ROOT / "var" / "bench-worker.log"
#: Runs per measurement (after one warm-up run).
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
#: SSH hosts in the fleet; local hosts in the two local jobs.
SSH_HOSTS = int(os.environ.get("BENCH_SSH_HOSTS", "100"))
LOCAL_HOSTS = int(os.environ.get("BENCH_LOCAL_HOSTS", "1000"))
HUGE_HOSTS = int(os.environ.get("BENCH_HUGE_HOSTS", "10000"))
#: Local hosts of each job of the 1/2/4 workers runs, and of the largest job.
SCALE_HOSTS = int(os.environ.get("BENCH_SCALE_HOSTS", "4000"))
LARGEST_HOSTS = int(os.environ.get("BENCH_LARGEST_HOSTS", "100000"))
#: Fleet workers side by side, each in a namespace of its own.
SCALE_WORKERS = (1, 2, 4)
#: Which measurements to run (all by default): local, ssh, one, cli, huge, fold, scale,
#: largest.
GROUPS = set(os.environ.get(
    "BENCH_GROUPS", "local,ssh,one,cli,huge,fold,scale,largest").split(","))
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


def huge_job(rows: Rows, notes: list[str], meter: CpuMeter, worker_pid: int) -> None:
    """One very large job, with the CPU each part spent on it."""
    huge = str(local_inventory(conftest.WORK / "huge.ini", HUGE_HOSTS))
    meter.start()
    job("local", huge, HUGE_HOSTS)
    wall, spent = meter.stop()
    rows.append((f"{HUGE_HOSTS} local hosts", "opsq: submit -> AsyncResult.get() (once)",
                 [wall], "info"))
    notes.append(cpu_table(f"CPU per host result, {HUGE_HOSTS}-host job ({wall:.1f} s, "
                           f"{os.cpu_count()} cores)", spent, HUGE_HOSTS, wall))
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


def cpu_table(title: str, spent: dict[str, float], results: int, wall: float) -> str:
    """Each part's CPU per host result, and the results per second one core of it carries."""
    lines = [title, f"  {'part':<28} {'CPU s':>8} {'ms/result':>10} {'results/core-s':>15}"]
    for part, cpu in spent.items():
        per = cpu / results
        carry = f"{1 / per:15,.0f}" if per > 0 else f"{'-':>15}"
        lines.append(f"  {part:<28} {cpu:8.2f} {per * 1000:10.3f} {carry}")
    busy = spent.get("machine (all cores)", 0.0)
    lines.append(f"  machine busy {busy / (wall * (os.cpu_count() or 1)):.0%} of "
                 f"{os.cpu_count()} cores over {wall:.1f} s; {results / wall:,.0f} results/s")
    return "\n".join(lines)


def scale_runs(rows: Rows, notes: list[str], fleet, control_pid: int) -> None:
    """1, 2 and 4 fleet workers side by side, each in a network namespace of its own."""
    sys.modules.setdefault("conftest", conftest)  # netsites imports it by that name
    from netsites import NetSite

    inv = str(local_inventory(conftest.WORK / "scale.ini", SCALE_HOSTS))
    sites = [NetSite(f"m{i}", 20 + i, fleet, n=0) for i in range(1, max(SCALE_WORKERS) + 1)]
    workers: list = []
    forwarders = [f.pid for site in sites for f in site.forwarders]
    try:
        base = None
        for n in SCALE_WORKERS:
            while len(workers) < n:
                workers.append(sites[len(workers)].worker(None, concurrency=64))
            meter = CpuMeter([w.proc.pid for w in workers], control_pid,
                             {"veth forwarders (bench)": forwarders})
            job("local", inv, SCALE_HOSTS)  # warm-up: every worker's pool and connections
            meter.start()
            times = timed(lambda: job("local", inv, SCALE_HOSTS), runs=3)
            wall, spent = meter.stop()
            rate = SCALE_HOSTS / statistics.median(times)
            base = base or rate
            rows.append((f"{SCALE_HOSTS} hosts, namespaces", f"{n} fleet worker(s): "
                         f"{rate:,.0f} results/s, x{rate / base:.2f}", times, "info"))
            notes.append(cpu_table(f"CPU per host result, {n} fleet worker(s) in namespaces, "
                                   f"3 jobs of {SCALE_HOSTS} hosts", spent,
                                   3 * SCALE_HOSTS, wall))
    finally:
        for w in workers:
            w.stop()
        for site in sites:
            site.close()


def cli_seconds(*args: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "opsq.cli", *args], capture_output=True,
                         text=True, check=False)
    took = time.perf_counter() - t0
    # 2: ``result`` of a job still running, after printing what is known so far
    assert out.returncode in (0, 1, 2) and out.stdout, out.stderr
    return took


def largest_job(rows: Rows, notes: list[str]) -> None:
    """LARGEST_HOSTS local hosts in one job, on a fresh fleet worker: memory, the commands
    that look at it while and after it runs, its console page, and pruning it."""
    from opsq import jobs

    group = f"{LARGEST_HOSTS} local hosts"
    inv = str(local_inventory(conftest.WORK / "largest.ini", LARGEST_HOSTS))
    # Its local commands would otherwise take both cores from everything else on this
    # machine (256 processes at once): the worker and its commands run at nice 19 with 32
    # host threads, standing in for fleet workers on machines of their own.
    worker = conftest.Worker("benchlargest", {"OPSQ_HOST_CONCURRENCY": "32"},
                             queues="opsq.fleet", prefix=["nice", "-n", "19"])
    try:
        t0 = time.perf_counter()
        job_id = jobs.submit(jobs.JobSpec(command="echo $(($$ % 3))", pattern="local",
                                          inventory=inv)).id
        submitted = time.perf_counter() - t0
        while jobs.summary(job_id).done < LARGEST_HOSTS // 10:
            time.sleep(0.5)
        during = {what: [cli_seconds(*args) for _ in range(3)]
                  for what, args in (("status", ("status", job_id)),
                                     ("fold", ("result", job_id, "--fold")))}
        still = not jobs.summary(job_id).status.finished
        s = jobs.wait(job_id, timeout=3600)
        wall = time.perf_counter() - t0
        assert s.total == LARGEST_HOSTS and s.succeeded, s.counts
        rows.append((group, f"opsq: submit() returns ({'tasks published'})", [submitted],
                     "info"))
        rows.append((group, "opsq: submit -> finished (once)", [wall], "info"))
        for what, target in (("status", 1.0), ("fold", 2.0)):
            args = ("status", job_id) if what == "status" else ("result", job_id, "--fold")
            label = "`opsq status JOB`" if what == "status" else "`opsq result JOB --fold`"
            rows.append((group, f"{label} while it runs (target < {target:g} s)"
                         + ("" if still else " [ended first]"), during[what], "info"))
            rows.append((group, f"{label} after (target < {target:g} s)",
                         [cli_seconds(*args) for _ in range(3)], "info"))
        notes.append(f"fleet worker peak RSS over the {LARGEST_HOSTS}-host job: "
                     f"{rss_peak_mb(worker.proc.pid):.0f} MB (target < 500 MB)")
        console_page(rows, group, job_id)
        prune_while_recording(notes, job_id)
    finally:
        worker.stop()


def console_page(rows: Rows, group: str, job_id: str) -> None:
    """The job's console page, as a viewer gets it: its time and size (it is paged)."""
    import re

    from webtools import Web, make_account

    account = make_account("viewer", "bench")
    web = Web(conftest.WORK / "web.log")
    try:
        with web.client() as c:
            csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
            c.post("/login", data={"csrf": csrf, "name": account.name,
                                   "password": account.password})

            def page() -> int:
                r = c.get(f"/jobs/{job_id}")
                assert r.status_code == 200, r.status_code
                return len(r.content)

            rows.append((group, f"console job page, logged in ({page() / 1024:.0f} KiB)",
                         timed(page, runs=3), "info"))
    finally:
        web.stop()


def prune_while_recording(notes: list[str], job_id: str) -> None:
    """Retention deleting the large job while a client records small jobs: how long the
    longest statement held its locks, and the slowest recording meanwhile."""
    import threading

    from sqlalchemy import event, text

    from opsq import jobs
    from opsq.store import db
    from opsq.worker import maintenance_tasks

    small = str(local_inventory(conftest.WORK / "small.ini", 1))
    with db.session_scope() as session:
        session.execute(text("UPDATE jobs SET submitted_at = now() - interval '400 days' "
                             "WHERE id = :j"), {"j": job_id})
    statements: list[float] = []
    started: dict[int, float] = {}

    def before(conn, cursor, statement, *_):
        started[id(cursor)] = time.perf_counter()

    def after(conn, cursor, statement, *_):
        if statement.lstrip().startswith("DELETE"):
            statements.append(time.perf_counter() - started.pop(id(cursor), 0.0))

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    waits: list[float] = []
    done = threading.Event()

    def record() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            jobs.create(jobs.JobSpec(command="true", pattern="local", inventory=small))
            waits.append(time.perf_counter() - t0)
            time.sleep(0.05)

    probe = threading.Thread(target=record)
    probe.start()
    t0 = time.perf_counter()
    try:
        report = maintenance_tasks.prune(days=300)
    finally:
        took = time.perf_counter() - t0
        done.set()
        probe.join()
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    assert report["jobs_deleted"] >= 1, report
    notes.append(
        f"retention of the {LARGEST_HOSTS}-host job: {took:.1f} s in {len(statements)} "
        f"statements, the longest {max(statements):.2f} s; {len(waits)} jobs recorded "
        f"meanwhile, the slowest in {max(waits) * 1000:.0f} ms "
        f"(median {statistics.median(waits) * 1000:.0f} ms)")


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
    usual = {**os.environ, "OPSQ_QUICK": "0"}  # the same through Celery and SQLAlchemy
    rows.append((group, "  the same with OPSQ_QUICK=0 (the usual path)",
                 timed(lambda: subprocess.run(
                     [sys.executable, "-m", "opsq.cli", "run", "true", "-t", h.name,
                      "--wait"], check=True, capture_output=True, env=usual)), "info"))


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
        print("\n" + note)


def main() -> None:
    conftest.FLEET_SUBNET = "127.0.3"
    conftest.create_services()
    from devtools.devfleet import Fleet
    from opsq.app import CONTROL_QUEUES, FLEET_QUEUE

    fleet = Fleet(conftest.FLEET_DIR, n=SSH_HOSTS, subnet=conftest.FLEET_SUBNET)
    fleet.up()
    # As deploy/opsq.env runs them: a fleet node (threads) and a control node (prefork).
    worker = conftest.Worker("benchworker", queues=FLEET_QUEUE)
    control = conftest.Worker("benchcontrol", queues=CONTROL_QUEUES, concurrency=2,
                              pool="prefork")
    rows: Rows = []
    notes: list[str] = []
    parts: list[tuple[set[str], Callable[[], None]]] = [
        ({"local"}, lambda: local_jobs(rows)),
        ({"ssh", "one"}, lambda: ssh_jobs(rows, fleet)),
        ({"cli"}, lambda: cli_runs(rows, fleet)),
        ({"huge"}, lambda: huge_job(rows, notes, CpuMeter([worker.proc.pid], control.proc.pid),
                                    worker.proc.pid)),
        # from here on, the fleet workers are the namespaces' or fresh ones
        (set(), worker.stop),
        ({"scale"}, lambda: scale_runs(rows, notes, fleet, control.proc.pid)),
        ({"largest"}, lambda: largest_job(rows, notes)),
    ]
    try:
        for wanted, part in parts:
            if wanted and not wanted & GROUPS:
                continue
            try:
                part()
            except Exception:  # noqa: BLE001  (one part failing still reports the others)
                notes.append(f"FAILED {sorted(wanted)}:\n{traceback.format_exc()}")
    finally:
        worker.stop()
        control.stop()
        ROOT_LOG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(worker.log, ROOT_LOG)
        print(f"worker log: {ROOT_LOG}")
        fleet.down()
        conftest.drop_services()
    report(rows, notes)
    if any(note.startswith("FAILED") for note in notes):
        sys.exit(1)


if __name__ == "__main__":
    main()
