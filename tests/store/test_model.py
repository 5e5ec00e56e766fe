"""Property test of the typed layer against an in-memory model: random writes, commits and restarts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relayer.store import EquivocationError, PeerRecord, QuorumRecord, Store, TxRecord
from relayer.store import keys as k
from relayer.store.records import OrderRecord
from relayer.types import OrderState

from .helpers import cursor, h32, order_record, vote

states = st.sampled_from(list(OrderState))


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="store-model-"))
        self._open()
        self.orders: dict[bytes, OrderRecord] = {}
        self.votes: dict[tuple[int, int], QuorumRecord] = {}
        self.txs: dict[int, TxRecord] = {}
        self.peers: dict[str, PeerRecord] = {}
        self.inputs: list[bytes] = []
        self.cursor: int | None = None
        self.pending: list[tuple[str, object]] = []

    def _open(self) -> None:
        self.store = Store.open(self.dir)
        self.p, self.q, self.w, self.n = (
            self.store.processor(),
            self.store.quorum(),
            self.store.worker(),
            self.store.p2p(),
        )
        self.batch = self.p.batch()

    @rule(i=st.integers(0, 30), state=states, block=st.integers(0, 10**6), amt=st.integers(0, 10**30))
    def stage_order(self, i: int, state: OrderState, block: int, amt: int) -> None:
        rec = order_record(i, state, filled=((OrderState.INCLUDED, amt),) if amt else (), updated_block=block)
        if rec.signed.hash in self.orders or any(kind == "order" and o == rec.signed.hash for kind, o in self.pending):
            self.batch.put_order(rec)
            self.pending.append(("update", rec))
        else:
            self.batch.accept_order(rec)
            self.pending.append(("order", rec.signed.hash))
            self.pending.append(("update", rec))

    @rule(n=st.integers(0, 2**40))
    def stage_cursor(self, n: int) -> None:
        self.batch.put_cursor(cursor(n))
        self.pending.append(("cursor", n))

    @rule(sync=st.booleans())
    def commit(self, sync: bool) -> None:
        if self.batch.promise and not sync:
            sync = True
        self.p.commit(self.batch, sync=sync)
        for kind, value in self.pending:
            if kind == "order":
                assert isinstance(value, bytes)
                self.inputs.append(value)
            elif kind == "update":
                assert isinstance(value, OrderRecord)
                self.orders[value.signed.hash] = value
            elif kind == "cursor":
                assert isinstance(value, int)
                self.cursor = value
        self.pending = []
        self.batch = self.p.batch()

    @rule()
    def discard(self) -> None:
        self.pending = []
        self.batch = self.p.batch()

    @rule(seq=st.integers(0, 2**64 - 1), rnd=st.integers(0, 3), tag=st.integers(0, 2))
    def record_vote(self, seq: int, rnd: int, tag: int) -> None:
        v = vote(seq, rnd, tag)
        old = self.votes.get((seq, rnd))
        try:
            self.q.record_vote(v)
        except EquivocationError:
            assert old is not None and old != v
        else:
            assert old is None or old == v
            self.votes[(seq, rnd)] = v

    @rule(nonce=st.integers(0, 50), status=st.sampled_from(["sent", "included", "final"]))
    def record_tx(self, nonce: int, status: str) -> None:
        t = TxRecord(nonce, h32("tx", nonce, status), b"raw", nonce, status)
        self.w.record_tx(t)
        self.txs[nonce] = t

    @rule(name=st.text(st.characters(codec="utf-8"), min_size=1, max_size=10), seen=st.integers(0, 2**63))
    def put_peer(self, name: str, seen: int) -> None:
        rec = PeerRecord(name, ("/ip4/127.0.0.1/tcp/1",), seen)
        self.n.put_peer(rec)
        self.peers[name] = rec

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.pending = []
        self._open()

    @invariant()
    def matches_model(self) -> None:
        s = self.store
        assert {o.signed.hash: o for o in s.iter_orders()} == self.orders
        assert {(v.seq, v.round): v for v in s.iter_quorum(k.Space.VOTE)} == self.votes
        assert {t.nonce: t for t in s.iter_txs()} == self.txs
        assert {p.peer_id: p for p in s.iter_peers()} == self.peers
        assert [i.payload for i in s.iter_inputs()] == self.inputs
        got = s.get_cursor()
        assert (got.number if got else None) == self.cursor

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestStoreModel = StoreModel.TestCase
