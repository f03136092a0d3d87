"""The SSH runner: Fabric connections with strict host keys, a pool, deadlines, and
output capture that stays bounded in memory (``SshRunner``, one implementation of
``opsq.hostrun.runner.Runner``).

Fabric hard-codes paramiko's ``AutoAddPolicy``; every connection made here replaces it
with a policy that refuses unknown keys, and checks against the known_hosts file from
settings. A command's own failure is a result (``opsq.hostrun.runner.Outcome``), never an
exception.
"""

from __future__ import annotations

import logging
import random
import selectors
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut

from opsq.errors import HostKeyError
from opsq.hostrun.local import LocalRunner
from opsq.hostrun.runner import (
    CANCELLED_BEFORE,
    CANCELLED_WHILE,
    CHUNK_SIZE,
    ERROR_LIMIT,
    POLL_INTERVAL,
    Capture,
    Exec,
    Outcome,
    RunOptions,
    decode,
    watching,
)
from opsq.hostrun.stopper import Stopper
from opsq.inventory import Host
from opsq.status import HostStatus

logger = logging.getLogger(__name__)

#: Upper bound in seconds of the random jitter added to each retry back-off.
RETRY_JITTER = 0.25
#: An SSH failure after this fraction of the connect timeout counts as a stall (timeout).
STALL_FRACTION = 0.9
#: The ssh_config keywords (of the worker user's ~/.ssh/config and /etc/ssh/ssh_config)
#: that apply to opsq's connections. The inventory's user and port win; IdentityFile keys
#: are tried after the inventory's or OPSQ_SSH_KEY. Agent forwarding never happens,
#: ConnectTimeout is ignored, ProxyJump/ProxyCommand are refused, and host keys are only
#: checked against OPSQ_KNOWN_HOSTS (StrictHostKeyChecking, UserKnownHostsFile are unused).
HONOURED_SSH_CONFIG = ("HostName", "User", "IdentityFile")


#: How a command runs on a host: in the login shell (as plain ssh runs it), with stdin from
#: /dev/null and stdout/stderr kept apart, beside a watchdog that reads the channel's
#: stdin. opsq never writes to it: it ends when opsq closes the channel (deadline,
#: cancel) or the worker's connection drops (worker killed). The watchdog then
#: terminates the process group sshd made for the session, which holds the command and
#: all it started (TERM, then KILL after a grace). It signals its process group only
#: when that group leads a session (read from /proc), as a session sshd or ``setsid``
#: made does: never a group it merely shares with others, such as a caller's.
#: When the command ends first, the watchdog is killed and the command's background
#: children are left alone (``nohup server &`` keeps running). The watchdog is a subshell
#: (a fork, no exec), and waiting is left to ``wait``: no signal can slip between reads.
REMOTE_WRAPPER = """exec 3<&0
%(shell)s -c "$1" </dev/null 3<&- &
p=$!
( trap '' TERM
  while IFS= read -r _; do :; done
  read -r _ _ _ _ g s _ </proc/$$/stat
  if [ -n "$g" ] && [ "$g" = "$s" ]; then
    kill -TERM -"$g" 2>/dev/null; sleep %(grace)d; kill -KILL -"$g" 2>/dev/null
  fi ) <&3 >/dev/null 2>&1 &
w=$!
exec 3<&- </dev/null
wait "$p"; rc=$?
kill -KILL "$w" 2>/dev/null
exit "$rc"
"""
#: Seconds the remote side gives a stopped command between TERM and KILL.
REMOTE_KILL_GRACE = 2


#: The shell a command runs in: the login user's, as plain ssh does.
LOGIN_SHELL = '"${SHELL:-/bin/sh}"'


def wrap_remote(command: str, shell: str = LOGIN_SHELL, new_session: bool = False) -> str:
    """``command`` run through REMOTE_WRAPPER by /bin/sh (whatever the login shell is),
    in ``shell``. ``new_session``: start the wrapper in a session of its own (``setsid``),
    where nothing else makes one for it (a command run through sudo)."""
    wrapper = REMOTE_WRAPPER % {"grace": REMOTE_KILL_GRACE, "shell": shell}
    run = f"/bin/sh -c {shlex.quote(wrapper)} opsq {shlex.quote(command)}"
    if not new_session:
        return run
    return f"if command -v setsid >/dev/null; then exec setsid -w {run}; fi; exec {run}"


# -- output capture -------------------------------------------------------------------

#: Why opsq ended a running command (``_CappedOutput.ended_by``): its deadline passed.
TIMEOUT_KILL = "timeout"
#: Why opsq ended a running command: ``opsq cancel``.
CANCEL_KILL = "cancel"


class CancelledBeforeStart(Exception):
    """``opsq cancel`` came before the command was sent to the host: it never ran."""


class _CappedOutput:
    """Runner mixin: keep at most ``output_limit`` bytes per stream, count the rest.

    invoke keeps every chunk in memory and re-joins the whole buffer after each read to
    feed its watchers (quadratic on large output), and decodes each 1000-byte chunk on
    its own (splitting multi-byte characters). This reads big chunks, keeps a bounded
    prefix, decodes it once as UTF-8 with replacement, and skips the watcher machinery
    (opsq never answers prompts).
    """

    read_chunk_size = CHUNK_SIZE
    output_limit: int = 1024 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._end_lock = threading.Lock()
        #: What opsq ended the command for: TIMEOUT_KILL (its deadline) or CANCEL_KILL
        #: (``opsq cancel``); None while it runs, or when it exited before either.
        self.ended_by: str | None = None
        #: Whether the command was sent to the host (a cancel may come first).
        self.started = False

    def kill(self) -> None:
        # invoke's timer calls kill() at the deadline.
        self._end(TIMEOUT_KILL)

    def cancel(self) -> None:
        """Stop the command for ``opsq cancel``: at once when it runs, before it starts
        when it has not (a cancel during channel setup is kept, not lost)."""
        self._end(CANCEL_KILL)

    def _end(self, why: str) -> None:
        # One decision per run, under a lock: a command whose exit came first keeps it
        # (a late kill is not recorded), else the reason is recorded and the command
        # killed. No channel yet: start() applies the recorded reason.
        with self._end_lock:
            if self.ended_by is not None or (self.started and self._exited()):
                return
            self.ended_by = why
            started = self.started
        if started:
            super().kill()  # type: ignore[misc]

    def _exited(self) -> bool:
        try:
            return bool(self.process_is_finished)  # type: ignore[attr-defined]
        except AttributeError:  # nothing started yet
            return False

    def start(self, *args: Any, **kwargs: Any) -> None:
        with self._end_lock:
            if self.ended_by is not None:
                raise CancelledBeforeStart()
        super().start(*args, **kwargs)  # type: ignore[misc]
        with self._end_lock:
            self.started = True
            ended_during_setup = self.ended_by is not None
        if ended_during_setup:  # the kill came while the channel opened: apply it now
            super().kill()  # type: ignore[misc]

    @property
    def timed_out(self) -> bool:
        # invoke decides "timed out" by the timer thread having ended, which races with
        # collecting the result, and holds a timer that fired after the command's exit
        # for a timeout; opsq's own decision (_end) says it.
        return self.ended_by == TIMEOUT_KILL

    def _handle_output(self, buffer_: list[str], hide: bool, output: Any, reader: Callable) -> None:
        name = "stdout" if buffer_ is getattr(self, "stdout", None) else "stderr"
        live = getattr(self, "live", None)
        kept = bytearray()
        total = 0
        while True:
            data = reader(self.read_chunk_size)
            if not data:
                break
            total += len(data)
            room = self.output_limit - len(kept)
            if room > 0:
                kept += data[:room]
            if live is not None:
                live.add(name, data)
        buffer_.append(decode(bytes(kept)))
        self.byte_counts = {**getattr(self, "byte_counts", {}), name: total}


class CappedRemote(_CappedOutput, Remote):
    """Fabric's remote runner with bounded output capture."""


def _execute(runner: Any, command: str, options: RunOptions) -> Outcome:
    """Run ``command`` with ``runner`` (a _CappedOutput); its status follows what happened
    to the command: its exit when it ended first, ``timeout`` or ``cancelled`` when opsq
    killed it (or, cancelled, never started it)."""
    runner.output_limit = options.output_limit
    runner.live = options.live
    try:
        with watching(options.stopper, runner.cancel):
            result = runner.run(command, hide=True, warn=True, in_stream=False,
                                timeout=options.command_timeout)
    except CancelledBeforeStart:
        return Outcome(status=HostStatus.CANCELLED, error=CANCELLED_BEFORE)
    except CommandTimedOut as exc:
        result = exc.result
    except (paramiko.SSHException, EOFError, OSError):
        if runner.ended_by != CANCEL_KILL:
            raise
        # The cancel closed the channel as it opened or as the command was sent.
        return Outcome(status=HostStatus.CANCELLED,
                       error=CANCELLED_WHILE if runner.started else CANCELLED_BEFORE)
    outcome = _outcome_from(result, runner, options)
    if runner.ended_by == TIMEOUT_KILL:
        outcome.status = HostStatus.TIMEOUT
        outcome.error = f"command still running after {options.command_timeout:g} s; killed"
    elif runner.ended_by == CANCEL_KILL:
        outcome.status, outcome.error = HostStatus.CANCELLED, CANCELLED_WHILE
    else:
        outcome.status = HostStatus.OK if result.exited == 0 else HostStatus.FAILED
        outcome.exit_code = result.exited
    return outcome


def _outcome_from(result: Any, runner: Any, options: RunOptions) -> Outcome:
    counts = getattr(runner, "byte_counts", {})
    out_bytes, err_bytes = counts.get("stdout", 0), counts.get("stderr", 0)
    return Outcome(
        status=HostStatus.ERROR,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_bytes=out_bytes,
        stderr_bytes=err_bytes,
        truncated=max(out_bytes, err_bytes) > options.output_limit,
    )


# -- host keys --------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint, as ``ssh-keygen -l`` prints it."""
    return f"{key.get_name()} {key.fingerprint}"


def known_hosts_name(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts (``[addr]:port`` unless the port is 22)."""
    return address if port == 22 else f"[{address}]:{port}"


def changed_key_error(host: Host, known_hosts: Path, offered: paramiko.PKey,
                      recorded: list[paramiko.PKey]) -> HostKeyError:
    """The error for a host that offers a key matching none recorded for it (any type)."""
    return HostKeyError(
        f"host key of {host.name} ({known_hosts_name(ssh_address(host), host.port)}) CHANGED: "
        f"{known_hosts} has {', '.join(fingerprint(k) for k in recorded)}, the host offers "
        f"{fingerprint(offered)}. Possible man-in-the-middle; if the change is expected, "
        f"run 'opsq hosts retrust {host.name}'"
    )


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, naming its fingerprint.

    A host with keys recorded under other types is refused as a changed key: offering
    another type than the recorded one must not pass for a first contact.
    """

    def __init__(self, host: Host, known_hosts: Path) -> None:
        self.host, self.known_hosts = host, known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        recorded = client.get_host_keys().lookup(hostname)
        if recorded:
            raise changed_key_error(self.host, self.known_hosts, key, list(recorded.values()))
        raise HostKeyError(
            f"host key of {self.host.name} ({hostname}) is not in {self.known_hosts}: "
            f"it offers {fingerprint(key)}. If that is the right key, run "
            f"'opsq hosts trust {self.host.name}'"
        )


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """Read known_hosts; a missing file is an empty one (every host then is refused)."""
    keys = paramiko.HostKeys()
    if path.exists():
        keys.load(str(path))
    return keys


def scan_host_key(host: Host, timeout: float) -> paramiko.PKey:
    """Fetch the key a host presents, without authenticating. Raises OSError/SSHException."""
    sock = socket.create_connection((ssh_address(host), host.port), timeout=timeout)
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


# -- connections ------------------------------------------------------------------------


#: Guards the process's config template: built once, then only cloned (connection_config).
_template_lock = threading.Lock()
_template: FabricConfig | None = None


def _template_held() -> FabricConfig:
    # The caller holds _template_lock. A Fabric config that parsed the ssh_config files
    # itself parses them again into its own SSHConfig on every clone() (fabric/config.py,
    # Config.clone calls self.load_ssh_config()), so a template cloned from many threads
    # would be written while read. A clone is given its SSHConfig object and never
    # parses: the template is the clone of the loaded config, not the loaded config.
    global _template
    if _template is None:
        loaded = FabricConfig(overrides={"runners": {"remote": CappedRemote}})
        _template = loaded.clone()
    return _template


def connection_config() -> FabricConfig:
    """A Fabric config of its own for one connection (about 0.2 ms to make).

    ``Connection(config=cfg)`` keeps ``cfg`` itself when it is a Fabric Config, and
    invoke rebuilds a config from an empty dict on every write through it
    (``Config.merge``, called by ``_modify``, ``_remove`` and ``load_*``): with one
    config shared by the connections, a thread reading it while another writes sees no
    keys at all ("No attribute or config key found for 'inline_ssh_env'"). Each
    connection gets a clone instead, and the template is only read, under a lock.
    """
    with _template_lock:
        return _template_held().clone()


def ssh_address(host: Host) -> str:
    """The address opsq connects to for ``host``: the ssh_config ``HostName`` given for
    its address, else the address itself (trusting and running look at the same one)."""
    with _template_lock:
        found = _template_held().base_ssh_config.lookup(host.address)
    return str(found.get("hostname", host.address))


def connection_for(host: Host, options: RunOptions) -> Connection:
    """A connection to ``host``, not yet open, with a config of its own
    (connection_config) and a host key policy that refuses unknown and changed keys.

    Of the worker's ssh_config (``~/.ssh/config``, ``/etc/ssh/ssh_config``) only
    HONOURED_SSH_CONFIG applies: no agent is ever forwarded (``ForwardAgent yes`` would lend
    the worker's keys to every host), opsq's connect timeout beats ``ConnectTimeout``, and
    a ``ProxyJump``/``ProxyCommand`` is refused (HostKeyError).
    """
    key_file = host.key_file or options.default_key
    connect_kwargs: dict[str, Any] = {
        "timeout": options.connect_timeout,
        "banner_timeout": options.connect_timeout,
        "auth_timeout": options.connect_timeout,
        "channel_timeout": options.connect_timeout,
        "allow_agent": False,
        "look_for_keys": key_file is None,
    }
    if key_file:
        connect_kwargs["key_filename"] = [str(Path(key_file).expanduser())]
    conn = Connection(
        host=host.address,
        port=host.port,
        # None: the ssh_config User for the host, else the worker's OS user.
        user=host.user or options.default_user or None,
        config=connection_config(),
        connect_kwargs=connect_kwargs,
        forward_agent=False,
    )
    # Fabric takes ConnectTimeout from ssh_config and then refuses to connect because
    # connect_kwargs has a timeout too; opsq's resolved timeout is the one that applies.
    conn.connect_timeout = None
    if conn.gateway:
        # Fabric builds jump-host connections itself, with AutoAddPolicy: their keys
        # would go unchecked. Refuse rather than connect half-verified.
        raise HostKeyError(
            f"{host.name}: the SSH config sets a ProxyJump/ProxyCommand ({conn.gateway!r}); "
            "opsq does not support gateways, whose host keys it could not check strictly")
    conn.client.set_missing_host_key_policy(RefuseUnknownHostKey(host, options.known_hosts))
    conn.client.get_host_keys().update(load_known_hosts(options.known_hosts))
    return conn


def open_connection(host: Host, options: RunOptions) -> Connection:
    """An open, authenticated connection (connection_for) that checked the host key
    strictly.

    Raises HostKeyError, paramiko.AuthenticationException, paramiko.SSHException, OSError.
    """
    conn = connection_for(host, options)
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        conn.close()
        recorded = conn.client.get_host_keys().lookup(known_hosts_name(conn.host, conn.port))
        raise changed_key_error(host, options.known_hosts, exc.key,
                                list(recorded.values()) if recorded else [exc.expected_key]
                                ) from None
    except BaseException:
        conn.close()
        raise
    return conn


#: Channels (commands, transfers) a pooled connection carries before it is closed and a
#: fresh one opened: paramiko's transport remembers every channel id it ever opened
#: (``Transport.channels_seen``), so a connection kept for days would grow without bound.
MAX_CHANNELS_PER_CONNECTION = 1000


def worn_out(conn: Connection) -> bool:
    """Whether ``conn`` has carried its share of channels (MAX_CHANNELS_PER_CONNECTION)."""
    transport = conn.transport
    return transport is not None and len(
        getattr(transport, "channels_seen", ())) >= MAX_CHANNELS_PER_CONNECTION


class ConnectionPool:
    """Open SSH connections kept per host in one worker process, with an idle expiry.

    A connection is checked out by one task at a time. One that timed out or broke is
    closed instead of being returned, and so is one worn out (``worn_out``).
    """

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[tuple[Connection, float]]] = {}

    @staticmethod
    def key(host: Host, options: RunOptions) -> tuple:
        return (host.address, host.port, host.user or options.default_user,
                host.key_file or options.default_key, str(options.known_hosts))

    def checkout(self, key: tuple) -> Connection | None:
        """An idle, live connection for ``key``, or None."""
        now = time.monotonic()
        stale: list[Connection] = []
        found = None
        with self._lock:
            entries = self._idle.get(key, [])
            while entries:
                conn, since = entries.pop()
                if now - since <= self.idle_seconds and conn.is_connected:
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            _close_quietly(conn)
        return found

    def checkin(self, key: tuple, conn: Connection) -> None:
        if self.idle_seconds <= 0 or not conn.is_connected or worn_out(conn):
            _close_quietly(conn)
            return
        now = time.monotonic()
        expired: list[Connection] = []
        with self._lock:
            self._idle.setdefault(key, []).append((conn, now))
            # Sweep every host, not only this one: a host never targeted again must not
            # keep a socket and a transport thread open until the worker stops.
            for k in list(self._idle):
                keep = [(c, t) for c, t in self._idle[k] if now - t <= self.idle_seconds]
                expired += [c for c, t in self._idle[k] if now - t > self.idle_seconds]
                if keep:
                    self._idle[k] = keep
                else:
                    del self._idle[k]
        for c in expired:
            _close_quietly(c)

    def close_all(self) -> None:
        with self._lock:
            entries = [c for conns in self._idle.values() for c, _ in conns]
            self._idle.clear()
        for conn in entries:
            _close_quietly(conn)


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # closing a broken transport may raise; it is gone either way
        logger.debug("closing connection to %s failed", conn.host, exc_info=True)


# -- running ----------------------------------------------------------------------------


def classify_connect_error(
    host: Host, exc: BaseException, elapsed: float, options: RunOptions
) -> tuple[HostStatus, str, bool]:
    """Map a connection failure to (status, message, worth retrying).

    ``elapsed`` is how long the attempt took: an SSH-level failure that used up the
    connect deadline is a host that accepted TCP and then stalled (hung sshd, overload),
    which paramiko reports in several ways ("Error reading SSH protocol banner",
    "No existing session" after an unfinished key exchange, "Timeout opening channel").
    """
    where = f"{host.name} ({host.address}:{host.port})"
    if isinstance(exc, HostKeyError):
        return HostStatus.ERROR, str(exc), False
    if isinstance(exc, paramiko.AuthenticationException):
        return HostStatus.ERROR, (
            f"authentication failed on {where}: {exc} (check ansible_user and "
            "ansible_ssh_private_key_file / OPSQ_SSH_KEY)"
        ), False
    if isinstance(exc, socket.gaierror):
        return HostStatus.UNREACHABLE, f"cannot resolve {host.address} for {host.name}: {exc}", \
            False
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionError):
        return HostStatus.UNREACHABLE, f"cannot connect to {where}: connection refused", True
    if isinstance(exc, TimeoutError | socket.timeout) and not isinstance(
        exc, paramiko.SSHException
    ):
        return HostStatus.UNREACHABLE, f"no answer from {where} within " \
            f"{options.connect_timeout:g} s (TCP connect)", False
    if isinstance(exc, paramiko.SSHException | EOFError | OSError) and (
        elapsed >= options.connect_timeout * STALL_FRACTION
    ):
        return HostStatus.TIMEOUT, (
            f"{where} accepted the connection but SSH did not complete within the "
            f"{options.connect_timeout:g} s connect timeout (host hung or overloaded: {exc})"
        ), False
    if isinstance(exc, paramiko.SSHException | EOFError | OSError):
        return HostStatus.UNREACHABLE, f"SSH failure on {where}: {exc or type(exc).__name__}", \
            True
    return HostStatus.ERROR, f"{where}: {type(exc).__name__}: {exc}", False


class NotStarted(Exception):
    """A pooled connection failed before the program started (it died while idle)."""


class SshRunner:
    """The ``Runner`` (``opsq.hostrun.runner``) of a host reached over SSH, on one open
    connection. A transport failure before anything started on the host raises
    NotStarted (a pooled connection that died while idle: ``on_connection`` takes a fresh
    one); after that it is the host's failure."""

    def __init__(self, conn: Connection, stopper: Stopper | None = None) -> None:
        self.conn = conn
        self.stopper = stopper
        self.started = False

    def command(self, command: str, options: RunOptions) -> Outcome:
        runner = CappedRemote(context=self.conn, inline_env=self.conn.inline_ssh_env)
        try:
            return _execute(runner, wrap_remote(command), options)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self.started and not hasattr(runner, "channel"):
                raise NotStarted() from exc
            raise
        finally:
            self.started = True

    def exec(self, program: str, stdin: bytes, timeout: float, limit: int,
             keep_stdin: bool = False) -> Exec:
        try:
            return exec_ssh(self.conn, program, stdin, timeout, limit,
                            max(limit, ERROR_LIMIT), self.stopper, keep_stdin)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self.started:
                raise NotStarted() from exc
            raise
        finally:
            self.started = True


def run_on(host: Host, command: str, options: RunOptions, pool: ConnectionPool) -> Outcome:
    """Run ``command`` on ``host`` within its deadlines, with the runner of its connection
    (local or SSH); never raises for a host's failure."""
    if host.connection == "local":
        return LocalRunner(options.stopper).command(command, options)
    return on_connection(host, options, pool,
                         lambda conn: SshRunner(conn, options.stopper).command(command, options))


def exec_ssh(conn: Connection, command: str, stdin: bytes, timeout: float,
             out_limit: int, err_limit: int, stopper: Stopper | None = None,
             keep_stdin: bool = False) -> Exec:
    """Run ``command`` through the connection's SSH transport, feeding it ``stdin``.

    Raises paramiko.SSHException/OSError when the transport fails (the caller decides
    whether the program may have started). The channel is closed at the deadline.
    """
    deadline = time.monotonic() + timeout
    out, err = Capture(out_limit), Capture(err_limit)
    conn.open()
    chan = conn.client.get_transport().open_session(timeout=timeout)
    with watching(stopper, chan.close):
        return _exec_on(chan, command, stdin, deadline, timeout, out, err, keep_stdin)


def _exec_on(chan, command: str, stdin: bytes, deadline: float, timeout: float,
             out: Capture, err: Capture, keep_stdin: bool) -> Exec:
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        view = memoryview(stdin)
        for start in range(0, len(view), CHUNK_SIZE):
            chan.settimeout(max(deadline - time.monotonic(), 0.001))
            chan.sendall(view[start:start + CHUNK_SIZE])
        if not keep_stdin:  # kept open: a remote watchdog waits for it to close
            chan.shutdown_write()
        chan.settimeout(0.0)
        with selectors.DefaultSelector() as sel:
            sel.register(chan, selectors.EVENT_READ)
            while True:
                drained = _drain(chan, out, err)
                if chan.exit_status_ready() and drained:
                    return Exec(chan.recv_exit_status(), out, err)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Exec(None, out, err, timed_out=True)
                sel.select(min(remaining, POLL_INTERVAL))
    except TimeoutError:
        return Exec(None, out, err, timed_out=True)
    finally:
        chan.close()


def _drain(chan, out: Capture, err: Capture) -> bool:
    """Read what the channel holds; True when nothing was left to read."""
    idle = True
    while chan.recv_ready():
        out.add(chan.recv(CHUNK_SIZE))
        idle = False
    while chan.recv_stderr_ready():
        err.add(chan.recv_stderr(CHUNK_SIZE))
        idle = False
    return idle


def on_connection(host: Host, options: RunOptions, pool: ConnectionPool,
                  work: Callable[[Connection], Outcome]) -> Outcome:
    """``work`` on a pooled (or new) connection to ``host``; never raises for a host's
    failure.

    Connection failures that may pass (refused, reset) are retried ``connect_retries``
    times with exponential back-off; a timeout, a refused host key or a failed
    authentication are not. ``work`` itself is never retried, unless it raised
    NotStarted on a pooled connection (which had died while idle).
    """
    key = pool.key(host, options)
    attempt = 0
    while True:
        attempt += 1
        conn = pool.checkout(key)
        reused = conn is not None
        if conn is None:
            began = time.monotonic()
            try:
                conn = open_connection(host, options)
            except Exception as exc:
                status, message, retry = classify_connect_error(
                    host, exc, time.monotonic() - began, options)
                if retry and attempt <= options.connect_retries:
                    delay = options.retry_backoff * 2 ** (attempt - 1)
                    time.sleep(delay + random.uniform(0, RETRY_JITTER))
                    continue
                if retry and attempt > 1:
                    message += f" (after {attempt} attempts)"
                return Outcome(status=status, error=message, attempts=attempt)
        began = time.monotonic()
        try:
            outcome = work(conn)
        except BaseException as exc:
            _close_quietly(conn)  # never reuse or leak it, whatever went wrong
            if isinstance(exc, NotStarted):
                cause = exc.__cause__ or exc
                elapsed = time.monotonic() - began
                if reused and elapsed < options.connect_timeout * STALL_FRACTION:
                    # The pooled connection died while idle (server restarted): not the
                    # host's failure, and nothing had started. Take a fresh one.
                    attempt -= 1
                    continue
                exc = cause
            if not isinstance(exc, paramiko.SSHException | EOFError | OSError):
                raise
            status, message, _ = classify_connect_error(
                host, exc, time.monotonic() - began, options)
            return Outcome(status=status, error=message, attempts=attempt)
        outcome.attempts = attempt
        if outcome.status is HostStatus.TIMEOUT:
            _close_quietly(conn)  # the session may be wedged; never reuse it
        else:
            pool.checkin(key, conn)
        return outcome
