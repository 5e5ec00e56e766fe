"""build_batch: match the book in canonical priority into one batch (docs/matcher.md "Matching").

Per market (ascending id), repeatedly take the best live bid and the best live ask. While they cross, the earlier
of the two by (createdAt, hash) is the maker and the fill executes at its price for the largest amount both can
take. Before a fill is accepted it goes through the contract's per-fill checks in the contract's order, on the
chain state simulated fill by fill (margin via relayer.margin); an order that fails a check for an objective
reason is set aside for this batch (``Batch.skipped``, it stays in the book) and matching goes on with the next
order of its side. Orders that can never fill again are ``Batch.dead``. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from sortedcontainers import SortedList

from relayer.margin import Account, MarginError, MarketParams, apply_trade, is_healthy_after_fill, within_position_limit
from relayer.matcher.book import Book, trigger_holds
from relayer.matcher.model import Batch, ChainState, Limits, SkippedOrder, SkipReason, StpMode
from relayer.types import Address, Fill, Hash32, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind

__all__ = ["build_batch", "dead_reason", "market_order_price", "remaining"]

_POST_ONLY, _REDUCE_ONLY, _FOK = int(OrderFlag.POST_ONLY), int(OrderFlag.REDUCE_ONLY), int(OrderFlag.FOK)
_KNOWN_FLAGS = int(OrderFlag.POST_ONLY | OrderFlag.REDUCE_ONLY | OrderFlag.IOC | OrderFlag.FOK)


def _bounds_ok(o: Order, p: MarketParams) -> bool:
    """The contract's ``_boundsOk``."""
    kind = int(o.trigger_kind)
    trigger_ok = o.trigger_price == 0 if kind == 0 else 0 < o.trigger_price <= p.max_price
    return (
        int(o.flags) & ~_KNOWN_FLAGS == 0
        and kind <= TriggerKind.TAKE_PROFIT
        and trigger_ok
        and 0 < o.price <= p.max_price
        and o.price % p.tick == 0
        and p.min_size <= o.amount <= p.max_order_size
    )


def dead_reason(order: Order, chain: ChainState, deadline: int) -> SkipReason | None:
    """Why ``order`` can never fill in a batch with this deadline (or later), or None."""
    params = chain.markets.get(order.market)
    if params is None:
        return SkipReason.MARKET_MISMATCH
    if order.expiry <= deadline:
        return SkipReason.EXPIRED
    if chain.is_cancelled(order.trader, order.salt):
        return SkipReason.CANCELLED
    if not _bounds_ok(order, params):
        return SkipReason.BOUNDS
    filled = chain.filled.get(order.key, 0)
    if filled >= order.amount:
        return SkipReason.OVERFILL
    if int(order.flags) & _FOK and filled:
        return SkipReason.FOK
    return None


class _Builder:
    def __init__(self, book: Book, chain: ChainState, deadline: int, limits: Limits) -> None:
        self.book = book
        self.chain = chain
        self.deadline = deadline
        self.limits = limits
        self.cap = limits.fill_cap
        self.filled: dict[tuple[Address, Salt], int] = {}  # keys touched by this batch: new counters
        self.accounts: dict[Address, Account] = {}
        self.index: dict[bytes, int] = {}
        self.orders: list[Hash32] = []
        self.fills: list[Fill] = []
        self.skipped: list[SkippedOrder] = []
        self.cancelled: list[SkippedOrder] = []
        self.dead: list[SkippedOrder] = []
        self.out: set[bytes] = set()  # orders set aside, cancelled or dead in this batch
        self.alive: set[bytes] = set()  # orders found not dead in this batch
        self.truncated = False

    def remaining(self, o: Order) -> int:
        key = o.key
        filled = self.filled.get(key)
        if filled is None:
            filled = self.chain.filled.get(key, 0)
        return o.amount - filled

    def account(self, trader: Address) -> Account:
        acct = self.accounts.get(trader)
        return self.chain.account(trader) if acct is None else acct

    def next_live(self, keys: SortedList, i: int) -> tuple[int, SignedOrder | None]:
        """The first order at or after position ``i`` that is neither done nor set aside."""
        n = len(keys)
        orders = self.book.orders
        while i < n:
            signed = orders[keys[i][2]]
            h = signed.hash
            if h not in self.out:
                if h not in self.alive:  # first look at it: is it dead?
                    reason = dead_reason(signed.order, self.chain, self.deadline)
                    if reason is not None:
                        self.out.add(h)
                        self.dead.append(SkippedOrder(h, reason))
                        i += 1
                        continue
                    self.alive.add(h)
                if self.remaining(signed.order) > 0:
                    return i, signed
            i += 1
        return i, None

    def set_aside(self, signed: SignedOrder, reason: SkipReason) -> None:
        self.out.add(signed.hash)
        self.skipped.append(SkippedOrder(signed.hash, reason))

    def stp_cancel(self, signed: SignedOrder) -> None:
        self.out.add(signed.hash)
        self.cancelled.append(SkippedOrder(signed.hash, SkipReason.SELF_TRADE))

    def idx(self, h: Hash32) -> int:
        i = self.index.get(h)
        if i is None:
            i = self.index[h] = len(self.orders)
            self.orders.append(h)
        return i

    def match_market(self, market: int) -> None:
        bids, asks = self.book.sides(market)
        params = self.chain.markets.get(market)
        i = j = 0
        while True:
            i, bid = self.next_live(bids, i)
            j, ask = self.next_live(asks, j)
            if bid is None or ask is None or bid.order.price < ask.order.price:
                return
            if params is None:  # every order of an unknown market is dead; next_live never returns one
                raise AssertionError("unreachable")
            if len(self.fills) >= self.cap:
                self.truncated = True
                return
            self.try_pair(bid, ask, params)

    def try_pair(self, bid: SignedOrder, ask: SignedOrder, params: MarketParams) -> None:
        b, a = bid.order, ask.order
        if (b.created_at, bid.hash) < (a.created_at, ask.hash):
            maker, taker = bid, ask
        else:
            maker, taker = ask, bid
        m, t = maker.order, taker.order
        if m.trader == t.trader:
            stp = self.limits.stp
            if stp in (StpMode.CANCEL_MAKER, StpMode.CANCEL_BOTH):
                self.stp_cancel(maker)
            if stp in (StpMode.CANCEL_TAKER, StpMode.CANCEL_BOTH):
                self.stp_cancel(taker)
            return
        if int(t.flags) & _POST_ONLY:
            self.set_aside(taker, SkipReason.POST_ONLY_TAKER)
            return
        oracle = params.oracle_price
        bad = [s for s in (maker, taker) if not trigger_holds(s.order, oracle)]
        if bad:
            for s in bad:
                self.set_aside(s, SkipReason.TRIGGER)
            return
        # reduce-only: an order may take at most its trader's position, in the reducing direction
        m_acct, t_acct = self.account(m.trader), self.account(t.trader)
        m_size = m_acct.position(m.market).size
        t_size = t_acct.position(t.market).size
        m_avail = _available(m, self.remaining(m), m_size)
        t_avail = _available(t, self.remaining(t), t_size)
        amount = min(m_avail, t_avail)
        if amount == 0:
            for s, avail in ((maker, m_avail), (taker, t_avail)):
                if avail == 0:
                    self.set_aside(s, SkipReason.REDUCE_ONLY)
            return
        fok = [s for s in (maker, taker) if int(s.order.flags) & _FOK and amount != s.order.amount]
        if fok:
            for s in fok:
                self.set_aside(s, SkipReason.FOK)
            return
        q_maker = amount if m.side == Side.BUY else -amount
        if not within_position_limit(m_size, q_maker, params.max_position):
            self.set_aside(maker, SkipReason.POSITION_LIMIT)
            return
        if not within_position_limit(t_size, -q_maker, params.max_position):
            self.set_aside(taker, SkipReason.POSITION_LIMIT)
            return
        price = m.price
        new_m = _trade(m_acct, self.chain.markets, m.market, q_maker, price, params.maker_fee, m_size)
        if new_m is None:
            self.set_aside(maker, SkipReason.MARGIN_MAKER)
            return
        new_t = _trade(t_acct, self.chain.markets, t.market, -q_maker, price, params.taker_fee, t_size)
        if new_t is None:
            self.set_aside(taker, SkipReason.MARGIN_TAKER)
            return
        self.accounts[m.trader] = new_m
        self.accounts[t.trader] = new_t
        self.filled[m.key] = m.amount - self.remaining(m) + amount
        self.filled[t.key] = t.amount - self.remaining(t) + amount
        self.fills.append(Fill(self.idx(maker.hash), self.idx(taker.hash), amount))

    def build(self) -> Batch:
        for market in self.book.market_ids():
            self.match_market(market)
            if self.truncated:
                break
        return Batch(
            deadline=self.deadline,
            orders=tuple(self.orders),
            fills=tuple(self.fills),
            skipped=tuple(self.skipped),
            cancelled=tuple(self.cancelled),
            dead=tuple(self.dead),
            truncated=self.truncated,
            base=self.chain,
            filled_delta=self.filled,
            accounts_delta=self.accounts,
        )


def _available(o: Order, remaining: int, size: int) -> int:
    """How much ``o`` may fill now: its remaining amount, and for reduce-only at most the position it reduces
    (resized as the position shrinks; zero if it would open, increase or flip)."""
    if not int(o.flags) & _REDUCE_ONLY:
        return remaining
    if o.side == Side.BUY:
        return min(remaining, -size) if size < 0 else 0
    return min(remaining, size) if size > 0 else 0


def _trade(
    account: Account, markets: Mapping[int, MarketParams], market: int, q: int, price: int, fee_rate: int, before: int
) -> Account | None:
    """The account after one side of the fill, or None if the contract would skip it for margin."""
    params = markets[market]
    try:
        after = apply_trade(account, market, params.funding_index, q, price, fee_rate).account
        healthy = is_healthy_after_fill(after, markets, market, before)
    except MarginError:  # a balance or cost leaving its storage type: the contract skips the fill too
        return None
    return after if healthy else None


def build_batch(book: Book, chain_state: ChainState, now: int, limits: Limits) -> Batch:
    """Build the next batch from ``book`` on the confirmed ``chain_state``; ``now`` is the chain head time and the
    deadline ``now + limits.deadline_delta`` (orders expiring at or before it are dead). Pure and deterministic:
    equal inputs give equal batches (:meth:`Batch.encode`)."""
    return _Builder(book, chain_state, now + limits.deadline_delta, limits).build()


def market_order_price(side: Side, params: MarketParams) -> int:
    """A market order is a limit order at the worst price the trader accepts; with no bound given that is the
    market's ``max_price`` for a buy and one ``tick`` for a sell."""
    return params.max_price if side == Side.BUY else params.tick


def remaining(order: Order, chain: ChainState) -> int:
    """Signed amount minus the fills of (trader, salt) in included batches (shared by every version)."""
    return order.amount - chain.filled.get(order.key, 0)
