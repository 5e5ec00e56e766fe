"""A process crash loses nothing even without fsync, so the kill test cannot see a missing sync. Here a spy wraps
LevelDB's write path and checks that every promise is written with sync=True, and that the write completed before
the promise API returned (that is, before the caller can send the promise)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relayer.store import CancelRecord, KeyspaceError, PeerRecord, Store, TxRecord
from relayer.store import keys as k
from relayer.types import Address, OrderState, Salt, SignedCancel

from .helpers import cursor, h32, order_record, vote


class _SpyBatch:
    def __init__(self, inner: Any, events: list[tuple[Any, ...]], sync: bool) -> None:
        self.inner, self.events, self.sync = inner, events, sync
        self.spaces: set[int] = set()

    def put(self, key: bytes, value: bytes) -> None:
        self.spaces.add(key[0])
        self.inner.put(key, value)

    def delete(self, key: bytes) -> None:
        self.spaces.add(key[0])
        self.inner.delete(key)

    def __enter__(self) -> _SpyBatch:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)  # the LevelDB write (and fsync) happens here
        self.events.append(("written", self.sync, frozenset(self.spaces)))


class _SpyDB:
    """Forwards to the real plyvel DB; records every write batch's sync flag and completion."""

    def __init__(self, inner: Any, events: list[tuple[Any, ...]]) -> None:
        self.inner, self.events = inner, events

    def write_batch(self, **kw: Any) -> _SpyBatch:
        return _SpyBatch(self.inner.write_batch(**kw), self.events, bool(kw.get("sync")))

    def put(self, key: bytes, value: bytes, **kw: Any) -> None:
        self.events.append(("put", bool(kw.get("sync")), frozenset({key[0]})))
        self.inner.put(key, value, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def spied(tmp_path: Path) -> Iterator[tuple[Store, list[tuple[Any, ...]]]]:
    store = Store.open(tmp_path / "d")
    events: list[tuple[Any, ...]] = []
    store._db = _SpyDB(store._db, events)
    yield store, events
    store.close()


def _promise_then_send(events: list[tuple[Any, ...]], promise: Callable[[], object]) -> list[tuple[Any, ...]]:
    start = len(events)
    promise()
    events.append(("send",))  # what the component does once the promise API returns
    return events[start:]


def test_every_promise_is_synced_and_written_before_it_is_sent(spied: tuple[Store, list[tuple[Any, ...]]]) -> None:
    store, events = spied
    p, q, w = store.processor(), store.quorum(), store.worker()
    cancel = CancelRecord(SignedCancel(Address("0x" + "ab" * 20), Salt(1), b"\x02" * 65, h32("c")), 1)

    def cancel_batch() -> None:
        b = p.batch()
        b.put_cancel(cancel)
        p.commit(b, sync=True)

    promises: dict[str, tuple[Callable[[], object], int]] = {
        "accepted order": (lambda: p.accept_order(order_record(1)), k.Space.ORDER),
        "signed cancel": (cancel_batch, k.Space.CANCEL),
        "proposal": (lambda: q.record_proposal(vote(1, 0, "p")), k.Space.PROPOSAL),
        "vote": (lambda: q.record_vote(vote(1, 0, "v")), k.Space.VOTE),
        "transaction": (lambda: w.record_tx(TxRecord(0, h32("tx"), b"raw", 1)), k.Space.TX),
    }
    for name, (promise, space) in promises.items():
        seen = _promise_then_send(events, promise)
        assert len(seen) == 2, (name, seen)
        (kind, sync, spaces), send = seen
        assert (kind, sync, send) == ("written", True, ("send",)), (name, seen)
        assert space in spaces, (name, spaces)
    # A re-sent identical vote is not written again, and nothing unsynced ever touched a promise keyspace.
    assert _promise_then_send(events, lambda: q.record_vote(vote(1, 0, "v"))) == [("send",)]
    promise_spaces = {k.Space.ORDER, k.Space.CANCEL, k.Space.PROPOSAL, k.Space.VOTE, k.Space.TX}
    assert all(e[1] for e in events if e[0] != "send" and e[2] & promise_spaces)


def test_unsynced_promises_are_refused_before_touching_leveldb(spied: tuple[Store, list[tuple[Any, ...]]]) -> None:
    store, events = spied
    p, q = store.processor(), store.quorum()
    b = p.batch()
    b.accept_order(order_record(1))
    with pytest.raises(KeyspaceError, match="sync=True"):
        p.commit(b, sync=False)
    raw = q.batch()
    raw.put(k.vote_key(1, 0), vote(1, 0).encode())
    with pytest.raises(KeyspaceError, match="sync=True"):
        q.commit(raw, sync=False)
    assert events == []
    assert store.get_order(order_record(1).signed.hash) is None and store.get_vote(1, 0) is None


def test_non_promises_may_skip_the_sync(spied: tuple[Store, list[tuple[Any, ...]]]) -> None:
    store, events = spied
    p = store.processor()
    p.accept_order(order_record(1))
    b = p.batch()  # a chain event: the order's state and the cursor, together; the chain is re-read after a crash
    b.put_order(order_record(1, OrderState.INCLUDED, updated_block=7))
    b.put_cursor(cursor(7))
    p.commit(b, sync=False)
    store.p2p().put_peer(PeerRecord("peer"))
    assert [e[:2] for e in events] == [("written", True), ("written", False), ("written", False)]
