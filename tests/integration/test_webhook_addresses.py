"""Where job-end webhooks may go, and what one attempt may hold: refused addresses (at
submission, through the command line, and again when sent, against DNS rebinding), the
allow-list OPSQ_WEBHOOK_ALLOWED_NETWORKS, one deadline per attempt against a receiver
that trickles, and no transaction or lock open while a request is in flight.

Receivers are real HTTP servers on loopback and the attempts run against the test
database; only name resolution is faked, where a name must resolve two ways.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from addresses import REFUSED
from helpers import free_port, wait_until
from sqlalchemy import insert, text

from opsq.jobs import webhooks
from opsq.settings import get_settings
from opsq.store import db
from opsq.store.models import Job, JobStatus

pytestmark = pytest.mark.usefixtures("services")

SETTING = "OPSQ_WEBHOOK_ALLOWED_NETWORKS"
#: A name only the faked resolver knows.
NAME = "hooks.rebind.test"
#: Seconds of REQUEST_TIMEOUT in the deadline tests (the real one is 10).
SHORT_DEADLINE = 2.0
INVENTORY = "fleet:\n  hosts:\n    l1: {ansible_connection: local}\n"



@pytest.fixture(autouse=True)
def networks():
    """OPSQ_WEBHOOK_ALLOWED_NETWORKS in this process: none unless a test sets some with
    ``networks("127.0.0.0/8")``; the run's own value is put back after."""
    before = os.environ.get(SETTING)

    def allow(value: str) -> None:
        os.environ[SETTING] = value
        get_settings.cache_clear()

    allow("")
    yield allow
    if before is None:
        os.environ.pop(SETTING, None)
    else:
        os.environ[SETTING] = before
    get_settings.cache_clear()


@dataclass
class Hook:
    """An HTTP receiver on ``address`` that holds each request ``hold`` seconds, then
    answers ``code``; counts the requests and the most it held at once."""

    code: int = 200
    hold: float = 0.0
    address: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None
    hits: int = 0
    busy: int = 0
    most_busy: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Hook:
        hook, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    hook.hits += 1
                    hook.busy += 1
                    hook.most_busy = max(hook.most_busy, hook.busy)
                hook.arrived.set()
                time.sleep(hook.hold)
                with lock:
                    hook.busy -= 1
                self.send_response(hook.code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, self.port or free_port()), Handler)
        self.port = self.server.server_address[1]
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/hook?token=t0k"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    started: list[Hook] = []

    def start(**kwargs) -> Hook:
        started.append(Hook(**kwargs).start())
        return started[-1]

    yield start
    for h in started:
        h.stop()


def _job(urls: list[str]) -> str:
    """A finished job (no hosts) that notifies ``urls``, written as the callback left it."""
    job_id = str(uuid.uuid4())
    with db.session_scope() as s:
        s.execute(insert(Job).values(
            id=job_id, command="true", pattern="fleet", inventory="-", hosts=[],
            host_count=0, status=JobStatus.SUCCEEDED.value, submitted_by="test",
            notify=urls))
    return job_id


def _attempts(job_id: str) -> list[tuple]:
    with db.session_scope() as s:
        return [tuple(r) for r in s.execute(text(
            "SELECT attempt, status_code, error, delivered FROM notifications "
            "WHERE job_id = :j ORDER BY attempt"), {"j": job_id})]


def _written() -> tuple:
    with db.session_scope() as s:
        return tuple(s.scalar(text(f"SELECT count(*) FROM {t}"))
                     for t in ("jobs", "host_results", "notifications", "schedules"))


# -- refused when given --------------------------------------------------------------------


@pytest.mark.parametrize("host", REFUSED)
def test_a_refused_address_is_refused_by_the_command_line_and_nothing_is_written(
        opsq_cli, tmp_path, host):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY)
    before = _written()
    out = opsq_cli("run", "true", "-t", "fleet", "-i", str(inventory),
                   "--notify", f"http://{host}/latest/meta-data/", env={SETTING: ""})
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and SETTING in out.stderr, out.stderr
    assert f"http://{host}/..." in out.stderr, out.stderr
    assert _written() == before


def test_a_malformed_allow_list_is_refused_with_the_setting_named(opsq_cli, tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(INVENTORY)
    before = _written()
    out = opsq_cli("run", "true", "-t", "fleet", "-i", str(inventory),
                   "--notify", "https://hooks.example.com/", env={SETTING: "10.0.0.0/33"})
    assert out.returncode == 2 and SETTING in out.stderr, out.stderr
    assert _written() == before


# -- the allow-list --------------------------------------------------------------------------


def test_the_allow_list_lets_a_webhook_reach_a_local_receiver(networks, hook):
    rec = hook()
    job_id = _job([rec.url])
    with pytest.raises(webhooks.AddressRefused):
        webhooks.check_urls([rec.url])
    # Sent without the allow-list (a worker set up apart from the submitter): refused,
    # for good, and the receiver never sees it.
    refused = webhooks.attempt(job_id, 0, b"{}", first=True)
    assert refused is not None and refused.permanent and not refused.delivered
    assert "127.0.0.1 is a loopback address" in refused.error and SETTING in refused.error
    assert rec.hits == 0

    networks("10.0.0.0/8, 127.0.0.0/8")
    assert webhooks.check_urls([rec.url, rec.url.replace("127.0.0.1", "[::ffff:127.0.0.1]")])
    sent = webhooks.attempt(job_id, 0, b"{}", first=False)
    assert sent is not None and sent.delivered and rec.hits == 1
    assert _attempts(job_id) == [(1, None, refused.error, False), (2, 200, None, True)]

    networks("127.0.0.2/32")  # the network listed, not its neighbours
    with pytest.raises(webhooks.AddressRefused):
        webhooks.check_urls([rec.url])


def test_a_refused_address_found_when_sending_is_recorded_once_and_not_retried(worker):
    # Written as if given before the check existed: the worker refuses it when sending.
    job_id = _job(["http://169.254.169.254/latest/meta-data/"])
    from opsq.worker.fleet_tasks import send_notification

    send_notification.apply_async((job_id, 0), task_id=webhooks.task_id(job_id, 0))
    wait_until(lambda: _attempts(job_id), 15, "the refused attempt's record")
    ended = f"opsq.notify[{webhooks.task_id(job_id, 0)}] succeeded"
    wait_until(lambda: ended in worker.log.read_text(), 15, "the task's end")
    time.sleep(3 * get_settings().webhook_retry_base)  # a retry would have come by now
    [(number, status, error, delivered)] = _attempts(job_id)
    assert (number, status, delivered) == (1, None, False)
    assert error.startswith("refused, not retried: 169.254.169.254 is a link-local address")
    assert f"attempt 1: {error}" in worker.log.read_text()


# -- DNS rebinding ---------------------------------------------------------------------------


def _fake_resolver(monkeypatch, answers: list[str], names: tuple[str, ...] = (NAME,)
                   ) -> list[str]:
    """Make ``names`` resolve to each of ``answers`` in turn (the last from then on); the
    list returned grows with each address handed out."""
    real, given = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in names:
            return real(host, port, *args, **kwargs)
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        given.append(answers[min(len(given), len(answers) - 1)])
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (given[-1], port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return given


def test_a_name_that_resolves_elsewhere_when_sent_is_checked_again(monkeypatch, hook):
    rec = hook()
    given = _fake_resolver(monkeypatch, ["93.184.215.14", "127.0.0.1"])
    url = f"http://{NAME}:{rec.port}/hook"
    assert webhooks.check_urls([url]) == [url]  # global when given
    job_id = _job([url])
    sent = webhooks.attempt(job_id, 0, b"{}", first=True)
    assert given == ["93.184.215.14", "127.0.0.1"]
    assert sent is not None and sent.permanent and rec.hits == 0
    assert f"{NAME} resolves to 127.0.0.1, a loopback address" in sent.error
    assert _attempts(job_id) == [(1, None, sent.error, False)]


def test_the_request_goes_to_the_address_checked_not_to_a_second_resolution(networks,
                                                                            monkeypatch, hook):
    networks("127.0.0.1/32")
    checked = hook()
    other = hook(address="127.0.0.3", port=checked.port)  # not allowed: must stay unseen
    given = _fake_resolver(monkeypatch, ["127.0.0.1", "127.0.0.3"])
    url = f"http://{NAME}:{checked.port}/hook"
    sent = webhooks._post("job", url, 1, b"{}", time.monotonic() + webhooks.REQUEST_TIMEOUT)
    assert sent.delivered, sent
    assert given == ["127.0.0.1"]  # resolved once
    assert (checked.hits, other.hits) == (1, 0)


def test_https_to_the_checked_address_verifies_the_certificate_for_the_urls_name(
        networks, monkeypatch, hook, tmp_path):
    networks("127.0.0.1/32")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    rec = hook(tls=tls)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the one authority the client trusts
    other = "other.rebind.test"
    _fake_resolver(monkeypatch, ["127.0.0.1"], names=(NAME, other))
    deadline = time.monotonic() + webhooks.REQUEST_TIMEOUT
    sent = webhooks._post("job", f"https://{NAME}:{rec.port}/hook", 1, b"{}", deadline)
    assert sent.delivered, sent
    # The same address under a name the certificate does not carry: refused by TLS.
    wrong = webhooks._post("job", f"https://{other}:{rec.port}/hook", 1, b"{}", deadline)
    assert not wrong.delivered and "SSLCertVerificationError" in wrong.error, wrong
    assert other in wrong.error and rec.hits == 1


# -- one deadline per attempt ------------------------------------------------------------------


class Trickler:
    """A TCP server for one request: ``head`` sends the whole answer a byte a second;
    ``body`` sends its head at once, then the body a byte a second; ``slow reader``
    reads the request 256 KiB at a time, ten times a second. It stops when the client
    goes."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        self.stopped = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            if self.mode == "slow reader":
                while not self.stopped.wait(0.1) and conn.recv(256 * 1024):
                    pass
                return
            conn.settimeout(5)
            received = b""
            while b"\r\n\r\n" not in received:
                if not (got := conn.recv(65536)):
                    return
                received += got
            answer = self.ANSWER
            if self.mode == "body":
                head, _, answer = answer.partition(b"\r\n\r\n")
                conn.sendall(head + b"\r\n\r\n")
            for i in range(len(answer)):
                if self.stopped.wait(1.0):
                    return
                try:
                    conn.sendall(answer[i:i + 1])
                except OSError:
                    return

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()


@pytest.mark.parametrize("mode, payload", [
    ("head", b"{}"),  # the status line and headers, a byte a second: no answer, ever
    ("body", b"{}"),  # a 2xx at once, then the body a byte a second: delivered by the deadline
    # A large request read slowly: each send makes progress within its own timeout.
    ("slow reader", b"x" * (64 * 1024 * 1024)),
])
def test_an_attempt_ends_by_its_deadline_whatever_the_receiver_does(networks, monkeypatch,
                                                                     mode, payload):
    networks("127.0.0.0/8")
    monkeypatch.setattr(webhooks, "REQUEST_TIMEOUT", SHORT_DEADLINE)
    trickler = Trickler(mode)
    job_id = _job([trickler.url])
    result: list = []
    started = time.monotonic()
    sending = threading.Thread(
        target=lambda: result.append(webhooks.attempt(job_id, 0, payload, first=True)),
        daemon=True)
    sending.start()
    sending.join(3 * SHORT_DEADLINE)
    took = time.monotonic() - started
    trickler.stop()
    assert not sending.is_alive(), f"{mode}: the attempt outlived 3x its deadline"
    [sent] = result
    assert took < SHORT_DEADLINE + 1, (mode, sent, took)
    if mode == "body":
        assert sent.delivered, sent
        assert _attempts(job_id) == [(1, 200, None, True)]
    else:
        assert not sent.delivered and took > SHORT_DEADLINE - 0.5, (mode, sent, took)
        assert sent.error == (f"no complete answer within the {SHORT_DEADLINE:g} s deadline "
                              "(connect, send and answer)"), sent
        assert _attempts(job_id) == [(1, None, sent.error, False)]


# -- nothing held open while sending; one attempt at a time ------------------------------------


def test_no_transaction_or_lock_is_open_while_a_request_is_in_flight(networks, hook):
    networks("127.0.0.0/8")
    rec = hook(hold=2.0)
    job_id = _job([rec.url])
    result: list = []
    sending = threading.Thread(
        target=lambda: result.append(webhooks.attempt(job_id, 0, b"{}", first=True)))
    sending.start()
    assert rec.arrived.wait(10), "the request never came"
    time.sleep(0.8)  # the receiver holds the request; anything opened for it is 0.8 s old
    with db.session_scope() as s:
        open_transactions = s.execute(text(
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND xact_start < now() - interval '0.5 seconds'"
        )).all()
        locks = s.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                              "AND classid::bigint = :c"), {"c": webhooks.LOCK_CLASS})
    # The claim is committed before sending: other tasks see the attempt under way.
    assert _attempts(job_id) == [(1, None, None, False)]
    sending.join(10)
    assert open_transactions == [] and locks == 0, (open_transactions, locks)
    assert result[0].delivered and _attempts(job_id) == [(1, 200, None, True)]


def test_two_tasks_of_one_url_send_one_after_the_other(networks, hook):
    networks("127.0.0.0/8")
    rec = hook(code=500, hold=1.0)
    job_id = _job([rec.url])
    result: list = []
    tasks = [threading.Thread(target=lambda: result.append(
        webhooks.attempt(job_id, 0, b"{}", first=False))) for _ in range(2)]
    for t in tasks:
        t.start()
    for t in tasks:
        t.join(30)
    assert rec.hits == 2 and rec.most_busy == 1
    assert sorted(a.number for a in result) == [1, 2]
    assert [a[:2] for a in _attempts(job_id)] == [(1, 500), (2, 500)]


def test_an_attempt_left_without_outcome_is_waited_for_then_taken_over(networks,
                                                                       monkeypatch, hook):
    networks("127.0.0.0/8")
    monkeypatch.setattr(webhooks, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(webhooks, "CLAIM_MARGIN", 0.5)
    rec = hook()
    job_id = _job([rec.url])
    with db.session_scope() as s:  # claimed by a worker that died while sending
        s.execute(text("INSERT INTO notifications (job_id, url, attempt, delivered) "
                       "VALUES (:j, :u, 1, false)"), {"j": job_id, "u": rec.url})
    started = time.monotonic()
    sent = webhooks.attempt(job_id, 0, b"{}", first=True)
    assert time.monotonic() - started >= 1.2  # its deadline and margin were waited out
    assert sent is not None and sent.delivered and sent.number == 2
    assert _attempts(job_id) == [(1, None, webhooks.CUT_SHORT, False), (2, 200, None, True)]
