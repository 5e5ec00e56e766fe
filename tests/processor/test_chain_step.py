"""The processor's chain-event step on synthetic watcher messages (binding event classes, real LevelDB)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bindings import exchange as ex
from relayer.processor import BatchUpdate, CancelUpdate, FillUpdate, Processor
from relayer.store import OrderRecord, Store
from relayer.types import Address, Hash32, MarketId, Order, OrderFlag, OrderState, Salt, Side, SignedOrder, TriggerKind
from relayer.watcher.events import ChainLog, ChainMessage, Finalized, Head, Included, Retracted

from .synth import (
    MARKET,
    ONE,
    PRICE,
    RELAYERS,
    TRADERS,
    USD,
    Exchange,
    block_ref,
    cursor_for,
    fresh_model,
    h32,
    included,
    scenario,
)

A, B, C = TRADERS[:3]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data") as s:
        yield s


def setup_block(xch: Exchange) -> Included:
    events = xch.setup() + [xch.deposit(t, 100_000 * USD) for t in TRADERS]
    return included(block_ref(1), events, tag=1)


def reopen(store: Store) -> tuple[Store, Processor]:
    path = store.path
    store.close()
    s = Store.open(path)
    return s, Processor.open(s)


def test_included_then_finalized(store: Store) -> None:
    p = Processor.open(store)
    assert (p.cursor, p.final.block) == (None, None)
    xch = Exchange()
    p.apply_chain(setup_block(xch))
    b2 = block_ref(2)
    events = xch.settle([(A, B, 0, 2 * ONE), (C, A, 1, ONE)], skipped=1)
    out = p.apply_chain(included(b2, events, tag=2))

    # The included view has the fills; the final view has nothing yet.
    inc, fin = p.chain_state(), p.final_chain_state()
    assert inc.markets[MARKET].oracle_price == PRICE and fin.markets == {}
    assert inc.account(B).position(MARKET).size == 2 * ONE and inc.account(A).position(MARKET).size == -3 * ONE
    assert p.included.last_seq == 1 and p.final.last_seq == 0
    assert p.included.relayer_set is not None and p.included.relayer_set.members == tuple(RELAYERS)
    assert p.cursor == cursor_for(b2, 2) and store.get_cursor() == p.cursor
    batches = [o for o in out if isinstance(o, BatchUpdate)]
    assert [(u.seq, u.state, u.block_number) for u in batches] == [(1, OrderState.INCLUDED, 2)]
    fills = [o for o in out if isinstance(o, FillUpdate)]
    assert len(fills) == 4 and all(f.state is OrderState.INCLUDED and f.final == 0 for f in fills)
    assert {f.included for f in fills} == {2 * ONE, ONE}
    rec = store.get_batch(1)
    assert rec is not None and rec.state is OrderState.INCLUDED and rec.block_number == 2
    assert [b.number for b in store.iter_blocks()] == [1, 2]

    p.apply_chain(Finalized(block_ref(1), cursor_for(b2, 3)))
    out = p.apply_chain(Finalized(b2, cursor_for(b2, 4)))
    assert p.final_chain_state() == p.chain_state() == xch.truth.chain_state()
    xch.truth.set_block(b2)
    assert p.final.state_hash() == p.included.state_hash() == xch.truth.state_hash()
    assert [(u.seq, u.state) for u in out if isinstance(u, BatchUpdate)] == [(1, OrderState.FINAL)]
    assert all(f.final == f.included for f in out if isinstance(f, FillUpdate))
    assert list(store.iter_blocks()) == []
    rec = store.get_batch(1)
    assert rec is not None and rec.state is OrderState.FINAL
    assert p.counters["fill_mismatch"] == 0 and sum(p.counters.values()) == 0


def test_retraction_restores_the_exact_previous_included_view(store: Store) -> None:
    p = Processor.open(store)
    xch = Exchange()
    p.apply_chain(setup_block(xch))
    p.apply_chain(Finalized(block_ref(1), cursor_for(block_ref(1), 2)))
    b2 = block_ref(2)
    p.apply_chain(included(b2, xch.settle([(A, B, 0, ONE)]), tag=3))
    before, included_before = p.state_hash(), p.included.state_hash()
    state_before = p.chain_state()

    b3 = block_ref(3)
    events = [
        *xch.settle([(B, C, 1, 3 * ONE)]),
        xch.emit(ex.OrderCancelledEvent(A, 7)),
        xch.emit(ex.CancelledUpToEvent(B, 50)),
        xch.emit(ex.OraclePriceEvent(MARKET, PRICE + 5 * USD)),
        xch.emit(ex.FundingUpdatedEvent(MARKET, 1000, 1000)),
        xch.deposit(C, 10 * USD),
    ]
    p.apply_chain(included(b3, events, tag=4))
    assert p.state_hash() != before and p.included.last_seq == 2
    assert p.chain_state().is_cancelled(A, Salt(7)) and p.chain_state().is_cancelled(B, Salt(49))

    out = p.apply_chain(Retracted(b3, cursor_for(b2, 5)))
    assert p.state_hash() == before and p.included.state_hash() == included_before
    assert p.chain_state() == state_before
    assert not p.chain_state().is_cancelled(A, Salt(7))
    assert {(u.seq, u.state) for u in out if isinstance(u, BatchUpdate)} == {(2, OrderState.REORGED)}
    reorged = [f for f in out if isinstance(f, FillUpdate)]
    assert reorged and all(f.state is OrderState.REORGED and f.included == 0 for f in reorged)
    assert {(c.trader, c.up_to) for c in out if isinstance(c, CancelUpdate)} == {(A, False), (B, True)}
    rec = store.get_batch(2)
    assert rec is not None and rec.state is OrderState.REORGED
    assert [b.number for b in store.iter_blocks()] == [2]
    assert store.get_cursor() == cursor_for(b2, 5)


def test_retract_and_replacement_equals_the_replacement_alone(tmp_path: Path) -> None:
    xch = Exchange()
    setup = setup_block(xch)
    after_setup = xch.truth.copy()
    b2 = block_ref(2)
    first = included(b2, xch.settle([(A, B, 0, ONE), (A, C, 0, ONE)]), tag=2)
    xch.truth = after_setup.copy()
    b2x = block_ref(2, fork=1)
    b3x = block_ref(3, fork=1, parent=b2x.hash)
    replacement = [
        included(b2x, [*xch.settle([(C, B, 1, 4 * ONE)]), xch.withdraw(A, 5 * USD)], tag=3),
        included(b3x, [xch.emit(ex.FundingUpdatedEvent(MARKET, -500, -500))], tag=4),
    ]
    with Store.open(tmp_path / "a") as sa, Store.open(tmp_path / "b") as sb:
        pa, pb = Processor.open(sa), Processor.open(sb)
        sequence: list[ChainMessage] = [setup, first, Retracted(b2, cursor_for(block_ref(1), 9)), *replacement]
        for msg in sequence:
            pa.apply_chain(msg)
        for msg in [setup, *replacement]:
            pb.apply_chain(msg)
        assert pa.state_hash() == pb.state_hash()
        assert pa.chain_state() == pb.chain_state() == xch.truth.chain_state()
        assert pa.included.last_batch_hash == pb.included.last_batch_hash
        batch_a, batch_b = sa.get_batch(1), sb.get_batch(1)
        assert batch_a is not None and batch_b is not None
        assert batch_a.hash == batch_b.hash and batch_a.state is OrderState.INCLUDED
        for msg in (Finalized(b2x, replacement[1].cursor), Finalized(b3x, replacement[1].cursor)):
            pa.apply_chain(msg)
            pb.apply_chain(msg)
        assert pa.state_hash() == pb.state_hash()
        assert list(sa.iter_chain_entries()) == list(sb.iter_chain_entries())


def test_undecodable_log_is_ignored_and_counted(tmp_path: Path) -> None:
    xch = Exchange()
    setup = setup_block(xch)
    b2 = block_ref(2)
    msg = included(b2, xch.settle([(A, B, 0, ONE)]), tag=2)
    junk = ChainLog(2, b2.hash, h32("junk"), 7, 99, None)
    with Store.open(tmp_path / "a") as sa, Store.open(tmp_path / "b") as sb:
        pa, pb = Processor.open(sa), Processor.open(sb)
        pa.apply_chain(setup)
        pb.apply_chain(setup)
        pa.apply_chain(replace(msg, logs=(*msg.logs, junk)))
        pb.apply_chain(msg)
        assert pa.counters["undecodable_log"] == 1 and pb.counters["undecodable_log"] == 0
        assert pa.state_hash() == pb.state_hash()


def test_duplicate_included_is_ignored(store: Store) -> None:
    p = Processor.open(store)
    xch = Exchange()
    setup = setup_block(xch)
    p.apply_chain(setup)
    b2 = block_ref(2)
    msg = included(b2, xch.settle([(A, B, 0, ONE)]), tag=2)
    p.apply_chain(msg)
    before, cursor = p.state_hash(), store.get_cursor()
    assert p.apply_chain(replace(msg, cursor=cursor_for(b2, 3))) == []
    assert p.apply_chain(setup) == []
    assert p.counters["duplicate_included"] == 2
    assert p.state_hash() == before and store.get_cursor() == cursor
    assert p.included.account(B).position(MARKET).size == ONE  # applied once, not twice


def test_fill_mismatch_is_counted_and_the_event_wins(store: Store) -> None:
    p = Processor.open(store)
    xch = Exchange()
    p.apply_chain(setup_block(xch))
    (fill, settled) = xch.settle([(A, B, 0, ONE)])
    wrong = replace(fill, taker_balance=fill.taker_balance - 1)
    p.apply_chain(included(block_ref(2), [wrong, settled], tag=2))
    assert p.counters["fill_mismatch"] == 1
    assert p.included.account(B).balance == fill.taker_balance - 1
    assert p.included.account(B).position(MARKET).cost == ONE * PRICE  # computed, not carried by the event


def test_head_moves_the_head_only(store: Store) -> None:
    p = Processor.open(store)
    xch = Exchange()
    p.apply_chain(setup_block(xch))
    before = p.state_hash()
    assert p.apply_chain(Head(block_ref(9), 8)) == []
    assert p.head == block_ref(9) and p.state_hash() == before


def order_record(trader: Address, salt: int, amount: int, order_hash: Hash32) -> OrderRecord:
    order = Order(
        trader=trader,
        market=MarketId(MARKET),
        side=Side.BUY,
        price=PRICE,
        amount=amount,
        salt=Salt(salt),
        created_at=1,
        expiry=2**32 - 1,
        flags=OrderFlag.NONE,
        trigger_kind=TriggerKind.NONE,
        trigger_price=0,
    )
    return OrderRecord(SignedOrder(order, b"\x01" * 64 + b"\x1b", order_hash), first_seen_ms=1)


def test_order_records_follow_included_final_and_reorged(store: Store) -> None:
    p = Processor.open(store)
    xch = Exchange()
    p.apply_chain(setup_block(xch))
    p.apply_chain(Finalized(block_ref(1), cursor_for(block_ref(1), 2)))
    b2 = block_ref(2)
    fill, settled = xch.settle([(A, B, 0, ONE)])
    taker = order_record(B, fill.taker_salt, 2 * ONE, Hash32(fill.taker_hash))
    maker = order_record(A, fill.maker_salt, ONE, Hash32(fill.maker_hash))
    p.writer.accept_order(taker)
    p.writer.accept_order(maker)
    p.apply_chain(included(b2, [fill, settled], tag=3))
    t, m = store.get_order(taker.signed.hash), store.get_order(maker.signed.hash)
    assert t is not None and m is not None
    assert t.state is OrderState.ACCEPTED and t.filled == ((OrderState.INCLUDED, ONE),) and t.updated_block == 2
    assert m.state is OrderState.INCLUDED and m.filled_in(OrderState.INCLUDED) == ONE

    p.apply_chain(Retracted(b2, cursor_for(block_ref(1), 4)))
    m = store.get_order(maker.signed.hash)
    assert m is not None and m.state is OrderState.ACCEPTED and m.filled == ()

    p.apply_chain(included(b2, [fill, settled], tag=5))
    p.apply_chain(Finalized(b2, cursor_for(b2, 6)))
    m, t = store.get_order(maker.signed.hash), store.get_order(taker.signed.hash)
    assert m is not None and m.state is OrderState.FINAL
    assert m.filled == ((OrderState.INCLUDED, ONE), (OrderState.FINAL, ONE))
    assert t is not None and t.state is OrderState.ACCEPTED and t.filled_in(OrderState.FINAL) == ONE


def test_worker_outcome_is_noted_on_the_batch_record(store: Store) -> None:
    p = Processor.open(store)
    xch = Exchange()
    p.apply_chain(setup_block(xch))
    events = xch.settle([(A, B, 0, ONE)])
    digest = Hash32(events[-1].batch_hash)
    rec = p.record_worker_outcome(1, "submitted", tx_hash=h32("tx"), batch_hash=digest)
    assert rec.state is OrderState.SUBMITTED and store.get_batch(1) == rec
    p.apply_chain(included(block_ref(2), events, tag=2))
    rec2 = store.get_batch(1)
    assert rec2 is not None and rec2.state is OrderState.INCLUDED
    assert rec2.worker_tx == h32("tx") and rec2.outcome == "submitted"
    rec3 = p.record_worker_outcome(1, "stale")
    assert rec3.state is OrderState.INCLUDED and rec3.worker_tx == h32("tx") and rec3.outcome == "stale"
    with pytest.raises(ValueError, match="not one of"):
        p.record_worker_outcome(1, "lost")
    with pytest.raises(ValueError, match="batch hash"):
        p.record_worker_outcome(5, "reverted")


def test_restart_gives_the_same_state_hash(store: Store, tmp_path: Path) -> None:
    sc = scenario(seed=11, blocks=40)
    p = Processor.open(store)
    half = len(sc.messages) // 2
    for msg in sc.messages[:half]:
        p.apply_chain(msg)
    assert p.pending, "the cut falls where some blocks are not final yet"
    h, cursor = p.state_hash(), p.cursor
    inc, fin = p.chain_state(), p.final_chain_state()
    store, p2 = reopen(store)
    try:
        assert p2.state_hash() == h and p2.cursor == cursor == store.get_cursor()
        assert p2.chain_state() == inc and p2.final_chain_state() == fin
        for msg in sc.messages[half:]:
            p2.apply_chain(msg)
        with Store.open(tmp_path / "fresh") as s3:
            p3 = Processor.open(s3)
            for msg in sc.messages:
                p3.apply_chain(msg)
            assert p2.state_hash() == p3.state_hash()
    finally:
        store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scenario_views_equal_a_fresh_model_of_the_canonical_chain(tmp_path: Path, seed: int) -> None:
    sc = scenario(seed=seed, blocks=60)
    assert any(isinstance(m, Retracted) for m in sc.messages)
    with Store.open(tmp_path / "data") as s:
        p = Processor.open(s)
        for msg in sc.messages:
            p.apply_chain(msg)
        truth = fresh_model(sc.canonical)
        assert p.included.state_hash() == p.final.state_hash() == truth.state_hash()
        assert p.chain_state() == truth.chain_state()
        assert p.counters["fill_mismatch"] == 0 and p.counters["bad_event"] == 0
        assert (
            p.counters["undecodable_log"]
            == sum(1 for m in sc.messages if isinstance(m, Included) for lg in m.logs if lg.event is None)
            - sum(  # duplicate deliveries are dropped before their logs are looked at
                1
                for i, m in enumerate(sc.messages)
                if isinstance(m, Included)
                and any(isinstance(x, Included) and x.block == m.block for x in sc.messages[:i])
                for lg in m.logs
                if lg.event is None
            )
        )
        # Every batch on the canonical chain is final in the store; the stored final model is the truth.
        seqs = [lg.event.seq for _, logs in sc.canonical for lg in logs if isinstance(lg.event, ex.BatchSettledEvent)]
        assert [b.seq for b in s.iter_batches() if b.state is OrderState.FINAL] == seqs
        assert list(s.iter_chain_entries()) == list(truth.entries())


def test_out_of_protocol_messages_are_counted_not_applied(tmp_path: Path) -> None:
    xch = Exchange()
    setup = setup_block(xch)
    after_setup = xch.truth.copy()
    b2 = block_ref(2)
    first = included(b2, xch.settle([(A, B, 0, ONE)]), tag=2)
    xch.truth = after_setup.copy()
    b2x = block_ref(2, fork=1)
    other = included(b2x, xch.settle([(C, B, 1, 2 * ONE)]), tag=3)
    with Store.open(tmp_path / "a") as sa, Store.open(tmp_path / "b") as sb:
        pa, pb = Processor.open(sa), Processor.open(sb)
        # A replacement block at a held height without a retraction first: the held one is dropped.
        for msg in (setup, first, other):
            pa.apply_chain(msg)
        for msg in (setup, other):
            pb.apply_chain(msg)
        assert pa.counters["implicit_retract"] == 1 and pa.state_hash() == pb.state_hash()
        before = pa.state_hash()
        # Finalizing a block other than the one held at its height: refused.
        assert pa.apply_chain(Finalized(b2, cursor_for(b2, 4))) == []
        assert pa.counters["final_conflict"] == 1 and pa.state_hash() == before
        pa.apply_chain(Finalized(b2x, cursor_for(b2x, 5)))
        # A final block cannot be retracted; an included block below the final one is stale.
        assert pa.apply_chain(Retracted(b2x, cursor_for(block_ref(1), 6))) == []
        assert pa.apply_chain(included(block_ref(1, fork=3), [], tag=7)) == []
        assert pa.counters["retract_final"] == 1 and pa.counters["stale_included"] == 1
        # Retracting a block never reported (it had no exchange logs): only the cursor moves.
        b3 = block_ref(3, parent=b2x.hash)
        h = pa.state_hash()
        pa.apply_chain(Retracted(b3, cursor_for(b2x, 8)))
        assert pa.counters["retract_empty"] == 1 and pa.state_hash() == h and sa.get_cursor() == cursor_for(b2x, 8)


def test_a_cursor_without_a_chain_model_is_dropped(store: Store) -> None:
    w = store.processor()
    b = w.batch()
    b.put_cursor(cursor_for(block_ref(5), 1))
    w.commit(b, sync=True)
    p = Processor.open(store, w)
    assert p.cursor is None and store.get_cursor() is None
