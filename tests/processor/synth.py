"""Synthetic watcher messages built from the binding event classes: a small exchange whose events are consistent
(fills computed with relayer.margin, as the contract does), blocks with hashes per fork, and a seeded scenario with
reorgs, finalization at a depth, duplicates and undecodable logs."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address

from bindings import exchange as ex
from relayer import margin
from relayer.chain.deploy import default_market_params
from relayer.chainstate import ChainModel
from relayer.store.records import ChainCursor
from relayer.types import Address, Hash32, Salt
from relayer.watcher.events import BlockRef, ChainLog, ChainMessage, Finalized, Head, Included, Retracted

MARKET = 1
PRICE = 2_000 * 10**6
ONE = margin.SIZE_ONE
USD = 10**6


def h32(*parts: object) -> Hash32:
    return Hash32(hashlib.sha256(repr(parts).encode()).digest())


def addr(label: str) -> Address:
    return Address(to_checksum_address(hashlib.sha256(label.encode()).digest()[:20]))


TRADERS = [addr(f"trader {i}") for i in range(4)]
RELAYERS = sorted((addr(f"relayer {i}") for i in range(3)), key=lambda a: int(a, 16))


def block_ref(number: int, fork: int = 0, parent: Hash32 | None = None) -> BlockRef:
    return BlockRef(
        number, h32("block", number, fork), parent or h32("block", number - 1, 0), 1_700_000_000 + 2 * number
    )


def cursor_for(block: BlockRef, tag: int = 0) -> ChainCursor:
    """A cursor at ``block``; ``tag`` (a message index) makes every message's cursor unique."""
    return ChainCursor(block.number, block.hash, ((tag, h32("msg", tag)),))


def logs_of(block: BlockRef, events: list[Any]) -> tuple[ChainLog, ...]:
    return tuple(ChainLog(block.number, block.hash, h32("tx", block.hash, i), i, i, e) for i, e in enumerate(events))


def included(block: BlockRef, events: list[Any], tag: int = 0) -> Included:
    return Included(block, logs_of(block, events), cursor_for(block, tag))


class Exchange:
    """Produces consistent events: every event is applied to a truth model as it is made."""

    def __init__(self) -> None:
        self.truth = ChainModel()
        self.salt = 100

    def emit(self, e: Any) -> Any:
        self.truth.apply_event(e)
        return e

    def setup(self) -> list[Any]:
        return [
            self.emit(ex.RelayersUpdatedEvent(1, tuple(RELAYERS), 2)),
            self.emit(ex.MarketCreatedEvent(MARKET, default_market_params())),
            self.emit(ex.OraclePriceEvent(MARKET, PRICE)),
        ]

    def deposit(self, trader: Address, amount: int) -> Any:
        balance = self.truth.account(trader).balance + amount * ONE
        return self.emit(ex.DepositedEvent(trader, amount, balance))

    def withdraw(self, trader: Address, amount: int) -> Any:
        balance = self.truth.account(trader).balance - amount * ONE
        return self.emit(ex.WithdrawnEvent(trader, amount, balance))

    def fill(
        self, seq: int, index: int, maker: Address, taker: Address, taker_side: int, amount: int, price: int = PRICE
    ) -> Any:
        info = self.truth.markets[MARKET]
        fi = info.funding_index
        q = amount if taker_side == 0 else -amount
        mt = margin.apply_trade(self.truth.account(maker), MARKET, fi, -q, price, info.params.maker_fee)
        tt = margin.apply_trade(self.truth.account(taker), MARKET, fi, q, price, info.params.taker_fee)
        self.salt += 2
        ms, ts = Salt(self.salt), Salt(self.salt + 1)
        return self.emit(
            ex.OrderFilledEvent(
                seq=seq,
                maker=maker,
                taker=taker,
                fill_index=index,
                maker_hash=h32("order", maker, ms),
                taker_hash=h32("order", taker, ts),
                maker_salt=ms,
                taker_salt=ts,
                market=MARKET,
                taker_side=taker_side,
                price=price,
                amount=amount,
                maker_filled=amount,
                taker_filled=amount,
                maker_fee=mt.fee,
                taker_fee=tt.fee,
                maker_balance=mt.account.balance,
                taker_balance=tt.account.balance,
                maker_size=mt.account.position(MARKET).size,
                taker_size=tt.account.position(MARKET).size,
            )
        )

    def settle(self, fills: list[tuple[Address, Address, int, int]], skipped: int = 0) -> list[Any]:
        """One batch: its fills (maker, taker, taker side, amount), ``skipped`` skipped fills, then BatchSettled."""
        seq = self.truth.last_seq + 1
        events = [self.fill(seq, i, m, t, side, a) for i, (m, t, side, a) in enumerate(fills)]
        for j in range(skipped):
            events.append(
                self.emit(ex.FillSkippedEvent(seq, len(fills) + j, h32("skip", seq, j), h32("skip2", seq, j), 15))
            )
        events.append(
            self.emit(ex.BatchSettledEvent(seq, h32("batch", seq, self.salt), 0, 1, len(fills), skipped, RELAYERS[0]))
        )
        return events


@dataclass
class Scenario:
    messages: list[ChainMessage] = field(default_factory=list)
    canonical: list[tuple[BlockRef, tuple[ChainLog, ...]]] = field(default_factory=list)
    finalized: int = 0  # number of canonical blocks final


def scenario(seed: int, blocks: int = 60, depth: int = 3) -> Scenario:
    """A watcher's message stream over ``blocks`` canonical blocks with random reorgs (1-2 blocks deep, always
    above the final block), Finalized at ``depth``, the odd duplicate Included, undecodable log and Head."""
    rng = random.Random(seed)
    xch = Exchange()
    sc = Scenario()
    chain: list[tuple[BlockRef, tuple[ChainLog, ...], ChainModel]] = []  # canonical, with the truth after each
    final_n = 0
    fork = 0

    def send(msg: ChainMessage) -> None:
        sc.messages.append(msg)

    def tag() -> int:
        return len(sc.messages)

    while len(chain) < blocks:
        number = len(chain) + 1
        parent = chain[-1][0].hash if chain else h32("genesis")
        block = BlockRef(number, h32("block", number, fork), parent, 1_700_000_000 + 2 * number)
        if number == 1:
            events = xch.setup() + [xch.deposit(t, 1_000_000 * USD) for t in TRADERS]
        else:
            events = []
            for _ in range(rng.randint(0, 3)):
                kind = rng.random()
                a, c = rng.sample(TRADERS, 2)
                if kind < 0.4:
                    fills = [(a, c, rng.randint(0, 1), rng.randint(1, 5) * ONE // 10) for _ in range(rng.randint(1, 3))]
                    events += xch.settle(fills, skipped=rng.randint(0, 1))
                elif kind < 0.5:
                    events.append(xch.deposit(a, rng.randint(1, 1000) * USD))
                elif kind < 0.6:
                    events.append(xch.withdraw(a, rng.randint(1, 100) * USD))
                elif kind < 0.7:
                    events.append(xch.emit(ex.OrderCancelledEvent(a, rng.randint(1, 500))))
                elif kind < 0.75:
                    current = xch.truth.cancelled_up_to.get(a, 0)
                    events.append(xch.emit(ex.CancelledUpToEvent(a, current + rng.randint(1, 20))))
                elif kind < 0.9:
                    price = PRICE + rng.randint(-100, 100) * USD
                    events.append(xch.emit(ex.OraclePriceEvent(MARKET, price)))
                else:
                    delta = rng.randint(-1000, 1000) * 1000
                    index = xch.truth.markets[MARKET].funding_index + delta
                    events.append(xch.emit(ex.FundingUpdatedEvent(MARKET, delta, index)))
        logs = logs_of(block, events)
        if rng.random() < 0.05:  # an undecodable log rides along (the processor skips it)
            logs += (ChainLog(block.number, block.hash, h32("junk", number), 99, 99, None),)
        chain.append((block, logs, xch.truth.copy()))
        send(Included(block, logs, cursor_for(block, tag())))
        if rng.random() < 0.05:
            send(Included(block, logs, cursor_for(block, tag())))  # a duplicate delivery
        if rng.random() < 0.1:
            send(Head(block, 0))
        # finality
        while len(chain) - final_n > depth:
            b = chain[final_n][0]
            final_n += 1
            send(Finalized(b, cursor_for(chain[-1][0], tag())))
        # a reorg of the non-final tip
        if len(chain) < blocks and rng.random() < 0.12 and len(chain) - final_n >= 1 and len(chain) > 1:
            k = rng.randint(1, min(2, len(chain) - final_n, len(chain) - 1))
            for _ in range(k):
                gone, _, _ = chain.pop()
                top = chain[-1][0]
                send(Retracted(gone, cursor_for(top, tag())))
            fork += 1
            xch.truth = chain[-1][2].copy()
    while final_n < len(chain):
        b = chain[final_n][0]
        final_n += 1
        send(Finalized(b, cursor_for(chain[-1][0], tag())))
    sc.canonical = [(b, logs) for b, logs, _ in chain]
    sc.finalized = final_n
    return sc


def fresh_model(blocks: list[tuple[BlockRef, tuple[ChainLog, ...]]]) -> ChainModel:
    m = ChainModel()
    for b, logs in blocks:
        m.apply_block(b, logs)
    return m
