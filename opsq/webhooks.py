"""Job-end notifications: a finished job's summary POSTed to the URLs it was given.

Each (job, URL) is one ``opsq.notify`` task on the control queue (``opsq.tasks.fleet``),
queued by the job's callback; this module checks the URLs when a job or schedule is
created, signs and sends one attempt, and records it in ``notifications``. A delivery is
at least once: a receiver can see the same job twice (an attempt whose answer arrived but
whose record was lost), never two attempts of one URL at the same time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, select, text

from opsq import db
from opsq.errors import OpsqError
from opsq.models import Job, Notification
from opsq.settings import get_settings

logger = logging.getLogger(__name__)

#: URLs one job or schedule may notify at most.
MAX_URLS = 10
#: Characters of one URL at most (what common servers and proxies accept).
MAX_URL_LENGTH = 2048
#: Seconds one POST may take, connect to answer; a slow receiver only costs this.
REQUEST_TIMEOUT = 10.0
#: Longest pause between two attempts, in seconds (they start at the retry base and
#: double).
RETRY_DELAY_MAX = 600.0
#: Seconds of pauses after which a URL that keeps failing is given up.
RETRY_WINDOW = 3600.0
#: Characters of a bad URL quoted back in an error message.
SHOWN_CHARS = 60
SIGNATURE_HEADER = "X-Opsq-Signature"
USER_AGENT = "opsq"
#: Namespace of the notify task and attempt ids, derived from the job id: a callback run
#: twice queues the same tasks, which find their URL already handled.
NOTIFY_NAMESPACE = uuid.UUID("6f707371-0000-4000-8000-6e6f74696679")
#: First key of the advisory lock one URL of a job is sent under ('nt' in ASCII).
LOCK_CLASS = 0x6E74


class WebhookError(OpsqError):
    """A notification URL is refused (scheme, host, count), or an attempt failed."""


@dataclass(frozen=True)
class Attempt:
    """One POST of a job's summary to one URL, as recorded in ``notifications``."""

    url: str
    number: int
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def check_urls(urls: Iterable[str] | None) -> list[str]:
    """The notification URLs, checked, in order, duplicates dropped: http or https with a
    host, no credentials, at most MAX_URLS. Raises WebhookError naming the bad one."""
    checked: list[str] = []
    for url in urls or []:
        url = _check_url(url)
        if url not in checked:
            checked.append(url)
    if len(checked) > MAX_URLS:
        raise WebhookError(f"at most {MAX_URLS} --notify URLs per job, not {len(checked)}")
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


def shown(url: str) -> str:
    """The URL for logs: scheme, host and port only (paths and queries of webhook URLs
    often hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


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


def attempt(job_id: str, index: int, payload: bytes, first: bool) -> Attempt | None:
    """POST ``payload`` to the job's URL number ``index`` and record the attempt.

    None when there is nothing to send: the job or URL is gone, the URL was delivered
    already, or (``first``: a task not yet retried) an earlier task of this URL exists
    (the job's callback ran twice). Attempts of one URL run one at a time (an advisory
    lock held while sending). Raises BackendUnavailable when PostgreSQL is down.
    """
    try:
        with db.get_engine().begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:c, hashtext(:k))"),
                         {"c": LOCK_CLASS, "k": task_id(job_id, index)})
            listed = conn.scalar(select(Job.notify).where(Job.id == job_id)) or []
            if index >= len(listed):
                return None
            url = listed[index]
            done, delivered = conn.execute(
                select(func.count(), func.coalesce(func.bool_or(Notification.delivered), False))
                .where(Notification.job_id == job_id, Notification.url == url)).one()
            if delivered or (first and done):
                return None
            sent = _post(job_id, url, done + 1, payload)
            conn.execute(insert(Notification).values(
                job_id=job_id, url=url, attempt=sent.number, status_code=sent.status_code,
                error=sent.error, delivered=sent.delivered))
            return sent
    except db.RETRYABLE as exc:
        raise db.unavailable(exc) from exc


def _opener() -> Any:
    """An opener that follows no redirect. Built on first use: urllib.request costs the
    CLI ~20 ms to import, and only workers send notifications."""
    import urllib.request

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        # A redirect would resend the summary (or drop it, as GET) to an address nobody
        # configured: a 3xx is a failed attempt instead.
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirects)


def _post(job_id: str, url: str, number: int, payload: bytes) -> Attempt:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Opsq-Job": job_id,
               "X-Opsq-Delivery": str(uuid.uuid5(NOTIFY_NAMESPACE, f"{job_id}/{url}/{number}"))}
    if (secret := get_settings().webhook_secret):
        headers[SIGNATURE_HEADER] = signature(payload, secret)
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with _opener().open(request, timeout=REQUEST_TIMEOUT) as response:
            return Attempt(url, number, response.status, None)
    except urllib.error.HTTPError as exc:
        exc.close()
        return Attempt(url, number, exc.code, f"HTTP {exc.code} {exc.reason}")
    except urllib.error.URLError as exc:
        return Attempt(url, number, None, str(exc.reason))
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets,
        # an answer that is not HTTP
        return Attempt(url, number, None, f"{type(exc).__name__}: {exc}")
