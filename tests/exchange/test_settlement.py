"""settleBatch against a real chain: the happy path, then every rule valid and invalid."""

from __future__ import annotations

from bindings import exchange as ex

from .world import ONE, PRICE, World


async def test_a_plain_match_settles_and_moves_quote_value(world: World) -> None:
    alice = await world.trader("alice", deposit=10_000 * 10**6)
    bob = await world.trader("bob", deposit=10_000 * 10**6)
    maker = world.order(alice, side=0, amount=2 * ONE, created_at=100)
    taker = world.order(bob, side=1, amount=ONE, created_at=200)
    settled = await world.match(maker, taker)
    assert settled.skipped == []
    (fill,) = settled.filled
    assert (fill.maker, fill.taker, fill.amount, fill.price) == (alice.address, bob.address, ONE, PRICE)
    assert await world.filled(maker) == ONE and await world.filled(taker) == ONE
    pa, pb = await world.position(alice), await world.position(bob)
    assert (pa.size, pb.size) == (ONE, -ONE)
    assert (pa.cost, pb.cost) == (ONE * PRICE, -ONE * PRICE)
    maker_fee = -(-1 * PRICE * 200 // 10**6)  # 1 unit at 2000e6 with 2 bps, rounded up
    taker_fee = -(-1 * PRICE * 500 // 10**6)
    assert (fill.maker_fee, fill.taker_fee) == (maker_fee, taker_fee)
    a, b = await world.account(alice), await world.account(bob)
    assert a.balance == (10_000 * 10**6 - maker_fee) * ONE - ONE * PRICE
    assert b.balance == (10_000 * 10**6 - taker_fee) * ONE + ONE * PRICE
    assert world.seq == 1
    assert isinstance(settled.of(ex.BatchSettledEvent)[0], ex.BatchSettledEvent)
