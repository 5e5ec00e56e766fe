"""The store against real LevelDB: opening, locking, foreign and corrupt directories, versions and migration,
one writer per keyspace, no second vote, recovery by snapshot + replay, pruning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import plyvel
import pytest

from relayer.store import (
    SCHEMA_VERSION,
    BatchRecord,
    CancelRecord,
    EquivocationError,
    ForeignStoreError,
    InputRecord,
    KeyspaceError,
    OrderRecord,
    PeerRecord,
    Snapshot,
    Space,
    Store,
    StoreCorruptError,
    StoreLockedError,
    StoreMissingError,
    StoreVersionError,
    TxRecord,
    codec,
)
from relayer.store import keys as k
from relayer.store.db import encode_meta
from relayer.types import Address, Hash32, OrderState, Salt, SignedCancel

from ..conftest import ROOT
from .helpers import INITIAL, apply, cursor, decode_state, encode_state, h32, order_record, vote


def test_fresh_store_round_trips_every_record(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        assert s.schema_version == SCHEMA_VERSION
        p, q, w, n = s.processor(), s.quorum(), s.worker(), s.p2p()
        rec = order_record(1, OrderState.INCLUDED, filled=((OrderState.INCLUDED, 4), (OrderState.FINAL, 2)))
        p.accept_order(rec)
        cancel = CancelRecord(SignedCancel(Address("0x" + "ab" * 20), Salt(9), b"\x02" * 65, h32("c")), 5)
        b = p.batch()
        b.put_cancel(cancel)
        b.put_cursor(cursor(10))
        b.put_batch(BatchRecord(3, h32("b3"), OrderState.FINAL, 10, b"fills"))
        p.commit(b, sync=True)
        q.record_proposal(vote(3, 1, "p"))
        q.record_vote(vote(3, 1, "v"))
        w.record_tx(TxRecord(7, h32("tx"), b"raw", 3))
        n.put_peer(PeerRecord("16Uiu2peer", ("/ip4/127.0.0.1/tcp/9000",), 123))
    with Store.open(tmp_path / "d", create=False) as s:
        assert s.get_order(rec.signed.hash) == rec
        assert rec.filled_in(OrderState.FINAL) == 2
        assert list(s.iter_cancels()) == [cancel]
        assert s.get_cursor() == cursor(10)
        assert s.get_batch(3) == BatchRecord(3, h32("b3"), OrderState.FINAL, 10, b"fills")
        assert s.get_proposal(3, 1) == vote(3, 1, "p")
        assert s.get_vote(3, 1) == vote(3, 1, "v")
        assert list(s.iter_txs()) == [TxRecord(7, h32("tx"), b"raw", 3)]
        assert list(s.iter_peers()) == [PeerRecord("16Uiu2peer", ("/ip4/127.0.0.1/tcp/9000",), 123)]
        assert list(s.iter_inputs()) == [InputRecord(0, "order", rec.signed.hash)]
        stats = s.stats()
        assert stats["records"]["order"] == 1 and stats["last_input"] == 0


def test_missing_store_is_not_created_when_not_asked(tmp_path: Path) -> None:
    with pytest.raises(StoreMissingError, match="no store"):
        Store.open(tmp_path / "none", create=False)
    assert not (tmp_path / "none").exists()


def test_second_handle_in_this_process_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d"), pytest.raises(StoreLockedError, match=str(tmp_path / "d")):
        Store.open(tmp_path / "d")


def test_second_process_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom relayer.store import Store, StoreLockedError\n"
        "try:\n    Store.open(sys.argv[1])\nexcept StoreLockedError as e:\n    print('LOCKED', e)\n"
    )
    with Store.open(tmp_path / "d") as s:
        s.processor().accept_order(order_record(1))
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert out.stdout.startswith("LOCKED"), out.stderr
        assert str(tmp_path / "d") in out.stdout
    with Store.open(tmp_path / "d") as s:  # untouched by the refused opener
        assert s.get_order(order_record(1).signed.hash) == order_record(1)


def test_foreign_directory_is_refused_not_reset(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ForeignStoreError, match="holds no LevelDB store"):
        Store.open(d)
    assert sorted(p.name for p in d.iterdir()) == ["cat.jpg"]


def test_foreign_leveldb_is_refused(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "other"), create_if_missing=True)
    db.put(b"hello", b"world")
    db.close()
    with pytest.raises(ForeignStoreError, match="without our meta"):
        Store.open(tmp_path / "other")
    db = plyvel.DB(str(tmp_path / "other"))
    db.put(k.META_KEY, b"someone-else")
    db.close()
    with pytest.raises(ForeignStoreError, match="bad meta"):
        Store.open(tmp_path / "other")


def test_corrupt_store_is_a_clear_error(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        s.processor().accept_order(order_record(1))
    (tmp_path / "d" / "CURRENT").write_text("MANIFEST-999999\n")
    with pytest.raises(StoreCorruptError, match="corrupt"):
        Store.open(tmp_path / "d")


def test_undecodable_record_is_a_clear_error(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        s._db.put(k.order_key(h32("x")), b"\x08garbage")
        with pytest.raises(StoreCorruptError, match="undecodable record"):
            s.get_order(h32("x"))


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        s._db.put(k.META_KEY, encode_meta(SCHEMA_VERSION + 1))
    with pytest.raises(StoreVersionError, match="newer than this binary"):
        Store.open(tmp_path / "d")


def _v1_order(rec: OrderRecord) -> bytes:
    """An order record as schema v1 wrote it: state names instead of codes."""
    m = codec.unpack(rec.encode())
    assert isinstance(m, dict)
    m["state"] = rec.state.value
    m["filled"] = [[s.value, a] for s, a in rec.filled]
    return codec.pack(m)


def test_migration_from_v1(tmp_path: Path) -> None:
    recs = [
        order_record(1),
        order_record(2, OrderState.FINAL, filled=((OrderState.FINAL, 12),), updated_block=40),
    ]
    db = plyvel.DB(str(tmp_path / "d"), create_if_missing=True)
    db.put(k.META_KEY, encode_meta(1))
    for r in recs:
        db.put(k.order_key(r.signed.hash), _v1_order(r))
    db.put(k.vote_key(1, 0), vote(1, 0).encode())
    db.close()
    with Store.open(tmp_path / "d") as s:
        assert s.schema_version == SCHEMA_VERSION == 2
        assert [s.get_order(r.signed.hash) for r in recs] == recs
        assert s.get_vote(1, 0) == vote(1, 0)
    with Store.open(tmp_path / "d") as s:  # idempotent: opening again changes nothing
        assert s.schema_version == 2 and [s.get_order(r.signed.hash) for r in recs] == recs


def test_writers_only_touch_their_keyspaces(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        q = s.quorum()
        with pytest.raises(KeyspaceError, match="quorum writer may not write keyspace ORDER"):
            q.batch().put(k.order_key(h32("o")), b"")
        p = s.processor()
        with pytest.raises(KeyspaceError, match="may not write keyspace VOTE"):
            p.batch().put(k.vote_key(1, 0), b"")
        with pytest.raises(KeyspaceError, match="META"):
            p.batch().put(k.META_KEY, b"")
        with pytest.raises(KeyspaceError, match="already handed out"):
            s.quorum()
        with pytest.raises(KeyspaceError, match="before any writer"):
            s.prune(100, 10)


def test_a_second_different_vote_or_proposal_is_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        q = s.quorum()
        q.record_vote(vote(5, 2, "a"))
        assert q.record_vote(vote(5, 2, "a")) == vote(5, 2, "a")  # the same one again: re-send it
        with pytest.raises(EquivocationError, match="seq 5 round 2"):
            q.record_vote(vote(5, 2, "b"))
        q.record_vote(vote(5, 3, "b"))  # another round is another vote
        q.record_proposal(vote(6, 0, "p"))
        with pytest.raises(EquivocationError, match="proposal"):
            q.record_proposal(vote(6, 0, "p2"))
    with Store.open(tmp_path / "d") as s:  # and after a restart
        with pytest.raises(EquivocationError):
            s.quorum().record_vote(vote(5, 2, "c"))
        assert s.get_vote(5, 2) == vote(5, 2, "a")


def test_recover_replays_inputs_after_the_last_snapshot(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        p = s.processor()
        state = INITIAL
        for i in range(23):
            b = p.batch()
            idx = b.append_input("chain", f"event-{i}".encode())
            state = apply(state, InputRecord(idx, "chain", f"event-{i}".encode()))
            b.put_cursor(cursor(100 + i))
            if i % 10 == 9:
                b.put_snapshot(Snapshot(idx, encode_state(state)))
            p.commit(b, sync=False)
        full = state
    with Store.open(tmp_path / "d") as s:
        rec = s.recover()
        assert rec.snapshot is not None and rec.snapshot.index == 19
        assert [i.index for i in rec.inputs_after] == [20, 21, 22]
        got = decode_state(rec.snapshot.payload)
        for inp in rec.inputs_after:
            got = apply(got, inp)
        assert got == full
        assert rec.cursor == cursor(122)
        assert s.processor().next_input == 23


def test_prune_drops_old_final_data_and_keeps_what_peers_may_ask_for(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d") as s:
        p, q, w = s.processor(), s.quorum(), s.worker()
        old_final = order_record(1, OrderState.FINAL, updated_block=10)
        old_open = order_record(2, OrderState.ACCEPTED, updated_block=10)
        new_final = order_record(3, OrderState.FINAL, updated_block=950)
        for r in (old_final, old_open, new_final):
            p.accept_order(r)
        b = p.batch()
        for seq, blk in ((1, 10), (2, 20), (3, 960)):
            b.put_batch(BatchRecord(seq, h32("b", seq), OrderState.FINAL, blk))
        for i in range(3):
            b.put_snapshot(Snapshot(i, b"s"))
        b.put_cursor(cursor(1000))
        p.commit(b, sync=True)
        for seq in (1, 2, 3):
            q.record_vote(vote(seq, 0))
            q.record_proposal(vote(seq, 0, "p"))
            w.record_tx(TxRecord(seq, h32("tx", seq), b"raw", seq, "final"))
    with Store.open(tmp_path / "d") as s:
        result = s.prune(1000, 100)
        assert (result.orders, result.batches, result.votes, result.proposals, result.txs) == (1, 2, 2, 2, 2)
        assert result.snapshots == 1 and result.inputs == 2  # inputs 0, 1 lie at or before the oldest kept snapshot
        assert s.get_order(old_final.signed.hash) is None
        assert s.get_order(old_open.signed.hash) == old_open
        assert s.get_order(new_final.signed.hash) == new_final
        assert [b.seq for b in s.iter_batches()] == [3]
        assert [v.seq for v in s.iter_quorum(Space.VOTE)] == [3]
        assert [t.nonce for t in s.iter_txs()] == [3]
        assert s.latest_snapshot() == Snapshot(2, b"s")
        assert [i.index for i in s.recover().inputs_after] == []
        # the newest final batch is kept however old: it anchors prevBatchHash
        assert s.prune(10**6, 100).batches == 0


def test_state_hash_covers_every_record(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a") as a, Store.open(tmp_path / "b") as b:
        assert a.state_hash() == b.state_hash()
        a.processor().accept_order(order_record(1))
        assert a.state_hash() != b.state_hash()
        b.processor().accept_order(order_record(1))
        assert a.state_hash() == b.state_hash()
        assert isinstance(a.state_hash(), bytes) and Hash32(a.state_hash())


def test_equivocation_evidence_is_kept_once_per_signer_and_round(tmp_path: Path) -> None:
    from relayer.store.records import EvidenceRecord

    signer = "0x" + "ab" * 20
    rec = EvidenceRecord(7, 2, signer, "vote", Hash32(b"\x01" * 32), b"s1", b"m1", Hash32(b"\x02" * 32), b"s2", b"m2")
    with Store.open(tmp_path / "db") as store:
        writer = store.quorum()
        writer.record_evidence(rec)
        writer.record_evidence(
            EvidenceRecord(7, 2, signer, "vote", rec.second_digest, b"x", b"y", rec.first_digest, b"z", b"w")
        )
        writer.record_evidence(
            EvidenceRecord(7, 2, signer, "proposal", rec.first_digest, b"p", b"q", rec.second_digest, b"r", b"s")
        )
    with Store.open(tmp_path / "db") as store:
        kept = list(store.iter_evidence())
    assert len(kept) == 2 and rec in kept  # the first record per (seq, round, signer, kind) stays
