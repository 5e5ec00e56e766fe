"""The libp2p host of a relayer node: identity, Noise, GossipSub with deliberate parameters, topic validators, bounded
receive channels, request/response on reused streams, and a reconnect loop (docs/p2p.md explains every choice).

One :class:`P2PHost` per node, run in the node's nursery::

    host = P2PHost(key, HostConfig(chain_id=31337, exchange=addr, listen=("/ip4/127.0.0.1/tcp/0",)))
    orders = host.subscribe(host.topics.orders, validator=wire.orders_validator(domain))
    host.set_handler(host.protocols.sync, responder)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        await host.publish(host.topics.orders, wire.encode_orders(batch))
        async for msg in orders:  # GossipMessage(topic, sender, data)
            ...

Everything here is transport: what a payload means and whether a peer may send it is the caller's business, except
for objective faults, which the topic validators reject (py-libp2p penalises the forwarder and caches every rejection
for minutes, so nothing that depends on one node's view belongs in a validator).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import coincurve
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import RateLimitError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize
from libp2p.rcmgr.enhanced_errors import ResourceLimitExceededError
from libp2p.rcmgr.exceptions import ResourceManagerException
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from relayer.eip712 import to_checksum_address
from relayer.errors import RelayerError
from relayer.hashing import keccak
from relayer.keys import RelayerKey, public_key_from_peer_id
from relayer.p2p._libp2p import TunedPubsub, forget_failed_dial
from relayer.types import Address, PeerId

if TYPE_CHECKING:
    from relayer.config import P2PSection

if TYPE_CHECKING:  # trio_typing's trio stubs (installed with libp2p) shadow trio's own types and lack TaskStatus
    from trio_typing import TaskStatus

log = logging.getLogger("relayer.p2p")

Validator = Callable[[bytes], str | None]
"""A topic validator: ``None`` accepts, a short reason (``"malformed"``, ``"bad_signature"`` ...) rejects. Objective
checks only (see the module docstring)."""
Handler = Callable[[PeerId, bytes], Awaitable[bytes]]
"""A request handler: ``(peer id of the requester, request payload) -> response payload``."""

# Errors a libp2p stream or dial may raise: the library's own, the OS's, and trio's for a torn-down channel.
_NET_ERRORS: tuple[type[Exception], ...] = (
    BaseLibp2pError,
    PeerStoreError,  # a KeyError, not a BaseLibp2pError
    RateLimitError,
    ResourceManagerException,
    ResourceLimitExceededError,
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
_DIAL_ERRORS: tuple[type[Exception], ...] = (*_NET_ERRORS, trio.TooSlowError, RelayerError)
_OPEN_ERRORS: tuple[type[Exception], ...] = (*_NET_ERRORS, ValueError)

_STATUS_OK = 0
_STATUS_ERROR = 1
_STATUS_TOO_LARGE = 2
_FRAME_OVERHEAD = 16  # varint + status byte, with room to spare
_READ_CHUNK = 1 << 16


class P2PError(RelayerError):
    """Base of the p2p layer's errors."""


class RequestError(P2PError):
    """A request failed: ``reason`` is ``timeout``, ``unreachable``, ``stream``, ``too_large`` or ``remote``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"request failed ({reason}): {detail}")


# --------------------------------------------------------------------------------------------------------------------
# Configuration and namespacing


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """What the host needs; the node maps ``relayer.config.P2PSection`` (and the chain section) into it.

    The fields after ``sync_interval_ms`` have no config key yet: their defaults are the deliberate values of
    docs/p2p.md.
    """

    chain_id: int
    exchange: str
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    heartbeat_ms: int = 1_000
    max_message_bytes: int = 1_048_576
    reconnect_interval_ms: int = 2_000
    dial_backoff_ms: int = 5_000
    max_peers: int = 64
    sync_interval_ms: int = 5_000
    # --- no config key (yet) ---
    receive_buffer: int = 16_384
    """Messages per topic held for a slow consumer before new ones are dropped (counted in stats)."""
    outbound_queue: int = 16_384
    """RPCs queued per peer before py-libp2p drops (its default is 32)."""
    gossip_protocols: tuple[str, ...] = (PROTOCOL_ID_V11,)
    """GossipSub versions offered. 1.1 only by default: 1.2's per-message IDONTWANT halves small-message throughput
    in py-libp2p 0.8.1 (docs/p2p.md); js-libp2p and go-libp2p still speak 1.1."""
    mesh_degree: int = 6
    mesh_degree_low: int = 4
    mesh_degree_high: int = 12
    dial_timeout_ms: int = 5_000
    request_timeout_ms: int = 5_000
    max_idle_streams: int = 4
    """Idle request streams kept per (peer, protocol) for reuse."""
    deliver_own: bool = False
    """Deliver this node's own publishes to its subscribers too (py-libp2p echoes them); counted either way."""
    forget_after_failures: int = 30
    """A peer learned from an inbound connection (not a bootstrap peer) is forgotten after this many failed dials."""

    @classmethod
    def from_section(cls, p2p: P2PSection, *, chain_id: int, exchange: str, **extra: Any) -> HostConfig:
        """The host config of a node: ``p2p`` is ``Config.p2p``; ``extra`` sets fields without a config key."""
        return cls(
            chain_id=chain_id,
            exchange=exchange,
            listen=tuple(p2p.listen),
            bootstrap=tuple(p2p.bootstrap),
            heartbeat_ms=p2p.heartbeat_ms,
            max_message_bytes=p2p.max_message_bytes,
            reconnect_interval_ms=p2p.reconnect_interval_ms,
            dial_backoff_ms=p2p.dial_backoff_ms,
            max_peers=p2p.max_peers,
            sync_interval_ms=p2p.sync_interval_ms,
            **extra,
        )

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError("HostConfig.listen needs at least one address")
        for name in ("heartbeat_ms", "max_message_bytes", "reconnect_interval_ms", "max_peers", "receive_buffer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HostConfig.{name} must be positive")
        if not self.mesh_degree_low <= self.mesh_degree <= self.mesh_degree_high:
            raise ValueError("HostConfig needs mesh_degree_low <= mesh_degree <= mesh_degree_high")


def peer_address(peer_id: str) -> Address | None:
    """The Ethereum address of the secp256k1 key a peer id embeds (a relayer's address), or None if it embeds none.
    Noise proves the remote holds that key, so the address of a stream's or a signed message's peer is authentic."""
    public = public_key_from_peer_id(peer_id)
    if public is None:
        return None
    try:
        point = coincurve.PublicKey(public).format(compressed=False)[1:]
    except ValueError:
        return None
    return to_checksum_address(keccak(point)[12:])


def namespace(chain_id: int, exchange: str) -> str:
    """``/perp/<chainId>/<exchange, lower-case hex>``: two networks (chains or exchange deployments) never mix."""
    return f"/perp/{chain_id}/{exchange.lower()}"


@dataclass(frozen=True, slots=True)
class Topics:
    """GossipSub topic names of one network."""

    orders: str
    cancels: str
    quorum: str

    @classmethod
    def for_network(cls, chain_id: int, exchange: str) -> Topics:
        ns = namespace(chain_id, exchange)
        return cls(orders=f"{ns}/orders/1", cancels=f"{ns}/cancels/1", quorum=f"{ns}/quorum/1")


@dataclass(frozen=True, slots=True)
class Protocols:
    """Stream protocol ids of one network: anti-entropy sync and the quorum's direct messages (opaque here)."""

    sync: str
    quorum: str

    @classmethod
    def for_network(cls, chain_id: int, exchange: str) -> Protocols:
        ns = namespace(chain_id, exchange)
        return cls(sync=f"{ns}/sync/1", quorum=f"{ns}/quorum/1")


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """One validated gossip message: the topic, the peer that signed (originated) it, and its payload."""

    topic: str
    sender: PeerId
    data: bytes


@dataclass
class P2PStats:
    """Counters of the host; every drop and rejection is counted somewhere here."""

    published: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    own_echoes: int = 0
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(topic, reason) -> messages a validator refused (own publishes included)."""
    dropped_inbound: Counter[str] = field(default_factory=Counter)
    """topic -> messages dropped because the subscriber's channel was full."""
    dropped_outbound: int = 0
    """RPCs py-libp2p could not queue for a peer (its outbound queue was full)."""
    requests_sent: int = 0
    requests_failed: Counter[str] = field(default_factory=Counter)
    streams_opened: int = 0
    streams_reused: int = 0
    requests_served: int = 0
    handler_errors: int = 0
    bad_frames: int = 0
    dials: int = 0
    dial_failures: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Framing on streams: unsigned-varint length prefix, as libp2p protocols do.


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _FrameError(P2PError):
    pass


_STREAM_ERRORS: tuple[type[Exception], ...] = (_FrameError, *_NET_ERRORS)


class _Framed:
    """A stream carrying length-prefixed frames, with its read buffer."""

    __slots__ = ("_buf", "max_frame", "stream")

    def __init__(self, stream: INetStream, max_frame: int) -> None:
        self.stream = stream
        self.max_frame = max_frame
        self._buf = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = await self.stream.read(_READ_CHUNK)
            if not chunk:
                raise EOFError("stream closed")
            self._buf += chunk

    async def read_frame(self) -> bytes:
        length = shift = i = 0
        while True:
            if i >= len(self._buf):
                await self._fill(i + 1)
            b = self._buf[i]
            i += 1
            length |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if i >= 5:
                raise _FrameError("frame length prefix longer than 5 bytes")
        if length > self.max_frame:
            raise _FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        await self._fill(i + length)
        data = bytes(self._buf[i : i + length])
        del self._buf[: i + length]
        return data

    async def write_frame(self, data: bytes) -> None:
        await self.stream.write(_uvarint(len(data)) + data)

    async def reset(self) -> None:
        with contextlib.suppress(*_NET_ERRORS):
            await self.stream.reset()


# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _KnownPeer:
    addrs: list[multiaddr.Multiaddr]
    bootstrap: bool
    failures: int = 0
    next_dial: float = 0.0
    dialing: bool = False


class _Notifee(INotifee):
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_change()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_change()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class P2PHost:
    """A relayer's libp2p host. Create it, ``subscribe`` and ``set_handler``, then ``await nursery.start(host.run)``;
    cancelling ``run`` closes everything. Also usable as ``async with host:`` (it opens its own nursery)."""

    def __init__(self, key: RelayerKey, config: HostConfig) -> None:
        self.key = key
        self.config = config
        self.peer_id = PeerId(key.peer_id)
        self.topics = Topics.for_network(config.chain_id, config.exchange)
        self.protocols = Protocols.for_network(config.chain_id, config.exchange)
        self.stats = P2PStats()
        self._listen = [multiaddr.Multiaddr(a) for a in config.listen]
        self._key_pair = create_new_key_pair(key.secret)
        self._host: IHost | None = None
        self._pubsub: TunedPubsub | None = None
        self._gossipsub: GossipSub | None = None
        self._nursery: trio.Nursery | None = None
        self._channels: dict[str, trio.MemorySendChannel[GossipMessage]] = {}
        self._validators: dict[str, Validator] = {}
        self._handlers: dict[str, Handler] = {}
        self._idle: dict[tuple[str, str], list[_Framed]] = {}
        self._known: dict[str, _KnownPeer] = {}
        self._peers_changed = trio.Event()
        self._cm_stack: Any = None
        for addr in config.bootstrap:
            self.add_peer(addr, bootstrap=True)

    # ---- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def libp2p_host(self) -> IHost:
        if self._host is None:
            raise P2PError("the host is not running")
        return self._host

    @property
    def pubsub(self) -> TunedPubsub:
        if self._pubsub is None:
            raise P2PError("the host is not running")
        return self._pubsub

    def _build(self) -> tuple[IHost, TunedPubsub, GossipSub]:
        cfg = self.config
        noise = NoiseTransport(self._key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
        conn_cfg = ConnectionConfig(
            max_connections=max(4, 2 * cfg.max_peers),
            min_connections=0,
            low_watermark=0,
            high_watermark=max(4, 2 * cfg.max_peers),
            dial_timeout=cfg.dial_timeout_ms / 1000,
            auto_connect_interval=3_600.0,  # the library's auto-connector is replaced by our reconnect loop
        )
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},  # Noise only: py-libp2p's default set includes plaintext
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=self._listen,
            connection_config=conn_cfg,
        )
        gossipsub = GossipSub(
            protocols=[TProtocol(p) for p in cfg.gossip_protocols],
            degree=cfg.mesh_degree,
            degree_low=cfg.mesh_degree_low,
            degree_high=cfg.mesh_degree_high,
            heartbeat_initial_delay=min(0.1, cfg.heartbeat_ms / 1000),
            heartbeat_interval=cfg.heartbeat_ms / 1000,  # type: ignore[arg-type]  # annotated int, used as seconds
            prune_back_off=10,
            unsubscribe_back_off=10,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
        )
        rpc_limit = max(DefaultMaxMessageSize, cfg.max_message_bytes + 65_536)
        pubsub = TunedPubsub(
            host,
            gossipsub,
            on_message=self._on_message,
            outbound_queue_size=cfg.outbound_queue,
            on_outbound_drop=self._on_outbound_drop,
            max_outbound_rpc_size=rpc_limit,
            strict_signing=True,
            max_inbound_rpc_size=rpc_limit,
        )
        host.get_network().register_notifee(_Notifee(self._mark_peers_changed))
        return host, pubsub, gossipsub

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, join the topics, serve the handlers and keep peers connected until cancelled."""
        host, pubsub, gossipsub = self._build()
        self._host, self._pubsub, self._gossipsub = host, pubsub, gossipsub
        for protocol in self._handlers:
            host.set_stream_handler(TProtocol(protocol), self._serve)
        try:
            async with (
                host.run(self._listen),
                background_trio_service(pubsub),
                background_trio_service(gossipsub),
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                await pubsub.wait_until_ready()
                for topic in list(self._channels):
                    await self._join(topic)
                nursery.start_soon(self._reconnect_loop)
                log.info("p2p host %s listening on %s", self.peer_id, ", ".join(self.listen_addrs()))
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # py-libp2p's TCP listener lives in a system task that only an explicit close() stops: without
                    # this a stopped host keeps accepting connections on its port.
                    nursery.cancel_scope.cancel()
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await host.close()
        finally:
            self._nursery = None
            for pool in self._idle.values():
                pool.clear()
            self._idle.clear()
            self._host = self._pubsub = self._gossipsub = None
            log.info("p2p host %s stopped", self.peer_id)

    async def __aenter__(self) -> P2PHost:
        from contextlib import AsyncExitStack

        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self.run)
            stack.callback(nursery.cancel_scope.cancel)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._cm_stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._cm_stack = self._cm_stack, None
        await stack.__aexit__(None, None, None)

    # ---- identity and peers ---------------------------------------------------------------------------------------

    def listen_addrs(self) -> list[str]:
        """The addresses the host listens on, each ending in ``/p2p/<peer id>`` (dialable as bootstrap entries)."""
        if self._host is None:
            return []
        out = []
        for addr in self._host.get_addrs():
            text = str(addr)
            out.append(text if "/p2p/" in text else f"{text}/p2p/{self.peer_id}")
        return out

    def connected_peers(self) -> list[PeerId]:
        if self._host is None:
            return []
        return sorted(PeerId(p.to_base58()) for p in self._host.get_connected_peers())

    def add_peer(self, addr: str, *, bootstrap: bool = False) -> PeerId:
        """Remember a peer (``.../p2p/<id>``) and keep it connected from now on."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        pid = info.peer_id.to_base58()
        if pid == self.peer_id:
            raise ValueError(f"{addr} is this host's own address")
        entry = self._known.get(pid)
        if entry is None:
            self._known[pid] = _KnownPeer(addrs=list(info.addrs), bootstrap=bootstrap)
        else:
            entry.bootstrap = entry.bootstrap or bootstrap
            entry.addrs = list(dict.fromkeys([*info.addrs, *entry.addrs]))
            entry.next_dial = 0.0
        return PeerId(pid)

    def _mark_peers_changed(self) -> None:
        self._peers_changed.set()
        self._peers_changed = trio.Event()

    async def wait_peers_changed(self) -> None:
        """Return at the next connection or disconnection of any peer."""
        await self._peers_changed.wait()

    async def wait_for_peers(self, peer_ids: Iterable[str]) -> None:
        """Return once every peer in ``peer_ids`` is connected (bound it with ``trio.fail_after``)."""
        wanted = set(peer_ids)
        while not wanted <= set(self.connected_peers()):
            await self._peers_changed.wait()

    async def wait_for_subscriber(self, peer_id: str, topic: str) -> None:
        """Return once ``peer_id`` has told this host it subscribes to ``topic`` (bound it with ``fail_after``)."""
        await self.pubsub.wait_for_subscription(ID.from_base58(peer_id), topic, timeout=math.inf)

    async def wait_for_mesh(self, peer_id: str, topic: str) -> None:
        """Return once ``peer_id`` is in this host's GossipSub mesh for ``topic`` (bound it with ``fail_after``):
        from then on this host's publishes on ``topic`` go to that peer directly. Before, py-libp2p sends a new
        publish to no one but mesh peers (the rest learn of it by gossip at a later heartbeat)."""
        await self.pubsub.wait_for_mesh(ID.from_base58(peer_id), topic, timeout=math.inf)

    async def _reconnect_loop(self) -> None:
        interval = self.config.reconnect_interval_ms / 1000
        while True:
            try:
                self._dial_round()
            except _NET_ERRORS as exc:  # e.g. a peer gone from the peerstore between two calls: next round
                log.debug("reconnect round: %s: %s", type(exc).__name__, exc)
            await trio.sleep(interval)

    def _dial_round(self) -> None:
        host, nursery = self._host, self._nursery
        if host is None or nursery is None:
            return
        connected = {p.to_base58() for p in host.get_connected_peers()}
        store = host.get_peerstore()
        for pid in connected:  # learn inbound peers so they are re-dialled after a restart
            if pid not in self._known and len(self._known) < 4 * self.config.max_peers:
                try:
                    addrs = [a for a in store.addrs(ID.from_base58(pid)) if "/tcp/" in str(a)]
                except PeerStoreError:  # identify has not stored its addresses yet
                    continue
                if addrs:
                    self._known[pid] = _KnownPeer(addrs=addrs, bootstrap=False)
        now = trio.current_time()
        budget = self.config.max_peers - len(connected)
        for pid, entry in list(self._known.items()):
            if pid in connected:
                entry.failures = 0
                continue
            if entry.dialing or now < entry.next_dial or budget <= 0:
                continue
            budget -= 1
            entry.dialing = True
            nursery.start_soon(self._dial, pid, entry)

    async def _dial(self, pid: str, entry: _KnownPeer) -> None:
        host = self.libp2p_host
        peer = ID.from_base58(pid)
        self.stats.dials += 1
        try:
            forget_failed_dial(host, peer)  # our own backoff applies, not the swarm's 60 s blacklist
            with trio.fail_after(self.config.dial_timeout_ms / 1000):
                await host.connect(PeerInfo(peer, entry.addrs))
            if peer not in host.get_connected_peers():
                raise P2PError("the dial returned without a live connection")
        except _DIAL_ERRORS as exc:
            self.stats.dial_failures += 1
            entry.failures += 1
            entry.next_dial = trio.current_time() + self.config.dial_backoff_ms / 1000
            level = logging.INFO if entry.failures == 1 else logging.DEBUG
            log.log(level, "dial %s failed (%d in a row): %s", pid, entry.failures, type(exc).__name__)
            if not entry.bootstrap and entry.failures >= self.config.forget_after_failures:
                log.info("forgetting peer %s after %d failed dials", pid, entry.failures)
                self._known.pop(pid, None)
        else:
            if entry.failures:
                log.info("reconnected to %s after %d failed dials", pid, entry.failures)
            entry.failures = 0
        finally:
            entry.dialing = False

    # ---- gossip ---------------------------------------------------------------------------------------------------

    def subscribe(
        self, topic: str, *, validator: Validator | None = None, buffer: int | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Join ``topic``; validated messages arrive on the returned channel. Call before or after ``run`` starts.

        Every topic gets a size check (``max_message_bytes``); ``validator`` adds objective checks of its own.
        """
        if topic in self._channels:
            raise P2PError(f"already subscribed to {topic}")
        send, recv = trio.open_memory_channel[GossipMessage](buffer or self.config.receive_buffer)
        self._channels[topic] = send
        if validator is not None:
            self._validators[topic] = validator
        if self._nursery is not None:
            self._nursery.start_soon(self._join, topic)
        return recv

    def set_validator(self, topic: str, validator: Validator) -> None:
        """Replace the extra validator of ``topic`` (the size check stays)."""
        self._validators[topic] = validator

    async def _join(self, topic: str) -> None:
        pubsub = self.pubsub
        pubsub.set_topic_validator(topic, self._make_validator(topic), False)
        await pubsub.subscribe(topic)

    def _make_validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        limit = self.config.max_message_bytes
        rejected = self.stats.rejected

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            data = msg.data
            if len(data) > limit:
                reason: str | None = "oversize"
            else:
                extra = self._validators.get(topic)
                try:
                    reason = extra(data) if extra is not None else None
                except Exception:  # a validator bug must reject, never crash the pubsub task
                    log.exception("validator of %s raised; rejecting the message", topic)
                    reason = "validator_error"
            if reason is None:
                return True
            rejected[(topic, reason)] += 1
            log.debug("rejected a message on %s from %s (forwarded by %s): %s", topic, msg.from_id, forwarder, reason)
            return False

        return validate

    def _on_message(self, msg: rpc_pb2.Message) -> None:
        try:
            sender = PeerId(ID(msg.from_id).to_base58())
        except Exception:  # noqa: BLE001  # pragma: no cover - strict signing guarantees a valid from_id
            return
        own = sender == self.peer_id
        if own:
            self.stats.own_echoes += 1
            if not self.config.deliver_own:
                return
        for topic in msg.topicIDs:
            chan = self._channels.get(topic)
            if chan is None:
                continue
            try:
                chan.send_nowait(GossipMessage(topic, sender, msg.data))
                self.stats.delivered[topic] += 1
            except trio.WouldBlock:
                self.stats.dropped_inbound[topic] += 1
                dropped = self.stats.dropped_inbound[topic]
                if dropped in (1, 100, 10_000) or dropped % 100_000 == 0:
                    log.warning(
                        "subscriber of %s is behind: %d messages dropped so far (anti-entropy refetches orders)",
                        topic,
                        dropped,
                    )
            except trio.BrokenResourceError:
                self.stats.dropped_inbound[topic] += 1

    def _on_outbound_drop(self) -> None:
        self.stats.dropped_outbound += 1
        if self.stats.dropped_outbound in (1, 100) or self.stats.dropped_outbound % 10_000 == 0:
            log.warning("py-libp2p outbound queue full: %d RPCs dropped so far", self.stats.dropped_outbound)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and gossip ``data`` on ``topic``. It is validated locally first, like any message: one the topic's
        validator rejects is counted in ``stats.rejected`` and not sent (py-libp2p does not tell the publisher)."""
        if len(data) > self.config.max_message_bytes:
            raise P2PError(f"message of {len(data)} bytes exceeds max_message_bytes ({self.config.max_message_bytes})")
        await self.pubsub.publish(topic, data)
        self.stats.published[topic] += 1

    # ---- request / response ---------------------------------------------------------------------------------------

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve ``protocol``: each request frame on a stream is answered by ``handler``; streams are kept open for
        reuse. A handler that raises answers that one request with an error; the stream and host carry on."""
        self._handlers[protocol] = handler
        if self._host is not None:
            self._host.set_stream_handler(TProtocol(protocol), self._serve)

    async def _serve(self, stream: INetStream) -> None:
        protocol = str(stream.get_protocol())
        handler = self._handlers.get(protocol)
        peer = PeerId(stream.muxed_conn.peer_id.to_base58())
        framed = _Framed(stream, self.config.max_message_bytes + _FRAME_OVERHEAD)
        try:
            while handler is not None:
                try:
                    request = await framed.read_frame()
                except EOFError:
                    break
                try:
                    response = await handler(peer, request)
                    if len(response) > self.config.max_message_bytes:
                        log.warning("handler of %s returned %d bytes: over the limit", protocol, len(response))
                        frame = bytes((_STATUS_TOO_LARGE,))
                    else:
                        frame = bytes((_STATUS_OK,)) + response
                except Exception as exc:  # noqa: BLE001 - a failing handler answers this request; the host carries on
                    self.stats.handler_errors += 1
                    log.warning("handler of %s failed for %s: %s: %s", protocol, peer, type(exc).__name__, exc)
                    frame = bytes((_STATUS_ERROR,)) + f"{type(exc).__name__}: {exc}".encode()[:1024]
                self.stats.requests_served += 1
                await framed.write_frame(frame)
        except _FrameError as exc:
            self.stats.bad_frames += 1
            log.info("bad request frame on %s from %s: %s", protocol, peer, exc)
            await framed.reset()
        except _NET_ERRORS as exc:
            log.debug("request stream %s from %s ended: %s", protocol, peer, type(exc).__name__)
            await framed.reset()
        else:
            with contextlib.suppress(*_NET_ERRORS):
                await stream.close()

    async def request(
        self,
        peer_id: str,
        protocol: str,
        payload: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - it also decides whether the stream can be reused
    ) -> bytes:
        """Send ``payload`` to ``peer_id`` on ``protocol`` and return the response payload.

        Reuses an idle stream to that peer when there is one (about 1 ms a round trip instead of a new stream's
        negotiation). Raises :class:`RequestError`: ``timeout`` after ``timeout`` s (default
        ``request_timeout_ms``), ``unreachable``, ``stream`` (the stream broke), ``too_large``, or ``remote``
        (the handler raised; the detail is its message).
        """
        if len(payload) > self.config.max_message_bytes:
            raise RequestError("too_large", f"request of {len(payload)} bytes exceeds max_message_bytes")
        host = self.libp2p_host
        deadline = trio.current_time() + (self.config.request_timeout_ms / 1000 if timeout is None else timeout)
        key = (peer_id, protocol)
        pool = self._idle.setdefault(key, [])
        self.stats.requests_sent += 1
        attempts = 0
        while True:
            attempts += 1
            framed = pool.pop() if pool else None
            reused = framed is not None
            try:
                with trio.fail_after(max(0.0, deadline - trio.current_time())):
                    if framed is None:
                        try:
                            stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
                        except _OPEN_ERRORS as exc:
                            raise RequestError("unreachable", f"{peer_id}: {type(exc).__name__}: {exc}") from None
                        self.stats.streams_opened += 1
                        framed = _Framed(stream, self.config.max_message_bytes + _FRAME_OVERHEAD)
                    else:
                        self.stats.streams_reused += 1
                    await framed.write_frame(payload)
                    frame = await framed.read_frame()
            except trio.TooSlowError:
                if framed is not None:
                    await framed.reset()
                self.stats.requests_failed["timeout"] += 1
                raise RequestError("timeout", f"no answer from {peer_id} on {protocol}") from None
            except RequestError as exc:
                self.stats.requests_failed[exc.reason] += 1
                raise
            except _STREAM_ERRORS as exc:
                assert framed is not None
                await framed.reset()
                if reused and attempts == 1:
                    continue  # a stale pooled stream (the peer restarted): retry once on a new stream
                self.stats.requests_failed["stream"] += 1
                raise RequestError("stream", f"{peer_id} on {protocol}: {type(exc).__name__}: {exc}") from None
            break
        if frame[:1] == bytes((_STATUS_OK,)):
            if len(pool) < self.config.max_idle_streams:
                pool.append(framed)
            else:
                await _close_quietly(framed)
            return frame[1:]
        if len(pool) < self.config.max_idle_streams:
            pool.append(framed)  # an error answer leaves the stream in step: still reusable
        if frame[:1] == bytes((_STATUS_TOO_LARGE,)):
            self.stats.requests_failed["too_large"] += 1
            raise RequestError("too_large", f"the response of {peer_id} on {protocol} exceeds its limit")
        self.stats.requests_failed["remote"] += 1
        raise RequestError("remote", frame[1:].decode("utf-8", "replace") or "remote error")


async def _close_quietly(framed: _Framed) -> None:
    with contextlib.suppress(*_NET_ERRORS):
        await framed.stream.close()
