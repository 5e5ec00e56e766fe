"""build_batch against the naive reference matcher on many seeded random workloads, and the matcher's invariants
as hypothesis properties (same events -> same outputs and state hash, no overfill, balanced positions)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from relayer.matcher import Batch, Book, ChainState, Limits, Retire, StpMode, build_batch, dead_reason, remaining
from relayer.matcher.workload import IOC_WINDOW, BuildBatch, OracleUpdate, Workload, generate, run
from relayer.types import Side
from tests.matcher.reference import reference_match


def _drive(workload: Workload, check: bool) -> tuple[Book, list[Batch], list[object]]:
    """Run the workload; with ``check``, compare every batch with the reference and assert the invariants."""
    book = Book(IOC_WINDOW)
    chain = workload.chain
    batches: list[Batch] = []
    outputs: list[object] = []
    for op in workload.ops:
        if isinstance(op, BuildBatch):
            batch = build_batch(book, chain, op.now, workload.limits)
            if check:
                _check(book, chain, op.now, workload.limits, batch)
            chain = batch.post_state
            outputs.append(book.apply(Retire(batch)))
            batches.append(batch)
            if check and not batch.truncated:
                _check_uncrossed(book, chain, op.now + workload.limits.deadline_delta, batch)
        else:
            if isinstance(op, OracleUpdate):
                markets = dict(chain.markets)
                markets[op.market] = replace(markets[op.market], oracle_price=op.price)
                chain = replace(chain, markets=markets)
            outputs.append(book.apply(op))
    return book, batches, outputs


def _check(book: Book, chain: ChainState, now: int, limits: Limits, batch: Batch) -> None:
    ref_fills, ref_skipped, ref_cancelled = reference_match(list(book.orders.values()), chain, now, limits)
    assert batch.fill_hashes() == ref_fills
    assert [(s.hash, s.reason) for s in batch.skipped] == ref_skipped
    assert [c.hash for c in batch.cancelled] == ref_cancelled
    # no fill beyond remaining; filled + remaining == amount; longs and shorts balance
    per_key: dict[tuple[str, int], int] = defaultdict(int)
    for maker, taker, amount in batch.fill_hashes():
        assert amount > 0
        for h in (maker, taker):
            per_key[book.orders[h].order.key] += amount
    post = batch.post_state
    for h in batch.orders:
        o = book.orders[h].order
        assert per_key[o.key] <= remaining(o, chain)
        assert post.filled[o.key] == chain.filled.get(o.key, 0) + per_key[o.key]
        assert post.filled[o.key] + remaining(o, post) == o.amount
        assert remaining(o, post) >= 0
    for market in chain.markets:
        assert sum(a.position(market).size for a in post.accounts.values()) == 0


def _check_uncrossed(book: Book, chain: ChainState, deadline: int, batch: Batch) -> None:
    """After the batch settles, no two live orders cross unless one was set aside with a reason."""
    aside = {s.hash for s in batch.skipped}
    for market in book.market_ids():
        live = [
            s.order
            for s in book.orders.values()
            if s.order.market == market
            and s.hash not in aside
            and dead_reason(s.order, chain, deadline) is None
            and remaining(s.order, chain) > 0
        ]
        bids = [o.price for o in live if o.side == Side.BUY]
        asks = [o.price for o in live if o.side == Side.SELL]
        assert not bids or not asks or max(bids) < min(asks)


def test_matches_the_reference_on_random_workloads() -> None:
    """Two thousand seeded rich workloads (every flag, triggers, amendments, cancels, dust, self-trades, under-funded
    traders), a third of them with one batch per round of ops so many crossing orders meet in one batch."""
    total_fills = total_skips = 0
    for seed in range(2_000):
        round_ops = (None, 12, 40)[seed % 3]
        workload = generate(seed, 120, traders=3 + seed % 5, markets=1 + seed % 2, rich=True, round_ops=round_ops)
        stp = StpMode(seed % 3)
        workload = replace(workload, limits=replace(workload.limits, stp=stp))
        _, batches, _ = _drive(workload, check=True)
        total_fills += sum(len(b.fills) for b in batches)
        total_skips += sum(len(b.skipped) for b in batches)
    assert total_fills > 7_000 and total_skips > 10_000  # the workloads really exercise matching and skipping


def test_plain_workload_matches_the_reference() -> None:
    _, batches, _ = _drive(generate(7, 1_500, traders=30), check=True)
    assert sum(len(b.fills) for b in batches) > 100


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 150), rich=st.booleans())
def test_same_events_same_outputs_and_state_hash(seed: int, n: int, rich: bool) -> None:
    workload = generate(seed, n, traders=5, rich=rich)
    book1, batches1, out1 = _drive(workload, check=False)
    book2, batches2, out2 = _drive(workload, check=False)
    assert out1 == out2
    assert [b.encode() for b in batches1] == [b.encode() for b in batches2]
    assert book1.snapshot() == book2.snapshot() and book1.state_hash() == book2.state_hash()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), cut=st.floats(0, 1))
def test_snapshot_restore_gives_the_same_hash_and_future(seed: int, n: int, cut: float) -> None:
    workload = generate(seed, n, traders=5, rich=True)
    k = int(len(workload.ops) * cut)
    head = replace(workload, ops=workload.ops[:k])
    book, chain, _ = run(head)
    restored = Book.restore(book.snapshot())
    assert restored.state_hash() == book.state_hash()
    tail = replace(workload, ops=workload.ops[k:], chain=chain)
    a_book, _, a_batches = run(tail, book)
    b_book, _, b_batches = run(tail, restored)
    assert [b.encode() for b in a_batches] == [b.encode() for b in b_batches]
    assert a_book.state_hash() == b_book.state_hash()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), rich=st.booleans())
def test_invariants_hold_on_random_workloads(seed: int, n: int, rich: bool) -> None:
    _drive(generate(seed, n, traders=4, rich=rich), check=True)
