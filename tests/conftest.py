"""Test fixtures against the real thing, isolated per run.

Each run gets a throwaway PostgreSQL database and RabbitMQ vhost, a fleet of real
``sshd`` hosts on its own loopback subnet, and real Celery workers started as
subprocesses with the same environment. The environment is set here, before anything
imports opsq, because opsq reads its settings once per process.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT

RUN_ID = f"{os.getpid()}_{secrets.token_hex(3)}"
TEST_DB = f"opsq_test_{RUN_ID}"
TEST_VHOST = f"opsq_test_{RUN_ID}"
WORK = Path(tempfile.gettempdir()) / f"opsq-test-{RUN_ID}"  # made by create_services()
FLEET_DIR = WORK / "fleet"
#: Loopback subnet of the test fleet, apart from the demo fleet's 127.0.1.x (another
#: subnet lets two runs of the suite share the machine).
FLEET_SUBNET = os.environ.get("OPSQ_TEST_FLEET_SUBNET", "127.0.2")
FLEET_SIZE = 6
#: Seconds to wait for a worker to answer a ping after it is started.
WORKER_START_TIMEOUT = 60

os.environ.update({
    "OPSQ_DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{TEST_DB}",
    "OPSQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{TEST_VHOST}",
    "OPSQ_INVENTORY": str(FLEET_DIR / "inventory.yml"),
    "OPSQ_KNOWN_HOSTS": str(FLEET_DIR / "known_hosts"),
    # The fleet user's sudo password, as the fleet writes it (for --become).
    "OPSQ_BECOME_PASSWORD_FILE": str(FLEET_DIR / "become-password"),
    "OPSQ_CONNECT_TIMEOUT": "3",
    "OPSQ_COMMAND_TIMEOUT": "60",
    "OPSQ_CONNECT_RETRIES": "1",
    "OPSQ_RETRY_BACKOFF": "0.2",
    # A lost worker is noticed this many seconds after its last lease renewal.
    "OPSQ_LEASE_TTL": "3",
    "OPSQ_ENV_FILE": "/nonexistent",
    "OPSQ_WEBHOOK_SECRET": "test-webhook-secret",
    "OPSQ_WEBHOOK_RETRY_BASE": "0.5",
    # The tests' webhook receivers listen on loopback, which webhooks may not reach unless
    # an admin lists it.
    "OPSQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    # The example task, which workers load only when asked (tests/test_schedules.py).
    "OPSQ_TASK_MODULES": "devtools.examples",
})


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


def create_services() -> None:
    """Start what is down, then create this run's vhost and migrated database."""
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", str(ROOT / "deploy" / "ensure-services.sh")], check=True)
    _rabbitmqctl("add_vhost", TEST_VHOST)
    _rabbitmqctl("set_permissions", "-p", TEST_VHOST, "guest", ".*", ".*", ".*")
    from opsq import schedules
    from opsq.store import schema

    schema.upgrade()
    schedules.ensure_builtin()


def drop_services() -> None:
    """Drop this run's vhost, database and scratch files."""
    from opsq.store import db

    for engine in list(db._engines.values()):
        engine.dispose()
    _rabbitmqctl("delete_vhost", TEST_VHOST)
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c",
         f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'],
        check=False, capture_output=True,
    )
    # Keep the processes' logs of the last run for a look after a failure.
    kept = ROOT / "var" / "test-logs"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True, exist_ok=True)
    for log in WORK.glob("*.log"):
        shutil.copy(log, kept / log.name)
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture(scope="session")
def services():
    """The run's own database (migrated) and vhost; both dropped at the end."""
    create_services()
    yield
    drop_services()


@pytest.fixture(scope="session")
def fleet(services):
    """A fleet of real sshd hosts on 127.0.2.K, stopped at the end."""
    from devtools.devfleet import Fleet

    f = Fleet(FLEET_DIR, n=FLEET_SIZE, subnet=FLEET_SUBNET)
    f.up()
    yield f
    f.down()


class Worker:
    """A real ``celery worker`` subprocess on both queues."""

    def __init__(self, name: str, extra_env: dict[str, str] | None = None,
                 concurrency: int = 32, queues: str | None = None,
                 prefix: list[str] | None = None, pool: str = "threads") -> None:
        self.name = name
        self.log = WORK / f"worker-{name}.log"
        self.env_overrides = extra_env
        env = {**os.environ, **(extra_env or {})}
        from opsq.app import CONTROL_QUEUES, FLEET_QUEUE

        # prefix: how to start it elsewhere (``ip netns exec NS`` for a site's network).
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "celery", "-A", "opsq", "worker", "-l", "INFO",
             "-P", pool, "-c", str(concurrency),
             "-Q", queues or f"{FLEET_QUEUE},{CONTROL_QUEUES}",
             "-n", f"{name}@%h", "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        from opsq.app import app

        broker = (self.env_overrides or {}).get("OPSQ_BROKER_URL")
        if broker:  # a worker of another broker answers there
            from celery import Celery

            app = Celery("ping", broker=broker, set_as_current=False)
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker died: {self.log.read_text()[-3000:]}")
            replies = app.control.ping(timeout=0.5) or []
            if any(self.name in k for r in replies for k in r):
                return
        raise RuntimeError(f"worker {self.name} did not answer: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def worker(fleet):
    w = Worker("fleetworker")
    yield w
    w.stop()


class Beat:
    """A real ``celery beat`` subprocess with opsq's database scheduler."""

    def __init__(self, name: str = "beat") -> None:
        self.name = name
        self.log = WORK / f"beat-{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "opsq", "beat", "-l", "INFO",
             "-s", str(WORK / f"beat-{name}.db")],
            cwd=ROOT, env=dict(os.environ), stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def leading(self) -> bool:
        return "beat: leading" in self.text()

    def wait_leading(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.leading:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"beat died: {self.text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"beat {self.name} never led: {self.text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _starter(cls):
    """A fixture body that starts ``cls`` processes on demand and stops them all after."""
    started = []

    def start(*args, **kwargs):
        started.append(cls(*args, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_beat():
    """Start beat processes for one test: start_beat(name)."""
    yield from _starter(Beat)


@pytest.fixture
def start_worker():
    """Start extra workers for one test: start_worker(name, extra_env)."""
    yield from _starter(Worker)


@pytest.fixture
def start_flower(tmp_path, worker):
    """Start ``opsq flower`` (with a login) for one test: start_flower(extra_env)."""
    from flowertools import Flower

    started: list = []

    def start(extra_env: dict[str, str] | None = None):
        started.append(Flower(tmp_path, extra_env))
        return started[-1]

    yield start
    for f in started:
        f.stop()


@pytest.fixture
def own_vhost(services):
    """A broker URL on a vhost of its own, for processes that must not share the queues
    with the session's worker."""
    vhost = f"{TEST_VHOST}_{secrets.token_hex(3)}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def opsq_cli():
    """Run the ``opsq`` command as a user would; returns the CompletedProcess."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run(
            [sys.executable, "-m", "opsq.cli", *args], cwd=ROOT, capture_output=True,
            text=True, env={**os.environ, **(env or {})}, timeout=timeout,
        )

    return run
