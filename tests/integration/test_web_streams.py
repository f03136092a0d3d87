"""Live job streams (server-sent events) of ``opsq web``: many open at once cost the
console neither its threads nor PostgreSQL connections, and each user's are capped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import secrets
import statistics
import time
from dataclasses import dataclass, field

import httpx
import pytest
from helpers import wait_until
from sqlalchemy import text
from webtools import Web, make_account

from opsq.settings import get_settings
from opsq.store import db
from opsq.web import streams
from opsq.web.api import EVENTS_KEEPALIVE

API = "/api/v1"
#: Streams the load test holds open at once.
LOAD_STREAMS = 200
#: /api/v1/me requests timed while they are open, and the slowest answer allowed (s).
ME_SAMPLES = 20
ME_MAX_SECONDS = 1.0
#: Seconds after which a stalled request is given up (the server is starved).
ME_TIMEOUT = 10.0
#: PostgreSQL connections the web process may hold with the streams open: its pool's
#: kept connections (the stream opens come in a burst) plus the one listening.
MAX_WEB_CONNECTIONS = get_settings().db_pool_size + 1
#: Seconds the tests give the server to open, or to end, every stream.
STREAMS_TIMEOUT = 60
#: A job that stays unfinished for the length of a test (it is cancelled at the end).
LONG_JOB = {"command": "sleep 120", "pattern": "fleet", "timeout": 180}


@dataclass
class Watch:
    """One event stream as a client sees it."""

    status: int | None = None
    error: str | None = None
    events: list[dict] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False


async def _watch(client: httpx.AsyncClient, job_id: str, w: Watch) -> None:
    try:
        async with client.stream("GET", f"{API}/jobs/{job_id}/events") as r:
            w.status = r.status_code
            if r.status_code != 200:
                w.error = json.loads(await r.aread())["error"]
                return
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    w.events.append(json.loads(line[len("data: "):]))
                    w.opened.set()
        w.ended = True
    finally:
        w.opened.set()  # refused or broken: nobody should wait for its first event


def _client(web: Web, token: str, size: int = 4) -> httpx.AsyncClient:
    """A client for ``size`` streams at once (each its own connection)."""
    return httpx.AsyncClient(
        base_url=web.url, headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(30, read=60),
        limits=httpx.Limits(max_connections=size + 1, max_keepalive_connections=0))


def _submit(web: Web, token: str) -> str:
    with web.client(token) as c:
        r = c.post(f"{API}/jobs", json=LONG_JOB)
        assert r.status_code == 201, r.text
        return r.json()["job_id"]


def _cancel(web: Web, token: str, job_id: str) -> None:
    """Cancel the job if it runs (422 once it has ended); a stalled server is left to the
    test's own assertions."""
    with web.client(token) as c, contextlib.suppress(httpx.TimeoutException):
        c.post(f"{API}/jobs/{job_id}/cancel")


def _me_latencies(web: Web, token: str) -> list[float]:
    """Seconds each of ME_SAMPLES requests took; up to the first that timed out."""
    times = []
    with web.client(token) as c:
        for _ in range(ME_SAMPLES):
            began = time.perf_counter()
            try:
                assert c.get(f"{API}/me", timeout=ME_TIMEOUT).status_code == 200
            except httpx.TimeoutException:
                times.append(time.perf_counter() - began)
                break
            times.append(time.perf_counter() - began)
    return times


def _web_connections(app: str) -> tuple[int, int]:
    """The web process's PostgreSQL connections: all, and those listening."""
    with db.get_engine().connect() as conn:
        row = conn.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE query ILIKE 'LISTEN %') "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = :app AND pid <> pg_backend_pid()"), {"app": app}).one()
        return row[0], row[1]


def test_hundreds_of_open_streams_leave_the_console_fast_and_postgres_alone(
        worker, tmp_path):
    op = make_account("operator", "streams")
    app = f"opsq-web-streams-{secrets.token_hex(3)}"  # libpq names the server's connections
    web = Web(tmp_path / "web.log", {"OPSQ_WEB_STREAMS_PER_USER": str(LOAD_STREAMS + 10),
                                     "PGAPPNAME": app})
    job_id = _submit(web, op.token)

    async def run() -> list[Watch]:
        idle = await asyncio.to_thread(_me_latencies, web, op.token)
        watches = [Watch() for _ in range(LOAD_STREAMS)]
        async with _client(web, op.token, LOAD_STREAMS) as client:
            tasks = [asyncio.create_task(_watch(client, job_id, w)) for w in watches]
            try:
                await asyncio.wait_for(asyncio.gather(*(w.opened.wait() for w in watches)),
                                       STREAMS_TIMEOUT)
                assert [w.status for w in watches] == [200] * LOAD_STREAMS, \
                    {w.error for w in watches}
                assert all(not w.ended and w.events for w in watches), \
                    "the job ended under the test"
                busy = await asyncio.to_thread(_me_latencies, web, op.token)
                connections, listening = await asyncio.to_thread(_web_connections, app)
                print(f"\n{LOAD_STREAMS} open streams: /api/v1/me median "
                      f"{statistics.median(busy) * 1000:.1f} ms, max "
                      f"{max(busy) * 1000:.1f} ms (none open: median "
                      f"{statistics.median(idle) * 1000:.1f} ms, max "
                      f"{max(idle) * 1000:.1f} ms); the web process's PostgreSQL "
                      f"connections: {connections}, {listening} of them listening")
                assert max(busy) < ME_MAX_SECONDS
                assert listening == 1 and connections <= MAX_WEB_CONNECTIONS
                # One notification of the job's end reaches every stream, which then ends.
                await asyncio.to_thread(_cancel, web, op.token, job_id)
                await asyncio.wait_for(asyncio.gather(*tasks), STREAMS_TIMEOUT)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return watches

    try:
        watches = asyncio.run(run())
    finally:
        _cancel(web, op.token, job_id)
        web.stop()
    assert all(w.ended and w.events[-1]["status"] == "cancelled" for w in watches)


def test_a_user_holds_at_most_the_configured_streams(worker, tmp_path):
    first, other = make_account("viewer", "streams"), make_account("viewer", "streams")
    op = make_account("operator", "streams")
    web = Web(tmp_path / "web.log", {"OPSQ_WEB_STREAMS_PER_USER": "2"})
    job_id = _submit(web, op.token)

    async def open_stream(token: str) -> tuple[Watch, asyncio.Task, httpx.AsyncClient]:
        w, client = Watch(), _client(web, token)
        task = asyncio.create_task(_watch(client, job_id, w))
        await asyncio.wait_for(w.opened.wait(), STREAMS_TIMEOUT)
        return w, task, client

    async def close(task: asyncio.Task, client: httpx.AsyncClient) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()

    async def run() -> None:
        held = []
        try:
            async with _client(web, first.token) as c:  # refused streams hold no slot
                for _ in range(3):
                    assert (await c.get(f"{API}/jobs/not-a-job/events")).status_code == 404
            for _ in range(2):
                held.append(await open_stream(first.token))
                assert held[-1][0].status == 200
            third = (await open_stream(first.token))
            held.append(third)
            assert third[0].status == 429
            assert "already has 2 live job streams open" in third[0].error
            assert "OPSQ_WEB_STREAMS_PER_USER=2" in third[0].error
            theirs = await open_stream(other.token)
            held.append(theirs)
            assert theirs[0].status == 200 and theirs[0].events
            await close(*held[0][1:])
            deadline = time.monotonic() + 5  # the server sees the disconnect at once
            while True:
                again = await open_stream(first.token)
                held.append(again)
                if again[0].status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert again[0].status == 200 and again[0].events
        finally:
            for _, task, client in held:
                await close(task, client)

    try:
        asyncio.run(asyncio.wait_for(run(), STREAMS_TIMEOUT * 2))
    finally:
        _cancel(web, op.token, job_id)
        web.stop()


def _terminate_listening(app: str) -> int:
    """Kill the web process's listening connection(s) as a database restart would."""
    with db.get_engine().connect() as conn:
        return len(conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = :app "
            "AND query ILIKE 'LISTEN %'"), {"app": app}).all())


def test_streams_outlive_a_lost_listening_connection(worker, tmp_path):
    op = make_account("operator", "streams")
    app = f"opsq-web-streams-{secrets.token_hex(3)}"
    web = Web(tmp_path / "web.log", {"PGAPPNAME": app})
    job_id = _submit(web, op.token)

    async def run() -> Watch:
        w = Watch()
        async with _client(web, op.token) as client:
            task = asyncio.create_task(_watch(client, job_id, w))
            try:
                await asyncio.wait_for(w.opened.wait(), STREAMS_TIMEOUT)
                assert w.status == 200
                assert await asyncio.to_thread(_terminate_listening, app) == 1
                await asyncio.to_thread(wait_until, lambda: _web_connections(app)[1] == 1,
                                        10, "the hub to listen again")
                began = time.monotonic()
                await asyncio.to_thread(_cancel, web, op.token, job_id)
                await asyncio.wait_for(task, STREAMS_TIMEOUT)
                # woken by the notification, not by the keep-alive's look at the job
                assert time.monotonic() - began < EVENTS_KEEPALIVE / 2
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return w

    try:
        w = asyncio.run(run())
    finally:
        _cancel(web, op.token, job_id)
        web.stop()
    assert w.ended and w.events[-1]["status"] == "cancelled"
    assert "lost the PostgreSQL connection waiting for jobs" in web.log.read_text()


# -- the hub in-process, with notifications made up ----------------------------------------


class FakeListener:
    """Hands the hub's thread the notifications a test puts in ``sent``."""

    def __init__(self) -> None:
        self.sent: queue.Queue[set[str]] = queue.Queue()
        self.closed = False
        self.failures = 0

    def wait(self, timeout: float) -> set[str]:
        try:
            ids = self.sent.get(timeout=timeout)
        except queue.Empty:
            return set()
        if ids == {"boom"}:
            self.failures += 1
            raise OSError("connection lost")
        return ids

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def hub():
    fake = FakeListener()
    h = streams.Hub(lambda: fake)
    h.fake = fake
    yield h
    h.close()


#: Seconds a woken subscriber may take to see it, and a quiet one is watched for.
WOKEN_WITHIN = 2.0
QUIET_FOR = 0.3


def test_a_notification_wakes_only_the_subscribers_of_its_job(hub):
    async def run() -> None:
        a1, a2 = hub.subscribe("A", "ann"), hub.subscribe("A", "bob")
        b = hub.subscribe("B", "ann")
        hub.fake.sent.put({"A"})
        assert await a1.wait(WOKEN_WITHIN) and await a2.wait(WOKEN_WITHIN)
        assert not await b.wait(QUIET_FOR)
        assert not await a1.wait(QUIET_FOR)  # one notification, one wake-up
        hub.fake.sent.put({"boom"})  # a failing listener does not stop the thread
        hub.fake.sent.put({"*"})  # after a reconnection: every job may have changed
        assert await b.wait(WOKEN_WITHIN + streams.RECONNECT_PAUSE)
        assert await a1.wait(WOKEN_WITHIN) and await a2.wait(WOKEN_WITHIN)
        assert hub.fake.failures == 1
        hub.fake.closed = False  # closed after the failure; next, only by hub.close()
        with b:
            assert hub.jobs() == {"A", "B"}
        a1.close()
        a1.close()  # twice is harmless
        assert hub.jobs() == {"A"} and hub.open_streams("ann") == 0
        a2.close()
        assert hub.jobs() == set() and hub.open_streams() == 0
        assert hub.publish({"A", "B", "*"}) == 0

    asyncio.run(run())
    hub.close()
    assert hub.fake.closed


def test_the_hub_caps_the_subscriptions_of_each_user(hub):
    async def run() -> None:
        held = [hub.subscribe(f"J{i}", "ann", limit=2) for i in range(2)]
        with pytest.raises(streams.TooManyStreams, match="already has 2 live job streams"):
            hub.subscribe("J3", "ann", limit=2)
        assert hub.open_streams("ann") == 2 and hub.jobs() == {"J0", "J1"}
        hub.subscribe("J3", "bob", limit=2).close()
        held[0].close()
        hub.subscribe("J3", "ann", limit=2).close()
        held[1].close()
        assert hub.open_streams() == 0

    asyncio.run(run())
