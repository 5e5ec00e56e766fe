"""The exchange deployed once on an anvil of the worker tests' own; each test runs on a snapshot reverted after it
(automine is switched back on, whatever the test did). Helpers run a worker in a nursery and read its results."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, AnvilProcess, start_anvil_sync
from relayer.chain.rpc import HttpRpc, JsonRpc, from_quantity
from relayer.chain.tx import Signer
from relayer.store.db import Store
from relayer.worker import Outcome, SettleJob, Worker, WorkerConfig, WorkerResult
from tests.exchange.world import World, test_key


@pytest.fixture(scope="session")
def worker_anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilProcess]:
    with start_anvil_sync(log_path=tmp_path_factory.mktemp("worker-anvil") / "anvil.log") as node:
        yield node


@pytest.fixture(scope="session")
def worker_deployed(worker_anvil: AnvilProcess) -> dict[str, object]:
    async def deploy() -> dict[str, object]:
        async with HttpRpc(worker_anvil.http_url, timeout=30) as rpc:
            control = AnvilControl(rpc)
            world = await World.create(rpc, control, worker_anvil.chain_id)
            await control.set_balance(gas_signer(worker_anvil.chain_id).address, 10**24)
            return {"deployment": world.deployment, "snapshot": await control.snapshot()}

    return trio.run(deploy)


def gas_signer(chain_id: int) -> Signer:
    """The gas-paying key of the tests: not one of the relayers' voting keys."""
    return Signer(test_key("worker gas key"), chain_id)


@dataclass
class Env:
    node: AnvilProcess
    rpc: HttpRpc
    control: AnvilControl
    world: World
    signer: Signer
    tmp_path: Path

    def config(self, **overrides: Any) -> WorkerConfig:
        values: dict[str, Any] = {
            "chain_id": self.node.chain_id,
            "exchange": self.world.deployment.exchange,
            "confirmations": 1,
            "poll_interval_ms": 20,
            "resubmit_after_ms": 5_000,
            "nonce_taken_after_ms": 300,
        }
        values.update(overrides)
        return WorkerConfig(**values)

    def job(self, seq: int, prev: bytes | None = None, **batch_args: Any) -> tuple[SettleJob, bytes]:
        """An empty certified batch for ``seq`` on top of ``prev`` (default: the world's last hash); returns the job
        and the batch's digest (the next batch's prevBatchHash)."""
        b = self.world.batch([], [], seq=seq, prev=prev, **batch_args)
        return SettleJob.settle(b, self.world.quorum(b)), self.world.batch_digest(b)

    def chain_jobs(self, first: int, count: int, prev: bytes | None = None) -> list[SettleJob]:
        jobs = []
        for seq in range(first, first + count):
            job, prev = self.job(seq, prev)
            jobs.append(job)
        return jobs

    async def nonce(self, tag: str = "latest") -> int:
        return from_quantity(await self.rpc.call("eth_getTransactionCount", [self.signer.address, tag]))

    async def last_seq(self) -> int:
        return ex.decode_last_seq_result(await self.world.view(ex.encode_last_seq()))

    async def automine(self, on: bool) -> None:
        await self.rpc.call("evm_setAutomine", [on])


@pytest.fixture
async def env(worker_anvil: AnvilProcess, worker_deployed: dict[str, object], tmp_path: Path) -> AsyncIterator[Env]:
    async with HttpRpc(worker_anvil.http_url, timeout=30) as rpc:
        control = AnvilControl(rpc)
        with trio.fail_after(30):
            world = await World.create_from(rpc, control, worker_anvil.chain_id, worker_deployed["deployment"])
        try:
            yield Env(worker_anvil, rpc, control, world, gas_signer(worker_anvil.chain_id), tmp_path)
        finally:
            with trio.fail_after(30):
                await rpc.call("evm_setAutomine", [True])
                await rpc.call("anvil_dropAllTransactions")
                await control.revert(str(worker_deployed["snapshot"]))
                worker_deployed["snapshot"] = await control.snapshot()


class Results:
    """What a running worker reported, in order."""

    def __init__(self, receive: trio.MemoryReceiveChannel[WorkerResult]) -> None:
        self._receive = receive
        self.seen: list[WorkerResult] = []

    async def next(self, outcome: Outcome | None = None, *, within: float = 10) -> WorkerResult:
        """The next result (with ``outcome``, skipping others) within ``within`` seconds."""
        with trio.fail_after(within):
            while True:
                r = await self._receive.receive()
                self.seen.append(r)
                if outcome is None or r.outcome == outcome:
                    return r

    async def collect(self, outcome: Outcome, count: int, *, within: float = 10) -> list[WorkerResult]:
        return [await self.next(outcome, within=within) for _ in range(count)]

    def drain(self) -> list[WorkerResult]:
        """Results already delivered but not yet read."""
        while True:
            try:
                self.seen.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return self.seen


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Results]:
    """Start ``worker`` (errors of start() propagate) and run it until the block ends."""
    send, receive = trio.open_memory_channel[WorkerResult](1_000)
    with trio.fail_after(10):
        await worker.start()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run, send)
        yield Results(receive)
        nursery.cancel_scope.cancel()


def open_store(env: Env, name: str = "store") -> Store:
    return Store.open(env.tmp_path / name)


def make_worker(env: Env, rpc: JsonRpc | None = None, store: Store | None = None, **overrides: Any) -> Worker:
    return Worker(
        rpc or env.rpc,
        env.signer,
        store.worker() if store is not None else None,
        store,
        env.config(**overrides),
    )
