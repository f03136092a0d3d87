"""Launching Flower for opsq: authentication required, read-only unless told otherwise,
state kept across restarts.

Flower reads ``FLOWER_*`` environment variables as options; the credentials go there
rather than on the command line, where ``ps`` would show them to every local user.

Flower's API lets any logged-in user run a task with arguments of their choosing
(``opsq.submit_job`` runs any command on any host), revoke or terminate tasks and resize,
re-queue or shut down workers. The people given Flower to watch jobs need none of that, so
Flower is started through this module (``python -m opsq.worker.flower``, which takes the same
arguments as ``celery``) and every such endpoint answers 403 unless
``OPSQ_FLOWER_CONTROL`` is set.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from opsq.errors import ConfigError
from opsq.settings import PROJECT_ROOT, Settings, get_settings
from opsq.worker.daemons import PRIVATE_UMASK, private_dir, private_files

#: Columns of Flower's task list: the arguments (host and masked command) included.
TASK_COLUMNS = "name,uuid,state,args,kwargs,result,received,started,runtime,worker"
#: Milliseconds between two saves of Flower's state (it also saves on shutdown).
STATE_SAVE_INTERVAL_MS = 60_000
#: Tasks kept in Flower's memory (and state file).
MAX_TASKS = 100_000
#: HTTP methods that change something through Flower's API (its reads are all GET; the
#: task list's POST is a read, but it is served by a page handler, not ``flower.api``).
WRITE_METHODS = ("post", "put", "delete", "patch")

logger = logging.getLogger(__name__)


def is_loopback(address: str) -> bool:
    """Whether ``address`` only listens on this machine (a login may then be waived)."""
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
        if not is_loopback(s.flower_address):
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
    private_dir(db_path.parent)
    private_files(db_path.parent.glob(f"{db_path.name}*"))
    argv = [
        sys.executable, "-m", "opsq.worker.flower", "-A", "opsq", "flower",
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
    """Replace this process with Flower (so a service manager supervises Flower itself).

    Flower's state lists every task's arguments: it is written readable by this user only.
    """
    argv, env = flower_command()
    os.umask(PRIVATE_UMASK)
    os.execve(argv[0], argv, env)


# -- read-only Flower ---------------------------------------------------------------------


def _changes_something(handler_class: Any) -> bool:
    """A handler of Flower's API that accepts a write method: task apply/send/abort/revoke,
    rate limits and timeouts, worker pool, queue and shutdown control."""
    import tornado.web

    if not getattr(handler_class, "__module__", "").startswith("flower.api"):
        return False
    return any(getattr(handler_class, m, None) is not getattr(tornado.web.RequestHandler, m)
               for m in WRITE_METHODS)


def _forbidden_handler() -> type:
    from flower.api import BaseApiHandler
    from tornado import web

    class ReadOnly(BaseApiHandler):
        """Answers 403 to a logged-in user (401 to others) on a control endpoint."""

        @web.authenticated
        def _refuse(self, *args: Any, **kwargs: Any) -> None:
            raise web.HTTPError(
                403, "this Flower is read-only: it does not run, revoke or time tasks or "
                     "control workers (OPSQ_FLOWER_CONTROL=1 on its server allows it)")

        get = post = put = delete = patch = _refuse

    return ReadOnly


def read_only_handlers(handlers: Iterable[Any]) -> list[Any]:
    """Flower's URL table with every control endpoint served by a 403 handler instead."""
    from tornado.web import URLSpec, url

    forbidden = _forbidden_handler()
    result: list[Any] = []
    for h in handlers:
        if isinstance(h, URLSpec):
            if _changes_something(h.handler_class):
                h = url(h.regex.pattern, forbidden, None, h.name)
        elif _changes_something(h[1]):
            h = (h[0], forbidden)
        result.append(h)
    return result


def main() -> None:
    """``celery`` with Flower's control endpoints disabled unless OPSQ_FLOWER_CONTROL is set."""
    import flower.app
    import flower.urls
    from celery.bin.celery import main as celery_main

    if get_settings().flower_control:
        logger.warning("Flower control is on (OPSQ_FLOWER_CONTROL): its users can run "
                       "any command on any host")
    else:
        # Flower's Application takes its URL table from this module global when built; a
        # Flower without it would start with its control endpoints open, so refuse.
        if not isinstance(getattr(flower.app, "default_handlers", None), list):
            raise ConfigError("this Flower version cannot be made read-only by opsq: "
                              "pin the flower version opsq is tested with")
        flower.app.default_handlers = read_only_handlers(flower.urls.handlers)
    sys.exit(celery_main())


if __name__ == "__main__":
    main()
