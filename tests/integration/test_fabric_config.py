"""Each SSH connection has a Fabric config of its own.

Fabric's Connection keeps the Config it is given, and invoke rebuilds a config from an
empty dict on every write (``Config.merge``): connections sharing one config read it
empty while another thread writes ("No attribute or config key found for
'inline_ssh_env'", seen in a soak). These tests build, write and read many connections
from many threads at once, long enough that a shared config fails them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from opsq.hostrun import ssh
from opsq.hostrun.runner import RunOptions
from opsq.inventory import Host

#: Threads that build connections and write to their configs while the readers read.
WRITERS = 8
#: Threads that read the configs of connections built at the start, again and again.
READERS = 8
#: Seconds the in-process stress runs (a shared config failed it hundreds of times in it).
STRESS_SECONDS = 8.0
#: Seconds the fleet test runs commands over fresh connections.
FLEET_SECONDS = 8.0
#: Errors kept for the failure message.
ERRORS_SHOWN = 5


def _options(known_hosts: Path) -> RunOptions:
    return RunOptions(command_timeout=10, connect_timeout=3, output_limit=4096,
                      known_hosts=known_hosts)


def _read_all(conn) -> None:
    """What building a connection, opening it and running a command read of its config."""
    cfg = conn.config
    assert cfg.inline_ssh_env is True
    assert cfg.runners.remote is ssh.CappedRemote
    assert cfg.timeouts.connect is None
    assert "hide" in dict(cfg.run.items())
    assert conn.authentication.strategy_class is None
    assert cfg.connect_kwargs is not None


class Failures:
    """Errors from the stress threads: all counted, the first few kept."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.empty = 0  # reads of a config that had no keys at all
        self.kept: list[BaseException] = []

    def add(self, exc: BaseException) -> None:
        with self.lock:
            self.count += 1
            self.empty += "Valid keys: []" in str(exc)
            if len(self.kept) < ERRORS_SHOWN:
                self.kept.append(exc)

    def report(self, done: str) -> str:
        return (f"{self.count} failures ({self.empty} reads of an empty config) after {done}: "
                + " | ".join(repr(e)[:300] for e in self.kept))


def _stress(target, failures: Failures, counts: list[int], seconds: float,
            threads: int) -> None:
    """``target(i, n)`` in ``threads`` threads for ``seconds``, every failure counted."""
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            try:
                target(i, n)
            except Exception as exc:  # noqa: BLE001 - counted and reported by the test
                failures.add(exc)
            n += 1
        counts.append(n)

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def test_connections_built_and_written_at_once_never_see_an_empty_config(tmp_path):
    options = _options(tmp_path / "known_hosts")
    hosts = [Host(name=f"h{i}", address=f"127.0.9.{i + 1}", port=2200 + i) for i in range(16)]
    held = [ssh.connection_for(h, options) for h in hosts]
    failures = Failures()
    wrote: list[int] = []
    read: list[int] = []

    def build_and_write(i: int, n: int) -> None:
        conn = ssh.connection_for(hosts[(i + n) % len(hosts)], options)
        _read_all(conn)
        # Writes through the config (each one an invoke merge from an empty dict); on
        # a config of its own they are seen by this connection only.
        conn.config.run.env = {"OPSQ_STRESS": f"{i}-{n}"}
        conn.config.timeouts.command = n + 1
        del conn.config.run["env"]
        _read_all(conn)
        assert conn.config.timeouts.command == n + 1
        conn.close()

    def read_held(i: int, n: int) -> None:
        _read_all(held[(i + n) % len(held)])

    threads = [threading.Thread(target=_stress, args=(build_and_write, failures, wrote,
                                                      STRESS_SECONDS, WRITERS)),
               threading.Thread(target=_stress, args=(read_held, failures, read,
                                                      STRESS_SECONDS, READERS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures.count, failures.report(
        f"{sum(wrote)} connections built and written, {sum(read)} reads")
    assert sum(wrote) >= 100 and sum(read) >= 1000, (sum(wrote), sum(read))
    for conn in held:
        assert conn.config.timeouts.command is None  # nothing another connection wrote


def test_each_connection_has_its_own_config_and_the_template_stays_as_loaded(tmp_path):
    options = _options(tmp_path / "known_hosts")
    host = Host(name="h", address="127.0.9.1", port=2200)
    with ssh._template_lock:
        template = ssh._template_held()
        rules = len(template.base_ssh_config._config)
    a, b = ssh.connection_for(host, options), ssh.connection_for(host, options)
    assert a.config is not b.config
    assert a.config is not template and b.config is not template
    a.config.run.env = {"ONLY_A": "1"}
    assert "ONLY_A" not in b.config.run.env
    assert "ONLY_A" not in ssh.connection_for(host, options).config.run.env
    for _ in range(50):
        ssh.connection_config()
    # Fabric's clone() parses the ssh_config files again into the config it clones
    # when that config read them itself: the template must not grow by cloning.
    assert len(template.base_ssh_config._config) == rules


def test_commands_over_fresh_connections_from_many_threads(fleet):
    """Real runs on the sshd fleet, a new connection each (no pool), from many threads,
    while other threads build connections and write to their configs."""
    from devtools.devfleet import FLEET_USER
    from opsq.settings import get_settings
    from opsq.status import HostStatus

    hosts = [Host(name=h.name, address=h.address, port=h.port, user=FLEET_USER,
                  key_file=str(fleet.client_key_path)) for h in fleet.hosts]
    options = RunOptions.resolve(hosts[0], get_settings())
    pool = ssh.ConnectionPool(idle_seconds=0)  # every run opens a connection of its own
    failures = Failures()
    runs: list[int] = []
    writes: list[int] = []

    def run(i: int, n: int) -> None:
        host = hosts[(i + n) % len(hosts)]
        outcome = ssh.run_on(host, f"echo {i}-{n}", options, pool)
        assert outcome.status is HostStatus.OK, (host.name, outcome.status, outcome.error)
        assert outcome.stdout == f"{i}-{n}\n"

    def write(i: int, n: int) -> None:
        conn = ssh.connection_for(hosts[n % len(hosts)], options)
        conn.config.run.env = {"OPSQ_STRESS": str(n)}
        del conn.config.run["env"]

    threads = [threading.Thread(target=_stress, args=(run, failures, runs, FLEET_SECONDS, 12)),
               threading.Thread(target=_stress, args=(write, failures, writes, FLEET_SECONDS, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close_all()
    assert not failures.count, failures.report(f"{sum(runs)} runs, {sum(writes)} writes")
    assert sum(runs) >= 50, sum(runs)
