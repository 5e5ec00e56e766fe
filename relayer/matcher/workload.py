"""Seeded workloads for the matcher's tests and benchmark (benchmarks/bench_matcher.py).

:func:`generate` makes a reproducible list of operations: adds of resting orders on either side of a mid price,
cancels of random earlier orders, and crossing orders each followed by :class:`BuildBatch`. With ``rich=True`` it
also uses every flag, triggers, oracle moves, cancel-up-to, amendments, short expiries, back-dated createdAt (so the
book really is crossed between batches), self-trades and under-funded traders. :func:`run` drives a book and a chain
state through them the way a node does: each batch settles exactly as simulated (its ``post_state``) and is retired.
Pure: no I/O, no clock (``random.Random(seed)`` only).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from relayer.eip712 import Domain, order_digest, to_checksum_address
from relayer.hashing import keccak
from relayer.margin import SIZE_ONE, Account, MarketParams
from relayer.matcher.batch import build_batch
from relayer.matcher.book import AddOrder, Book, Cancel, CancelUpTo, Event, OracleUpdate, Retire
from relayer.matcher.model import Batch, ChainState, Limits
from relayer.types import Address, MarketId, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind

__all__ = [
    "DOMAIN",
    "IOC_WINDOW",
    "BuildBatch",
    "Op",
    "Workload",
    "default_market",
    "generate",
    "run",
    "trader_address",
]

DOMAIN = Domain(chain_id=31337, verifying_contract=Address("0x5FbDB2315678afecb367f032d93F642f64180aa3"))
IOC_WINDOW = 60
_DUMMY_SIGNATURE = bytes(64) + b"\x1b"  # the matcher never checks signatures; intake does
MID = 2_000 * 10**6  # 2,000 collateral units (6 decimals) per base unit
TICK = 10**6


@dataclass(frozen=True, slots=True)
class BuildBatch:
    """Build a batch at chain time ``now``, settle it as simulated and retire it."""

    now: int


Op = Event | BuildBatch


@dataclass(slots=True)
class Workload:
    ops: list[Op]
    chain: ChainState
    limits: Limits
    start: int
    orders: list[SignedOrder] = field(default_factory=list)


def trader_address(i: int) -> Address:
    return to_checksum_address(keccak(b"trader" + i.to_bytes(4, "big"))[:20])


def default_market(oracle_price: int = MID) -> MarketParams:
    return MarketParams(
        imr=100_000,
        mmr=50_000,
        maker_fee=200,
        taker_fee=500,
        liq_penalty=10_000,
        oracle_price=oracle_price,
        funding_index=0,
        tick=TICK,
        min_size=1,
        max_order_size=10**12,
        max_position=10**13,
        max_price=10**15,
        max_funding_delta=10**9,
    )


def sign(order: Order) -> SignedOrder:
    return SignedOrder(order=order, signature=_DUMMY_SIGNATURE, hash=order_digest(DOMAIN, order))


def generate(
    seed: int,
    n_ops: int,
    *,
    traders: int = 200,
    markets: int = 1,
    rich: bool = False,
    mix: tuple[int, int, int] = (55, 30, 15),
    round_ops: int | None = None,
) -> Workload:
    """``n_ops`` operations: ``mix`` percent adds, cancels and crossing orders. With ``round_ops`` None each crossing
    order is followed by a :class:`BuildBatch`; with ``round_ops = k`` a :class:`BuildBatch` follows every ``k``
    operations instead, as a node builds one batch per quorum round. :class:`BuildBatch` is not an operation."""
    rng = random.Random(seed)  # noqa: S311 -- a reproducible workload, not a secret
    start = 1_800_000_000
    now = start
    addrs = [trader_address(i) for i in range(traders)]
    funded = 10**12 * SIZE_ONE  # a million collateral units each
    accounts = {a: Account(funded if not rich or i % 7 else 10**4 * SIZE_ONE) for i, a in enumerate(addrs)}
    params = {m: default_market() for m in range(markets)}
    chain = ChainState(markets=params, accounts=accounts)
    limits = Limits(deadline_delta=10, max_fills=200 if not rich else rng.choice((3, 50, 200)))
    salts = [0] * traders
    live: list[Order] = []
    ops: list[Op] = []
    orders: list[SignedOrder] = []
    add_pct, cancel_pct, _ = mix

    def make(side: Side, price: int, crossing: bool) -> Order:
        i = rng.randrange(traders)
        salts[i] += 1
        flags = OrderFlag.NONE
        kind, trigger = TriggerKind.NONE, 0
        created = now
        expiry = now + 3600
        amount = rng.randint(1, 10) * 10**7
        if rich:
            r = rng.random()
            if r < 0.08:
                flags |= OrderFlag.POST_ONLY
            elif r < 0.16:
                flags |= OrderFlag.REDUCE_ONLY
            elif r < 0.24:
                flags |= OrderFlag.FOK
            elif r < 0.30:
                flags |= OrderFlag.IOC
            elif r < 0.36:
                kind = rng.choice((TriggerKind.STOP_LOSS, TriggerKind.TAKE_PROFIT))
                trigger = MID + rng.randint(-5, 5) * TICK
            created = now - rng.randint(0, 20)
            expiry = created + (IOC_WINDOW if OrderFlag.IOC in flags else rng.choice((15, 30, 3600)))
            if rng.random() < 0.1:
                amount = rng.randint(1, 3)  # dust
        return Order(
            trader=addrs[i],
            market=MarketId(rng.randrange(markets)),
            side=side,
            price=price,
            amount=amount,
            salt=Salt(salts[i]),
            created_at=created,
            expiry=expiry,
            flags=flags,
            trigger_kind=kind,
            trigger_price=trigger,
        )

    def add(order: Order) -> None:
        signed = sign(order)
        live.append(order)
        orders.append(signed)
        ops.append(AddOrder(signed))

    for step in range(n_ops):
        now += rng.randint(0, 1)
        r = rng.randrange(100)
        side = Side(rng.randrange(2))
        if r < add_pct:
            offset = rng.randint(1, 50) * TICK
            add(make(side, MID - offset if side == Side.BUY else MID + offset, False))
        elif r < add_pct + cancel_pct and live:
            victim = live[rng.randrange(len(live))]
            ops.append(Cancel(victim.trader, victim.salt))
        else:
            depth = rng.randint(0, 30) * TICK
            add(make(side, MID + depth if side == Side.BUY else MID - depth, True))
            if round_ops is None:
                ops.append(BuildBatch(now))
        if rich:
            x = rng.random()
            if x < 0.01:
                ops.append(OracleUpdate(MarketId(rng.randrange(markets)), MID + rng.randint(-6, 6) * TICK))
            elif x < 0.015:
                i = rng.randrange(traders)
                ops.append(CancelUpTo(addrs[i], Salt(max(0, salts[i] - rng.randint(0, 3)))))
            elif x < 0.04 and live:
                old = live[rng.randrange(len(live))]  # an amendment: shrink keeping createdAt, or a new version
                if rng.random() < 0.5:
                    new = replace(old, amount=max(1, old.amount // 2))
                else:
                    new = replace(old, created_at=old.created_at + 1, price=old.price + TICK)
                add(new)
        if round_ops is not None and (step + 1) % round_ops == 0:
            ops.append(BuildBatch(now))
    return Workload(ops=ops, chain=chain, limits=limits, start=start, orders=orders)


def run(workload: Workload, book: Book | None = None) -> tuple[Book, ChainState, list[Batch]]:
    """Drive a fresh book (``Book(IOC_WINDOW)``) through ``workload``: every batch settles as simulated.

    Like a node's watcher, the driver owns the chain state's maps and applies each batch's deltas to them in place
    (the matcher itself never mutates them)."""
    book = Book(IOC_WINDOW) if book is None else book
    filled = dict(workload.chain.filled)
    accounts = dict(workload.chain.accounts)
    chain = replace(workload.chain, filled=filled, accounts=accounts)
    batches: list[Batch] = []
    for op in workload.ops:
        if isinstance(op, BuildBatch):
            batch = build_batch(book, chain, op.now, workload.limits)
            filled.update(batch.filled_delta)
            accounts.update(batch.accounts_delta)
            book.apply(Retire(batch))
            batches.append(batch)
        else:
            if isinstance(op, OracleUpdate):  # the confirmed oracle price is chain state too
                markets = dict(chain.markets)
                markets[op.market] = replace(markets[op.market], oracle_price=op.price)
                chain = replace(chain, markets=markets)
            book.apply(op)
    return book, replace(chain, filled=dict(filled), accounts=dict(accounts)), batches
