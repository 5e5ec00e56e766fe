"""The processor: the node's single writer of orders, book, fills and positions (docs/DESIGN.md "store").

This module holds its chain-event step (:meth:`Processor.apply_chain`): the watcher's messages (relayer/watcher/
events.py) come in chain order, and each one's effects are written together with the message's chain cursor in ONE
LevelDB write batch, so a node killed at any point reopens with a cursor that covers exactly what it stored.

Two views of the chain (relayer/chainstate.py :class:`~relayer.chainstate.ChainModel`):

* **final**: every block at confirmation depth (folded in by :class:`~relayer.watcher.events.Finalized`). Stored as
  the model's canonical entries (keyspace CHAIN); a finalized block rewrites only the entries it changed.
* **included**: final plus every included, not yet final block applied in order. This is what the matcher reads
  (DESIGN.md: remaining = amount - fills in included batches). The non-final blocks are stored with their decoded
  logs (keyspace BLOCK). A :class:`~relayer.watcher.events.Retracted` block drops exactly that block's effects: the
  included view is recomputed as final + the remaining non-final blocks (a small window).

Restart (:meth:`Processor.open`) rebuilds both views from the store, without the chain, and hands the watcher the
stored cursor (:attr:`Processor.cursor`). :meth:`Processor.state_hash` is a stable hash of both views: equal inputs
give equal hashes, on any node and across restarts.

Chain data is written unsynced (after a power cut it is re-read from the chain: the cursor is its last promise), but
always atomically with the cursor.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from bindings import exchange as ex
from relayer.chainstate import ChainModel, ChainModelError, checksum, decode_logs, encode_logs
from relayer.matcher.model import ChainState
from relayer.store import codec
from relayer.store.db import ProcessorBatch, ProcessorWriter, Store
from relayer.store.errors import StoreCorruptError, StoreError
from relayer.store.records import BatchRecord, BlockRecord, ChainCursor, OrderRecord
from relayer.types import Address, Hash32, OrderState, Salt
from relayer.watcher.events import BlockRef, ChainLog, ChainMessage, Finalized, Head, Included, Retracted

__all__ = [
    "WORKER_OUTCOMES",
    "BatchUpdate",
    "CancelUpdate",
    "ChainOutput",
    "FillUpdate",
    "PendingBlock",
    "Processor",
]

log = logging.getLogger("relayer.processor")

WORKER_OUTCOMES = frozenset({"submitted", "stale", "reverted"})
"""What the contract worker reports for a seq: its transaction was sent, another batch took the seq, or it reverted."""

_OPEN_STATES = frozenset(
    {
        OrderState.ACCEPTED,
        OrderState.PROPOSED,
        OrderState.CERTIFIED,
        OrderState.SUBMITTED,
        OrderState.INCLUDED,
        OrderState.FINAL,
        OrderState.REORGED,
        OrderState.DEAD,
        OrderState.SKIPPED,
    }
)
"""Order states the chain step may move (cancelled, expired and rejected orders keep their state)."""


# ------------------------------------------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class FillUpdate:
    """The fill counter of (trader, salt) changed: ``included`` is its value in the included view (what remaining
    is computed from), ``final`` in the final view. ``state`` says why: INCLUDED (a block filled it), FINAL (that
    block became final) or REORGED (a block that filled it was retracted). ``hashes``: the order versions the
    changing fills named."""

    trader: Address
    salt: Salt
    hashes: tuple[Hash32, ...]
    included: int
    final: int
    state: OrderState


@dataclass(frozen=True, slots=True)
class BatchUpdate:
    """Batch ``seq`` (hash ``hash``) became INCLUDED (in block ``block_number``), FINAL or REORGED."""

    seq: int
    hash: Hash32
    state: OrderState
    block_number: int


@dataclass(frozen=True, slots=True)
class CancelUpdate:
    """An on-chain cancel of (trader, salt), or ``cancelUpTo(salt)`` when ``up_to``, became INCLUDED, FINAL or
    REORGED (retracted: the cancel no longer holds in the included view)."""

    trader: Address
    salt: Salt
    up_to: bool
    state: OrderState


ChainOutput = FillUpdate | BatchUpdate | CancelUpdate


@dataclass(frozen=True, slots=True)
class PendingBlock:
    """An included, not yet final block with its decoded exchange logs, in log order."""

    block: BlockRef
    logs: tuple[ChainLog, ...]


# ------------------------------------------------------------------------------------------------------ processor


class Processor:
    """The node's processor. Open it with :meth:`open`; feed it the watcher's messages with :meth:`apply_chain`."""

    def __init__(self, store: Store, writer: ProcessorWriter) -> None:
        self.store = store
        self.writer = writer
        self.counters: Counter[str] = Counter()
        """Anomalies and ignored input, by kind (fill_mismatch, undecodable_log, duplicate_included, ...)."""
        self.head: BlockRef | None = None
        """The highest block the watcher reported (Included or Head): the chain head as this node knows it."""
        self.cursor: ChainCursor | None = None
        self.final = ChainModel()
        self.included = ChainModel()
        self.pending: list[PendingBlock] = []
        self._has_model = False
        self._load()

    @classmethod
    def open(cls, store: Store, writer: ProcessorWriter | None = None) -> Processor:
        """Rebuild both views from ``store`` (the final model's entries, the non-final blocks' logs) and the cursor
        to hand the watcher. Takes the store's processor writer unless one is given."""
        return cls(store, writer if writer is not None else store.processor())

    def _load(self) -> None:
        entries = list(self.store.iter_chain_entries())
        cursor = self.store.get_cursor()
        blocks = list(self.store.iter_blocks())
        if not entries:
            self.final = ChainModel()
            self._has_model = False
            if cursor is not None or blocks:
                # A cursor written before the chain model existed covers nothing we hold: re-read the chain.
                log.warning(
                    "the store in %s has a chain cursor (block %s) but no chain model: dropping it, the chain will "
                    "be read again from the start",
                    self.store.path,
                    None if cursor is None else cursor.number,
                )
                b = self.writer.batch()
                b.delete_cursor()
                for r in blocks:
                    b.delete_block(r.number, r.hash)
                self.writer.commit(b, sync=True)
                cursor, blocks = None, []
        else:
            try:
                self.final = ChainModel.from_entries(entries)
            except ChainModelError as exc:
                raise StoreCorruptError(f"{self.store.path}: {exc}") from None
            self._has_model = True
        self.cursor = cursor
        self.pending = []
        for r in blocks:
            try:
                logs = decode_logs(r.number, r.hash, r.logs)
            except ChainModelError as exc:
                raise StoreCorruptError(f"{self.store.path}: {exc}") from None
            self.pending.append(PendingBlock(BlockRef(r.number, r.hash, r.parent_hash, r.timestamp), logs))
        self.pending.sort(key=lambda p: p.block.number)
        self._recompute_included()
        tip = self.included.block
        if tip is not None and (self.head is None or tip.number > self.head.number):
            self.head = tip
        log.info(
            "processor opened: final block %s, %d non-final block(s), cursor %s, state %s",
            None if self.final.block is None else self.final.block.number,
            len(self.pending),
            None if self.cursor is None else self.cursor.number,
            self.state_hash().hex()[:16],
        )

    def _recompute_included(self) -> None:
        included = self.final.copy()
        for p in self.pending:
            included.apply_block(p.block, p.logs)
        included.counters = self.counters
        self.included = included

    # -------------------------------------------------------------------------------------------- reads

    def chain_state(self) -> ChainState:
        """The matcher's chain state: the included view."""
        return self.included.chain_state()

    def final_chain_state(self) -> ChainState:
        return self.final.chain_state()

    def state_hash(self) -> bytes:
        """sha256 over both views in canonical form (final model, non-final block ids, included model)."""
        h = hashlib.sha256(b"perp-relayer processor chain v1")
        h.update(self.final.state_hash())
        for p in self.pending:
            h.update(p.block.number.to_bytes(8, "big") + p.block.hash)
        h.update(self.included.state_hash())
        return h.digest()

    # -------------------------------------------------------------------------------------------- chain step

    def apply_chain(self, msg: ChainMessage) -> list[ChainOutput]:
        """Apply one watcher message; its effects and ``msg.cursor`` are committed in one write batch before this
        returns. Returns what changed (fill counters, batches, on-chain cancels, each with its lifecycle state).

        Ignored (counted in :attr:`counters`, logged, nothing written): an Included block already held, or at or
        below the final block; a Finalized block at or below the final block, or conflicting with the included
        block at its height; a Retracted final block. A log whose event is None is skipped and counted.
        """
        if isinstance(msg, Head):
            if self.head is None or msg.block.number >= self.head.number:
                self.head = msg.block
            return []
        try:
            if isinstance(msg, Included):
                return self._included(msg)
            if isinstance(msg, Finalized):
                return self._finalized(msg)
            if isinstance(msg, Retracted):
                return self._retracted(msg)
        except StoreError:
            # The write failed: the store still holds the state before this message. Go back to it.
            log.exception("a chain write failed; reloading the processor's chain state from the store")
            self._load()
            raise
        raise TypeError(f"not a chain message: {type(msg).__name__}")

    def _included(self, msg: Included) -> list[ChainOutput]:
        b = msg.block
        if any(p.block.hash == b.hash for p in self.pending) or (
            self.final.block is not None and self.final.block.hash == b.hash
        ):
            self.counters["duplicate_included"] += 1
            log.info("block %d 0x%s is already included: ignored", b.number, b.hash.hex())
            return []
        if self.final.block is not None and b.number <= self.final.block.number:
            self.counters["stale_included"] += 1
            log.warning(
                "block %d 0x%s is at or below the final block %d: ignored",
                b.number,
                b.hash.hex(),
                self.final.block.number,
            )
            return []
        batch = self.writer.batch()
        outputs: list[ChainOutput] = []
        touched: set[Hash32] = set()
        replaced = [p for p in self.pending if p.block.number >= b.number]
        if replaced:
            self.counters["implicit_retract"] += 1
            log.warning(
                "block %d 0x%s included while %d block(s) at or above its height are held, without a retraction: "
                "dropping them",
                b.number,
                b.hash.hex(),
                len(replaced),
            )
            self._drop(replaced, batch, outputs, touched)
        if self.pending and self.pending[-1].block.number == b.number - 1:
            parent = self.pending[-1].block
            if parent.hash != b.parent_hash:
                self.counters["parent_mismatch"] += 1
                log.warning(
                    "block %d names parent 0x%s, held is 0x%s", b.number, b.parent_hash.hex(), parent.hash.hex()
                )
        logs: list[ChainLog] = []
        seen: set[tuple[bytes, bytes, int]] = set()
        for entry in msg.logs:
            if entry.event is None:
                self.counters["undecodable_log"] += 1
                log.warning("undecodable log %d of block %d ignored", entry.log_index, b.number)
            elif entry.block_hash != b.hash:
                self.counters["foreign_log"] += 1
                log.warning("a log of block 0x%s came with block 0x%s: ignored", entry.block_hash.hex(), b.hash.hex())
            elif entry.key in seen:
                self.counters["duplicate_log"] += 1
            else:
                seen.add(entry.key)
                logs.append(entry)
        logs.sort(key=lambda e: e.log_index)
        pending = PendingBlock(b, tuple(logs))
        self.pending.append(pending)
        self.included.apply_block(b, pending.logs)
        batch.put_block(BlockRecord(b.number, b.hash, b.parent_hash, b.timestamp, encode_logs(pending.logs)))
        outputs += self._effects([pending], OrderState.INCLUDED, batch, touched)
        if self.head is None or b.number >= self.head.number:
            self.head = b
        self._commit(batch, msg.cursor, touched)
        return outputs

    def _finalized(self, msg: Finalized) -> list[ChainOutput]:
        b = msg.block
        fin = self.final.block
        if fin is not None and b.number <= fin.number:
            if b.number == fin.number and b.hash != fin.hash:
                self.counters["final_conflict"] += 1
                log.error(
                    "Finalized block %d 0x%s, but 0x%s is final at that height", b.number, b.hash.hex(), fin.hash.hex()
                )
            else:
                self.counters["duplicate_final"] += 1
            return []
        at_height = [p for p in self.pending if p.block.number == b.number]
        if at_height and at_height[0].block.hash != b.hash:
            self.counters["final_conflict"] += 1
            log.error(
                "Finalized block %d 0x%s, but 0x%s is included at that height (retract it first): ignored",
                b.number,
                b.hash.hex(),
                at_height[0].block.hash.hex(),
            )
            return []
        fold = [p for p in self.pending if p.block.number <= b.number]
        self.pending = [p for p in self.pending if p.block.number > b.number]
        batch = self.writer.batch()
        self.final.dirty = set()
        for p in fold:
            self.final.apply_block(p.block, p.logs)
            batch.delete_block(p.block.number, p.block.hash)
        if not fold or fold[-1].block.hash != b.hash:
            self.final.set_block(b)  # a block without logs, reported only now
        for key in sorted(self.final.dirty):
            value = self.final.entry_value(key)
            if value is None:
                batch.delete_chain_entry(key)
            else:
                batch.put_chain_entry(key, value)
        self.final.dirty = None
        self._has_model = True
        if not self.pending and self.included.block != self.final.block and self.final.block is not None:
            self.included.set_block(self.final.block)
        touched: set[Hash32] = set()
        outputs = self._effects(fold, OrderState.FINAL, batch, touched)
        self._commit(batch, msg.cursor, touched)
        return outputs

    def _retracted(self, msg: Retracted) -> list[ChainOutput]:
        b = msg.block
        index = next((i for i, p in enumerate(self.pending) if p.block.hash == b.hash), None)
        batch = self.writer.batch()
        outputs: list[ChainOutput] = []
        touched: set[Hash32] = set()
        if index is None:
            if self.final.block is not None and b.number <= self.final.block.number:
                self.counters["retract_final"] += 1
                log.error("block %d 0x%s is final and cannot be retracted: ignored", b.number, b.hash.hex())
                return []
            # A block the watcher reported only through the cursor (no exchange logs): nothing to undo.
            self.counters["retract_empty"] += 1
        else:
            dropped = self.pending[index:]
            if len(dropped) > 1:
                self.counters["retract_out_of_order"] += 1
                log.warning("block %d retracted below %d held block(s): dropping them too", b.number, len(dropped) - 1)
            self._drop(dropped, batch, outputs, touched)
        self._commit(batch, msg.cursor, touched)
        return outputs

    def _drop(
        self, dropped: list[PendingBlock], batch: ProcessorBatch, outputs: list[ChainOutput], touched: set[Hash32]
    ) -> None:
        hashes = {p.block.hash for p in dropped}
        self.pending = [p for p in self.pending if p.block.hash not in hashes]
        self._recompute_included()
        for p in dropped:
            batch.delete_block(p.block.number, p.block.hash)
        outputs += self._effects(dropped, OrderState.REORGED, batch, touched)

    def _commit(self, batch: ProcessorBatch, cursor: ChainCursor, touched: Iterable[Hash32]) -> None:
        block = self.included.block.number if self.included.block is not None else 0
        for h in sorted(touched):
            self._update_order(h, batch, block)
        if not self._has_model:
            value = self.final.entry_value(b"g")
            assert value is not None
            batch.put_chain_entry(b"g", value)
        batch.put_cursor(cursor)
        self.writer.commit(batch, sync=False)
        self._has_model = True
        self.cursor = cursor

    # -------------------------------------------------------------------------------------------- effects

    def _effects(
        self, blocks: list[PendingBlock], state: OrderState, batch: ProcessorBatch, touched: set[Hash32]
    ) -> list[ChainOutput]:
        """The outputs and the order and batch records of ``blocks`` entering ``state`` (INCLUDED, FINAL,
        REORGED); the views are already updated."""
        fills: dict[tuple[Address, Salt], set[Hash32]] = {}
        cancels: list[CancelUpdate] = []
        batches: list[BatchUpdate] = []
        for p in blocks:
            per_seq: dict[int, dict[str, list[codec.Value]]] = {}
            for entry in p.logs:
                e = entry.event
                if isinstance(e, ex.OrderFilledEvent):
                    for trader, salt, h in (
                        (e.maker, e.maker_salt, e.maker_hash),
                        (e.taker, e.taker_salt, e.taker_hash),
                    ):
                        key = (checksum(trader), Salt(salt))
                        fills.setdefault(key, set()).add(Hash32(bytes(h)))
                        touched.add(Hash32(bytes(h)))
                    per_seq.setdefault(e.seq, {"fills": [], "skipped": []})["fills"].append(
                        [e.fill_index, e.maker_hash, e.taker_hash, e.amount, e.maker_filled, e.taker_filled]
                    )
                elif isinstance(e, ex.FillSkippedEvent):
                    per_seq.setdefault(e.seq, {"fills": [], "skipped": []})["skipped"].append(
                        [e.fill_index, e.maker_hash, e.taker_hash, e.reason]
                    )
                elif isinstance(e, ex.OrderCancelledEvent):
                    cancels.append(CancelUpdate(checksum(e.trader), Salt(e.salt), False, state))
                elif isinstance(e, ex.CancelledUpToEvent):
                    cancels.append(CancelUpdate(checksum(e.trader), Salt(e.salt), True, state))
                elif isinstance(e, ex.BatchSettledEvent):
                    seq_data = per_seq.get(e.seq, {"fills": [], "skipped": []})
                    batches.append(self._batch_record(p.block, entry, e, seq_data, state, batch))
        out: list[ChainOutput] = []
        for (trader, salt), hashes in sorted(fills.items()):
            key = (trader, salt)
            out.append(
                FillUpdate(
                    trader,
                    salt,
                    tuple(sorted(hashes)),
                    self.included.filled.get(key, 0),
                    self.final.filled.get(key, 0),
                    state,
                )
            )
        out += batches
        out += cancels
        return out

    def _batch_record(
        self,
        block: BlockRef,
        entry: ChainLog,
        e: ex.BatchSettledEvent,
        seq_data: dict[str, list[codec.Value]],
        state: OrderState,
        batch: ProcessorBatch,
    ) -> BatchUpdate:
        batch_hash = Hash32(bytes(e.batch_hash))
        old = self.store.get_batch(e.seq)
        if state is OrderState.INCLUDED or old is None or old.hash == batch_hash:
            payload = codec.pack(
                {
                    "block_hash": block.hash,
                    "tx": entry.tx_hash,
                    "round": e.round,
                    "set_version": e.set_version,
                    "submitter": e.submitter,
                    "fills": seq_data["fills"],
                    "skipped": seq_data["skipped"],
                }
            )
            rec = BatchRecord(
                e.seq,
                batch_hash,
                state,
                block.number,
                payload,
                None if old is None else old.worker_tx,
                "" if old is None else old.outcome,
            )
            batch.put_batch(rec)
        return BatchUpdate(e.seq, batch_hash, state, block.number)

    def _update_order(self, order_hash: Hash32, batch: ProcessorBatch, block_number: int) -> None:
        """Bring a stored order's fill amounts (per view) and state in line with the views."""
        rec = self.store.get_order(order_hash)
        if rec is None:
            return  # an order this node never accepted
        key = rec.signed.order.key
        included, final = self.included.filled.get(key, 0), self.final.filled.get(key, 0)
        filled = tuple((s, a) for s, a in ((OrderState.INCLUDED, included), (OrderState.FINAL, final)) if a)
        state = rec.state
        if state in _OPEN_STATES:
            amount = rec.signed.order.amount
            if final >= amount:
                state = OrderState.FINAL
            elif included >= amount:
                state = OrderState.INCLUDED
            elif state in (OrderState.INCLUDED, OrderState.FINAL):
                state = OrderState.ACCEPTED  # a reorg took fills away: open again
        new: OrderRecord = replace(rec, filled=filled, state=state, updated_block=block_number)
        if new != rec:
            batch.put_order(new)

    # -------------------------------------------------------------------------------------------- worker results

    def record_worker_outcome(
        self, seq: int, outcome: str, *, tx_hash: Hash32 | None = None, batch_hash: Hash32 | None = None
    ) -> BatchRecord:
        """Note on batch ``seq``'s record what the worker reported: ``submitted`` (with its ``tx_hash``), ``stale``
        (another batch took the seq) or ``reverted``. A seq not seen on chain yet needs ``batch_hash`` (its record
        starts in state SUBMITTED); the chain alone moves the state after that."""
        if outcome not in WORKER_OUTCOMES:
            raise ValueError(f"worker outcome {outcome!r} is not one of {sorted(WORKER_OUTCOMES)}")
        rec = self.store.get_batch(seq)
        if rec is None:
            if batch_hash is None:
                raise ValueError(f"no record of batch {seq}: name its batch hash")
            rec = BatchRecord(seq, batch_hash, OrderState.SUBMITTED, 0)
        new = replace(rec, worker_tx=tx_hash if tx_hash is not None else rec.worker_tx, outcome=outcome)
        b = self.writer.batch()
        b.put_batch(new)
        self.writer.commit(b, sync=False)
        return new
