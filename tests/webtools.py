"""``opsq web`` as an operator starts it, and the users the web tests log in as."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from helpers import ROOT, free_port, wait_until

#: Seconds ``opsq web`` gets to answer after it is started.
START_TIMEOUT = 30


class Web:
    """A real ``opsq web`` (uvicorn) subprocess on a free port."""

    def __init__(self, log: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "OPSQ_WEB_PORT": str(self.port),
               "OPSQ_WEB_SECRET": secrets.token_hex(16), **(extra_env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "opsq.cli", "web"], cwd=ROOT,
                                     env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_until(self._up, START_TIMEOUT, f"opsq web up ({log})")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"opsq web died: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password: str
    token: str


def make_account(role: str, prefix: str) -> Account:
    """A new user of ``role`` with a password and an API token."""
    from opsq.web import users

    name = f"{prefix}-{role}-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    users.add(name, role, password, by="test")
    return Account(name, role, password, users.new_token(name, by="test"))
