"""The Celery app: RabbitMQ broker, PostgreSQL results, JSON only, events on.

``celery -A opsq worker|beat|multi|flower`` all find this app.
"""

from __future__ import annotations

from celery import Celery

from opsq.queues import (  # noqa: F401  (opsq.app's names since the first release)
    CONTROL_QUEUE,
    CONTROL_QUEUES,
    FLEET_QUEUE,
    PLAIN_QUEUE,
    declared,
    fleet_queue,
)
from opsq.settings import get_settings

#: opsq's own task modules; users add theirs with OPSQ_TASK_MODULES (the example task,
#: devtools.examples, is loaded only that way, from a source checkout).
OPSQ_TASK_MODULES = ["opsq.worker.fleet_tasks", "opsq.worker.maintenance_tasks",
                     "opsq.worker.startup"]
#: Seconds a finished task's row stays in celery_taskmeta (opsq's own tables keep
#: the job history; see the retention setting).
RESULT_EXPIRES = 7 * 24 * 3600
#: Publishing a task retries this often before the caller gets a clear error.
PUBLISH_MAX_RETRIES = 3
#: Seconds to wait for RabbitMQ to accept a connection.
BROKER_CONNECT_TIMEOUT = 4
#: AMQP heartbeat in seconds: a dead or frozen broker link is noticed within about two.
BROKER_HEARTBEAT = 10
#: Seconds a blocking read or write on a broker socket (a publisher confirm, an RPC
#: reply) may take before it fails and is retried on a fresh connection.
BROKER_SOCKET_TIMEOUT = 30


def make_app() -> Celery:
    """Build the Celery app from the current settings."""
    settings = get_settings()
    extra = [m.strip() for m in settings.task_modules.split(",") if m.strip()]
    celery = Celery("opsq", include=[*OPSQ_TASK_MODULES, *extra],
                    events="opsq.worker.event_dispatcher:OpsqEvents")
    celery.conf.update(
        broker_url=settings.broker_url,
        result_backend="opsq.worker.backend:PostgresBackend",
        database_url=settings.database_url.removeprefix("db+"),
        result_extended=True,
        result_expires=RESULT_EXPIRES,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=CONTROL_QUEUE,
        # Declared as a plain Celery client declares them (the "celery" queue on a direct
        # exchange "celery"; quorum ones as Celery declares quorum queues).
        task_queues=tuple(declared(name, settings.queue_type)
                          for name in (FLEET_QUEUE, CONTROL_QUEUE, PLAIN_QUEUE)),
        # Quorum queues: a site's queue made on first use is one too; Celery then turns
        # global QoS off and delays tasks (a retry delay, a batch pause) by native delayed
        # delivery, which needs topic exchanges.
        task_default_queue_type=settings.queue_type,
        task_create_missing_queue_type=settings.queue_type,
        task_create_missing_queue_exchange_type=(
            "topic" if settings.queue_type == "quorum" else None),
        worker_detect_quorum_queues=True,
        task_routes={"opsq.run_hosts": {"queue": FLEET_QUEUE},
                     "opsq.run_on_host": {"queue": FLEET_QUEUE},
                     "opsq.notify": {"queue": CONTROL_QUEUE}},
        # A crash re-delivers instead of losing work; the per-host task detects the
        # second delivery of a command that had already started (see tasks.fleet).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Job progress is in opsq's tables and Flower sees STARTED through events: a
        # STARTED row per task in celery_taskmeta would only cost writes.
        task_track_started=False,
        # Events for Flower.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT,
        broker_connection_retry_on_startup=True,
        # Outages of minutes: reconnect forever, quickly (opsq.worker.consumer), and treat a
        # channel error (e.g. consumer_timeout) as a reason to reconnect, not to die.
        broker_connection_max_retries=None,
        broker_channel_error_retry=True,
        broker_heartbeat=BROKER_HEARTBEAT,
        broker_transport_options={"confirm_publish": True,
                                  "read_timeout": BROKER_SOCKET_TIMEOUT,
                                  "write_timeout": BROKER_SOCKET_TIMEOUT},
        worker_consumer="opsq.worker.consumer:Consumer",
        # After a reconnection Celery lowers the prefetch count and raises it again from
        # pool threads, with a basic.qos on the connection the event loop reads: with
        # the threads pool that can freeze the loop (no new task for minutes). Redelivered
        # copies of running tasks are cheap to take: they find their hosts leased.
        worker_enable_prefetch_count_reduction=False,
        task_publish_retry_policy={
            "max_retries": PUBLISH_MAX_RETRIES,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=False,
        beat_scheduler="opsq.schedules.beat:DatabaseScheduler",
        enable_utc=True,
        timezone="UTC",
    )
    return celery


app = make_app()
