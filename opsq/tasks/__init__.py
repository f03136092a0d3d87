"""Celery tasks. Thin: they call into ``opsq.ssh`` and ``opsq.jobs``."""
