"""The anvil launcher: startup parsing, isolation helpers, restart with state, and orphan safety (anvil dies with its
owner, even on SIGKILL, and does not die when the trio worker thread that spawned it exits)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from eth_account import Account

from relayer.chain.anvil import AnvilProcess, parse_startup_output, start_anvil_sync
from relayer.chain.errors import AnvilError, AnvilStartError, AnvilStartTimeoutError
from relayer.chain.rpc import HttpRpc, WsRpc, from_quantity

from ..conftest import ROOT
from .conftest import Chain, FreshAnvil, send_tx

pytestmark = pytest.mark.anvil


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _wait_gone(pid: int) -> None:
    """Wait (event-driven, through a pidfd) until ``pid`` has exited; the caller bounds it with fail_after."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _wait_gone_sync(pid: int, seconds: float) -> bool:
    """Block until ``pid`` has exited (pidfd readable) or ``seconds`` pass; True if it exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


async def _chain_id(url: str) -> int:
    async with HttpRpc(url, timeout=5) as rpc:
        return from_quantity(await rpc.call("eth_chainId"))


# --------------------------------------------------------------------------------------------------------------------
# Startup


async def test_start_parses_port_chain_id_and_dev_keys(fresh_anvil: FreshAnvil) -> None:
    with trio.fail_after(30):
        async with fresh_anvil(chain_id=4242) as node:
            assert node.port > 0
            assert node.http_url == f"http://127.0.0.1:{node.port}"
            assert node.ws_url == f"ws://127.0.0.1:{node.port}"
            assert node.chain_id == 4242
            assert _alive(node.pid)
            async with HttpRpc(node.http_url) as rpc:
                assert from_quantity(await rpc.call("eth_chainId")) == 4242
                served = await rpc.call("eth_accounts")
            assert [a.lower() for a in served] == [a.lower() for a in node.accounts]
            assert len(node.private_keys) == len(node.accounts) == 10
            for key, address in zip(node.private_keys, node.accounts, strict=True):
                assert Account.from_key(key).address == address
            assert "private_keys" not in repr(node)  # keys stay out of logs and assertion messages
        assert not _alive(node.pid)


def test_session_anvil_from_the_sync_helper(anvil: AnvilProcess) -> None:
    assert anvil.port > 0
    assert anvil.chain_id == 31337
    assert anvil.guard.poll() is None
    assert _alive(anvil.pid)


async def test_host_is_configurable(fresh_anvil: FreshAnvil) -> None:
    # Another loopback address stands in for a bridge address in a network namespace: nothing assumes 127.0.0.1.
    with trio.fail_after(30):
        async with fresh_anvil(host="127.0.0.2") as node:
            assert node.host == "127.0.0.2"
            assert node.http_url == f"http://127.0.0.2:{node.port}"
            assert await _chain_id(node.http_url) == node.chain_id


async def test_block_time_mines_on_an_interval(fresh_anvil: FreshAnvil) -> None:
    with trio.fail_after(30):
        async with fresh_anvil(block_time=0.2) as node, WsRpc(node.ws_url) as ws:
            heads = await ws.subscribe("newHeads")
            first = from_quantity((await heads.receive())["number"])
            second = from_quantity((await heads.receive())["number"])  # no transaction, no evm_mine
            assert second == first + 1


async def test_startup_failure_reports_anvil_output(fresh_anvil: FreshAnvil) -> None:
    with trio.fail_after(30), pytest.raises(AnvilStartError, match="exited with status") as caught:
        async with fresh_anvil(extra_args=["--no-such-flag"]):
            pass
    assert "--no-such-flag" in caught.value.output


async def test_startup_timeout_stops_the_slow_process(fresh_anvil: FreshAnvil, tmp_path: Path) -> None:
    fake = tmp_path / "slow-anvil"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")
    fake.chmod(0o755)
    with trio.fail_after(30):
        with pytest.raises(AnvilStartTimeoutError) as caught:
            async with fresh_anvil(binary=fake, startup_timeout=0.5):
                pass
        assert caught.value.pid is not None
        await _wait_gone(caught.value.pid)


def test_garbage_startup_output_is_a_start_error() -> None:
    with pytest.raises(AnvilStartError, match="listening address"):
        parse_startup_output("anvil-guard pid=1\nsomething else\n")


# --------------------------------------------------------------------------------------------------------------------
# Isolation and time control


async def test_snapshot_and_revert_isolate_state(chain: Chain) -> None:
    recipient = Account.create().address
    with trio.fail_after(20):
        block = await chain.control.block_number()
        snapshot = await chain.control.snapshot()
        await send_tx(chain.rpc, chain.node.private_keys[3], chain_id=chain.node.chain_id, to=recipient, value=777)
        assert from_quantity(await chain.rpc.call("eth_getBalance", [recipient, "latest"])) == 777
        assert await chain.control.block_number() == block + 1
        await chain.control.revert(snapshot)
        assert from_quantity(await chain.rpc.call("eth_getBalance", [recipient, "latest"])) == 0
        assert await chain.control.block_number() == block
        with pytest.raises(AnvilError, match="evm_revert"):
            await chain.control.revert(snapshot)  # a snapshot can be reverted to only once


async def test_mine_and_time_control(chain: Chain) -> None:
    with trio.fail_after(20):
        head = await chain.rpc.call("eth_getBlockByNumber", ["latest", False])
        start, t0 = from_quantity(head["number"]), from_quantity(head["timestamp"])
        await chain.control.mine(5)
        assert await chain.control.block_number() == start + 5

        await chain.control.set_next_block_timestamp(t0 + 1000)
        await chain.control.mine()
        head = await chain.rpc.call("eth_getBlockByNumber", ["latest", False])
        assert from_quantity(head["timestamp"]) == t0 + 1000

        await chain.control.increase_time(3600)
        await chain.control.mine()
        head = await chain.rpc.call("eth_getBlockByNumber", ["latest", False])
        assert from_quantity(head["timestamp"]) >= t0 + 1000 + 3600


async def test_restart_with_state_keeps_a_balance(fresh_anvil: FreshAnvil, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    recipient = Account.create().address
    with trio.fail_after(60):
        async with fresh_anvil(state_path=state) as node:
            async with HttpRpc(node.http_url) as rpc:
                await send_tx(rpc, node.private_keys[0], chain_id=node.chain_id, to=recipient, value=424242)
            assert await node.stop() == 0  # SIGTERM: anvil writes the state file before exiting
        assert state.is_file()
        async with fresh_anvil(state_path=state) as node, HttpRpc(node.http_url) as rpc:
            assert from_quantity(await rpc.call("eth_getBalance", [recipient, "latest"])) == 424242


# --------------------------------------------------------------------------------------------------------------------
# Orphan safety

OWNER_SYNC = """
import sys
from relayer.chain.anvil import start_anvil_sync
node = start_anvil_sync(log_path=sys.argv[1])
print(node.pid, node.guard.pid, node.http_url, flush=True)
sys.stdin.read()  # hold anvil until killed
"""

OWNER_TRIO = """
import sys, trio
from relayer.chain.anvil import start_anvil
async def main():
    async with start_anvil(log_path=sys.argv[1]) as node:
        print(node.pid, node.guard.pid, node.http_url, flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


@pytest.mark.parametrize("owner", [OWNER_SYNC, OWNER_TRIO], ids=["sync-helper", "trio-helper"])
async def test_anvil_dies_when_its_owner_is_sigkilled(owner: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", textwrap.dedent(owner), str(tmp_path / "anvil.log")],
            cwd=ROOT,
            stdin=subprocess.PIPE,  # the sync owner blocks reading it
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the owner exited before printing anvil's pid"
                line += chunk
            anvil_pid, guard_pid, url = line.decode().split()
            assert await _chain_id(url) == 31337
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        finally:
            proc.kill()
        with trio.fail_after(10):
            await _wait_gone(int(anvil_pid))
            await _wait_gone(int(guard_pid))


def test_anvil_dies_when_its_guard_is_sigkilled(tmp_path: Path) -> None:
    node = start_anvil_sync(log_path=tmp_path / "anvil.log")
    try:
        os.kill(node.guard.pid, signal.SIGKILL)
        assert _wait_gone_sync(node.pid, 10), "the guard gives anvil a parent-death signal"
    finally:
        assert node.stop() == -signal.SIGKILL


def test_sync_stop_is_graceful_and_idempotent(tmp_path: Path) -> None:
    with start_anvil_sync(log_path=tmp_path / "anvil.log") as node:
        assert node.stop() == 0
        assert not _alive(node.pid)
        assert node.stop() == 0
    assert "Listening on" in (tmp_path / "anvil.log").read_text()


async def test_worker_thread_trap_anvil_survives_30s_idle(fresh_anvil: FreshAnvil) -> None:
    """REQUIRED BY THE ISSUE; deliberately slow (30 s of idle time is the point of the test).

    trio spawns children from worker threads that exit after ~10 s idle; a parent-death signal set on anvil from
    such a thread would kill anvil mid-test. Hold anvil idle for 30 s and check it still serves.
    """
    with trio.fail_after(90):
        async with fresh_anvil() as node:
            assert await _chain_id(node.http_url) == node.chain_id
            await trio.sleep(30)  # idle on purpose: the spawning worker thread exits meanwhile
            assert _alive(node.pid)
            assert node.guard.poll() is None
            assert await _chain_id(node.http_url) == node.chain_id
