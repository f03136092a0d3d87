"""What a job does on a host besides a command: put a file, get a file, run a script,
and any of them (or a command) through sudo (``become``).

Each action is a short POSIX shell program run with ``opsq.hostrun.runner``: the file's bytes
travel on the program's stdin, a fetched file comes back on its stdout, and a sudo
password is the first line of stdin (sudo reads it a byte at a time, so the rest stays
for the program). Nothing secret is ever in an argument list, on either machine.

A put is idempotent and atomic: the host's file is compared first (sha256, mode, owner)
and left alone when equal; otherwise the bytes go to a temporary file in a private
directory beside the target, are checked against the sha256, and renamed over it, so no
reader ever sees part of a file, and an interrupted transfer leaves the old file in place.

A host's other users may have planted names on the way (they are hostile to the worker,
which often runs as root): a symbolic link is followed only when it belongs to root or to
the user the program runs as, and then its target is what is compared and replaced (the
link stays); a backup is a new name made with ``ln`` or ``mktemp``, never written through
a name that exists; only a regular file is read or replaced.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opsq.hostrun.local import LocalRunner
from opsq.hostrun.runner import Exec, JobOptions, Outcome, Runner, RunOptions
from opsq.hostrun.ssh import ConnectionPool, SshRunner, on_connection, wrap_remote
from opsq.inventory import Host
from opsq.status import HostStatus

#: A program of the host side: (script, stdin bytes, timeout s, stdout limit) -> Exec;
#: ``keep_stdin=True`` leaves its stdin open once the bytes are sent.
Run = Callable[..., Exec]

#: Seconds the host side gets to clean up after a script's deadline (the script itself is
#: stopped by ``timeout`` on the host, so its temporary directory can be removed).
SCRIPT_CLEANUP_GRACE = 5.0
#: Exit code of coreutils ``timeout`` when it stopped the program.
TIMEOUT_EXIT = 124
#: What a program run through sudo writes first on stderr: its absence means sudo
#: itself refused (wrong password, no sudo rule), not the program.
BECOME_MARK = "opsq-become-ok"
#: The only become method opsq implements.
SUDO = "sudo"
#: Symbolic links a put or get follows from the path it was given to the file itself.
MAX_LINK_HOPS = 8
#: Names a put tries for a backup before it fails the host (each a new name: a taken one
#: may be a link another user planted).
BACKUP_TRIES = 10
#: Mode bits a new file may get without --mode (less the host's umask): never writable by
#: group or others unless asked.
NEW_FILE_MODE = 0o644
#: Seconds a get waits for the host's file to open (a regular file opens at once; a fifo
#: swapped in would block until a writer comes).
GET_OPEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class Become:
    """Run as ``user`` through sudo; ``password`` is read on the worker, never stored."""

    user: str = "root"
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Action:
    """One job's work on each host, as stored in the job row (``kind`` and ``params``)."""

    kind: str
    params: dict[str, Any]
    #: The bytes a put or script carries (looked up by sha256 from the job's file).
    payload: bytes = b""


def _q(value: str) -> str:
    return shlex.quote(value)


def sudo(script: str, become: Become, password: bool = False) -> str:
    """``script`` run by sh as ``become.user`` through sudo, marking stderr first. With
    ``password`` (a line of it comes first on stdin) sudo is told to ask for it whatever
    it has cached (``-k``): a cached credential would leave the line unread, and the
    program would get it on its stdin."""
    inner = f"printf '%s\\n' {BECOME_MARK} >&2; eval \"$1\""
    ask = "-k " if password else ""
    return (f"sudo {ask}-S -p '' -H -u {_q(become.user)} -- /bin/sh -c {_q(inner)} "
            f"sh {_q(script)}")


def _unmark(result: Exec, become: Become | None) -> str | None:
    """Strip the become mark from stderr; the reason sudo refused, if it did."""
    if become is None:
        return None
    text = bytes(result.stderr.kept)
    mark = BECOME_MARK.encode() + b"\n"
    at = text.find(mark)
    if at < 0:
        said = text.decode("utf-8", "replace").strip() or f"exit code {result.exit_code}"
        return f"sudo as {become.user} refused: {said}"
    result.stderr.kept = bytearray(text[at + len(mark):])
    return None


class HostSide:
    """The host side of one action: runs helper programs, as ``become`` when set."""

    def __init__(self, run: Run, become: Become | None, password_needed: bool) -> None:
        self._run = run
        self.become = become
        self._password = become.password if become and password_needed else None

    def run(self, script: str, stdin: bytes, timeout: float, limit: int,
            keep_stdin: bool = False) -> tuple[Exec, str | None]:
        """Run ``script``; (what it did, why sudo refused it or None)."""
        if self.become is None:
            return self._run(script, stdin, timeout, limit, keep_stdin=keep_stdin), None
        prefix = (self._password + "\n").encode() if self._password is not None else b""
        result = self._run(sudo(script, self.become, self._password is not None),
                           prefix + stdin, timeout, limit, keep_stdin=keep_stdin)
        return result, _unmark(result, self.become)


def probe_become(run: Run, become: Become, timeout: float) -> tuple[bool, str | None]:
    """(whether sudo wants the password, why becoming is impossible or None).

    Asked once per host before the action, so a wrong password is one refused sudo,
    never several attempts fed from the file the action carries."""
    # The same command the action runs (/bin/sh through sudo): a rule without a password
    # for `true` alone must not make the action's sudo read the payload as a password.
    user = _q(become.user)
    script = (f"if sudo -n -H -u {user} -- /bin/sh -c true 2>/dev/null; then echo nopass; "
              f"exit 0; fi; sudo -k -S -p '' -H -u {user} -- /bin/sh -c true && echo pass")
    stdin = b"" if become.password is None else (become.password + "\n").encode()
    result = run(script, stdin, timeout, 64)
    answer = bytes(result.stdout.kept).decode("utf-8", "replace").strip()
    if result.timed_out:
        return False, f"sudo as {become.user} did not answer within {timeout:g} s"
    if answer == "nopass":
        return False, None
    if answer == "pass":
        return True, None
    said = bytes(result.stderr.kept).decode("utf-8", "replace").strip()
    if become.password is None:
        return False, (f"sudo as {become.user} needs a password: set ansible_become_pass in "
                       f"the inventory or OPSQ_BECOME_PASSWORD_FILE on the worker ({said})")
    return False, f"sudo as {become.user} refused the password: {said}"


# -- the actions -------------------------------------------------------------------------


def _failed(result: Exec, why: str | None, what: str) -> Outcome | None:
    """An Outcome for a helper program that did not succeed, or None."""
    if why:
        return Outcome(status=HostStatus.ERROR, error=why)
    if result.timed_out:
        return Outcome(status=HostStatus.TIMEOUT, error=f"{what}: still running at the deadline")
    if result.exit_code != 0:
        said = bytes(result.stderr.kept).decode("utf-8", "replace").strip()
        return Outcome(status=HostStatus.FAILED, exit_code=result.exit_code,
                       stderr=said, error=f"{what}: {said or f'exit code {result.exit_code}'}")
    return None


# Sets $t to the file the path {t} names: each symbolic link on the way is followed only
# when it belongs to root or to the user running the program (a link another user made
# may point anywhere, e.g. at /etc/shadow, and this program often runs as root); a link
# must end at an existing regular file. Exit 3 with the reason otherwise.
_RESOLVE = """t={t}; p=$t; me=$(id -u); hops=0
while [ -L "$t" ]; do
  hops=$((hops + 1))
  [ "$hops" -le {hops} ] || {{ echo "$p: more than {hops} symbolic links" >&2; exit 3; }}
  o=$(stat -c %u "$t")
  if [ "$o" != 0 ] && [ "$o" != "$me" ]; then
    echo "$t is a symbolic link that belongs to another user (uid $o), not followed" >&2
    exit 3
  fi
  l=$(readlink "$t")
  case "$l" in /*) t=$l ;; *) t=$(dirname "$t")/$l ;; esac
  [ -L "$t" ] || [ -f "$t" ] || {{
    echo "$p is a symbolic link to $t, which is not an existing regular file" >&2
    exit 3; }}
done
if [ -d "$t" ]; then echo "$t is a directory" >&2; exit 3; fi
if [ -e "$t" ] && [ ! -f "$t" ]; then echo "$t is not a regular file" >&2; exit 3; fi"""


def _resolve(path: str) -> str:
    return _RESOLVE.format(t=_q(path), hops=MAX_LINK_HOPS)


_PUT_STATE = """{resolve}
if [ -e "$t" ]; then
  printf '%s %s %s %s\\n' "$(sha256sum < "$t" | cut -d' ' -f1)" "$(stat -c %a "$t")" \
    "$(stat -c %U:%G "$t")" "$(stat -c %u:%g:%a "$t")"
else
  d=$(dirname "$t")
  [ -d "$d" ] || {{ echo "directory $d does not exist" >&2; exit 3; }}
  echo absent
fi"""

# The bytes are written, checked, given their owner and mode in a directory of the
# program's own (mktemp -d, 0700, and after cd: the same directory, still empty): another
# user who can write the target's directory cannot swap the temporary file for a link
# that chown or chmod would follow, nor swap the directory for one whose files the
# cleanup would delete. The cleanup removes only what the program made, also when a
# cancel closes the channel (SIGPIPE on the next message, SIGHUP) or it is stopped.
# The owner and mode come from what the state probe saw ({seen}: uid:gid:mode, or
# absent), never from a later look, and the target must still be as seen once the bytes
# are in: a file another user creates or changes during the transfer fails the host. An
# owner other than root or the program's user is not inherited (nor that file's mode).
# The owner is set before the mode: chown clears setuid and setgid bits. The backup is a
# hard link of the old file, to a name that does not exist yet (ln -T fails on a taken
# name, a planted directory or link included, and never writes through or inside it);
# where the file system refuses hard links of that file, of a copy made in the private
# directory. mv -T replaces the name itself, never a directory it names.
_PUT_WRITE = """set -e
{resolve}
seen={seen}
d=$(dirname "$t")
w=$(mktemp -d "$d/.opsq-put.XXXXXXXX")
mine=; took=
leave() {{
  if [ -n "$mine" ]; then rm -f ./new ./old; fi
  cd /; rmdir -- "$w" 2>/dev/null || true
  # the bytes not read yet, so that the sender finishes and the reason reaches it
  [ -n "$took" ] || cat > /dev/null 2>&1 || true
}}
trap leave EXIT
trap 'trap - EXIT; took=1; leave; exit 129' HUP PIPE TERM INT
made=$(stat -c %d:%i -- "$w" 2>/dev/null) || made=gone
cd "$w" 2>/dev/null && [ "$(stat -c %u:%a:%d:%i .)" = "$me:700:$made" ] &&
  [ -z "$(ls -A .)" ] || {{
  echo "$w was changed by someone else; the target is unchanged" >&2; exit 3; }}
mine=1
cat > new; took=1
[ "$(sha256sum < new | cut -d' ' -f1)" = {sha} ] || {{
  echo "the file arrived damaged (sha256 differs); the target is unchanged" >&2; exit 3; }}
now=absent
if [ -e "$t" ] || [ -L "$t" ]; then now=$(stat -c %u:%g:%a -- "$t"); fi
[ "$now" = "$seen" ] || {{
  echo "$t changed during the transfer (was $seen, now $now); the file is unchanged" >&2
  exit 3; }}
inherit=
case "$seen" in 0:*|"$me":*) inherit=1 ;; esac
if [ -n {owner} ]; then chown {owner} new
elif [ -n "$inherit" ]; then chown "${{seen%:*}}" new 2>/dev/null || true; fi
if [ -n {mode} ]; then chmod {mode} new
elif [ -n "$inherit" ]; then chmod "${{seen##*:}}" new
else chmod "$(printf '%o' $(( {new_mode} & ~0$(umask) )))" new; fi
if [ {backup} = 1 ] && [ "$seen" != absent ]; then
  b="$t.opsq-$(date +%Y%m%d%H%M%S)"; c=$b; src=$t; n=0
  until ln -T -- "$src" "$c" 2>/dev/null; do
    if [ "$src" = "$t" ] && [ ! -e "$c" ] && [ ! -L "$c" ]; then
      cp -p -- "$t" old; src=old
    else
      c=$(mktemp -u "$b.XXXXXXXX")
    fi
    n=$((n + 1))
    [ "$n" -le {backup_tries} ] || {{
      echo "cannot keep a backup of $t (no new name took a hard link); the file is unchanged" >&2
      exit 3; }}
  done
  printf 'old file kept as %s\\n' "$c"
fi
mv -f -T -- new "$t"
"""


def _owner_matches(wanted: str, actual: str) -> bool:
    if not wanted:
        return True
    user, _, group = wanted.partition(":")
    have_user, _, have_group = actual.partition(":")
    return user == have_user and (not group or group == have_group)


def put(host: HostSide, action: Action, timeout: float) -> Outcome:
    """Upload the payload to ``params['remote']``: ``unchanged`` when equal already."""
    p = action.params
    deadline = time.monotonic() + timeout
    sha, mode, owner = p["sha256"], p.get("mode") or "", p.get("owner") or ""
    check, why = host.run(_PUT_STATE.format(resolve=_resolve(p["remote"])), b"", timeout,
                          4096)
    if failed := _failed(check, why, f"cannot look at {p['remote']}"):
        return failed
    fields = bytes(check.stdout.kept).decode("utf-8", "replace").split()
    if (len(fields) == 4 and fields[0] == sha
            and (not mode or int(fields[1], 8) == int(mode, 8))
            and _owner_matches(owner, fields[2])):
        return Outcome(status=HostStatus.OK, exit_code=0, changed=False, sha256=sha,
                       stdout=f"{p['remote']} unchanged (sha256 {sha})\n")
    # What the write must still find at the target: uid:gid:mode, or absent (a file the
    # probe could not read has no sha256 field; "?" matches nothing, the write fails).
    seen = "absent" if fields == ["absent"] else fields[-1] if fields else "?"
    script = _PUT_WRITE.format(resolve=_resolve(p["remote"]), seen=_q(seen), sha=_q(sha),
                               mode=_q(mode),
                               owner=_q(owner), backup=1 if p.get("backup") else 0,
                               new_mode=f"0{NEW_FILE_MODE:o}", backup_tries=BACKUP_TRIES)
    wrote, why = host.run(script, action.payload, max(deadline - time.monotonic(), 0.001),
                          4096)
    if failed := _failed(wrote, why, f"cannot write {p['remote']}"):
        return failed
    said = bytes(wrote.stdout.kept).decode("utf-8", "replace")
    return Outcome(status=HostStatus.OK, exit_code=0, changed=True, sha256=sha,
                   stdout=f"{p['remote']} changed (sha256 {sha}, {len(action.payload)} bytes)\n"
                   + said)


# The file is opened once, and what is read is what was checked: the open file must be a
# regular file and the very file the name (not followed) holds after the open, so a name
# swapped for a link or a fifo between the check and the read is refused. Opening a fifo
# blocks until a writer comes: a watchdog interrupts an open that takes longer than
# GET_OPEN_TIMEOUT. (The check is ``test``, not ``[``, so a test can put a function in
# its place that plays the swap.)
_GET = """{resolve}
test -f "$t" || {{ echo "$t is not a regular file (or does not exist)" >&2; exit 3; }}
trap : TERM
( sleep {open_s}; kill -TERM $$ ) </dev/null >/dev/null 2>&1 & dog=$!
{{ command exec 3< "$t"; }} 2>/dev/null || {{
  echo "$t could not be opened within {open_s} s (not a regular file?)" >&2; exit 3; }}
kill "$dog" 2>/dev/null || true
trap - TERM
[ -f /dev/fd/3 ] && [ "$(stat -L -c %d:%i /dev/fd/3)" = "$(stat -c %d:%i -- "$t")" ] || {{
  echo "$t was replaced while it was opened (now not the regular file checked)" >&2
  exit 3; }}
exec cat <&3 3<&-"""


def get(host: HostSide, action: Action, timeout: float, limit: int) -> Outcome:
    """Fetch ``params['remote']`` (at most ``limit`` bytes: a larger file fails the host)."""
    remote = action.params["remote"]
    result, why = host.run(_GET.format(resolve=_resolve(remote), open_s=f"{GET_OPEN_TIMEOUT:g}"),
                           b"", timeout, limit)
    if failed := _failed(result, why, f"cannot fetch {remote}"):
        return failed
    if result.stdout.overflowed:
        return Outcome(status=HostStatus.FAILED, error=(
            f"{remote} is larger than the fetch limit of {limit} bytes (OPSQ_FETCH_LIMIT); "
            "nothing was kept"))
    content = bytes(result.stdout.kept)
    sha = hashlib.sha256(content).hexdigest()
    return Outcome(status=HostStatus.OK, exit_code=0, sha256=sha, content=content,
                   stdout=f"{remote}: {len(content)} bytes, sha256 {sha}\n")


_SCRIPT = """d=$(mktemp -d "${{TMPDIR:-/tmp}}/opsq-script.XXXXXXXX") || exit 125
trap 'rm -rf "$d"' EXIT HUP INT TERM
cat > "$d/"{name} || exit 125
chmod 700 "$d/"{name}
timeout -k 2 {seconds} "$d/"{name} {args} </dev/null
"""


def script(host: HostSide, action: Action, timeout: float, output_limit: int) -> Outcome:
    """Copy the script to a private temporary directory, run it with its arguments and
    remove the directory, also when the script runs past its deadline."""
    p = action.params
    text = _SCRIPT.format(name=_q(p["name"]), seconds=f"{timeout:g}",
                          args=" ".join(_q(a) for a in p.get("args", [])))
    result, why = host.run(text, action.payload, timeout + SCRIPT_CLEANUP_GRACE,
                           output_limit)
    if why:
        return Outcome(status=HostStatus.ERROR, error=why)
    outcome = _as_command(result, output_limit, timeout)
    if result.exit_code == TIMEOUT_EXIT:
        outcome.status, outcome.exit_code = HostStatus.TIMEOUT, None
        outcome.error = f"script still running after {timeout:g} s; killed"
    return outcome


def command(host: HostSide, action: Action, timeout: float, output_limit: int) -> Outcome:
    """The job's command (through sudo: plain commands without become use opsq.hostrun.ssh), in
    the same watched process group as those, so its deadline and cancel stop it."""

    # As Ansible's become: /bin/sh, since the target user's shell may be nologin.
    result, why = host.run(wrap_remote(action.params["command"], "/bin/sh", new_session=True),
                           b"", timeout, output_limit, keep_stdin=True)
    if why:
        return Outcome(status=HostStatus.ERROR, error=why)
    return _as_command(result, output_limit, timeout)


def _as_command(result: Exec, limit: int, timeout: float) -> Outcome:
    outcome = Outcome(
        status=HostStatus.OK, exit_code=result.exit_code,
        stdout=result.stdout.text(), stderr=result.stderr.text(),
        stdout_bytes=result.stdout.total, stderr_bytes=result.stderr.total,
        truncated=result.stdout.overflowed or result.stderr.overflowed)
    if result.timed_out:
        outcome.status, outcome.exit_code = HostStatus.TIMEOUT, None
        outcome.error = f"command still running after {timeout:g} s; killed"
    elif result.exit_code != 0:
        outcome.status = HostStatus.FAILED
    return outcome


# -- on the worker -----------------------------------------------------------------------


def run_action(run: Run, job: JobOptions, payload: bytes, become: Become | None,
               timeout: float, output_limit: int, fetch_limit: int) -> Outcome:
    """Do the job's action through ``run`` (one host's programs)."""
    action = Action(job.kind, job.params if job.kind != "command"
                    else {**job.params, "command": job.command}, payload)
    deadline = time.monotonic() + timeout
    needs_password = False
    if become is not None:
        needs_password, why = probe_become(run, become, timeout)
        if why:
            return Outcome(status=HostStatus.ERROR, error=why)
    side = HostSide(run, become, needs_password)
    left = max(deadline - time.monotonic(), 0.001)
    if job.kind == "put":
        return put(side, action, left)
    if job.kind == "get":
        return get(side, action, left, fetch_limit)
    if job.kind == "script":
        return script(side, action, left, output_limit)
    return command(side, action, left, output_limit)


def perform(target: Host, job: JobOptions, options: RunOptions, pool: ConnectionPool,
            fetch_limit: int, become: Become | None = None, payload: bytes = b"") -> Outcome:
    """The job's work on one inventory host, through the runner of its connection (local,
    or SSH: pooled, retried and classified by ``on_connection``): its command, or its
    put, get or script (``payload``: the bytes a put or script carries), as ``become``
    when given. Never raises for a host's failure."""
    plain = job.kind == "command" and become is None

    def act(runner: Runner) -> Outcome:
        if plain:
            return runner.command(job.command, options)
        return run_action(runner.exec, job, payload, become, options.command_timeout,
                          options.output_limit, fetch_limit)

    if target.connection == "local":
        try:
            return act(LocalRunner(options.stopper))
        except OSError as exc:
            return Outcome(status=HostStatus.ERROR, error=f"cannot start a shell: {exc}")
    return on_connection(target, options, pool, lambda conn: act(SshRunner(conn, options.stopper)))
