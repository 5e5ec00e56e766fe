"""Depth snapshots and the trade feed the API shows."""

from __future__ import annotations

import pytest

from relayer.matcher import Cancel
from relayer.matcher.feed import Level, depth, trades
from relayer.types import Side
from tests.matcher.helpers import LIMITS, NOW, A, B, C, P, T, book_of, build, chain, order

BUY, SELL = Side.BUY, Side.SELL


def test_depth_aggregates_remaining_per_price_best_first() -> None:
    b1 = order(A, BUY, P - T, 5)
    b2 = order(B, BUY, P - T, 7)
    b3 = order(C, BUY, P - 3 * T, 2)
    a1 = order(A, SELL, P + 2 * T, 4)
    a2 = order(B, SELL, P + T, 1)
    book = book_of(b1, b2, b3, a1, a2)
    state = chain(filled={(B, b2.order.salt): 3})  # 3 of b2 already filled on chain: 4 remain
    d = depth(book, state, 0)
    assert d.bids == (Level(P - T, 5 + 4, 2), Level(P - 3 * T, 2, 1))
    assert d.asks == (Level(P + T, 1, 1), Level(P + 2 * T, 4, 1))
    assert depth(book, state, 0, levels=1).bids == (Level(P - T, 9, 2),)
    assert depth(book, state, 7).bids == () and depth(book, state, 7).asks == ()  # unknown market: empty


def test_depth_leaves_out_cancelled_filled_and_dead_orders() -> None:
    live = order(A, BUY, P, 5)
    gone = order(B, BUY, P, 6)
    done = order(C, BUY, P - T, 3)
    expiring = order(A, BUY, P - 2 * T, 9, expiry=NOW + 5)
    book = book_of(live, gone, done, expiring)
    book.apply(Cancel(B, gone.order.salt))
    state = chain(filled={(C, done.order.salt): 3})
    assert depth(book, state, 0).bids == (Level(P, 5, 1), Level(P - 2 * T, 9, 1))
    assert depth(book, state, 0, deadline=NOW + 10).bids == (Level(P, 5, 1),)  # expires at or before the deadline
    with pytest.raises(ValueError, match="levels"):
        depth(book, state, 0, levels=0)


def test_trades_follow_the_batch_at_the_makers_price() -> None:
    maker1 = order(A, SELL, P, 3, created=NOW - 50)
    maker2 = order(B, SELL, P + T, 4, created=NOW - 40)
    taker = order(C, BUY, P + 2 * T, 5, created=NOW - 10)
    book = book_of(maker1, maker2, taker)
    batch = build(book, chain(), LIMITS)
    feed = trades(batch, book)
    assert [(t.price, t.amount, t.taker_side, t.maker, t.taker) for t in feed] == [
        (P, 3, BUY, maker1.hash, taker.hash),
        (P + T, 2, BUY, maker2.hash, taker.hash),
    ]
    assert {t.maker_trader for t in feed} == {A, B} and {t.taker_trader for t in feed} == {C}
