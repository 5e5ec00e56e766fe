"""Stuck transactions, nonce conflicts and gaps, restarts and RPC failover."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
from eth_utils.crypto import keccak

from bindings import exchange as ex
from relayer.chain.errors import RpcConnectionError, RpcResponseError
from relayer.chain.rpc import FailoverRpc, from_quantity
from relayer.chain.tx import Signer
from relayer.store.records import TxRecord
from relayer.types import Hash32
from relayer.worker import SettleJob
from relayer.worker.fees import Fees
from tests.exchange import world as world_mod

from .conftest import Env, make_worker, open_store, running


def _signed(env: Env, job: SettleJob, nonce: int, *, gas: int = 500_000, tip: int = 10**9) -> TxRecord:
    """The record a worker would have written for ``job`` at ``nonce`` (signed, never broadcast)."""
    fees = Fees(10**11, tip)
    raw = env.signer.sign(
        {
            "type": 2,
            "chainId": env.node.chain_id,
            "nonce": nonce,
            "to": env.world.deployment.exchange,
            "value": 0,
            "data": job.calldata,
            "gas": gas,
            "maxFeePerGas": fees.max_fee,
            "maxPriorityFeePerGas": fees.tip,
        }
    )
    return TxRecord(nonce, Hash32(keccak(raw)), raw, job.seq, "sent")


async def _self_transfer(env: Env, nonce: int) -> str:
    """Another process using the same gas key: a plain transfer at ``nonce``."""
    raw = env.signer.sign(
        {
            "type": 2,
            "chainId": env.node.chain_id,
            "nonce": nonce,
            "to": env.signer.address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10**11,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    return str(await env.rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()]))


async def test_stuck_transaction_is_replaced_and_the_replacement_lands(env: Env) -> None:
    await env.automine(False)
    worker = make_worker(env, resubmit_after_ms=300, max_fee_bumps=1)
    job, _ = env.job(1)
    async with running(worker) as results:
        await worker.submit(job)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
        ((nonce, original),) = worker.in_flight().items()
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.replaced == 1)
        replacement = worker.in_flight()[nonce]
        assert replacement != original
        assert await env.rpc.call("eth_getTransactionByHash", [original]) is None  # the node swapped them
        tx = await env.rpc.call("eth_getTransactionByHash", [replacement])
        assert from_quantity(tx["maxPriorityFeePerGas"]) >= 10**9 * 11 // 10
        await env.control.mine()
        included = await results.next("included")
        await env.control.mine()
        await results.next("final")
    assert included.tx_hash == replacement and included.nonce == nonce and included.seq == 1
    assert await env.rpc.call("eth_getTransactionReceipt", [original]) is None
    assert [r.outcome for r in results.drain() if r.outcome in ("included", "final")] == ["included", "final"]
    assert worker.stats.included == 1 and worker.stats.replaced == 1


async def test_nonce_used_by_another_sender_is_recovered(env: Env) -> None:
    """The same key sends something else at the worker's next nonce: the worker notices and re-sends."""
    worker = make_worker(env)
    job, _ = env.job(1)
    async with running(worker) as results:
        nonce = worker.next_nonce
        await _self_transfer(env, nonce)  # automine: mined at once
        await worker.submit(job)
        r = await results.next("included")
    assert r.seq == 1 and r.nonce == nonce + 1
    assert worker.stats.nonce_conflicts == 1 and worker.stats.requeued == 1
    assert await env.last_seq() == 1


async def test_stored_nonce_taken_while_down_is_recovered(env: Env) -> None:
    """The store holds a transaction at nonce n that never left (crash after the synced write); meanwhile another
    sender used n. At start the worker sees n used without its receipt and sends seq 1 again."""
    nonce = await env.nonce()
    job, _ = env.job(1)
    store = open_store(env)
    store.worker().record_tx(_signed(env, job, nonce))
    store.close()
    await _self_transfer(env, nonce)
    store = open_store(env)
    worker = make_worker(env, store=store)
    async with running(worker) as results:
        r = await results.next("included")
    assert r.seq == 1 and r.nonce == nonce + 1
    assert worker.stats.recovered == 1 and worker.stats.nonce_conflicts == 1
    statuses = {t.nonce: (t.seq, t.status) for t in store.iter_txs()}
    assert statuses[nonce] == (1, "lost") and statuses[nonce + 1] == (1, "included")
    store.close()


async def test_stored_nonce_ahead_of_the_chain_is_reused(env: Env) -> None:
    """The store holds seq 1 at nonce n+2 but the chain is at n with nothing pending (a gap nobody fills): the job
    is sent again at n, and the next job follows at n+1."""
    nonce = await env.nonce()
    first, second = env.chain_jobs(1, 2)
    store = open_store(env)
    store.worker().record_tx(_signed(env, first, nonce + 2))
    store.close()
    store = open_store(env)
    worker = make_worker(env, store=store)
    async with running(worker) as results:
        assert worker.next_nonce == nonce
        await worker.submit(second)
        r1, r2 = await results.collect("included", 2)
    assert (r1.seq, r1.nonce) == (1, nonce) and (r2.seq, r2.nonce) == (2, nonce + 1)
    assert await env.last_seq() == 2
    store.close()


async def test_persisted_transaction_and_nonce_survive_a_restart(env: Env) -> None:
    """A worker sends seq 1 and stops before it is mined; the node forgets the transaction. A new worker on the same
    store re-broadcasts the stored transaction (same hash) and gives seq 2 the next nonce."""
    await env.automine(False)
    nonce = await env.nonce()
    first, second = env.chain_jobs(1, 2)
    store = open_store(env)
    worker = make_worker(env, store=store)
    async with running(worker):
        await worker.submit(first)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
    ((_, sent_hash),) = worker.in_flight().items()
    store.close()
    await env.rpc.call("anvil_dropAllTransactions")
    assert await env.nonce("pending") == nonce  # the chain alone no longer knows nonce n is taken

    store = open_store(env)
    worker = make_worker(env, store=store)
    async with running(worker) as results:
        assert worker.next_nonce == nonce + 1 and worker.stats.recovered == 1
        await worker.submit(second)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1 and s.resent >= 1)
        await env.control.mine()
        r1, r2 = await results.collect("included", 2)
    assert (r1.seq, r1.nonce, r1.tx_hash) == (1, nonce, sent_hash)
    assert (r2.seq, r2.nonce) == (2, nonce + 1)
    store.close()


class Proxy:
    """A TCP proxy to anvil that can be killed (listener and open connections)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self.scope = trio.CancelScope()
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
                self.port = listeners[0].socket.getsockname()[1]
                task_status.started()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, upstream, trio.open_nursery() as nursery:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                try:
                    while data := await src.receive_some(65536):
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


@asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        yield proxy
        proxy.scope.cancel()


async def test_failover_to_the_second_rpc_when_the_first_dies(env: Env) -> None:
    first, second = env.chain_jobs(1, 2)
    async with (
        proxy_to(env.node.port) as proxy,
        FailoverRpc([f"http://127.0.0.1:{proxy.port}", env.node.http_url], timeout=2, backoff_base=0.2) as rpc,
    ):
        worker = make_worker(env, rpc=rpc)
        async with running(worker) as results:
            await worker.submit(first)
            assert (await results.next("included")).seq == 1
            assert proxy.connections >= 1 and rpc.endpoints[0].failures == 0
            proxy.scope.cancel()  # the first endpoint dies: listener and connections closed
            await worker.submit(second)
            r = await results.next("included")
        assert r.seq == 2
        assert rpc.endpoints[0].failures >= 1 and rpc.endpoints[1].failures == 0
    assert await env.last_seq() == 2


async def test_dropped_transaction_is_sent_again(env: Env) -> None:
    await env.automine(False)
    worker = make_worker(env, resubmit_after_ms=300)
    job, _ = env.job(1)
    async with running(worker) as results:
        await worker.submit(job)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
        ((nonce, tx_hash),) = worker.in_flight().items()
        await env.rpc.call("anvil_dropTransaction", [tx_hash])
        assert await env.rpc.call("eth_getTransactionByHash", [tx_hash]) is None
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.resent == 1)
        assert await env.rpc.call("eth_getTransactionByHash", [tx_hash]) is not None
        await env.control.mine()
        r = await results.next("included")
    assert (r.seq, r.nonce, r.tx_hash) == (1, nonce, tx_hash)
    assert worker.stats.replaced == 0


async def test_stuck_after_the_last_bump_is_reported_once_and_still_lands(env: Env) -> None:
    await env.automine(False)
    worker = make_worker(env, resubmit_after_ms=300, max_fee_bumps=0)
    job, _ = env.job(1)
    async with running(worker) as results:
        await worker.submit(job)
        stuck = await results.next()
        assert stuck.outcome == "stuck" and stuck.seq == 1 and "0 fee bumps" in (stuck.reason or "")
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
        await env.control.mine()
        included = await results.next()
    assert included.outcome == "included" and included.tx_hash == stuck.tx_hash
    assert worker.stats.stuck == 1 and worker.stats.replaced == 0


async def test_mined_revert_is_decoded(env: Env) -> None:
    """The deadline passes between the pre-flight and the block: the transaction reverts, and the worker reports
    DeadlinePassed, decoded by replaying the call in the transaction's block."""
    await env.automine(False)
    now = await env.world.now()
    job, _ = env.job(1, deadline=now + 100)
    worker = make_worker(env)
    async with running(worker) as results:
        await worker.submit(job)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
        await env.control.set_next_block_timestamp(now + 1_000)
        await env.control.mine()
        r = await results.next()
    assert r.outcome == "reverted" and r.seq == 1 and r.tx_hash and r.gas_used
    assert isinstance(r.error, ex.DeadlinePassedError) and r.error.deadline == now + 100
    assert (r.reason or "").startswith("DeadlinePassed(")
    assert worker.stats.reverted == 1 and worker.stats.stale == 0


async def test_refused_transaction_gives_its_nonce_to_the_next_job(env: Env) -> None:
    """The node refuses the transaction (the gas key has no funds): reported failed, and the nonce is not burnt."""
    nonce = await env.nonce()
    first, second = env.chain_jobs(1, 2)
    worker = make_worker(env)
    async with running(worker) as results:
        await env.control.set_balance(env.signer.address, 0)
        await worker.submit(first)
        r = await results.next()
        assert r.outcome == "failed" and r.seq == 1 and "refused" in (r.reason or "")
        assert worker.next_nonce == nonce
        await env.control.set_balance(env.signer.address, 10**24)
        # seq 1 failed, so the quorum would hand it over again (a new certificate); here: the same job
        await worker.submit(first)
        await worker.submit(second)
        r1, r2 = await results.collect("included", 2)
    assert (r1.seq, r1.nonce) == (1, nonce) and (r2.seq, r2.nonce) == (2, nonce + 1)


class LowGasRpc:
    """The real node, except that the single-run estimators (``eth_simulateV1``, ``eth_createAccessList``)
    under-report the gas (a node bug, or refunds)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        self.calls.append(method)
        result = await self.inner.call(method, params)
        if method == "eth_createAccessList":
            result = dict(result, gasUsed=hex(from_quantity(result["gasUsed"]) // 2))
        if method == "eth_simulateV1":
            call = result[0]["calls"][0]
            call["gasUsed"] = hex(from_quantity(call["gasUsed"]) // 2)
        return result


async def test_out_of_gas_switches_to_exact_estimates_and_resends(env: Env) -> None:
    rpc = LowGasRpc(env.rpc)
    worker = make_worker(env, rpc=rpc, gas_margin_bps=0)
    first, second = env.chain_jobs(1, 2)
    async with running(worker) as results:
        await worker.submit(first)
        r1 = await results.next("included")
        await worker.submit(second)
        r2 = await results.next("included")
    assert (r1.seq, r2.seq) == (1, 2) and r2.nonce == r1.nonce + 1  # type: ignore[operator]
    assert worker.stats.requeued == 1 and worker.stats.reverted == 0
    assert rpc.calls.count("eth_simulateV1") == 1  # not used again after the out-of-gas
    assert rpc.calls.count("eth_createAccessList") == 0
    assert rpc.calls.count("eth_estimateGas") == 2
    # the first attempt of seq 1 is on chain, reverted for want of gas, one nonce below the resent one
    block = await env.rpc.call("eth_getBlockByNumber", [hex(r1.block_number - 1), True])  # type: ignore[operator]
    (failed,) = [t for t in block["transactions"] if from_quantity(t["nonce"]) == r1.nonce - 1]  # type: ignore[operator]
    receipt = await env.rpc.call("eth_getTransactionReceipt", [failed["hash"]])
    assert receipt["status"] == "0x0" and receipt["gasUsed"] == failed["gas"]


async def test_gas_estimate_above_the_cap_is_refused(env: Env) -> None:
    worker = make_worker(env, gas_limit_cap=50_000)
    nonce = await env.nonce("pending")
    job, _ = env.job(1)
    async with running(worker) as results:
        await worker.submit(job)
        r = await results.next()
    assert r.outcome == "failed" and "above the cap 50000" in (r.reason or "")
    assert await env.nonce("pending") == nonce and worker.stats.sent == 0


async def test_new_certificate_for_a_pending_seq_replaces_it_at_the_same_nonce(env: Env) -> None:
    """Round 0's transaction is pending when the quorum hands over round 1's certificate for the same seq: the
    worker replaces the pending transaction (same nonce, bumped fees) instead of queueing behind it."""
    await env.automine(False)
    worker = make_worker(env)
    round0, _ = env.job(1)
    round1, _ = env.job(1, round_=1)
    async with running(worker) as results:
        await worker.submit(round0)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
        await worker.submit(round0)  # the same certificate again: a duplicate
        assert worker.stats.duplicates == 1
        ((nonce, first),) = worker.in_flight().items()
        await worker.submit(round1)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.replaced == 1)
        assert worker.stats.superseded == 1 and worker.stats.sent == 1
        await env.control.mine()
        r = await results.next("included")
    assert r.nonce == nonce and r.tx_hash != first
    tx = await env.rpc.call("eth_getTransactionByHash", [r.tx_hash])
    assert bytes.fromhex(tx["input"][2:]) == round1.calldata
    receipt = await env.rpc.call("eth_getTransactionReceipt", [r.tx_hash])
    settled = [d.event for d in map(ex.decode_event, receipt["logs"]) if d is not None]
    assert [e.round for e in settled if isinstance(e, ex.BatchSettledEvent)] == [1]


class FlakyRpc:
    """The real node behind a link that fails chosen calls: ``before`` (the request never arrives) or ``after``
    (the node did it, the answer is lost)."""

    def __init__(self, inner: Any, failures: dict[str, tuple[int, str]]) -> None:
        self.inner = inner
        self.failures = dict(failures)

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        count, when = self.failures.get(method, (0, ""))
        if count and when == "before":
            self.failures[method] = (count - 1, when)
            raise RpcConnectionError(f"{method}: connection reset (test)", endpoint="http://127.0.0.1:1")
        result = await self.inner.call(method, params)
        if count and when == "after":
            self.failures[method] = (count - 1, when)
            raise RpcConnectionError(f"{method}: connection reset (test)", endpoint="http://127.0.0.1:1")
        return result


async def test_lost_answers_are_retried_without_losing_or_doubling_anything(env: Env) -> None:
    """A pre-flight whose request is lost is retried; a raw transaction the node took but whose answer was lost is
    sent again (the node answers "already known"), and the batch lands once, at the first nonce."""
    await env.automine(False)
    rpc = FlakyRpc(env.rpc, {"eth_call": (1, "before"), "eth_sendRawTransaction": (1, "after")})
    nonce = await env.nonce()
    worker = make_worker(env, rpc=rpc, rpc_retry_ms=10)
    job, _ = env.job(1)
    async with running(worker) as results:
        await worker.submit(job)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.resent == 1)
        await env.control.mine()
        r = await results.next("included")
        await env.control.mine()
        await results.next("final")
    assert (r.seq, r.nonce) == (1, nonce)
    assert worker.stats.rpc_errors == 2 and worker.stats.sent == 1 and worker.stats.resent == 1
    assert await env.nonce() == nonce + 1 and await env.last_seq() == 1


async def test_stored_transactions_of_another_gas_key_are_ignored(env: Env) -> None:
    nonce = await env.nonce()
    job, _ = env.job(1)
    other = Signer(world_mod.test_key("another gas key"), env.node.chain_id)
    raw = other.sign(
        {
            "type": 2,
            "chainId": env.node.chain_id,
            "nonce": nonce,
            "to": env.world.deployment.exchange,
            "value": 0,
            "data": job.calldata,
            "gas": 500_000,
            "maxFeePerGas": 10**11,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    store = open_store(env)
    store.worker().record_tx(TxRecord(nonce, Hash32(keccak(raw)), raw, 1, "sent"))
    store.close()
    store = open_store(env)
    worker = make_worker(env, store=store)
    async with running(worker) as results:
        assert worker.stats.recovered == 0 and worker.in_flight() == {}
        await worker.submit(job)
        r = await results.next("included")
    assert (r.seq, r.nonce) == (1, nonce)
    store.close()


class NoSimulateRpc(LowGasRpc):
    """The real node without ``eth_simulateV1`` (older nodes): the worker falls back to ``eth_createAccessList``."""

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        if method == "eth_simulateV1":
            self.calls.append(method)
            raise RpcResponseError(-32601, "the method eth_simulateV1 does not exist/is not available", method=method)
        return await self.inner.call(method, params)


async def test_without_simulate_the_access_list_estimates_gas(env: Env) -> None:
    rpc = NoSimulateRpc(env.rpc)
    worker = make_worker(env, rpc=rpc)
    first, second = env.chain_jobs(1, 2)
    async with running(worker) as results:
        await worker.submit(first)
        await worker.submit(second)
        r1 = await results.next("included")
        r2 = await results.next("included")
    assert (r1.seq, r2.seq) == (1, 2)
    assert rpc.calls.count("eth_simulateV1") == 1  # asked once, then never again
