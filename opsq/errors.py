"""opsq's exceptions: one root, a shallow tree.

Every error a user can cause carries a message that says what to do about it.
"""

from __future__ import annotations


class OpsqError(Exception):
    """Root of every error opsq raises on purpose."""


class ConfigError(OpsqError):
    """A setting is missing or invalid."""


class InventoryError(OpsqError):
    """The inventory file cannot be read or is malformed."""


class PatternError(OpsqError):
    """A host pattern is malformed, names an unknown group, or matches nothing."""


class HostKeyError(OpsqError):
    """A host's SSH key is unknown or differs from the one in known_hosts."""


class JobNotFound(OpsqError):
    """No job has the given id."""

    @classmethod
    def of(cls, job_id: str) -> JobNotFound:
        shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
        return cls(f"no job with id {shown!r} (opsq jobs lists recent jobs)")


class BackendUnavailable(OpsqError):
    """The broker (RabbitMQ) or the database (PostgreSQL) cannot be reached."""

    @classmethod
    def database(cls, safe_url: str, exc: BaseException) -> BackendUnavailable:
        """PostgreSQL at ``safe_url`` (no password) refused or lost: the driver's first line."""
        said = str(getattr(exc, "orig", exc)).strip()
        first = said.splitlines()[0] if said else repr(exc)
        return cls(f"cannot reach PostgreSQL at {safe_url}: {first} "
                   "(is the server running? check OPSQ_DATABASE_URL)")

    @classmethod
    def broker(cls, safe_url: str, exc: BaseException) -> BackendUnavailable:
        """RabbitMQ at ``safe_url`` (no password) refused or lost."""
        return cls(f"cannot reach RabbitMQ at {safe_url}: {exc} "
                   "(is it running? check OPSQ_BROKER_URL)")
