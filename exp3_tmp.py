import time, cProfile, pstats
from tests import conftest
conftest.create_services()
from opsq import jobs
from tests.bench import local_inventory
inv = str(local_inventory(conftest.WORK / "l.ini", 1000))
for _ in range(3): jobs.submit(jobs.JobSpec(command="true", pattern="local", inventory=inv))
cProfile.run('for _ in range(5): jobs.submit(jobs.JobSpec(command="true", pattern="local", inventory=inv))', '/tmp/sub.prof')
pstats.Stats('/tmp/sub.prof').sort_stats('cumulative').print_stats(25)
conftest.drop_services()
