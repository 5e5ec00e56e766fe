"""The store: a typed layer over one LevelDB directory (plyvel). See docs/store.md.

- :meth:`Store.open` checks the directory (lock, meta magic, schema version, migrations) and maps plyvel's errors
  to the named ones of relayer/store/errors.py.
- Writes go only through a :class:`Writer` handle, one per :class:`Component`; a handle refuses keys outside its
  keyspaces, and the store hands out each component's handle once. Each commit is one atomic LevelDB write batch.
- Every promise (an accepted order, a proposal, a vote, a transaction) is written with ``sync=True`` and the call
  returns only after the write completed: the caller sends the promise after the call returns.
- The API is synchronous (LevelDB blocks); async components call it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plyvel

from relayer.store import codec
from relayer.store import keys as k
from relayer.store.errors import (
    EquivocationError,
    ForeignStoreError,
    KeyspaceError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMissingError,
    StoreVersionError,
)
from relayer.store.migrations import MIGRATIONS
from relayer.store.records import (
    SCHEMA_VERSION,
    TERMINAL,
    BatchRecord,
    BlockRecord,
    CancelRecord,
    ChainCursor,
    EvidenceRecord,
    InputRecord,
    OrderRecord,
    PeerRecord,
    QuorumRecord,
    Snapshot,
    TxRecord,
)
from relayer.types import Hash32, OrderState

log = logging.getLogger("relayer.store")

MAGIC = b"perp-relayer-store\x00"
_META = struct.Struct(">I")
KEEP_SNAPSHOTS = 2
"""Snapshots kept by pruning; the input log before the oldest kept one is dropped."""


def encode_meta(version: int) -> bytes:
    return MAGIC + _META.pack(version)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a restarting processor needs: the last snapshot, the inputs applied after it, and the chain cursor."""

    snapshot: Snapshot | None
    inputs_after: tuple[InputRecord, ...]
    cursor: ChainCursor | None


@dataclass(frozen=True, slots=True)
class PruneResult:
    orders: int
    batches: int
    proposals: int
    votes: int
    txs: int
    inputs: int
    snapshots: int


class Batch:
    """The writes of one atomic commit, restricted to its writer's keyspaces."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self.ops: list[tuple[bytes, bytes | None]] = []
        self.promise = False
        """True once the batch holds a promise: then it can only be committed with sync=True."""

    def put(self, key: bytes, value: bytes) -> None:
        self._writer.check_key(key)
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self._writer.check_key(key)
        self.ops.append((key, None))


class Writer:
    """The only way to write: one handle per component, limited to the keyspaces that component owns."""

    def __init__(self, store: Store, component: k.Component) -> None:
        self.store = store
        self.component = component
        self.spaces = k.spaces_of(component)

    def check_key(self, key: bytes) -> None:
        if not key or key[0] not in self.spaces:
            space = k.Space(key[0]).name if key and key[0] in k.Space._value2member_map_ else repr(key[:1])
            raise KeyspaceError(f"the {self.component.value} writer may not write keyspace {space}")

    def batch(self) -> Batch:
        return Batch(self)

    def commit(self, batch: Batch, *, sync: bool) -> None:
        if batch._writer is not self:
            raise KeyspaceError("a batch can only be committed by the writer that made it")
        if batch.promise and not sync:
            raise KeyspaceError("a batch holding a promise must be committed with sync=True")
        self.store._write(batch.ops, sync=sync)


class ProcessorWriter(Writer):
    """Orders, cancels, the input log, snapshots, the chain cursor and included/final batches."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, k.Component.PROCESSOR)
        last = store._last_key(k.Space.INPUT)
        self.next_input = k.u64_of(last) + 1 if last is not None else 0

    def batch(self) -> ProcessorBatch:
        return ProcessorBatch(self)

    def commit(self, batch: Batch, *, sync: bool) -> None:
        super().commit(batch, sync=sync)
        if isinstance(batch, ProcessorBatch):
            self.next_input += batch.inputs

    def accept_order(self, record: OrderRecord, input_payload: bytes | None = None) -> int:
        """Promise: store an accepted order (and its input log entry) synced; returns the input index.

        Acknowledge the order to the trader (or gossip it) only after this returns.
        """
        b = self.batch()
        index = b.accept_order(record, input_payload)
        self.commit(b, sync=True)
        return index


class ProcessorBatch(Batch):
    def __init__(self, writer: ProcessorWriter) -> None:
        super().__init__(writer)
        self._pw = writer
        self.inputs = 0

    def append_input(self, kind: str, payload: bytes) -> int:
        """Append to the input log; returns the index the input gets when this batch commits."""
        index = self._pw.next_input + self.inputs
        self.put(k.input_key(index), InputRecord(index, kind, payload).encode())
        self.inputs += 1
        return index

    def accept_order(self, record: OrderRecord, input_payload: bytes | None = None) -> int:
        self.promise = True
        self.put(k.order_key(record.signed.hash), record.encode())
        return self.append_input("order", record.signed.hash if input_payload is None else input_payload)

    def put_order(self, record: OrderRecord) -> None:
        """Update an order already accepted (state, fill amounts)."""
        self.put(k.order_key(record.signed.hash), record.encode())

    def put_cancel(self, record: CancelRecord) -> None:
        self.promise = True
        self.put(k.cancel_key(record.cancel.hash), record.encode())

    def put_snapshot(self, snapshot: Snapshot) -> None:
        self.put(k.snapshot_key(snapshot.index), snapshot.encode())

    def put_cursor(self, cursor: ChainCursor) -> None:
        self.put(k.CURSOR_KEY, cursor.encode())

    def delete_cursor(self) -> None:
        self.delete(k.CURSOR_KEY)

    def put_batch(self, record: BatchRecord) -> None:
        self.put(k.batch_key(record.seq), record.encode())

    def put_chain_entry(self, entry: bytes, value: bytes) -> None:
        """One entry of the final chain model (its key and encoding are relayer/chainstate.py's)."""
        self.put(k.chain_key(entry), value)

    def delete_chain_entry(self, entry: bytes) -> None:
        self.delete(k.chain_key(entry))

    def put_block(self, record: BlockRecord) -> None:
        """An included, not yet final block with its logs."""
        self.put(k.block_key(record.number, record.hash), record.encode())

    def delete_block(self, number: int, block_hash: Hash32 | bytes) -> None:
        self.delete(k.block_key(number, block_hash))


class QuorumWriter(Writer):
    """This node's proposals and votes: at most one per (seq, round), ever, written synced before they leave."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, k.Component.QUORUM)

    def _record(self, key: bytes, rec: QuorumRecord, what: str) -> QuorumRecord:
        old = self.store._get(key)
        if old is not None:
            prev = QuorumRecord.decode(rec.seq, rec.round, old)
            if prev != rec:
                raise EquivocationError(
                    f"a different {what} is already stored for seq {rec.seq} round {rec.round} "
                    f"(batch 0x{prev.batch_hash.hex()}); refusing to sign batch 0x{rec.batch_hash.hex()}"
                )
            return prev
        b = self.batch()
        b.promise = True
        b.put(key, rec.encode())
        self.commit(b, sync=True)
        return rec

    def record_proposal(self, rec: QuorumRecord) -> QuorumRecord:
        """Promise: store this node's proposal for (seq, round) synced; send it only after this returns.

        The same proposal again is a no-op (a restarted proposer re-sends it); a different one raises
        :class:`EquivocationError`.
        """
        return self._record(k.proposal_key(rec.seq, rec.round), rec, "proposal")

    def record_vote(self, rec: QuorumRecord) -> QuorumRecord:
        """Promise: store this node's vote for (seq, round) synced; send it only after this returns."""
        return self._record(k.vote_key(rec.seq, rec.round), rec, "vote")

    def record_evidence(self, rec: EvidenceRecord) -> None:
        """Keep a peer's equivocation (not a promise of ours: unsynced; the first record per key stays)."""
        key = k.evidence_key(rec.seq, rec.round, bytes.fromhex(rec.signer[2:]), rec.kind)
        if self.store._get(key) is not None:
            return
        b = self.batch()
        b.put(key, rec.encode())
        self.commit(b, sync=False)


class WorkerWriter(Writer):
    def __init__(self, store: Store) -> None:
        super().__init__(store, k.Component.WORKER)

    def record_tx(self, rec: TxRecord) -> None:
        """Promise: store a transaction synced before it is handed to the chain (or after a status change)."""
        b = self.batch()
        b.promise = True
        b.put(k.tx_key(rec.nonce), rec.encode())
        self.commit(b, sync=True)


class PeerWriter(Writer):
    def __init__(self, store: Store) -> None:
        super().__init__(store, k.Component.P2P)

    def put_peer(self, rec: PeerRecord) -> None:
        """Known peers are a hint, not a promise: written without sync."""
        b = self.batch()
        b.put(k.peer_key(rec.peer_id), rec.encode())
        self.commit(b, sync=False)


class Store:
    """One open LevelDB store. Open it with :meth:`open`; close it (or use ``with``)."""

    def __init__(self, path: Path, db: Any) -> None:
        self.path = path
        self._db: Any = db
        self._writers: dict[k.Component, Writer] = {}

    # ------------------------------------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> Store:
        p = Path(path)
        fresh = not p.exists() or not any(p.iterdir())
        if fresh and not create:
            raise StoreMissingError(f"no store in {p}")
        if not fresh and not (p / "CURRENT").is_file():
            raise ForeignStoreError(f"{p} is not empty and holds no LevelDB store; refusing to use it")
        p.mkdir(parents=True, exist_ok=True)
        try:
            db = plyvel.DB(str(p), create_if_missing=create, paranoid_checks=True)
        except plyvel.IOError as exc:
            if "lock" in str(exc).lower():
                raise StoreLockedError(f"the store in {p} is in use by another process (or handle)") from None
            raise StoreError(f"cannot open the store in {p}: {exc}") from None
        except plyvel.CorruptionError as exc:
            raise StoreCorruptError(f"the store in {p} is corrupt: {exc}") from None
        except plyvel.Error as exc:
            raise StoreError(f"cannot open the store in {p}: {exc}") from None
        store = cls(p, db)
        try:
            store._check_meta()
        except BaseException:
            db.close()
            raise
        return store

    def _check_meta(self) -> None:
        meta = self._db.get(k.META_KEY)
        if meta is None:
            if next(self._db.iterator(include_value=False), None) is not None:
                raise ForeignStoreError(f"{self.path} is a LevelDB store without our meta record; refusing to use it")
            self._db.put(k.META_KEY, encode_meta(SCHEMA_VERSION), sync=True)
            log.info("created store in %s (schema %d)", self.path, SCHEMA_VERSION)
            return
        if not meta.startswith(MAGIC) or len(meta) != len(MAGIC) + _META.size:
            raise ForeignStoreError(f"{self.path} is a LevelDB store of something else (bad meta record)")
        (version,) = _META.unpack_from(meta, len(MAGIC))
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"the store in {self.path} has schema version {version}, newer than this binary's {SCHEMA_VERSION}; "
                "run a newer relayer"
            )
        while version < SCHEMA_VERSION:
            migrate = MIGRATIONS.get(version)
            if migrate is None:
                raise StoreVersionError(f"no migration from schema version {version} in {self.path}")
            try:
                writes = migrate(self._db.iterator())
            except (codec.DecodeError, ValueError) as exc:
                raise StoreCorruptError(f"cannot migrate {self.path} from v{version}: {exc}") from None
            with self._db.write_batch(transaction=True, sync=True) as wb:
                for key, value in writes.items():
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
                wb.put(k.META_KEY, encode_meta(version + 1))
            log.info("migrated store in %s from schema %d to %d", self.path, version, version + 1)
            version += 1

    @property
    def schema_version(self) -> int:
        meta = self._db.get(k.META_KEY)
        return int(_META.unpack_from(meta, len(MAGIC))[0])

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ writers

    def processor(self) -> ProcessorWriter:
        w = self._take(k.Component.PROCESSOR, ProcessorWriter)
        assert isinstance(w, ProcessorWriter)
        return w

    def quorum(self) -> QuorumWriter:
        w = self._take(k.Component.QUORUM, QuorumWriter)
        assert isinstance(w, QuorumWriter)
        return w

    def worker(self) -> WorkerWriter:
        w = self._take(k.Component.WORKER, WorkerWriter)
        assert isinstance(w, WorkerWriter)
        return w

    def p2p(self) -> PeerWriter:
        w = self._take(k.Component.P2P, PeerWriter)
        assert isinstance(w, PeerWriter)
        return w

    def _take(self, component: k.Component, cls: Any) -> Writer:
        if component in self._writers:
            raise KeyspaceError(f"the {component.value} writer of {self.path} is already handed out (one writer)")
        w: Writer = cls(self)
        self._writers[component] = w
        return w

    def _write(self, ops: list[tuple[bytes, bytes | None]], *, sync: bool) -> None:
        """The single write path: one atomic LevelDB batch. Returns after the write (and fsync if sync) is done."""
        if not sync and any(key[0] in k.ALWAYS_SYNC for key, _ in ops):
            raise KeyspaceError("proposals, votes and transactions must be written with sync=True")
        try:
            with self._db.write_batch(transaction=True, sync=sync) as wb:
                for key, value in ops:
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
        except plyvel.Error as exc:
            raise StoreError(f"write to {self.path} failed: {exc}") from None

    # ------------------------------------------------------------------------------------------------ reads

    def _get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    def _iter(self, space: k.Space, *, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        prefix = bytes([space])
        it: Iterator[tuple[bytes, bytes]] = (
            self._db.iterator(prefix=prefix)
            if start is None
            else self._db.iterator(start=start, stop=bytes([space + 1]))
        )
        return it

    def _last_key(self, space: k.Space) -> bytes | None:
        with self._db.iterator(prefix=bytes([space]), reverse=True, include_value=False) as it:
            key: bytes | None = next(it, None)
        return key

    def _decode(self, key: bytes, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (codec.DecodeError, ValueError, TypeError, IndexError) as exc:
            raise StoreCorruptError(f"undecodable record {key.hex()} in {self.path}: {exc}") from None

    def get_order(self, order_hash: Hash32 | bytes) -> OrderRecord | None:
        key = k.order_key(order_hash)
        raw = self._get(key)
        return None if raw is None else self._decode(key, OrderRecord.decode, raw)

    def iter_orders(self) -> Iterator[OrderRecord]:
        for key, raw in self._iter(k.Space.ORDER):
            yield self._decode(key, OrderRecord.decode, raw)

    def iter_cancels(self) -> Iterator[CancelRecord]:
        for key, raw in self._iter(k.Space.CANCEL):
            yield self._decode(key, CancelRecord.decode, raw)

    def iter_inputs(self, after: int = -1) -> Iterator[InputRecord]:
        for key, raw in self._iter(k.Space.INPUT, start=k.input_key(after + 1)):
            yield self._decode(key, InputRecord.decode, k.u64_of(key), raw)

    def latest_snapshot(self) -> Snapshot | None:
        key = self._last_key(k.Space.SNAPSHOT)
        if key is None:
            return None
        raw = self._get(key)
        assert raw is not None
        snap: Snapshot = self._decode(key, Snapshot.decode, k.u64_of(key), raw)
        return snap

    def get_cursor(self) -> ChainCursor | None:
        raw = self._get(k.CURSOR_KEY)
        return None if raw is None else self._decode(k.CURSOR_KEY, ChainCursor.decode, raw)

    def get_batch(self, seq: int) -> BatchRecord | None:
        key = k.batch_key(seq)
        raw = self._get(key)
        return None if raw is None else self._decode(key, BatchRecord.decode, seq, raw)

    def iter_batches(self) -> Iterator[BatchRecord]:
        for key, raw in self._iter(k.Space.BATCH):
            yield self._decode(key, BatchRecord.decode, k.u64_of(key), raw)

    def iter_chain_entries(self) -> Iterator[tuple[bytes, bytes]]:
        """The final chain model's entries as (entry key without the keyspace prefix, value), in key order."""
        for key, raw in self._iter(k.Space.CHAIN):
            yield key[1:], raw

    def iter_blocks(self) -> Iterator[BlockRecord]:
        """The included, not yet final blocks, by number (then hash)."""
        for key, raw in self._iter(k.Space.BLOCK):
            number, block_hash = k.block_of(key)
            yield self._decode(key, BlockRecord.decode, number, block_hash, raw)

    def get_proposal(self, seq: int, round_: int) -> QuorumRecord | None:
        key = k.proposal_key(seq, round_)
        raw = self._get(key)
        return None if raw is None else self._decode(key, QuorumRecord.decode, seq, round_, raw)

    def get_vote(self, seq: int, round_: int) -> QuorumRecord | None:
        key = k.vote_key(seq, round_)
        raw = self._get(key)
        return None if raw is None else self._decode(key, QuorumRecord.decode, seq, round_, raw)

    def iter_quorum(self, space: k.Space) -> Iterator[QuorumRecord]:
        if space not in (k.Space.PROPOSAL, k.Space.VOTE):
            raise ValueError("space must be PROPOSAL or VOTE")
        for key, raw in self._iter(space):
            yield self._decode(key, QuorumRecord.decode, *k.seq_round_of(key), raw)

    def iter_evidence(self) -> Iterator[EvidenceRecord]:
        for key, raw in self._iter(k.Space.EVIDENCE):
            yield self._decode(key, EvidenceRecord.decode, *k.seq_round_of(key), raw)

    def iter_txs(self) -> Iterator[TxRecord]:
        for key, raw in self._iter(k.Space.TX):
            yield self._decode(key, TxRecord.decode, k.u64_of(key), raw)

    def iter_peers(self) -> Iterator[PeerRecord]:
        for key, raw in self._iter(k.Space.PEER):
            yield self._decode(key, PeerRecord.decode, key[1:].decode("utf-8", "replace"), raw)

    def recover(self) -> Recovered:
        """The last snapshot, every input after it (in order) and the chain cursor: replay them to restart."""
        snap = self.latest_snapshot()
        inputs = tuple(self.iter_inputs(after=snap.index if snap else -1))
        return Recovered(snap, inputs, self.get_cursor())

    def state_hash(self) -> bytes:
        """sha256 over every stored (key, value) in key order, meta excluded: equal stores have equal hashes."""
        h = hashlib.sha256()
        for key, value in self._db.iterator(start=bytes([k.Space.META + 1])):
            h.update(struct.pack(">II", len(key), len(value)))
            h.update(key)
            h.update(value)
        return h.digest()

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every raw (key, value) pair, meta included, in key order."""
        it: Iterator[tuple[bytes, bytes]] = self._db.iterator()
        return it

    # ------------------------------------------------------------------------------------------------ maintenance

    def stats(self) -> dict[str, Any]:
        counts: dict[str, int] = {s.name.lower(): 0 for s in k.Space if s is not k.Space.META}
        sizes: dict[str, int] = dict.fromkeys(counts, 0)
        for key, value in self._db.iterator(start=bytes([k.Space.META + 1])):
            name = k.Space(key[0]).name.lower() if key[0] in k.Space._value2member_map_ else f"unknown_{key[0]:02x}"
            counts[name] = counts.get(name, 0) + 1
            sizes[name] = sizes.get(name, 0) + len(key) + len(value)
        cursor = self.get_cursor()
        snap = self.latest_snapshot()
        last_input = self._last_key(k.Space.INPUT)
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "records": counts,
            "bytes": sizes,
            "cursor": None if cursor is None else {"number": cursor.number, "hash": "0x" + cursor.hash.hex()},
            "last_input": None if last_input is None else k.u64_of(last_input),
            "latest_snapshot": None if snap is None else snap.index,
        }

    def prune(self, head_block: int, horizon_blocks: int) -> PruneResult:
        """Drop final data older than ``head_block - horizon_blocks``; keep what a peer may still ask for in sync.

        Dropped: final batches included before the cutoff with the proposals, votes and transactions of their seqs
        (never the newest final batch: it anchors prevBatchHash); orders in a terminal state last changed before the
        cutoff; snapshots but the newest :data:`KEEP_SNAPSHOTS` and the input log before the oldest kept one. Kept:
        open orders, cancels, everything not final or within the horizon. Maintenance: refused while any writer
        handle is out (it spans several writers' keyspaces), so it runs at start or from ``relayer db compact``.
        """
        if self._writers:
            raise KeyspaceError("prune runs before any writer is handed out (at start or from `relayer db compact`)")
        cutoff = head_block - horizon_blocks
        ops: list[tuple[bytes, bytes | None]] = []
        finals = [b for b in self.iter_batches() if b.state is OrderState.FINAL]
        pruned_seq = -1
        for b in finals[:-1]:
            if b.block_number < cutoff:
                ops.append((k.batch_key(b.seq), None))
                pruned_seq = max(pruned_seq, b.seq)
        n_batches = len(ops)
        n_orders = 0
        for o in self.iter_orders():
            if o.state in TERMINAL and o.updated_block < cutoff:
                ops.append((k.order_key(o.signed.hash), None))
                n_orders += 1
        counts = {k.Space.PROPOSAL: 0, k.Space.VOTE: 0, k.Space.TX: 0}
        for space in (k.Space.PROPOSAL, k.Space.VOTE):
            for q in self.iter_quorum(space):
                if q.seq <= pruned_seq:
                    ops.append(((k.proposal_key if space is k.Space.PROPOSAL else k.vote_key)(q.seq, q.round), None))
                    counts[space] += 1
        for t in self.iter_txs():
            if t.seq <= pruned_seq and t.status in ("included", "final"):
                ops.append((k.tx_key(t.nonce), None))
                counts[k.Space.TX] += 1
        snaps = [k.u64_of(key) for key, _ in self._iter(k.Space.SNAPSHOT)]
        drop_snaps = snaps[:-KEEP_SNAPSHOTS] if len(snaps) > KEEP_SNAPSHOTS else []
        ops += [(k.snapshot_key(i), None) for i in drop_snaps]
        n_inputs = 0
        if len(snaps) >= KEEP_SNAPSHOTS:
            oldest_kept = snaps[-KEEP_SNAPSHOTS]
            for key, _ in self._iter(k.Space.INPUT):
                if k.u64_of(key) > oldest_kept:
                    break
                ops.append((key, None))
                n_inputs += 1
        self._write(ops, sync=True)
        self._db.compact_range()
        result = PruneResult(
            n_orders,
            n_batches,
            counts[k.Space.PROPOSAL],
            counts[k.Space.VOTE],
            counts[k.Space.TX],
            n_inputs,
            len(drop_snaps),
        )
        log.info("pruned %s below block %d: %s", self.path, cutoff, result)
        return result

    def compact(self) -> None:
        self._db.compact_range()
