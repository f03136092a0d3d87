"""``make screenshot``: a picture of Flower's task list showing an opsq job.

Uses the running daemons and local fleet (``make demo`` or ``make fleet-up start``):
starts Flower on a spare loopback port with throwaway credentials, runs one job, and has
headless Chromium render the tasks page to ``var/flower-tasks.png``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64encode

from opsq import jobs
from opsq.settings import PROJECT_ROOT
from tests.helpers import free_port

OUTPUT = PROJECT_ROOT / "var" / "flower-tasks.png"
#: Browser window size in pixels.
WINDOW = "1600,900"
#: Milliseconds Chromium lets the page's scripts run (Flower fills the table by XHR).
RENDER_BUDGET_MS = 8000
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def _get(url: str, auth: str) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": auth})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


def main() -> None:
    user, password, port = "opsq", secrets.token_urlsafe(12), free_port()
    auth = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    env = {**os.environ, "OPSQ_FLOWER_USER": user, "OPSQ_FLOWER_PASSWORD": password,
           "OPSQ_FLOWER_PORT": str(port)}
    flower = subprocess.Popen([sys.executable, "-m", "opsq.cli", "flower"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if json.loads(_get(f"{base}/api/workers?refresh=1", auth) or b"{}"):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            sys.exit("Flower did not see a worker: start them with 'make start'")
        summary = jobs.submit(jobs.JobSpec(
            command="echo \"$(id -un) on $(echo $SSH_CONNECTION | cut -d' ' -f3)\"",
            pattern="all")).get(timeout=60)
        print(f"job {summary['job_id']}: {summary['status']}")
        time.sleep(1)
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={WINDOW}", f"--virtual-time-budget={RENDER_BUDGET_MS}",
                 f"--screenshot={OUTPUT}", f"http://{user}:{password}@127.0.0.1:{port}/tasks"],
                check=True, capture_output=True, timeout=120)
        print(f"screenshot: {OUTPUT}")
    finally:
        flower.terminate()
        flower.wait(30)


if __name__ == "__main__":
    main()
