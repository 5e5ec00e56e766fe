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

Order intake (:meth:`Processor.intake_orders`, :meth:`Processor.intake_cancels`) and the book it owns
(:attr:`Processor.book`, a :class:`~relayer.matcher.book.Book`): an order is checked (signature and hash, market,
what :func:`~relayer.matcher.batch.dead_reason` says against the included view at the head time, the createdAt window
for API and gossip, the book's amendment rules), then stored synced (an acknowledged order is a promise) and only
then reported accepted. Signed cancels the same. After each chain message the book follows the included view:
on-chain cancels and ``cancelUpTo`` apply, a (trader, salt) whose fill counter reaches the live version's amount
leaves the book, so does an order expired at the included block's time, oracle prices activate conditional orders
(and park again those whose trigger no longer holds). The book is never stored: :meth:`Processor.open` (and a
retraction) rebuilds it from the stored orders and cancels and the included view, and the result equals the book
before the crash (:meth:`Processor.book_state_hash`).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from bindings import exchange as ex
from relayer.chainstate import ChainModel, ChainModelError, checksum, decode_logs, encode_logs
from relayer.eip712 import Domain, EncodingError, SignatureError, cancel_digest, verify_signer
from relayer.matcher.batch import dead_reason
from relayer.matcher.book import Book, trigger_holds
from relayer.matcher.model import Batch, ChainState, SkippedOrder, SkipReason
from relayer.store import codec
from relayer.store.db import ProcessorBatch, ProcessorWriter, Store
from relayer.store.errors import StoreCorruptError, StoreError
from relayer.store.records import BatchRecord, BlockRecord, CancelRecord, ChainCursor, OrderRecord
from relayer.types import Address, Hash32, MarketId, OrderState, Salt, Side, SignedCancel, SignedOrder, TriggerKind
from relayer.verify import Rejected, verify_all
from relayer.watcher.events import BlockRef, ChainLog, ChainMessage, Finalized, Head, Included, Retracted

__all__ = [
    "INTAKE_SOURCES",
    "WORKER_OUTCOMES",
    "BatchUpdate",
    "CancelUpdate",
    "ChainOutput",
    "FillUpdate",
    "IntakeResult",
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

INTAKE_SOURCES = frozenset({"api", "gossip", "sync", "proposal"})
"""Where an order or cancel came from. ``api`` and ``gossip`` are held to the createdAt window; ``sync`` (anti-entropy)
and ``proposal`` (an order first seen in a batch proposal: the quorum checks its createdAt against the proposal's
time itself) are not."""

_DEAD_REASONS = {
    SkipReason.MARKET_MISMATCH: "unknown_market",
    SkipReason.EXPIRED: "expired",
    SkipReason.CANCELLED: "cancelled",
    SkipReason.BOUNDS: "bounds",
    SkipReason.OVERFILL: "filled",
    SkipReason.FOK: "fok_partly_filled",
}


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What intake did with one order or cancel. ``accepted``: stored (synced) and applied to the book. ``reason`` is
    a stable snake_case code: ``accepted`` or ``parked`` (a conditional order waiting for its trigger) when accepted;
    otherwise why not: ``duplicate`` (already held: nothing written), ``bad_signature``, ``wrong_hash``,
    ``invalid_<field>`` (outside the network-wide bounds), ``unknown_market``, ``no_oracle_price``, ``expired``,
    ``cancelled``, ``bounds`` (the market's tick, sizes or max price), ``filled``, ``fok_partly_filled``,
    ``created_at_window``, and the book's ``superseded``, ``ioc_window``, ``amend_backdated``, ``amend_priority``."""

    hash: Hash32
    accepted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class PendingBlock:
    """An included, not yet final block with its decoded exchange logs, in log order."""

    block: BlockRef
    logs: tuple[ChainLog, ...]


# ------------------------------------------------------------------------------------------------------ processor


class Processor:
    """The node's processor. Open it with :meth:`open`; feed it the watcher's messages with :meth:`apply_chain`."""

    def __init__(
        self,
        store: Store,
        writer: ProcessorWriter,
        *,
        domain: Domain | None = None,
        created_at_window_s: int = 2,
        ioc_window_s: int = 60,
    ) -> None:
        if created_at_window_s < 0 or ioc_window_s < 0:
            raise ValueError("created_at_window_s and ioc_window_s must be >= 0")
        self.store = store
        self.writer = writer
        self.domain = domain
        """The exchange's EIP-712 domain (None: the intake methods refuse to run)."""
        self.created_at_window_s = created_at_window_s
        self.ioc_window_s = ioc_window_s
        self.book = Book(ioc_window_s)
        """The open orders, rebuilt on open; the processor is its only writer."""
        self._cancels: dict[bytes, SignedCancel] = {}
        self._gone: dict[tuple[Address, Salt], SignedOrder] = {}
        """The last live version of each (trader, salt) that left the book filled or expired: an older version is
        refused."""
        self._expiry: list[tuple[int, bytes]] = []
        """A heap of (expiry, hash) over the orders that entered the book (stale entries are skipped)."""
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
    def open(
        cls,
        store: Store,
        writer: ProcessorWriter | None = None,
        *,
        domain: Domain | None = None,
        created_at_window_s: int = 2,
        ioc_window_s: int = 60,
    ) -> Processor:
        """Rebuild both views from ``store`` (the final model's entries, the non-final blocks' logs) and the cursor
        to hand the watcher, then the book (stored open orders and signed cancels, less what the included view says
        is cancelled or filled). Takes the store's processor writer unless one is given. ``domain`` is the
        exchange's EIP-712 domain, needed by intake; ``created_at_window_s`` the intake window for createdAt (API and
        gossip); ``ioc_window_s`` the network's IOC window."""
        return cls(
            store,
            writer if writer is not None else store.processor(),
            domain=domain,
            created_at_window_s=created_at_window_s,
            ioc_window_s=ioc_window_s,
        )

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
        self._rebuild_book()
        log.info(
            "processor opened: final block %s, %d non-final block(s), cursor %s, state %s, book %d order(s) %s",
            None if self.final.block is None else self.final.block.number,
            len(self.pending),
            None if self.cursor is None else self.cursor.number,
            self.state_hash().hex()[:16],
            len(self.book),
            self.book_state_hash()[:16],
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

    # -------------------------------------------------------------------------------------------- book

    def book_state_hash(self) -> str:
        """The book's :meth:`~relayer.matcher.book.Book.state_hash` (hex)."""
        return self.book.state_hash()

    def first_seen(self, order_hash: bytes) -> int | None:
        """When this node first stored the order (ms), or None if it holds no such order."""
        rec = self.store.get_order(order_hash)
        return None if rec is None else rec.first_seen_ms

    def open_orders(self) -> list[SignedOrder]:
        """The book's live orders, active and parked, by hash (what the anti-entropy responder offers)."""
        book = self.book
        return [book.orders.get(h) or book.parked[h] for h in sorted((*book.orders, *book.parked))]

    def signed_cancels(self) -> list[SignedCancel]:
        """Every signed cancel this node holds, by hash."""
        return [self._cancels[h] for h in sorted(self._cancels)]

    def _rebuild_book(self) -> None:
        """The book from the store and the included view: the stored orders that can still fill, replayed so the
        amendment rules give the same live versions, then the signed cancels,
        the on-chain cancels and ``cancelUpTo`` salts, then the (trader, salt) pairs filled up to the live
        version's amount leave. Oracle prices are set first, so a conditional order whose trigger holds at the
        current price is active."""
        book = Book(self.ioc_window_s)
        chain = self.included
        for market, info in sorted(chain.markets.items()):
            if info.oracle_price:
                book.oracle[market] = info.oracle_price
        records = [r for r in self.store.iter_orders() if r.state in _OPEN_STATES]
        # The order of arrival, without trusting the clock: the accepted versions of one (trader, salt) came with
        # increasing createdAt, or equal createdAt and decreasing amount (a pure shrink); intake holds to it even
        # after a version left the book filled (_gone). The order across pairs changes nothing.
        records.sort(key=lambda r: (r.signed.order.created_at, -r.signed.order.amount, r.first_seen_ms, r.signed.hash))
        for r in records:
            book.add(r.signed)
        cancels: dict[bytes, SignedCancel] = {c.cancel.hash: c.cancel for c in self.store.iter_cancels()}
        for h in sorted(cancels):
            book.cancel(checksum(cancels[h].trader), cancels[h].salt)
        for trader, salt in sorted(chain.cancelled):
            book.cancel(trader, salt)
        for trader, up_to in sorted(chain.cancelled_up_to.items()):
            book.cancel_up_to(trader, Salt(up_to))
        self.book = book
        self._cancels = cancels
        self._gone = {}
        self._drop_filled(sorted((t, s) for t, salts in book.live.items() for s in salts))
        self._expiry = [(o.order.expiry, h) for h, o in (*book.orders.items(), *book.parked.items())]
        heapq.heapify(self._expiry)
        self._drop_expired()

    def _book_block(self, block: PendingBlock) -> None:
        """Bring the book in step with one newly included block (the included view already holds it)."""
        book = self.book
        filled: set[tuple[Address, Salt]] = set()
        for entry in block.logs:
            e = entry.event
            if isinstance(e, ex.OrderFilledEvent):
                filled.add((checksum(e.maker), Salt(e.maker_salt)))
                filled.add((checksum(e.taker), Salt(e.taker_salt)))
            elif isinstance(e, ex.OrderCancelledEvent):
                book.cancel(checksum(e.trader), Salt(e.salt))
            elif isinstance(e, ex.CancelledUpToEvent):
                book.cancel_up_to(checksum(e.trader), Salt(e.salt))
            elif isinstance(e, ex.OraclePriceEvent) and e.market in self.included.markets:
                for out in book.oracle_update(MarketId(e.market), e.price):
                    log.debug("conditional order 0x%s activated at oracle price %d", out.hash.hex(), e.price)
                self._repark(MarketId(e.market), e.price)
        self._drop_filled(sorted(filled))
        self._drop_expired()

    def _repark(self, market: MarketId, price: int) -> None:
        """Park again the active conditional orders of ``market`` whose trigger no longer holds at ``price``.

        So a conditional order is active exactly while its trigger holds at the included oracle price: the book is
        a function of the stored orders and the chain view, as a rebuild (after a restart or a retraction) sees it,
        whatever prices came in between. Such an order could not fill anyway (settlement checks the trigger; the
        matcher sets it aside with TRIGGER)."""
        book = self.book
        for h, signed in list(book.orders.items()):
            order = signed.order
            if order.trigger_kind == TriggerKind.NONE or order.market != market or trigger_holds(order, price):
                continue
            del book.orders[h]
            side = book.markets[market].bids if order.side == Side.BUY else book.markets[market].asks
            key = -order.price if order.side == Side.BUY else order.price
            side.remove(key, order.created_at, h)
            level = side.levels.get(key)
            if level is not None:  # drop its ghost entry: it may enter this level again
                level[:] = [item for item in level if item[1] != h]
            book.parked[h] = signed
            log.debug("conditional order 0x%s parked again at oracle price %d", h.hex(), price)

    def _drop_filled(self, keys: Iterable[tuple[Address, Salt]]) -> None:
        """Remove the live version of each (trader, salt) whose included fill counter reached its amount. A
        retraction that takes the fills away rebuilds the book, which brings it back (into a new book: a
        :class:`~relayer.matcher.book.BookSide` never takes back a hash it removed)."""
        book, filled = self.book, self.included.filled
        dead: list[SignedOrder] = []
        for trader, salt in keys:
            h = book.current(trader, salt)
            signed = None if h is None else book.get(h)
            if signed is not None and filled.get((trader, salt), 0) >= signed.order.amount:
                dead.append(signed)
        self._leave(dead, SkipReason.OVERFILL)

    def _drop_expired(self) -> None:
        """Remove the live versions that expired at the included view's block time (expiry <= its timestamp: the
        contract refuses them in any later block). A retraction (the time going back) rebuilds the book."""
        block = self.included.block
        if block is None:
            return
        heap, book = self._expiry, self.book
        dead: list[SignedOrder] = []
        while heap and heap[0][0] <= block.timestamp:
            _expiry, h = heapq.heappop(heap)
            signed = book.get(h)
            if signed is not None and book.current(signed.order.trader, signed.order.salt) == h:
                dead.append(signed)
        self._leave(dead, SkipReason.EXPIRED)

    def _leave(self, dead: list[SignedOrder], reason: SkipReason) -> None:
        """Take live versions out of the book (as a batch's retirement does), remembering each in :attr:`_gone`."""
        if not dead:
            return
        for signed in dead:
            self._gone[signed.order.key] = signed
        skipped = tuple(SkippedOrder(s.hash, reason) for s in dead)
        retire = Batch(0, (), (), (), (), skipped, False, ChainState(markets={}), {}, {})
        for out in self.book.retire(retire):
            # Not kept as superseded (retire does that): whether a cancel came before or after the fill or the
            # expiry must not change the book. The hash is refused again as a duplicate (it is stored).
            self.book.superseded.discard(out.hash)
            log.debug("order 0x%s left the book: %s", out.hash.hex(), out.reason)

    # -------------------------------------------------------------------------------------------- intake

    def _domain(self, source: str) -> Domain:
        if self.domain is None:
            raise RuntimeError("this processor was opened without the exchange's EIP-712 domain: it cannot verify")
        if source not in INTAKE_SOURCES:
            raise ValueError(f"intake source {source!r} is not one of {sorted(INTAKE_SOURCES)}")
        return self.domain

    def _count(self, prefix: str, results: list[IntakeResult]) -> None:
        for r in results:
            self.counters[f"{prefix}{r.reason}"] += 1

    def intake_orders(
        self, items: Sequence[tuple[SignedOrder, bool]], *, now_ms: int, source: str
    ) -> list[IntakeResult]:
        """Take in orders; ``items`` pairs each with whether its signature (and hash) was already verified by the
        caller. Results in input order (:class:`IntakeResult`). The accepted ones are stored in one synced write
        batch with ``first_seen_ms = now_ms`` before this returns, then they are in the book: acknowledge or gossip
        them only after this returns. A store failure raises (:class:`~relayer.store.errors.StoreError`) with the
        book as it was; nothing of the call is acknowledged."""
        domain = self._domain(source)
        results: list[IntakeResult | None] = [None] * len(items)
        chain = self.chain_state()
        markets = self.included.markets
        head_time = self.head.timestamp if self.head is not None else None
        windowed = source in ("api", "gossip")
        window_ms = self.created_at_window_s * 1000
        book = self.book

        # dedup by hash first (gossip repeats): a claimed hash that is held is quiet, whatever else it carries
        todo: list[int] = []
        seen: set[bytes] = set()
        for i, (signed, _verified) in enumerate(items):
            h = signed.hash
            if h in seen or book.get(h) is not None or self.store.get_order(h) is not None:
                results[i] = IntakeResult(h, False, "duplicate")
            else:
                seen.add(h)
                todo.append(i)
        unverified = [i for i in todo if not items[i][1]]
        checked = verify_all(domain, [(items[i][0].order, items[i][0].signature) for i in unverified])
        bad: dict[int, str] = {}
        for i, v in zip(unverified, checked, strict=True):
            signed = items[i][0]
            if isinstance(v, Rejected):
                bad[i] = v.reason if v.reason.startswith("invalid_") else "bad_signature"
                log.debug("order 0x%s from %s refused: %s (%s)", signed.hash.hex(), source, v.reason, v.detail)
            elif v != signed.hash:
                bad[i] = "wrong_hash"
                log.debug("order from %s names hash 0x%s, its digest is 0x%s", source, signed.hash.hex(), v.hex())

        accepted: list[tuple[int, str]] = []
        for i in todo:
            signed = items[i][0]
            order, h = signed.order, signed.hash
            reason = bad.get(i, "")
            if not reason:
                if order.market not in markets:
                    reason = "unknown_market"
                elif order.market not in chain.markets or head_time is None:
                    reason = "no_oracle_price"
                else:
                    dead = dead_reason(order, chain, head_time)
                    if dead is not None:
                        reason = _DEAD_REASONS[dead]
            gone = self._gone.get(order.key) if not reason else None
            if gone is not None and book.current(order.trader, order.salt) is not None:
                gone = None  # a newer version is live: the book's amendment rules apply
            if gone is not None and order.created_at <= gone.order.created_at:
                reason = "superseded"  # not newer than the version that left the book filled or expired
            # createdAt is whole seconds (the trader's clock, rounded down): it may be up to 999 ms older than it looks
            created_ms = order.created_at * 1000
            if not reason and windowed and (now_ms - created_ms > window_ms + 999 or created_ms - now_ms > window_ms):
                old_hash = book.current(order.trader, order.salt)
                old = None if old_hash is None else book.get(old_hash)
                if old is None or old.order.created_at != order.created_at or order.amount >= old.order.amount:
                    reason = "created_at_window"  # only a pure shrink keeps its old createdAt (the book checks it)
            if not reason:
                outs = book.add(signed)
                last = outs[-1]
                if last.kind == "rejected":
                    reason = last.reason
                else:
                    if gone is not None:
                        # as if the filled or expired version were still live and this one replaced it (what a
                        # rebuild, replaying both, does)
                        book.superseded.add(gone.hash)
                        del self._gone[order.key]
                    heapq.heappush(self._expiry, (order.expiry, h))
                    accepted.append((i, last.kind))
                    continue
            results[i] = IntakeResult(h, False, reason)
        if accepted:
            batch = self.writer.batch()
            for i, _kind in accepted:
                batch.accept_order(OrderRecord(items[i][0], now_ms))
            try:
                self.writer.commit(batch, sync=True)
            except StoreError:
                log.exception(
                    "storing %d accepted order(s) failed: the book goes back to before this call", len(accepted)
                )
                self._rebuild_book()  # the store holds the state before this call
                raise
            for i, kind in accepted:
                results[i] = IntakeResult(items[i][0].hash, True, kind)
        out = [r for r in results if r is not None]
        assert len(out) == len(items)
        self._count("order_", out)
        if accepted:
            log.debug("%d of %d order(s) from %s accepted", len(accepted), len(items), source)
        return out

    def intake_cancels(self, items: Sequence[SignedCancel], *, now_ms: int, source: str) -> list[IntakeResult]:
        """Take in trader-signed cancels (each cancels every version of (trader, salt), now and later, even for an
        order not seen yet). Checked: ``hash`` is the cancel's EIP-712 digest and the trader signed it. The
        accepted ones are stored in one synced write batch before this returns, then applied to the book."""
        domain = self._domain(source)
        results: list[IntakeResult] = []
        new: list[SignedCancel] = []
        seen: set[bytes] = set()
        for c in items:
            reason = ""
            if c.hash in self._cancels or c.hash in seen:
                reason = "duplicate"
            else:
                try:
                    digest = cancel_digest(domain, c.trader, c.salt)
                    if digest != c.hash:
                        reason = "wrong_hash"
                    else:
                        verify_signer(digest, c.signature, c.trader)
                except EncodingError as exc:
                    reason = "invalid_encoding"
                    log.debug("cancel from %s refused: %s", source, exc)
                except SignatureError as exc:
                    reason = "bad_signature"
                    log.debug("cancel 0x%s from %s refused: %s", c.hash.hex(), source, exc)
            if reason:
                results.append(IntakeResult(c.hash, False, reason))
            else:
                seen.add(c.hash)
                new.append(c)
                results.append(IntakeResult(c.hash, True, "accepted"))
        if new:
            batch = self.writer.batch()
            for c in new:
                batch.put_cancel(CancelRecord(c, now_ms))
            self.writer.commit(batch, sync=True)  # a failure raises before anything changed in memory
            for c in new:
                self._cancels[c.hash] = c
                for out in self.book.cancel(checksum(c.trader), c.salt):
                    log.debug("order 0x%s cancelled by a signed cancel", out.hash.hex())
        self._count("cancel_", results)
        return results

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
        if replaced:
            self._rebuild_book()  # a retraction: fills, cancels, prices and the block time may all go back
        else:
            self._book_block(pending)
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
        if index is not None:
            self._rebuild_book()  # fills, cancels, prices and the block time may all go back
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
