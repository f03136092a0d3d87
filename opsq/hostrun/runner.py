"""The runner interface: how opsq runs anything on one host, whatever the transport.

A ``Runner`` is one host's way of running programs. ``opsq.hostrun.local.LocalRunner``
runs them on the worker itself (``ansible_connection=local``), in a process group of
their own; ``opsq.hostrun.ssh.SshRunner`` runs them over a pooled Fabric connection.
Both are held to one contract (``tests/integration/test_runner_contract.py`` runs the same
tests against each):

- ``command(command, options) -> Outcome``: the operator's command, as text. Its output
  reaches ``options.live`` as it arrives and at most ``options.output_limit`` bytes of each
  stream are kept (the rest counted); it ends ``ok``/``failed`` by its exit code, and
  ``timeout`` at ``options.command_timeout``, killed with what it started; a cancel
  (``options.stopper``) kills it. A host's failure is a result, never an exception.
- ``exec(program, stdin, timeout, limit, keep_stdin=False) -> Exec``: one of opsq's own
  programs (``opsq.hostrun.programs``) with bytes in and bounded bytes out: a put's file
  on stdin, a get's file on stdout, a sudo password as the first line of stdin.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opsq.hostrun.stopper import Stopper
from opsq.status import HostStatus

if TYPE_CHECKING:
    from opsq.inventory import Host
    from opsq.settings import Settings

#: Bytes moved per read or write (invoke's default of 1000 is slow for large outputs).
CHUNK_SIZE = 64 * 1024
#: Bytes of stderr kept from opsq's own programs, whatever their stdout limit.
ERROR_LIMIT = 64 * 1024
#: Seconds one wait on an SSH channel lasts before the deadline is looked at again.
POLL_INTERVAL = 0.5

CANCELLED_BEFORE = "cancelled before it started (opsq cancel)"
CANCELLED_WHILE = "cancelled while running (opsq cancel): its command was stopped on the host"
#: A put, get, script or become program whose channel a cancel closed: its end was not
#: seen, so whether it finished first is not known (a put may have replaced the file).
CANCELLED_UNSEEN = ("cancelled while running (opsq cancel): its channel was closed before "
                    "its end was seen; it may have finished on the host first")


@dataclass
class Outcome:
    """What happened on one host. ``status`` tells success from failure without parsing."""

    status: HostStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    truncated: bool = False
    error: str | None = None
    attempts: int = 1
    #: Seconds the run took on the worker (connect included); None: since the claim.
    duration: float | None = None
    #: put: whether the host's file was written; None for other actions.
    changed: bool | None = None
    #: put: the sha256 of the host's file; get: of the file fetched.
    sha256: str | None = None
    #: get: the fetched file's bytes (stored once by content, not in the host row).
    content: bytes | None = field(default=None, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.status is HostStatus.OK


@dataclass(frozen=True)
class JobOptions:
    """What a host task needs of its job."""

    command: str
    command_timeout: float | None
    connect_timeout: float | None
    rerun_safe: bool
    #: The action (opsq.hostrun.programs): 'command', 'put', 'get' or 'script', and its parameters.
    kind: str = "command"
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    #: The inventory the job was resolved from (a worker reads become passwords there).
    inventory: str | None = None
    job_id: str = ""
    #: A rolling job's batch size (its end may release the next batch), and the retry
    #: policy (opsq.jobs.rolling).
    batch_size: int | None = None
    retries: int = 0
    retry_delay: float | None = None
    retry_on: str | None = None

    def retries_left(self, outcome: Outcome, attempt: int) -> bool:
        """Whether a host that ended so on its ``attempt``-th run is run again."""
        if attempt > self.retries or outcome.status is HostStatus.OK:
            return False
        if self.retry_on == "unreachable":
            return outcome.status is HostStatus.UNREACHABLE
        return outcome.status in (HostStatus.FAILED, HostStatus.TIMEOUT,
                                  HostStatus.UNREACHABLE)


@dataclass(frozen=True)
class RunOptions:
    """Deadlines and limits for one host's run, already resolved (job > inventory > settings)."""

    command_timeout: float
    connect_timeout: float
    output_limit: int
    known_hosts: Path
    connect_retries: int = 0
    retry_backoff: float = 0.5
    default_user: str | None = None
    default_key: str | None = None
    #: Stops the run from another thread (``opsq cancel``); None: nothing can.
    stopper: Stopper | None = field(default=None, compare=False)
    #: Receives the output as it arrives (opsq.worker.live_output.LiveOutput); None: only
    #: at the end.
    live: Any = field(default=None, compare=False)

    @classmethod
    def resolve(
        cls,
        host: Host,
        settings: Settings,
        command_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> RunOptions:
        """The one place options resolve: the job's value, else the host's inventory
        variable (``opsq_timeout``, ``opsq_connect_timeout``), else the setting."""

        def pick(job_value: float | None, var: str, default: float) -> float:
            if job_value is not None:
                return float(job_value)
            if host.vars.get(var) is not None:
                return float(host.vars[var])
            return float(default)

        return cls(
            # An inventory value cannot exceed the cap jobs are checked against (RabbitMQ's
            # consumer_timeout would drop the worker's channel first).
            command_timeout=min(pick(command_timeout, "opsq_timeout", settings.command_timeout),
                                settings.max_command_timeout),
            connect_timeout=pick(connect_timeout, "opsq_connect_timeout",
                                 settings.connect_timeout),
            output_limit=settings.output_limit,
            known_hosts=settings.known_hosts_path(),
            connect_retries=settings.connect_retries,
            retry_backoff=settings.retry_backoff,
            default_user=settings.ssh_user,
            default_key=settings.ssh_key,
        )


@dataclass
class Capture:
    """One stream's bounded capture: the first ``limit`` bytes, and the total count."""

    limit: int
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    @property
    def overflowed(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        return decode(bytes(self.kept))


def decode(data: bytes) -> str:
    """UTF-8 with replacement, once; a character cut at the limit becomes one U+FFFD."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=True)


@dataclass
class Exec:
    """What the program did: its exit code (None when it was killed at the deadline)."""

    exit_code: int | None
    stdout: Capture
    stderr: Capture
    timed_out: bool = False


def watching(stopper: Stopper | None, kill: Callable[[], None]) -> Any:
    """While a run goes on, ``opsq cancel`` (``stopper``) calls ``kill``."""
    return stopper.watching(kill) if stopper else contextlib.nullcontext()


class Runner(Protocol):
    """One host's way of running programs (see the module's documentation)."""

    def command(self, command: str, options: RunOptions) -> Outcome:
        """Run the operator's ``command``; never raises for the host's failure."""

    def exec(self, program: str, stdin: bytes, timeout: float, limit: int,
             keep_stdin: bool = False) -> Exec:
        """Run one of opsq's programs with ``stdin``; stdout kept up to ``limit`` bytes,
        stderr up to ``max(limit, ERROR_LIMIT)``. ``keep_stdin`` leaves stdin open once
        the bytes are sent (a watchdog on the host waits for it to close)."""
