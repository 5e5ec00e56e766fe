"""Every order semantic of the matcher, with its edge cases (docs/matcher.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relayer.margin import SIZE_ONE
from relayer.matcher import (
    BATCH_BASE_GAS,
    FILL_GAS,
    Cancel,
    CancelUpTo,
    Limits,
    OracleUpdate,
    Retire,
    SkippedOrder,
    SkipReason,
    StpMode,
    market_order_price,
)
from relayer.matcher.book import Book
from relayer.matcher.workload import IOC_WINDOW, default_market, sign
from relayer.types import OrderFlag, Salt, Side, TriggerKind
from tests.matcher.helpers import LIMITS, NOW, RICH, A, B, C, P, T, book_of, build, chain, fills, order

BUY, SELL = Side.BUY, Side.SELL


def skipped(batch: object) -> list[tuple[bytes, SkipReason]]:
    return [(s.hash, s.reason) for s in batch.skipped]  # type: ignore[attr-defined]


# --- price, priority, maker ----------------------------------------------------------------------------------------


def test_exact_cross_fills_in_full_at_makers_price() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    batch = build(book_of(ask, bid), chain())
    assert fills(batch) == [(ask.hash, bid.hash, 10)]
    post = batch.post_state
    assert post.account(A).position(0).size == -10
    assert post.account(B).position(0).size == 10


def test_no_cross_no_fill() -> None:
    batch = build(book_of(order(A, SELL, P + T, 10), order(B, BUY, P, 10)), chain())
    assert batch.fills == () and batch.skipped == ()


def test_maker_is_earlier_order_and_sets_the_price() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    bid = order(B, BUY, P + 5 * T, 10, created=NOW - 10)  # crosses deep, but is later: pays the ask's price
    batch = build(book_of(bid, ask), chain())
    assert fills(batch) == [(ask.hash, bid.hash, 10)]
    b0 = chain().account(B).balance
    fee = -(-10 * P * 500 // (SIZE_ONE * 10**6))
    assert batch.post_state.account(B).balance == b0 - 10 * P - fee * SIZE_ONE
    # reversed times: the bid is the maker and the fill is at the bid's price
    ask2 = order(A, SELL, P, 10, created=NOW - 10)
    bid2 = order(B, BUY, P + 5 * T, 10, created=NOW - 50)
    assert fills(build(book_of(ask2, bid2), chain())) == [(bid2.hash, ask2.hash, 10)]


def test_equal_created_at_tie_breaks_on_hash() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 5)
    bid = order(B, BUY, P, 10, created=NOW - 5)
    maker, taker = (ask, bid) if ask.hash < bid.hash else (bid, ask)
    assert fills(build(book_of(ask, bid), chain())) == [(maker.hash, taker.hash, 10)]


def test_sweep_in_price_then_time_priority() -> None:
    a1 = order(A, SELL, P + T, 10, created=NOW - 90)
    a2 = order(C, SELL, P, 10, created=NOW - 80)  # better price
    a3 = order(A, SELL, P, 10, created=NOW - 85)  # same price, earlier
    bid = order(B, BUY, P + 2 * T, 25, created=NOW - 1)
    batch = build(book_of(a1, a2, a3, bid), chain())
    assert fills(batch) == [(a3.hash, bid.hash, 10), (a2.hash, bid.hash, 10), (a1.hash, bid.hash, 5)]


def test_partial_fill_and_dust_remainder_rest_then_fill() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    bid = order(B, BUY, P, 7, created=NOW - 10)
    book = book_of(ask, bid)
    batch = build(book, chain())
    assert fills(batch) == [(ask.hash, bid.hash, 7)]
    state = batch.post_state
    assert state.filled[ask.order.key] == 7 and state.filled[bid.order.key] == 7
    book.apply(Retire(batch))
    dust = order(C, BUY, P, 1, created=NOW - 5)
    book.add(dust)
    batch2 = build(book, state)
    assert fills(batch2) == [(ask.hash, dust.hash, 1)]
    assert SkippedOrder(bid.hash, SkipReason.OVERFILL) in batch2.dead  # the filled bid is dead, swept on retire
    book.apply(Retire(batch2))
    assert bid.hash not in book.orders and ask.hash in book.orders
    state = batch2.post_state
    assert state.filled[ask.order.key] == 8  # 2 atoms of dust rest: filled + remaining == amount


def test_market_order_is_a_limit_at_the_worst_price() -> None:
    params = default_market(P)
    a1 = order(A, SELL, P, 5, created=NOW - 50)
    a2 = order(C, SELL, P + 9 * T, 5, created=NOW - 40)
    buy = order(B, BUY, market_order_price(BUY, params), 10, created=NOW - 1)
    assert fills(build(book_of(a1, a2, buy), chain())) == [(a1.hash, buy.hash, 5), (a2.hash, buy.hash, 5)]
    assert market_order_price(SELL, params) == params.tick


# --- expiry, IOC ---------------------------------------------------------------------------------------------------


def test_expiry_exactly_at_deadline_is_expired() -> None:
    deadline = NOW + LIMITS.deadline_delta
    ask = order(A, SELL, P, 10, expiry=deadline)
    bid = order(B, BUY, P, 10)
    batch = build(book_of(ask, bid), chain())
    assert batch.fills == () and batch.dead == (SkippedOrder(ask.hash, SkipReason.EXPIRED),)
    ask2 = order(A, SELL, P, 10, expiry=deadline + 1)
    assert len(build(book_of(ask2, bid), chain()).fills) == 1


def test_expired_order_is_swept_on_retire() -> None:
    ask = order(A, SELL, P, 10, expiry=NOW)
    book = book_of(ask, order(B, BUY, P, 10))
    book.apply(Retire(build(book, chain())))
    assert ask.hash not in book.orders
    assert book.add(ask)[0].reason == "superseded"  # re-gossip of a retired order is refused


def test_ioc_is_a_short_gtt_and_needs_the_window() -> None:
    created = NOW - 5
    ioc = order(B, BUY, P, 10, created=created, expiry=created + IOC_WINDOW, flags=OrderFlag.IOC)
    ask = order(A, SELL, P, 10, created=NOW - 50)
    assert len(build(book_of(ask, ioc), chain()).fills) == 1
    late = NOW + IOC_WINDOW  # head time after the window: dead
    assert build(book_of(ask, ioc), chain(), now=late).dead[0].reason == SkipReason.EXPIRED
    bad = order(B, BUY, P, 10, created=created, expiry=created + IOC_WINDOW + 1, flags=OrderFlag.IOC)
    assert Book(IOC_WINDOW).add(bad)[0].reason == "ioc_window"


# --- FOK -----------------------------------------------------------------------------------------------------------


def test_fok_that_would_partially_fill_is_set_aside() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    fok = order(B, BUY, P, 20, created=NOW - 10, flags=OrderFlag.FOK)
    batch = build(book_of(ask, fok), chain())
    assert batch.fills == () and skipped(batch) == [(fok.hash, SkipReason.FOK)]


def test_fok_never_fills_over_two_fills() -> None:
    a1 = order(A, SELL, P, 10, created=NOW - 50)
    a2 = order(C, SELL, P, 10, created=NOW - 40)
    fok = order(B, BUY, P, 20, created=NOW - 10, flags=OrderFlag.FOK)
    assert build(book_of(a1, a2, fok), chain()).fills == ()


def test_fok_fills_in_one_fill_against_a_larger_order() -> None:
    ask = order(A, SELL, P, 30, created=NOW - 50)
    fok = order(B, BUY, P, 20, created=NOW - 10, flags=OrderFlag.FOK)
    assert fills(build(book_of(ask, fok), chain())) == [(ask.hash, fok.hash, 20)]


def test_fok_with_a_fill_on_chain_is_dead() -> None:
    ask = order(A, SELL, P, 30, created=NOW - 50)
    fok = order(B, BUY, P, 20, created=NOW - 10, flags=OrderFlag.FOK)
    batch = build(book_of(ask, fok), chain(filled={fok.order.key: 1}))
    assert batch.fills == () and batch.dead == (SkippedOrder(fok.hash, SkipReason.FOK),)


# --- post-only -----------------------------------------------------------------------------------------------------


def test_post_only_is_never_the_taker() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    po = order(B, BUY, P, 10, created=NOW - 10, flags=OrderFlag.POST_ONLY)
    book = book_of(ask)
    assert book.would_take(po.order)
    book.add(po)  # arrived by sync: the matcher still never makes it the taker
    batch = build(book, chain())
    assert batch.fills == () and skipped(batch) == [(po.hash, SkipReason.POST_ONLY_TAKER)]


def test_post_only_as_maker_fills() -> None:
    po = order(A, SELL, P, 10, created=NOW - 50, flags=OrderFlag.POST_ONLY)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    assert not book_of().would_take(po.order)
    assert not book_of(order(C, BUY, P - T, 1)).would_take(po.order)
    assert fills(build(book_of(po, bid), chain())) == [(po.hash, bid.hash, 10)]


# --- reduce-only ---------------------------------------------------------------------------------------------------


def test_reduce_only_is_resized_to_the_position_and_never_flips() -> None:
    ro = order(A, SELL, P, 10, created=NOW - 50, flags=OrderFlag.REDUCE_ONLY)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    batch = build(book_of(ro, bid), chain(positions={A: 4}))
    assert fills(batch) == [(ro.hash, bid.hash, 4)]
    assert batch.post_state.account(A).position(0).size == 0
    # the bid's remaining 6 would now flip A: the reduce-only order is set aside, not filled
    assert skipped(batch) == [(ro.hash, SkipReason.REDUCE_ONLY)]


def test_reduce_only_shrinks_as_the_position_shrinks_within_a_batch() -> None:
    sell = order(A, SELL, P, 3, created=NOW - 60)  # A sells 3 first (a plain order): long 5 -> 2
    ro = order(A, SELL, P, 10, created=NOW - 50, flags=OrderFlag.REDUCE_ONLY, salt=99)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    batch = build(book_of(sell, ro, bid), chain(positions={A: 5}))
    assert fills(batch) == [(sell.hash, bid.hash, 3), (ro.hash, bid.hash, 2)]


def test_reduce_only_never_opens_or_increases() -> None:
    ro_open = order(A, SELL, P, 10, created=NOW - 50, flags=OrderFlag.REDUCE_ONLY)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    batch = build(book_of(ro_open, bid), chain())  # flat: would open
    assert batch.fills == () and skipped(batch) == [(ro_open.hash, SkipReason.REDUCE_ONLY)]
    ro_buy = order(B, BUY, P, 10, created=NOW - 10, flags=OrderFlag.REDUCE_ONLY)
    ask = order(A, SELL, P, 10, created=NOW - 50)
    batch = build(book_of(ask, ro_buy), chain(positions={B: 5}))  # long: a buy would increase
    assert batch.fills == () and skipped(batch) == [(ro_buy.hash, SkipReason.REDUCE_ONLY)]


def test_reduce_only_fok_larger_than_the_position_is_set_aside() -> None:
    ro = order(A, SELL, P, 10, created=NOW - 50, flags=OrderFlag.REDUCE_ONLY | OrderFlag.FOK)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    batch = build(book_of(ro, bid), chain(positions={A: 4}))
    assert batch.fills == () and skipped(batch) == [(ro.hash, SkipReason.FOK)]


# --- self-trade prevention -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expect_fills", "expect_cancelled"),
    [
        (StpMode.CANCEL_MAKER, ["a1", "a3"], ["a2"]),
        (StpMode.CANCEL_TAKER, ["a1"], ["bid"]),
        (StpMode.CANCEL_BOTH, ["a1"], ["a2", "bid"]),
    ],
)
def test_self_trade_in_the_middle_of_a_sweep(
    mode: StpMode, expect_fills: list[str], expect_cancelled: list[str]
) -> None:
    named = {
        "a1": order(A, SELL, P, 10, created=NOW - 90),
        "a2": order(B, SELL, P + T, 10, created=NOW - 80),  # the taker's own order, mid-sweep
        "a3": order(C, SELL, P + 2 * T, 10, created=NOW - 70),
        "bid": order(B, BUY, P + 2 * T, 30, created=NOW - 1),
    }
    book = book_of(*named.values())
    batch = build(book, chain(), Limits(deadline_delta=10, stp=mode))
    bid = named["bid"].hash
    assert fills(batch) == [(named[n].hash, bid, 10) for n in expect_fills]
    assert sorted(c.hash for c in batch.cancelled) == sorted(named[n].hash for n in expect_cancelled)
    assert all(c.reason == SkipReason.SELF_TRADE for c in batch.cancelled)
    book.apply(Retire(batch))
    assert all(named[n].hash not in book.orders for n in expect_cancelled)


# --- cancels and amendments ----------------------------------------------------------------------------------------


def test_cancel_covers_every_version_and_later_ones() -> None:
    v1 = order(A, SELL, P, 10, created=NOW - 50, salt=7)
    v2 = order(A, SELL, P, 5, created=NOW - 50, salt=7)  # shrink, same createdAt
    book = book_of(v1, v2)
    assert v1.hash not in book.orders and v2.hash in book.orders
    assert [o.kind for o in book.apply(Cancel(A, Salt(7)))] == ["cancelled"]
    assert not book.orders
    v3 = order(A, SELL, P, 4, created=NOW - 40, salt=7)
    assert book.add(v3)[0].reason == "cancelled"
    assert book.add(v1)[0].reason == "superseded"


def test_cancel_up_to_cancels_lower_salts_only() -> None:
    low = [order(A, SELL, P + i * T, 1, salt=i) for i in (1, 2, 3)]
    keep = order(A, SELL, P, 1, salt=4)
    other = order(B, SELL, P, 1, salt=1)
    book = book_of(*low, keep, other)
    out = book.apply(CancelUpTo(A, Salt(4)))
    assert sorted(o.hash for o in out) == sorted(o.hash for o in low)
    assert set(book.orders) == {keep.hash, other.hash}
    assert book.add(order(A, BUY, P, 1, salt=2))[0].reason == "cancelled"
    assert book.apply(CancelUpTo(A, Salt(3))) == []  # cancel-up-to only moves up


def test_chain_cancels_make_orders_dead() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    state = replace(chain(), cancelled=frozenset({ask.order.key}))
    assert build(book_of(ask, bid), state).dead == (SkippedOrder(ask.hash, SkipReason.CANCELLED),)
    state = replace(chain(), cancelled_up_to={A: ask.order.salt + 1})
    assert build(book_of(ask, bid), state).dead == (SkippedOrder(ask.hash, SkipReason.CANCELLED),)


def test_amendment_rules() -> None:
    v1 = order(A, SELL, P, 10, created=NOW - 50, salt=5)
    book = book_of(v1)
    grow = order(A, SELL, P, 11, created=NOW - 50, salt=5)
    assert book.add(grow)[0].reason == "amend_priority"
    reprice = order(A, SELL, P + T, 5, created=NOW - 50, salt=5)
    assert book.add(reprice)[0].reason == "amend_priority"
    back = order(A, SELL, P, 5, created=NOW - 51, salt=5)
    assert book.add(back)[0].reason == "amend_backdated"
    later = order(A, SELL, P + T, 20, created=NOW - 10, salt=5)  # a new version loses its priority
    assert [o.kind for o in book.add(later)] == ["replaced", "accepted"]
    assert book.add(later)[0].reason == "duplicate"


def test_shrinking_amendment_keeps_priority() -> None:
    first = order(A, SELL, P, 10, created=NOW - 50, salt=5)
    second = order(C, SELL, P, 10, created=NOW - 40)
    bid = order(B, BUY, P, 5, created=NOW - 1)
    book = book_of(first, second, bid)
    shrunk = order(A, SELL, P, 6, created=NOW - 50, salt=5)
    book.add(shrunk)
    assert fills(build(book, chain())) == [(shrunk.hash, bid.hash, 5)]


@pytest.mark.parametrize(("new_amount", "expect"), [(5, 0), (6, 0), (8, 2)])
def test_amendment_racing_a_fill(new_amount: int, expect: int) -> None:
    """6 of 10 were filled on chain while the trader shrank the order: the counter is shared by every version."""
    v1 = order(A, SELL, P, 10, created=NOW - 50, salt=5)
    bid = order(B, BUY, P, 10, created=NOW - 1)
    book = book_of(v1, bid)
    amended = order(A, SELL, P, new_amount, created=NOW - 50, salt=5)
    book.add(amended)
    batch = build(book, chain(filled={v1.order.key: 6}))
    if expect:
        assert fills(batch) == [(amended.hash, bid.hash, expect)]
    else:
        assert batch.fills == () and SkippedOrder(amended.hash, SkipReason.OVERFILL) in batch.dead


# --- conditional orders --------------------------------------------------------------------------------------------


def test_stop_loss_enters_the_book_when_the_oracle_crosses() -> None:
    stop = order(A, SELL, P - 5 * T, 10, created=NOW - 50, trigger=(TriggerKind.STOP_LOSS, P - 3 * T))
    bid = order(B, BUY, P - 5 * T, 10, created=NOW - 10)
    book = book_of(stop, bid)
    assert stop.hash in book.parked and build(book, chain()).fills == ()
    assert book.apply(OracleUpdate(0, P - 2 * T)) == []  # not crossed yet
    assert [o.kind for o in book.apply(OracleUpdate(0, P - 3 * T))] == ["activated"]
    state = chain(market=default_market(P - 3 * T))
    assert fills(build(book, state)) == [(stop.hash, bid.hash, 10)]
    # the oracle moved back before settlement: the trigger no longer holds, so the fill is not proposed
    batch = build(book, chain(market=default_market(P)))
    assert batch.fills == () and skipped(batch) == [(stop.hash, SkipReason.TRIGGER)]


def test_take_profit_already_triggered_enters_directly() -> None:
    book = Book(IOC_WINDOW)
    book.apply(OracleUpdate(0, P))
    tp = order(A, SELL, P, 10, trigger=(TriggerKind.TAKE_PROFIT, P - T))  # sell take-profit: p >= t holds
    assert book.add(tp)[0].kind == "accepted"


# --- margin, position limit, bounds --------------------------------------------------------------------------------


def test_unfunded_best_order_is_skipped_and_the_next_fills() -> None:
    broke = order(C, SELL, P, 10, created=NOW - 90)
    good = order(A, SELL, P + T, 10, created=NOW - 80)
    bid = order(B, BUY, P + T, 10, created=NOW - 1)
    state = chain(balances={A: RICH, B: RICH, C: 0})
    batch = build(book_of(broke, good, bid), state)
    assert skipped(batch) == [(broke.hash, SkipReason.MARGIN_MAKER)]
    assert fills(batch) == [(good.hash, bid.hash, 10)]
    taker_broke = order(C, BUY, P, 10, created=NOW - 1)
    ask = order(A, SELL, P, 10, created=NOW - 50)
    batch = build(book_of(ask, taker_broke), state)
    assert skipped(batch) == [(taker_broke.hash, SkipReason.MARGIN_TAKER)]


def test_margin_is_simulated_fill_by_fill() -> None:
    # a short of one unit needs 10% of its notional plus the fee; C holds 15%: one fill passes, the second fails
    a1 = order(C, SELL, P, SIZE_ONE, created=NOW - 90)
    a2 = order(C, SELL, P, SIZE_ONE, created=NOW - 80, salt=77)
    bid = order(B, BUY, P, 2 * SIZE_ONE, created=NOW - 1)
    state = chain(balances={B: RICH, C: 15 * SIZE_ONE * P // 100})
    batch = build(book_of(a1, a2, bid), state)
    assert [f[0] for f in fills(batch)] == [a1.hash]
    assert skipped(batch) == [(a2.hash, SkipReason.MARGIN_MAKER)]


def test_position_limit() -> None:
    params = replace(default_market(P), max_position=15)
    ask = order(A, SELL, P, 10, created=NOW - 50)
    bid = order(B, BUY, P, 10, created=NOW - 10)
    batch = build(book_of(ask, bid), chain(positions={B: 10}, market=params))
    assert batch.fills == () and skipped(batch) == [(bid.hash, SkipReason.POSITION_LIMIT)]


def test_bounds_and_unknown_market_are_dead() -> None:
    off_tick = order(A, SELL, P + 1, 10, created=NOW - 50)
    bid = order(B, BUY, P + T, 10, created=NOW - 10)
    assert build(book_of(off_tick, bid), chain()).dead == (SkippedOrder(off_tick.hash, SkipReason.BOUNDS),)
    other = order(A, SELL, P, 10, market=5)
    bid5 = order(B, BUY, P, 10, market=5)
    book = book_of(other, bid5)
    batch = build(book, chain())
    assert {d.reason for d in batch.dead} == {SkipReason.MARKET_MISMATCH}
    book.apply(Retire(batch))  # kept: a market created later revives them
    assert {other.hash, bid5.hash} <= set(book.orders)
    state = replace(chain(), markets={0: default_market(P), 5: default_market(P)})
    assert [a for _, _, a in fills(build(book, state))] == [10]


# --- limits --------------------------------------------------------------------------------------------------------


def test_fill_cap_and_gas_budget_truncate() -> None:
    asks = [order(A, SELL, P, 1, created=NOW - 90 + i) for i in range(5)]
    bid = order(B, BUY, P, 5, created=NOW - 1)
    batch = build(book_of(*asks, bid), chain(), Limits(deadline_delta=10, max_fills=3))
    assert len(batch.fills) == 3 and batch.truncated
    gas = Limits(deadline_delta=10, gas_budget=BATCH_BASE_GAS + 2 * FILL_GAS)
    batch = build(book_of(*asks, bid), chain(), gas)
    assert len(batch.fills) == 2 and batch.gas_estimate <= gas.gas_budget
    assert not build(book_of(*asks, bid), chain()).truncated
    with pytest.raises(ValueError, match="max_fills"):
        Limits(max_fills=40_000)


def test_batch_encoding_is_canonical() -> None:
    ask = order(A, SELL, P, 10, created=NOW - 50)
    bid = order(B, BUY, P, 7, created=NOW - 10)
    one = build(book_of(ask, bid), chain())
    two = build(book_of(bid, ask), chain())
    assert one.encode() == two.encode() and one == two
    assert one.encode() != build(book_of(ask, bid), chain(), now=NOW + 1).encode()


def test_order_signature_is_not_what_orders_the_book() -> None:
    o = order(A, SELL, P, 10)
    other_sig = replace(o, signature=b"\x01" * 65)
    assert sign(o.order).hash == o.hash == other_sig.hash
