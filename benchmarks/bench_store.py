"""LevelDB store throughput of promises (accepted orders, votes), synced as the store requires, and unsynced.

Policy measured: one promise per synced write batch, no group commit. An accepted order is one batch (order record
+ input log entry); a vote is a read (the no-second-vote check) plus one batch. The ``*_unsynced_per_s`` figures
write the same records without fsync, for comparison only (the store refuses unsynced promises, so the unsynced
vote goes straight to LevelDB). The store lives under out/bench/, so the fsync cost is that of the project's disk.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from benchmarks.run import ROOT, rate
from relayer.store import OrderRecord, QuorumRecord, Store
from relayer.store import keys as k
from relayer.types import Address, Hash32, MarketId, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind


def _order(i: int) -> OrderRecord:
    order = Order(
        Address("0x" + "11" * 20),
        MarketId(1),
        Side(i % 2),
        2_000 * 10**6 + i,
        10**15,
        Salt(i),
        1_700_000_000,
        1_700_003_600,
        OrderFlag.NONE,
        TriggerKind.NONE,
        0,
    )
    digest = Hash32(hashlib.sha256(i.to_bytes(8, "big")).digest())
    return OrderRecord(SignedOrder(order, b"\x01" * 64 + b"\x1b", digest), first_seen_ms=1_700_000_000_000 + i)


def _vote(seq: int) -> QuorumRecord:
    return QuorumRecord(seq, 0, Hash32(hashlib.sha256(b"batch" + seq.to_bytes(8, "big")).digest()), b"\x02" * 65)


def run() -> dict[str, float | int | str]:
    n_sync, n_unsynced = 2_000, 20_000
    base = ROOT / "out" / "bench"
    base.mkdir(parents=True, exist_ok=True)
    orders = [_order(i) for i in range(n_sync + n_unsynced)]
    votes = [_vote(i) for i in range(n_sync + n_unsynced)]
    with tempfile.TemporaryDirectory(prefix="store-", dir=base) as tmp, Store.open(Path(tmp) / "data") as store:
        proc, quorum = store.processor(), store.quorum()

        def order_unsynced(i: int) -> None:
            b = proc.batch()
            b.put_order(orders[n_sync + i])  # same bytes as accept_order, without the promise flag
            b.append_input("order", orders[n_sync + i].signed.hash)
            proc.commit(b, sync=False)

        def vote_unsynced(i: int) -> None:
            v = votes[n_sync + i]
            assert store.get_vote(v.seq, v.round) is None
            with store._db.write_batch(sync=False) as wb:
                wb.put(k.vote_key(v.seq, v.round), v.encode())

        return {
            "policy": "sync=True, one promise per write batch (no group commit)",
            "orders_per_s": rate(lambda i: proc.accept_order(orders[i]), n_sync),
            "votes_per_s": rate(lambda i: quorum.record_vote(votes[i]), n_sync),
            "orders_unsynced_per_s": rate(order_unsynced, n_unsynced),
            "votes_unsynced_per_s": rate(vote_unsynced, n_unsynced),
            "iterations_synced": n_sync,
            "iterations_unsynced": n_unsynced,
        }
