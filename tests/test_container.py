"""The container image, built for real and run as its own unprivileged user.

`scripts/container.sh --local-base` builds relayers:latest with buildah on a Debian bookworm base that it
bootstraps with debootstrap (cached in out/cache/container/), so no image registry is needed. The tests then read
the image's recorded config (user, ports, volumes, healthcheck, entrypoint) and run the CLI, the config check and
the HEALTHCHECK command inside a working container.

Needs root (debootstrap, buildah's chroot isolation) with buildah and debootstrap installed: `make test` apt-gets
them as root. Cold, it takes about two minutes on 2 cores (debootstrap ~45 s, image build ~60 s); with the
base cached, about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "relayers:latest"
STORAGE_DRIVER = os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs")
BUILD_TIMEOUT = 1500  # cold build: debootstrap + apt + pip (compiles fastecdsa); generous for a slow mirror
RUN_TIMEOUT = 120
PASSWORD = "container test password"

IS_ROOT = os.geteuid() == 0

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(
        not IS_ROOT,
        reason="container: needs root (debootstrap and buildah's chroot builds); CI runs as root",
    ),
]


def _buildah(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["buildah", "--storage-driver", STORAGE_DRIVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"buildah {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """Builds relayers:latest on the local debootstrap base; returns `buildah inspect` of the image."""
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"container test needs {' and '.join(missing)}: apt-get install buildah debootstrap")
    env = {**os.environ, "CONTAINER_ENGINE": "buildah", "IMAGE": IMAGE, "BUILDAH_STORAGE_DRIVER": STORAGE_DRIVER}
    log = ROOT / "out" / "container-test-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        try:
            proc = subprocess.run(
                ["bash", "scripts/container.sh", "--local-base"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"scripts/container.sh --local-base took over {BUILD_TIMEOUT}s; log: {log}")
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        pytest.fail(f"scripts/container.sh --local-base exited {proc.returncode} (full log {log}):\n{tail}")
    info: dict[str, Any] = json.loads(_buildah("inspect", "--type", "image", IMAGE).stdout)
    return info


@pytest.fixture(scope="module")
def container(image: dict[str, Any]) -> Iterator[str]:
    """A working container of the image, shared by the tests (creating one copies the image: ~12 s with vfs);
    each test works in its own paths. Removed at the end."""
    ctr = _buildah("from", "--pull=never", IMAGE).stdout.strip().splitlines()[-1]
    try:
        yield ctr
    finally:
        _buildah("rm", ctr, check=False)


def _run(
    ctr: str, *cmd: str, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs cmd in the container as the image's configured user (unless user is given)."""
    opts = ["--isolation", "chroot"]
    for key, value in (env or {}).items():
        opts += ["--env", f"{key}={value}"]
    if user is not None:
        opts += ["--user", user]
    return _buildah("run", *opts, ctr, "--", *cmd, check=False)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _config(image: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = image["Docker"]["config"]  # the docker-format config: it keeps the healthcheck
    return cfg


def test_image_runs_as_non_root_user(image: dict[str, Any], container: str) -> None:
    user = _config(image)["User"]
    assert user == image["OCIv1"]["config"]["User"] == "10001:10001"
    assert _ok(_run(container, "id", "-u")).strip() == "10001"
    assert _ok(_run(container, "id", "-un")).strip() == "relayer"
    # the code is not writable by the node; its volumes are
    assert _run(container, "touch", "/opt/relayer/probe").returncode != 0
    _ok(_run(container, "touch", "/etc/relayer/probe", "/var/lib/relayer/probe"))


def test_image_ports_volumes_entrypoint(image: dict[str, Any]) -> None:
    cfg = _config(image)
    assert set(cfg["ExposedPorts"]) == {"9000/tcp", "8080/tcp"}
    assert set(cfg["Volumes"]) == {"/etc/relayer", "/var/lib/relayer"}
    assert cfg["Entrypoint"] == ["relayer"]
    assert cfg["Cmd"] == ["run", "--config", "/etc/relayer/config.json"]
    assert "PATH=/opt/relayer/bin:" in " ".join(cfg["Env"])


def test_healthcheck_probes_the_api(image: dict[str, Any], container: str) -> None:
    health = _config(image).get("Healthcheck")
    assert health, "no HEALTHCHECK recorded (buildah must build with --format docker)"
    test = health["Test"]
    assert test[0] == "CMD"
    assert "http://127.0.0.1:8080/health" in " ".join(test)
    assert health["Retries"] >= 1 and health["Interval"] > 0 and health["Timeout"] > 0

    # Run the recorded command in the container, first with nothing listening, then with a stub API that answers
    # /health; in a network namespace of our own (buildah's chroot isolation shares the caller's), so port 8080
    # of the machine is neither needed nor touched.
    probe = textwrap.dedent(
        """
        import http.server, json, subprocess, sys, threading
        cmd = json.loads(sys.argv[1])
        def check():
            return subprocess.run(cmd, capture_output=True, timeout=30).returncode
        down = check()
        class Api(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/health" else 404)
                self.end_headers()
            def log_message(self, *args):
                pass
        server = http.server.HTTPServer(("127.0.0.1", 8080), Api)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(json.dumps({"down": down, "up": check()}))
        """
    )
    # Brings up the loopback interface of the new namespace (no iproute2 needed), then execs buildah.
    lo_up = textwrap.dedent(
        """
        import fcntl, os, socket, struct, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))  # SIOCSIFFLAGS |= IFF_UP
        os.execvp(sys.argv[1], sys.argv[1:])
        """
    )
    unshare = ["unshare", "--net"] if IS_ROOT else ["unshare", "--user", "--map-root-user", "--net"]
    cmd = [
        *unshare,
        sys.executable,
        "-c",
        lo_up,
        "buildah",
        "--storage-driver",
        STORAGE_DRIVER,
        "run",
        "--isolation",
        "chroot",
        container,
        "--",
        "python3",
        "-c",
        probe,
        json.dumps(test[1:]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    result = json.loads(_ok(proc).strip().splitlines()[-1])
    assert result["down"] != 0, "healthcheck passed with no API listening"
    assert result["up"] == 0, "healthcheck failed against an API answering 200 on /health"


def test_cli_help(container: str) -> None:
    out = _ok(_run(container, "relayer", "--help"))
    assert "Usage: relayer" in out
    for command in ("init", "config", "run"):
        assert command in out


def test_init_and_config_check_as_relayer_user(container: str) -> None:
    node = "/var/lib/relayer/node-c"
    env = {"RELAYER_KEYSTORE_PASSWORD": PASSWORD}
    # --scrypt-n (hidden): a weak keystore work factor, only to keep the test fast
    out = _ok(_run(container, "relayer", "init", "--dir", node, "--scrypt-n", "1024", env=env))
    assert "relayer address: 0x" in out
    out = _ok(_run(container, "relayer", "config", "check", f"{node}/config.json"))
    assert f"{node}/config.json: ok" in out
    # the files belong to the unprivileged user that the image runs as
    assert _ok(_run(container, "stat", "-c", "%u", f"{node}/keystore.json")).strip() == "10001"
    # and the same works when the user is named, as an operator would (`--user relayer`)
    _ok(_run(container, "relayer", "config", "check", f"{node}/config.json", user="relayer"))


def test_config_check_rejects_a_bad_config(container: str) -> None:
    bad = json.dumps({"node": {"name": "x"}, "chain": {"chain_id": "not a number"}})
    _ok(_run(container, "sh", "-c", f"printf '%s' '{bad}' > /etc/relayer/config.json"))
    proc = _run(container, "relayer", "config", "check", "/etc/relayer/config.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
