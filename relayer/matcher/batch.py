"""build_batch: match the book in canonical priority into one batch (docs/matcher.md "Matching").

Per market (ascending id), repeatedly take the best live bid and the best live ask. While they cross, the earlier
of the two by (createdAt, hash) is the maker and the fill executes at its price for the largest amount both can
take. Before a fill is accepted it goes through the contract's per-fill checks in the contract's order, on the
chain state simulated fill by fill (margin via relayer.margin); an order that fails a check for an objective
reason is set aside for this batch (``Batch.skipped``, it stays in the book) and matching goes on with the next
order of its side. Orders that can never fill again are ``Batch.dead``. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterator

from relayer.margin import MarketParams
from relayer.matcher.book import Book, trigger_holds
from relayer.matcher.fastmargin import PositionTuple, Rows, load, to_account, trade
from relayer.matcher.model import Batch, ChainState, Limits, SkippedOrder, SkipReason, StpMode
from relayer.types import Address, Fill, Hash32, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind

__all__ = ["build_batch", "dead_reason", "market_order_price", "remaining"]

_POST_ONLY, _REDUCE_ONLY, _FOK = int(OrderFlag.POST_ONLY), int(OrderFlag.REDUCE_ONLY), int(OrderFlag.FOK)
_KNOWN_FLAGS = int(OrderFlag.POST_ONLY | OrderFlag.REDUCE_ONLY | OrderFlag.IOC | OrderFlag.FOK)
_TAKE_PROFIT = int(TriggerKind.TAKE_PROFIT)
_BUY = Side.BUY
_CANCEL_MAKER, _CANCEL_TAKER = StpMode.CANCEL_MAKER, StpMode.CANCEL_TAKER


def _bounds_ok(o: Order, p: MarketParams) -> bool:
    """The contract's ``_boundsOk``."""
    kind = int(o.trigger_kind)
    trigger = o.trigger_price
    max_price = p.max_price
    return (
        int(o.flags) & ~_KNOWN_FLAGS == 0
        and kind <= _TAKE_PROFIT
        and (trigger == 0 if kind == 0 else 0 < trigger <= max_price)
        and 0 < o.price <= max_price
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
    trader, salt = order.trader, order.salt
    key = (trader, salt)
    if key in chain.cancelled or salt < chain.cancelled_up_to.get(trader, 0):  # ChainState.is_cancelled
        return SkipReason.CANCELLED
    if not _bounds_ok(order, params):
        return SkipReason.BOUNDS
    filled = chain.filled.get(key, 0)
    if filled >= order.amount:
        return SkipReason.OVERFILL
    if filled and int(order.flags) & _FOK:
        return SkipReason.FOK
    return None


class _Builder:
    """One batch. Accounts are simulated on plain ints (:mod:`relayer.matcher.fastmargin`, proven equal to
    relayer.margin) and turned into :class:`Account` values once per touched trader at the end. Each side of a
    market is walked once with an iterator, from the best (the book is not modified while a batch is built)."""

    __slots__ = (
        "book",
        "cancelled",
        "cap",
        "chain",
        "chain_filled",
        "dead",
        "deadline",
        "filled",
        "fills",
        "index",
        "limits",
        "orders",
        "out",
        "rows",
        "skipped",
        "state",
        "touched",
        "truncated",
    )

    def __init__(self, book: Book, chain: ChainState, deadline: int, limits: Limits) -> None:
        self.book = book
        self.chain = chain
        self.chain_filled = chain.filled
        self.deadline = deadline
        self.limits = limits
        self.cap = limits.fill_cap
        self.filled: dict[tuple[Address, Salt], int] = {}  # keys touched by this batch: new counters
        self.state: dict[Address, tuple[int, dict[int, PositionTuple]]] = {}  # simulated accounts (fast form)
        self.touched: dict[Address, None] = {}  # traders with a fill, in order of first fill
        self.rows = Rows(chain.markets)
        self.index: dict[bytes, int] = {}
        self.orders: list[Hash32] = []
        self.fills: list[Fill] = []
        self.skipped: list[SkippedOrder] = []
        self.cancelled: list[SkippedOrder] = []
        self.dead: list[SkippedOrder] = []
        self.out: set[bytes] = set()  # orders set aside, cancelled or dead in this batch
        self.truncated = False

    def next_live(self, keys: Iterator[bytes]) -> SignedOrder | None:
        """The next order of a side's walk that is not dead and has something left; dead ones are listed. The
        checks are :func:`dead_reason`'s, inlined (this is the hottest loop of a batch)."""
        orders, chain, deadline = self.book.orders, self.chain, self.deadline
        markets, cancelled, cut = chain.markets, chain.cancelled, chain.cancelled_up_to
        filled, chain_filled = self.filled, self.chain_filled
        for h in keys:
            signed = orders[h]
            order = signed.order
            trader, salt = order.trader, order.salt
            key = (trader, salt)
            params = markets.get(order.market)
            if params is None:
                reason = SkipReason.MARKET_MISMATCH
            elif order.expiry <= deadline:
                reason = SkipReason.EXPIRED
            elif key in cancelled or salt < cut.get(trader, 0):
                reason = SkipReason.CANCELLED
            elif not _bounds_ok(order, params):
                reason = SkipReason.BOUNDS
            else:
                done = chain_filled.get(key, 0)
                amount = order.amount
                if done >= amount:
                    reason = SkipReason.OVERFILL
                elif done and int(order.flags) & _FOK:
                    reason = SkipReason.FOK
                else:
                    now_done = filled.get(key)
                    if amount > (done if now_done is None else now_done):
                        return signed
                    continue
            self.out.add(h)
            self.dead.append(SkippedOrder(signed.hash, reason))
        return None

    def set_aside(self, signed: SignedOrder, reason: SkipReason) -> None:
        self.out.add(signed.hash)
        self.skipped.append(SkippedOrder(signed.hash, reason))

    def stp_cancel(self, signed: SignedOrder) -> None:
        self.out.add(signed.hash)
        self.cancelled.append(SkippedOrder(signed.hash, SkipReason.SELF_TRADE))

    def match_market(self, market: int) -> None:
        bids, asks = self.book.sides(market)
        params = self.chain.markets.get(market)
        bid_keys, ask_keys = bids.hashes(), asks.hashes()
        bid = self.next_live(bid_keys)
        ask = self.next_live(ask_keys)
        out, fills, filled = self.out, self.fills, self.filled
        while True:
            if bid is None or ask is None or bid.order.price < ask.order.price:
                return
            if params is None:  # every order of an unknown market is dead; next_live never returns one
                raise AssertionError("unreachable")
            if len(fills) >= self.cap:
                self.truncated = True
                return
            self.try_pair(bid, ask, params)
            # the same order again while it is live in this batch, else the next one of its side (its remaining was
            # > 0 when next_live returned it and only a fill of this batch, in ``filled``, can have changed it)
            b, a = bid.order, ask.order
            done = filled.get((b.trader, b.salt))
            if bid.hash in out or (done is not None and done >= b.amount):
                bid = self.next_live(bid_keys)
            done = filled.get((a.trader, a.salt))
            if ask.hash in out or (done is not None and done >= a.amount):
                ask = self.next_live(ask_keys)

    def try_pair(self, bid: SignedOrder, ask: SignedOrder, params: MarketParams) -> None:
        b, a = bid.order, ask.order
        if (b.created_at, bid.hash) < (a.created_at, ask.hash):
            maker, taker = bid, ask
        else:
            maker, taker = ask, bid
        m, t = maker.order, taker.order
        m_trader, t_trader = m.trader, t.trader
        if m_trader == t_trader:
            stp = self.limits.stp
            if stp != _CANCEL_TAKER:
                self.stp_cancel(maker)
            if stp != _CANCEL_MAKER:
                self.stp_cancel(taker)
            return
        m_flags, t_flags = int(m.flags), int(t.flags)
        if t_flags & _POST_ONLY:
            self.set_aside(taker, SkipReason.POST_ONLY_TAKER)
            return
        if m.trigger_kind or t.trigger_kind:
            oracle = params.oracle_price
            bad = [s for s in (maker, taker) if not trigger_holds(s.order, oracle)]
            if bad:
                for s in bad:
                    self.set_aside(s, SkipReason.TRIGGER)
                return
        # reduce-only: an order may take at most its trader's position, in the reducing direction
        market = m.market
        state = self.state
        m_state = state.get(m_trader)
        if m_state is None:
            m_state = state[m_trader] = load(self.chain.accounts.get(m_trader))
        t_state = state.get(t_trader)
        if t_state is None:
            t_state = state[t_trader] = load(self.chain.accounts.get(t_trader))
        m_balance, m_positions = m_state
        t_balance, t_positions = t_state
        m_pos, t_pos = m_positions.get(market), t_positions.get(market)
        m_size = 0 if m_pos is None else m_pos[0]
        t_size = 0 if t_pos is None else t_pos[0]
        m_key, t_key = (m_trader, m.salt), (t_trader, t.salt)
        filled, chain_filled = self.filled, self.chain_filled
        m_done, t_done = filled.get(m_key), filled.get(t_key)
        m_rem = m.amount - (chain_filled.get(m_key, 0) if m_done is None else m_done)
        t_rem = t.amount - (chain_filled.get(t_key, 0) if t_done is None else t_done)
        m_buy = m.side == _BUY
        m_avail = _available(m_flags, not m_buy, m_rem, m_size) if m_flags & _REDUCE_ONLY else m_rem
        t_avail = _available(t_flags, m_buy, t_rem, t_size) if t_flags & _REDUCE_ONLY else t_rem
        amount = m_avail if m_avail < t_avail else t_avail
        if amount == 0:
            for s, avail in ((maker, m_avail), (taker, t_avail)):
                if avail == 0:
                    self.set_aside(s, SkipReason.REDUCE_ONLY)
            return
        if (m_flags | t_flags) & _FOK:
            fok = [s for s in (maker, taker) if int(s.order.flags) & _FOK and amount != s.order.amount]
            if fok:
                for s in fok:
                    self.set_aside(s, SkipReason.FOK)
                return
        q_maker = amount if m_buy else -amount
        max_position = params.max_position
        after = m_size + q_maker
        if not (abs(after) <= max_position or abs(after) < abs(m_size)):  # margin.within_position_limit
            self.set_aside(maker, SkipReason.POSITION_LIMIT)
            return
        after = t_size - q_maker
        if not (abs(after) <= max_position or abs(after) < abs(t_size)):
            self.set_aside(taker, SkipReason.POSITION_LIMIT)
            return
        price, index, rows = m.price, params.funding_index, self.rows
        new_m = trade(m_balance, m_positions, rows, market, index, q_maker, price, params.maker_fee)
        if new_m is None:
            self.set_aside(maker, SkipReason.MARGIN_MAKER)
            return
        new_t = trade(t_balance, t_positions, rows, market, index, -q_maker, price, params.taker_fee)
        if new_t is None:
            self.set_aside(taker, SkipReason.MARGIN_TAKER)
            return
        # the positions dicts are the builder's own (fastmargin.load made them): update them in place
        _put(m_positions, market, new_m[1])
        _put(t_positions, market, new_t[1])
        state[m_trader] = (new_m[0], m_positions)
        state[t_trader] = (new_t[0], t_positions)
        touched = self.touched
        touched[m_trader] = None
        touched[t_trader] = None
        filled[m_key] = m.amount - m_rem + amount
        filled[t_key] = t.amount - t_rem + amount
        index_of, hashes = self.index, self.orders
        mi = index_of.get(maker.hash)
        if mi is None:
            mi = index_of[maker.hash] = len(hashes)
            hashes.append(maker.hash)
        ti = index_of.get(taker.hash)
        if ti is None:
            ti = index_of[taker.hash] = len(hashes)
            hashes.append(taker.hash)
        self.fills.append(Fill(mi, ti, amount))

    def build(self) -> Batch:
        for market in self.book.market_ids():
            self.match_market(market)
            if self.truncated:
                break
        state = self.state
        accounts = {trader: to_account(*state[trader]) for trader in self.touched}
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
            accounts_delta=accounts,
        )


def _put(positions: dict[int, PositionTuple], market: int, position: PositionTuple) -> None:
    """Set ``position`` in ``market`` (drop it if flat)."""
    if position[0]:
        positions[market] = position
    else:
        positions.pop(market, None)


def _available(flags: int, sells: bool, remaining: int, size: int) -> int:
    """How much an order may fill now: its remaining amount, and for reduce-only at most the position it reduces
    (resized as the position shrinks; zero if it would open, increase or flip)."""
    if not flags & _REDUCE_ONLY:
        return remaining
    if not sells:
        return min(remaining, -size) if size < 0 else 0
    return min(remaining, size) if size > 0 else 0


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
