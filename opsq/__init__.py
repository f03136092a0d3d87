"""opsq: run commands across a fleet of hosts as asynchronous Celery jobs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["app", "__version__"]


def __getattr__(name: str) -> Any:
    """``celery -A opsq`` finds the app as ``opsq.app`` (or ``opsq.celery``); it is loaded
    on first use, so the command line's quick path starts without Celery."""
    if name in ("app", "celery"):
        from opsq.app import app

        globals()["app"] = app  # the instance, not the submodule the import bound
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
