"""Order and cancel intake into the processor and the book it owns (real LevelDB, synthetic chain messages).

Also a runner for the kill -9 test: ``python -m tests.processor.test_intake DIR`` takes in one order at a time and
prints ``acked HASH`` after each intake call returned, until it is killed.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bindings import exchange as ex
from relayer import eip712
from relayer.chain.deploy import default_market_params
from relayer.keys import RelayerKey
from relayer.processor import IntakeResult, Processor
from relayer.store import Store
from relayer.types import (
    Address,
    Hash32,
    MarketId,
    Order,
    OrderFlag,
    Salt,
    Side,
    SignedCancel,
    SignedOrder,
    TriggerKind,
)
from relayer.watcher.events import Finalized, Head, Retracted

from .synth import ONE, PRICE, TRADERS, USD, Exchange, block_ref, cursor_for, h32, included

DOMAIN = eip712.Domain(31337, Address("0x5FbDB2315678afecb367f032d93F642f64180aa3"))
KEY_A = hashlib.sha256(b"intake trader a").digest()
KEY_B = hashlib.sha256(b"intake trader b").digest()
A = Address(RelayerKey(KEY_A).address)
B = Address(RelayerKey(KEY_B).address)
KEYS = {A: KEY_A, B: KEY_B}
T0 = 1_700_000_000  # block 1's time is T0 + 2 (synth.block_ref)
NOW_MS = T0 * 1000 + 500
MARKET = MarketId(1)
NO_PRICE_MARKET = MarketId(2)


def make(
    salt: int,
    *,
    trader: Address = A,
    side: Side = Side.BUY,
    price: int = PRICE,
    amount: int = ONE,
    created_at: int = T0,
    expiry: int = T0 + 86_400,
    market: int = MARKET,
    trigger: tuple[TriggerKind, int] = (TriggerKind.NONE, 0),
    key: bytes | None = None,
) -> SignedOrder:
    order = Order(
        trader=trader,
        market=MarketId(market),
        side=side,
        price=price,
        amount=amount,
        salt=Salt(salt),
        created_at=created_at,
        expiry=expiry,
        flags=OrderFlag.NONE,
        trigger_kind=trigger[0],
        trigger_price=trigger[1],
    )
    digest = eip712.order_digest(DOMAIN, order)
    return SignedOrder(order, eip712.sign_digest(key or KEYS[trader], digest), digest)


def cancel(salt: int, trader: Address = A, key: bytes | None = None) -> SignedCancel:
    digest = eip712.cancel_digest(DOMAIN, trader, salt)
    return SignedCancel(trader, Salt(salt), eip712.sign_digest(key or KEYS[trader], digest), digest)


def setup_events(xch: Exchange) -> list[object]:
    return [
        *xch.setup(),
        xch.emit(ex.MarketCreatedEvent(NO_PRICE_MARKET, default_market_params())),
        *(xch.deposit(t, 100_000 * USD) for t in (A, B, *TRADERS)),
    ]


def open_processor(store: Store) -> Processor:
    return Processor.open(store, domain=DOMAIN, created_at_window_s=2, ioc_window_s=60)


def started(store: Store) -> tuple[Processor, Exchange]:
    """A processor whose included view knows market 1 (with an oracle price) and market 2 (without)."""
    p = open_processor(store)
    xch = Exchange()
    p.apply_chain(included(block_ref(1), setup_events(xch), tag=1))
    return p, xch


def take(p: Processor, *orders: SignedOrder, source: str = "api", verified: bool = False) -> list[IntakeResult]:
    return p.intake_orders([(o, verified) for o in orders], now_ms=NOW_MS, source=source)


def reasons(results: list[IntakeResult]) -> list[str]:
    return [r.reason for r in results]


def reopen(store: Store) -> tuple[Store, Processor]:
    path = store.path
    store.close()
    s = Store.open(path)
    return s, open_processor(s)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data") as s:
        yield s


def test_accepted_orders_are_stored_and_in_the_book(store: Store) -> None:
    p, _ = started(store)
    bid, ask = make(1), make(2, trader=B, side=Side.SELL, price=PRICE + USD)
    stop = make(3, trigger=(TriggerKind.STOP_LOSS, PRICE + 100 * USD))  # buy stop above the price: parked
    res = take(p, bid, stop) + take(p, ask, source="gossip", verified=True)
    assert res == [
        IntakeResult(bid.hash, True, "accepted"),
        IntakeResult(stop.hash, True, "parked"),
        IntakeResult(ask.hash, True, "accepted"),
    ]
    for o in (bid, ask, stop):
        rec = store.get_order(o.hash)
        assert rec is not None and rec.signed == o and rec.first_seen_ms == NOW_MS
        assert p.first_seen(o.hash) == NOW_MS
    assert p.first_seen(h32("never seen")) is None
    assert set(p.book.orders) == {bid.hash, ask.hash} and set(p.book.parked) == {stop.hash}
    assert p.open_orders() == sorted([bid, ask, stop], key=lambda o: o.hash)
    assert p.counters["order_accepted"] == 2 and p.counters["order_parked"] == 1


def test_each_rejection_reason(store: Store) -> None:
    p, xch = started(store)
    p.apply_chain(included(block_ref(2), [xch.emit(ex.OrderCancelledEvent(A, 77))], tag=2))
    head_time = block_ref(2).timestamp
    good = make(1)
    assert reasons(take(p, good)) == ["accepted"]
    stored = len(list(store.iter_orders()))

    forged = make(2, key=KEY_B)  # A's order signed by B
    wrong_hash = replace(make(3), hash=h32("not the digest"))
    high_s = make(4)
    s = int.from_bytes(high_s.signature[32:64], "big")
    high_s = replace(high_s, signature=high_s.signature[:32] + (eip712.SECP256K1_N - s).to_bytes(32, "big") + b"\x1c")
    cases = {
        "bad_signature": [forged, high_s],
        "wrong_hash": [wrong_hash],
        "unknown_market": [make(5, market=9)],
        "no_oracle_price": [make(6, market=NO_PRICE_MARKET)],
        "expired": [make(7, created_at=T0 - 100, expiry=head_time)],
        "cancelled": [make(77)],  # cancelled on chain
        "bounds": [make(8, price=10**13)],  # above the market's max price
        "invalid_price": [make(9, price=2**63)],
        "created_at_window": [make(10, created_at=T0 - 3), make(11, created_at=T0 + 4)],
        "duplicate": [good],
    }
    for reason, orders in cases.items():
        res = take(p, *orders, source="gossip")
        assert reasons(res) == [reason] * len(orders), (reason, res)
        assert [r.hash for r in res] == [o.hash for o in orders] and not any(r.accepted for r in res)
        assert p.counters[f"order_{reason}"] == len(orders)
    assert len(list(store.iter_orders())) == stored  # nothing refused was written
    assert set(p.book.orders) == {good.hash}

    # the window's edges: createdAt is whole seconds, so T0 - 2 may be 2.5 s old at T0 + 0.5 s; T0 + 2 is 1.5 s ahead
    assert reasons(take(p, make(15, created_at=T0 - 2), make(16, created_at=T0 + 2), source="gossip")) == [
        "accepted",
        "accepted",
    ]
    # sync and proposals are exempt from the createdAt window; everything else still holds for them
    old = make(10, created_at=T0 - 3)
    assert reasons(take(p, old, source="sync")) == ["accepted"]
    assert reasons(take(p, make(12, created_at=T0 - 3_600), source="proposal")) == ["accepted"]
    assert reasons(take(p, make(77, created_at=T0 - 3), source="sync")) == ["cancelled"]
    # the same order twice in one call: the second is a duplicate
    twice = make(13)
    assert reasons(take(p, twice, twice)) == ["accepted", "duplicate"]
    with pytest.raises(ValueError, match="source"):
        take(p, make(14), source="carrier pigeon")


def test_amendments_follow_the_book_rules(store: Store) -> None:
    p, _ = started(store)
    v1 = make(1, amount=4 * ONE)
    assert reasons(take(p, v1)) == ["accepted"]
    later = NOW_MS + 60_000  # a minute later: v1's createdAt is outside the window now
    shrink = make(1, amount=3 * ONE)  # keeps v1's createdAt: exempt from the window
    grow = make(1, amount=5 * ONE)  # keeps v1's createdAt but grows: refused
    res = p.intake_orders([(grow, False), (shrink, False)], now_ms=later, source="gossip")
    assert reasons(res) == ["created_at_window", "accepted"]
    assert p.book.current(A, Salt(1)) == shrink.hash and v1.hash in p.book.superseded
    assert reasons(take(p, v1, source="sync")) == ["duplicate"]  # held (stored), whatever its state
    backdated = make(1, created_at=T0 - 1, amount=ONE)
    assert reasons(take(p, backdated, source="sync")) == ["amend_backdated"]


def test_signed_cancel_removes_the_order_and_binds_later_versions(store: Store) -> None:
    p, _ = started(store)
    o = make(1)
    take(p, o)
    c1, c2 = cancel(1), cancel(2)  # salt 2: no order seen yet
    forged = replace(cancel(3), signature=cancel(3, key=KEY_B).signature)
    wrong = replace(cancel(4), hash=h32("x"))
    res = p.intake_cancels([c1, c2, forged, wrong, c1], now_ms=NOW_MS, source="gossip")
    assert reasons(res) == ["accepted", "accepted", "bad_signature", "wrong_hash", "duplicate"]
    assert o.hash not in p.book.orders and p.book.current(A, Salt(1)) is None
    assert {r.cancel.hash for r in store.iter_cancels()} == {c1.hash, c2.hash}
    assert p.signed_cancels() == sorted([c1, c2], key=lambda c: c.hash)
    assert p.counters["cancel_accepted"] == 2

    newer = make(1, created_at=T0 + 1)  # a new version of the cancelled (trader, salt)
    assert reasons(take(p, newer, make(2))) == ["cancelled", "cancelled"]

    store, p = reopen(store)
    try:
        assert reasons(take(p, make(2, created_at=T0 + 1))) == ["cancelled"]
        assert len(p.book) == 0 and p.signed_cancels() == sorted([c1, c2], key=lambda c: c.hash)
    finally:
        store.close()


def test_reopen_rebuilds_the_same_book(store: Store) -> None:
    p, xch = started(store)
    rng = random.Random(5)
    for step in range(6):
        now = NOW_MS + step * 1_000
        batch = []
        for salt in rng.sample(range(1, 40), 8):
            trader = rng.choice([A, B])
            side = rng.choice([Side.BUY, Side.SELL])
            batch.append(make(salt, trader=trader, side=side, price=PRICE + rng.randint(-5, 5) * USD))
            if rng.random() < 0.3:  # a pure shrink of it in the same call
                batch.append(make(salt, trader=trader, side=side, price=batch[-1].order.price, amount=ONE // 2))
        batch.append(make(100 + step, trigger=(TriggerKind.STOP_LOSS, PRICE + (step % 3) * USD)))
        p.intake_orders([(o, False) for o in batch], now_ms=now, source="sync")
        p.intake_cancels([cancel(rng.randint(1, 40), rng.choice([A, B]))], now_ms=now, source="api")
    # one amendment a second later, an on-chain cancel and a cancelUpTo
    live = p.open_orders()[0].order
    assert reasons(take(p, make(live.salt, trader=live.trader, side=live.side, created_at=T0 + 1))) == ["accepted"]
    events = [xch.emit(ex.OrderCancelledEvent(B, 7)), xch.emit(ex.CancelledUpToEvent(A, 5))]
    p.apply_chain(included(block_ref(2), events, tag=2))
    before, orders, n = p.book_state_hash(), p.open_orders(), len(p.book)
    assert n >= 10 and p.book.superseded and p.book.parked

    store, p = reopen(store)
    try:
        assert p.book_state_hash() == before and p.open_orders() == orders
    finally:
        store.close()


def test_oracle_price_activates_a_parked_order(store: Store) -> None:
    p, xch = started(store)
    stop = make(1, trigger=(TriggerKind.STOP_LOSS, PRICE + 10 * USD))
    assert reasons(take(p, stop)) == ["parked"]
    other = make(2, trigger=(TriggerKind.STOP_LOSS, PRICE + 5 * USD))
    plain = make(3)
    take(p, other, plain)
    p.apply_chain(included(block_ref(2), [xch.emit(ex.OraclePriceEvent(MARKET, PRICE + 10 * USD))], tag=2))
    assert {stop.hash, other.hash, plain.hash} == set(p.book.orders) and not p.book.parked
    # the price falls back: an active conditional order whose trigger no longer holds is parked again (so the book
    # is the same whatever prices came in between: what a rebuild sees), and it can enter again
    p.apply_chain(included(block_ref(3), [xch.emit(ex.OraclePriceEvent(MARKET, PRICE + 7 * USD))], tag=3))
    assert set(p.book.parked) == {stop.hash} and set(p.book.orders) == {other.hash, plain.hash}
    p.apply_chain(included(block_ref(4), [xch.emit(ex.OraclePriceEvent(MARKET, PRICE + 20 * USD))], tag=4))
    assert not p.book.parked
    check_sides(p)
    before = p.book_state_hash()
    store, p = reopen(store)
    try:
        assert p.book_state_hash() == before
    finally:
        store.close()


def fill_event(xch: Exchange, seq: int, maker: SignedOrder, taker: Address, amount: int) -> list[object]:
    """A batch filling ``amount`` of ``maker`` (its trader and salt) against ``taker``."""
    xch.salt = maker.order.salt - 2  # Exchange.fill takes the next two salts: the maker gets maker.order.salt
    e = xch.fill(seq, 0, maker.order.trader, taker, 1 if maker.order.side == Side.BUY else 0, amount)
    settled = xch.emit(ex.BatchSettledEvent(seq, h32("batch", seq), 0, 1, 1, 0, TRADERS[0]))
    return [e, settled]


def test_filled_on_chain_leaves_the_book_and_a_retraction_brings_it_back(store: Store) -> None:
    p, xch = started(store)
    o = make(500, amount=2 * ONE)
    other = make(600, trader=B, side=Side.SELL, price=PRICE + USD)
    take(p, o, other)
    before = p.book_state_hash()

    b2 = block_ref(2)
    p.apply_chain(included(b2, fill_event(xch, 1, o, TRADERS[0], ONE), tag=2))  # half: stays
    assert o.hash in p.book.orders
    b3 = block_ref(3)
    p.apply_chain(included(b3, fill_event(xch, 2, o, TRADERS[0], 2 * ONE), tag=3))  # counter reaches the amount
    assert o.hash not in p.book.orders and p.book.current(A, Salt(500)) is None
    assert other.hash in p.book.orders
    assert reasons(take(p, o)) == ["duplicate"]
    assert reasons(take(p, make(500, amount=2 * ONE, created_at=T0 + 1))) == ["filled"]
    filled_hash = p.book_state_hash()

    store, p = reopen(store)
    try:
        assert p.book_state_hash() == filled_hash  # the same book from the store and the chain model
        p.apply_chain(Retracted(b3, cursor_for(b2, 4)))
        assert o.hash in p.book.orders  # the retraction took the fills away: it can fill again
        assert p.book_state_hash() == before
        p.apply_chain(Head(block_ref(2), 0))
        assert p.counters["order_filled"] == 0
    finally:
        store.close()


def test_a_version_older_than_a_filled_one_is_refused(store: Store) -> None:
    p, xch = started(store)
    o = make(500, amount=ONE, created_at=T0)
    take(p, o)
    p.apply_chain(included(block_ref(2), fill_event(xch, 1, o, TRADERS[0], ONE), tag=2))
    assert p.book.current(A, Salt(500)) is None
    older_bigger = make(500, amount=3 * ONE, created_at=T0 - 5)  # something would remain, but it is older
    newer_bigger = make(500, amount=3 * ONE, created_at=T0 + 1)  # a new version: 2 remain
    assert reasons(take(p, older_bigger, newer_bigger, source="sync")) == ["superseded", "accepted"]
    before = p.book_state_hash()
    store, p = reopen(store)
    try:
        assert p.book_state_hash() == before and p.book.current(A, Salt(500)) == newer_bigger.hash
    finally:
        store.close()


def check_sides(p: Processor) -> None:
    """Each side of each market walks its live orders once each, in priority order."""
    for market in p.book.markets:
        for side in p.book.sides(market):
            walked = list(side)
            assert walked == sorted(walked) and len(walked) == len(side) == len({k[2] for k in walked})
            assert all(p.book.orders[k[2]].order.market == market for k in walked)


@pytest.mark.parametrize("seed", [3, 21])
def test_the_book_always_equals_its_rebuild(store: Store, seed: int) -> None:
    """Random intake (orders, conditional ones too, amendments, signed cancels) interleaved with chain blocks
    (fills, on-chain cancels, cancelUpTo, oracle prices up and down), retractions and finality: after every step the
    book the processor keeps equals the book rebuilt from the store and the included view, and a reopened processor
    has it too."""
    p, xch = started(store)
    rng = random.Random(seed)
    chain = [block_ref(1)]
    truths = [xch.truth.copy()]
    final = 0
    fork = 0
    price = PRICE
    up_to = 0
    now = NOW_MS
    counts: dict[str, int] = {}
    for step in range(250):
        kind = rng.choice(["order", "order", "order", "amend", "cancel", "block", "block", "retract", "final"])
        now += rng.randint(0, 1_500)
        live = p.open_orders()
        if kind == "order":
            trader, salt = rng.choice([A, B]), rng.randint(1, 40)
            kinds = [TriggerKind.STOP_LOSS, TriggerKind.TAKE_PROFIT]
            trigger = (rng.choice(kinds), price + rng.randint(-3, 3) * USD) if rng.random() < 0.25 else None
            o = make(
                salt,
                trader=trader,
                side=rng.choice([Side.BUY, Side.SELL]),
                price=PRICE + rng.randint(-3, 3) * USD,
                amount=rng.randint(1, 4) * ONE,
                created_at=T0 + step,
                expiry=T0 + step + rng.choice([20, 60, 86_400]),
                trigger=trigger or (TriggerKind.NONE, 0),
            )
            take(p, o, source="sync")
        elif kind == "amend" and live:
            old = rng.choice(live).order
            shrink = rng.random() < 0.5 and old.amount > 1
            o = make(
                old.salt,
                trader=old.trader,
                side=old.side,
                price=old.price if shrink else old.price + USD,
                amount=old.amount // 2 if shrink else old.amount,
                created_at=old.created_at if shrink else T0 + step,
                expiry=old.expiry,
                trigger=(old.trigger_kind, old.trigger_price),
            )
            take(p, o, source="sync")
        elif kind == "cancel":
            p.intake_cancels([cancel(rng.randint(1, 40), rng.choice([A, B]))], now_ms=now, source="gossip")
        elif kind == "block":
            events: list[object] = []
            for _ in range(rng.randint(1, 3)):
                r = rng.random()
                if r < 0.5 and live:
                    o = rng.choice(live)
                    seq = xch.truth.last_seq + 1
                    events += fill_event(xch, seq, o, TRADERS[0], rng.choice([o.order.amount, o.order.amount // 2]))
                elif r < 0.65:
                    events.append(xch.emit(ex.OrderCancelledEvent(rng.choice([A, B]), rng.randint(1, 40))))
                elif r < 0.75:
                    up_to += rng.randint(0, 2)
                    events.append(xch.emit(ex.CancelledUpToEvent(rng.choice([A, B]), up_to)))
                else:
                    price += rng.randint(-2, 2) * USD
                    events.append(xch.emit(ex.OraclePriceEvent(MARKET, price)))
            fork += 1
            b = block_ref(chain[-1].number + 1, fork, chain[-1].hash)
            p.apply_chain(included(b, events, tag=step + 10))
            chain.append(b)
            truths.append(xch.truth.copy())
        elif kind == "retract" and len(chain) - 1 > final:
            gone = chain.pop()
            truths.pop()
            xch.truth = truths[-1].copy()
            p.apply_chain(Retracted(gone, cursor_for(chain[-1], step + 10)))
        elif kind == "final" and len(chain) - 1 > final:
            final += 1
            p.apply_chain(Finalized(chain[final], cursor_for(chain[-1], step + 10)))
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
        kept = p.book_state_hash()
        check_sides(p)
        p._rebuild_book()
        assert p.book_state_hash() == kept, f"step {step} ({kind}): the kept book differs from its rebuild"
    assert min(counts.values()) >= 10, counts
    assert p.book.superseded and p.book.cancelled and len(p.book) >= 5
    before = p.book_state_hash()
    store, p = reopen(store)
    try:
        assert p.book_state_hash() == before
    finally:
        store.close()


def test_expired_orders_leave_the_book(store: Store) -> None:
    p, _ = started(store)  # block 1 at T0 + 2
    short, long = make(1, expiry=T0 + 7), make(2, expiry=T0 + 86_400)
    take(p, short, long)
    p.apply_chain(included(block_ref(2), [], tag=2))  # T0 + 4
    assert short.hash in p.book.orders
    b3 = block_ref(3)  # T0 + 6
    p.apply_chain(included(b3, [], tag=3))
    p.apply_chain(included(block_ref(4), [], tag=4))  # T0 + 8: the contract refuses `short` from here on
    assert set(p.book.orders) == {long.hash}
    assert reasons(take(p, short, make(1, created_at=T0 + 1, expiry=T0 + 7), source="sync")) == [
        "duplicate",
        "expired",
    ]
    gone = p.book_state_hash()
    store, p = reopen(store)
    try:
        assert p.book_state_hash() == gone
        p.apply_chain(Retracted(block_ref(4), cursor_for(b3, 5)))  # the chain's time goes back to T0 + 6
        assert short.hash in p.book.orders
    finally:
        store.close()


def test_intake_without_a_domain_refuses(store: Store) -> None:
    p = Processor.open(store)
    with pytest.raises(RuntimeError, match="domain"):
        p.intake_orders([(make(1), False)], now_ms=NOW_MS, source="api")
    with pytest.raises(RuntimeError, match="domain"):
        p.intake_cancels([cancel(1)], now_ms=NOW_MS, source="api")


# ------------------------------------------------------------------------------------------------ kill -9


def runner(directory: str) -> None:
    store = Store.open(directory)
    p = open_processor(store)
    if p.cursor is None:
        p.apply_chain(included(block_ref(1), setup_events(Exchange()), tag=1))
    start = max((r.signed.order.salt for r in store.iter_orders()), default=0) + 1
    print("ready", flush=True)
    for salt in range(start, start + 100_000):
        o = make(salt, price=PRICE + (salt % 50) * USD)
        (res,) = p.intake_orders([(o, False)], now_ms=NOW_MS, source="api")
        assert res.accepted, res
        print(f"acked {o.hash.hex()}", flush=True)


def test_kill_minus_nine_right_after_intake_keeps_the_order(tmp_path: Path) -> None:
    from ..conftest import ROOT

    directory = tmp_path / "data"
    rng = random.Random(11)
    acked: list[str] = []
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.processor.test_intake", str(directory)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("ready"), proc.stderr.read()
        for _ in range(rng.randint(1, 40)):
            line = proc.stdout.readline()
            assert line.startswith("acked"), (line, proc.stderr.read())
            acked.append(line.split()[1])
        proc.send_signal(signal.SIGKILL)  # right after an intake call returned (or while the next one runs)
        proc.wait(timeout=10)
        acked += [line.split()[1] for line in proc.stdout.readlines() if line.startswith("acked")]
        proc.stdout.close()
        proc.stderr.close()

        with Store.open(directory) as s:
            p = open_processor(s)
            for h in acked:
                rec = s.get_order(bytes.fromhex(h))
                assert rec is not None, f"acknowledged order {h} lost"
                assert p.book.get(Hash32(bytes.fromhex(h))) is not None
    assert len(acked) >= 3


if __name__ == "__main__":
    runner(sys.argv[1])
