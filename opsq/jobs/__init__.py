"""Jobs: what a job is, how it is submitted and fanned out, its state machine, how it is
steered while it runs, and how its results are read.

``from opsq import jobs`` is the API the CLI, the web console, beat and by-name clients
share; its names come from:

- ``spec``: ``JobSpec``, one definition of a job (kind, target, every option), checked once;
- ``kinds``: the put, get and script kinds' parameters, and fetched files written out;
- ``rolling``: batch sizes, failure limits and retry policies;
- ``submission``: resolving the hosts, recording the job, fanning it out as a chord;
- ``results``: summaries, host rows, output while it runs, waiting for the end;
- ``state``: every status and every transition of a job and its hosts (SQL);
- ``steering``: rolling batches, retries, held hosts and cancel while a job runs;
- ``become_password``: a typed sudo password handed to the job's workers via RabbitMQ;
- ``webhooks``: the job-end notifications.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives. The submodules load on first use, so a light caller
#: (the command line's quick path) that needs only ``spec`` does not load Celery and
#: SQLAlchemy with the rest.
_HOMES = {
    **dict.fromkeys((
        "Groups", "HostRun", "JobSummary", "MAX_GROUPS_PAGE", "MAX_HISTORY_PAGE",
        "OutputGroup", "attempts", "first_start", "fold", "follow_output", "groups",
        "host_history", "host_results", "host_runs", "job_action", "job_status",
        "no_such_job", "progress", "recent", "summary", "wait", "waiting",
    ), "opsq.jobs.results"),
    **dict.fromkeys((
        "JobSpec", "LocalHostRefused", "STORED_FIELDS", "check_local_hosts",
        "check_timeouts", "mask_secrets", "spec_from_dict", "spec_to_dict",
    ), "opsq.jobs.spec"),
    **dict.fromkeys((
        "FINISH_JOB", "JOB_ID_NAMESPACE", "MIN_CHUNKS", "RUN_HOSTS", "callback_signature",
        "cancel", "chunks", "create", "fan_out", "first_batch", "job_signature",
        "load_inventory", "plan", "publish", "record_failed_submission", "rerun_spec",
        "resolve", "routed_chunks", "send_hosts", "submit",
    ), "opsq.jobs.submission"),
    **dict.fromkeys((
        "HostStatus", "JobStatus",
    ), "opsq.status"),
}

_SUBMODULES = ("become_password", "kinds", "results", "rolling", "spec", "state", "steering",
               "submission", "webhooks")


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        if name not in _SUBMODULES:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, *_SUBMODULES})


__all__ = [
    "HostStatus", "JobStatus",
    "MAX_GROUPS_PAGE", "MAX_HISTORY_PAGE", "Groups", "OutputGroup",
    "FINISH_JOB", "JOB_ID_NAMESPACE", "MIN_CHUNKS", "RUN_HOSTS", "STORED_FIELDS", "HostRun",
    "JobSpec", "JobSummary", "LocalHostRefused", "attempts", "first_start",
    "callback_signature", "cancel",
    "check_local_hosts", "check_timeouts", "chunks", "create", "fan_out", "first_batch",
    "follow_output", "fold", "groups", "host_history", "host_results", "host_runs", "job_action",
    "job_signature", "job_status",
    "load_inventory", "mask_secrets", "no_such_job", "plan", "progress", "publish", "recent",
    "record_failed_submission", "rerun_spec", "resolve", "routed_chunks", "send_hosts",
    "spec_from_dict",
    "spec_to_dict", "submit", "summary", "wait", "waiting",
]
