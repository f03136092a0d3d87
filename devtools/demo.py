"""``make demo``: one real job across the local fleet, its results, and the SQL to see them.

Expects the fleet (``make fleet-up``) and the worker daemons (``make start``) to be up;
the Makefile brings both up first.
"""

from __future__ import annotations

import sys
import time

from sqlalchemy import text

from opsq import jobs
from opsq.app import app
from opsq.store import db

#: Seconds to wait for the worker daemons to answer a ping.
WORKER_WAIT = 60
#: Seconds the demo job may take before the demo gives up.
JOB_WAIT = 120
DEMO_COMMAND = "echo \"$(id -un)@$(echo $SSH_CONNECTION | cut -d' ' -f3)\"; uptime"
QUERIES = [
    ("each host's result",
     "SELECT host, status, exit_code, round(duration::numeric, 3) AS seconds,\n"
     "       left(split_part(stdout, E'\\n', 1), 40) AS stdout\n"
     "FROM host_results WHERE job_id = :job_id ORDER BY host"),
    ("the job",
     "SELECT id, status, host_count, ok_count, failed_count, round(duration::numeric, 3) AS s\n"
     "FROM jobs WHERE id = :job_id"),
]


def _wait_for_workers() -> None:
    deadline = time.monotonic() + WORKER_WAIT
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0) or []
        names = {name for reply in replies for name in reply}
        if any(n.startswith("fleet@") for n in names):
            print(f"workers answering: {', '.join(sorted(names))}")
            return
    sys.exit("no fleet worker answered; see var/log/fleet*.log")


def main() -> None:
    _wait_for_workers()
    print(f"\n$ opsq run '{DEMO_COMMAND}' -t fleet --wait")
    started = time.monotonic()
    result = jobs.submit(jobs.JobSpec(command=DEMO_COMMAND, pattern="fleet"))
    print(f"job {result.id} submitted in {time.monotonic() - started:.3f}s")
    summary = jobs.wait(result.id, timeout=JOB_WAIT,
                        on_progress=lambda d, t: print(f"  {d}/{t} hosts done"))
    print()
    from opsq.cli import _print_result

    _print_result(summary, as_json=False)
    print("\nThe same, in PostgreSQL (psql -h 127.0.0.1 -U postgres opsq):")
    with db.get_engine().connect() as conn:
        for title, sql in QUERIES:
            print(f"\n-- {title}\n{sql.replace(':job_id', repr(result.id))};")
            res = conn.execute(text(sql), {"job_id": result.id})
            cols = list(res.keys())
            data = [[str(v) for v in row] for row in res]
            widths = [max(len(c), *(len(r[i]) for r in data)) for i, c in enumerate(cols)]
            print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
            for r in data:
                print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"\nLater: opsq result {result.id}   |   make run CMD='uptime' TARGET='fleet:!host03'")
    sys.exit(0 if summary.succeeded else 1)


if __name__ == "__main__":
    main()
