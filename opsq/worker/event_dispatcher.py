"""The worker's event dispatcher, without publisher confirms.

opsq turns publisher confirms on (``confirm_publish``) so a task the broker refuses is an
error, not a silent loss. Celery's worker registers its event connection with its event
loop (for heartbeats), so the loop's thread reads that socket; in the threads pool,
events are published from pool threads, and a pool thread waiting for a confirm on that
same socket can have the loop thread consume the confirm: the thread, and every thread
behind the dispatcher's lock, then waits forever (seen as a worker that stops taking
tasks under load). Events are monitoring data, so this one connection publishes
without confirms; tasks, chord callbacks and results keep them.
"""

from __future__ import annotations

from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher


class Dispatcher(EventDispatcher):
    """An EventDispatcher whose own connection does not use publisher confirms."""

    def __init__(self, connection: Any = None, *args: Any, **kwargs: Any) -> None:
        if connection is not None:
            # Before the first channel exists: channels of an amqp connection are put
            # in confirm mode when they are created. The transport options also cover
            # a reconnection.
            connection.transport_options = {
                **(connection.transport_options or {}), "confirm_publish": False}
            established = getattr(connection, "_connection", None)
            if established is not None:
                established.confirm_publish = False
        super().__init__(connection, *args, **kwargs)


class OpsqEvents(Events):
    dispatcher_cls = "opsq.worker.event_dispatcher:Dispatcher"
