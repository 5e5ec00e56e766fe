"""The watcher against a real anvil (each test its own): live events, a dropped WebSocket with a reorg and a multi-range
backfill in the gap, a restart from the stored cursor, anvil restarted from ``--state`` on the same port, and reorgs by
``anvil_reorg`` and by ``evm_snapshot`` / ``evm_revert``. Every scenario ends with the consumer's view (Included and
Retracted applied by block hash) equal to a fresh ``eth_getLogs`` scan of the contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, AnvilNode, start_anvil
from relayer.chain.rpc import HttpRpc, JsonRpc, from_quantity, to_quantity
from relayer.chain.tx import send
from relayer.store.records import ChainCursor
from relayer.watcher import Watcher
from tests.exchange.world import ONE, Party, World

from .helpers import Running, View, running

pytestmark = pytest.mark.anvil


# --------------------------------------------------------------------------------------------------------------------
# Helpers


@dataclass
class Setup:
    node: AnvilNode
    rpc: HttpRpc
    world: World
    trader: Party
    salt: int = 1

    @property
    def exchange(self) -> str:
        return self.world.deployment.exchange

    async def cancel(self, n: int = 1) -> None:
        """``n`` cancelUpTo transactions (one CancelledUpTo event and one block each)."""
        for _ in range(n):
            self.salt += 1
            await send(
                self.rpc, self.trader.signer, to=self.exchange, data=ex.encode_cancel_up_to(self.salt), gas=100_000
            )

    async def raw_cancel(self, party: Party, nonce: int, salt: int) -> str:
        block = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        fee = 2 * from_quantity(block["baseFeePerGas"]) + 10**9
        tx = {
            "type": 2,
            "chainId": self.node.chain_id,
            "nonce": nonce,
            "gas": 100_000,
            "maxFeePerGas": fee,
            "maxPriorityFeePerGas": 10**9,
            "value": 0,
            "to": self.exchange,
            "data": ex.encode_cancel_up_to(salt),
        }
        return "0x" + party.signer.sign(tx).hex()

    async def head(self) -> int:
        return from_quantity(await self.rpc.call("eth_blockNumber"))

    async def synced(self, run: Running, seconds: float = 30.0) -> None:
        """Until the watcher has reported the node's current head block (number and hash)."""
        latest = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        await run.caught_up(from_quantity(latest["number"]), seconds, block_hash=bytes.fromhex(latest["hash"][2:]))

    def watcher(self, url: str, cursor: ChainCursor | None = None, **options: Any) -> Watcher:
        options.setdefault("confirmations", 4)
        options.setdefault("log_range_blocks", 4)
        options.setdefault("backoff_max_s", 0.5)
        options.setdefault("backoff_min_s", 0.05)
        options.setdefault("request_timeout_s", 10)
        return Watcher([url], self.exchange, cursor, start_block=self.world.deployment.block, **options)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with (
        start_anvil(log_path=tmp_path / "anvil.log", state_path=tmp_path / "state.json") as node,
        HttpRpc(node.http_url, timeout=30) as rpc,
    ):
        with trio.fail_after(30):
            world = await World.create(rpc, AnvilControl(rpc), node.chain_id)
            trader = await world.trader("watched")
        yield Setup(node, rpc, world, trader)


async def scan(rpc: JsonRpc, exchange: str, start: int) -> dict[tuple[bytes, bytes, int], Any]:
    """A fresh eth_getLogs scan of the contract: key -> decoded event."""
    raw = await rpc.call("eth_getLogs", [{"address": exchange, "fromBlock": to_quantity(start), "toBlock": "latest"}])
    out = {}
    for r in raw:
        key = (bytes.fromhex(r["blockHash"][2:]), bytes.fromhex(r["transactionHash"][2:]), from_quantity(r["logIndex"]))
        decoded = ex.decode_event(r)
        out[key] = decoded.event if decoded is not None else None
    return out


async def assert_view_is_chain(s: Setup, view: View) -> None:
    expected = await scan(s.rpc, s.exchange, s.world.deployment.block)
    assert view.logs() == expected
    for number, block_hash in view.at_height().items():
        block = await s.rpc.call("eth_getBlockByNumber", [to_quantity(number), False])
        assert block["hash"] == "0x" + block_hash.hex(), f"view holds a non-canonical block {number}"


class Proxy:
    """A TCP proxy in front of anvil that the test can cut (open connections closed, new ones refused)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blocked = False
        self.streams: list[trio.SocketStream] = []
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.blocked:
            await client.aclose()
            return
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        self.streams += [client, upstream]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            scope.cancel()

    async def cut(self) -> None:
        self.blocked = True
        streams, self.streams = self.streams, []
        for stream in streams:
            await trio.aclose_forcefully(stream)


# --------------------------------------------------------------------------------------------------------------------
# Scenarios


async def test_live_events_of_every_kind_are_delivered(setup: Setup) -> None:
    s = setup
    view = View()
    w = s.watcher(s.node.ws_url, confirmations=2)
    async with running(w, view) as run:
        await s.synced(run)
        # Deposits, a settled batch (BatchSettled + OrderFilled), cancels, an oracle price: all while live.
        maker = await s.world.trader("maker", deposit=10_000 * 10**6)
        taker = await s.world.trader("taker", deposit=10_000 * 10**6)
        settled = await s.world.match(
            s.world.order(maker, 1, ONE, created_at=100), s.world.order(taker, 0, ONE, created_at=200)
        )
        assert settled.filled, settled.skipped
        await s.cancel(3)
        await s.world.set_price(2_100 * 10**6)
        await s.synced(run)
        events = [e for e in view.logs().values()]
        kinds = {type(e).__name__ for e in events}
        assert {
            "DepositedEvent",
            "BatchSettledEvent",
            "OrderFilledEvent",
            "CancelledUpToEvent",
            "OraclePriceEvent",
        } <= (kinds)
        batch_block = view.blocks[bytes.fromhex(settled.receipt.block_hash[2:])]
        assert [type(lg.event).__name__ for lg in batch_block.logs][-1] == "BatchSettledEvent"
        # Two more blocks make the batch final.
        await s.cancel(2)
        await s.synced(run)
        assert batch_block.block.hash in view.final
        await assert_view_is_chain(s, view)
        assert w.stats.reorgs == 0 and w.stats.undecodable_logs == 0 and w.stats.unknown_logs == 0


async def test_dropped_websocket_with_reorg_and_multi_range_backfill(setup: Setup) -> None:
    s = setup
    reorger = await s.world.trader("reorger")  # funded before the blocks that get reorged
    view = View()
    async with trio.open_nursery() as nursery:
        proxy = Proxy(s.node.port)
        url = await proxy.start(nursery)
        # A refused proxy connection is a handshake that never completes: a short timeout keeps the test fast.
        w = s.watcher(url, confirmations=6, log_range_blocks=4, request_timeout_s=1)
        async with running(w, view) as run:
            await s.cancel(8)
            await s.synced(run)
            head = await s.head()
            top = {n: view.at_height().get(n) for n in range(head - 2, head + 1)}
            assert all(top.values())
            calls_before = w.stats.get_logs_calls

            # Phase A: the connection is cut; meanwhile the top 3 reported blocks are reorged away (one new event in
            # their place) and 20 more blocks with events are mined: the backfill needs several eth_getLogs ranges.
            await proxy.cut()  # from here until it is unblocked, the watcher sees nothing of the chain
            raw = await s.raw_cancel(reorger, 0, 10)
            await s.rpc.call("anvil_reorg", [3, [[raw, 1]]])
            await s.cancel(10)
            await s.world.control.mine(10)
            await s.cancel(2)
            proxy.blocked = False
            await s.synced(run)
            assert w.stats.reorgs == 1 and w.stats.retracted_blocks == 3
            assert set(top.values()) <= set(view.retracted)
            assert w.stats.get_logs_calls - calls_before >= 2 + 3  # ranges over ~24 final blocks, then the near ones
            assert w.stats.reconnects >= 1
            await assert_view_is_chain(s, view)

            # Phase B: the watcher task is stopped (a node restart); while it is down the chain is reverted into
            # its window and grows again past the old height; a new watcher starts from the cursor the consumer
            # stored.
            snapshot = await s.world.control.snapshot()
            await s.cancel(2)
            await s.synced(run)
        stored = view.cursor
        assert stored is not None and len(stored.recent) == 6
        gone = [h for n, h in stored.recent[-2:]]
        await s.world.control.revert(snapshot)  # the last 2 reported blocks are gone...
        await s.cancel(12)  # ... and the chain grows past the old height
        await s.world.control.mine(6)
        w2 = s.watcher(url, stored, confirmations=6, log_range_blocks=4)
        async with running(w2, view) as run:
            await s.synced(run)
            assert w2.stats.retracted_blocks == 2 and view.retracted[-2:] == gone[::-1]
            assert w2.stats.get_logs_calls >= 3
            await assert_view_is_chain(s, view)
        nursery.cancel_scope.cancel()


async def test_anvil_restarted_from_state_on_the_same_port(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    view = View()
    async with start_anvil(log_path=tmp_path / "a1.log", state_path=state) as node1:
        port = node1.port
        async with HttpRpc(node1.http_url, timeout=30) as rpc1:
            world = await World.create(rpc1, AnvilControl(rpc1), node1.chain_id)
            trader = await world.trader("t")
            s1 = Setup(node1, rpc1, world, trader)
            await s1.cancel(5)
            head1 = await s1.head()
            hash1 = (await rpc1.call("eth_getBlockByNumber", [to_quantity(head1), False]))["hash"]
        w = s1.watcher(f"ws://127.0.0.1:{port}", confirmations=3, backoff_max_s=0.3)
        async with running(w, view) as run:
            await run.caught_up(head1)
            # SIGTERM: anvil writes its state and exits; the watcher's connection dies and reconnects are refused.
            await node1.stop()
            async with (
                start_anvil(log_path=tmp_path / "a2.log", state_path=state, port=port) as node2,
                HttpRpc(node2.http_url, timeout=30) as rpc2,
            ):
                block = await rpc2.call("eth_getBlockByNumber", [to_quantity(head1), False])
                assert block["hash"] == hash1, "anvil --state kept the block hashes"
                s2 = Setup(node2, rpc2, world, trader, salt=s1.salt)
                await s2.cancel(3)
                await s2.synced(run)
                await assert_view_is_chain(s2, view)
                head2 = await s2.head()
            # Once more, while the watcher is live: it resumes on the restarted node without seeing any reorg.
            async with (
                start_anvil(log_path=tmp_path / "a3.log", state_path=state, port=port) as node3,
                HttpRpc(node3.http_url, timeout=30) as rpc3,
            ):
                s3 = Setup(node3, rpc3, world, trader, salt=s2.salt)
                assert await s3.head() == head2
                await s3.cancel(2)
                await s3.synced(run)
                await assert_view_is_chain(s3, view)
            assert w.stats.reorgs == 0 and w.stats.retracted_blocks == 0 and w.stats.deep_reorgs == 0
            assert w.stats.reconnects >= 2 and w.stats.connects >= 3


async def test_anvil_reorg_and_snapshot_revert_live(setup: Setup) -> None:
    s = setup
    reorger = await s.world.trader("reorger")
    view = View()
    w = s.watcher(s.node.ws_url, confirmations=5)
    async with running(w, view) as run:
        await s.cancel(6)
        await s.synced(run)
        head = await s.head()

        # anvil_reorg: the top 2 blocks replaced by 2 blocks holding two other events (at offsets 0 and 1).
        raws = [await s.raw_cancel(reorger, 0, 50), await s.raw_cancel(reorger, 1, 60)]
        await s.rpc.call("anvil_reorg", [2, [[raws[0], 0], [raws[1], 1]]])
        await run.wait_for(lambda: w.stats.retracted_blocks == 2)
        await s.synced(run)
        assert await s.head() == head  # same height, other blocks
        await assert_view_is_chain(s, view)
        salts = sorted(e.salt for e in view.logs().values() if isinstance(e, ex.CancelledUpToEvent))
        assert 50 in salts and 60 in salts
        s.salt -= 2  # the trader's last two cancels were reorged away (their nonces are free again)

        # evm_snapshot / evm_revert: 3 blocks with events, revert them, then mine past the old height.
        snapshot = await s.world.control.snapshot()
        await s.cancel(3)
        await s.synced(run)
        await s.world.control.revert(snapshot)
        await s.cancel(5)
        await s.synced(run)
        assert w.stats.reorgs == 2 and w.stats.retracted_blocks == 2 + 3
        await assert_view_is_chain(s, view)
