"""The processor against the real contract: drive an exchange on anvil (deposits, batches with fills and skips,
cancels, cancelUpTo, oracle moves, funding, a withdrawal, a liquidation, a reorg made with evm_snapshot/evm_revert),
fetch the logs with eth_getLogs, decode them with the bindings, feed them per block as Included messages, and compare
every trader's balance, position (size, entry cost, funding index), every order's fill counter and cancel, the
cancelUpTo salts, the market and the quorum fields with the contract's own view functions."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import trio

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, start_anvil
from relayer.chain.rpc import HttpRpc, JsonRpc, from_quantity
from relayer.chain.tx import send
from relayer.chainstate import ChainModel
from relayer.processor import BatchUpdate, Processor
from relayer.store import ChainCursor, Store
from relayer.types import Address, Hash32, Order, OrderState
from relayer.watcher.events import BlockRef, ChainLog, Finalized, Included, Retracted

from ..exchange.world import MARKET, ONE, PRICE, Party, World, to_binding

USD = 10**6


async def block_ref(rpc: JsonRpc, number: int) -> BlockRef:
    b = await rpc.call("eth_getBlockByNumber", [hex(number), False])
    return BlockRef(
        number,
        Hash32(bytes.fromhex(b["hash"][2:])),
        Hash32(bytes.fromhex(b["parentHash"][2:])),
        int(b["timestamp"], 16),
    )


async def messages(rpc: JsonRpc, exchange: str, first: int, last: int) -> list[Included]:
    """One Included per block first..last with its decoded exchange logs (eth_getLogs, bindings.decode_event)."""
    raw = await rpc.call("eth_getLogs", [{"fromBlock": hex(first), "toBlock": hex(last), "address": exchange}])
    by_block: dict[int, list[ChainLog]] = defaultdict(list)
    for entry in raw:
        decoded = ex.decode_event(entry)
        by_block[from_quantity(entry["blockNumber"])].append(
            ChainLog(
                from_quantity(entry["blockNumber"]),
                Hash32(bytes.fromhex(entry["blockHash"][2:])),
                Hash32(bytes.fromhex(entry["transactionHash"][2:])),
                from_quantity(entry["transactionIndex"]),
                from_quantity(entry["logIndex"]),
                None if decoded is None else decoded.event,
            )
        )
    out = []
    for n in range(first, last + 1):
        ref = await block_ref(rpc, n)
        logs = tuple(by_block.get(n, ()))
        assert all(lg.block_hash == ref.hash for lg in logs)
        out.append(Included(ref, logs, ChainCursor(n, ref.hash)))
    return out


async def tx(world: World, who: Party, data: bytes, what: str) -> None:
    await send(
        world.rpc, who.signer, to=world.deployment.exchange, data=data, decode_revert=ex.decode_revert, what=what
    )


async def assert_matches_contract(world: World, model: ChainModel, orders: list[Order]) -> None:
    for party in world.traders.values():
        acc = await world.account(party)
        pos = await world.position(party)
        mine = model.account(party.address)
        assert mine.balance == acc.balance, party.label
        assert mine.mask == acc.open_mask, party.label
        got = mine.position(MARKET)
        if pos.size == 0:
            assert MARKET not in mine.positions and pos.cost == 0
        else:
            assert (got.size, got.cost, got.funding_index) == (pos.size, pos.cost, pos.funding_index), party.label
        up_to = ex.decode_cancelled_up_to_result(await world.view(ex.encode_cancelled_up_to(party.address)))
        assert model.cancelled_up_to.get(Address(party.address), 0) == up_to
    for o in orders:
        st = ex.decode_get_order_state_result(await world.view(ex.encode_get_order_state(o.trader, o.salt)))
        assert model.filled.get(o.key, 0) == st.filled, o
        assert (o.key in model.cancelled) == st.cancelled, o
    market = ex.decode_get_market_result(await world.view(ex.encode_get_market(MARKET)))
    info = model.markets[MARKET]
    assert (info.params, info.oracle_price, info.funding_index) == (
        market.params,
        market.oracle_price,
        market.funding_index,
    )
    assert model.last_seq == ex.decode_last_seq_result(await world.view(ex.encode_last_seq()))
    assert model.last_batch_hash == ex.decode_last_batch_hash_result(await world.view(ex.encode_last_batch_hash()))
    assert model.active_set_version == ex.decode_active_set_version_result(
        await world.view(ex.encode_active_set_version())
    )
    relayers = ex.decode_get_relayers_result(await world.view(ex.encode_get_relayers()))
    current = model.relayer_sets[model.set_version]
    assert (current.members, current.threshold, current.version) == (
        relayers.output0,
        relayers.threshold,
        relayers.version,
    )


async def drive(world: World) -> tuple[list[Order], Any]:
    """Trade on the exchange; returns the orders used and the reorg: (Included of the block that will be reorged
    away, snapshot id) taken just before the last action."""
    alice = await world.trader("alice", deposit=1_200 * USD)
    bob = await world.trader("bob", deposit=1_000_000 * USD)
    carol = await world.trader("carol", deposit=500_000 * USD)
    kim = await world.trader("kim", deposit=1_000_000 * USD)
    orders: list[Order] = []

    def order(who: Party, side: int, amount: int, price: int = PRICE, created_at: int = 100) -> Order:
        o = world.order(who, side, amount, price, created_at=created_at)
        orders.append(o)
        return o

    # Batch 1: alice (maker) buys 10 from bob. Batch 2: carol sells 3 of 5 to bob above the oracle price.
    s1 = await world.match(order(alice, 0, 10 * ONE), order(bob, 1, 10 * ONE, created_at=200))
    assert s1.skipped == []
    carol_sell = order(carol, 1, 5 * ONE, PRICE + 10 * USD, created_at=150)
    await world.match(carol_sell, order(bob, 0, 3 * ONE, PRICE + 10 * USD, created_at=250), 3 * ONE)
    await world.oracle_send(ex.encode_update_funding(MARKET, 4_000 * 10**3), "updateFunding")
    await world.set_price(PRICE + 20 * USD)

    # Cancels: carol cancels an order on chain, bob cancels his salts below 50.
    cancelled = order(carol, 0, ONE, PRICE - 10 * USD)
    await tx(world, carol, ex.encode_cancel(to_binding(cancelled)), "cancel")
    old_bob = order(bob, 1, ONE, PRICE - 10 * USD, created_at=120)
    await tx(world, bob, ex.encode_cancel_up_to(50), "cancelUpTo")
    assert old_bob.salt < 50

    # Batch 3: carol's remaining 2 to kim (taker buys, funding settled on carol), a fill of the cancelled order
    # and one of bob's cancelled salt, both skipped.
    kim_buy = order(kim, 0, 2 * ONE, PRICE + 10 * USD, created_at=300)
    kim_sell = order(kim, 1, ONE, PRICE - 10 * USD, created_at=300)
    signed = [world.sign_order(o) for o in (carol_sell, kim_buy, cancelled, kim_sell, old_bob)]
    s3 = await world.settle(world.batch(signed, [(0, 1, 2 * ONE), (2, 3, ONE), (4, 1, ONE)]))
    assert len(s3.filled) == 1 and sorted(s3.skipped) == [5, 5]

    await tx(world, kim, ex.encode_withdraw(1_000 * USD), "withdraw")
    await world.oracle_send(ex.encode_update_funding(MARKET, -1_500 * 10**3), "updateFunding")

    # Liquidation: the price falls; kim takes 4 of alice's 10 over (AccountUpdated for both).
    await world.set_price(1_900 * USD)
    await tx(world, kim, ex.encode_liquidate(alice.address, MARKET, 4 * ONE), "liquidate")

    # A reorg: batch 4 lands, is reverted away (evm_revert), and another batch 4 takes its place.
    snap = await world.control.snapshot()
    seq, last_hash = world.seq, world.last_hash
    lost = await world.match(order(bob, 0, ONE, 1_900 * USD, created_at=400), order(carol, 1, ONE, 1_900 * USD, 500))
    lost_block = lost.receipt.block_number
    lost_msgs = await messages(world.rpc, world.deployment.exchange, lost_block, lost_block)
    await world.control.revert(snap)
    world.seq, world.last_hash = seq, last_hash
    await world.match(order(carol, 0, 2 * ONE, 1_900 * USD, created_at=400), order(bob, 1, 2 * ONE, 1_900 * USD, 500))
    return orders, lost_msgs[0]


async def test_processor_views_equal_the_contract(tmp_path: Path) -> None:
    with trio.fail_after(120):
        async with start_anvil(log_path=tmp_path / "anvil.log") as node, HttpRpc(node.http_url, timeout=30) as rpc:
            world = await World.create(rpc, AnvilControl(rpc), node.chain_id)
            first = world.deployment.block
            orders, lost = await drive(world)
            head = from_quantity(await rpc.call("eth_blockNumber", []))
            msgs = await messages(rpc, world.deployment.exchange, first, head)

            with Store.open(tmp_path / "data") as store:
                p = Processor.open(store)
                replaced = next(m for m in msgs if m.block.number == lost.block.number)
                assert replaced.block.hash != lost.block.hash
                batches: list[BatchUpdate] = []
                for m in msgs:
                    if m is replaced:  # the watcher saw the lost block first, then its retraction
                        p.apply_chain(lost)
                        parent = msgs[msgs.index(m) - 1].block
                        out = p.apply_chain(Retracted(lost.block, ChainCursor(parent.number, parent.hash)))
                        assert [(b.seq, b.state) for b in out if isinstance(b, BatchUpdate)] == [
                            (4, OrderState.REORGED)
                        ]
                    batches += [b for b in p.apply_chain(m) if isinstance(b, BatchUpdate)]
                assert [(b.seq, b.state) for b in batches] == [(s, OrderState.INCLUDED) for s in (1, 2, 3, 4)]
                assert p.counters["fill_mismatch"] == 0 and p.counters["bad_event"] == 0
                assert sum(p.counters.values()) == 0, p.counters
                await assert_matches_contract(world, p.included, orders)
                assert p.final.block is None
                # The run covered what it claims: open positions with funding settled at a non-zero index,
                # partial fills, both kinds of cancel, a liquidation (alice keeps 6 of 10).
                inc = p.included
                assert inc.account(world.traders["alice"].address).position(MARKET).size == 6 * ONE
                assert any(pos.funding_index != 0 for a in inc.accounts.values() for pos in a.positions.values())
                assert len(inc.cancelled) == 1 and inc.cancelled_up_to
                assert sorted(set(inc.filled.values())) == [2 * ONE, 3 * ONE, 5 * ONE, 10 * ONE]

                # Finality at depth 2: the final view lags, then catches up and equals the contract too.
                for m in msgs[:-2]:
                    p.apply_chain(Finalized(m.block, msgs[-1].cursor))
                assert p.final.last_seq < p.included.last_seq or p.final.block != p.included.block
                for m in msgs[-2:]:
                    p.apply_chain(Finalized(m.block, msgs[-1].cursor))
                await assert_matches_contract(world, p.final, orders)
                assert p.final.state_hash() == p.included.state_hash()
                stored = store.get_batch(4)
                assert stored is not None and stored.state is OrderState.FINAL
                h = p.state_hash()
            with Store.open(tmp_path / "data") as store:
                p2 = Processor.open(store)
                assert p2.state_hash() == h and p2.cursor == msgs[-1].cursor
                await assert_matches_contract(world, p2.included, orders)
