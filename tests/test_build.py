"""`make build` makes a single-file executable that runs from anywhere with only Python 3.11 on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .conftest import FAST_SCRYPT_N, ROOT


def test_single_file_executable_runs_outside_the_project(tmp_path: Path) -> None:
    build = subprocess.run(["make", "-s", "build"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    exe = ROOT / "out" / "bin" / "relayer"
    assert exe.is_file() and os.access(exe, os.X_OK)

    python = shutil.which("python3.11")
    assert python, "python3.11 not on PATH"
    # Only the directory of the Python interpreter on PATH: no venv, no project, a fresh HOME.
    env = {
        "PATH": f"{Path(python).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "RELAYER_KEYSTORE_PASSWORD": "pw",
    }
    for args in (["--help"], ["version"]):
        out = subprocess.run([str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert "coincurve 21" in out.stdout  # compiled dependencies ship inside the file
    init = subprocess.run(
        [str(exe), "init", "--dir", "n", "--scrypt-n", str(FAST_SCRYPT_N)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    check = subprocess.run(
        [str(exe), "config", "check", "n/config.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    assert "n/config.json: ok" in check.stdout
