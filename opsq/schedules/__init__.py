"""Schedules: cron lines, intervals and one-off times kept in PostgreSQL, each running a
job line or (admins only) a registered task.

- ``manage``: checking, adding, editing and listing schedules, their next runs, firing;
- ``beat``: the ``celery beat`` scheduler that fires them (``beat_scheduler``).

``from opsq import schedules`` is the API the CLI and the console share.
"""

from opsq.schedules.manage import (
    BUILTIN_SCHEDULES,
    RECONCILE_SCHEDULE,
    RETENTION_SCHEDULE,
    SUBMIT_TASK,
    OnChange,
    ScheduleError,
    Timing,
    add,
    all_schedules,
    describe_fleet_job,
    describe_timing,
    edit,
    ensure_builtin,
    firing_id,
    fleet_kwargs,
    get,
    masked,
    masked_kwargs,
    parse_every,
    parse_json,
    recent_jobs,
    remove,
    run_now,
    send,
    still_running,
    timing,
)

__all__ = [
    "BUILTIN_SCHEDULES",
    "RECONCILE_SCHEDULE", "RETENTION_SCHEDULE", "SUBMIT_TASK", "OnChange", "ScheduleError",
    "Timing", "add", "all_schedules", "describe_fleet_job", "describe_timing", "edit",
    "ensure_builtin", "firing_id", "fleet_kwargs", "get", "masked", "masked_kwargs",
    "parse_every", "parse_json", "recent_jobs", "remove", "run_now", "send", "still_running",
    "timing",
]
