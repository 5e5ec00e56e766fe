"""The matcher's fast structures against their plain definitions: a book side (price levels) walks in exactly the
order of one SortedList of priority keys, and the batch builder's inlined dead-order checks agree with
:func:`dead_reason` on rich seeded workloads."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from sortedcontainers import SortedList

from relayer.matcher import Book, OracleUpdate, Retire, build_batch, dead_reason
from relayer.matcher.book import BookSide
from relayer.matcher.workload import IOC_WINDOW, BuildBatch, generate

keys = st.tuples(st.integers(-5, 5), st.integers(0, 4), st.binary(min_size=1, max_size=2))


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), keys), max_size=120))
def test_book_side_walks_in_sorted_list_order(ops: list[tuple[bool, tuple[int, int, bytes]]]) -> None:
    side, plain = BookSide(), SortedList()
    gone: set[bytes] = set()  # the side's precondition: a hash removed is never added again (nor used twice)
    for add, (p, created, tag) in ops:
        key = (p, created, bytes([p + 5, created]) + tag)  # hashes unique per key, as order hashes are
        if add and key not in plain and key[2] not in gone:
            side.add(*key)
            plain.add(key)
        elif not add and key in plain:
            side.remove(*key)
            plain.remove(key)
            gone.add(key[2])
        assert list(side) == list(plain)
        assert list(side.hashes()) == [k[2] for k in plain]
        assert len(side) == len(plain) and bool(side) == bool(plain)
        if plain:
            assert side.first() == plain[0]
    assert set(side.levels) == {k[0] for k in plain}  # emptied levels are dropped
    for p, level in side.levels.items():  # live counts are right; ghosts never outnumber live entries + slack
        assert level.n == sum(1 for k in plain if k[0] == p)
        assert len(level) <= 2 * level.n + 8


def test_dead_orders_are_exactly_dead_reason() -> None:
    seen = 0
    for seed in range(12):
        workload = generate(seed, 250, traders=6, markets=1 + seed % 2, rich=True)
        book = Book(IOC_WINDOW)
        chain = workload.chain
        for op in workload.ops:
            if isinstance(op, BuildBatch):
                batch = build_batch(book, chain, op.now, workload.limits)
                deadline = op.now + workload.limits.deadline_delta
                for item in batch.dead:
                    assert dead_reason(book.orders[item.hash].order, chain, deadline) == item.reason
                    seen += 1
                dead = {d.hash for d in batch.dead}
                for h in batch.orders:
                    assert h not in dead and dead_reason(book.orders[h].order, chain, deadline) is None
                chain = batch.post_state
                book.apply(Retire(batch))
            else:
                if isinstance(op, OracleUpdate):
                    markets = dict(chain.markets)
                    markets[op.market] = replace(markets[op.market], oracle_price=op.price)
                    chain = replace(chain, markets=markets)
                book.apply(op)
    assert seen > 50
