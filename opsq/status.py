"""Every status a job and a host can have. Stored as plain text (``WHERE status =
'failed'``); the transitions between them are ``opsq.jobs.state``'s."""

from __future__ import annotations

from enum import Enum


class HostStatus(str, Enum):
    """Where one host of a job stands. The first two are transient."""

    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"  # the command exited 0
    FAILED = "failed"  # the command exited non-zero
    TIMEOUT = "timeout"  # the connection or the command ran past its deadline
    UNREACHABLE = "unreachable"  # no SSH connection after the retries
    ERROR = "error"  # host key refused, authentication failed, or an opsq bug
    INTERRUPTED = "interrupted"  # the worker died mid-command; not re-run blindly
    SKIPPED = "skipped"  # never started: the job stopped after too many failures
    CANCELLED = "cancelled"  # the job was cancelled before or while the host ran

    @property
    def finished(self) -> bool:
        return self not in (HostStatus.PENDING, HostStatus.RUNNING)


class JobStatus(str, Enum):
    """Where a job stands: ``succeeded`` only when every host is ``ok``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERROR = "error"  # could not be queued at all (broker down): see jobs.error
    CANCELLED = "cancelled"  # ``opsq cancel``: hosts not done were stopped or never started

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.ERROR,
                        JobStatus.CANCELLED)


#: Final host statuses, each with its counter column in ``jobs`` (``ok_count``...).
FINAL_HOST_STATUSES = tuple(s for s in HostStatus if s.finished)
FINAL_JOB_STATUSES = tuple(s.value for s in JobStatus if s.finished)
