"""What a command on a host with ``ansible_connection=local`` sees of the worker's
environment: only ``local.local_env()``, never the worker's secrets. Pure tests, no
services needed: the local runner's two ways (``command`` for commands, ``exec`` for
put/get/script) run ``env`` in-process."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from opsq.hostrun.local import LOCAL_LANG, LOCAL_PATH, LOCAL_SHELL, LocalRunner, local_env
from opsq.hostrun.programs import run_action
from opsq.hostrun.runner import JobOptions, RunOptions
from opsq.status import HostStatus

#: Variables a worker may hold, with values no local command may ever print.
SECRETS = {
    "OPSQ_DATABASE_URL": "postgresql+psycopg2://opsq:db-pw-4f1c@127.0.0.1:5432/opsq",
    "OPSQ_BROKER_URL": "amqp://opsq:broker-pw-9a2e@127.0.0.1:5672/opsq",
    "OPSQ_WEB_SECRET": "web-secret-7b3d0c5e9f1a2b4c6d8e0f1a3b5c7d9e",
    "OPSQ_WEBHOOK_SECRET": "hook-secret-2c4e",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-8d6f4b2a0c",
    "SOME_OTHER_WORKER_VARIABLE": "other-value-1e3a",
}
#: What the environment holds besides what sh itself sets for its child (PWD, maybe
#: OLDPWD, SHLVL, _ depending on the shell).
EXPECTED = {"PATH", "HOME", "LANG", "USER", "LOGNAME", "SHELL"}
SHELL_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}
LIMIT = 64 * 1024
TIMEOUT = 20.0


def _via_command(command: str) -> str:
    out = LocalRunner().command(command, RunOptions(command_timeout=TIMEOUT, connect_timeout=1,
                                        output_limit=LIMIT, known_hosts=Path("/nonexistent")))
    assert out.status is HostStatus.OK, (out.stderr, out.error)
    return out.stdout


def _via_exec(command: str) -> str:
    result = LocalRunner().exec(command, b"", TIMEOUT, LIMIT)
    assert result.exit_code == 0, result.stderr.text()
    return result.stdout.text()


def _via_script_action(command: str) -> str:
    # The whole `opsq script` path on a local host: copied to a temporary directory, run.
    job = JobOptions(command="", command_timeout=None, connect_timeout=None,
                     rerun_safe=False, kind="script", params={"name": "show-env", "args": []})
    out = run_action(LocalRunner().exec, job, f"#!/bin/sh\n{command}\n".encode(), None,
                     TIMEOUT, LIMIT, LIMIT)
    assert out.status is HostStatus.OK, (out.stderr, out.error)
    return out.stdout


RUNNERS: dict[str, Callable[[str], str]] = {
    "command": _via_command,
    "exec": _via_exec,
    "script_action": _via_script_action,
}


def _parse(env_output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in env_output.splitlines() if "=" in line)


@pytest.fixture
def worker_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


@pytest.mark.parametrize("runner", RUNNERS)
def test_local_commands_see_none_of_the_workers_variables(runner, worker_secrets,
                                                          monkeypatch):
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setenv("PATH", f"/opt/worker-venv/bin:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", "/nonexistent/worker-home")
    output = RUNNERS[runner]("env")
    env = _parse(output)
    for name, value in worker_secrets.items():
        assert name not in output and value not in output, f"{name} reached the command"
    assert not [k for k in env if k.startswith("OPSQ_")], env
    assert set(env) - SHELL_OWN == EXPECTED, sorted(env)
    me = pwd.getpwuid(os.geteuid())
    assert env["PATH"] == LOCAL_PATH
    assert env["HOME"] == me.pw_dir
    assert env["USER"] == env["LOGNAME"] == me.pw_name
    assert env["SHELL"] == LOCAL_SHELL
    assert env["LANG"] == "de_DE.UTF-8"  # the worker's language is kept


@pytest.mark.parametrize("runner", RUNNERS)
def test_lang_defaults_when_the_worker_has_none(runner, monkeypatch):
    monkeypatch.delenv("LANG", raising=False)
    assert _parse(RUNNERS[runner]("env"))["LANG"] == LOCAL_LANG


def test_one_definition_serves_both_runners(worker_secrets):
    # command and exec both take their environment from local_env().
    env = local_env()
    assert set(env) == EXPECTED
    assert not set(env.values()) & set(worker_secrets.values())
    for runner in RUNNERS.values():
        seen = _parse(runner("env"))
        assert {k: seen[k] for k in EXPECTED} == env
