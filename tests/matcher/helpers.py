"""Small builders for matcher tests."""

from __future__ import annotations

from collections.abc import Mapping

from relayer.margin import SIZE_ONE, Account, MarketParams, Position
from relayer.matcher import Batch, Book, ChainState, Limits, build_batch
from relayer.matcher.workload import IOC_WINDOW, default_market, sign, trader_address
from relayer.types import Address, MarketId, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind

NOW = 1_800_000_000
A, B, C = trader_address(1), trader_address(2), trader_address(3)
RICH = 10**12 * SIZE_ONE
P = 2_000 * 10**6  # a price on the default market's tick
T = 10**6  # one tick
LIMITS = Limits(deadline_delta=10)

_salts: dict[str, int] = {}


def order(
    trader: Address,
    side: Side,
    price: int,
    amount: int,
    *,
    created: int = NOW - 100,
    expiry: int = NOW + 3600,
    flags: OrderFlag = OrderFlag.NONE,
    salt: int | None = None,
    market: int = 0,
    trigger: tuple[TriggerKind, int] = (TriggerKind.NONE, 0),
) -> SignedOrder:
    if salt is None:
        _salts[trader] = _salts.get(trader, 0) + 1
        salt = _salts[trader]
    return sign(
        Order(
            trader=trader,
            market=MarketId(market),
            side=side,
            price=price,
            amount=amount,
            salt=Salt(salt),
            created_at=created,
            expiry=expiry,
            flags=flags,
            trigger_kind=trigger[0],
            trigger_price=trigger[1],
        )
    )


def chain(
    *,
    balances: Mapping[Address, int] | None = None,
    positions: Mapping[Address, int] | None = None,
    filled: Mapping[tuple[Address, Salt], int] | None = None,
    market: MarketParams | None = None,
) -> ChainState:
    balances = balances if balances is not None else {A: RICH, B: RICH, C: RICH}
    accounts = {}
    for trader, balance in balances.items():
        size = (positions or {}).get(trader, 0)
        pos = {0: Position(size, size * P, 0)} if size else {}
        accounts[trader] = Account(balance - size * P, pos)
    return ChainState(markets={0: market or default_market(P)}, accounts=accounts, filled=dict(filled or {}))


def book_of(*orders: SignedOrder) -> Book:
    book = Book(IOC_WINDOW)
    for o in orders:
        out = book.add(o)
        assert out[-1].kind in ("accepted", "parked"), out
    return book


def build(book: Book, state: ChainState, limits: Limits = LIMITS, now: int = NOW) -> Batch:
    return build_batch(book, state, now, limits)


def fills(batch: Batch) -> list[tuple[bytes, bytes, int]]:
    return [(m, t, a) for m, t, a in batch.fill_hashes()]
