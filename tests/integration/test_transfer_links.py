"""Names a host's other users plant on a transfer's way: symbolic links at a put's target,
a backup's predictable name taken in advance, '..' in a fetched path and files that would
land outside DEST/<host>/. The users of a host are hostile to the worker, which often runs
as root (--become), so each case is played against real sshd hosts and a real worker.

The fleet's hosts share this machine's file system: a test plants files as the hostile
user (``nobody``) would, directly, and looks at the victim afterwards.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import wait_until
from jobtools import rows
from sqlalchemy import text

from devtools.devfleet import FLEET_USER
from opsq import jobs
from opsq.hostrun import programs
from opsq.hostrun.local import LocalRunner
from opsq.hostrun.runner import Outcome
from opsq.jobs import kinds
from opsq.status import HostStatus
from opsq.store import db

pytestmark = pytest.mark.usefixtures("worker")

#: The host's hostile user: owns the links and names it plants.
HOSTILE = "nobody"
#: Seconds of backup names planted ahead of a put (its name has the time to the second).
PLANTED_SECONDS = 40
#: Bytes of a put long enough on the wire for a test to act while it is under way.
LARGE = 60 * 1024 * 1024


def _spec(pattern: str = "host01", become: bool = False, **kw) -> jobs.JobSpec:
    params = kinds.become_params(True, None) if become else {}
    return jobs.JobSpec(command="", pattern=pattern, params=params, **kw)


def _run(spec: jobs.JobSpec) -> tuple[dict, dict]:
    summary = jobs.submit(spec).get(timeout=90)
    return summary, rows(summary["job_id"])


def _local(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / f"local-{secrets.token_hex(3)}"
    path.write_bytes(data)
    return str(path)


def _own(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.lchown(path, entry.pw_uid, entry.pw_gid)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _played(prelude: str) -> programs.HostSide:
    """A host side on this machine, as root, whose programs begin with ``prelude``: shell
    functions standing in for a command, to play another user's move at that very step
    (a race the real one could win only sometimes)."""
    run = LocalRunner().exec

    def played(script: str, stdin: bytes, timeout: float, limit: int,
               keep_stdin: bool = False):
        return run(prelude + "\n" + script, stdin, timeout, limit, keep_stdin=keep_stdin)
    return programs.HostSide(played, None, False)


def _put_played(prelude: str, remote: Path, data: bytes) -> Outcome:
    params = {"remote": str(remote), "sha256": hashlib.sha256(data).hexdigest()}
    return programs.put(_played(prelude), programs.Action("put", params, data), 60)


def _get_played(prelude: str, remote: Path, timeout: float = 60) -> Outcome:
    action = programs.Action("get", {"remote": str(remote)})
    return programs.get(_played(prelude), action, timeout, 1024 * 1024)


@pytest.fixture
def fleet_dir():
    """A directory on the hosts that belongs to the fleet's login user."""
    d = Path(tempfile.mkdtemp(prefix="opsq-links-"))
    _own(d, FLEET_USER)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared_dir():
    """A directory every user of the host may write in, as /tmp (sticky, 1777)."""
    d = Path(tempfile.mkdtemp(prefix="opsq-shared-"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim():
    """A root file outside the put's directory that no put should ever change."""
    d = Path(tempfile.mkdtemp(prefix="opsq-victim-"))
    d.chmod(0o755)
    path = d / "shadow"
    path.write_bytes(b"root:secret-hash:19000::::::\n")
    path.chmod(0o600)
    yield path
    shutil.rmtree(d, ignore_errors=True)


# -- put onto a symbolic link ------------------------------------------------------------------


def test_put_onto_a_link_replaces_its_target_and_keeps_its_mode(tmp_path, fleet_dir):
    real = fleet_dir / "real.conf"
    real.write_bytes(b"old\n")
    real.chmod(0o640)
    _own(real, FLEET_USER)
    link = fleet_dir / "app.conf"
    link.symlink_to("real.conf")
    _own(link, FLEET_USER)
    local = _local(tmp_path, b"new\n")

    summary, hosts = _run(kinds.put_spec(_spec(), local, str(link)))
    assert summary["succeeded"], hosts["host01"]
    assert hosts["host01"]["changed"] is True
    assert link.is_symlink() and os.readlink(link) == "real.conf"  # the link stays
    assert real.read_bytes() == b"new\n"
    assert oct(_mode(real)) == oct(0o640)  # the target's mode, never the link's 0777
    assert real.stat().st_uid == pwd.getpwnam(FLEET_USER).pw_uid
    assert list(fleet_dir.glob(".opsq-put.*")) == []

    # compared through the link: the same file again is unchanged
    _, hosts = _run(kinds.put_spec(_spec(), local, str(link)))
    assert hosts["host01"]["changed"] is False, hosts["host01"]
    # --mode applies to the target; the link is still the link
    _, hosts = _run(kinds.put_spec(_spec(), local, str(link), mode="0600"))
    assert hosts["host01"]["changed"] is True
    assert oct(_mode(real)) == oct(0o600) and link.is_symlink()
    _, hosts = _run(kinds.put_spec(_spec(), local, str(link), mode="0600"))
    assert hosts["host01"]["changed"] is False


def test_put_with_become_onto_roots_link_replaces_the_target(tmp_path):
    tag = secrets.token_hex(4)
    real = Path("/etc") / f"opsq-test-{tag}.real"
    link = Path("/etc") / f"opsq-test-{tag}.conf"
    try:
        real.write_bytes(b"old\n")
        real.chmod(0o640)
        link.symlink_to(real)
        summary, hosts = _run(kinds.put_spec(_spec(become=True), _local(tmp_path, b"v1\n"),
                                               str(link)))
        assert summary["succeeded"], hosts["host01"]
        assert link.is_symlink() and real.read_bytes() == b"v1\n"
        st = real.stat()
        assert (st.st_uid, st.st_gid, oct(_mode(real))) == (0, 0, oct(0o640))
        summary, hosts = _run(kinds.put_spec(_spec(become=True), _local(tmp_path, b"v2\n"),
                                               str(link), mode="0600", owner="root:root"))
        assert summary["succeeded"], hosts["host01"]
        assert link.is_symlink() and real.read_bytes() == b"v2\n"
        assert oct(_mode(real)) == oct(0o600)
    finally:
        link.unlink(missing_ok=True)
        real.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", [None, "0644"])
def test_a_link_another_user_planted_is_not_followed(tmp_path, shared_dir, victim, mode):
    link = shared_dir / "app.conf"
    link.symlink_to(victim)
    _own(link, HOSTILE)
    before = (_digest(victim), _mode(victim), victim.stat().st_uid)
    summary, hosts = _run(kinds.put_spec(_spec(become=True), _local(tmp_path, b"owned\n"),
                                           str(link), mode=mode))
    host = hosts["host01"]
    assert not summary["succeeded"] and host["status"] == "failed"
    assert "belongs to another user" in host["error"]
    assert (_digest(victim), _mode(victim), victim.stat().st_uid) == before
    assert link.is_symlink() and os.readlink(link) == str(victim)  # left as it was
    assert sorted(p.name for p in shared_dir.iterdir()) == ["app.conf"]


def test_a_link_to_nothing_is_not_followed(tmp_path, fleet_dir, shared_dir):
    # Creating a file through a dangling link is how such an attack usually starts.
    where = shared_dir / "not-yet"
    link = fleet_dir / "app.conf"
    link.symlink_to(where)
    _own(link, FLEET_USER)
    summary, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, b"x\n"), str(link)))
    assert hosts["host01"]["status"] == "failed"
    assert "not an existing regular file" in hosts["host01"]["error"]
    assert not where.exists() and link.is_symlink()


def test_a_new_file_is_never_writable_by_others(tmp_path, fleet_dir):
    target = fleet_dir / "fresh.conf"
    summary, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, b"x\n"), str(target)))
    assert summary["succeeded"], hosts["host01"]
    assert not target.is_symlink()
    assert _mode(target) & 0o133 == 0, oct(_mode(target))  # at most 0644


def test_a_fifo_at_the_target_is_refused_not_read(tmp_path, fleet_dir):
    fifo = fleet_dir / "app.conf"
    os.mkfifo(fifo)
    began = time.monotonic()
    summary, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, b"x\n"), str(fifo)))
    assert time.monotonic() - began < 30
    assert hosts["host01"]["status"] == "failed"
    assert "not a regular file" in hosts["host01"]["error"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_the_temporary_file_cannot_be_swapped_for_a_link(tmp_path, victim):
    # A directory others may write in without the sticky bit: they can rename its entries.
    open_dir = Path(tempfile.mkdtemp(prefix="opsq-open-"))
    open_dir.chmod(0o777)
    try:
        data = secrets.token_bytes(90 * 1024 * 1024)
        target = open_dir / "app.bin"
        before = (_digest(victim), _mode(victim), victim.stat().st_uid)
        job = jobs.submit(kinds.put_spec(_spec(become=True), _local(tmp_path, data),
                                           str(target), mode="0644"))
        swapped = None
        deadline = time.monotonic() + 60
        while swapped is None and time.monotonic() < deadline and not job.ready():
            for work in open_dir.glob(".opsq-put.*"):
                # as the hostile user would: move the put's work away, put a link in its place
                work.rename(open_dir / "moved-away")
                if (open_dir / "moved-away").is_dir():
                    work.mkdir()
                    (work / "new").symlink_to(victim)
                    _own(work / "new", HOSTILE)
                    _own(work, HOSTILE)
                else:
                    work.symlink_to(victim)
                    _own(work, HOSTILE)
                swapped = work
                break
            time.sleep(0.002)
        summary = job.get(timeout=90)
        assert swapped is not None, "the put's temporary name never appeared"
        assert (_digest(victim), _mode(victim), victim.stat().st_uid) == before
        host = rows(summary["job_id"])["host01"]
        if host["status"] == "ok":  # swapped after the put went into its own directory
            assert _digest(target) == hashlib.sha256(data).hexdigest()
            assert oct(_mode(target)) == oct(0o644)
        else:  # swapped before: the put saw the directory is not its own and wrote nothing
            assert "changed by someone else" in host["error"], host
            assert not target.exists()
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


@pytest.mark.parametrize("how", ["link", "link to an empty one", "moved"])
def test_a_private_directory_swapped_for_roots_own_is_refused(shared_dir, how):
    # Swapped between mktemp and cd for a root 0700 directory (which passes an owner and
    # mode check): a link to it (another directory than mktemp made), or the directory
    # itself moved there (the same one, but not empty). Its files must stay as they are.
    guarded = Path(tempfile.mkdtemp(prefix="opsq-guarded-"))
    held = ["new", "old"] if how != "link to an empty one" else []
    try:
        for name in held:
            (guarded / name).write_bytes(b"root's own\n")
        swap = (f"mv {shlex.quote(str(guarded))}" if how == "moved"
                else f"ln -s {shlex.quote(str(guarded))}")
        prelude = f'mktemp() {{ m=$(command mktemp "$@"); rmdir "$m"; {swap} "$m"; echo "$m"; }}'
        target = shared_dir / "app.conf"
        outcome = _put_played(prelude, target, b"new\n")
        assert outcome.status == HostStatus.FAILED, outcome
        assert "changed by someone else" in outcome.error
        assert not target.exists()
        (work,) = shared_dir.glob(".opsq-put.*")  # left as the swap made it
        swapped = work if how == "moved" else guarded
        assert sorted(p.name for p in swapped.iterdir()) == held
        assert all(p.read_bytes() == b"root's own\n" for p in swapped.iterdir())
    finally:
        shutil.rmtree(guarded, ignore_errors=True)


@pytest.mark.parametrize("planted", ["file", "link"])
def test_a_target_made_during_the_transfer_lends_it_nothing(tmp_path, shared_dir, planted):
    # Absent when the put looked; the login user makes it (0666, or a link of its own)
    # while the bytes travel: root must neither chown the new file to that user nor give
    # it that mode. The put fails, and writes nothing.
    target = shared_dir / "app.bin"
    mine = shared_dir / "mine"
    mine.write_bytes(b"mine\n")
    _own(mine, FLEET_USER)
    job = jobs.submit(kinds.put_spec(_spec(become=True),
                                       _local(tmp_path, secrets.token_bytes(LARGE)),
                                       str(target)))
    wait_until(lambda: job.ready() or list(shared_dir.glob(".opsq-put.*")), 60,
               "the put's private directory", every=0.002)
    if planted == "file":
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, b"planted\n")
        os.close(fd)
        target.chmod(0o666)
    else:
        target.symlink_to(mine)
    _own(target, FLEET_USER)
    summary = job.get(timeout=90)
    host = rows(summary["job_id"])["host01"]
    assert host["status"] == "failed", host
    assert "changed during the transfer" in host["error"], host
    st = target.lstat()
    assert st.st_uid == pwd.getpwnam(FLEET_USER).pw_uid  # still the user's own, untouched
    assert target.read_bytes() in (b"planted\n", b"mine\n")
    assert list(shared_dir.glob(".opsq-put.*")) == []


def test_a_file_of_another_user_lends_root_neither_owner_nor_mode(tmp_path, shared_dir):
    target = shared_dir / "app.conf"
    target.write_bytes(b"old\n")
    target.chmod(0o4777)
    _own(target, FLEET_USER)
    target.chmod(0o4777)  # chown cleared the setuid bit
    summary, hosts = _run(kinds.put_spec(_spec(become=True), _local(tmp_path, b"new\n"),
                                           str(target)))
    assert summary["succeeded"], hosts["host01"]
    st = target.lstat()
    assert st.st_uid == 0 and target.read_bytes() == b"new\n"
    assert _mode(target) & 0o7133 == 0, oct(_mode(target))  # at most 0644


def _writer_of(path: Path) -> int | None:
    """The process that has ``path`` open as its stdout, if any."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/fd/1") == str(path):
                return int(pid)
        except OSError:
            continue
    return None


def test_a_cancelled_put_leaves_no_private_directory(tmp_path, shared_dir):
    # A slow link, played by stopping the host's reader mid-transfer: the cancel closes
    # the channel first, and the program then meets the closed channel (SIGPIPE on its
    # next message) with part of the file in its private directory.
    target = shared_dir / "app.bin"
    data = secrets.token_bytes(LARGE)
    job = jobs.submit(kinds.put_spec(_spec(become=True), _local(tmp_path, data),
                                       str(target)))
    new = wait_until(lambda: list(shared_dir.glob(".opsq-put.*/new")), 60,
                     "the put's temporary file", every=0.001)[0]
    reader = wait_until(lambda: _writer_of(new), 10, "the host's reader", every=0.001)
    os.kill(reader, signal.SIGSTOP)
    try:
        jobs.cancel(job.id)
        summary = job.get(timeout=90)
    finally:
        os.kill(reader, signal.SIGCONT)
    host = rows(summary["job_id"])["host01"]
    assert host["status"] == "cancelled"
    # its end was not seen: the record does not claim the put was stopped before it wrote
    assert "may have finished" in host["error"] and "stopped on the host" not in host["error"]
    wait_until(lambda: not list(shared_dir.glob(".opsq-put.*")), 10,
               "the put's private directory to be removed")
    # the old state or the whole file (should the bytes have all arrived): never a part
    assert not target.exists() or _digest(target) == hashlib.sha256(data).hexdigest()


def test_a_directory_at_the_target_at_the_last_moment_gets_nothing_inside(shared_dir):
    # A link to the user's directory put at the target's name just before the rename:
    # the rename replaces the name itself, never moves the file into that directory.
    theirs = Path(tempfile.mkdtemp(prefix="opsq-theirs-"))
    try:
        target = shared_dir / "app.conf"
        prelude = f'mv() {{ ln -s {shlex.quote(str(theirs))} "$5"; command mv "$@"; }}'
        outcome = _put_played(prelude, target, b"new\n")
        assert list(theirs.iterdir()) == []
        if outcome.status == HostStatus.OK:
            assert not target.is_symlink() and target.read_bytes() == b"new\n"
        else:
            assert target.is_symlink()
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


class _Recorded(Exception):
    pass


def test_a_put_whose_channel_closes_leaves_no_private_directory(shared_dir):
    # What a cancel does to the host's program, step by step: part of the bytes, then the
    # channel gone (its stdout and stderr closed, then its stdin). Its next message raises
    # SIGPIPE, which must still remove the private directory and the partial file.
    data = secrets.token_bytes(1024 * 1024)
    target = shared_dir / "app.bin"
    sent = []

    def record(script: str, stdin: bytes, timeout: float, limit: int, keep_stdin=False):
        if ".opsq-put." not in script:
            return LocalRunner().exec(script, stdin, timeout, limit)
        sent.append(script)
        raise _Recorded()

    with pytest.raises(_Recorded):
        programs.put(programs.HostSide(record, None, False), programs.Action(
            "put", {"remote": str(target), "sha256": hashlib.sha256(data).hexdigest()},
            data), 60)
    proc = subprocess.Popen(["/bin/sh", "-c", sent[0]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(data[:len(data) // 2])
    proc.stdin.flush()
    wait_until(lambda: [p for p in shared_dir.glob(".opsq-put.*/new") if p.stat().st_size],
               10, "part of the bytes in the private directory")
    proc.stdout.close()
    proc.stderr.close()
    proc.stdin.close()
    proc.wait(timeout=10)
    assert list(shared_dir.glob(".opsq-put.*")) == []
    assert not target.exists()


# -- --backup never writes through a name that exists ------------------------------------


def _backup_names(target: Path) -> list[Path]:
    """Every backup name a put of ``target`` may pick in the next seconds."""
    now = datetime.now()
    return [target.with_name(
        f"{target.name}.opsq-{(now + timedelta(seconds=s)).strftime('%Y%m%d%H%M%S')}")
        for s in range(-2, PLANTED_SECONDS)]


def _plant_backup_names(target: Path, victim: Path, owner: str) -> list[Path]:
    """Links to ``victim`` at every backup name a put may pick in the next seconds."""
    planted = _backup_names(target)
    for name in planted:
        name.symlink_to(victim)
        _own(name, owner)
    return planted


@pytest.mark.parametrize("planted", ["directory", "link to a directory"])
def test_a_backup_name_taken_by_a_directory_gets_nothing_inside(tmp_path, shared_dir,
                                                                planted):
    # ln (and mv) put the file inside a directory the name holds: the old file would be
    # hard-linked into the user's directory, where the user could read it.
    target = shared_dir / "motd"
    target.write_bytes(b"old\n")
    target.chmod(0o600)
    theirs = Path(tempfile.mkdtemp(prefix="opsq-theirs-"))
    try:
        theirs.chmod(0o777)
        _own(theirs, HOSTILE)
        names = _backup_names(target)
        for name in names:
            if planted == "directory":
                name.mkdir()
                name.chmod(0o777)
            else:
                name.symlink_to(theirs)
            _own(name, HOSTILE)
        summary, hosts = _run(kinds.put_spec(_spec(become=True),
                                               _local(tmp_path, b"new\n"), str(target),
                                               backup=True))
        assert summary["succeeded"], hosts["host01"]
        assert target.read_bytes() == b"new\n"
        assert list(theirs.iterdir()) == []
        assert all(list(n.iterdir()) == [] for n in names)
        kept = [p for p in shared_dir.glob("motd.opsq-*") if p not in names]
        assert [p.read_bytes() for p in kept] == [b"old\n"], kept
        assert kept[0].is_file() and not kept[0].is_symlink()
        assert kept[0].name in hosts["host01"]["stdout"]
    finally:
        shutil.rmtree(theirs, ignore_errors=True)


@pytest.mark.parametrize("become", [True, False])
def test_a_planted_backup_name_is_not_written_through(tmp_path, shared_dir, victim, become):
    if not become:  # the login user can write the victim: still never through a link
        _own(victim, FLEET_USER)
    target = shared_dir / "motd"
    target.write_bytes(b"old\n")
    _own(target, "root" if become else FLEET_USER)
    planted = _plant_backup_names(target, victim, HOSTILE)
    before = (_digest(victim), _mode(victim), victim.stat().st_uid)

    summary, hosts = _run(kinds.put_spec(_spec(become=become), _local(tmp_path, b"new\n"),
                                           str(target), backup=True))
    assert summary["succeeded"], hosts["host01"]
    assert (_digest(victim), _mode(victim), victim.stat().st_uid) == before
    assert all(p.is_symlink() and os.readlink(p) == str(victim) for p in planted)
    assert target.read_bytes() == b"new\n"
    kept = [p for p in shared_dir.glob("motd.opsq-*") if not p.is_symlink()]
    assert [p.read_bytes() for p in kept] == [b"old\n"]
    assert kept[0].name in hosts["host01"]["stdout"]  # the host's output names the backup


def test_a_backup_is_the_old_file_itself(tmp_path, fleet_dir):
    target = fleet_dir / "app.conf"
    target.write_bytes(b"old\n")
    target.chmod(0o640)
    _own(target, FLEET_USER)
    old = target.stat()
    _, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, b"new\n"), str(target),
                                     backup=True))
    assert hosts["host01"]["changed"] is True
    (kept,) = fleet_dir.glob("app.conf.opsq-*")
    st = kept.stat()
    assert (st.st_ino, st.st_mode, st.st_uid) == (old.st_ino, old.st_mode, old.st_uid)
    assert kept.read_bytes() == b"old\n" and target.read_bytes() == b"new\n"


def test_a_backup_where_no_hard_link_is_allowed_is_a_copy(tmp_path, fleet_dir):
    # The login user may not hard-link root's file (fs.protected_hardlinks): a copy, linked.
    target = fleet_dir / "app.conf"
    target.write_bytes(b"old\n")
    target.chmod(0o644)
    _, hosts = _run(kinds.put_spec(_spec(), _local(tmp_path, b"new\n"), str(target),
                                     backup=True))
    assert hosts["host01"]["changed"] is True, hosts["host01"]
    (kept,) = fleet_dir.glob("app.conf.opsq-*")
    assert kept.read_bytes() == b"old\n" and target.read_bytes() == b"new\n"
    assert list(fleet_dir.glob(".opsq-put.*")) == []


# -- get: '..', DEST, and every file under its own host's directory ---------------------------


def _job_count() -> int:
    with db.session_scope() as s:
        return s.execute(text("SELECT count(*) FROM jobs")).scalar_one()


@pytest.mark.parametrize("remote", ["/etc/../../../../etc/hostname", "/etc/..", "/../x"])
def test_get_with_dot_dot_is_refused_before_a_job_exists(tmp_path, opsq_cli, remote):
    before = _job_count()
    dest = tmp_path / "fetched"
    out = opsq_cli("get", remote, str(dest), "-t", "host01", "--wait")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("opsq: ")
    assert _job_count() == before and not dest.exists()
    with pytest.raises(kinds.ActionError):
        kinds.get_spec(_spec(), remote)


def test_get_into_an_existing_file_is_refused_before_a_job_exists(tmp_path, opsq_cli):
    dest = tmp_path / "notes.txt"
    dest.write_bytes(b"mine\n")
    before = _job_count()
    out = opsq_cli("get", "/etc/hostname", str(dest), "-t", "host01", "--wait")
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("opsq: ") and "not a directory" in last
    assert _job_count() == before
    assert dest.read_bytes() == b"mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_saving_a_finished_get_into_an_existing_file_is_refused(tmp_path, fleet_dir,
                                                                opsq_cli):
    source = fleet_dir / "app.log"
    source.write_bytes(b"logged\n")
    summary, _ = _run(kinds.get_spec(_spec(), str(source)))
    dest = tmp_path / "notes.txt"
    dest.write_bytes(b"mine\n")
    out = opsq_cli("result", summary["job_id"], "--save", str(dest))
    assert out.returncode == 2, out.stderr
    assert "not a directory" in out.stderr.strip().splitlines()[-1]
    assert dest.read_bytes() == b"mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_two_hosts_files_land_each_under_its_own_host(tmp_path, fleet_dir, opsq_cli):
    source = fleet_dir / "app.log"
    source.write_bytes(b"logged\n")
    dest = tmp_path / "fetched"
    out = opsq_cli("get", str(source), str(dest), "-t", "host01:host02", "--wait")
    assert out.returncode == 0, out.stderr
    for host in ("host01", "host02"):
        assert (dest / host / str(source).lstrip("/")).read_bytes() == b"logged\n"
    assert sorted(p.name for p in dest.iterdir()) == ["host01", "host02"]


def test_a_stored_job_with_dot_dot_saves_nothing(tmp_path):
    # A job stored before '..' was refused: its two hosts would write one file outside DEST.
    spec = replace(_spec("host01:host02"), kind=kinds.GET, command="get",
                   params={"remote": "/etc/../../../../etc/hostname"})
    summary, hosts = _run(spec)
    assert summary["succeeded"], hosts
    outside = tmp_path / "a"
    dest = outside / "b" / "fetched"
    with pytest.raises(kinds.ActionError, match=r"'\.\.'"):
        kinds.save_fetched(summary["job_id"], str(dest))
    assert not outside.exists()


def test_a_link_in_dest_cannot_take_a_hosts_file_elsewhere(tmp_path, fleet_dir):
    source = fleet_dir / "app.log"
    source.write_bytes(b"logged\n")
    summary, _ = _run(kinds.get_spec(_spec(), str(source)))
    dest = tmp_path / "fetched"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "host01").mkdir(parents=True)
    (dest / "host01" / "tmp").symlink_to(elsewhere)
    with pytest.raises(kinds.ActionError, match="outside"):
        kinds.save_fetched(summary["job_id"], str(dest))
    assert list(elsewhere.iterdir()) == []


def test_host_names_never_share_a_directory():
    names = ["a/b", "a_b", "a%2Fb", ".", "..", "%2E", "", "%", "x\x00y", "x%00y"]
    parts = [kinds._safe_part(n) for n in names]
    assert len(set(parts)) == len(parts)
    assert all("/" not in p and "\x00" not in p and p not in ("", ".", "..") for p in parts)


def test_get_does_not_follow_a_link_another_user_planted(shared_dir, victim):
    link = shared_dir / "report.txt"
    link.symlink_to(victim)
    _own(link, HOSTILE)
    summary, hosts = _run(kinds.get_spec(_spec(become=True), str(link)))
    assert hosts["host01"]["status"] == "failed"
    assert "belongs to another user" in hosts["host01"]["error"]
    assert hosts["host01"]["sha256"] is None


@pytest.mark.parametrize("swapped", ["fifo", "fifo with a writer", "link"])
def test_get_reads_only_the_file_it_checked(shared_dir, victim, swapped):
    # Swapped right after the regular-file check: for a fifo (a read would wait for a
    # writer until the deadline, or read what the writer says) or a link to root's file
    # (a read would fetch it).
    source = shared_dir / "report.txt"
    source.write_bytes(b"report\n")
    swap = {"fifo": 'rm -f "$2"; mkfifo "$2"',
            "fifo with a writer": ('rm -f "$2"; mkfifo "$2"; '
                                   '( echo secret > "$2" ) </dev/null >/dev/null 2>&1 &'),
            "link": f'ln -sfn {shlex.quote(str(victim))} "$2"'}[swapped]
    prelude = f'test() {{ command test "$@" || return; {swap}\n unset -f test; }}'
    began = time.monotonic()
    outcome = _get_played(prelude, source, timeout=60)
    assert time.monotonic() - began < programs.GET_OPEN_TIMEOUT + 15
    assert outcome.status == HostStatus.FAILED, outcome
    assert b"secret" not in (outcome.content or b"")
    why = ("could not be opened" if swapped == "fifo"
           else "was replaced while it was opened")
    assert why in outcome.error, outcome


def test_get_swapped_after_its_checks_still_reads_the_file_checked(shared_dir, victim):
    # A link to root's file put at the name after every check (played after the last
    # stat): what is read is the file opened and checked, never the name again.
    source = shared_dir / "report.txt"
    source.write_bytes(b"report\n")
    swap = f'ln -sfn {shlex.quote(str(victim))} "$4"'
    prelude = (f'stat() {{ command stat "$@" || return; [ "$3" = -- ] || return 0; {swap}\n'
               ' unset -f stat; }')
    outcome = _get_played(prelude, source)
    assert source.is_symlink()  # the swap was played
    assert outcome.status == HostStatus.OK, outcome
    assert outcome.content == b"report\n"
