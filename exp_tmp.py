import subprocess, time, sys
from tests import conftest
conftest.create_services()
from opsq import jobs, db
from sqlalchemy import text
from tests.bench import local_inventory
w = conftest.Worker("profworker")
try:
    inv = str(local_inventory(conftest.WORK / "l.ini", 1000))
    for _ in range(6):
        t=time.perf_counter()
        r = jobs.submit(jobs.JobSpec(command="true", pattern="local", inventory=inv))
        t1=time.perf_counter()
        r.get(timeout=60)
        t2=time.perf_counter()
        with db.get_engine().connect() as c:
            j = c.execute(text("SELECT extract(epoch from started_at - submitted_at) s, extract(epoch from finished_at - started_at) r FROM jobs WHERE id=:j"), {"j": r.id}).one()
            nl = c.execute(text("SELECT count(*) FROM leases")).scalar()
        kids = subprocess.run(["ps","--ppid",str(w.proc.pid),"--no-headers"],capture_output=True,text=True).stdout.count("\n")
        print(f"submit {t1-t:.3f} total {t2-t:.3f} db: queued->started {j.s:.3f} started->finished {j.r:.3f} leases {nl} children {kids}")
    print(subprocess.run(["grep","-c","run_hosts.*succeeded",str(w.log)],capture_output=True,text=True).stdout)
finally:
    w.stop(); conftest.drop_services()
