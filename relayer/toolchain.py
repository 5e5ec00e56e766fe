"""Finds the pinned toolchain that `npm ci --ignore-scripts` installs under node_modules/.

- anvil: the local chain, shipped as a binary inside the npm package ``@foundry-rs/anvil-linux-amd64``.
- solc-js: the Solidity compiler (npm ``solc``), run offline through node.

``RELAYER_ANVIL`` and ``RELAYER_NODE_MODULES`` point elsewhere explicitly. There is no silent fallback to whatever
``anvil`` happens to be on PATH: a different version would make tests pass or fail for the wrong reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from relayer.errors import ToolchainError

ANVIL_PACKAGE = "@foundry-rs/anvil-linux-amd64"
ANVIL_ENV = "RELAYER_ANVIL"
NODE_MODULES_ENV = "RELAYER_NODE_MODULES"


def _candidates(start: Path) -> list[Path]:
    return [d / "node_modules" for d in (start, *start.parents)]


def node_modules_dir(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The node_modules directory holding the pinned toolchain (searched upward from cwd, then from this package)."""
    env = os.environ if env is None else env
    if env.get(NODE_MODULES_ENV):
        explicit = Path(env[NODE_MODULES_ENV])
        if not explicit.is_dir():
            raise ToolchainError(f"${NODE_MODULES_ENV}={explicit} is not a directory")
        return explicit
    seen: list[Path] = []
    for start in (cwd or Path.cwd(), Path(__file__).resolve().parent):
        for cand in _candidates(start.resolve()):
            if cand in seen:
                continue
            seen.append(cand)
            if (cand / ANVIL_PACKAGE).is_dir() or (cand / "solc").is_dir():
                return cand
    raise ToolchainError(
        "node_modules with the pinned toolchain not found (searched upward from the current "
        "directory and from the relayer package); run `make install` (npm ci --ignore-scripts) in "
        f"the project, or set ${NODE_MODULES_ENV}"
    )


def anvil_path(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Path of the pinned anvil binary; :class:`ToolchainError` says what to do when it is missing."""
    env = os.environ if env is None else env
    explicit = env.get(ANVIL_ENV)
    path = Path(explicit) if explicit else node_modules_dir(env, cwd) / ANVIL_PACKAGE / "bin" / "anvil"
    if not path.is_file():
        raise ToolchainError(f"anvil binary not found at {path}; run `make install` (npm ci --ignore-scripts)")
    if not os.access(path, os.X_OK):
        # `npm ci --ignore-scripts` keeps the mode from the tarball, but a copied tree may lose it.
        raise ToolchainError(f"{path} is not executable; run `chmod +x {path}` or reinstall with `make install`")
    return path


def anvil_version(path: Path | None = None) -> str:
    """The first line of ``anvil --version`` (e.g. ``anvil Version: 1.7.1``)."""
    binary = path or anvil_path()
    try:
        # Our own pinned binary, no shell involved.
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True)  # noqa: S603
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"{binary} --version failed: {exc}") from None
    return out.stdout.strip().splitlines()[0]


def solc_js_dir(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Directory of the pinned solc-js package (compile with ``node`` and ``require(<this dir>)``)."""
    path = node_modules_dir(env, cwd) / "solc"
    if not (path / "package.json").is_file():
        raise ToolchainError(f"solc-js not found at {path}; run `make install` (npm ci --ignore-scripts)")
    return path
