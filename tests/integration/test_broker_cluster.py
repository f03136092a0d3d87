"""A three-node RabbitMQ cluster started by the test, opsq's queues as quorum queues and
the broker URL listing every node: the node the worker is connected to is SIGKILLed
mid-job; every host ends final, none runs twice, and the next job runs."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Worker
from helpers import free_port, wait_until
from jobtools import HOST_NUMBER

from opsq import jobs

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
#: Seconds a node gets to start, and the cluster to form.
NODE_START_TIMEOUT = 90
#: Seconds the job's commands run: long enough to kill a node while they do.
COMMAND_SECONDS = 6


class ClusterNode:
    """A RabbitMQ node of the test's cluster (its own ports and directories; the cluster's
    shared Erlang cookie)."""

    def __init__(self, work: Path, index: int, cookie_home: Path) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"opsqc{index}x{os.getpid()}@localhost"
        self.work = work / f"node{index}"
        self.work.mkdir(parents=True)
        (self.work / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users.guest = true\n")
        (self.work / "enabled_plugins").write_text("[].\n")
        (self.work / "env.conf").write_text("")
        self.env = {**os.environ, "RABBITMQ_NODENAME": self.name,
                    "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_CONFIG_FILE": str(self.work / "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.work / "enabled_plugins"),
                    "RABBITMQ_CONF_ENV_FILE": str(self.work / "env.conf"),
                    "RABBITMQ_MNESIA_BASE": str(self.work / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.work / "log"), "HOME": str(cookie_home)}
        self.proc = subprocess.Popen([RABBITMQ_SERVER], env=self.env, cwd=self.work,
                                     stdout=(self.work / "node.out").open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def up(self) -> bool:
        from kombu import Connection

        if self.proc.poll() is not None:
            raise RuntimeError((self.work / "node.out").read_text()[-3000:])
        try:
            with Connection(self.url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=0)
            return True
        except Exception:
            return False

    def ctl(self, *args: str) -> str:
        return subprocess.run([RABBITMQCTL, "-n", self.name, *args], env=self.env,
                              check=True, capture_output=True, text=True, timeout=120).stdout

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def cluster(services):
    if not Path(RABBITMQ_SERVER).exists():
        pytest.skip(f"{RABBITMQ_SERVER} is missing")
    work = Path(tempfile.mkdtemp(prefix="opsq-rmq-cluster-"))
    home = work / "home"
    home.mkdir()
    cookie = home / ".erlang.cookie"
    cookie.write_text(f"OPSQCLUSTER{os.getpid()}")
    cookie.chmod(0o400)
    nodes: list[ClusterNode] = []
    try:
        for i in range(3):
            nodes.append(ClusterNode(work, i, home))
        for n in nodes:
            wait_until(n.up, NODE_START_TIMEOUT, f"RabbitMQ node {n.name}", every=1)
        for n in nodes[1:]:
            n.ctl("stop_app")
            n.ctl("join_cluster", nodes[0].name)
            n.ctl("start_app")
        wait_until(lambda: all(n.name in nodes[0].ctl("cluster_status") for n in nodes),
                   NODE_START_TIMEOUT, "the three nodes to form a cluster")
        yield nodes
    finally:
        for n in nodes:
            n.kill()


def test_a_job_survives_the_loss_of_its_worker_s_broker_node(cluster, fleet, opsq_cli):
    urls = ";".join(n.url for n in cluster)  # kombu's failover: the first, then the next
    env = {"OPSQ_BROKER_URL": urls, "OPSQ_QUEUE_TYPE": "quorum"}
    runs = Path(tempfile.mkdtemp(prefix="opsq-cluster-runs-"))  # the fleet's user writes here
    runs.chmod(0o777)
    # Two slots for six hosts: at the kill, some tasks run and the others wait in the
    # queue, which must survive on the other nodes.
    worker = Worker("clusterworker", env, concurrency=2)
    try:
        assert "quorum" in cluster[0].ctl("list_queues", "name", "type")
        submitted = opsq_cli("run", f"{HOST_NUMBER}; echo $n >> {runs}/$n; "
                             f"sleep {COMMAND_SECONDS}; echo done", "-t", "fleet",
                             "--rerun-safe", env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split()[-1]
        wait_until(lambda: jobs.summary(job_id).counts.get("running"), 30, "hosts to run")
        cluster[0].kill()  # the node the worker (and the job's publisher) connected to
        wait_until(lambda: jobs.summary(job_id).finished, 120,
                   "the job to end on the surviving nodes")
        done = jobs.summary(job_id)
        assert done.status.value == "succeeded", (done.counts, worker.log.read_text()[-3000:])
        # None ran twice: each host's command ran once.
        assert sorted(p.read_text() for p in runs.iterdir()) == [f"{k}\n" for k in
                                                                   range(1, 7)]
        # The next job runs, through the surviving nodes.
        again = opsq_cli("run", "true", "-t", "fleet", "--wait", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        # A delayed task (a retry 2 s later) goes through Celery's native delayed delivery,
        # as quorum queues need: host01 fails once, then succeeds on its retry.
        flag = runs / "failed-once"
        retried = opsq_cli("run", f"{HOST_NUMBER}; if [ $n = 1 ] && [ ! -e {flag} ]; then "
                           f"touch {flag}; exit 1; fi; echo ok", "-t", "host01",
                           "--retries", "1", "--retry-delay", "2", "--rerun-safe",
                           "--wait", env=env)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert flag.exists()
    finally:
        worker.stop()
        time.sleep(0.5)
