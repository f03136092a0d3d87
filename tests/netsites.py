"""Sites in network namespaces of their own, for the sites tests: each namespace holds sshd
hosts that nothing outside it can reach, and a worker that reaches RabbitMQ and PostgreSQL
through a veth pair (socat forwarders on the host side, so both still see a loopback
client)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import WORK, Worker
from helpers import wait_until

#: Seconds an sshd in a namespace gets to answer.
SSHD_START_TIMEOUT = 20


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


class NetSite:
    """Site ``name`` in namespace ``opsq-<name>-<pid>``: ``n`` sshd hosts on
    ``127.0.<60 + index>.K`` inside it (copies of the test fleet's first host: same user,
    same authorized client key, its host key), linked to this namespace over
    10.251.<index>.0/30."""

    def __init__(self, name: str, index: int, fleet, n: int = 2) -> None:
        if not shutil.which("socat"):
            subprocess.run("apt-get install -y -qq socat", shell=True, check=True,
                           capture_output=True)
        self.name, self.fleet = name, fleet
        self.ns = f"opsq-{name}-{os.getpid()}"
        self.outside, self.inside = f"10.251.{index}.1", f"10.251.{index}.2"
        self.veth = f"ov{index}p{os.getpid() % 100000}"
        self.dir = WORK / f"site-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.forwarders: list[subprocess.Popen] = []
        self.pidfiles: list[Path] = []
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.veth + "n")
        _run("ip", "link", "set", self.veth + "n", "netns", self.ns)
        _run("ip", "addr", "add", f"{self.outside}/30", "dev", self.veth)
        _run("ip", "link", "set", self.veth, "up")
        self.exec(["ip", "addr", "add", f"{self.inside}/30", "dev", self.veth + "n"])
        self.exec(["ip", "link", "set", self.veth + "n", "up"])
        self.exec(["ip", "link", "set", "lo", "up"])
        for port in (5672, 5432):
            self.forwarders.append(subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind={self.outside},fork,reuseaddr",
                 f"TCP:127.0.0.1:{port}"], stderr=subprocess.DEVNULL))
        self.hosts = [self._start_host(k, index) for k in range(1, n + 1)]
        self.known_hosts = self.dir / "known_hosts"
        key = (Path(str(fleet.hosts[0].host_key_path)) .with_suffix(".pub")
               .read_text().split()[:2])
        self.known_hosts.write_text("".join(f"[{a}]:{p} {' '.join(key)}\n"
                                            for _, a, p in self.hosts))

    def exec(self, argv: list[str]) -> None:
        _run("ip", "netns", "exec", self.ns, *argv)

    def _start_host(self, k: int, index: int) -> tuple[str, str, int]:
        template = self.fleet.hosts[0]
        address, port = f"127.0.{60 + index}.{k}", template.port
        name = f"{self.name}{k:02d}"
        config = self.dir / f"{name}.sshd_config"
        pidfile = self.dir / f"{name}.pid"
        text = Path(str(template.config_path)).read_text()
        text = re.sub(r"(?m)^ListenAddress .*$", f"ListenAddress {address}:{port}", text)
        text = re.sub(r"(?m)^PidFile .*$", f"PidFile {pidfile}", text)
        config.write_text(text)
        self.exec(["/usr/sbin/sshd", "-f", str(config), "-E", str(self.dir / f"{name}.log")])
        self.pidfiles.append(pidfile)
        wait_until(lambda: subprocess.run(
            ["ip", "netns", "exec", self.ns, "ssh-keyscan", "-T", "2", "-p", str(port),
             address], capture_output=True).returncode == 0 and pidfile.exists(),
            SSHD_START_TIMEOUT, f"sshd of {name} in {self.ns}")
        return name, address, port

    def worker(self, site: str | None, concurrency: int = 8) -> Worker:
        """A worker inside the namespace: only ``site``'s queue (None: the fleet queue
        of hosts without a site)."""
        from opsq.app import fleet_queue

        env = {k: os.environ[k].replace("127.0.0.1", self.outside)
               for k in ("OPSQ_BROKER_URL", "OPSQ_DATABASE_URL")}
        return Worker(f"net-{self.name}", {**env, "OPSQ_KNOWN_HOSTS": str(self.known_hosts)},
                      concurrency=concurrency, queues=fleet_queue(site),
                      prefix=["ip", "netns", "exec", self.ns])

    def close(self) -> None:
        for pidfile in self.pidfiles:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        for f in self.forwarders:
            f.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                f.wait(5)
        time.sleep(0.2)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
