"""Starts the pinned anvil (tests and ``relayer devnet``) so that it never outlives its owner.

Two entry points start the same thing:

- ``async with start_anvil(...) as node:`` in trio code; leaving the block stops anvil (shielded, bounded).
- ``start_anvil_sync(...)`` for a pytest session fixture or a script; ``stop()`` it, or use it as a ``with`` block.

anvil runs under a small guard process (``_anvil_guard.py``, standard library only) whose stdin is a pipe from the
owner. When the owner exits in any way, SIGKILL included, the kernel closes the pipe, the guard sees EOF and stops
anvil; killing the guard kills anvil too (the guard, single-threaded and long-lived, gives anvil a parent-death
signal). Nothing depends on which thread spawned the guard, so trio spawning children from short-lived worker threads
is harmless. One caveat: a child *forked without exec* by the owner inherits the pipe and keeps anvil alive until
it exits too (pipes are close-on-exec, so ``subprocess`` children do not).

Startup: ``--port 0`` by default; the port, chain id, dev accounts and their private keys are parsed from anvil's
own startup output (nothing hard-coded). ``stop()`` sends SIGTERM first, so a ``state_path`` (``--state``) is written
before anvil exits and the next start with the same path resumes from it.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import trio

from relayer.chain.errors import AnvilError, AnvilStartError, AnvilStartTimeoutError
from relayer.chain.rpc import JsonRpc, from_quantity, to_quantity
from relayer.toolchain import anvil_path

__all__ = [
    "DEFAULT_CHAIN_ID",
    "AnvilControl",
    "AnvilInfo",
    "AnvilNode",
    "AnvilOptions",
    "AnvilProcess",
    "parse_startup_output",
    "start_anvil",
    "start_anvil_sync",
]

log = logging.getLogger("relayer.chain.anvil")

DEFAULT_CHAIN_ID: Final = 31337
GUARD_SCRIPT: Final = Path(__file__).with_name("_anvil_guard.py")
_PID_LINE = re.compile(r"^anvil-guard pid=(\d+)$", re.MULTILINE)
_LISTENING = re.compile(r"^Listening on (\S+):(\d+)\s*$", re.MULTILINE)
_ACCOUNT = re.compile(r"^\((\d+)\)\s+(0x[0-9a-fA-F]{40})\b")
_KEY = re.compile(r"^\((\d+)\)\s+(0x[0-9a-fA-F]{64})\s*$")
_STOP_MARGIN = 5.0  # the owner waits this much longer than the guard's grace before killing the guard


@dataclass(frozen=True, kw_only=True)
class AnvilOptions:
    """How to start anvil. ``block_time=None`` means automine (a block per transaction)."""

    host: str = "127.0.0.1"
    port: int = 0
    chain_id: int = DEFAULT_CHAIN_ID
    block_time: float | None = None
    state_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    startup_timeout: float = 30.0
    stop_timeout: float = 10.0
    log_path: Path | None = None
    binary: Path | None = None

    def anvil_command(self) -> list[str]:
        binary = self.binary or anvil_path()
        argv = [str(binary), "--host", self.host, "--port", str(self.port), "--chain-id", str(self.chain_id)]
        if self.block_time is not None:
            if not self.block_time > 0:
                raise ValueError(f"block_time must be positive or None (automine), got {self.block_time}")
            argv += ["--block-time", f"{self.block_time:g}"]
        if self.state_path is not None:
            argv += ["--state", str(self.state_path)]
        return [*argv, *self.extra_args]

    def command(self) -> list[str]:
        """The guard's command line, with anvil's after ``--``."""
        guard = [sys.executable, "-I", str(GUARD_SCRIPT), "--grace", f"{self.stop_timeout:g}"]
        if self.log_path is not None:
            guard += ["--log", str(self.log_path)]
        return [*guard, "--", *self.anvil_command()]


@dataclass(frozen=True, kw_only=True)
class AnvilInfo:
    """A running anvil: where it listens and its funded dev accounts (keys parsed from its startup output)."""

    host: str
    port: int
    chain_id: int
    pid: int
    """anvil's own process id (not the guard's)."""
    accounts: tuple[str, ...]
    private_keys: tuple[str, ...] = field(repr=False)
    log_path: Path | None = None

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """anvil serves WebSocket JSON-RPC on the same port as HTTP."""
        return f"ws://{self._url_host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class AnvilProcess(AnvilInfo):
    """anvil started by :func:`start_anvil_sync`; :meth:`stop` it (or use ``with``)."""

    stop_timeout: float = 10.0
    guard: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def stop(self) -> int:
        """Stop anvil (SIGTERM, so ``--state`` is written; SIGKILL after ``stop_timeout``). Returns the guard's
        exit status (0 after a clean stop). Idempotent."""
        return _stop_sync(self.guard, self.stop_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True, kw_only=True)
class AnvilNode(AnvilInfo):
    """anvil started by :func:`start_anvil`; stopped when its ``async with`` block ends, or earlier by :meth:`stop`."""

    stop_timeout: float = 10.0
    guard: trio.Process = field(repr=False, compare=False)

    async def stop(self) -> int:
        """Stop anvil now (shielded from cancellation, bounded by ``stop_timeout``); idempotent."""
        return await _stop_async(self.guard, self.stop_timeout)


# --------------------------------------------------------------------------------------------------------------------
# Startup output


@dataclass(frozen=True)
class StartupInfo:
    """What :func:`parse_startup_output` finds in the guard's and anvil's startup output."""

    pid: int
    host: str
    port: int
    chain_id: int
    accounts: tuple[str, ...]
    private_keys: tuple[str, ...] = field(repr=False)


def _sections(text: str) -> dict[str, list[str]]:
    """anvil's banner sections: a title line underlined with '=' followed by content lines."""
    lines = text.splitlines()
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and set(stripped) == {"="} and i > 0:
            if current is not None and current and current[-1].strip() == lines[i - 1].strip():
                current.pop()
            current = sections.setdefault(lines[i - 1].strip(), [])
        elif current is not None and stripped:
            current.append(stripped)
    return sections


def parse_startup_output(text: str) -> StartupInfo:
    """Parse the guard's pid line and anvil's banner up to ``Listening on HOST:PORT``."""
    pid = _PID_LINE.search(text)
    listening = _LISTENING.search(text)
    if pid is None or listening is None:
        raise AnvilStartError("anvil did not report its listening address", output=text)
    sections = _sections(text)
    accounts = [m.group(2) for line in sections.get("Available Accounts", []) if (m := _ACCOUNT.match(line))]
    keys = [m.group(2) for line in sections.get("Private Keys", []) if (m := _KEY.match(line))]
    if len(accounts) != len(keys):
        raise AnvilStartError(f"parsed {len(accounts)} accounts but {len(keys)} private keys", output=text)
    chain = sections.get("Chain ID", [])
    if not chain or not chain[0].isdigit():
        raise AnvilStartError("anvil's startup output has no Chain ID", output=text)
    host = listening.group(1).removeprefix("[").removesuffix("]")
    return StartupInfo(int(pid.group(1)), host, int(listening.group(2)), int(chain[0]), tuple(accounts), tuple(keys))


def _pid_of(text: str) -> int | None:
    m = _PID_LINE.search(text)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------------------------------
# Sync


def start_anvil_sync(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    chain_id: int = DEFAULT_CHAIN_ID,
    block_time: float | None = None,
    state_path: Path | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    log_path: Path | None = None,
    binary: Path | None = None,
) -> AnvilProcess:
    """Start anvil and return once it listens (blocking, for sync code such as a pytest session fixture).

    Raises :class:`AnvilStartTimeoutError` when anvil does not listen within ``startup_timeout`` seconds and
    :class:`AnvilStartError` when it exits first (its output is in the error).
    """
    options = AnvilOptions(
        host=host,
        port=port,
        chain_id=chain_id,
        block_time=block_time,
        state_path=state_path,
        extra_args=tuple(extra_args),
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
        log_path=log_path,
        binary=binary,
    )
    command = options.command()
    # Our own guard script and the pinned anvil, no shell.
    guard = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # noqa: S603
    try:
        assert guard.stdout is not None
        output = _read_until_eof(guard.stdout.fileno(), startup_timeout)
        guard.stdout.close()
        info = _startup_info(output, lambda: _wait_briefly(guard))
    except BaseException:
        _stop_sync(guard, stop_timeout)
        raise
    log.info("anvil pid %d listening on %s:%d (chain id %d)", info.pid, info.host, info.port, info.chain_id)
    return AnvilProcess(
        host=info.host,
        port=info.port,
        chain_id=info.chain_id,
        pid=info.pid,
        accounts=info.accounts,
        private_keys=info.private_keys,
        log_path=log_path,
        stop_timeout=stop_timeout,
        guard=guard,
    )


def _read_until_eof(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                text = b"".join(chunks).decode(errors="replace")
                raise AnvilStartTimeoutError(
                    f"anvil did not listen within {timeout:g} s", output=text, pid=_pid_of(text)
                )
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)


def _wait_briefly(guard: subprocess.Popen[bytes]) -> int | None:
    try:
        return guard.wait(timeout=_STOP_MARGIN)
    except subprocess.TimeoutExpired:
        return None


def _stop_sync(guard: subprocess.Popen[bytes], grace: float) -> int:
    if guard.stdin is not None and not guard.stdin.closed:
        guard.stdin.close()  # EOF: the guard stops anvil
    if guard.stdout is not None and not guard.stdout.closed:
        guard.stdout.close()
    try:
        return guard.wait(timeout=grace + _STOP_MARGIN)
    except subprocess.TimeoutExpired:
        log.warning("anvil guard pid %d did not stop within %.0f s; killing it (anvil dies with it)", guard.pid, grace)
        guard.kill()
        return guard.wait()


# --------------------------------------------------------------------------------------------------------------------
# trio


@asynccontextmanager
async def start_anvil(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    chain_id: int = DEFAULT_CHAIN_ID,
    block_time: float | None = None,
    state_path: Path | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    log_path: Path | None = None,
    binary: Path | None = None,
) -> AsyncIterator[AnvilNode]:
    """``async with start_anvil(...) as node``: anvil listening until the block ends. Same options and errors as
    :func:`start_anvil_sync`."""
    options = AnvilOptions(
        host=host,
        port=port,
        chain_id=chain_id,
        block_time=block_time,
        state_path=state_path,
        extra_args=tuple(extra_args),
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
        log_path=log_path,
        binary=binary,
    )
    command = options.command()
    guard = await trio.lowlevel.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        output = await _read_until_eof_async(guard, startup_timeout)
        exit_status: int | None = None
        if _LISTENING.search(output) is None:
            with trio.move_on_after(_STOP_MARGIN):
                exit_status = await guard.wait()
        info = _startup_info(output, lambda: exit_status)
        log.info("anvil pid %d listening on %s:%d (chain id %d)", info.pid, info.host, info.port, info.chain_id)
        yield AnvilNode(
            host=info.host,
            port=info.port,
            chain_id=info.chain_id,
            pid=info.pid,
            accounts=info.accounts,
            private_keys=info.private_keys,
            log_path=log_path,
            stop_timeout=stop_timeout,
            guard=guard,
        )
    finally:
        await _stop_async(guard, stop_timeout)


async def _read_until_eof_async(guard: trio.Process, seconds: float) -> str:
    assert guard.stdout is not None
    chunks: list[bytes] = []
    try:
        with trio.fail_after(seconds):
            while chunk := await guard.stdout.receive_some(65536):
                chunks.append(chunk)
    except trio.TooSlowError:
        text = b"".join(chunks).decode(errors="replace")
        raise AnvilStartTimeoutError(
            f"anvil did not listen within {seconds:g} s", output=text, pid=_pid_of(text)
        ) from None
    await guard.stdout.aclose()
    return b"".join(chunks).decode(errors="replace")


async def _stop_async(guard: trio.Process, grace: float) -> int:
    with trio.CancelScope(shield=True):
        if guard.stdin is not None:
            await guard.stdin.aclose()  # EOF: the guard stops anvil
        if guard.stdout is not None:
            await guard.stdout.aclose()
        with trio.move_on_after(grace + _STOP_MARGIN):
            await guard.wait()
        if guard.returncode is not None:
            return guard.returncode
        log.warning("anvil guard pid %d did not stop within %.0f s; killing it (anvil dies with it)", guard.pid, grace)
        guard.kill()
        return await guard.wait()


def _startup_info(output: str, exit_status: Callable[[], int | None]) -> StartupInfo:
    if _LISTENING.search(output) is None:
        status = exit_status()
        how = "is still running" if status is None else f"exited with status {status}"
        raise AnvilStartError(
            f"anvil {how} without reporting its listening address", output=output, pid=_pid_of(output)
        )
    return parse_startup_output(output)


# --------------------------------------------------------------------------------------------------------------------
# Test isolation and time control


class AnvilControl:
    """anvil's test methods over any :class:`~relayer.chain.rpc.JsonRpc` client."""

    def __init__(self, rpc: JsonRpc) -> None:
        self.rpc = rpc

    async def snapshot(self) -> str:
        """``evm_snapshot``: an id to :meth:`revert` to (each id can be reverted to once)."""
        snapshot_id = await self.rpc.call("evm_snapshot")
        if not isinstance(snapshot_id, str):
            raise AnvilError(f"evm_snapshot returned {snapshot_id!r}")
        return snapshot_id

    async def revert(self, snapshot_id: str) -> None:
        """``evm_revert``: back to the state (and blocks) of ``snapshot_id``; :class:`AnvilError` if unknown."""
        if await self.rpc.call("evm_revert", [snapshot_id]) is not True:
            raise AnvilError(f"evm_revert to snapshot {snapshot_id} failed (unknown or already reverted)")

    async def mine(self, blocks: int = 1) -> None:
        """Mine ``blocks`` blocks now (``anvil_mine``)."""
        await self.rpc.call("anvil_mine", [to_quantity(blocks)])

    async def set_next_block_timestamp(self, timestamp: int) -> None:
        """The next mined block gets exactly this timestamp (seconds; must be later than the head's)."""
        await self.rpc.call("evm_setNextBlockTimestamp", [to_quantity(timestamp)])

    async def increase_time(self, seconds: int) -> None:
        """Move the chain's clock forward by ``seconds`` for the blocks mined from now on."""
        await self.rpc.call("evm_increaseTime", [to_quantity(seconds)])

    async def set_balance(self, address: str, wei: int) -> None:
        """``anvil_setBalance``."""
        await self.rpc.call("anvil_setBalance", [address, to_quantity(wei)])

    async def block_number(self) -> int:
        return from_quantity(await self.rpc.call("eth_blockNumber"))
