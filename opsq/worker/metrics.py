"""Prometheus metrics of opsq, read from PostgreSQL and RabbitMQ at each scrape: jobs and
host results by status, job and host durations (histograms), tasks waiting in each fleet
queue (a site's too), and what the sweeps recovered.

Everything is computed from the database (a scrape is a few aggregate queries, cancelled
past SCRAPE_TIMEOUT), so every process reports the same figures and nothing is lost when
one restarts. Served by ``opsq web`` at ``/metrics`` and by ``opsq metrics`` on a port of
its own where the console does not run. Flower's ``/metrics`` stays for Celery's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import text

from opsq.status import HostStatus, JobStatus
from opsq.store import db

logger = logging.getLogger(__name__)

#: Seconds a scrape's queries may take.
SCRAPE_TIMEOUT = 5.0
#: Upper bounds (seconds) of the duration histograms' buckets.
JOB_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
HOST_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)

_BY_STATUS = "SELECT status, count(*) AS n FROM {table} GROUP BY status"
_HISTOGRAM = """
    SELECT {buckets}, count(duration) AS n, coalesce(sum(duration), 0) AS total
    FROM {table} WHERE duration IS NOT NULL AND {finished}
"""
_PENDING_SITES = text("""
    SELECT DISTINCT site FROM host_results WHERE status = 'pending' AND site IS NOT NULL
""")
_RECOVERED = text("""
    SELECT count(*) FILTER (WHERE status = 'interrupted') AS interrupted,
           (SELECT count(*) FROM host_attempts) AS retried
    FROM host_results
""")


def _histogram(conn: Any, name: str, doc: str, table: str, finished: str,
               bounds: tuple[float, ...]) -> HistogramMetricFamily:
    buckets = ", ".join(f"count(*) FILTER (WHERE duration <= {b}) AS le{i}"
                        for i, b in enumerate(bounds))
    row = conn.execute(text(_HISTOGRAM.format(buckets=buckets, table=table,
                                              finished=finished))).one()._mapping
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], [(str(float(b)), row[f"le{i}"]) for i, b in enumerate(bounds)]
                      + [("+Inf", row["n"])], sum_value=float(row["total"]))
    return family


class OpsqCollector(Collector):
    """opsq's figures, read at each scrape."""

    def collect(self) -> Iterator[Any]:
        with db.get_engine().connect() as conn:
            conn.execute(text(f"SET statement_timeout = {int(SCRAPE_TIMEOUT * 1000)}"))
            try:
                yield from self._from_database(conn)
            finally:
                conn.execute(text("RESET statement_timeout"))
                conn.rollback()
        yield self._queues()

    def _from_database(self, conn: Any) -> Iterator[Any]:
        jobs = GaugeMetricFamily("opsq_jobs", "Jobs kept, by status.", labels=["status"])
        counts = dict(conn.execute(text(_BY_STATUS.format(table="jobs"))).all())
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        hosts = GaugeMetricFamily("opsq_host_results", "Host results kept, by status.",
                                  labels=["status"])
        counts = dict(conn.execute(text(_BY_STATUS.format(table="host_results"))).all())
        for status in HostStatus:
            hosts.add_metric([status.value], counts.get(status.value, 0))
        yield hosts
        yield _histogram(conn, "opsq_job_duration_seconds",
                         "Finished jobs' durations, submission to end.", "jobs",
                         "finished_at IS NOT NULL", JOB_BUCKETS)
        yield _histogram(conn, "opsq_host_duration_seconds",
                         "Finished hosts' run times.", "host_results",
                         "status NOT IN ('pending', 'running')", HOST_BUCKETS)
        row = conn.execute(_RECOVERED).one()
        yield CounterMetricFamily("opsq_hosts_interrupted",
                                  "Hosts the sweep closed after their worker died.",
                                  value=row.interrupted)
        yield CounterMetricFamily("opsq_host_retries", "Runs of hosts that were run again.",
                                  value=row.retried)
        self._sites = [r.site for r in conn.execute(_PENDING_SITES)]

    def _queues(self) -> GaugeMetricFamily:
        from opsq.app import app
        from opsq.queues import fleet_queue, queue_state

        waiting = GaugeMetricFamily("opsq_queue_tasks",
                                    "Tasks waiting in a fleet queue (each site's too).",
                                    labels=["queue"])
        try:
            with app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                for site in [None, *getattr(self, "_sites", [])]:
                    messages, _ = queue_state(conn, fleet_queue(site))
                    waiting.add_metric([fleet_queue(site)], messages)
        except Exception as exc:  # the broker away: the database's figures still count
            logger.warning("metrics: RabbitMQ not asked (%s)", exc)
        return waiting


def registry() -> CollectorRegistry:
    """A registry with opsq's collector alone (none of this process's own metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(OpsqCollector())
    return reg
