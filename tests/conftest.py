"""Shared fixtures. Tests run in trio mode (pyproject.toml); real parts are started by the tests themselves."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
FAST_SCRYPT_N = 1024  # a weak keystore work factor, for tests only

VALID: dict[str, Any] = {
    "node": {"name": "node-a", "data_dir": "data"},
    "chain": {
        "chain_id": 31337,
        "rpc_http": ["http://127.0.0.1:8545"],
        "rpc_ws": ["ws://127.0.0.1:8545"],
        "exchange": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    },
    "p2p": {"listen": ["/ip4/127.0.0.1/tcp/9000"], "bootstrap": []},
    "markets": [{"id": 1, "symbol": "ETH-USD"}],
}


@pytest.fixture
def valid_raw() -> dict[str, Any]:
    """A minimal valid config as decoded JSON (a fresh copy per test)."""
    return copy.deepcopy(VALID)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the relayer CLI as a subprocess: no RELAYER_* leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYER")}
    env["RELAYER_KEYSTORE_PASSWORD"] = "correct horse battery staple"
    env["HOME"] = str(tmp_path)
    return env
