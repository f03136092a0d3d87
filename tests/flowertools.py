"""Flower as an operator starts it (``opsq flower``), for the tests that look at it."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Flower:
    """``opsq flower`` as an operator starts it, on a free port with a login."""

    def __init__(self, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        user, password = "watcher", secrets.token_urlsafe(12)
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.state_dir = tmp / "flower-state"
        self.env = {**os.environ, "OPSQ_FLOWER_USER": user, "OPSQ_FLOWER_PASSWORD": password,
                    "OPSQ_FLOWER_PORT": str(self.port),
                    "OPSQ_FLOWER_DB": str(self.state_dir / "flower.db"), **(extra_env or {})}
        self.log = tmp / "flower.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "opsq.cli", "flower"], cwd=ROOT,
                                     env=self.env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        wait_until(lambda: self.request("GET", "/healthcheck", auth=False)[0] == 200, 30,
                   "Flower up")
        wait_until(lambda: json.loads(self.request("GET", "/api/workers?refresh=1")[1] or "{}"),
                   30, "Flower to see the worker")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def request(self, method: str, path: str, body: dict | None = None,
                auth: bool = True) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else (
            b"" if method == "POST" else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError:
            return 0, ""
