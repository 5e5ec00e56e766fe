"""The contract worker against a real anvil with the exchange deployed (tests/worker/conftest.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from bindings import exchange as ex
from relayer.chain.rpc import from_quantity
from relayer.chain.tx import Signer
from relayer.worker import ChainIdMismatchError, SettleJob

from .conftest import Env, make_worker, open_store, running


async def test_pipelined_jobs_land_in_seq_order_in_one_block(env: Env) -> None:
    """Ten certificates back to back: all sent before any receipt (automine off), then they land in one block in
    seq order with consecutive nonces, and each is reported included then final."""
    await env.automine(False)
    store = open_store(env)
    worker = make_worker(env, store=store)
    first_nonce = await env.nonce()
    jobs = env.chain_jobs(1, 10)
    async with running(worker) as results:
        for job in jobs:
            await worker.submit(job)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 10)
        assert worker.stats.max_in_flight == 10  # none waited for the previous receipt
        await env.control.mine()
        included = await results.collect("included", 10)
        await env.control.mine()  # confirmations = 1
        final = await results.collect("final", 10)
    assert [r.seq for r in included] == list(range(1, 11))
    assert [r.nonce for r in included] == list(range(first_nonce, first_nonce + 10))
    assert len({r.block_number for r in included}) == 1
    assert [r.seq for r in final] == list(range(1, 11))
    assert await env.last_seq() == 10
    stored = list(store.iter_txs())
    assert [(t.nonce, t.seq, t.status) for t in stored] == [(first_nonce + i, i + 1, "final") for i in range(10)]
    assert worker.stats.included == 10 and worker.stats.final == 10 and worker.stats.failed == 0
    store.close()


async def test_stale_seq_is_skipped_quietly_without_a_transaction(env: Env) -> None:
    b = env.world.batch([], [], seq=1)
    await env.world.settle(b)  # another relayer's transaction took seq 1
    worker = make_worker(env)
    nonce = await env.nonce("pending")
    async with running(worker) as results:
        await worker.submit(SettleJob.settle(b, env.world.quorum(b)))
        r = await results.next()
    assert r.outcome == "stale" and r.seq == 1 and r.tx_hash is None
    assert "already included" in (r.reason or "")
    assert worker.stats.stale == 1 and worker.stats.sent == 0 and worker.stats.failed == 0
    assert await env.nonce("pending") == nonce


async def test_seq_taken_while_in_flight_is_stale_not_an_error(env: Env) -> None:
    """Our transaction and another relayer's for the same seq in one block: theirs (higher tip) wins, ours reverts
    with BadSeq and is reported stale, with its receipt."""
    await env.automine(False)
    worker = make_worker(env)
    job, _ = env.job(1)
    other = env.world.relayers[1]
    await env.control.set_balance(other.address, 10**24)
    b = env.world.batch([], [], seq=1, round_=1)
    async with running(worker) as results:
        await worker.submit(job)
        with trio.fail_after(10):
            await worker.wait_until(lambda s: s.sent == 1)
        raw = other.signer.sign(
            {
                "type": 2,
                "chainId": env.node.chain_id,
                "nonce": from_quantity(await env.rpc.call("eth_getTransactionCount", [other.address, "pending"])),
                "to": env.world.deployment.exchange,
                "value": 0,
                "data": ex.encode_settle_batch(b, env.world.quorum(b)),
                "gas": 1_000_000,
                "maxFeePerGas": 10**12,
                "maxPriorityFeePerGas": 10**11,
            }
        )
        await env.rpc.call("eth_sendRawTransaction", ["0x" + raw.hex()])
        await env.control.mine()
        r = await results.next()
    assert r.outcome == "stale" and r.seq == 1
    assert r.tx_hash is not None and r.block_number is not None and r.gas_used
    receipt = await env.rpc.call("eth_getTransactionReceipt", [r.tx_hash])
    assert receipt["status"] == "0x0"  # ours did revert, and it is counted, not an error
    assert worker.stats.stale == 1 and worker.stats.reverted == 0 and worker.stats.failed == 0


@pytest.mark.parametrize("fault", ["prev_hash", "quorum_signature"])
async def test_preflight_revert_is_decoded_and_nothing_is_sent(env: Env, fault: str) -> None:
    if fault == "prev_hash":
        b = env.world.batch([], [], seq=1, prev=b"\x01" * 32)
        sigs = env.world.quorum(b)
        expected: type[ex.ExchangeError] = ex.BadPrevBatchHashError
    else:
        b = env.world.batch([], [], seq=1)
        sigs = env.world.quorum(b)
        sigs[1] = replace(sigs[1], v=29)  # malformed: v must be 27 or 28
        expected = ex.BadQuorumSignatureError
    worker = make_worker(env)
    nonce = await env.nonce("pending")
    async with running(worker) as results:
        await worker.submit(SettleJob.settle(b, sigs))
        r = await results.next()
    assert r.outcome == "failed" and r.seq == 1
    assert isinstance(r.error, expected), r
    assert expected.SIGNATURE.partition("(")[0] in (r.reason or "")
    if isinstance(r.error, ex.BadQuorumSignatureError):
        assert r.error.index == 1
    assert worker.stats.preflight_failed == 1 and worker.stats.sent == 0
    assert await env.nonce("pending") == nonce


async def test_chain_id_mismatch_is_refused_at_start(env: Env) -> None:
    wrong = env.node.chain_id + 1
    worker = make_worker(env, chain_id=wrong)
    worker.signer = Signer(env.signer._key, wrong)
    with trio.fail_after(10), pytest.raises(ChainIdMismatchError, match=f"chain id {env.node.chain_id}.*{wrong}"):
        await worker.start()
    # the gas key signing for another chain than the configured one is refused too
    worker = make_worker(env)
    worker.signer = Signer(env.signer._key, wrong)
    with pytest.raises(ChainIdMismatchError, match="signs for chain"):
        await worker.start()
