"""One typed settings object, read from ``OPSQ_*`` environment variables.

Precedence, highest first: the environment, then ``config/opsq.env`` (or the file named
by ``OPSQ_ENV_FILE``), then the defaults below. Per-job options (``--timeout``) and
per-host inventory variables (``opsq_timeout``) beat these; see ``opsq.jobs``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The project root: config/ and var/ are found relative to it when run from a checkout.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/opsq"
DEFAULT_INVENTORY = "config/inventory.yml"
#: Seconds to wait for a TCP connect plus the SSH handshake and authentication.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a command may run on one host before it is killed and marked ``timeout``.
#: Keep it well below RabbitMQ's ``consumer_timeout`` (30 min by default): tasks are
#: acknowledged late, so a task running longer than that gets its channel closed.
DEFAULT_COMMAND_TIMEOUT = 300.0
#: Longest command deadline accepted, in seconds: tasks are acknowledged when they end,
#: and RabbitMQ closes the channel of a consumer holding a message longer than its
#: consumer_timeout (30 min by default). Raise both together (deploy/README.md).
DEFAULT_MAX_COMMAND_TIMEOUT = 1740.0
#: Bytes of stdout (and, separately, stderr) kept per host; the rest is dropped and the
#: host result is flagged ``truncated``.
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
#: How many times a host whose connection fails (refused, reset, no route) is retried.
DEFAULT_CONNECT_RETRIES = 2
#: First back-off delay in seconds between connection attempts; doubles every retry.
DEFAULT_RETRY_BACKOFF = 0.5
#: Seconds an idle pooled SSH connection is kept open in a worker.
DEFAULT_POOL_IDLE = 300.0
#: Days finished jobs and their host results are kept by the daily retention schedule.
DEFAULT_RETENTION_DAYS = 30
#: Concurrent tasks one fleet worker runs (threads); each covers up to CHUNK_SIZE hosts.
DEFAULT_FLEET_CONCURRENCY = 64
#: Hosts one fleet worker process runs at the same time, across all its tasks (threads).
DEFAULT_HOST_CONCURRENCY = 256
#: Most hosts one task covers: a job of N hosts fans out as ceil(N / this) tasks, at
#: least MIN_CHUNKS of them (so several workers share a job) when there are enough hosts.
DEFAULT_CHUNK_SIZE = 100
#: Seconds a delivery's hold on its running hosts lasts unless renewed (it is renewed
#: every third of that while the command runs). A worker that dies is noticed this long
#: after its last renewal; lower means faster recovery and more renewal writes.
DEFAULT_LEASE_TTL = 30.0
#: Bytes of a file ``opsq get`` fetches from one host at most (a larger one fails it).
DEFAULT_FETCH_LIMIT = 64 * 1024 * 1024
#: Bytes of a file ``opsq put``/``opsq script`` carries at most (refused before queueing).
DEFAULT_MAX_FILE = 100 * 1024 * 1024
#: Seconds before the second attempt of a job-end notification; later pauses double
#: (up to 10 minutes) until the URL has been tried for an hour (opsq.jobs.webhooks).
DEFAULT_WEBHOOK_RETRY_BASE = 5.0
#: Longest wait (seconds) before a later batch or a retry that is left to the broker as a
#: delayed message; a longer one is kept in PostgreSQL and sent by the sweep when due, so
#: no message is held unacknowledged near RabbitMQ's consumer_timeout (30 min).
DEFAULT_MAX_BROKER_DELAY = 60.0
#: The web console's (``opsq web``) default port.
DEFAULT_WEB_PORT = 8000
#: Bytes of a request body the console reads at most (a larger one is refused unread).
DEFAULT_WEB_MAX_BODY = 1024 * 1024
#: Live job streams (server-sent events) one user may hold open at once.
DEFAULT_WEB_STREAMS_PER_USER = 20


class Settings(BaseSettings):
    """opsq's configuration; every field maps to ``OPSQ_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="OPSQ_",
        env_file=os.environ.get("OPSQ_ENV_FILE", str(PROJECT_ROOT / "config" / "opsq.env")),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    broker_url: str = DEFAULT_BROKER_URL
    database_url: str = DEFAULT_DATABASE_URL
    inventory: str = DEFAULT_INVENTORY
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT, gt=0)
    command_timeout: float = Field(DEFAULT_COMMAND_TIMEOUT, gt=0)
    max_command_timeout: float = Field(DEFAULT_MAX_COMMAND_TIMEOUT, gt=0)
    output_limit: int = Field(DEFAULT_OUTPUT_LIMIT, ge=1024)
    connect_retries: int = Field(DEFAULT_CONNECT_RETRIES, ge=0)
    retry_backoff: float = Field(DEFAULT_RETRY_BACKOFF, ge=0)
    pool_idle: float = Field(DEFAULT_POOL_IDLE, ge=0)
    fleet_concurrency: int = Field(DEFAULT_FLEET_CONCURRENCY, ge=1)
    host_concurrency: int = Field(DEFAULT_HOST_CONCURRENCY, ge=1)
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1)
    lease_ttl: float = Field(DEFAULT_LEASE_TTL, ge=1)
    max_broker_delay: float = Field(DEFAULT_MAX_BROKER_DELAY, ge=0)
    retention_days: int = Field(DEFAULT_RETENTION_DAYS, ge=1)
    #: RabbitMQ queue type of opsq's queues: "classic", or "quorum" (replicated on a
    #: cluster: a message survives the loss of a broker node; deploy/README.md).
    queue_type: Literal["classic", "quorum"] = "classic"
    #: Each process's PostgreSQL pool: connections kept, and more opened at a peak.
    db_pool_size: int = Field(10, ge=1, le=1000)
    db_pool_overflow: int = Field(30, ge=0, le=10000)
    #: Connections a worker leaves free on the server, beyond superuser_reserved_connections
    #: (psql, a migration, the console): a worker that could take them does not start.
    db_reserve: int = Field(10, ge=0)
    #: Extra task modules workers and ``opsq schedule add --task`` import (comma-separated).
    task_modules: str = ""
    #: Where the daemons keep pid files and logs (relative: to the project root).
    run_dir: str = "var/run"
    log_dir: str = "var/log"
    log_level: str = "INFO"
    #: Flower: address, port, credentials (required unless flower_no_auth on loopback),
    #: its state database, and RabbitMQ's management API for queue lengths.
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str | None = None
    flower_password: str | None = None
    flower_no_auth: bool = False
    flower_db: str = "var/flower/flower.db"
    #: Let Flower's users run, revoke and time tasks and control workers (off: read-only).
    flower_control: bool = False
    broker_api: str | None = None
    #: Default SSH user when the inventory names none (``None``: the worker's OS user).
    ssh_user: str | None = None
    #: Private key used when the inventory names none (a path; never sent to the broker).
    ssh_key: str | None = None
    #: A file on the worker holding the sudo password for ``--become`` when the inventory
    #: sets no ``ansible_become_pass`` (read by the worker at run time, never stored).
    become_password_file: str | None = None
    fetch_limit: int = Field(DEFAULT_FETCH_LIMIT, ge=1)
    max_file: int = Field(DEFAULT_MAX_FILE, ge=1)
    #: Key of the HMAC-SHA256 signature of job-end notifications (``None``: unsigned).
    webhook_secret: str | None = None
    webhook_retry_base: float = Field(DEFAULT_WEBHOOK_RETRY_BASE, gt=0)
    #: Networks (comma-separated CIDRs) webhooks may reach although they are not global
    #: (loopback, private, link-local...); every other non-global address is refused.
    webhook_allowed_networks: str = ""
    #: The web console and REST API (``opsq web``): address, port, the key its session
    #: cookies are signed with (unset: one is generated and kept in var/web-secret), and
    #: whether it may run without logins (loopback only; every visitor is then an admin).
    web_address: str = "127.0.0.1"
    web_port: int = Field(DEFAULT_WEB_PORT, ge=1, le=65535)
    web_secret: str | None = None
    web_no_auth: bool = False
    #: The inventories the console and API may use, by name: ``name=path`` pairs,
    #: comma-separated (unset: one named "default", OPSQ_INVENTORY). A console user picks
    #: a name; no path typed into the console is ever opened.
    web_inventories: str = ""
    #: Let jobs and schedules submitted through the console or API run on hosts with a
    #: local connection (on the worker itself). Off: they are refused.
    web_local_hosts: bool = False
    #: Mark session cookies Secure (sent over HTTPS only): set it behind a TLS proxy.
    web_secure_cookies: bool = False
    #: Addresses or networks (comma-separated) of reverse proxies whose X-Forwarded-For
    #: names the client; from any other peer the header is ignored.
    web_trusted_proxies: str = ""
    #: Bytes of a request body read at most; a larger one gets 413 before it is parsed.
    web_max_body: int = Field(DEFAULT_WEB_MAX_BODY, ge=1024)
    #: Live job streams one user may hold open at once.
    web_streams_per_user: int = Field(DEFAULT_WEB_STREAMS_PER_USER, ge=1)
    #: Flower's address as the console's users reach it, for links from a job to its
    #: task (unset: no link).
    web_flower_url: str | None = None

    def inventory_path(self) -> Path:
        """The inventory path, made absolute against the project root when relative."""
        return _absolute(self.inventory)

    def run_path(self) -> Path:
        return _absolute(self.run_dir)

    def log_path(self) -> Path:
        return _absolute(self.log_dir)

    def known_hosts_path(self) -> Path:
        """The known_hosts file host keys are checked against."""
        return _absolute(self.known_hosts)


def _absolute(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
