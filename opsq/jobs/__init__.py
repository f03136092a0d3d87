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

from opsq.jobs.results import (
    MAX_GROUPS_PAGE,
    MAX_HISTORY_PAGE,
    Groups,
    HostRun,
    JobSummary,
    OutputGroup,
    attempts,
    first_start,
    fold,
    follow_output,
    groups,
    host_history,
    host_results,
    host_runs,
    job_action,
    job_status,
    no_such_job,
    progress,
    recent,
    summary,
    wait,
    waiting,
)
from opsq.jobs.spec import (
    STORED_FIELDS,
    JobSpec,
    LocalHostRefused,
    check_local_hosts,
    check_timeouts,
    mask_secrets,
    spec_from_dict,
    spec_to_dict,
)
from opsq.jobs.submission import (
    FINISH_JOB,
    JOB_ID_NAMESPACE,
    MIN_CHUNKS,
    RUN_HOSTS,
    callback_signature,
    cancel,
    chunks,
    create,
    fan_out,
    first_batch,
    job_signature,
    load_inventory,
    plan,
    publish,
    record_failed_submission,
    rerun_spec,
    resolve,
    routed_chunks,
    send_hosts,
    submit,
)
from opsq.status import HostStatus, JobStatus

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
