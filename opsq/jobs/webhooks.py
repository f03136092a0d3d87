"""Job-end notifications: a finished job's summary POSTed to the URLs it was given.

Each (job, URL) is one ``opsq.notify`` task on the control queue (``opsq.worker.fleet_tasks``),
queued by the job's callback; this module checks the URLs when a job or schedule is
created, signs and sends one attempt, and records it in ``notifications``. A delivery is
at least once: a receiver can see the same job twice (an attempt whose answer arrived but
whose record was lost), never two attempts of one URL at the same time.

Where a webhook may go: only to global addresses, unless OPSQ_WEBHOOK_ALLOWED_NETWORKS
lists the network. A console user types the URL, and the worker sending it sits inside
the network (metadata services, the broker's management port, databases), so loopback,
private, link-local, shared, multicast, reserved and unspecified addresses are refused,
as are the IPv6 forms that carry one (IPv4-mapped, 6to4, NAT64) and the numeric spellings
a resolver accepts (``0x7f000001``, ``2130706433``, ``127.1``). The host is checked when
the URL is given (a name that does not resolve then is checked only when sent) and again
when sending: resolved once, every address checked, and the connection made to a checked
address, never to a second resolution (DNS rebinding).

An attempt is claimed in a short transaction (its row, with no outcome yet), sent with no
transaction or lock open, and its outcome recorded in a second one; the whole request,
connect to the last byte of the answer, has one deadline (REQUEST_TIMEOUT).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, select, text, update

from opsq.errors import ConfigError, OpsqError
from opsq.settings import get_settings
from opsq.store import db
from opsq.store.models import Job, Notification

logger = logging.getLogger(__name__)

#: URLs one job or schedule may notify at most.
MAX_URLS = 10
#: Characters of one URL at most (what common servers and proxies accept).
MAX_URL_LENGTH = 2048
#: Seconds one attempt may take in all: resolving, connecting, sending and the receiver's
#: whole answer; a slow receiver, even one trickling bytes, only costs this.
REQUEST_TIMEOUT = 10.0
#: Bytes of a receiver's answer (status line, headers and body) read at most.
MAX_ANSWER_BYTES = 64 * 1024
#: Bytes sent or read in one socket operation (each given what is left of the deadline).
CHUNK_BYTES = 16 * 1024
#: Seconds the host names given with --notify may take to resolve, in all, when a job or
#: schedule is submitted; one slower (or not resolving) is checked only when sent.
SUBMIT_RESOLVE_TIMEOUT = 2.0
#: Seconds past REQUEST_TIMEOUT after which an attempt with no outcome recorded counts as
#: cut short (its worker ended mid-attempt): the deadline ends every request by then.
CLAIM_MARGIN = 5.0
#: Seconds between two looks at an attempt of the same URL under way elsewhere.
CLAIM_POLL = 0.2
#: Longest pause between two attempts, in seconds (they start at the retry base and
#: double).
RETRY_DELAY_MAX = 600.0
#: Seconds of pauses after which a URL that keeps failing is given up.
RETRY_WINDOW = 3600.0
#: Characters of a bad URL quoted back in an error message.
SHOWN_CHARS = 60
SIGNATURE_HEADER = "X-Opsq-Signature"
USER_AGENT = "opsq"
#: The setting that lets webhooks reach networks that are not global.
ALLOW_SETTING = "OPSQ_WEBHOOK_ALLOWED_NETWORKS"
#: Namespace of the notify task and attempt ids, derived from the job id: a callback run
#: twice queues the same tasks, which find their URL already handled.
NOTIFY_NAMESPACE = uuid.UUID("6f707371-0000-4000-8000-6e6f74696679")
#: First key of the advisory lock one URL of a job is claimed under ('nt' in ASCII).
LOCK_CLASS = 0x6E74
#: The error recorded on an attempt found without an outcome past its deadline.
CUT_SHORT = "no outcome recorded: the attempt was cut short (its worker ended?)"
#: Shared address space (carrier-grade NAT): neither private nor global to ipaddress.
SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
#: NAT64's well-known prefix: the last 32 bits are the IPv4 address reached.
NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookError(OpsqError):
    """A notification URL is refused (scheme, host, count), or an attempt failed."""


class AddressRefused(WebhookError):
    """A webhook's host is, or resolves to, an address webhooks may not reach."""


@dataclass(frozen=True)
class Attempt:
    """One POST of a job's summary to one URL, as recorded in ``notifications``.
    ``permanent``: a failure that trying again cannot mend (a refused address)."""

    url: str
    number: int
    status_code: int | None
    error: str | None
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def check_urls(urls: Iterable[str] | None) -> list[str]:
    """The notification URLs, checked, in order, duplicates dropped: http or https with a
    host that is not a refused address (nor a name resolving to one), no credentials, at
    most MAX_URLS. Raises WebhookError naming the bad one (AddressRefused for a host),
    ConfigError for a malformed OPSQ_WEBHOOK_ALLOWED_NETWORKS."""
    checked: list[str] = []
    for url in urls or []:
        url = _check_url(url)
        if url not in checked:
            checked.append(url)
    if len(checked) > MAX_URLS:
        raise WebhookError(f"at most {MAX_URLS} --notify URLs per job, not {len(checked)}")
    allowed, resolve_by = allowed_networks(), time.monotonic() + SUBMIT_RESOLVE_TIMEOUT
    for url in checked:
        _check_host(url, allowed, resolve_by)
    return checked


def _check_url(url: Any) -> str:
    if not isinstance(url, str):
        raise WebhookError(f"a --notify URL must be text, not {type(url).__name__}")
    shown = repr(url if len(url) <= SHOWN_CHARS else url[:SHOWN_CHARS] + "...")
    if len(url) > MAX_URL_LENGTH or not url.isprintable() or any(c.isspace() for c in url):
        raise WebhookError(f"--notify {shown} is not a URL (at most {MAX_URL_LENGTH} "
                           "characters, no spaces or control characters)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port out of range)
    except ValueError:
        raise WebhookError(f"--notify {shown} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"--notify {shown}: give an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookError(f"--notify {shown}: credentials in the URL are refused (they "
                           "would be stored with the job); sign with OPSQ_WEBHOOK_SECRET")
    return url


def _check_host(url: str, allowed: list[Network], resolve_by: float) -> None:
    """Refuse the URL when its host is a refused address, or a name that resolves (before
    ``resolve_by``, time.monotonic()) to one. A name that does not resolve now is let
    through: it is checked again, and only then binding, when sent."""
    host, port = _host_port(url)
    try:
        addresses = _numeric(host, port)
        if addresses is None:
            addresses = [a for a, _, _ in _resolve(host, port, resolve_by - time.monotonic())]
    except (WebhookError, TimeoutError):
        return
    if (why := refusal(host, addresses, allowed)) is not None:
        raise AddressRefused(f"--notify {shown(url)}: {why}")


def allowed_networks(setting: str | None = None) -> list[Network]:
    """The networks of OPSQ_WEBHOOK_ALLOWED_NETWORKS (or ``setting``): comma-separated
    CIDRs, a bare address meaning itself. Raises ConfigError naming a malformed one."""
    value = get_settings().webhook_allowed_networks if setting is None else setting
    networks = []
    for item in (i.strip() for i in value.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{ALLOW_SETTING}: {item[:SHOWN_CHARS]!r} is not a network; "
                                  "give CIDRs such as 10.20.0.0/16, comma-separated") from None
    return networks


def refusal(host: str, addresses: Iterable[Address], allowed: list[Network]) -> str | None:
    """Why a webhook may not go to ``host``, which is or resolves to ``addresses`` (every
    one must pass), or None. The reason names the address, what it is, and the setting."""
    for address in addresses:
        if (kind := address_kind(address, allowed)) is not None:
            try:
                literal = ipaddress.ip_address(host) == address
            except ValueError:  # a name, or a numeric spelling only the C library reads
                literal = False
            said = f"{_short(host)} is" if literal else f"{_short(host)} resolves to {address},"
            return (f"{said} {kind}; webhooks go only to global addresses unless "
                    f"{ALLOW_SETTING} lists its network (CIDRs, comma-separated)")
    return None


def address_kind(address: Address, allowed: list[Network]) -> str | None:
    """What makes ``address`` refused ("a loopback address", ...), or None when a webhook
    may go there: it is global, or in one of the ``allowed`` networks. An IPv6 form that
    carries an IPv4 address (IPv4-mapped, 6to4, NAT64) is judged by that address."""
    if any(address in net for net in allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        carried = address.ipv4_mapped or address.sixtofour
        if carried is None and address in NAT64_NETWORK:
            carried = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if carried is not None:
            kind = address_kind(carried, allowed)
            return None if kind is None else f"an IPv6 form of {carried}, {kind}"
    for kind, refused in (
            ("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
            ("link-local", address.is_link_local), ("multicast", address.is_multicast),
            ("shared (100.64.0.0/10)", address in SHARED_NETWORK),
            ("reserved", address.is_reserved),
            ("site-local", getattr(address, "is_site_local", False)),
            ("private", address.is_private), ("non-global", not address.is_global)):
        if refused:
            return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"
    return None


def shown(url: str) -> str:
    """The URL for logs: scheme, host and port only (paths and queries of webhook URLs
    often hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{_short(parts.netloc.rpartition('@')[2])}/..."


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def task_id(job_id: str, index: int) -> str:
    """The id of the ``opsq.notify`` task of the job's URL number ``index``."""
    return str(uuid.uuid5(NOTIFY_NAMESPACE, f"{job_id}/{index}"))


def body(summary: dict[str, Any]) -> bytes:
    """The bytes POSTed (and signed): the job summary as compact JSON."""
    return json.dumps(summary, separators=(",", ":"), default=str).encode()


def signature(payload: bytes, secret: str) -> str:
    """The ``X-Opsq-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the bytes."""
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def retry_delay(attempts: int, base: float | None = None) -> float | None:
    """Seconds to wait before the attempt after number ``attempts``, doubling from
    ``base`` (OPSQ_WEBHOOK_RETRY_BASE) up to RETRY_DELAY_MAX; None once the pauses so far
    and this one would pass RETRY_WINDOW: the URL is given up."""
    base = get_settings().webhook_retry_base if base is None else base
    delays = [min(base * 2 ** n, RETRY_DELAY_MAX) for n in range(attempts)]
    return None if sum(delays) > RETRY_WINDOW else delays[-1]


def urls(job_id: str) -> list[str]:
    """The URLs the job notifies (none for a job that no longer exists)."""
    with db.session_scope() as session:
        return list(session.scalar(select(Job.notify).where(Job.id == job_id)) or [])


# -- one attempt: claimed, sent with nothing held open, recorded ---------------------------


@dataclass(frozen=True)
class _Claim:
    """An attempt's row, written before sending, with no outcome yet."""

    id: int
    url: str
    number: int


#: What ``_claim`` answers while another attempt of the URL is under way.
_BUSY = "busy"


def attempt(job_id: str, index: int, payload: bytes, first: bool) -> Attempt | None:
    """POST ``payload`` to the job's URL number ``index`` and record the attempt.

    None when there is nothing to send: the job or URL is gone, the URL was delivered
    already, (``first``: a task not yet retried) an earlier task of this URL exists (the
    job's callback ran twice), or this attempt was marked cut short meanwhile (its
    outcome came too late to record; the task that marked it sends again). Attempts of one URL
    run one at a time: each is claimed first, a row without outcome written in a short
    transaction; a task that finds an attempt under way waits for its outcome, and takes
    over one past its deadline without outcome (its worker ended). No transaction or
    lock is open while the request is in flight. Raises BackendUnavailable when
    PostgreSQL is down.
    """
    try:
        while True:
            started = time.monotonic()  # before the claim's now(): ends no later than it
            claim = _claim(job_id, index, first)
            if claim != _BUSY:
                break
            time.sleep(CLAIM_POLL)
        if not isinstance(claim, _Claim):  # nothing to send
            return None
        sent = _post(job_id, claim.url, claim.number, payload, started + REQUEST_TIMEOUT)
        if not _record(job_id, claim, sent):
            logger.warning("job %s: notification attempt %d (%s) was marked cut short "
                           "meanwhile; its outcome (%s) is not recorded", job_id, claim.number,
                           shown(claim.url), sent.error or sent.status_code)
            return None
        return sent
    except db.RETRYABLE as exc:
        raise db.unavailable(exc) from exc


def _claim(job_id: str, index: int, first: bool) -> _Claim | str | None:
    """Claim the next attempt of the job's URL number ``index`` (see ``attempt``): a
    _Claim, None when there is nothing to send, or _BUSY while another one is under way.
    One short transaction, under an advisory lock on the (job, URL)."""
    expiry = timedelta(seconds=REQUEST_TIMEOUT + CLAIM_MARGIN)
    with db.get_engine().begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(:k))"),
                     {"c": LOCK_CLASS, "k": task_id(job_id, index)})
        listed = conn.scalar(select(Job.notify).where(Job.id == job_id)) or []
        if index >= len(listed):
            return None
        url = listed[index]
        rows = conn.execute(
            select(Notification.id, Notification.delivered,
                   (Notification.status_code.is_(None) & Notification.error.is_(None))
                   .label("open"), (Notification.sent_at > func.now() - expiry).label("live"))
            .where(Notification.job_id == job_id, Notification.url == url)).all()
        if any(r.delivered for r in rows):
            return None
        unanswered = [r.id for r in rows if r.open]
        if any(r.live for r in rows if r.open):
            return _BUSY
        if unanswered:
            conn.execute(update(Notification).where(Notification.id.in_(unanswered))
                         .values(error=CUT_SHORT))
        if first and len(rows) > len(unanswered):
            return None
        number = len(rows) + 1
        claim_id = conn.scalar(insert(Notification).values(
            job_id=job_id, url=url, attempt=number, delivered=False).returning(Notification.id))
        return _Claim(claim_id, url, number)


def _record(job_id: str, claim: _Claim, sent: Attempt) -> bool:
    """Write the attempt's outcome on its claimed row, waiting out a database outage
    (the request was sent); False when the row was meanwhile marked cut short."""
    def write() -> bool:
        with db.get_engine().begin() as conn:
            return conn.execute(
                update(Notification)
                .where(Notification.id == claim.id, Notification.status_code.is_(None),
                       Notification.error.is_(None))
                .values(status_code=sent.status_code, error=sent.error,
                        delivered=sent.delivered)).rowcount == 1

    return db.retrying(write, f"recording notification attempt {claim.number} of job {job_id}")


def _post(job_id: str, url: str, number: int, payload: bytes, deadline: float) -> Attempt:
    """One attempt, signed, by ``deadline`` (time.monotonic()); never raises for what the
    receiver or the network does: that is a failed Attempt (``permanent`` when the
    address is refused)."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Opsq-Job": job_id, "Connection": "close",
               "X-Opsq-Delivery": str(uuid.uuid5(NOTIFY_NAMESPACE, f"{job_id}/{url}/{number}"))}
    if (secret := get_settings().webhook_secret):
        headers[SIGNATURE_HEADER] = signature(payload, secret)
    import http.client

    try:
        status, reason = send(url, payload, headers, deadline)
    except AddressRefused as exc:
        return Attempt(url, number, None, f"refused, not retried: {exc}", permanent=True)
    except TimeoutError:
        return Attempt(url, number, None, f"no complete answer within the "
                       f"{REQUEST_TIMEOUT:g} s deadline (connect, send and answer)")
    except (OpsqError, OSError, ValueError, http.client.HTTPException) as exc:  # resets,
        # refusals, names that do not resolve, an answer that is not HTTP
        return Attempt(url, number, None, f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Attempt(url, number, status, None)
    return Attempt(url, number, status, f"HTTP {status} {reason}".rstrip())


# -- the request: checked addresses, one deadline ------------------------------------------


def send(url: str, payload: bytes, headers: dict[str, str], deadline: float
         ) -> tuple[int, str]:
    """POST ``payload`` to ``url`` by ``deadline`` (time.monotonic()); the answer's status
    and reason. No redirect is followed.

    The host is resolved once and every address checked (AddressRefused unless all pass);
    the connection goes to a checked address, with the URL's host in the Host header and
    for TLS (SNI, certificate). Each socket operation gets what is left of the deadline
    (TimeoutError once it has passed), and at most MAX_ANSWER_BYTES of the answer are
    read; the status decides, so the body is read only while the deadline lasts. Raises
    WebhookError, ConfigError, OSError (TimeoutError, ssl.SSLError), HTTPException.
    """
    import http.client

    parts = urlsplit(url)
    host, port = _host_port(url)
    resolved = _resolve(host, port, deadline - time.monotonic())
    if (why := refusal(host, [a for a, _, _ in resolved], allowed_networks())) is not None:
        raise AddressRefused(why)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _connection_class()(host, port, [(f, s) for _, f, s in resolved],
                               parts.scheme.lower() == "https", deadline)
    try:
        conn.request("POST", target, body=payload, headers=headers)
        response = conn.getresponse()
        # The status came in time: a body cut short (deadline, size) changes nothing.
        with contextlib.suppress(OpsqError, OSError, ValueError, http.client.HTTPException):
            response.read(MAX_ANSWER_BYTES)
        return response.status, response.reason
    finally:
        conn.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)


def _numeric(host: str, port: int) -> list[Address] | None:
    """The address a numeric host means, in any spelling the C library takes for one
    (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``); None for a name."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return [ipaddress.ip_address(sockaddr[0]) for *_, sockaddr in found]


def _resolve(host: str, port: int, timeout: float) -> list[tuple[Address, int, Any]]:
    """Every TCP address of ``host`` (a name or numeric) as (address, family, sockaddr),
    resolved once, in a thread given ``timeout`` seconds (getaddrinfo has no timeout of
    its own). Raises WebhookError when it does not resolve (in time), TimeoutError when
    no time is left to try."""
    if timeout <= 0:
        raise TimeoutError("no time left to resolve the host")
    found: list[Any] = []

    def run() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            found.append(exc)

    resolver = threading.Thread(target=run, name="opsq-webhook-resolve", daemon=True)
    resolver.start()
    resolver.join(timeout)
    if not found:
        raise WebhookError(f"{host} did not resolve within {timeout:.3g} s")
    if isinstance(found[0], Exception):
        raise WebhookError(f"{host} does not resolve: {found[0]}")
    addresses = [(ipaddress.ip_address(sockaddr[0]), family, sockaddr)
                 for family, _, _, _, sockaddr in found[0]
                 if family in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        raise WebhookError(f"{host} has no IPv4 or IPv6 address")
    return addresses


def _left(deadline: float) -> float:
    """Seconds left before ``deadline``; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline has passed")
    return left


@functools.lru_cache(maxsize=1)
def _connection_class() -> type:
    """The HTTP connection class sends use. Built on first use: http.client costs the CLI
    time to import, and only workers send notifications."""
    import http.client
    import ssl

    class PinnedConnection(http.client.HTTPConnection):
        """A connection to addresses already checked: ``connect`` opens a socket to one
        of them (no resolution of its own), while the Host header and TLS (SNI and the
        certificate's name) use the URL's host; every socket operation is bounded by the
        attempt's deadline."""

        def __init__(self, host: str, port: int, addresses: list[tuple[int, Any]],
                     tls: bool, deadline: float) -> None:
            super().__init__(host, port)
            self.addresses, self.tls, self.deadline = addresses, tls, deadline

        def connect(self) -> None:
            error: OSError = TimeoutError("the attempt's deadline has passed")
            for family, sockaddr in self.addresses:
                raw = socket.socket(family, socket.SOCK_STREAM)
                try:
                    raw.settimeout(_left(self.deadline))
                    raw.connect(sockaddr)
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock = raw
                    if self.tls:  # the handshake, whole, within what is left
                        raw.settimeout(_left(self.deadline))
                        sock = ssl.create_default_context().wrap_socket(
                            raw, server_hostname=self.host)
                except OSError as exc:
                    raw.close()
                    error = exc
                    continue
                self.sock = _DeadlineSocket(sock, self.deadline)
                return
            raise error

    return PinnedConnection


class _DeadlineSocket:
    """The socket http.client is handed: each send and read gets what is left of the
    deadline (one recv returns as soon as a byte comes, so a receiver trickling bytes
    would otherwise renew a per-operation timeout forever), and reading stops at
    MAX_ANSWER_BYTES."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline, self.received = sock, deadline, 0

    def sendall(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        while view:
            self.sock.settimeout(_left(self.deadline))
            view = view[self.sock.send(view[:CHUNK_BYTES]):]

    def recv_into(self, buffer: Any) -> int:
        if self.received >= MAX_ANSWER_BYTES:
            raise WebhookError(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
        self.sock.settimeout(_left(self.deadline))
        size = min(len(buffer), CHUNK_BYTES, MAX_ANSWER_BYTES - self.received)
        got = self.sock.recv_into(buffer, size)
        self.received += got
        return got

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self), CHUNK_BYTES)

    def close(self) -> None:
        self.sock.close()


class _DeadlineReader(io.RawIOBase):
    """The raw stream under http.client's answer parsing: reads through _DeadlineSocket."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.sock.recv_into(buffer)
