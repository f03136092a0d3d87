"""What a worker checks before it takes work: that the PostgreSQL connections it may open
fit in what the server has left (``opsq.store.db.check_budget``).

A threads pool is one process; a prefork pool is its parent and one process per slot, each
with a pool of its own. A database that cannot be reached is not a refusal: the worker
waits for it as for any outage.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import beat_init, worker_init, worker_ready
from sqlalchemy.exc import OperationalError

from opsq.errors import BackendUnavailable, ConfigError
from opsq.settings import get_settings
from opsq.store import db

logger = logging.getLogger(__name__)

#: Pools whose slots share one process.
_ONE_PROCESS = ("thread", "solo", "eventlet", "gevent", "custom")


def processes_of(pool: Any, concurrency: Any) -> int:
    """The processes a worker with ``pool`` and ``concurrency`` runs (each opens a pool
    of PostgreSQL connections)."""
    return 1 if _one_process(pool) else int(concurrency or 1) + 1


def _one_process(pool: Any) -> bool:
    """Whether ``pool`` (a name such as "threads", or its class) runs in one process."""
    if pool is None:
        return False  # Celery's default: prefork
    name = f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', pool)}".lower()
    return any(kind in name for kind in _ONE_PROCESS)


def need_of(pool: Any, concurrency: Any) -> tuple[int, str]:
    """The connections a worker may open, and how that is counted."""
    s = get_settings()
    if _one_process(pool):
        return db.connections_per_process(), (
            f"1 process x (pool {s.db_pool_size} + overflow {s.db_pool_overflow} + 1 LISTEN)")
    n = processes_of(pool, concurrency)
    return n * db.connections_per_process(small=True), (
        f"{n} processes x (pool {db.SMALL_POOL_SIZE} + overflow {db.SMALL_POOL_OVERFLOW} "
        "+ 1 LISTEN), one task at a time each")


@worker_init.connect
def check_connection_budget(sender: Any, **_: Any) -> None:
    pool, concurrency = getattr(sender, "pool_cls", None), getattr(sender, "concurrency", None)
    if not _one_process(pool):
        db.use_small_pool()  # before any query; the processes it forks inherit it
    need, how = need_of(pool, concurrency)
    try:
        figures = db.check_budget(need, f"worker {getattr(sender, 'hostname', '')} ({how})")
    except ConfigError as exc:
        logger.error("refusing to start: %s", exc)
        # SystemExit passes through Celery's signal dispatch, which logs and swallows
        # every Exception: the worker stops here instead of starting.
        raise SystemExit(f"opsq: refusing to start: {exc}") from None
    except (BackendUnavailable, OperationalError) as exc:
        _checked.append(f"PostgreSQL connection budget not checked ({exc}); started anyway")
        return
    _checked.append(figures)


#: What the check found, logged once the worker's logging is set up.
_checked: list[str] = []


@worker_ready.connect
def log_connection_budget(**_: Any) -> None:
    for line in _checked:
        logger.warning("%s", line) if "not checked" in line else logger.info("%s", line)


@beat_init.connect
def small_pool_for_beat(**_: Any) -> None:
    db.use_small_pool()  # beat fires one schedule at a time
