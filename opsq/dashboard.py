"""Launching Flower for opsq: authentication required, state kept across restarts.

Flower reads ``FLOWER_*`` environment variables as options; the credentials go there
rather than on the command line, where ``ps`` would show them to every local user.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from opsq.errors import ConfigError
from opsq.settings import PROJECT_ROOT, Settings, get_settings

#: Columns of Flower's task list: the arguments (host and masked command) included.
TASK_COLUMNS = "name,uuid,state,args,kwargs,result,received,started,runtime,worker"
#: Milliseconds between two saves of Flower's state (it also saves on shutdown).
STATE_SAVE_INTERVAL_MS = 60_000
#: Tasks kept in Flower's memory (and state file).
MAX_TASKS = 100_000


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_command(settings: Settings | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start Flower. Raises ConfigError without auth."""
    s = settings or get_settings()
    env = dict(os.environ)
    if s.flower_user and s.flower_password:
        if "," in s.flower_user + s.flower_password:
            raise ConfigError("OPSQ_FLOWER_USER/OPSQ_FLOWER_PASSWORD may not contain ','")
        env["FLOWER_BASIC_AUTH"] = f"{s.flower_user}:{s.flower_password}"
    elif s.flower_no_auth:
        if not _is_loopback(s.flower_address):
            raise ConfigError(
                f"OPSQ_FLOWER_NO_AUTH is only allowed on a loopback address, not "
                f"{s.flower_address!r}: set OPSQ_FLOWER_USER and OPSQ_FLOWER_PASSWORD")
        env.pop("FLOWER_BASIC_AUTH", None)
    else:
        raise ConfigError(
            "Flower shows every task and can control workers, so it needs a login: set "
            "OPSQ_FLOWER_USER and OPSQ_FLOWER_PASSWORD (or OPSQ_FLOWER_NO_AUTH=1 to run it "
            "without one on a loopback address only)")
    db_path = Path(s.flower_db).expanduser()
    if not db_path.is_absolute():
        db_path = PROJECT_ROOT / db_path
    db_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "opsq", "flower",
        f"--address={s.flower_address}", f"--port={s.flower_port}",
        "--persistent=True", f"--db={db_path}",
        f"--state_save_interval={STATE_SAVE_INTERVAL_MS}",
        f"--max_tasks={MAX_TASKS}",
        f"--tasks_columns={TASK_COLUMNS}",
    ]
    if s.broker_api:
        env["FLOWER_BROKER_API"] = s.broker_api  # holds the broker password: keep off argv
    return argv, env


def exec_flower() -> None:
    """Replace this process with Flower (so a service manager supervises Flower itself)."""
    argv, env = flower_command()
    os.execve(argv[0], argv, env)
