"""The PostgreSQL connection budget: a worker that could open more connections than the
server has left does not start, and says why; one that fits starts and logs its figures;
``opsq daemons status`` reports this machine's total."""

from __future__ import annotations

import pytest
from conftest import Worker


def test_a_worker_over_the_budget_refuses_to_start_and_says_why(services):
    with pytest.raises(RuntimeError) as refused:
        Worker("overbudget", {"OPSQ_DB_POOL_OVERFLOW": "10000"}, concurrency=4)
    log = str(refused.value)
    assert "refusing to start: worker overbudget@" in log
    assert "(1 process x (pool 10 + overflow 10000 + 1 LISTEN)) may open up to 10011 " \
           "PostgreSQL connections" in log
    assert "max_connections" in log and "OPSQ_DB_RESERVE 10" in log


def test_a_prefork_worker_counts_each_process_with_its_small_pool(services):
    with pytest.raises(RuntimeError) as refused:
        Worker("prefork", concurrency=200, queues="opsq.budget-test", pool="prefork")
    assert "(201 processes x (pool 2 + overflow 2 + 1 LISTEN), one task at a time each) " \
           "may open up to 1005 PostgreSQL connections" in str(refused.value)


def test_a_worker_within_the_budget_starts_and_logs_it(worker):
    assert "(1 process x (pool 10 + overflow 30 + 1 LISTEN)) may open up to 41 PostgreSQL " \
           "connections; the server has" in worker.log.read_text()


def test_daemons_status_reports_this_machine_s_total(opsq_cli):
    out = opsq_cli("daemons", "status").stdout
    # The fleet node's full pool, the control node's three processes and beat small ones.
    assert "PostgreSQL: these daemons may open up to 61 PostgreSQL connections; the server " \
           "has" in out, out
