"""The files jobs carry (put, script) and fetch (get): stored once by content in
PostgreSQL's ``files`` table, so a 500-host put keeps one copy, not 500.

A worker keeps the payloads it read in a small in-process cache, so a job's chunks read
a file from the database once per worker process, not once per chunk.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.engine import Connection

from opsq.errors import OpsqError

#: Bytes of payloads a worker process keeps in memory between chunks of a job.
CACHE_BYTES = 256 * 1024 * 1024

_INSERT = text("""
    INSERT INTO files (sha256, size, content) VALUES (:sha, :size, :content)
    ON CONFLICT (sha256) DO NOTHING
""")
_SELECT = text("SELECT content FROM files WHERE sha256 = :sha")
#: Files no job refers to any more (its job pruned): neither as the file it carried nor
#: as one a host returned, nor as the file a schedule's put or script carries.
_UNREFERENCED = text("""
    DELETE FROM files f
    WHERE f.created_at < now() - interval '1 hour'
      AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.params->>'sha256' = f.sha256)
      AND NOT EXISTS (SELECT 1 FROM host_results h WHERE h.sha256 = f.sha256)
      AND NOT EXISTS (SELECT 1 FROM schedules s
                      WHERE s.kwargs->'spec'->'params'->>'sha256' = f.sha256)
""")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store(conn: Connection, contents: Iterable[bytes]) -> list[str]:
    """Keep each content once; their sha256s, in order."""
    shas = []
    for content in contents:
        sha = digest(content)
        conn.execute(_INSERT, {"sha": sha, "size": len(content), "content": content})
        shas.append(sha)
    return shas


class _Cache:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha: str) -> bytes | None:
        with self._lock:
            if sha in self._items:
                self._items.move_to_end(sha)
                return self._items[sha]
        return None

    def put(self, sha: str, content: bytes) -> None:
        with self._lock:
            self._items[sha] = content
            while sum(len(v) for v in self._items.values()) > self.limit and \
                    len(self._items) > 1:
                self._items.popitem(last=False)


_cache = _Cache(CACHE_BYTES)


def load(sha: str) -> bytes:
    """The content stored under ``sha`` (checked against it). Raises OpsqError if gone."""
    if (content := _cache.get(sha)) is not None:
        return content
    from opsq.store import db

    with db.get_engine().connect() as conn:
        row = conn.execute(_SELECT, {"sha": sha}).first()
    if row is None:
        raise OpsqError(f"the job's file {sha} is no longer stored (pruned?)")
    content = bytes(row.content)
    if digest(content) != sha:
        raise OpsqError(f"the stored file {sha} is damaged (its sha256 differs)")
    _cache.put(sha, content)
    return content


def exists(conn: Connection, sha: str) -> bool:
    """Whether content ``sha`` is stored."""
    return conn.execute(text("SELECT 1 FROM files WHERE sha256 = :sha"), {"sha": sha}
                        ).first() is not None


def prune(conn: Connection) -> int:
    """Delete the files no remaining job refers to; how many."""
    return conn.execute(_UNREFERENCED).rowcount
