"""What opsq keeps in PostgreSQL: the pooled engine (``db``), the tables (``models``), their
migrations and the schema upgrade (``schema``), files stored by content (``files``), and
waiting on LISTEN/NOTIFY (``listen``)."""

#: PostgreSQL channel a job's progress and end are announced on (payload: the job id).
JOBS_CHANNEL = "opsq_jobs"
