"""What the API shows of the book: depth snapshots and a trade feed (docs/matcher.md "Feed"). Pure, like the rest of
the matcher: the depth reads the book and the chain state, the trades read a batch and the book it was built from.

Depth aggregates, per price, the *remaining* amount (signed amount - fills in included batches) of the live orders
at that price that can still fill (not dead at ``deadline`` when one is given). The book may be crossed between
batches; depth shows it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from relayer.matcher.batch import dead_reason
from relayer.matcher.book import Book, BookSide
from relayer.matcher.model import Batch, ChainState
from relayer.types import Address, Hash32, MarketId, Side

__all__ = ["Depth", "Level", "Trade", "depth", "trades"]


@dataclass(frozen=True, slots=True)
class Level:
    price: int
    size: int  # base atoms remaining at this price
    orders: int


@dataclass(frozen=True, slots=True)
class Depth:
    market: int
    bids: tuple[Level, ...]  # best (highest) first
    asks: tuple[Level, ...]  # best (lowest) first


@dataclass(frozen=True, slots=True)
class Trade:
    """One fill as the trade feed shows it: the price is the maker's, ``taker_side`` the aggressor's side."""

    market: MarketId
    price: int
    amount: int
    taker_side: Side
    maker: Hash32
    taker: Hash32
    maker_trader: Address
    taker_trader: Address


def _levels(book: Book, side: BookSide, chain: ChainState, limit: int, deadline: int | None, bids: bool) -> list[Level]:
    out: list[Level] = []
    filled = chain.filled
    for p in side.prices:
        size = count = 0
        for _created, h in side.levels[p]:
            signed = book.orders.get(h)
            if signed is None:
                continue  # a ghost of a removed order
            order = signed.order
            if deadline is not None and dead_reason(order, chain, deadline) is not None:
                continue
            left = order.amount - filled.get((order.trader, order.salt), 0)
            if left > 0:
                size += left
                count += 1
        if count:
            out.append(Level(-p if bids else p, size, count))
            if len(out) == limit:
                break
    return out


def depth(book: Book, chain: ChainState, market: int, *, levels: int = 20, deadline: int | None = None) -> Depth:
    """The best ``levels`` price levels of each side of ``market``."""
    if levels < 1:
        raise ValueError("levels must be >= 1")
    bids, asks = book.sides(market)
    return Depth(
        market,
        tuple(_levels(book, bids, chain, levels, deadline, bids=True)),
        tuple(_levels(book, asks, chain, levels, deadline, bids=False)),
    )


def trades(batch: Batch, book: Book) -> list[Trade]:
    """The fills of ``batch`` as trades, in batch order (call before the batch is retired from ``book``)."""
    out: list[Trade] = []
    for maker_hash, taker_hash, amount in batch.fill_hashes():
        maker, taker = book.get(maker_hash), book.get(taker_hash)
        if maker is None or taker is None:
            raise KeyError("a batch's order is not in the book it was built from")
        m, t = maker.order, taker.order
        out.append(Trade(m.market, m.price, amount, t.side, maker_hash, taker_hash, m.trader, t.trader))
    return out
