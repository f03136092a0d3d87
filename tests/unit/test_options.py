"""Pure logic: option precedence and secret masking (no services)."""

from __future__ import annotations

from pathlib import Path

from opsq.hostrun.runner import RunOptions
from opsq.hostrun.ssh import known_hosts_name
from opsq.inventory import Host
from opsq.jobs import mask_secrets
from opsq.settings import Settings


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **{"known_hosts": "/tmp/kh", **kw})


def test_job_value_beats_inventory_var_beats_setting():
    s = settings(command_timeout=300, connect_timeout=10)
    plain = Host(name="a", address="a")
    tuned = Host(name="b", address="b", vars={"opsq_timeout": 42, "opsq_connect_timeout": "7"})
    assert RunOptions.resolve(plain, s).command_timeout == 300
    assert RunOptions.resolve(tuned, s).command_timeout == 42
    assert RunOptions.resolve(tuned, s).connect_timeout == 7
    assert RunOptions.resolve(tuned, s, command_timeout=5).command_timeout == 5
    assert RunOptions.resolve(tuned, s, connect_timeout=1.5).connect_timeout == 1.5
    assert RunOptions.resolve(plain, s).known_hosts == Path("/tmp/kh")


def test_secrets_are_masked_for_display():
    assert mask_secrets("mysql --password=hunter2 -e 'select 1'") == \
        "mysql --password=**** -e 'select 1'"
    assert mask_secrets("curl -H x API_TOKEN=abc123 https://x") == \
        "curl -H x API_TOKEN=**** https://x"
    assert mask_secrets("deploy --secret s3cr3t now") == "deploy --secret **** now"
    assert mask_secrets("DB_PASSWORD: pw uptime") == "DB_PASSWORD: **** uptime"
    assert mask_secrets("uptime; df -h") == "uptime; df -h"
    assert mask_secrets("curl -H 'Authorization: Bearer abc.def' x") == \
        "curl -H 'Authorization: Bearer ****' x"
    assert mask_secrets("curl -u admin:s3cr3t https://h") == "curl -u admin:**** https://h"
    assert mask_secrets("mysql -u root -phunter2 db") == "mysql -u root -p**** db"
    assert mask_secrets("psql postgres://app:pw123@db/x -c 1") == \
        "psql postgres://app:****@db/x -c 1"
    assert mask_secrets("tar -u -p -f x") == "tar -u -p -f x"


def test_known_hosts_names_follow_openssh():
    assert known_hosts_name("10.0.0.1", 22) == "10.0.0.1"
    assert known_hosts_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"


def test_a_command_killed_by_its_deadline_is_always_a_timeout(monkeypatch):
    # The capture mixin opsq puts on Fabric's remote runner, tried on invoke's local
    # runner (same Runner machinery, no SSH needed).
    import time

    import invoke
    from invoke.runners import Local

    from opsq.hostrun.ssh import _CappedOutput, _execute
    from opsq.store.models import HostStatus

    class CappedLocal(_CappedOutput, Local):
        pass

    # invoke's own check ("the timer thread has ended") loses the race when the timer
    # is still inside kill() as the result is collected, as closing an SSH channel can
    # be under load. Make kill() linger to hit that window every time.
    real_kill = Local.kill

    def slow_kill(self):
        real_kill(self)
        time.sleep(0.5)

    monkeypatch.setattr(Local, "kill", slow_kill)
    opts = RunOptions(command_timeout=0.2, connect_timeout=1, output_limit=1024,
                      known_hosts=Path("/nonexistent"))

    def run(command: str):
        return _execute(CappedLocal(invoke.Context()), command, opts)

    outcome = run("echo started; sleep 5")
    assert (outcome.status, outcome.exit_code, outcome.stdout) == \
        (HostStatus.TIMEOUT, None, "started\n")
    quick = run("echo quick; exit 3")
    assert (quick.status, quick.exit_code, quick.stdout) == (HostStatus.FAILED, 3, "quick\n")
