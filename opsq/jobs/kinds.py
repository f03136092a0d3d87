"""Jobs beyond a command: the specs of put, get and script jobs, checked before anything is
queued, and the fetched files written out on the operator's side.

A put or script job carries a file: it is stored once (``opsq.store.files``) with the job, and
its sha256 goes in the job's parameters; the hosts' programs live in ``opsq.hostrun.programs``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import text

from opsq.errors import OpsqError
from opsq.settings import get_settings
from opsq.store.files import digest

#: Kinds of job (``jobs.kind``).
COMMAND, PUT, GET, SCRIPT = "command", "put", "get", "script"
#: A file mode as chmod takes it in octal.
_MODE = re.compile(r"^0?[0-7]{3}$")
#: A POSIX user or group name (as useradd accepts it), optionally USER:GROUP.
_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"
_OWNER = re.compile(rf"^{_NAME}(:{_NAME})?$")
_USER = re.compile(rf"^{_NAME}$")


class ActionError(OpsqError):
    """A put, get or script job cannot be built as asked."""


def _remote_path(path: str) -> str:
    if not path.startswith("/") or "\x00" in path or "\n" in path:
        raise ActionError(f"the remote path must be absolute (start with /): {path!r}")
    if path.endswith("/") or PurePosixPath(path).name in ("", ".", ".."):
        raise ActionError(f"the remote path must name a file, not a directory: {path!r}")
    if ".." in path.split("/"):
        # A fetched file is saved under DEST/<host>/<remote path>: '..' would leave it.
        raise ActionError(f"the remote path must not contain '..': {path!r} (write the "
                          "path it means, e.g. /etc/hostname)")
    return path


def check_dest(dest: str) -> Path:
    """The local directory fetched files go to (made when missing); refused when the name
    is something else, an existing file for one, before any job exists."""
    p = Path(dest).expanduser()
    if p.exists() and not p.is_dir():
        raise ActionError(f"{dest} exists and is not a directory: fetched files are saved "
                          f"as {dest}/<host>/<remote path>; name a directory")
    return p


def _read_local(path: str, what: str) -> tuple[bytes, str]:
    """The file's bytes and absolute path; refused above OPSQ_MAX_FILE before reading."""
    p = Path(path).expanduser()
    limit = get_settings().max_file
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ActionError(f"the {what} {path} is not a regular file")
        if size > limit:
            raise ActionError(f"the {what} {path} has {size} bytes, more than OPSQ_MAX_FILE "
                              f"({limit} bytes)")
        return p.read_bytes(), str(p.resolve())
    except OSError as exc:
        raise ActionError(f"cannot read the {what} {path}: {exc.strerror}") from None


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
#: Parameters each kind may carry (besides become's), as the command line makes them.
_KIND_PARAMS = {
    COMMAND: set(),
    PUT: {"remote", "sha256", "size", "source", "mode", "owner", "backup"},
    GET: {"remote"},
    SCRIPT: {"name", "args", "sha256", "size", "source"},
}


def check_params(kind: str, params: Any) -> dict[str, Any]:
    """A stored job's kind and parameters (a schedule's, a by-name client's), checked as
    the command line checks what it makes: the same paths, modes, owners and user names,
    a file's sha256, and nothing else. No typed password (-K) can be stored. Raises
    ActionError."""
    if kind not in _KIND_PARAMS:
        raise ActionError(f"unknown job kind {str(kind)[:16]!r}: command, put, get or script")
    if not isinstance(params, dict):
        raise ActionError("the job's parameters must be an object")
    if params.get("become_prompt"):
        raise ActionError("a typed sudo password (-K) cannot be stored: give the workers "
                          "OPSQ_BECOME_PASSWORD_FILE or ansible_become_pass")
    become = become_params(bool(params.get("become")), params.get("become_user"))
    extra = set(params) - _KIND_PARAMS[kind] - {"become", "become_user"}
    if extra:
        raise ActionError(f"a {kind} job takes no {', '.join(sorted(extra))[:64]}")
    out = {k: params[k] for k in _KIND_PARAMS[kind] if k in params}
    if kind in (PUT, GET):
        out["remote"] = _remote_path(str(params.get("remote", "")))
    if kind in (PUT, SCRIPT) and not _SHA256.match(str(params.get("sha256", ""))):
        raise ActionError(f"a {kind} job needs the sha256 of its stored file")
    if kind == PUT:
        if "mode" in out and not _MODE.match(str(out["mode"])):
            raise ActionError(f"--mode must be an octal file mode such as 0644, not "
                              f"{str(out['mode'])[:16]!r}")
        if "owner" in out and not _OWNER.match(str(out["owner"])):
            raise ActionError(f"--owner must be USER or USER:GROUP, not "
                              f"{str(out['owner'])[:40]!r}")
    if kind == SCRIPT:
        args = params.get("args", [])
        if not _SCRIPT_NAME.match(str(params.get("name", ""))) or not isinstance(args, list) \
                or not all(isinstance(a, str) and "\x00" not in a for a in args):
            raise ActionError("a script job needs a plain script name and text arguments")
    return {**out, **become}


def become_params(become: bool, become_user: str | None, prompt: bool = False
                  ) -> dict[str, Any]:
    """The job parameters of ``--become [--become-user USER] [--ask-become-pass]``."""
    if (become_user is not None or prompt) and not become:
        raise ActionError("--become-user and --ask-become-pass need --become")
    if not become:
        return {}
    if become_user is not None and not _USER.match(become_user):
        raise ActionError(f"not a user name: {become_user!r}")
    return {"become": True, **({"become_user": become_user} if become_user else {}),
            **({"become_prompt": True} if prompt else {})}


def put_spec(spec: Any, local: str, remote: str, *, mode: str | None = None,
             owner: str | None = None, backup: bool = False) -> Any:
    """``spec`` (a JobSpec for the hosts) made a put of ``local`` to ``remote``."""
    content, source = _read_local(local, "file")
    if mode is not None and not _MODE.match(mode):
        raise ActionError(f"--mode must be an octal file mode such as 0644, not {mode!r}")
    if owner is not None and not _OWNER.match(owner):
        raise ActionError(f"--owner must be USER or USER:GROUP, not {owner!r}")
    remote = _remote_path(remote)
    params = {**spec.params, "remote": remote, "sha256": digest(content), "size": len(content),
              "source": source, **({"mode": mode} if mode else {}),
              **({"owner": owner} if owner else {}), **({"backup": True} if backup else {})}
    return replace(spec, kind=PUT, params=params, payload=content,
                   command=f"put {Path(source).name} -> {remote}")


def get_spec(spec: Any, remote: str) -> Any:
    """``spec`` made a fetch of ``remote`` from each host."""
    remote = _remote_path(remote)
    return replace(spec, kind=GET, params={**spec.params, "remote": remote},
                   command=f"get {remote}")


def script_spec(spec: Any, path: str, args: list[str]) -> Any:
    """``spec`` made a run of the local script ``path`` with ``args`` on each host."""
    content, source = _read_local(path, "script")
    if not content.startswith(b"#!"):
        raise ActionError(f"the script {path} has no #! line: the hosts would not know what "
                          "runs it")
    if any("\x00" in a for a in args):
        raise ActionError("a script argument contains a NUL byte")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(source).name)
    params = {**spec.params, "name": name, "args": list(args), "sha256": digest(content),
              "size": len(content), "source": source}
    shown = " ".join([name, *args])
    return replace(spec, kind=SCRIPT, params=params, payload=content,
                   command=f"script {shown}")


# -- fetched files ---------------------------------------------------------------------------

_FETCHED = text("""
    SELECT h.host, h.sha256, f.content FROM host_results h
    JOIN files f ON f.sha256 = h.sha256
    WHERE h.job_id = :job AND h.status = 'ok'
    ORDER BY h.host
""")


def _safe_part(name: str) -> str:
    # A host name becomes one directory, never a path of its own, and two names never the
    # same directory: '%', '/' and NUL are escaped, '.' and '..' too.
    cleaned = name.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    return {"": "%", ".": "%2E", "..": "%2E%2E"}.get(cleaned, cleaned)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def save_fetched(job_id: str, dest: str) -> list[Path]:
    """Write what a get job fetched to ``DEST/<host>/<remote path>``; the paths written.

    Every file lands inside its host's own directory (checked on the resolved path, links
    in DEST followed): otherwise nothing is written. Raises OpsqError for a job that is not
    a get job, or whose files would land elsewhere."""
    from opsq import jobs
    from opsq.store import db

    kind, params = jobs.job_action(job_id)
    if kind != GET:
        raise ActionError(f"job {job_id} fetched no files (it is a {kind} job)")
    remote = params["remote"]
    if ".." in remote.split("/"):  # a job stored before '..' was refused
        raise ActionError(f"job {job_id} fetched {remote!r}, a path with '..': it cannot be "
                          "saved under DEST/<host>/; nothing was written")
    base = check_dest(dest)
    with db.get_engine().connect() as conn:
        fetched = list(conn.execute(_FETCHED, {"job": job_id}))
    targets = []
    for row in fetched:
        folder = base / _safe_part(row.host)
        target = folder / remote.lstrip("/")
        if not _inside(target.resolve(), folder.resolve()):
            raise ActionError(f"{remote} of {row.host} would be saved outside {folder} "
                              "(a link on the way?): nothing was written")
        targets.append((target, bytes(row.content)))
    written = []
    for target, content in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ActionError(f"cannot make {target.parent}: {exc.strerror}") from None
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".opsq-tmp",
                                   dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ActionError(f"cannot save {target}: {exc.strerror}") from None
        written.append(target)
    return written
