"""The `relayer` CLI as an operator runs it: real subprocesses, real keystores and files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import FAST_SCRYPT_N, VENV_BIN

RELAYER = str(VENV_BIN / "relayer")


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAYER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, input=stdin)


def init_node(tmp_path: Path, env: dict[str, str], name: str = "node1", *extra: str) -> Path:
    out = run(["init", "--dir", str(tmp_path / name), "--scrypt-n", str(FAST_SCRYPT_N), *extra], env)
    assert out.returncode == 0, out.stderr
    return tmp_path / name


def test_init_then_config_check(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = run(
        [
            "init",
            "--dir",
            str(tmp_path / "n1"),
            "--scrypt-n",
            str(FAST_SCRYPT_N),
            "--p2p-port",
            "9100",
            "--market",
            "1:ETH-USD",
            "--market",
            "2:BTC-USD",
        ],
        cli_env,
    )
    assert out.returncode == 0, out.stderr
    address = re.search(r"relayer address: (0x[0-9a-fA-F]{40})", out.stdout)
    peer = re.search(r"peer id:\s+(16Uiu2\w+)", out.stdout)
    assert address and peer, out.stdout
    assert f"/ip4/127.0.0.1/tcp/9100/p2p/{peer.group(1)}" in out.stdout

    check = run(["config", "check", str(tmp_path / "n1" / "config.json")], cli_env)
    assert check.returncode == 0, check.stderr
    assert ": ok" in check.stdout
    assert address.group(1) in check.stdout
    assert "1:ETH-USD, 2:BTC-USD" in check.stdout

    show = run(["keys", "show", "--config", str(tmp_path / "n1" / "config.json")], cli_env)
    assert show.returncode == 0, show.stderr
    assert address.group(1) in show.stdout and peer.group(1) in show.stdout

    cfg = json.loads((tmp_path / "n1" / "config.json").read_text())
    assert "private" not in json.dumps(cfg).lower()


def test_init_refuses_to_overwrite_and_needs_a_password(tmp_path: Path, cli_env: dict[str, str]) -> None:
    node = init_node(tmp_path, cli_env)
    before = (node / "keystore.json").read_text()
    again = run(["init", "--dir", str(node), "--scrypt-n", str(FAST_SCRYPT_N)], cli_env)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert (node / "keystore.json").read_text() == before
    env = dict(cli_env)
    del env["RELAYER_KEYSTORE_PASSWORD"]
    nopw = run(["init", "--dir", str(tmp_path / "n2")], env)
    assert nopw.returncode == 1
    assert "RELAYER_KEYSTORE_PASSWORD" in nopw.stderr
    assert not (tmp_path / "n2").exists()


def test_init_validates_its_options(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = run(["init", "--dir", str(tmp_path / "n"), "--exchange", "0x1234"], cli_env)
    assert out.returncode == 1
    assert "chain.exchange" in out.stderr
    assert not (tmp_path / "n").exists()


def test_config_check_reports_problems_with_key_paths(tmp_path: Path, cli_env: dict[str, str]) -> None:
    node = init_node(tmp_path, cli_env)
    cfg_file = node / "config.json"
    raw = json.loads(cfg_file.read_text())
    raw["api"]["port"] = "http"
    raw["p2p"]["bootstrap"] = ["/ip4/127.0.0.1/tcp/1"]
    cfg_file.write_text(json.dumps(raw))
    out = run(["config", "check", str(cfg_file)], cli_env)
    assert out.returncode == 1
    assert "api.port: must be an integer" in out.stderr
    assert "p2p.bootstrap[0]:" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_check_env_override_and_missing_keystore(tmp_path: Path, cli_env: dict[str, str]) -> None:
    node = init_node(tmp_path, cli_env)
    env = dict(cli_env, RELAYER__API__PORT="70000")
    out = run(["config", "check", str(node / "config.json")], env)
    assert out.returncode == 1
    assert "api.port: must be between 0 and 65535" in out.stderr
    (node / "keystore.json").unlink()
    out = run(["config", "check", str(node / "config.json")], cli_env)
    assert out.returncode == 1
    assert "keys.keystore:" in out.stderr and "does not exist" in out.stderr


def test_keys_show_wrong_password(tmp_path: Path, cli_env: dict[str, str]) -> None:
    node = init_node(tmp_path, cli_env)
    out = run(["keys", "show", "--config", str(node / "config.json")], dict(cli_env, RELAYER_KEYSTORE_PASSWORD="x"))
    assert out.returncode == 1
    assert "wrong password" in out.stderr
    only = run(["keys", "show", "--keystore", str(node / "keystore.json"), "--address-only"], cli_env)
    assert only.returncode == 0
    assert only.stdout.startswith("address: 0x")


def test_keys_new(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = run(["keys", "new", "--out", str(tmp_path / "gas.json"), "--scrypt-n", str(FAST_SCRYPT_N)], cli_env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "gas.json").stat().st_mode & 0o077 == 0


def test_config_show_and_docs(tmp_path: Path, cli_env: dict[str, str]) -> None:
    node = init_node(tmp_path, cli_env)
    out = run(["config", "show", str(node / "config.json")], dict(cli_env, RELAYER__QUORUM__ROUND_TIMEOUT_MS="2500"))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["quorum"]["round_timeout_ms"] == 2500
    assert shown["node"]["data_dir"] == str((node / "data").resolve())
    docs = run(["config", "docs"], cli_env)
    assert "| `api.port` |" in docs.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["init"],
        ["keys"],
        ["keys", "show"],
        ["keys", "new"],
        ["config"],
        ["config", "check"],
        ["config", "show"],
        ["config", "docs"],
        ["config", "example"],
        ["version"],
        ["run"],
        ["devnet"],
        ["order"],
        ["book"],
        ["status"],
        ["db"],
    ],
)
def test_every_command_has_help(args: list[str], cli_env: dict[str, str]) -> None:
    out = run([*args, "--help"], cli_env)
    assert out.returncode == 0, out.stderr
    assert "Usage: relayer" in out.stdout
    assert len(out.stdout.splitlines()) >= 4


@pytest.mark.parametrize(
    ("args", "issue"),
    [(["devnet"], "#8"), (["order"], "#8"), (["book"], "#8"), (["status"], "#8")],
)
def test_commands_of_later_issues_say_so(args: list[str], issue: str, cli_env: dict[str, str]) -> None:
    out = run(args, cli_env)
    assert out.returncode == 3
    assert "not available yet" in out.stderr and issue in out.stderr


def test_run_refuses_a_missing_config(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = run(["run", "--config", str(tmp_path / "missing.json")], cli_env)
    assert out.returncode == 1
    assert "does not exist" in out.stderr


def test_version_and_global_log_options(cli_env: dict[str, str]) -> None:
    out = run(["--log-format", "json", "--log", "relayer.p2p=debug", "version"], cli_env)
    assert out.returncode == 0
    assert out.stdout.startswith("relayer 0.1.0")
    assert "coincurve" in out.stdout
    bad = run(["--log", "relayer.p2p=loud", "version"], cli_env)
    assert bad.returncode == 2
    assert "bad log level override" in bad.stderr
