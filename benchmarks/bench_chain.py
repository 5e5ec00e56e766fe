"""Chain I/O on anvil (automine): event latency (transaction sent → event delivered by the watcher) and settlement
throughput through the contract worker (certified batches of 100 fills, transactions pipelined), counting only fills
the contract applied, at the state "included" (seen by the watcher in a BatchSettled event)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from eth_account import Account

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, start_anvil
from relayer.chain.rpc import FailoverRpc, HttpRpc, from_quantity
from relayer.store import Store
from relayer.types import Side
from relayer.watcher import ChainMessage, Included, Watcher
from relayer.worker import SettleJob, Worker, WorkerConfig, WorkerResult
from tests.exchange.world import World  # the test harness deploys, funds, signs orders and quorum-signs batches

BATCHES = 30
FILLS_PER_BATCH = 100
TRADERS = 40  # each batch pairs traders; every order is a fresh (trader, salt)
LATENCY_SAMPLES = 200


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _fund(world: World) -> list[Any]:
    traders = []
    for i in range(TRADERS):
        traders.append(await world.trader(f"bench-{i}", deposit=10**12))
    return traders


def _batches(world: World, traders: list[Any]) -> list[tuple[SettleJob, int]]:
    """``BATCHES`` certified batches of ``FILLS_PER_BATCH`` fills chained by prevBatchHash (built offline)."""
    jobs = []
    created = 1_000
    for _ in range(BATCHES):
        orders, fills = [], []
        for f in range(FILLS_PER_BATCH):
            seller, buyer = traders[(2 * f) % TRADERS], traders[(2 * f + 1) % TRADERS]
            maker = world.order(seller, Side.SELL, 10**6, created_at=created)
            taker = world.order(buyer, Side.BUY, 10**6, created_at=created + 1)
            orders += [world.sign_order(maker), world.sign_order(taker)]
            fills.append((2 * f, 2 * f + 1, 10**6))
        batch = world.batch(orders, fills)
        jobs.append((SettleJob.settle(batch, world.quorum(batch)), len(fills)))
        world.seq, world.last_hash = batch.seq, world.batch_digest(batch)
    return jobs


async def _settle(world: World, http_url: str, ws_url: str, store: Store) -> dict[str, float]:
    traders = await _fund(world)
    jobs = _batches(world, traders)
    head = from_quantity(await world.rpc.call("eth_blockNumber"))
    submitter = world.relayers[0]
    await world.control.set_balance(submitter.address, 10**24)
    cfg = WorkerConfig(chain_id=world.chain_id, exchange=world.deployment.exchange, max_in_flight=64)
    settled_fills = 0
    last_seq = jobs[-1][0].seq
    done = trio.Event()
    async with FailoverRpc([http_url], timeout=30) as rpc:
        worker = Worker(rpc, submitter.signer, store.worker(), store, cfg)
        await worker.start()
        watcher = Watcher(
            [ws_url],
            world.deployment.exchange,
            None,
            start_block=head,
            confirmations=2,
            log_range_blocks=500,
            backoff_max_s=2,
        )
        chain_send, chain_recv = trio.open_memory_channel[ChainMessage](1024)
        result_send, result_recv = trio.open_memory_channel[WorkerResult](1024)

        async def count() -> None:
            nonlocal settled_fills
            async for msg in chain_recv:
                if isinstance(msg, Included):
                    for entry in msg.logs:
                        if isinstance(entry.event, ex.BatchSettledEvent):
                            settled_fills += int(entry.event.filled)
                            if entry.event.seq == last_seq:
                                done.set()

        async def drain() -> None:
            async for _ in result_recv:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher.run, chain_send)
            nursery.start_soon(worker.run, result_send)
            nursery.start_soon(count)
            nursery.start_soon(drain)
            await trio.sleep(0.5)  # the watcher subscribes
            started = time.perf_counter()
            for job, _n in jobs:
                await worker.submit(job)
            with trio.fail_after(600):
                await done.wait()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return {
        "batches": len(jobs),
        "fills_per_batch": FILLS_PER_BATCH,
        "fills_applied": settled_fills,
        "settle_seconds": elapsed,
        "batches_per_s": len(jobs) / elapsed,
        "fills_per_s": settled_fills / elapsed,
        "gas_per_fill": worker.stats.gas_used / max(1, settled_fills),
    }


async def _latency(world: World, ws_url: str) -> dict[str, float]:
    """Cheap exchange transactions (cancelUpTo with rising salts), one at a time: sent → delivered as Included."""
    trader = await world.trader("latency")
    head = from_quantity(await world.rpc.call("eth_blockNumber"))
    watcher = Watcher(
        [ws_url],
        world.deployment.exchange,
        None,
        start_block=head,
        confirmations=2,
        log_range_blocks=500,
        backoff_max_s=2,
    )
    chain_send, chain_recv = trio.open_memory_channel[ChainMessage](1024)
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    base = from_quantity((await world.rpc.call("eth_getBlockByNumber", ["latest", False]))["baseFeePerGas"])
    nonce = from_quantity(await world.rpc.call("eth_getTransactionCount", [trader.address, "pending"]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run, chain_send)
        await trio.sleep(0.5)
        for i in range(LATENCY_SAMPLES):
            raw, tx_hash = world_sign(world, trader, nonce + i, ex.encode_cancel_up_to(i + 1), base)
            sent_at[tx_hash] = time.perf_counter()
            await world.rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()])
            with trio.fail_after(30):
                while True:
                    msg = await chain_recv.receive()
                    if isinstance(msg, Included) and any(e.tx_hash == tx_hash for e in msg.logs):
                        latencies.append((time.perf_counter() - sent_at[tx_hash]) * 1_000)
                        break
        nursery.cancel_scope.cancel()
    return {
        "event_latency_p50_ms": statistics.median(latencies),
        "event_latency_p99_ms": _p(latencies, 0.99),
        "event_latency_samples": len(latencies),
    }


def world_sign(world: World, trader: Any, nonce: int, data: bytes, base_fee: int) -> tuple[bytes, bytes]:
    tx = {
        "type": 2,
        "chainId": world.chain_id,
        "nonce": nonce,
        "to": world.deployment.exchange,
        "value": 0,
        "data": data,
        "gas": 100_000,
        "maxPriorityFeePerGas": 10**9,
        "maxFeePerGas": 4 * base_fee + 10**9,
    }
    signed = Account.sign_transaction(tx, trader.key)
    return bytes(signed.raw_transaction), bytes(signed.hash)


async def _main() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        async with start_anvil(log_path=Path(tmp) / "anvil.log") as node, HttpRpc(node.http_url, timeout=60) as rpc:
            world = await World.create(rpc, AnvilControl(rpc), node.chain_id)
            with Store.open(Path(tmp) / "store") as store:
                throughput = await _settle(world, node.http_url, node.ws_url, store)
            latency = await _latency(world, node.ws_url)
    return {**latency, **throughput}


def run() -> dict[str, float]:
    return trio.run(_main)
