"""A sudo password typed at the ``opsq`` prompt, handed to the job's workers through
RabbitMQ, never through PostgreSQL, a task's arguments or a file.

The CLI puts the password as the only message of a queue of the job's own
(``opsq.secret.<job id>``): transient (kept in RabbitMQ's memory, not written to its
disk), on a queue RabbitMQ deletes by itself once nobody has read it for
``SECRET_QUEUE_EXPIRES``. A worker reads it without taking it (``basic_get``, then
``reject`` with requeue), once per worker process and job, so every worker running the
job's hosts finds it (one holding it between get and reject is waited for); the job's
callback deletes the queue when the job ends. Anyone who may read the broker's vhost could
read it while the job runs: the same people who could already send tasks to the workers.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any

from kombu import Exchange, Queue
from kombu.exceptions import OperationalError

from opsq.errors import BackendUnavailable, OpsqError
from opsq.hostrun.programs import SUDO, Become
from opsq.hostrun.runner import JobOptions

#: Prefix of the queue that holds a job's prompted password.
SECRET_QUEUE_PREFIX = "opsq.secret."
#: Seconds after its last read RabbitMQ deletes a job's password queue by itself (a job
#: whose callback never runs still does not keep the password for longer).
SECRET_QUEUE_EXPIRES = 3600
#: Prompted passwords a worker process keeps in memory (one per recent job).
CACHE_SIZE = 64
#: Seconds a worker keeps asking for a job's password while its queue looks empty
#: (another worker process holds the message between its get and its reject).
EMPTY_RETRY_SECONDS = 3.0
#: Seconds between two such asks.
EMPTY_RETRY_INTERVAL = 0.05
#: Why a host found no password (the host records it as its error).
GONE = ("the password typed at the prompt is no longer held by the broker (the job "
        f"waited longer than {SECRET_QUEUE_EXPIRES} s, or it ended)")

#: job id -> (password, when this copy is dropped: time.monotonic()), the most recently
#: used last. A copy lasts no longer than the broker keeps the queue (SECRET_QUEUE_EXPIRES):
#: a worker that is not the job's callback never hears that the job ended.
_cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
#: job id -> the lock its hosts in this process wait on while one reads the broker.
_reading: dict[str, threading.Lock] = {}
#: Guards _cache and _reading.
_lock = threading.Lock()


def queue_for(job_id: str) -> Queue:
    name = SECRET_QUEUE_PREFIX + job_id
    return Queue(name, Exchange(""), routing_key=name, durable=False, auto_delete=False,
                 queue_arguments={"x-expires": SECRET_QUEUE_EXPIRES * 1000})


def hand_over(app, job_id: str, password: str) -> None:
    """Put ``password`` where the job's workers find it (before the job is published)."""
    queue = queue_for(job_id)
    try:
        _publish(app, queue, password)
    except (OperationalError, OSError) as exc:
        raise BackendUnavailable(f"cannot hand the password to RabbitMQ: {exc}") from None


def _publish(app, queue: Queue, password: str) -> None:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        queue(channel).declare()
        channel.basic_publish(
            channel.prepare_message(password.encode(),
                                    content_type="application/octet-stream",
                                    content_encoding="binary",
                                    properties={"delivery_mode": 1}),
            exchange="", routing_key=queue.name)


def read(app, job_id: str) -> str:
    """The job's prompted password, read from the broker once per worker process (the
    job's other hosts in the process wait for that read, then share it). Raises
    OpsqError when it is gone (expired, or the job ended)."""
    with _lock:
        if (held := _cached(job_id)) is not None:
            return held
        job_lock = _reading.setdefault(job_id, threading.Lock())
    with job_lock:
        with _lock:
            if (held := _cached(job_id)) is not None:  # read by the host this one waited for
                return held
        try:
            password = _fetch(app, job_id)
            with _lock:
                _cache[job_id] = (password, time.monotonic() + SECRET_QUEUE_EXPIRES)
                while len(_cache) > CACHE_SIZE:
                    _cache.popitem(last=False)
        finally:
            with _lock:
                _reading.pop(job_id, None)
    return password


def _cached(job_id: str) -> str | None:
    """This process's copy of the job's password, unless it is past its time (under
    _lock); expired copies of every job are dropped on the way."""
    now = time.monotonic()
    for stale in [j for j, (_, until) in _cache.items() if until <= now]:
        del _cache[stale]
    if job_id not in _cache:
        return None
    _cache.move_to_end(job_id)
    return _cache[job_id][0]


def _fetch(app, job_id: str) -> str:
    # basic_get, then reject with requeue: between the two the message is held by this
    # consumer and the queue looks empty to every other one (another worker process
    # reading the same job's password). An empty queue is asked again for a while.
    name = queue_for(job_id).name
    deadline = time.monotonic() + EMPTY_RETRY_SECONDS
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        while True:
            try:
                message = channel.basic_get(name, no_ack=False)
            except Exception as exc:  # the queue is gone: expired, or the job already ended
                if "NOT_FOUND" in str(exc) or "404" in str(exc):
                    raise OpsqError(GONE) from None
                raise
            if message is not None:
                break
            if time.monotonic() >= deadline:
                raise OpsqError(GONE)
            time.sleep(EMPTY_RETRY_INTERVAL)
        try:
            return bytes(message.body).decode()
        finally:
            channel.basic_reject(message.delivery_tag, requeue=True)


def forget(app, job_id: str) -> None:
    """Delete the job's password queue (and this process's copy)."""
    with _lock:
        _cache.pop(job_id, None)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue_for(job_id).name)


# -- how a host becomes another user -------------------------------------------------


def _inventory_vars(path: str | None, host: str) -> dict[str, Any]:
    """The host's variables in the job's inventory, read now (secrets are never stored)."""
    if not path:
        return {}
    from opsq.jobs import load_inventory

    try:
        inv = load_inventory(path)
    except OpsqError as exc:
        raise OpsqError(f"cannot read the inventory {path} for the become settings: {exc}"
                        ) from None
    found = inv.hosts.get(host)
    return dict(found.vars) if found is not None else {}


def become_for(host: str, job: JobOptions, password_file: str | None) -> Become:
    """How ``host`` becomes another user for ``job``: the user from the job, else the
    inventory's ``ansible_become_user``, else root; the password typed at the job's
    prompt, else the inventory's ``ansible_become_pass``, else ``password_file``.
    Raises OpsqError."""
    hostvars = _inventory_vars(job.inventory, host)
    method = hostvars.get("ansible_become_method") or SUDO
    if method != SUDO:
        raise OpsqError(f"become method {method!r} is not supported (only sudo)")
    user = job.params.get("become_user") or hostvars.get("ansible_become_user") or "root"
    password = hostvars.get("ansible_become_pass") or hostvars.get("ansible_become_password")
    if job.params.get("become_prompt"):
        from opsq.app import app

        password = read(app, job.job_id)
    if password is None and password_file:
        try:
            with open(os.path.expanduser(password_file), encoding="utf-8") as f:
                password = f.read().rstrip("\n")
        except OSError as exc:
            raise OpsqError(f"cannot read OPSQ_BECOME_PASSWORD_FILE: {exc}") from None
    return Become(str(user), None if password is None else str(password))
