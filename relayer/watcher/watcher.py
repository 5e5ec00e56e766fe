"""The chain watcher: WebSocket ``eth_subscribe`` (newHeads + the exchange's logs), backfill by ``eth_getLogs`` after
every (re)connect, confirmation depth, reorg detection by block hash, de-duplication by (blockHash, txHash, logIndex).

What it tells the processor, and the cursor each message carries, is described in :mod:`relayer.watcher.events`.
The model behind it:

* ``final_number``: every processed block at or below it is final (``Finalized`` was sent for each block that had an
  ``Included``); ``anchor`` is the hash of block ``final_number`` (None until known).
* ``window``: the processed blocks above ``final_number``, dense (one per height) up to the cursor. Each of them got an
  ``Included`` (blocks near the head are reported even without exchange logs: that keeps the cursor fresh and makes
  the window contiguous, so a reorg is found by comparing hashes height by height). ``ChainCursor.recent`` is this
  window as (number, hash) pairs; the cursor is its top block (or the anchor when the window is empty).
* Given a head ``H`` (``c`` = confirmations): the blocks above the cursor up to ``H - c`` are final at once: they are
  read by ``eth_getLogs`` in ranges of ``log_range_blocks``, and only blocks with exchange logs (plus the end of each
  range, to keep the cursor fresh) are reported, each ``Included`` then ``Finalized``. The blocks above ``H - c`` are
  read header by header (parent hashes checked) and each one is ``Included``. Window blocks at or below
  ``min(cursor, H - c)`` are then ``Finalized``.
* Reorgs: a new head whose parent is not the cursor, or any head at a known height with another hash, or a
  ``removed: true`` log, makes the watcher compare its window with the canonical hashes from the top down; the
  blocks above the highest match are ``Retracted`` (highest first) and the canonical ones read again. A head below
  the cursor whose hash matches is a lagging node, not a reorg: nothing is retracted until a conflicting block shows
  up. A change at or below ``final_number`` is a reorg deeper than the window: logged as an error and counted
  (``deep_reorgs``); final blocks are never retracted.
* Logs whose block hash disagrees with the header held at that height (a reorg during backfill) abort the round,
  which starts again from a fresh head; ``eth_getLogs`` never goes past that head.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from bindings import exchange as ex
from relayer.chain.errors import ChainError, RpcResponseError, RpcUrlError
from relayer.chain.rpc import WsRpc, endpoint_label, from_quantity, to_quantity
from relayer.codegen import AbiDecodeError
from relayer.store.records import ChainCursor
from relayer.types import Hash32
from relayer.watcher.events import BlockRef, ChainLog, ChainMessage, Finalized, Head, Included, Retracted

__all__ = [
    "ChainInconsistentError",
    "Connector",
    "Watcher",
    "WatcherProtocolError",
    "WatcherRpc",
    "WatcherStats",
    "WatcherSubscription",
]

log = logging.getLogger("relayer.watcher")

ZERO_HASH: Final = Hash32(b"\0" * 32)
MAX_ROUND_ATTEMPTS: Final = 8
"""Rounds in a row that may find the chain changed under them before the session gives up and reconnects."""
_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}")


class WatcherSubscription(Protocol):
    async def receive(self) -> Any: ...


class WatcherRpc(Protocol):
    """What the watcher needs from a connection: :class:`~relayer.chain.rpc.WsRpc` provides it."""

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any: ...

    async def subscribe(self, kind: str, params: Sequence[Any] = ()) -> WatcherSubscription: ...


Connector = Callable[[str], AbstractAsyncContextManager[WatcherRpc]]
"""Opens a connection to one URL (the default: ``WsRpc(url, timeout=request_timeout_s)``)."""


class WatcherProtocolError(ChainError):
    """The node sent a header or log the watcher cannot use (missing or malformed fields)."""


class ChainInconsistentError(ChainError):
    """The chain kept changing under a sync round (or the node contradicted itself) more than allowed in a row."""


class _ChainMovedError(Exception):
    """The node's answers within one round disagree (a reorg during the round): start the round again."""


@dataclass
class WatcherStats:
    """Counters and gauges of one watcher (the API exposes them as metrics)."""

    head: int = -1
    """The newest head seen."""
    cursor: int = -1
    """The last processed block."""
    connects: int = 0
    reconnects: int = 0
    """Sessions that ended with an error (each is followed by a reconnect after backoff)."""
    reorgs: int = 0
    deep_reorgs: int = 0
    """Reorgs that reached at or below the newest final block (deeper than ``confirmations``)."""
    retracted_blocks: int = 0
    included_blocks: int = 0
    finalized_blocks: int = 0
    delivered_logs: int = 0
    undecodable_logs: int = 0
    """Logs with a known event signature that did not decode (delivered with ``event=None``)."""
    unknown_logs: int = 0
    """Logs of the exchange with an unknown topic0, or none (delivered with ``event=None``)."""
    malformed_logs: int = 0
    """Logs without a usable position (block, transaction, index): dropped."""
    removed_logs: int = 0
    """``removed: true`` log notifications (real nodes send them on reorgs; anvil does not)."""
    late_logs: int = 0
    """Subscription logs of an already reported block that ``eth_getLogs`` had not returned (node inconsistency)."""
    get_logs_calls: int = 0
    split_ranges: int = 0
    """``eth_getLogs`` ranges the node refused and that were split in two."""
    round_retries: int = 0
    """Sync rounds started again because the chain changed during them."""
    last_error: str = ""

    @property
    def lag(self) -> int:
        """Head minus cursor (0 when the node is behind the cursor or nothing is known yet)."""
        return max(0, self.head - self.cursor) if self.head >= 0 else 0


@dataclass
class _Round:
    """One sync round against one head: headers fetched by number are cached for the round only."""

    rpc: WatcherRpc
    head: BlockRef
    headers: dict[int, BlockRef | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers[self.head.number] = self.head

    async def header(self, number: int) -> BlockRef | None:
        if number not in self.headers:
            if number > self.head.number:
                self.headers[number] = None
            else:
                raw = await self.rpc.call("eth_getBlockByNumber", [to_quantity(number), False])
                self.headers[number] = None if raw is None else parse_header(raw)
        return self.headers[number]

    async def require(self, number: int) -> BlockRef:
        ref = await self.header(number)
        if ref is None:
            raise _ChainMovedError(f"block {number} is gone (head was {self.head.number})")
        return ref


# --------------------------------------------------------------------------------------------------------------------
# Parsing


def _hash(value: Any, what: str) -> Hash32:
    if not isinstance(value, str) or _HEX32.fullmatch(value) is None:
        raise WatcherProtocolError(f"{what} is not a 32-byte hash: {value!r}")
    return Hash32(bytes.fromhex(value[2:]))


def _quantity(value: Any, what: str) -> int:
    try:
        return from_quantity(value)
    except ValueError:
        raise WatcherProtocolError(f"{what} is not a quantity: {value!r}") from None


def parse_header(raw: Any) -> BlockRef:
    """A block header (``eth_getBlockByNumber`` or a ``newHeads`` notification) as a :class:`BlockRef`."""
    if not isinstance(raw, dict):
        raise WatcherProtocolError(f"block header is not an object: {raw!r:.120}")
    return BlockRef(
        number=_quantity(raw.get("number"), "block number"),
        hash=_hash(raw.get("hash"), "block hash"),
        parent_hash=_hash(raw.get("parentHash"), "parent hash"),
        timestamp=_quantity(raw.get("timestamp"), "block timestamp"),
    )


@dataclass(frozen=True, slots=True)
class _RawLog:
    number: int
    block_hash: Hash32
    tx_hash: Hash32
    tx_index: int
    log_index: int
    removed: bool
    raw: dict[str, Any]

    @property
    def key(self) -> tuple[bytes, bytes, int]:
        return (self.block_hash, self.tx_hash, self.log_index)


def _parse_log(raw: Any) -> _RawLog:
    if not isinstance(raw, dict):
        raise WatcherProtocolError(f"log is not an object: {raw!r:.120}")
    return _RawLog(
        number=_quantity(raw.get("blockNumber"), "log blockNumber"),
        block_hash=_hash(raw.get("blockHash"), "log blockHash"),
        tx_hash=_hash(raw.get("transactionHash"), "log transactionHash"),
        tx_index=_quantity(raw.get("transactionIndex"), "log transactionIndex"),
        log_index=_quantity(raw.get("logIndex"), "log logIndex"),
        removed=raw.get("removed") is True,
        raw=raw,
    )


# --------------------------------------------------------------------------------------------------------------------
# The watcher


class Watcher:
    """Watches the exchange's events on chain and sends :data:`~relayer.watcher.events.ChainMessage` in chain order.

    ``cursor`` is the one the processor stored with the last message it applied (None: start at ``start_block``).
    ``run`` delivers everything after it exactly once, and retracts (by block hash) what left the canonical chain,
    including while the node was down (the cursor's ``recent`` window). Transport failures, node errors and garbage
    never end ``run``: the session is dropped and the next URL is tried after an exponential backoff (from
    ``backoff_min_s`` up to ``backoff_max_s``).
    """

    def __init__(
        self,
        ws_urls: Sequence[str],
        exchange: str,
        cursor: ChainCursor | None,
        *,
        start_block: int,
        confirmations: int,
        log_range_blocks: int,
        backoff_max_s: float,
        backoff_min_s: float = 0.1,
        request_timeout_s: float = 10.0,
        connect: Connector | None = None,
    ) -> None:
        if not ws_urls:
            raise ValueError("at least one WebSocket URL is needed")
        if isinstance(ws_urls, str):
            raise TypeError("ws_urls must be a sequence of URLs, not a string")
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", exchange):
            raise ValueError(f"exchange is not an address: {exchange!r}")
        if start_block < 0 or confirmations < 0 or log_range_blocks < 1:
            raise ValueError("start_block and confirmations must be >= 0 and log_range_blocks >= 1")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}")
        self._urls = list(ws_urls)
        self._labels = [_label(u) for u in self._urls]
        self._exchange = exchange.lower()
        self._confirmations = confirmations
        self._range = log_range_blocks
        self._backoff_min = backoff_min_s
        self._backoff_max = backoff_max_s
        self._timeout = request_timeout_s
        self._connect: Connector = connect or self._ws_connect
        self.stats = WatcherStats()
        self._live = False

        self._window: list[BlockRef] = []
        self._stubs: set[bytes] = set()  # window blocks known only by (number, hash), from a stored cursor
        self._pending: dict[bytes, tuple[int, dict[tuple[bytes, bytes, int], _RawLog]]] = {}  # by block hash
        self._delivered: dict[bytes, set[tuple[bytes, bytes, int]]] = {}  # log keys of window blocks
        if cursor is None:
            self._final = start_block - 1
            self._anchor: Hash32 | None = ZERO_HASH if start_block == 0 else None
        else:
            self._restore(cursor)
        self.stats.cursor = self.cursor_number

    def _restore(self, cursor: ChainCursor) -> None:
        recent = sorted(cursor.recent)
        if not recent:
            self._final, self._anchor = cursor.number, cursor.hash
            return
        numbers = [n for n, _ in recent]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))) or recent[-1] != (cursor.number, cursor.hash):
            raise ValueError(
                f"cursor's recent blocks must be contiguous and end at the cursor ({cursor.number}): {numbers}"
            )
        self._final, self._anchor = numbers[0] - 1, None
        parent: Hash32 = ZERO_HASH
        for number, block_hash in recent:
            self._window.append(BlockRef(number=number, hash=block_hash, parent_hash=parent, timestamp=0))
            self._stubs.add(block_hash)
            parent = block_hash

    # ------------------------------------------------------------------------------------------ state

    @property
    def cursor_number(self) -> int:
        return self._window[-1].number if self._window else self._final

    @property
    def cursor(self) -> ChainCursor | None:
        """The watcher's cursor: the one the last message carried (or newer when only the anchor hash was learnt);
        None before the first block is known."""
        if self._window:
            top = self._window[-1]
            return ChainCursor(top.number, top.hash, tuple((b.number, b.hash) for b in self._window))
        if self._anchor is None or self._final < 0:
            return None
        return ChainCursor(self._final, self._anchor, ())

    def _cursor_now(self) -> ChainCursor:
        cursor = self.cursor
        assert cursor is not None, "a message before the cursor is known"
        return cursor

    def _hash_at(self, number: int) -> Hash32 | None:
        if self._window and self._window[0].number <= number <= self._window[-1].number:
            return self._window[number - self._window[0].number].hash
        return self._anchor if number == self._final else None

    @property
    def _cursor_hash(self) -> Hash32 | None:
        return self._window[-1].hash if self._window else self._anchor

    # ------------------------------------------------------------------------------------------ run

    def _ws_connect(self, url: str) -> AbstractAsyncContextManager[WatcherRpc]:
        return WsRpc(url, timeout=self._timeout, connect_timeout=self._timeout)

    async def run(self, send: trio.MemorySendChannel[ChainMessage]) -> None:
        """Watch until cancelled (or until ``send``'s receiver is closed: ``trio.BrokenResourceError``)."""
        failures = 0
        index = 0
        while True:
            url, label = self._urls[index], self._labels[index]
            self._live = False
            try:
                # Two connections: one only receives subscriptions, the other carries the watcher's calls. On one
                # socket a notification written right after a call's answer waits for the client's delayed ACK
                # (Nagle on the node's side): measured on anvil, a new head then arrives ~40 ms late, not ~2 ms.
                async with self._connect(url) as rpc, self._connect(url) as calls:
                    self.stats.connects += 1
                    log.info("watcher connected to %s (cursor %d)", label, self.cursor_number)
                    await _unwrap(self._session(rpc, calls, send))
            except (ChainError, _ChainMovedError) as exc:
                self.stats.last_error = f"{label}: {exc}"
                log.warning("watcher session on %s ended: %s", label, exc)
            self.stats.reconnects += 1
            failures = 1 if self._live else failures + 1
            index = (index + 1) % len(self._urls)
            delay = min(self._backoff_min * 2 ** min(failures - 1, 40), self._backoff_max)
            log.info("watcher reconnecting to %s in %.2f s", self._labels[index], delay)
            await trio.sleep(delay)

    async def _session(self, subs: WatcherRpc, rpc: WatcherRpc, send: trio.MemorySendChannel[ChainMessage]) -> None:
        heads = await subs.subscribe("newHeads")
        logs = await subs.subscribe("logs", [{"address": self._exchange}])
        inbox_send, inbox = trio.open_memory_channel[tuple[str, Any]](4096)

        async def forward(kind: str, sub: WatcherSubscription) -> None:
            try:
                while True:
                    await inbox_send.send((kind, await sub.receive()))
            except (ChainError, trio.EndOfChannel) as exc:
                error = exc if isinstance(exc, ChainError) else ChainError(f"{kind} subscription ended")
                await inbox_send.send(("error", error))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward, "head", heads)
            nursery.start_soon(forward, "log", logs)
            await self._sync(rpc, send, None)  # backfill from the cursor
            self._live = True
            while True:
                items = [await inbox.receive()]
                while True:
                    try:
                        items.append(inbox.receive_nowait())
                    except trio.WouldBlock:
                        break
                head: BlockRef | None = None
                recheck = False
                for kind, item in items:
                    if kind == "error":
                        raise item
                    if kind == "head":
                        head = parse_header(item)
                    elif self._note_log(item):
                        recheck = True
                if head is not None or recheck:
                    await self._sync(rpc, send, None if recheck else head)

    def _note_log(self, raw: Any) -> bool:
        """Keep a subscription log for its block; True when it says a reorg happened (``removed: true``)."""
        try:
            entry = _parse_log(raw)
        except WatcherProtocolError as exc:
            self.stats.malformed_logs += 1
            log.warning("dropping a malformed log notification: %s", exc)
            return False
        if entry.removed:
            self.stats.removed_logs += 1
            log.info("node reports a removed log in block %d (%s): checking for a reorg", entry.number, _hx(entry))
            self._pending.pop(entry.block_hash, None)
            return True
        delivered = self._delivered.get(entry.block_hash)
        if delivered is not None:
            if entry.key not in delivered:
                self.stats.late_logs += 1
                log.warning("log %s of reported block %d came only by subscription", _hx(entry), entry.number)
            return False
        if entry.number > self.cursor_number:
            self._pending.setdefault(entry.block_hash, (entry.number, {}))[1][entry.key] = entry
        return False

    # ------------------------------------------------------------------------------------------ sync

    async def _sync(self, rpc: WatcherRpc, send: trio.MemorySendChannel[ChainMessage], head: BlockRef | None) -> None:
        for _ in range(MAX_ROUND_ATTEMPTS):
            if head is None:
                head = parse_header(await rpc.call("eth_getBlockByNumber", ["latest", False]))
            try:
                await self._round(_Round(rpc, head), send)
            except _ChainMovedError as exc:
                self.stats.round_retries += 1
                log.info("chain changed during sync (%s); starting again from a fresh head", exc)
                head = None
                continue
            return
        raise ChainInconsistentError(f"the chain changed under {MAX_ROUND_ATTEMPTS} sync rounds in a row")

    async def _round(self, ctx: _Round, send: trio.MemorySendChannel[ChainMessage]) -> None:
        head = ctx.head
        self.stats.head = head.number
        if not (head.number == self.cursor_number + 1 and head.parent_hash == self._cursor_hash):
            await self._reconcile(ctx, send)
        await self._finalize(ctx, send)
        final_limit = head.number - self._confirmations
        while self.cursor_number < final_limit:
            first = self.cursor_number + 1
            await self._final_range(ctx, send, first, min(first + self._range - 1, final_limit))
        while self.cursor_number < head.number:
            first = self.cursor_number + 1
            await self._near_range(ctx, send, first, min(first + self._range - 1, head.number))
        await self._finalize(ctx, send)
        # Subscription logs at or below the cursor were merged, or belong to blocks that left the chain.
        self._pending = {h: p for h, p in self._pending.items() if p[0] > self.cursor_number}
        self.stats.cursor = self.cursor_number
        await send.send(Head(block=head, lag=self.stats.lag))

    async def _reconcile(self, ctx: _Round, send: trio.MemorySendChannel[ChainMessage]) -> None:
        """Compare what was reported with the canonical chain; retract the blocks that left it."""
        top = min(self.cursor_number, ctx.head.number)
        number = top
        while number > self._final:
            ref = await ctx.header(number)
            if ref is not None and ref.hash == self._hash_at(number):
                break
            number -= 1
        if number == self._final and self._final <= ctx.head.number:
            canonical = ZERO_HASH if self._final < 0 else (await ctx.require(self._final)).hash
            if self._anchor is None:
                self._anchor = canonical
            elif canonical != self._anchor:
                self.stats.deep_reorgs += 1
                log.error(
                    "REORG DEEPER THAN %d CONFIRMATIONS: final block %d changed from %s to %s; final events are not "
                    "retracted (the processor keeps them), reading on from the new chain",
                    self._confirmations,
                    self._final,
                    "0x" + self._anchor.hex(),
                    "0x" + canonical.hex(),
                )
                self._anchor = canonical
        if number >= top:
            return  # no conflict (a head below the cursor with a matching hash is a lagging node)
        gone = [b for b in self._window if b.number > number]
        if not gone:
            return
        self.stats.reorgs += 1
        log.warning(
            "reorg: blocks %d..%d left the canonical chain (common ancestor %d); retracting them",
            gone[0].number,
            gone[-1].number,
            number,
        )
        for ref in reversed(gone):
            shown = await self._orphan_ref(ctx.rpc, ref) if ref.hash in self._stubs else ref
            # No await between changing the state and sending: a session that dies leaves both as they were.
            self._window.pop()
            self._delivered.pop(ref.hash, None)
            self._stubs.discard(ref.hash)
            ref = shown
            self.stats.retracted_blocks += 1
            self.stats.cursor = self.cursor_number
            await send.send(Retracted(block=ref, cursor=self._cursor_now()))

    async def _orphan_ref(self, rpc: WatcherRpc, stub: BlockRef) -> BlockRef:
        """The full header of a retracted block known only from a stored cursor, when the node still has it."""
        raw = await rpc.call("eth_getBlockByHash", ["0x" + stub.hash.hex(), False])
        if raw is None:
            return stub
        try:
            ref = parse_header(raw)
        except WatcherProtocolError:
            return stub
        return ref if ref.hash == stub.hash else stub

    async def _finalize(self, ctx: _Round, send: trio.MemorySendChannel[ChainMessage]) -> None:
        limit = min(self.cursor_number, ctx.head.number - self._confirmations)
        while self._window and self._window[0].number <= limit:
            ref = self._window[0]
            if ref.hash in self._stubs:
                canonical = await ctx.require(ref.number)
                if canonical.hash != ref.hash:
                    raise _ChainMovedError(f"block {ref.number} changed while being finalized")
                self._stubs.discard(ref.hash)
                ref = canonical
            self._window.pop(0)
            self._delivered.pop(ref.hash, None)
            self._final, self._anchor = ref.number, ref.hash
            self.stats.finalized_blocks += 1
            await send.send(Finalized(block=ref, cursor=self._cursor_now()))

    async def _final_range(
        self, ctx: _Round, send: trio.MemorySendChannel[ChainMessage], first: int, last: int
    ) -> None:
        """Blocks ``first..last``, all final already: report those with exchange logs, and the range's end."""
        assert not self._window
        by_block = _group(await self._get_logs(ctx.rpc, first, last))
        for number in sorted(by_block):
            ref = await ctx.require(number)
            await self._report(send, ref, by_block[number])
            await self._finalize(ctx, send)
        if self.cursor_number < last:
            await self._report(send, await ctx.require(last), {})
            await self._finalize(ctx, send)

    async def _near_range(self, ctx: _Round, send: trio.MemorySendChannel[ChainMessage], first: int, last: int) -> None:
        """Blocks ``first..last`` above the final depth: every header is read and linked to its parent."""
        parent = self._cursor_hash
        refs: list[BlockRef] = []
        for number in range(first, last + 1):
            ref = await ctx.require(number)
            if parent is not None and ref.parent_hash != parent:
                raise _ChainMovedError(f"block {number}'s parent is not the block held at {number - 1}")
            refs.append(ref)
            parent = ref.hash
        by_block: dict[int, dict[tuple[bytes, bytes, int], _RawLog]] | None = None
        if first == last:
            try:  # by block hash (EIP-234): exactly this block's logs, or an error once it left the chain
                by_block = _group(await self._get_logs(ctx.rpc, first, last, block_hash=refs[0].hash))
            except RpcResponseError as exc:
                log.info("eth_getLogs by hash of block %d failed (%s); reading it by number", first, exc)
        if by_block is None:
            by_block = _group(await self._get_logs(ctx.rpc, first, last))
            # The logs may come from another view of the chain than the headers: check the top is still there.
            again = await ctx.rpc.call("eth_getBlockByNumber", [to_quantity(last), False])
            if again is None or parse_header(again).hash != refs[-1].hash:
                raise _ChainMovedError(f"block {last} changed while its range was read")
        for ref in refs:
            await self._report(send, ref, by_block.get(ref.number, {}))

    async def _report(
        self,
        send: trio.MemorySendChannel[ChainMessage],
        ref: BlockRef,
        found: dict[tuple[bytes, bytes, int], _RawLog],
    ) -> None:
        """``Included`` for block ``ref`` (the next height), with its logs from eth_getLogs and the subscription."""
        assert ref.number > self.cursor_number and (not self._window or ref.number == self.cursor_number + 1)
        for entry in found.values():
            if entry.block_hash != ref.hash:
                raise _ChainMovedError(
                    f"logs of block {ref.number} name block 0x{entry.block_hash.hex()}, the header says "
                    f"0x{ref.hash.hex()}"
                )
        merged = dict(found)
        for key, entry in self._pending.pop(ref.hash, (0, {}))[1].items():
            merged.setdefault(key, entry)
        logs = tuple(self._chain_log(e) for e in sorted(merged.values(), key=lambda e: (e.tx_index, e.log_index)))
        self._window.append(ref)
        self._delivered[ref.hash] = set(merged)
        self.stats.included_blocks += 1
        self.stats.delivered_logs += len(logs)
        self.stats.cursor = ref.number
        await send.send(Included(block=ref, logs=logs, cursor=self._cursor_now()))

    def _chain_log(self, entry: _RawLog) -> ChainLog:
        event: Any = None
        try:
            decoded = ex.decode_event(entry.raw)
        except (AbiDecodeError, ValueError, TypeError, KeyError, IndexError) as exc:
            self.stats.undecodable_logs += 1
            log.warning("undecodable exchange log %s in block %d: %s", _hx(entry), entry.number, exc)
        else:
            if decoded is None:
                self.stats.unknown_logs += 1
                topics = entry.raw.get("topics") or ["none"]
                log.warning("exchange log %s in block %d has unknown topic0 %s", _hx(entry), entry.number, topics[0])
            else:
                event = decoded.event
        return ChainLog(
            block_number=entry.number,
            block_hash=entry.block_hash,
            tx_hash=entry.tx_hash,
            tx_index=entry.tx_index,
            log_index=entry.log_index,
            event=event,
        )

    async def _get_logs(
        self, rpc: WatcherRpc, first: int, last: int, *, block_hash: Hash32 | None = None
    ) -> list[_RawLog]:
        """The exchange's logs in ``first..last`` (or in one block by hash); ranges the node refuses are halved."""
        query: dict[str, Any] = {"address": self._exchange}
        if block_hash is not None:
            query["blockHash"] = "0x" + block_hash.hex()
        else:
            query["fromBlock"], query["toBlock"] = to_quantity(first), to_quantity(last)
        self.stats.get_logs_calls += 1
        try:
            result = await rpc.call("eth_getLogs", [query])
        except RpcResponseError as exc:
            if block_hash is not None:
                raise
            latest = parse_header(await rpc.call("eth_getBlockByNumber", ["latest", False]))
            if latest.number < last:
                raise _ChainMovedError(f"the head went back to {latest.number} below block {last}") from None
            if first == last:
                raise
            self.stats.split_ranges += 1
            middle = (first + last) // 2
            log.info("eth_getLogs %d..%d refused (%s); splitting the range", first, last, exc)
            return [
                *await self._get_logs(rpc, first, middle),
                *await self._get_logs(rpc, middle + 1, last),
            ]
        if not isinstance(result, list):
            raise WatcherProtocolError(f"eth_getLogs returned {type(result).__name__}, not a list")
        entries: list[_RawLog] = []
        for raw in result:
            try:
                entry = _parse_log(raw)
            except WatcherProtocolError as exc:
                self.stats.malformed_logs += 1
                log.warning("dropping a malformed log from eth_getLogs: %s", exc)
                continue
            if entry.removed or str(raw.get("address", "")).lower() != self._exchange:
                continue
            if not first <= entry.number <= last:
                raise _ChainMovedError(f"eth_getLogs {first}..{last} returned a log of block {entry.number}")
            entries.append(entry)
        return entries


def _group(entries: Iterable[_RawLog]) -> dict[int, dict[tuple[bytes, bytes, int], _RawLog]]:
    """Logs by block number, de-duplicated by (blockHash, txHash, logIndex)."""
    by_block: dict[int, dict[tuple[bytes, bytes, int], _RawLog]] = {}
    for entry in entries:
        by_block.setdefault(entry.number, {}).setdefault(entry.key, entry)
    return by_block


def _label(url: str) -> str:
    try:
        return endpoint_label(url)
    except RpcUrlError:
        if not url.startswith(("ws:", "wss:", "http:", "https:")):
            return url  # a test connector's name
        raise


def _hx(entry: _RawLog) -> str:
    return f"tx 0x{entry.tx_hash.hex()[:16]}.. log {entry.log_index}"


async def _unwrap(coro: Awaitable[None]) -> None:
    """Await ``coro``; an exception group holding one exception (from the session's nursery) leaves as that one."""
    try:
        await coro
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        chain = [e for e in leaves if isinstance(e, ChainError | _ChainMovedError)]
        if chain and len(chain) == len(leaves):
            raise chain[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
