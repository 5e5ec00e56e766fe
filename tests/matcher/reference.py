"""A deliberately naive reference matcher: plain lists, a full re-sort for every fill, no incremental state.

It restates the matching rule of docs/matcher.md from scratch (only relayer.margin is shared, as the contract's
math) so the fast matcher can be compared with it fill for fill.
"""

from __future__ import annotations

from relayer.margin import Account, MarginError, apply_trade, is_healthy_after_fill
from relayer.matcher.model import ChainState, Limits, SkipReason, StpMode
from relayer.types import Order, OrderFlag, Side, SignedOrder, TriggerKind

RefFill = tuple[bytes, bytes, int]


def _trigger_ok(o: Order, p: int) -> bool:
    if o.trigger_kind == TriggerKind.NONE:
        return True
    if o.trigger_kind == TriggerKind.STOP_LOSS:
        return p >= o.trigger_price if o.side == Side.BUY else p <= o.trigger_price
    return p <= o.trigger_price if o.side == Side.BUY else p >= o.trigger_price


def _dead(o: Order, chain: ChainState, deadline: int) -> bool:
    m = chain.markets.get(o.market)
    if m is None or o.expiry <= deadline:
        return True
    if (o.trader, o.salt) in chain.cancelled or o.salt < chain.cancelled_up_to.get(o.trader, 0):
        return True
    if int(o.flags) & ~15 or o.trigger_kind > 2:
        return True
    if (o.trigger_kind == 0) != (o.trigger_price == 0) or o.trigger_price > m.max_price:
        return True
    if not (0 < o.price <= m.max_price and o.price % m.tick == 0 and m.min_size <= o.amount <= m.max_order_size):
        return True
    filled = chain.filled.get((o.trader, o.salt), 0)
    return filled >= o.amount or (OrderFlag.FOK in o.flags and filled > 0)


def reference_match(
    orders: list[SignedOrder], chain: ChainState, now: int, limits: Limits
) -> tuple[list[RefFill], list[tuple[bytes, SkipReason]], list[bytes]]:
    """Fills (maker hash, taker hash, amount), set-aside orders with reasons, and STP-cancelled hashes."""
    deadline = now + limits.deadline_delta
    cap = limits.fill_cap
    fills: list[RefFill] = []
    skipped: list[tuple[bytes, SkipReason]] = []
    cancelled: list[bytes] = []
    out: set[bytes] = set()
    filled = dict(chain.filled)
    accounts: dict[str, Account] = dict(chain.accounts)

    def rem(o: Order) -> int:
        return o.amount - filled.get((o.trader, o.salt), 0)

    def acct(t: str) -> Account:
        return accounts.get(t, Account(0))

    for market in sorted({s.order.market for s in orders}):
        while True:
            live = [
                s
                for s in orders
                if s.order.market == market
                and s.hash not in out
                and not _dead(s.order, chain, deadline)
                and rem(s.order) > 0
            ]
            bids = sorted(
                (s for s in live if s.order.side == Side.BUY),
                key=lambda s: (-s.order.price, s.order.created_at, s.hash),
            )
            asks = sorted(
                (s for s in live if s.order.side == Side.SELL),
                key=lambda s: (s.order.price, s.order.created_at, s.hash),
            )
            if not bids or not asks or bids[0].order.price < asks[0].order.price:
                break
            if len(fills) >= cap:
                return fills, skipped, cancelled
            bid, ask = bids[0], asks[0]
            maker, taker = (
                (bid, ask) if (bid.order.created_at, bid.hash) < (ask.order.created_at, ask.hash) else (ask, bid)
            )
            m, t = maker.order, taker.order
            if m.trader == t.trader:
                if limits.stp != StpMode.CANCEL_TAKER:
                    out.add(maker.hash)
                    cancelled.append(maker.hash)
                if limits.stp != StpMode.CANCEL_MAKER:
                    out.add(taker.hash)
                    cancelled.append(taker.hash)
                continue
            if OrderFlag.POST_ONLY in t.flags:
                out.add(taker.hash)
                skipped.append((taker.hash, SkipReason.POST_ONLY_TAKER))
                continue
            params = chain.markets[market]
            bad_trigger = [s for s in (maker, taker) if not _trigger_ok(s.order, params.oracle_price)]
            for s in bad_trigger:
                out.add(s.hash)
                skipped.append((s.hash, SkipReason.TRIGGER))
            if bad_trigger:
                continue
            avail = {}
            for s in (maker, taker):
                o = s.order
                size = acct(o.trader).position(market).size
                a = rem(o)
                if OrderFlag.REDUCE_ONLY in o.flags:
                    reduces = (o.side == Side.BUY and size < 0) or (o.side == Side.SELL and size > 0)
                    a = min(a, abs(size)) if reduces else 0
                avail[s.hash] = a
            amount = min(avail.values())
            if amount == 0:
                for s in (maker, taker):
                    if avail[s.hash] == 0:
                        out.add(s.hash)
                        skipped.append((s.hash, SkipReason.REDUCE_ONLY))
                continue
            bad_fok = [s for s in (maker, taker) if OrderFlag.FOK in s.order.flags and s.order.amount != amount]
            for s in bad_fok:
                out.add(s.hash)
                skipped.append((s.hash, SkipReason.FOK))
            if bad_fok:
                continue
            q = amount if m.side == Side.BUY else -amount
            ok = True
            for s, signed_q, reason in ((maker, q, SkipReason.POSITION_LIMIT), (taker, -q, SkipReason.POSITION_LIMIT)):
                before = acct(s.order.trader).position(market).size
                after = before + signed_q
                if not (abs(after) <= params.max_position or abs(after) < abs(before)):
                    out.add(s.hash)
                    skipped.append((s.hash, reason))
                    ok = False
                    break
            if not ok:
                continue
            new = {}
            for s, signed_q, rate, reason in (
                (maker, q, params.maker_fee, SkipReason.MARGIN_MAKER),
                (taker, -q, params.taker_fee, SkipReason.MARGIN_TAKER),
            ):
                a0 = acct(s.order.trader)
                before = a0.position(market).size
                try:
                    a1 = apply_trade(a0, market, params.funding_index, signed_q, m.price, rate).account
                    healthy = is_healthy_after_fill(a1, chain.markets, market, before)
                except MarginError:
                    healthy = False
                if not healthy:
                    out.add(s.hash)
                    skipped.append((s.hash, reason))
                    ok = False
                    break
                new[s.order.trader] = a1
            if not ok:
                continue
            accounts.update(new)
            for o in (m, t):
                filled[(o.trader, o.salt)] = filled.get((o.trader, o.salt), 0) + amount
            fills.append((maker.hash, taker.hash, amount))
    return fills, skipped, cancelled
