"""The worker's consumer: quick to come back after a broker outage, and never waiting for
a publisher confirm on the connection its event loop reads.

* Celery reconnects with a fixed back-off that grows to 30 s between attempts: after an
  outage of minutes a worker could come back half a minute after RabbitMQ. Attempts here
  are at most RECONNECT_INTERVAL_MAX apart, forever (``broker_connection_max_retries``).
* The consuming connection carries remote-control replies and the worker's greetings.
  With publisher confirms on (``confirm_publish``, for tasks and results), a publish on
  it waits for a confirm on the socket the event loop also reads: the loop can consume
  the confirm and the sender waits forever (the same trap as
  ``opsq.worker.event_dispatcher``). Confirms stay on for everything published through
  the producer pool.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

#: Seconds before the first reconnection attempt, added per attempt, and at most.
RECONNECT_INTERVAL_START = 0.5
RECONNECT_INTERVAL_STEP = 0.5
RECONNECT_INTERVAL_MAX = 2.0


class Consumer(CeleryConsumer):
    """Celery's consumer with a short reconnection back-off and no confirms on its own
    connection."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.transport_options = {**(conn.transport_options or {}), "confirm_publish": False}
        conn.ensure_connection = partial(
            conn.ensure_connection, interval_start=RECONNECT_INTERVAL_START,
            interval_step=RECONNECT_INTERVAL_STEP, interval_max=RECONNECT_INTERVAL_MAX)
        return super().ensure_connected(conn)
