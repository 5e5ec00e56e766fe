"""Throughput of the contract worker on anvil automine: K certified batches of 100 fills, submitted back to back.

Not a test (pytest does not collect it); run ``.venv/bin/python -m tests.worker.bench_throughput [K]``. The clock
runs from the first submit to the K-th ``included`` result; signing the batches is not counted. The takers already
hold positions (the contract's common case, ~58k gas per fill).
"""

from __future__ import annotations

import sys
import tempfile
import time

import trio

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, start_anvil
from relayer.chain.rpc import HttpRpc
from relayer.chain.tx import Signer
from relayer.store.db import Store
from relayer.worker import SettleJob, Worker, WorkerConfig, WorkerResult
from tests.exchange.world import ONE, World, test_key

FILLS = 100
DEPOSIT = 10**13


async def _bench(batches: int) -> None:
    async with start_anvil() as node, HttpRpc(node.http_url, timeout=60) as rpc:
        control = AnvilControl(rpc)
        world = await World.create(rpc, control, node.chain_id)
        maker = await world.trader("maker", deposit=DEPOSIT * 100)
        takers = [await world.trader(f"taker-{i}", deposit=DEPOSIT) for i in range(FILLS)]
        fills = [(0, i, ONE) for i in range(1, FILLS + 1)]

        def orders(created_at: int) -> list[ex.SignedOrder]:
            resting = world.order(maker, side=1, amount=FILLS * ONE, created_at=created_at)
            return [world.sign_order(resting)] + [
                world.sign_order(world.order(t, side=0, amount=ONE, created_at=created_at + 10)) for t in takers
            ]

        await world.settle(world.batch(orders(10), fills), gas=25_000_000)  # the takers now hold positions
        jobs, prev = [], world.last_hash
        for k in range(batches):
            b = world.batch(orders(100), fills, seq=world.seq + 1 + k, prev=prev)
            prev = world.batch_digest(b)
            jobs.append(SettleJob.settle(b, world.quorum(b)))
        gas = Signer(test_key("bench gas"), node.chain_id)
        await control.set_balance(gas.address, 10**26)
        with tempfile.TemporaryDirectory() as tmp, Store.open(tmp) as store:
            config = WorkerConfig(chain_id=node.chain_id, exchange=world.deployment.exchange, confirmations=0)
            worker = Worker(rpc, gas, store.worker(), store, config)
            send, receive = trio.open_memory_channel[WorkerResult](10_000)
            await worker.start()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.run, send)
                start = time.perf_counter()
                for job in jobs:
                    await worker.submit(job)
                included = 0
                while included < batches:
                    result = await receive.receive()
                    if result.outcome == "included":
                        included += 1
                    elif result.outcome != "final":
                        raise RuntimeError(f"unexpected result {result}")
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
        print(
            f"{batches} batches x {FILLS} fills included in {elapsed:.2f} s: {batches * FILLS / elapsed:.0f} fills/s, "
            f"{batches / elapsed:.1f} batches/s; gas per batch {worker.stats.gas_used // batches}, "
            f"most in flight {worker.stats.max_in_flight}"
        )


if __name__ == "__main__":
    trio.run(_bench, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
