"""The relayer node's composition root (docs/DESIGN.md "One node, one process"): one trio nursery runs every component,
wired by bounded memory channels created here and nowhere else.

Today's components (the p2p and node issues add theirs to this same root):

* the **watcher** (relayer/watcher) reads the exchange's events over WebSocket and sends included / finalized /
  retracted blocks, each with the chain cursor that holds after it;
* the **processor** (relayer/processor.py) applies them, writing each block's effects and its cursor in one LevelDB
  write batch; it is the single writer of the chain model the matcher reads;
* the **worker** (relayer/worker) turns certified batches (:meth:`Node.submit`) into transactions and reports what
  became of them; the processor notes each outcome on the batch record.

Start-up refuses, with a message that says why, when the RPC is on another chain than the config says or the
configured address holds no exchange contract for this chain (its EIP-712 domain separator must be ours). Shutdown is
cooperative: cancelling :meth:`Node.run` stops every component, and the store is closed after the last writer is
done. A component that crashes takes the node down with it (the exception propagates out of :meth:`Node.run`): a
node is never half alive.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from bindings import exchange as ex
from relayer.chain.errors import ChainError
from relayer.chain.rpc import FailoverRpc, JsonRpc, from_quantity
from relayer.chain.tx import Signer
from relayer.config import Config
from relayer.driver import QuorumDriver, now_ms
from relayer.eip712 import Domain
from relayer.errors import RelayerError
from relayer.keys import RelayerKey
from relayer.p2p import GossipMessage, HostConfig, OrderSync, P2PError, P2PHost
from relayer.p2p.wire import WireError, cancels_validator, decode_cancels, decode_orders, orders_validator
from relayer.processor import Processor
from relayer.quorum import (
    ChainView,
    MessageError,
    OrderSource,
    Proposal,
    QuorumCore,
    QuorumParams,
    decode_message,
    precheck,
)
from relayer.quorum.persist import load_records
from relayer.store import Store
from relayer.types import Address, Hash32, PeerId, SignedCancel, SignedOrder
from relayer.watcher import ChainMessage, Head, Watcher
from relayer.worker import SettleJob, Worker, WorkerConfig, WorkerResult

if TYPE_CHECKING:  # trio_typing's trio stubs (installed with libp2p) shadow trio's own types and lack TaskStatus
    from trio_typing import TaskStatus

__all__ = ["Node", "NodeStartError", "NodeStatus"]

log = logging.getLogger("relayer.node")

CHAIN_CHANNEL = 256
"""Watcher → processor: blocks in flight. Full means the processor is behind; the watcher waits (no loss)."""
RESULT_CHANNEL = 256
"""Worker → processor: settlement outcomes."""
STATUS_EVERY_S = 30.0
VIEW_REFRESH_S = 1.0
"""How often the quorum's chain view is refreshed when no block came (its chain time follows the clock)."""
SYNC_DEADLINE_S = 10.0
"""The initial sync waits at most this long for each bootstrap peer."""


class NodeStartError(RelayerError):
    """The node cannot start as configured (wrong chain, no contract, unusable store or keys)."""


@dataclass(slots=True)
class NodeStatus:
    """What an operator (and later the API) sees: chain position, lag, counts."""

    started_at: float = field(default_factory=time.time)
    chain_id: int = 0
    exchange: str = ""
    head: int = 0
    cursor: int = 0
    lag: int = 0
    caught_up: bool = False
    blocks_applied: int = 0
    orders_accepted: int = 0
    worker_results: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "exchange": self.exchange,
            "head": self.head,
            "cursor": self.cursor,
            "lag": self.lag,
            "caught_up": self.caught_up,
            "blocks_applied": self.blocks_applied,
            "orders_accepted": self.orders_accepted,
            "worker_results": dict(self.worker_results),
            "uptime_s": round(time.time() - self.started_at, 1),
        }


def quorum_params(cfg: Config) -> QuorumParams:
    """The network's quorum parameters from the config (every node of a network must use the same values)."""
    q = cfg.quorum
    return QuorumParams(
        deadline_delta=q.batch_deadline_delta_s,
        gas_cap=q.batch_gas_cap,
        max_fills=q.max_fills_per_batch,
        intake_window=cfg.orders.created_at_window_s,
        round_timeout_ms=q.round_timeout_ms,
        round_timeout_cap_ms=q.round_timeout_max_ms,
        grace=q.certificate_grace_s,
        backup_delay_ms=q.backup_submit_delay_ms,
    )


def store_has_batch(store: Store | None, seq: int) -> bool:
    return store is not None and store.get_batch(seq) is not None


class Node:
    """One relayer node. ``key`` signs votes and proposals; ``gas_key`` pays for settlement (default: ``key``)."""

    def __init__(self, cfg: Config, key: RelayerKey, gas_key: RelayerKey | None = None) -> None:
        if cfg.chain.exchange is None:
            raise NodeStartError("chain.exchange is not set: deploy the exchange and put its address in the config")
        self.cfg = cfg
        self.key = key
        self.gas_key = gas_key or key
        self.exchange = str(cfg.chain.exchange)
        self.status = NodeStatus(chain_id=cfg.chain.chain_id, exchange=self.exchange)
        self.store: Store | None = None
        self.processor: Processor | None = None
        self.worker: Worker | None = None
        self.watcher: Watcher | None = None
        self.host: P2PHost | None = None
        self.sync: OrderSync | None = None
        self.driver: QuorumDriver | None = None
        self.domain = Domain(chain_id=cfg.chain.chain_id, verifying_contract=Address(self.exchange))
        self.ready = trio.Event()  # set once the watcher has caught up with the head after start
        self.synced = trio.Event()  # set once every reachable bootstrap peer answered the first sync (or a deadline)
        self._changed = trio.Event()  # set (and replaced) whenever the processor applied something
        self._submitted: dict[int, Hash32] = {}  # seq -> batch hash of what the worker was handed

    # --- public -----------------------------------------------------------------------------------------------------

    async def submit(self, job: SettleJob, batch_hash: Hash32) -> None:
        """Hand a certified batch (``batch_hash``: its EIP-712 digest) to the worker (the quorum decides to submit;
        the worker only executes)."""
        if self.worker is None:
            raise NodeStartError("the node is not running")
        self._submitted[job.seq] = batch_hash
        await self.worker.submit(job)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking after every chain message and worker result applied."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started`` fires once the store is recovered and every component runs."""
        cfg = self.cfg
        rpc = FailoverRpc(
            cfg.chain.rpc_http,
            timeout=cfg.chain.request_timeout_ms / 1000,
            backoff_cap=cfg.chain.reconnect_backoff_max_ms / 1000,
        )
        async with rpc:
            await self._check_chain(rpc)
            store = self._open_store()
            try:
                await self._run_with(rpc, store, task_status)
            finally:
                store.close()
                self.store = None
                log.info("store closed")

    # --- start-up -----------------------------------------------------------------------------------------------

    async def _check_chain(self, rpc: JsonRpc) -> None:
        cfg = self.cfg
        try:
            chain_id = from_quantity(await rpc.call("eth_chainId"))
            code = await rpc.call("eth_getCode", [self.exchange, "latest"])
        except ChainError as exc:
            raise NodeStartError(f"cannot reach the chain at {', '.join(cfg.chain.rpc_http)}: {exc}") from None
        if chain_id != cfg.chain.chain_id:
            raise NodeStartError(
                f"the RPC is on chain {chain_id} but chain.chain_id is {cfg.chain.chain_id}: refusing to start"
            )
        if not isinstance(code, str) or len(code) <= 2:
            raise NodeStartError(f"no contract at chain.exchange {self.exchange} on chain {chain_id}")
        try:
            raw = await rpc.call("eth_call", [{"to": self.exchange, "data": "0x" + ex.encode_domain_separator().hex()}])
            separator = ex.decode_domain_separator_result(bytes.fromhex(str(raw)[2:]))
        except (ChainError, RelayerError, ValueError) as exc:
            raise NodeStartError(
                f"the contract at {self.exchange} is not an exchange (domainSeparator: {exc})"
            ) from None
        expected = Domain(chain_id=chain_id, verifying_contract=Address(self.exchange)).separator
        if separator != expected:
            raise NodeStartError(
                f"the contract at {self.exchange} has another EIP-712 domain than this relayer's exchange "
                f"(separator {separator.hex()}, expected {expected.hex()}): wrong address or another version"
            )
        log.info("chain %d, exchange %s: checked", chain_id, self.exchange)

    def _open_store(self) -> Store:
        path = self.cfg.node.data_dir
        try:
            store = Store.open(path)
            recovered = store.recover()
        except RelayerError as exc:
            raise NodeStartError(f"store {path}: {exc}") from None
        log.info("store %s opened (%s)", path, recovered)
        return store

    async def _run_with(self, rpc: JsonRpc, store: Store, task_status: TaskStatus[Node]) -> None:
        cfg = self.cfg
        self.store = store
        processor = self.processor = Processor.open(
            store,
            domain=self.domain,
            created_at_window_s=cfg.orders.created_at_window_s,
            ioc_window_s=cfg.orders.ioc_window_s,
        )
        cursor = processor.cursor
        if cursor is not None:
            self.status.cursor = cursor.number
            log.info("resuming from block %d (%s)", cursor.number, cursor.hash.hex()[:16])
        else:
            log.info("empty store: reading the exchange's events from block %d", cfg.chain.start_block)
        self.watcher = Watcher(
            cfg.chain.rpc_ws,
            self.exchange,
            cursor,
            start_block=cfg.chain.start_block,
            confirmations=cfg.chain.confirmations,
            log_range_blocks=cfg.chain.log_range_blocks,
            backoff_max_s=cfg.chain.reconnect_backoff_max_ms / 1000,
            request_timeout_s=cfg.chain.request_timeout_ms / 1000,
        )
        signer = Signer(self.gas_key.secret, cfg.chain.chain_id)
        self.worker = Worker(rpc, signer, store.worker(), store, WorkerConfig.from_config(cfg))
        await self.worker.start()
        host = self.host = P2PHost(
            self.key, HostConfig.from_section(cfg.p2p, chain_id=cfg.chain.chain_id, exchange=self.exchange)
        )
        orders_rx = host.subscribe(host.topics.orders, validator=orders_validator(self.domain))
        cancels_rx = host.subscribe(host.topics.cancels, validator=cancels_validator(self.domain))
        quorum_rx = host.subscribe(host.topics.quorum, validator=self._quorum_validator)
        host.set_handler(host.protocols.quorum, self._serve_certificate)
        self.sync = OrderSync(
            host,
            self.domain,
            lambda: (processor.open_orders(), processor.signed_cancels()),
            self._on_sync_items,
        )
        proposals, votes = load_records(store)
        core = QuorumCore(
            self.key,
            self.domain,
            OrderSource(lambda: processor.book, self._first_seen_s),
            quorum_params(cfg),
            proposals=proposals,
            votes=votes,
        )
        self.driver = QuorumDriver(
            core,
            self.domain,
            store.quorum(),
            rpc,
            self.exchange,
            lambda data: host.publish(host.topics.quorum, data),
            self.submit,
            self._on_proposal,
        )
        chain_send, chain_recv = trio.open_memory_channel[ChainMessage](CHAIN_CHANNEL)
        result_send, result_recv = trio.open_memory_channel[WorkerResult](RESULT_CHANNEL)
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            log.info("p2p host %s listening on %s", host.peer_id, ", ".join(host.listen_addrs()))
            nursery.start_soon(self.sync.run)
            nursery.start_soon(self.watcher.run, chain_send)
            nursery.start_soon(self._apply_chain, chain_recv)
            nursery.start_soon(self.worker.run, result_send)
            nursery.start_soon(self._apply_results, result_recv)
            nursery.start_soon(self._gossip_orders, orders_rx)
            nursery.start_soon(self._gossip_cancels, cancels_rx)
            nursery.start_soon(self._quorum_inbox, quorum_rx)
            nursery.start_soon(self.driver.ticker)
            nursery.start_soon(self._initial_sync)
            nursery.start_soon(self._refresh_quorum_view)
            nursery.start_soon(self._report)
            log.info("node running: relayer %s, gas payer %s", self.key.address, signer.address)
            task_status.started(self)

    # --- p2p and quorum -----------------------------------------------------------------------------------------

    async def _serve_certificate(self, peer: str, payload: bytes) -> bytes:
        """The quorum protocol's one request: the certificate this node holds for the open seq (empty if none), so a
        joining or restarted node learns of a batch that is certified but not yet included."""
        core = None if self.driver is None else self.driver.core
        if core is None:
            return b""
        for round_ in range(core.round, -1, -1):
            cert = core.certificate(round_)
            if cert is not None:
                return cert.encode()
        return b""

    async def _initial_sync(self) -> None:
        """Sync orders, signed cancels and the open seq's certificate from every bootstrap peer once at start; synced
        when each has answered or failed, or after ``SYNC_DEADLINE_S`` (nodes started together must not wait on each
        other: a peer that is down simply does not count)."""
        host, sync, driver = self.host, self.sync, self.driver
        assert host is not None and sync is not None and driver is not None
        peers = [PeerId(a.rsplit("/p2p/", 1)[1]) for a in self.cfg.p2p.bootstrap if "/p2p/" in a]
        answered = 0

        async def one(peer: PeerId) -> None:
            nonlocal answered
            with trio.move_on_after(SYNC_DEADLINE_S):
                await host.wait_for_peers([peer])
                try:
                    result = await sync.sync_with(peer)
                    cert = await host.request(peer, host.protocols.quorum, b"certificate")
                except (P2PError, WireError) as exc:
                    log.info("initial sync with %s failed: %s", peer, exc)
                    return
                if cert:
                    await driver.message(cert)
                answered += 1
                log.info("synced with %s: %d order(s), %d cancel(s) fetched", peer, result.orders, result.cancels)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(one, peer)
        self.synced.set()
        log.info("initial sync done: %d of %d bootstrap peer(s) answered", answered, len(peers))

    def _quorum_validator(self, data: bytes) -> str | None:
        try:
            precheck(data, self.domain)
        except MessageError as exc:
            return str(exc)[:60] or "malformed"
        return None

    def _first_seen_s(self, order_hash: bytes) -> int | None:
        assert self.processor is not None
        ms = self.processor.first_seen(order_hash)
        return None if ms is None else ms // 1000

    def _intake(self, orders: list[SignedOrder], source: str) -> None:
        assert self.processor is not None
        if not orders:
            return
        results = self.processor.intake_orders([(o, False) for o in orders], now_ms=now_ms(), source=source)
        accepted = sum(1 for r in results if r.accepted)
        self.status.orders_accepted += accepted
        refused = Counter(r.reason for r in results if not r.accepted)
        log.debug(
            "%d/%d order(s) from %s accepted%s",
            accepted,
            len(results),
            source,
            "" if not refused else " (refused: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) + ")",
        )
        self._notify()

    async def _gossip_orders(self, receive: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for msg in receive:
            try:
                orders = decode_orders(msg.data, self.domain)
            except WireError:
                continue  # the validator let it through, so this cannot happen; never fatal
            self._intake(orders, "gossip")
            await trio.lowlevel.checkpoint()

    async def _gossip_cancels(self, receive: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        assert self.processor is not None
        async for msg in receive:
            try:
                cancels = decode_cancels(msg.data, self.domain)
            except WireError:
                continue
            self.processor.intake_cancels(cancels, now_ms=now_ms(), source="gossip")
            self._notify()
            await trio.lowlevel.checkpoint()

    async def _on_sync_items(self, peer: str, orders: list[SignedOrder], cancels: list[SignedCancel]) -> None:
        assert self.processor is not None
        if cancels:
            self.processor.intake_cancels(cancels, now_ms=now_ms(), source="sync")
        self._intake(orders, "sync")

    def _on_proposal(self, proposal: Proposal) -> None:
        """Orders a node first sees in a proposal join its book (they are signed; the window rule is the voter's)."""
        assert self.processor is not None
        book = self.processor.book
        fresh = [o for o in proposal.body.orders if book.get(o.hash) is None]
        self._intake(fresh, "proposal")

    async def _quorum_inbox(self, receive: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        assert self.driver is not None
        async for msg in receive:
            try:
                decoded = decode_message(msg.data, self.domain)
            except MessageError:
                continue
            if isinstance(decoded, Proposal):
                self._on_proposal(decoded)
            await self.driver.message(msg.data)

    async def _chain_to_quorum(self) -> None:
        """Give the quorum the chain as the processor holds it. Its time is the head's timestamp, or the wall clock
        when that is later: a chain that mines only on demand (anvil's automine, a quiet L2) can leave the head minutes
        old, and a batch deadline of stale head + delta would already have passed when the batch is mined (the contract
        compares it with the next block's time, which is about now). Nodes' clocks agree within the voters'
        deadline tolerance."""
        processor, driver = self.processor, self.driver
        if processor is None or driver is None or processor.head is None:
            return
        head_time = max(processor.head.timestamp, int(time.time()))
        await driver.chain(ChainView.from_model(processor.included, head_time))

    async def _refresh_quorum_view(self) -> None:
        """Between blocks, move the quorum's chain time with the clock (see :meth:`_chain_to_quorum`)."""
        while True:
            await trio.sleep(VIEW_REFRESH_S)
            await self._chain_to_quorum()

    # --- loops --------------------------------------------------------------------------------------------------

    async def _apply_chain(self, receive: trio.MemoryReceiveChannel[ChainMessage]) -> None:
        processor, status = self.processor, self.status
        assert processor is not None
        async with receive:
            async for msg in receive:
                if isinstance(msg, Head):
                    status.head = msg.block.number
                    status.lag = msg.lag
                    if processor.head is None or msg.block.number >= processor.head.number:
                        processor.head = msg.block
                    await self._chain_to_quorum()  # also the first view after a restart with no new block
                else:
                    outputs = processor.apply_chain(msg)
                    status.blocks_applied += 1
                    await self._chain_to_quorum()
                    log.debug("%s block %d (%d changes)", type(msg).__name__.lower(), msg.block.number, len(outputs))
                    status.cursor = msg.cursor.number
                    status.lag = max(0, status.head - status.cursor)
                self._notify()
                if not status.caught_up and status.head and status.lag == 0:
                    status.caught_up = True
                    self.ready.set()
                    log.info("caught up with the chain at block %d", status.head)
                await trio.lowlevel.checkpoint()

    async def _apply_results(self, receive: trio.MemoryReceiveChannel[WorkerResult]) -> None:
        processor, counts = self.processor, self.status.worker_results
        assert processor is not None
        async with receive:
            async for result in receive:
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                outcome = {"included": "submitted", "final": "submitted"}.get(result.outcome, result.outcome)
                if outcome in ("submitted", "stale", "reverted") and (
                    result.seq in self._submitted or store_has_batch(self.store, result.seq)
                ):
                    tx = Hash32(bytes.fromhex(result.tx_hash[2:])) if result.tx_hash else None
                    processor.record_worker_outcome(
                        result.seq, outcome, tx_hash=tx, batch_hash=self._submitted.get(result.seq)
                    )
                self._notify()
                log.info("batch %d: %s%s", result.seq, result.outcome, f" ({result.reason})" if result.reason else "")

    async def _report(self) -> None:
        while True:
            await trio.sleep(STATUS_EVERY_S)
            s = self.status
            driver = self.driver
            log.info(
                "status: head %d, cursor %d, lag %d, %d blocks applied, %d orders accepted, %d peers, seq %s round %s, "
                "worker %s",
                s.head,
                s.cursor,
                s.lag,
                s.blocks_applied,
                s.orders_accepted,
                0 if self.host is None else len(self.host.connected_peers()),
                "-" if driver is None else driver.core.seq,
                "-" if driver is None else driver.core.round,
                s.worker_results or "idle",
            )
