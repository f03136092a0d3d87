"""Job-end notifications against a real HTTP receiver on loopback, a real worker, jobs
run on the test fleet, PostgreSQL and RabbitMQ."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import free_port, wait_until
from jobtools import run_job, taskmeta
from sqlalchemy import text

from opsq import jobs, schedules
from opsq.jobs import webhooks
from opsq.store import db

pytestmark = pytest.mark.usefixtures("worker")

SECRET = os.environ["OPSQ_WEBHOOK_SECRET"].encode()
#: Seconds the receiver takes to give its first answer: a job that waited for its
#: notification would come back at least this late.
SLOW_ANSWER = 2.0


@dataclass
class Hit:
    at: float
    answered_at: float
    headers: dict[str, str]
    body: bytes
    signed: bool


@dataclass
class Receiver:
    """An HTTP server that checks each POST's signature and answers ``codes`` in turn
    (the last one from then on); a request with a bad signature gets 401."""

    codes: list[int]
    first_delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(self.headers.get("X-Opsq-Signature", ""),
                                             expected)
                n = len(receiver.hits)
                if n == 0:
                    time.sleep(receiver.first_delay)
                code = receiver.codes[min(n, len(receiver.codes) - 1)] if signed else 401
                receiver.hits.append(Hit(at, time.monotonic(), dict(self.headers), body,
                                         signed))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/opsq?token=t0k"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    started: list[Receiver] = []

    def start(codes: list[int], first_delay: float = 0.0) -> Receiver:
        started.append(Receiver(codes, first_delay).start())
        return started[-1]

    yield start
    for r in started:
        r.stop()


def attempts(job_id: str) -> list[tuple]:
    """The job's attempts that have an outcome (a row with neither a status nor an error
    is an attempt under way: claimed, its request in flight)."""
    with db.session_scope() as s:
        return [tuple(r) for r in s.execute(text(
            "SELECT url, attempt, status_code, delivered, error IS NULL FROM notifications "
            "WHERE job_id = :j AND (status_code IS NOT NULL OR error IS NOT NULL) "
            "ORDER BY attempt"), {"j": job_id})]


def job_count() -> int:
    with db.session_scope() as s:
        return s.scalar(text("SELECT count(*) FROM jobs"))


def test_summary_is_signed_retried_until_delivered_and_does_not_hold_the_job(receiver,
                                                                            worker):
    rec = receiver([500, 500, 200], first_delay=SLOW_ANSWER)
    summary = run_job("true", "fleet", notify=[rec.url])
    job_id = summary["job_id"]
    assert summary["succeeded"]
    # The callback's own record (get() answers from the job row already).
    wait_until(lambda: taskmeta(job_id), 10, "the job's callback to store its result")
    stored = time.monotonic()

    wait_until(lambda: len(attempts(job_id)) == 3, 30, "three recorded attempts")
    assert attempts(job_id) == [(rec.url, 1, 500, False, False), (rec.url, 2, 500, False, False),
                                (rec.url, 3, 200, True, True)]
    assert len(rec.hits) == 3
    # The job's callback was done before the receiver had given even its first answer.
    assert stored < rec.hits[0].answered_at
    for hit in rec.hits:
        assert hit.signed, hit.headers
        assert json.loads(hit.body) == summary
        assert hit.headers["X-Opsq-Job"] == job_id
        assert hit.headers["Content-Type"] == "application/json"
        assert hit.headers["User-Agent"] == "opsq"
    assert len({h.headers["X-Opsq-Delivery"] for h in rec.hits}) == 3
    # Back-off: the pauses double from OPSQ_WEBHOOK_RETRY_BASE (0.5 s here).
    assert rec.hits[2].at - rec.hits[1].answered_at >= 0.9

    # The callback sent again (a redelivery, the sweep) notifies nobody twice: its
    # notify task runs, and finds the URL delivered.
    ended = f"opsq.notify[{webhooks.task_id(job_id, 0)}] succeeded"
    wait_until(lambda: worker.log.read_text().count(ended) == 1, 15, "the task's end")
    jobs.callback_signature(job_id).delay([])
    wait_until(lambda: worker.log.read_text().count(ended) == 2, 30,
               "the notify task of the callback sent again")
    assert len(rec.hits) == 3 and len(attempts(job_id)) == 3


def test_a_receiver_that_never_answers_2xx_is_given_up_within_the_hour():
    delays = []
    while (d := webhooks.retry_delay(len(delays) + 1, 5.0)) is not None:
        delays.append(d)
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert max(delays) == webhooks.RETRY_DELAY_MAX == 600.0
    assert sum(delays) <= 3600 < sum(delays) + 600


@pytest.mark.parametrize("bad", ["ftp://x", "not a url", "http://", "https://u:pw@example.com/",
                                 "http://example.com/a b"])
def test_a_bad_url_is_refused_before_anything_is_written(opsq_cli, bad):
    before = job_count()
    out = opsq_cli("run", "true", "-t", "fleet", "--notify", "http://example.com/ok",
                   "--notify", bad)
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and "--notify" in out.stderr, out.stderr
    assert job_count() == before


def test_more_than_ten_urls_are_refused(opsq_cli):
    before = job_count()
    many = [a for i in range(webhooks.MAX_URLS + 1)
            for a in ("--notify", f"http://example.com/{i}")]
    out = opsq_cli("run", "true", "-t", "fleet", *many)
    assert out.returncode == 2 and "at most 10" in out.stderr, out.stderr
    assert job_count() == before


def test_a_schedule_passes_its_urls_on_to_the_jobs_it_fires(opsq_cli, receiver):
    rec = receiver([200])
    name = "notify-sched"
    bad = opsq_cli("schedule", "add", name, "--every", "1d", "-t", "fleet",
                   "--notify", "ftp://x", "--", "true")
    assert bad.returncode == 2 and "--notify" in bad.stderr, bad.stderr
    assert name not in [s.name for s in schedules.all_schedules()]
    try:
        out = opsq_cli("schedule", "add", name, "--every", "1d", "-t", "fleet",
                       "--notify", rec.url, "--", "true")
        assert out.returncode == 0, out.stderr
        assert schedules.get(name).kwargs["notify"] == [rec.url]

        job_id = opsq_cli("schedule", "run-now", name).stdout.strip()
        assert jobs.wait(wait_until(lambda: jobs.job_status(job_id) and job_id, 15,
                                    "the job"), timeout=30).succeeded
        assert _notify_of(job_id) == [rec.url]
        wait_until(lambda: attempts(job_id), 15, "the notification")
        assert [h.headers["X-Opsq-Job"] for h in rec.hits] == [job_id]

        other = "http://127.0.0.1:9/elsewhere"
        assert opsq_cli("schedule", "edit", name, "--notify", other).returncode == 0
        assert schedules.get(name).kwargs["notify"] == [other]
        assert opsq_cli("schedule", "edit", name, "--notify", "ftp://x").returncode == 2
        assert schedules.get(name).kwargs["notify"] == [other]
        assert opsq_cli("schedule", "edit", name, "--no-notify").returncode == 0
        assert "notify" not in schedules.get(name).kwargs
    finally:
        opsq_cli("schedule", "rm", name)


def _notify_of(job_id: str) -> list[str]:
    with db.session_scope() as s:
        return s.scalar(text("SELECT notify FROM jobs WHERE id = :j"), {"j": job_id})
