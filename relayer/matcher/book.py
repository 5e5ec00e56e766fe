"""The order book: open orders per market in canonical priority (docs/matcher.md "Book").

Pure: events in (:meth:`Book.apply`), outputs out; no I/O, no clock. Each side of a market is a
``sortedcontainers.SortedList`` of priority keys: bids ``(-price, createdAt, hash)``, asks ``(price, createdAt,
hash)``, so the first entry is the best and ties fall to the earlier createdAt, then the smaller hash (compared as
the contract compares ``bytes32``). Orders rest between batches; the book may be crossed until the next batch is
built. Fill counters live in :class:`~relayer.matcher.model.ChainState`, not here.
"""

from __future__ import annotations

import hashlib
import json
from bisect import insort
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from sortedcontainers import SortedList

from relayer.matcher.model import Batch, SkipReason
from relayer.types import Address, Hash32, MarketId, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind

__all__ = [
    "AddOrder",
    "Book",
    "BookSide",
    "Cancel",
    "CancelUpTo",
    "Event",
    "OracleUpdate",
    "Output",
    "Retire",
    "trigger_holds",
]

PriorityKey = tuple[int, int, bytes]
_BUY = Side.BUY
_IOC = int(OrderFlag.IOC)
_NO_TRIGGER = TriggerKind.NONE
_REVIVABLE = frozenset({SkipReason.BOUNDS, SkipReason.MARKET_MISMATCH})
_REASON_NAMES = {r: r.name.lower() for r in SkipReason}


@dataclass(frozen=True, slots=True)
class AddOrder:
    order: SignedOrder


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel every version of (trader, salt), now and later (a signed cancel or an on-chain one)."""

    trader: Address
    salt: Salt


@dataclass(frozen=True, slots=True)
class CancelUpTo:
    """Cancel every salt below ``salt`` of ``trader``."""

    trader: Address
    salt: Salt


@dataclass(frozen=True, slots=True)
class OracleUpdate:
    """A confirmed oracle price: conditional orders whose trigger it crosses enter the book."""

    market: MarketId
    price: int


@dataclass(frozen=True, slots=True)
class Retire:
    """Drop what a batch cancelled (self-trade prevention) and found dead."""

    batch: Batch


Event = AddOrder | Cancel | CancelUpTo | OracleUpdate | Retire


class Output(NamedTuple):
    """What an event did to one order. ``kind``: ``accepted``, ``parked`` (conditional, waiting for its trigger),
    ``activated`` (trigger crossed), ``replaced`` (an older version, by an amendment), ``cancelled``, ``removed``
    (retired by a batch), ``rejected`` (``reason`` says why). A named tuple: one is made per event on the hot path."""

    kind: str
    hash: Hash32
    reason: str = ""


def trigger_holds(order: Order, oracle_price: int) -> bool:
    """The contract's trigger rule (docs/units.md): stop-loss buy ``p >= t``, sell ``p <= t``; take-profit the
    reverse; an order without a trigger always holds."""
    kind = order.trigger_kind
    if kind == TriggerKind.NONE:
        return True
    buy = order.side == Side.BUY
    if kind == TriggerKind.STOP_LOSS:
        return oracle_price >= order.trigger_price if buy else oracle_price <= order.trigger_price
    return oracle_price <= order.trigger_price if buy else oracle_price >= order.trigger_price


def priority_key(order: Order, order_hash: bytes) -> PriorityKey:
    price = -order.price if order.side == _BUY else order.price
    return (price, order.created_at, order_hash)


class _Level(list[tuple[int, bytes]]):
    """The ``(createdAt, hash)`` entries of one price level, sorted, ghosts included; ``n`` counts the live ones."""

    __slots__ = ("n",)

    def __init__(self, item: tuple[int, bytes]) -> None:
        super().__init__((item,))
        self.n = 1


class BookSide:
    """One side of a market in priority order: price levels ``levels[p]`` (``(createdAt, hash)`` entries kept
    sorted, C ``bisect``) under price keys ``p`` (``-price`` for bids, ``price`` for asks) in a ``SortedList`` that
    changes only when a level opens or empties. Iterating gives the priority keys ``(p, createdAt, hash)`` from the
    best, exactly the order of one ``SortedList`` of those keys; :meth:`hashes` gives just the hashes.

    An entry is live while its hash is in ``alive`` (the :class:`Book`'s ``orders``; a side made on its own keeps its
    own). Removal is lazy: the owner deletes the hash from ``alive`` and calls :meth:`remove`, which only counts it
    out of its level; the entry stays in the level as a ghost that walks skip, :meth:`first` pops from the front, and
    the level compacts once ghosts outnumber live entries (amortised O(1), no search on a cancel). A level whose live
    count reaches zero is dropped at once, so ``prices`` holds exactly the levels with live orders. Precondition (the
    book keeps it: removed hashes are cancelled or superseded for good): a removed hash is never added again.
    """

    __slots__ = ("alive", "count", "levels", "owned", "prices")

    def __init__(self, alive: dict[bytes, Any] | None = None) -> None:
        self.levels: dict[int, _Level] = {}
        self.prices: SortedList = SortedList()
        self.owned = alive is None
        self.alive: dict[bytes, Any] = {} if alive is None else alive
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[PriorityKey]:
        levels, alive = self.levels, self.alive
        for p in self.prices:
            for created, h in levels[p]:
                if h in alive:
                    yield (p, created, h)

    def hashes(self) -> Iterator[bytes]:
        """The live order hashes from the best."""
        levels, alive = self.levels, self.alive
        for p in self.prices:
            for _created, h in levels[p]:
                if h in alive:
                    yield h

    def first(self) -> PriorityKey:
        p = self.prices[0]
        level, alive = self.levels[p], self.alive
        while level[0][1] not in alive:
            del level[0]  # a ghost at the front
        created, h = level[0]
        return (p, created, h)

    def add(self, p: int, created: int, h: bytes) -> None:
        """Add a live entry (its hash must already be in ``alive`` unless the side owns it)."""
        item = (created, h)
        level = self.levels.get(p)
        if level is None:
            self.levels[p] = _Level(item)
            self.prices.add(p)
        else:
            if item > level[-1]:
                level.append(item)  # the common case: orders arrive in createdAt order
            else:
                insort(level, item)
            level.n += 1
        if self.owned:
            self.alive[h] = None
        self.count += 1

    def remove(self, p: int, created: int, h: bytes) -> None:
        """Count out an entry whose hash the owner has just deleted from ``alive`` (an owned side deletes it)."""
        if self.owned:
            if h not in self.alive:
                raise ValueError(f"{h.hex()} is not in the book")
            del self.alive[h]
        level = self.levels[p]
        n = level.n - 1
        self.count -= 1
        if n == 0:
            del self.levels[p]
            self.prices.remove(p)
            return
        level.n = n
        if len(level) > 2 * n + 8:
            alive = self.alive
            level[:] = [e for e in level if e[1] in alive]


class _MarketBook:
    __slots__ = ("asks", "bids")

    def __init__(self, alive: dict[bytes, Any]) -> None:
        self.bids = BookSide(alive)
        self.asks = BookSide(alive)


class Book:
    """Open orders of every market. ``ioc_window`` is the network's IOC window in seconds: an IOC order must have
    ``expiry == createdAt + ioc_window`` (then it is a short GTT order)."""

    def __init__(self, ioc_window: int = 60) -> None:
        self.ioc_window = ioc_window
        self.orders: dict[bytes, SignedOrder] = {}  # active: in a market's sorted lists
        self.parked: dict[bytes, SignedOrder] = {}  # conditional orders waiting for their trigger
        self.live: dict[Address, dict[Salt, bytes]] = {}  # trader -> salt -> hash of the live version
        self.superseded: set[bytes] = set()  # older versions, refused if they come again
        self.cancelled: set[tuple[Address, Salt]] = set()
        self.cancelled_up_to: dict[Address, int] = {}
        self.oracle: dict[int, int] = {}  # last confirmed oracle price per market
        self.markets: dict[int, _MarketBook] = {}

    # --- queries -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.orders) + len(self.parked)

    def market_ids(self) -> list[int]:
        return sorted(m for m, b in self.markets.items() if b.bids or b.asks)

    def sides(self, market: int) -> tuple[BookSide, BookSide]:
        book = self.markets.get(market)
        if book is None:
            return BookSide(self.orders), BookSide(self.orders)
        return book.bids, book.asks

    def get(self, order_hash: bytes) -> SignedOrder | None:
        return self.orders.get(order_hash) or self.parked.get(order_hash)

    def best(self, market: int, side: Side) -> SignedOrder | None:
        book = self.markets.get(market)
        if book is None:
            return None
        keys = book.bids if side == _BUY else book.asks
        return self.orders[keys.first()[2]] if keys else None

    def would_take(self, order: Order) -> bool:
        """True when ``order``, arriving now, crosses a resting order of the other side (so a post-only order would
        be the taker: refuse it at intake). Resting orders are all earlier, so any cross makes it the taker."""
        best = self.best(order.market, order.side.opposite)
        if best is None:
            return False
        other = best.order.price
        return order.price >= other if order.side == Side.BUY else order.price <= other

    def is_crossed(self, market: int) -> bool:
        bids, asks = self.sides(market)
        return bool(bids) and bool(asks) and -bids.first()[0] >= asks.first()[0]

    # --- events --------------------------------------------------------------------------------------------------

    def apply(self, event: Event) -> list[Output]:
        if isinstance(event, AddOrder):
            return self.add(event.order)
        if isinstance(event, Cancel):
            return self.cancel(event.trader, event.salt)
        if isinstance(event, CancelUpTo):
            return self.cancel_up_to(event.trader, event.salt)
        if isinstance(event, OracleUpdate):
            return self.oracle_update(event.market, event.price)
        return self.retire(event.batch)

    def current(self, trader: Address, salt: Salt) -> bytes | None:
        """The hash of the live version of (trader, salt), active or parked."""
        salts = self.live.get(trader)
        return None if salts is None else salts.get(salt)

    def add(self, signed: SignedOrder) -> list[Output]:
        order, h = signed.order, signed.hash
        trader, salt = order.trader, order.salt
        salts = self.live.get(trader)
        if (
            (salts is not None and salt in salts)  # an amendment (or the same order again)
            or order.trigger_kind  # conditional
            or h in self.superseded
            or (trader, salt) in self.cancelled
            or salt < self.cancelled_up_to.get(trader, 0)
            or order.amount <= 0
            or order.price <= 0
            or int(order.flags) & _IOC
        ):
            return self._add_checked(signed)
        # the common case, inlined: a new (trader, salt) without a trigger goes straight into its market
        if salts is None:
            self.live[trader] = {salt: h}
        else:
            salts[salt] = h
        self.orders[h] = signed
        book = self.markets.get(order.market)
        if book is None:
            book = self.markets[order.market] = _MarketBook(self.orders)
        if order.side == _BUY:
            book.bids.add(-order.price, order.created_at, h)
        else:
            book.asks.add(order.price, order.created_at, h)
        return [Output("accepted", h)]

    def _add_checked(self, signed: SignedOrder) -> list[Output]:
        order, h = signed.order, signed.hash
        trader, salt = order.trader, order.salt
        reason = self._refusal(signed)
        if reason:
            return [Output("rejected", h, reason)]
        out: list[Output] = []
        salts = self.live.setdefault(trader, {})
        old_hash = salts.get(salt)
        if old_hash is not None:
            self._remove(old_hash)
            self.superseded.add(old_hash)
            out.append(Output("replaced", Hash32(old_hash)))
        salts[salt] = h
        if order.trigger_kind != _NO_TRIGGER:
            price = self.oracle.get(order.market)
            if price is None or not trigger_holds(order, price):
                self.parked[h] = signed
                out.append(Output("parked", h))
                return out
        self._insert(signed)
        out.append(Output("accepted", h))
        return out

    def _refusal(self, signed: SignedOrder) -> str:
        order, h = signed.order, signed.hash
        if h in self.orders or h in self.parked:
            return "duplicate"
        if h in self.superseded:
            return "superseded"
        if (order.trader, order.salt) in self.cancelled or order.salt < self.cancelled_up_to.get(order.trader, 0):
            return "cancelled"
        if order.amount <= 0 or order.price <= 0:
            return "bounds"
        if int(order.flags) & _IOC and order.expiry != order.created_at + self.ioc_window:
            return "ioc_window"
        old_hash = self.current(order.trader, order.salt)
        if old_hash is not None:
            old = self.orders.get(old_hash) or self.parked[old_hash]
            if order.created_at < old.order.created_at:
                return "amend_backdated"
            if order.created_at == old.order.created_at and (
                order.amount >= old.order.amount
                or order.price != old.order.price
                or order.side != old.order.side
                or order.market != old.order.market
            ):
                return "amend_priority"  # keeping createdAt is only for a pure shrink
        return ""

    def cancel(self, trader: Address, salt: Salt) -> list[Output]:
        self.cancelled.add((trader, salt))
        salts = self.live.get(trader)
        if salts is None:
            return []
        h = salts.pop(salt, None)
        if h is None:
            return []
        if not salts:
            del self.live[trader]
        signed = self.orders.pop(h, None)
        if signed is None:
            del self.parked[h]
        else:  # _remove, inlined
            order = signed.order
            book = self.markets[order.market]
            if order.side == _BUY:
                book.bids.remove(-order.price, order.created_at, h)
            else:
                book.asks.remove(order.price, order.created_at, h)
        return [Output("cancelled", Hash32(h))]

    def cancel_up_to(self, trader: Address, salt: Salt) -> list[Output]:
        if salt <= self.cancelled_up_to.get(trader, 0):
            return []
        self.cancelled_up_to[trader] = salt
        out: list[Output] = []
        salts = self.live.get(trader, {})
        for s in sorted(x for x in salts if x < salt):
            h = salts.pop(s)
            self._remove(h)
            out.append(Output("cancelled", Hash32(h)))
        if not salts:
            self.live.pop(trader, None)
        return out

    def oracle_update(self, market: MarketId, price: int) -> list[Output]:
        self.oracle[market] = price
        hits = sorted(h for h, s in self.parked.items() if s.order.market == market and trigger_holds(s.order, price))
        out: list[Output] = []
        for h in hits:
            self._insert(self.parked.pop(h))
            out.append(Output("activated", Hash32(h)))
        return out

    def retire(self, batch: Batch) -> list[Output]:
        """Drop the orders the batch cancelled (self-trade prevention) and the dead ones that can never fill again
        (expired at the deadline, cancelled, filled, a FOK already filled in part). Orders dead only for the market's
        current parameters (``BOUNDS``, ``MARKET_MISMATCH``) stay: an ``updateMarket`` may revive them."""
        out: list[Output] = []
        live, get = self.live, self.get
        for group in (batch.cancelled, batch.dead):
            for item in group:
                reason = item.reason
                if reason in _REVIVABLE:
                    continue
                h = item.hash
                signed = get(h)
                if signed is None:
                    continue
                order = signed.order
                salts = live.get(order.trader)
                if salts is None or salts.get(order.salt) != h:
                    continue
                del salts[order.salt]
                if not salts:
                    del live[order.trader]
                self._remove(h)
                self.superseded.add(h)  # gossip bringing it back again is refused
                out.append(Output("removed", h, _REASON_NAMES[reason]))
        return out

    # --- internals -----------------------------------------------------------------------------------------------

    def _insert(self, signed: SignedOrder) -> None:
        order = signed.order
        self.orders[signed.hash] = signed
        book = self.markets.get(order.market)
        if book is None:
            book = self.markets[order.market] = _MarketBook(self.orders)
        if order.side == _BUY:
            book.bids.add(-order.price, order.created_at, signed.hash)
        else:
            book.asks.add(order.price, order.created_at, signed.hash)

    def _remove(self, h: bytes) -> None:
        signed = self.orders.pop(h, None)
        if signed is None:
            self.parked.pop(h, None)
            return
        order = signed.order
        book = self.markets[order.market]
        if order.side == _BUY:
            book.bids.remove(-order.price, order.created_at, h)
        else:
            book.asks.remove(order.price, order.created_at, h)

    # --- snapshot ------------------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole book (JSON, sorted keys, no whitespace): equal books give equal bytes."""
        doc: dict[str, Any] = {
            "v": 1,
            "ioc_window": self.ioc_window,
            "orders": [_encode_order(self.orders[h]) for h in sorted(self.orders)],
            "parked": [_encode_order(self.parked[h]) for h in sorted(self.parked)],
            # the live versions are exactly orders + parked; the arrival order of versions is kept by superseded
            "superseded": sorted(h.hex() for h in self.superseded),
            "cancelled": sorted([t, s] for t, s in self.cancelled),
            "cancelled_up_to": sorted([t, s] for t, s in self.cancelled_up_to.items()),
            "oracle": sorted([m, p] for m, p in self.oracle.items()),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def state_hash(self) -> str:
        """SHA-256 of :meth:`snapshot`, hex."""
        return hashlib.sha256(self.snapshot()).hexdigest()

    @classmethod
    def restore(cls, data: bytes) -> Book:
        doc = json.loads(data)
        if doc.get("v") != 1:
            raise ValueError("unknown book snapshot version")
        book = cls(ioc_window=int(doc["ioc_window"]))
        for item in doc["orders"]:
            signed = _decode_order(item)
            book._insert(signed)
            book._track(signed)
        for item in doc["parked"]:
            signed = _decode_order(item)
            book.parked[signed.hash] = signed
            book._track(signed)
        book.superseded = {bytes.fromhex(h) for h in doc["superseded"]}
        book.cancelled = {(Address(t), Salt(s)) for t, s in doc["cancelled"]}
        book.cancelled_up_to = {Address(t): int(s) for t, s in doc["cancelled_up_to"]}
        book.oracle = {int(m): int(p) for m, p in doc["oracle"]}
        return book

    def _track(self, signed: SignedOrder) -> None:
        self.live.setdefault(signed.order.trader, {})[signed.order.salt] = signed.hash


def _encode_order(signed: SignedOrder) -> list[Any]:
    o = signed.order
    return [
        signed.hash.hex(),
        signed.signature.hex(),
        o.trader,
        o.market,
        int(o.side),
        o.price,
        o.amount,
        o.salt,
        o.created_at,
        o.expiry,
        int(o.flags),
        int(o.trigger_kind),
        o.trigger_price,
    ]


def _decode_order(item: list[Any]) -> SignedOrder:
    h, sig, trader, market, side, price, amount, salt, created, expiry, flags, kind, trigger = item
    order = Order.from_fields(Address(trader), market, side, price, amount, salt, created, expiry, flags, kind, trigger)
    return SignedOrder(order=order, signature=bytes.fromhex(sig), hash=Hash32(bytes.fromhex(h)))
