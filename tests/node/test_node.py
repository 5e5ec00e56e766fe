"""The node spine against a real anvil: `relayer run` as a process (resume after kill -9, clean SIGTERM, refusals at
start) and a node in-process whose worker settles a certified batch that its watcher and processor then see."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, AnvilProcess, start_anvil_sync
from relayer.chain.rpc import HttpRpc
from relayer.config import parse_config
from relayer.keys import RelayerKey
from relayer.node import Node, NodeStartError
from relayer.processor import Processor
from relayer.store import Store
from relayer.types import Hash32, Side
from relayer.worker import SettleJob
from tests.conftest import ROOT, VALID
from tests.exchange.world import MARKET, PRICE, World
from tests.exchange.world import test_key as key_of

RELAYER = ROOT / ".venv" / "bin" / "relayer"


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilProcess]:
    with start_anvil_sync(log_path=tmp_path_factory.mktemp("node-anvil") / "anvil.log") as node:
        yield node


@pytest.fixture(scope="module")
def deployed(anvil: AnvilProcess) -> dict[str, Any]:
    async def deploy() -> dict[str, Any]:
        async with HttpRpc(anvil.http_url, timeout=30) as rpc:
            world = await World.create(rpc, AnvilControl(rpc), anvil.chain_id)
            return {"deployment": world.deployment}

    return trio.run(deploy)


@pytest.fixture
async def world(anvil: AnvilProcess, deployed: dict[str, Any]) -> AsyncIterator[World]:
    async with HttpRpc(anvil.http_url, timeout=30) as rpc:
        yield await World.create_from(rpc, AnvilControl(rpc), anvil.chain_id, deployed["deployment"])


def node_config(tmp_path: Path, anvil: AnvilProcess, world: World, **chain: Any) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    raw["node"]["data_dir"] = str(tmp_path / "data")
    raw["chain"].update(
        {
            "chain_id": anvil.chain_id,
            "rpc_http": [anvil.http_url],
            "rpc_ws": [anvil.ws_url],
            "exchange": world.deployment.exchange,
            "start_block": world.deployment.block,
            "confirmations": 2,
            "log_range_blocks": 50,
        }
    )
    raw["chain"].update(chain)
    raw["p2p"] = {"listen": ["/ip4/127.0.0.1/tcp/0"], "bootstrap": []}
    raw["worker"] = {"resubmit_after_ms": 2_000}
    return raw


def contract_balance(account: ex.GetAccountResult) -> int:
    return int(account.balance)


# ------------------------------------------------------------------------------------------------ `relayer run`


class NodeProcess:
    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.log_path = log
        self.handle = log.open("ab")
        self.proc = subprocess.Popen(
            [str(RELAYER), "--log", "relayer.node=debug", "run", "--config", str(config)],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0, *, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text()[after:])
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited {self.proc.returncode} before {pattern!r}:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.handle.close()
        return code


@pytest.fixture
def node_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYER")}
    env["RELAYER_PRIVATE_KEY"] = key_of("relayer-0").hex()
    env["HOME"] = str(tmp_path)
    return env


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return path


async def deposit_block(world: World, label: str, amount: int) -> int:
    await world.trader(label, deposit=amount)
    return int((await world.rpc.call("eth_blockNumber")), 16)


async def test_run_resumes_after_kill_9_and_stops_cleanly(
    tmp_path: Path, anvil: AnvilProcess, world: World, node_env: dict[str, str]
) -> None:
    config = write_config(tmp_path, node_config(tmp_path, anvil, world))
    await deposit_block(world, "early", 1_000 * 10**6)  # before the node ever ran: found by backfill
    node = NodeProcess(config, tmp_path / "node.log", node_env)
    try:
        node.wait_for(r"caught up with the chain at block (\d+)")
        block = await deposit_block(world, "live", 2_000 * 10**6)  # live, over the WebSocket subscription
        node.wait_for(rf"included block {block} ")
    finally:
        node.proc.kill()  # kill -9: no cleanup at all
        node.proc.wait(10)
        node.handle.close()
    await deposit_block(world, "while-down", 3_000 * 10**6)
    await world.control.mine(3)
    mark = len((tmp_path / "node.log").read_text())
    node = NodeProcess(config, tmp_path / "node.log", node_env)
    try:
        node.wait_for(r"resuming from block (\d+)", after=mark)
        node.wait_for(r"caught up with the chain at block (\d+)", after=mark)
    finally:
        code = node.stop(signal.SIGTERM)
    assert code == 0, node.text()[-3000:]
    assert "SIGTERM received: stopping" in node.text() and "store closed" in node.text()

    # what the node stored equals what the contract says
    with Store.open(tmp_path / "data") as store:
        processor = Processor.open(store)
        state = processor.chain_state()
        for label in ("early", "live", "while-down"):
            trader = world.traders[label]
            want = contract_balance(await world.account(trader))
            assert state.account(trader.address).balance == want, label
        assert processor.counters.get("duplicate_block", 0) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chain_id": 5}, r"the RPC is on chain 31337 but chain.chain_id is 5"),
        ({"exchange": "0x000000000000000000000000000000000000dEaD"}, r"no contract at chain.exchange"),
        ("token", r"is not an exchange|another EIP-712 domain"),
    ],
)
async def test_run_refuses_the_wrong_chain_or_contract(
    tmp_path: Path,
    anvil: AnvilProcess,
    world: World,
    node_env: dict[str, str],
    change: dict[str, Any] | str,
    message: str,
) -> None:
    chain = {"exchange": world.deployment.token} if change == "token" else change
    assert isinstance(chain, dict)
    config = write_config(tmp_path, node_config(tmp_path, anvil, world, **chain))
    with trio.fail_after(60):
        out = await trio.run_process(
            [str(RELAYER), "run", "--config", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            env=node_env,
            check=False,
        )
    stderr = out.stderr.decode()
    assert out.returncode == 1, stderr
    assert re.search(message, stderr), stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "data").exists()  # refused before touching the store


# ------------------------------------------------------------------------------------------------ in-process node


async def test_node_settles_a_certified_batch_and_reconciles_it(
    tmp_path: Path, anvil: AnvilProcess, world: World
) -> None:
    raw = node_config(tmp_path, anvil, world)
    cfg = parse_config(raw, base_dir=tmp_path, env={})
    node = Node(cfg, RelayerKey(key_of("relayer-0")))
    await world.control.set_balance(node.key.address, 10**21)  # the relayer key pays gas here (no keys.gas_keystore)
    maker = await world.trader("maker", deposit=100_000 * 10**6)
    taker = await world.trader("taker", deposit=100_000 * 10**6)
    world.seq = ex.decode_last_seq_result(await world.view(ex.encode_last_seq()))  # the module shares one exchange
    world.last_hash = ex.decode_last_batch_hash_result(await world.view(ex.encode_last_batch_hash()))
    seq = world.seq + 1
    m = world.order(maker, Side.SELL, 5 * 10**7, PRICE, created_at=1_000)  # the maker: earlier
    t = world.order(taker, Side.BUY, 3 * 10**7, PRICE, created_at=1_001)
    batch = world.batch([world.sign_order(m), world.sign_order(t)], [(0, 1, 3 * 10**7)], seq=seq)
    job = SettleJob.settle(batch, world.quorum(batch))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await node.ready.wait()
            await node.submit(job, Hash32(world.batch_digest(batch)))
            processor = node.processor
            assert processor is not None
            results = node.status.worker_results
            await node.wait_for(lambda: bool(results))
            assert results == {"included": 1}, results
            await node.wait_for(lambda: processor.chain_state().filled.get((maker.address, m.salt), 0) == 3 * 10**7)
            state = processor.chain_state()
            for party in (maker, taker):
                account = await world.account(party)
                assert state.account(party.address).balance == contract_balance(account)
                position = await world.position(party, MARKET)
                assert state.account(party.address).position(MARKET).size == position.size
            assert state.filled[(taker.address, t.salt)] == await world.filled(t)
            nursery.cancel_scope.cancel()
    assert node.store is None  # closed on the way out


async def test_node_refuses_to_start_on_another_chain(tmp_path: Path, anvil: AnvilProcess, world: World) -> None:
    cfg = parse_config(node_config(tmp_path, anvil, world, chain_id=77), base_dir=tmp_path, env={})
    node = Node(cfg, RelayerKey(key_of("relayer-0")))
    with pytest.raises(NodeStartError, match=r"chain 31337 but chain\.chain_id is 77"):
        await node.run()
