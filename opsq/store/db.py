"""One pooled SQLAlchemy engine per process, shared by opsq and the result backend.

Celery's database backend builds a new unpooled engine for every operation outside a
forked child (so in the threads pool): measured at ~4.5 s of mostly PostgreSQL CPU for a
100-host fan-out. opsq routes the backend through this engine instead (``opsq.worker.backend``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from opsq.errors import BackendUnavailable
from opsq.settings import get_settings

#: (A process's pool size and its overflow, the connections opened beyond it at a peak
#: and closed when returned, are settings: OPSQ_DB_POOL_SIZE, OPSQ_DB_POOL_OVERFLOW.)
#: Seconds to wait for a free pooled connection before failing.
POOL_TIMEOUT = 30
#: Seconds after which a pooled connection is replaced (survives server-side idle kills).
POOL_RECYCLE = 1800
#: Seconds to wait for PostgreSQL to accept a TCP connection.
CONNECT_TIMEOUT = 5

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: The pool of a process that runs one task at a time (a prefork child, beat): no more is
#: ever in use at once.
SMALL_POOL_SIZE = 2
SMALL_POOL_OVERFLOW = 2

_lock = threading.Lock()
_small_pool = False
_engines: dict[str, Engine] = {}
_sessionmakers: dict[str, sessionmaker[Session]] = {}


def database_url(url: str | None = None) -> str:
    """The SQLAlchemy URL of opsq's database (a ``db+`` prefix, Celery style, is dropped)."""
    url = url or get_settings().database_url
    return url.removeprefix("db+")


def get_engine(url: str | None = None) -> Engine:
    """The process's pooled engine for ``url`` (default: the configured database)."""
    url = database_url(url)
    engine = _engines.get(url)
    if engine is None:
        with _lock:
            engine = _engines.get(url)
            if engine is None:
                engine = create_engine(
                    url,
                    pool_size=SMALL_POOL_SIZE if _small_pool else get_settings().db_pool_size,
                    max_overflow=(SMALL_POOL_OVERFLOW if _small_pool
                                  else get_settings().db_pool_overflow),
                    pool_timeout=POOL_TIMEOUT,
                    pool_recycle=POOL_RECYCLE,
                    # A round trip per checkout; hosts are written in batches, so it
                    # is paid per batch, and a database restart costs no caller an error.
                    pool_pre_ping=True,
                    # Statement parameters (a job's command) stay out of error messages,
                    # which reach logs, celery_taskmeta and Flower.
                    hide_parameters=True,
                    connect_args={"connect_timeout": CONNECT_TIMEOUT},
                )
                _engines[url] = engine
                _sessionmakers[url] = sessionmaker(bind=engine, expire_on_commit=False)
    return engine


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to the pooled engine."""
    get_engine(url)
    return _sessionmakers[database_url(url)]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    Raises ``BackendUnavailable`` with the database address when PostgreSQL is down.
    """
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        raise unavailable(exc, url) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def unavailable(exc: Exception, url: str | None = None) -> BackendUnavailable:
    """Turn a driver error into a message that names the database and what to check."""
    return BackendUnavailable.database(
        make_url(database_url(url)).render_as_string(hide_password=True), exc)


def ping(url: str | None = None) -> None:
    """Raise ``BackendUnavailable`` unless the database answers a trivial query."""
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise unavailable(exc, url) from exc


#: Seconds a write that must not be lost (a host's result after its command ran) keeps
#: retrying while PostgreSQL is unreachable: longer than an outage of minutes, shorter
#: than RabbitMQ's consumer_timeout minus the longest command.
WRITE_RETRY_BUDGET = 15 * 60
#: First pause between two attempts, in seconds; doubles up to WRITE_BACKOFF_MAX.
WRITE_BACKOFF = 0.2
WRITE_BACKOFF_MAX = 5.0


#: Errors that say "PostgreSQL cannot be used right now" (down, restarting, out of
#: connections, a deadlock victim, no free pooled connection): worth trying again.
RETRYABLE = (OperationalError, InterfaceError, PoolTimeout)


def retrying(write: Callable[[], T], what: str, budget: float = WRITE_RETRY_BUDGET) -> T:
    """Run ``write``, retrying while the database is unreachable, for ``budget`` seconds;
    re-raise the last error after that.

    For writes after work has been done (a command ran): waiting beats redoing it. After
    a lost connection the pool is dropped, so the next attempt opens a fresh one.
    """
    deadline = time.monotonic() + budget
    pause = WRITE_BACKOFF
    while True:
        try:
            return write()
        except RETRYABLE as exc:
            if getattr(exc, "connection_invalidated", False):
                dispose_all()  # the server went away: the other pooled connections too
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("%s: database unreachable, retrying in %.1f s", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, WRITE_BACKOFF_MAX)


def dispose_all(close: bool = True) -> None:
    """Drop every pooled connection (after a restart; after a fork, without closing the
    parent's sockets)."""
    for engine in list(_engines.values()):
        engine.dispose(close=close)


os.register_at_fork(after_in_child=lambda: dispose_all(close=False))


# -- the connection budget ----------------------------------------------------------------

_SERVER_LIMITS = text("""
    SELECT current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int AS superuser,
           (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS used
""")


def use_small_pool() -> None:
    """This process runs one task at a time (a prefork pool's processes, beat): its pool is
    SMALL_POOL_SIZE + SMALL_POOL_OVERFLOW, whatever the settings. Before its first query."""
    global _small_pool
    _small_pool = True


def connections_per_process(small: bool = False) -> int:
    """The most PostgreSQL connections one opsq process opens: its pool (OPSQ_DB_POOL_SIZE
    + OPSQ_DB_POOL_OVERFLOW, or the small pool) and one LISTEN connection."""
    s = get_settings()
    if small:
        return SMALL_POOL_SIZE + SMALL_POOL_OVERFLOW + 1
    return s.db_pool_size + s.db_pool_overflow + 1


def check_budget(need: int, what: str) -> str:
    """Refuse (ConfigError) when ``need`` more connections (``what`` may open them) are more
    than the server has left: max_connections minus the superusers' reserve,
    OPSQ_DB_RESERVE and the connections open now. Returns the figures as a sentence."""
    from opsq.errors import ConfigError

    s = get_settings()
    with get_engine().connect() as conn:
        row = conn.execute(_SERVER_LIMITS).one()
    left = row.max_connections - row.superuser - s.db_reserve - row.used
    figures = (f"{what} may open up to {need} PostgreSQL connections; the server has "
               f"{left} left (max_connections {row.max_connections} - {row.superuser} for "
               f"superusers - OPSQ_DB_RESERVE {s.db_reserve} - {row.used} open now)")
    if need > left:
        raise ConfigError(f"{figures}: lower OPSQ_DB_POOL_SIZE, OPSQ_DB_POOL_OVERFLOW or "
                          "the worker's processes, or raise max_connections")
    return figures


def contains(column: Any, value: str) -> Any:
    """``column`` holds ``value`` anywhere, case-insensitively; ``%``, ``_`` and ``\\``
    in ``value`` are matched as themselves."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{escaped}%", escape="\\")
