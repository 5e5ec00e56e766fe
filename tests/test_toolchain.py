"""The pinned toolchain from package-lock.json is installed and works: the real anvil binary and solc-js."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from relayer import toolchain
from relayer.errors import ToolchainError

from .conftest import ROOT


def _pinned(package: str) -> str:
    return str(json.loads((ROOT / "package.json").read_text())["dependencies"][package])


def test_anvil_binary_is_the_pinned_version() -> None:
    path = toolchain.anvil_path(env={}, cwd=ROOT)
    assert path.is_relative_to(ROOT / "node_modules")
    assert toolchain.anvil_version(path) == f"anvil Version: {_pinned(toolchain.ANVIL_PACKAGE)}"


def test_anvil_found_from_another_directory_through_the_package(tmp_path: Path) -> None:
    # cwd has no node_modules above it: the search falls back to the directory of the relayer package.
    assert toolchain.anvil_path(env={}, cwd=tmp_path) == toolchain.anvil_path(env={}, cwd=ROOT)


def test_anvil_serves_json_rpc_on_an_ephemeral_port() -> None:
    proc = subprocess.Popen(
        [str(toolchain.anvil_path(env={})), "--host", "127.0.0.1", "--port", "0", "--chain-id", "31337"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        for _ in range(200):
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"Listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "anvil never printed its listening address"
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}",
            data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["result"] == hex(31337)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_solc_js_is_the_pinned_version() -> None:
    solc = toolchain.solc_js_dir(env={}, cwd=ROOT)
    out = subprocess.run(
        ["node", "-e", "process.stdout.write(require(process.argv[1]).version())", str(solc)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.startswith(_pinned("solc") + "+commit.")


def test_missing_toolchain_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ToolchainError, match="make install"):
        toolchain.anvil_path(env={toolchain.ANVIL_ENV: str(tmp_path / "anvil")})
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o644)
    with pytest.raises(ToolchainError, match="not executable"):
        toolchain.anvil_path(env={toolchain.ANVIL_ENV: str(fake)})
    with pytest.raises(ToolchainError, match="is not a directory"):
        toolchain.node_modules_dir(env={toolchain.NODE_MODULES_ENV: str(tmp_path / "nm")})
