"""Long waits live in PostgreSQL, not in unacknowledged messages.

RabbitMQ closes the channel of a consumer that holds a message unacknowledged longer than
its ``consumer_timeout`` (30 minutes by default), and everything on that channel is
requeued, again and again. A rolling job's ``--pause`` or a ``--retry-delay`` sent as a
delayed message is held that way for the whole wait. These tests run a RabbitMQ node of
their own whose consumer_timeout is 4 s (checked every second), so a wait of 12 s is
"longer than consumer_timeout" in a test of seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Worker
from helpers import free_port, wait_until
from sqlalchemy import text

from opsq.store import db

#: The test node's consumer_timeout and how often it checks it, in milliseconds.
CONSUMER_TIMEOUT_MS = 4000
TICK_MS = 1000
#: Seconds the test node gets to start.
NODE_START_TIMEOUT = 90
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class Node:
    """A RabbitMQ node of the test's own, with a short consumer_timeout."""

    def __init__(self, work: Path) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"opsqwait{os.getpid()}@localhost"
        self.work = work
        (work / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
            "loopback_users.guest = true\n")
        (work / "advanced.config").write_text(
            f"[{{rabbit, [{{channel_tick_interval, {TICK_MS}}}]}}].\n")
        (work / "enabled_plugins").write_text("[].\n")
        (work / "env.conf").write_text("")
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.name,
                    "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_CONFIG_FILE": str(work / "rabbitmq.conf"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(work / "advanced.config"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
                    "RABBITMQ_CONF_ENV_FILE": str(work / "env.conf"),
                    "RABBITMQ_MNESIA_BASE": str(work / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(work / "log"), "HOME": str(work)}
        self.proc = subprocess.Popen([RABBITMQ_SERVER], env=self.env, cwd=work,
                                     stdout=(work / "node.out").open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._up, NODE_START_TIMEOUT, f"RabbitMQ node {self.name}", every=1)
        except BaseException:
            self.stop()  # a node that never answered is not left running
            raise
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _up(self) -> bool:
        from kombu import Connection

        if self.proc.poll() is not None:
            raise RuntimeError((self.work / "node.out").read_text()[-3000:])
        try:  # rabbitmqctl would need the node's Erlang cookie; AMQP answering is enough
            with Connection(f"amqp://guest:guest@127.0.0.1:{self.port}//",
                            connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=0)
            return True
        except Exception:
            return False

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.work / "log").glob("*.log"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


@pytest.fixture(scope="module")
def node(services):
    if not Path(RABBITMQ_SERVER).exists():
        pytest.skip(f"{RABBITMQ_SERVER} is missing")
    work = Path(tempfile.mkdtemp(prefix="opsq-rmq-"))
    n = Node(work)
    yield n
    n.stop()
    shutil.rmtree(work, ignore_errors=True)


def _rows(sql: str, **params):
    with db.session_scope() as s:
        return s.execute(text(sql), params).all()


class NodeWorker(Worker):
    """A worker on the test node; ready when its log says so (the session's app pings
    the session's broker)."""

    def __init__(self, name: str, url: str, extra_env: dict[str, str]) -> None:
        self.url = url
        super().__init__(name, {"OPSQ_BROKER_URL": url, **extra_env})

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker died: {self.log.read_text()[-3000:]}")
            return f"{self.name}@" in self.log.read_text(errors="replace") and \
                " ready." in self.log.read_text(errors="replace")

        wait_until(ready, 60, f"worker {self.name} on the test node", every=0.5)


@pytest.fixture
def node_worker(node):
    started: list[NodeWorker] = []

    def start(name: str, extra_env: dict[str, str]) -> NodeWorker:
        started.append(NodeWorker(name, node.url, extra_env))
        return started[-1]

    yield start
    for w in started:
        w.stop()


def _waited(node, node_worker, opsq_cli, max_delay: str, *job_args: str):
    env = {"OPSQ_BROKER_URL": node.url, "OPSQ_MAX_BROKER_DELAY": max_delay}
    w = node_worker(f"waits{max_delay.replace('.', '')}", env)
    began = time.monotonic()
    r = opsq_cli("run", *job_args, "--wait", "--timeout", "20", env=env, timeout=240)
    return r, time.monotonic() - began, w


def test_a_pause_longer_than_consumer_timeout_completes(node, fleet, node_worker, opsq_cli):
    r, took, w = _waited(node, node_worker, opsq_cli, "1", "echo rolled", "-t", "fleet",
                         "--batch-size", "3", "--pause", "12")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded (6 ok)" in r.stdout
    assert took >= 12  # the pause was kept
    job = _rows("SELECT id FROM jobs WHERE status = 'succeeded' ORDER BY submitted_at DESC "
                "LIMIT 1")[0].id
    second = _rows("SELECT min(h.started_at) - (SELECT max(finished_at) FROM host_results "
                   "WHERE job_id = :j AND batch = 1) AS gap FROM host_results h "
                   "WHERE job_id = :j AND batch = 2", j=job)[0].gap
    assert second.total_seconds() >= 11.5
    assert all(r.attempt == 1 for r in _rows("SELECT attempt FROM host_results WHERE "
                                              "job_id = :j", j=job))
    log = w.log.read_text(errors="replace") + node.log()
    assert "consumer ack timed out" not in log and "PRECONDITION_FAILED" not in log


def test_a_retry_delay_longer_than_consumer_timeout_completes(node, fleet, node_worker,
                                                              opsq_cli):
    marks = Path(tempfile.mkdtemp(prefix="opsq-marks-"))
    marks.chmod(0o777)  # the fleet's login user leaves its marks here
    # Fails once per host (its first run leaves a mark), then succeeds.
    command = (f"m={marks}/$(echo $SSH_CONNECTION | cut -d' ' -f3); "
               "test -e $m || { touch $m; exit 3; }")
    r, took, w = _waited(node, node_worker, opsq_cli, "1", command, "-t", "fleet[0:1]",
                         "--retries", "1", "--retry-delay", "10", "--retry-on", "failure",
                         "--rerun-safe")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded (2 ok)" in r.stdout and took >= 10
    log = w.log.read_text(errors="replace") + node.log()
    assert "consumer ack timed out" not in log and "PRECONDITION_FAILED" not in log
    shutil.rmtree(marks, ignore_errors=True)
