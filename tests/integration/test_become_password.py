"""The password typed at ``opsq run -K`` reaches every host of the job at once: read from
the broker once per worker process (the job's other hosts wait for it), and found by a
second process while the first holds it between get and reject. Uses the run's own
RabbitMQ vhost."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT

#: Hosts of one job reading its password at once in one process.
HOSTS = 16
#: Jobs read one after the other (each a fresh queue and an empty cache).
ROUNDS = 20
#: Seconds ahead the two processes are told to start reading together.
PROCESS_START_DELAY = 3.0

#: Reads a job's password from HOSTS threads at a given wall-clock time; prints one line
#: per thread: the password or the error.
READER = """
import sys, threading, time

from opsq.jobs import become_password
from opsq.app import app
job_id, start, hosts = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
out, lock = [], threading.Lock()
def host():
    time.sleep(max(start - time.time(), 0))
    try:
        got = become_password.read(app, job_id)
    except Exception as exc:
        got = 'ERROR ' + repr(exc)
    with lock:
        out.append(got)
threads = [threading.Thread(target=host) for _ in range(hosts)]
for t in threads: t.start()
for t in threads: t.join()
print('\\n'.join(out))
"""


class CountingApp:
    """The Celery app, counting the broker connections opened to read a password."""

    def __init__(self, app) -> None:
        self.app = app
        self.reads = 0
        self._lock = threading.Lock()

    def connection_for_read(self):
        with self._lock:
            self.reads += 1
        return self.app.connection_for_read()


@pytest.fixture
def job_password(services):
    """Hands a password over for a new job id; deletes what it handed over at the end."""
    from opsq.app import app
    from opsq.jobs import become_password

    made: list[str] = []

    def make() -> tuple[str, str]:
        job_id, password = secrets.token_hex(8), secrets.token_urlsafe(12)
        become_password.hand_over(app, job_id, password)
        made.append(job_id)
        return job_id, password

    yield make
    for job_id in made:
        become_password.forget(app, job_id)


def test_every_host_of_a_job_gets_the_password_read_once(job_password):
    from opsq.app import app

    failed: list[str] = []
    reads: list[int] = []
    for _ in range(ROUNDS):
        job_id, password = job_password()
        counting = CountingApp(app)
        failed += [g for g in _read_at_once(counting, job_id) if g != password]
        reads.append(counting.reads)
    assert not failed, (f"{len(failed)} of {ROUNDS * HOSTS} hosts without the password "
                        f"(broker reads per job: {reads}): {failed[:3]}")
    assert reads == [1] * ROUNDS, f"broker reads per job: {reads}"


def _read_at_once(app, job_id: str) -> list[str]:
    """What HOSTS threads starting together read as the job's password (or the error)."""
    from opsq.jobs import become_password

    start = threading.Barrier(HOSTS)
    got: list[str] = []

    def host() -> None:
        start.wait()
        try:
            got.append(become_password.read(app, job_id))
        except Exception as exc:  # noqa: BLE001 - the test counts them
            got.append(f"ERROR {exc!r}")

    threads = [threading.Thread(target=host) for _ in range(HOSTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_a_host_waits_while_another_process_holds_the_password(job_password):
    from opsq.app import app
    from opsq.jobs import become_password

    job_id, password = job_password()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        held = channel.basic_get(become_password.queue_for(job_id).name, no_ack=False)
        assert held is not None
        threading.Timer(0.5, channel.basic_reject, (held.delivery_tag,),
                        {"requeue": True}).start()
        began = time.monotonic()
        assert become_password.read(app, job_id) == password
        assert time.monotonic() - began >= 0.4
        time.sleep(0.1)  # the timer's reject is done before the channel closes


def test_two_processes_read_one_jobs_password_at_once(job_password):
    for _ in range(3):
        job_id, password = job_password()
        start = time.time() + PROCESS_START_DELAY
        procs = [subprocess.Popen([sys.executable, "-c", READER, job_id, str(start),
                                   str(HOSTS)], cwd=ROOT, env=dict(os.environ),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
            lines = out.splitlines()
            assert lines == [password] * HOSTS, [x for x in lines if x != password][:3]


def test_a_password_gone_from_the_broker_is_an_error_at_once(services):
    from opsq.app import app
    from opsq.errors import OpsqError
    from opsq.jobs import become_password

    began = time.monotonic()
    with pytest.raises(OpsqError, match="no longer held by the broker"):
        become_password.read(app, secrets.token_hex(8))  # no such queue
    assert time.monotonic() - began < become_password.EMPTY_RETRY_SECONDS
