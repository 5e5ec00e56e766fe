"""Anti-entropy for open orders and signed cancels (docs/p2p.md "Anti-entropy"), the way 0x Mesh's ordersync did it:
gossip is fast but lossy (a node that was down, restarted, or whose subscriber fell behind misses messages), so
every node periodically compares its order set with a peer's and fetches what it lacks.

Three request/response exchanges on the host's sync protocol, each on a reused stream:
  1. SUMMARY: the peer's 256 bucket digests; buckets whose digest differs from ours may hold something we lack;
  2. HASHES: the peer's hashes in those buckets (batched so every answer fits the size limit);
  3. FETCH: the orders and cancels we do not hold, by hash, in chunks.
What arrives is checked for form (relayer.p2p.wire) and for being what was asked for, then handed to ``on_items``;
signature recovery and admission are the node's job, as for gossip. Only pulls: a node never pushes, so a peer can
make it do no more work than answering.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from relayer.eip712 import Domain
from relayer.p2p import wire
from relayer.p2p.host import P2PHost, RequestError
from relayer.p2p.wire import OrderSetIndex, WireError
from relayer.types import PeerId, SignedCancel, SignedOrder

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("relayer.p2p.sync")

SyncSource = Callable[[], "OrderSetIndex | tuple[Iterable[SignedOrder], Iterable[SignedCancel]]"]
"""What this node holds: an :class:`OrderSetIndex` it keeps up to date (cheapest), or its open orders and cancels
(indexed here and cached for ``cache_ms``)."""
OnItems = Callable[[PeerId, list[SignedOrder], list[SignedCancel]], Awaitable[None]]
"""Receives what a sync round fetched from a peer: well-formed, not yet signature-checked."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    peer: PeerId
    differing_buckets: int
    missing: int
    orders: int
    cancels: int
    requests: int


@dataclass
class SyncStats:
    rounds: int = 0
    failed_rounds: int = 0
    orders_fetched: int = 0
    cancels_fetched: int = 0
    requests_served: int = 0
    bad_requests: int = 0
    bad_responses: int = 0


class OrderSync:
    """Responder and client of the sync protocol. The responder is registered on the host when this object is
    created, so it answers from the moment the host starts; :meth:`run` adds the periodic client."""

    def __init__(
        self,
        host: P2PHost,
        domain: Domain,
        source: SyncSource,
        on_items: OnItems,
        *,
        interval_ms: int | None = None,
        cache_ms: int = 250,
        request_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.domain = domain
        self.source = source
        self.on_items = on_items
        self.interval = (interval_ms if interval_ms is not None else host.config.sync_interval_ms) / 1000
        self.cache_s = cache_ms / 1000
        self.request_timeout = request_timeout
        self.stats = SyncStats()
        self.protocol = host.protocols.sync
        self._max_bytes = host.config.max_message_bytes
        self._cached: tuple[float, OrderSetIndex] | None = None
        host.set_handler(self.protocol, self._respond)

    # ---- shared ---------------------------------------------------------------------------------------------------

    def _index(self) -> OrderSetIndex:
        got = self.source()
        if isinstance(got, OrderSetIndex):
            return got
        now = trio.current_time()
        if self._cached is not None and now - self._cached[0] < self.cache_s:
            return self._cached[1]
        orders, cancels = got
        index = OrderSetIndex(orders, cancels)
        self._cached = (now, index)
        return index

    # ---- responder ------------------------------------------------------------------------------------------------

    async def _respond(self, peer: PeerId, payload: bytes) -> bytes:
        try:
            return self._answer(payload)
        except WireError:
            self.stats.bad_requests += 1
            raise

    def _answer(self, payload: bytes) -> bytes:
        kind = payload[:1]
        index = self._index()
        if kind == bytes((wire.KIND_SUMMARY_REQ,)):
            if len(payload) != 2 or payload[1] != wire.VERSION:
                raise WireError("trailing", "a summary request has no body")
            self.stats.requests_served += 1
            return wire.encode_summary(index.summary())
        if kind == bytes((wire.KIND_HASHES_REQ,)):
            buckets = wire.decode_hashes_request(payload)
            limit = min(wire.MAX_HASHES, (self._max_bytes - 16) // 32)
            hashes, truncated = index.hashes(buckets, limit)
            self.stats.requests_served += 1
            return wire.encode_hashes(hashes, truncated)
        if kind == bytes((wire.KIND_FETCH_REQ,)):
            wanted = wire.decode_fetch_request(payload)
            orders, cancels = index.items(wanted)
            while not wire.items_fitting(len(orders), len(cancels), self._max_bytes):  # the client asks again later
                if cancels:
                    cancels = cancels[: len(cancels) // 2]
                else:
                    orders = orders[: len(orders) // 2]
            self.stats.requests_served += 1
            return wire.encode_items(orders, cancels)
        raise WireError("kind", f"unknown sync request kind {payload[:1].hex() or '(empty)'}")

    # ---- client ---------------------------------------------------------------------------------------------------

    async def _ask(self, peer: PeerId, payload: bytes) -> bytes:
        return await self.host.request(peer, self.protocol, payload, self.request_timeout)

    async def sync_with(self, peer: PeerId) -> SyncResult:
        """One anti-entropy round with ``peer``: fetch every order and cancel it holds that this node lacks and hand
        them to ``on_items``. Raises :class:`RequestError` (network) or :class:`WireError` (a bad answer)."""
        requests = 1
        theirs = wire.decode_summary(await self._ask(peer, wire.encode_summary_request()))
        mine = self._index().summary()
        diff = [b for b in wire.differing_buckets(mine, theirs) if theirs[b][0] > 0]
        hash_limit = min(wire.MAX_HASHES, (self._max_bytes - 16) // 32)
        batches: list[list[int]] = []
        load = 0
        for b in diff:
            if batches and load + theirs[b][0] <= hash_limit:
                batches[-1].append(b)
                load += theirs[b][0]
            else:
                batches.append([b])
                load = theirs[b][0]
        missing: list[bytes] = []
        for batch in batches:
            requests += 1
            hashes, _truncated = wire.decode_hashes(await self._ask(peer, wire.encode_hashes_request(batch)))
            allowed = set(batch)
            index = self._index()
            for h in hashes:
                if h[0] not in allowed:
                    raise WireError("unrequested", f"hash {h.hex()} is not in a requested bucket")
                if h not in index:
                    missing.append(h)
        per_fetch = max(1, min(wire.MAX_FETCH, (self._max_bytes - 16) // wire.ORDER_SIZE))
        n_orders = n_cancels = 0
        for i in range(0, len(missing), per_fetch):
            chunk = missing[i : i + per_fetch]
            requests += 1
            orders, cancels = wire.decode_items(await self._ask(peer, wire.encode_fetch_request(chunk)), self.domain)
            asked = set(chunk)
            if any(o.hash not in asked for o in orders) or any(c.hash not in asked for c in cancels):
                raise WireError("unrequested", "the answer holds an item that was not asked for")
            if orders or cancels:
                n_orders += len(orders)
                n_cancels += len(cancels)
                await self.on_items(peer, orders, cancels)
        self.stats.orders_fetched += n_orders
        self.stats.cancels_fetched += n_cancels
        if n_orders or n_cancels:
            log.info("sync with %s: fetched %d orders and %d cancels", peer, n_orders, n_cancels)
        return SyncResult(peer, len(diff), len(missing), n_orders, n_cancels, requests)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync with each newly connected peer at once, and with one peer (round robin) every interval."""
        task_status.started()
        synced: set[PeerId] = set()
        turn = 0
        next_periodic = trio.current_time() + self.interval
        while True:
            peers = self.host.connected_peers()
            fresh = [p for p in peers if p not in synced]
            synced &= set(peers)  # a peer that left is synced again when it is back
            targets = fresh
            if not targets and peers and trio.current_time() >= next_periodic:
                targets = [peers[turn % len(peers)]]
                turn += 1
            if targets or trio.current_time() >= next_periodic:
                next_periodic = trio.current_time() + self.interval
            for peer in targets:
                if await self._round(peer):
                    synced.add(peer)  # a failed first round is retried at the next change or interval
            with trio.move_on_at(next_periodic):
                await self.host.wait_peers_changed()

    async def _round(self, peer: PeerId) -> bool:
        self.stats.rounds += 1
        try:
            result = await self.sync_with(peer)
        except RequestError as exc:
            self.stats.failed_rounds += 1
            log.info("sync with %s failed: %s", peer, exc)
        except WireError as exc:
            self.stats.failed_rounds += 1
            self.stats.bad_responses += 1
            log.warning("sync with %s: malformed answer: %s", peer, exc)
        else:
            log.debug("sync with %s: %s", peer, result)
            return True
        return False
