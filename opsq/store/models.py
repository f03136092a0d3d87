"""opsq's tables: jobs, per-host results, and the chord counters of the result backend.

Statuses are stored as plain text so SQL stays readable (``WHERE status = 'timeout'``).
The schema is created and upgraded by the Alembic migrations in ``opsq/store/migrations``.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsq.status import HostStatus, JobStatus

__all__ = ["Base", "HostResult", "HostStatus", "Job", "JobStatus", "Lease", "Schedule"]


class Base(DeclarativeBase):
    pass


class Job(Base):
    """One command run across the hosts a pattern resolved to at submit time."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("jobs_deadline_idx", "deadline_at", postgresql_where=text(
            "deadline_at IS NOT NULL AND status IN ('queued', 'running')")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    command: Mapped[str] = mapped_column(Text)
    pattern: Mapped[str] = mapped_column(Text)
    inventory: Mapped[str] = mapped_column(Text)
    #: The names of the hosts the pattern resolved to, in inventory order.
    hosts: Mapped[list[str]] = mapped_column(JSONB)
    host_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    submitted_by: Mapped[str] = mapped_column(String(128))
    submitted_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Seconds from submission to the summary being written.
    duration: Mapped[float | None] = mapped_column(Float)
    command_timeout: Mapped[float | None] = mapped_column(Float)
    connect_timeout: Mapped[float | None] = mapped_column(Float)
    #: Whether a host interrupted by a worker crash may run the command again.
    rerun_safe: Mapped[bool] = mapped_column(Boolean, default=False)
    ok_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    timeout_count: Mapped[int] = mapped_column(Integer, default=0)
    unreachable_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    interrupted_count: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancelled_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Hosts with a final status: the job closes when it reaches host_count.
    done_count: Mapped[int] = mapped_column(Integer, default=0)
    #: When the fan-out was published (NULL: recorded, not yet sent; the sweeper sends it).
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the chord callback (``finish_job``, the job's Celery result) was sent; NULL
    #: on a finished job: not yet (the broker was down as it closed): the sweeper sends it.
    callback_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    #: The schedule that started the job (NULL when run by hand or the schedule is gone).
    schedule_id: Mapped[int | None] = mapped_column(
        ForeignKey("schedules.id", ondelete="SET NULL"), index=True)
    #: The schedule's name, kept after the schedule is removed.
    schedule: Mapped[str | None] = mapped_column(Text)
    #: The job this one runs again (``opsq rerun``); kept after that job is pruned.
    rerun_of: Mapped[str | None] = mapped_column(String(36))
    #: What the job does on each host: 'command', 'put', 'get' or 'script'.
    kind: Mapped[str] = mapped_column(String(16), default="command", server_default="command")
    #: The action's parameters (remote path, mode, owner, the carried file's sha256,
    #: script arguments, become user): never a secret.
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    #: Rolling execution: hosts per batch (None: all at once), seconds between batches,
    #: and the failures after which no further batch starts (None: no limit).
    batch_size: Mapped[int | None] = mapped_column(Integer)
    #: The batch whose hosts may run now (the next starts when it is done).
    current_batch: Mapped[int | None] = mapped_column(Integer)
    batch_pause: Mapped[float | None] = mapped_column(Float)
    max_fail: Mapped[int | None] = mapped_column(Integer)
    #: Runs of a host after its first that failed (``retry_on``: 'failure' or
    #: 'unreachable'), ``retry_delay`` seconds apart; every attempt is in host_attempts.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_delay: Mapped[float | None] = mapped_column(Float)
    retry_on: Mapped[str | None] = mapped_column(String(16))
    #: URLs the job's summary is POSTed to when it ends (see notifications).
    notify: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    #: When ``opsq cancel`` asked for the job to stop.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the job's hosts that never started end ``unreachable`` (``--deadline``: no
    #: worker of their site took them); None: never.
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class HostResult(Base):
    """What one host did for one job: exit code, output, timing."""

    __tablename__ = "host_results"
    __table_args__ = (
        UniqueConstraint("job_id", "host", name="host_results_job_host_key"),
        Index("host_results_host_idx", "host"),
        Index("host_results_status_idx", "status"),
        Index("host_results_sha256_idx", "sha256", postgresql_where=text("sha256 IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(Text)
    #: Where and how to connect (``Host.run_record()``: no inventory secrets), fixed at
    #: submit time.
    target: Mapped[dict[str, Any]] = mapped_column(JSONB)
    #: The Celery task id of the per-host task (look it up in Flower).
    task_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=HostStatus.PENDING.value)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str | None] = mapped_column(Text)
    stderr: Mapped[str | None] = mapped_column(Text)
    #: Bytes the command wrote, including any part dropped past the output limit.
    stdout_bytes: Mapped[int | None] = mapped_column(BigInteger)
    stderr_bytes: Mapped[int | None] = mapped_column(BigInteger)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Seconds from the task starting on this host to its result being known.
    duration: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(Text)
    #: The lease of the delivery that holds (or last held) the host; see opsq.jobs.state.
    lease_token: Mapped[str | None] = mapped_column(String(36))
    #: Why the host did not run the command (timeout, refused key, unreachable...).
    error: Mapped[str | None] = mapped_column(Text)
    #: put: whether the host's file was written (False: it was equal already).
    changed: Mapped[bool | None] = mapped_column(Boolean)
    #: put: the sha256 of the file written or found; get: of the file fetched (in files).
    sha256: Mapped[str | None] = mapped_column(String(64))
    #: The batch (1, 2, ...) of a rolling job the host runs in; None when unbatched.
    batch: Mapped[int | None] = mapped_column(Integer)
    #: The site whose workers run the host (``opsq_site``; queue ``opsq.fleet.<site>``);
    #: None: any worker of ``opsq.fleet``.
    site: Mapped[str | None] = mapped_column(String(32))
    #: A pending host is not due before this (a later batch: infinity until its turn; a
    #: retry: after its delay); the sweep resends only due hosts nobody took.
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: A pending host whose wait (``not_before``) is kept here, not in a delayed message:
    #: the sweep sends it when it is due (OPSQ_MAX_BROKER_DELAY).
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")


class HostAttempt(Base):
    """One earlier run of a host that was retried (the host row holds the last one)."""

    __tablename__ = "host_attempts"
    __table_args__ = (Index("host_attempts_job_host_idx", "job_id", "host"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    stdout: Mapped[str | None] = mapped_column(Text)
    stderr: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    duration: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True),
                                                  server_default=func.now())


class Notification(Base):
    """One attempt to POST a finished job's summary to a URL."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class File(Base):
    """A file a job carries (put, script) or fetched (get), stored once by content."""

    __tablename__ = "files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Lease(Base):
    """One delivery of a per-host task, alive while its expiry keeps being renewed."""

    __tablename__ = "leases"

    token: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(155))
    worker: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ScheduleKind(str, Enum):
    CRON = "cron"
    INTERVAL = "interval"
    ONCE = "once"


class Schedule(Base):
    """A job or task fired by ``celery beat`` on a cron line, an interval, or once."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    #: A five-field cron line, an interval in seconds, or an ISO 8601 time (once).
    expression: Mapped[str] = mapped_column(Text)
    #: IANA zone the cron line and a naive ``--at`` time are read in.
    timezone: Mapped[str] = mapped_column(Text, default="UTC")
    #: The Celery task sent; fleet commands are ``opsq.submit_job``.
    task: Mapped[str] = mapped_column(Text)
    args: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    #: The task id of the last firing: for a fleet command, the job id.
    last_task_id: Mapped[str | None] = mapped_column(String(64))
    #: 'skip': a firing while the previous job still runs starts nothing (counted
    #: below); 'allow': it starts another.
    overlap: Mapped[str] = mapped_column(String(8), default="skip", server_default="skip")
    skipped_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_skipped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChordCounter(Base):
    """One row per chord the backend joins itself: how many header tasks have returned."""

    __tablename__ = "opsq_chords"

    group_id: Mapped[str] = mapped_column(String(155), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    #: The task id of the chord's callback: for a job, the job id.
    callback_id: Mapped[str | None] = mapped_column(String(155), index=True)
    #: When a worker claimed the right to publish the callback (re-claimable if stale).
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ChordPart(Base):
    """A header task's result, kept until the chord is joined; its key dedups re-deliveries."""

    __tablename__ = "opsq_chord_parts"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("opsq_chords.group_id", ondelete="CASCADE"), primary_key=True
    )
    task_id: Mapped[str] = mapped_column(String(155), primary_key=True)
    group_index: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(50))
    #: The task's result encoded with the backend's serializer (JSON).
    result: Mapped[bytes | None] = mapped_column(LargeBinary)


class Role(str, Enum):
    """What a web console user may do; each role can do everything the ones before it can."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


class User(Base):
    """A login of the web console and REST API (``opsq users``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: argon2id hash (PHC string) of the password; never the password itself.
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    #: Raised by logout, a password or role change: console sessions signed with an older
    #: epoch are refused (their cookies hold the user's id and epoch).
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApiToken(Base):
    """A bearer token of the REST API, stored as its SHA-256 only."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: Hex SHA-256 of the token: tokens are long and random, so a fast hash suffices.
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    #: What the token is for ("ci-deploy"), unique per user; shown in lists and the audit.
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: After this the token is refused (``None``: until revoked).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (UniqueConstraint("user_id", "name", name="api_tokens_user_name"),)


class AuditEntry(Base):
    """One change made through the web console, the API or ``opsq users``, or a login."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(),
                                         index=True)
    #: The user's name (kept as text: the entry outlives a removed user).
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    #: The client's IP address (``None``: the command line).
    address: Mapped[str | None] = mapped_column(String(64))
