"""How a job rolls out: batch sizes and failure limits given as a count or a percentage
of the job's hosts, and the retry policy, checked before anything is queued."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from opsq import limits
from opsq.errors import OpsqError

#: Most runs of a host after its first.
MAX_RETRIES = 10
#: Longest wait, in seconds, between batches or before a retry.
MAX_DELAY = 86400.0
#: Retry on any failure of the command (needs a re-run-safe job), or only where the
#: command never started (no SSH connection).
RETRY_ON = ("failure", "unreachable")
_AMOUNT = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


class RolloutError(OpsqError):
    """A batch size, failure limit or retry option is malformed or out of range."""


def amount(text: str | int | None, total: int, what: str, *, minimum: int) -> int | None:
    """``N`` or ``P%`` of ``total`` hosts as a count (None: not given). A batch of a
    percentage rounds up (10 % of 5 hosts is 1); a failure limit rounds down."""
    if text is None:
        return None
    match = _AMOUNT.match(str(text))
    if not match:
        raise RolloutError(f"{what} must be a number of hosts or a percentage such as 25%, "
                           f"not {text!r}")
    n, percent = int(match.group(1)), bool(match.group(2))
    if percent:
        if n > 100:
            raise RolloutError(f"{what} of {n}% is more than every host")
        n = math.ceil(total * n / 100) if minimum >= 1 else math.floor(total * n / 100)
    if n < minimum:
        raise RolloutError(f"{what} must be at least {minimum}, not {text!r}")
    return n


@dataclass(frozen=True)
class Rollout:
    """A job's resolved rollout: None everywhere means all hosts at once, no retries."""

    batch_size: int | None = None
    batch_pause: float | None = None
    max_fail: int | None = None
    retries: int = 0
    retry_delay: float | None = None
    retry_on: str | None = None


def resolve(total: int, *, batch: str | int | None, pause: float | None,
            max_fail: str | int | None, retries: int, retry_delay: float | None,
            retry_on: str | None, rerun_safe: bool) -> Rollout:
    """Check the options against the job's ``total`` hosts. Raises RolloutError."""
    size = amount(batch, total, "--batch-size", minimum=1)
    if pause is not None:
        if size is None:
            raise RolloutError("--pause needs --batch-size")
        pause = limits.number(pause, "--pause", minimum=0, maximum=MAX_DELAY)
    fails = amount(max_fail, total, "--max-fail", minimum=0)
    if fails is not None and size is None:
        raise RolloutError("--max-fail needs --batch-size (it decides whether the next "
                           "batch starts)")
    retries = int(limits.number(retries, "--retries", minimum=0, maximum=MAX_RETRIES,
                                integer=True))
    if retry_delay is not None:
        retry_delay = limits.number(retry_delay, "--retry-delay", minimum=0,
                                    maximum=MAX_DELAY)
    if retry_on is not None and retry_on not in RETRY_ON:
        raise RolloutError(f"--retry-on must be one of {', '.join(RETRY_ON)}, not "
                           f"{retry_on!r}")
    if (retry_delay is not None or retry_on is not None) and not retries:
        raise RolloutError("--retry-delay and --retry-on need --retries")
    if retries:
        retry_on = retry_on or "failure"
        if retry_on == "failure" and not rerun_safe:
            raise RolloutError(
                "--retries would run the command again on hosts where it already ran and "
                "failed: add --rerun-safe if that is safe, or --retry-on unreachable to "
                "retry only hosts where it never started")
    return Rollout(size, pause, fails, retries, retry_delay, retry_on if retries else None)
