"""opsq's RabbitMQ queues: their names and how they are declared (kombu only, so a
light client can publish to them without loading Celery)."""

from __future__ import annotations

import contextlib
from typing import Any

from kombu import Exchange, Queue

#: Queue of per-host SSH work: IO-bound, consumed by a threads-pool worker.
FLEET_QUEUE = "opsq.fleet"
#: Queue of bookkeeping (job summaries, schedules, pruning): a small prefork worker.
CONTROL_QUEUE = "opsq.control"
#: Celery's default queue: a client that sends ``opsq.submit_job`` by name, without
#: opsq's routes, publishes there. The control node consumes it, so such a submission
#: runs (and a task no opsq worker knows is marked failed, not left waiting forever).
PLAIN_QUEUE = "celery"
#: The queues a control node consumes.
CONTROL_QUEUES = f"{CONTROL_QUEUE},{PLAIN_QUEUE}"


def fleet_queue(site: str | None) -> str:
    """The queue of a site's hosts (``opsq.fleet.<site>``); without a site, ``opsq.fleet``."""
    return f"{FLEET_QUEUE}.{site}" if site else FLEET_QUEUE


def declared(name: str, queue_type: str) -> Queue:
    """One of opsq's queues on an exchange of its name: classic and direct, or quorum and
    topic (what native delayed delivery binds to)."""
    if queue_type == "quorum":
        return Queue(name, Exchange(name, type="topic"), routing_key=name,
                     queue_arguments={"x-queue-type": "quorum"})
    return Queue(name, Exchange(name), routing_key=name)


def queue_state(conn: Any, queue: str) -> tuple[int, int]:
    """(messages waiting, consumers) of ``queue`` on RabbitMQ; (0, 0) when it does not
    exist yet. A channel of its own: a passive declare of a missing queue closes it."""
    from amqp.exceptions import NotFound

    channel = conn.channel()
    try:
        ok = channel.queue_declare(queue=queue, passive=True)
        return ok.message_count, ok.consumer_count
    except NotFound:
        return 0, 0
    finally:
        with contextlib.suppress(Exception):  # closed by the broker already
            channel.close()
