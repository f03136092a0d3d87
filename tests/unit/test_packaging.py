"""What the wheel ships: opsq, and none of the development tools kept beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from helpers import ROOT

#: Seconds a wheel build may take (it fetches setuptools for its isolated build).
BUILD_TIMEOUT = 300
#: Words no file in the wheel may have in its name: the local fleet (it creates system
#: users and sudo rules), the demo, the example task, the package that holds them.
DEV_ONLY = ("devfleet", "demo", "examples", "devtools")
#: What the copy of the source tree leaves out: local state, caches, earlier builds.
NOT_SOURCE = (".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__",
              ".pytest_cache", ".ruff_cache", ".hypothesis", ".schemathesis")


def test_the_wheel_holds_no_fleet_demo_or_example_code(tmp_path):
    # Built from a copy, so no build/ left from an earlier build can add stale files.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
         "."], cwd=src, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("opsq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "opsq/app.py" in names
    assert "opsq/store/migrations/versions/0011_drop_example_tables.py" in names
    shipped = [n for n in names if any(word in n.lower() for word in DEV_ONLY)]
    assert shipped == []
