"""opsq: run commands across a fleet of hosts as asynchronous Celery jobs."""

from __future__ import annotations

__version__ = "0.1.0"

# `celery -A opsq` looks for an attribute named `app` (or `celery`) on the package.
from opsq.app import app  # noqa: E402

__all__ = ["app", "__version__"]
