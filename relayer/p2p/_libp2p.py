"""Every place the project reaches past py-libp2p 0.8.1's public surface, in one module (docs/p2p.md "Fixes").

py-libp2p is pinned exactly (pyproject.toml) because these hooks depend on its internals. Each one is small, wraps
rather than copies library code, and is exercised by tests/p2p (the burst test fails without the first two):

1. :class:`TunedPubsub` delivers validated messages straight to the host's callback instead of the library's
   per-topic channels of 32 messages, which drop silently when full.
2. :class:`_SizedQueues` enlarges each per-peer outbound queue (32 RPCs by default; a full queue drops) when the
   library creates it, and counts the pushes it still refuses.
3. :func:`forget_failed_dial` clears the swarm's 60 s negative cache of a peer whose dial failed, so the host's own
   reconnect loop (which has its own backoff) can re-dial a restarted peer as soon as it is back.
4. ``PY_YAMUX_RELEASE_ON_READ=0`` (py-libp2p's own switch, read at call time; set here unless the environment sets
   it): yamux then sends a window update once half the window is consumed, as go-yamux does, instead of after every
   read. py-libp2p's default doubles the frames on the wire; turning it off gives 1.3 to 1.5 times more small gossip
   messages a second (docs/p2p.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError
from libp2p.abc import IHost, INetStream, IPubsubRouter
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

log = logging.getLogger("relayer.p2p")

os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

MessageCallback = Callable[[rpc_pb2.Message], None]


class _SizedQueues(dict[ID, Any]):
    """The pubsub's ``peer_queues`` dict: every queue stored in it gets ``max_size`` slots, a drop counter and an
    outbound RPC size limit of ``max_rpc_bytes`` (the library's 1 MiB default silently drops a message that is within
    the host's ``max_message_bytes`` once the envelope is added)."""

    def __init__(self, max_size: int, on_drop: Callable[[], None], max_rpc_bytes: int | None = None) -> None:
        super().__init__()
        self._max_size = max_size
        self._on_drop = on_drop
        self._max_rpc_bytes = max_rpc_bytes

    def __setitem__(self, peer_id: ID, queue: Any) -> None:
        if self._max_rpc_bytes is not None and hasattr(queue, "max_message_size"):
            queue.max_message_size = max(queue.max_message_size, self._max_rpc_bytes)
        inner = getattr(queue, "_queue", None)
        if inner is not None and hasattr(inner, "max_size"):
            inner.max_size = self._max_size
        else:  # pragma: no cover - only if py-libp2p changes its RpcQueue
            log.warning("py-libp2p RpcQueue has no _queue.max_size: outbound queues keep the library default")
        push = queue.push
        on_drop = self._on_drop

        def counting_push(rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
            ok: bool = push(rpc, priority)
            if not ok:
                on_drop()
            return ok

        queue.push = counting_push
        super().__setitem__(peer_id, queue)


class TunedPubsub(Pubsub):
    """py-libp2p's Pubsub with deliberate buffers: see the module docstring."""

    def __init__(
        self,
        host: IHost,
        router: IPubsubRouter,
        *,
        on_message: MessageCallback,
        outbound_queue_size: int,
        on_outbound_drop: Callable[[], None],
        max_outbound_rpc_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, **kwargs)
        self._on_message = on_message
        self.peer_queues = _SizedQueues(outbound_queue_size, on_outbound_drop, max_outbound_rpc_size)
        self.bad_rpcs = 0

    async def stream_handler(self, stream: INetStream) -> None:
        """The library's handler, except that a peer sending bytes that are not a pubsub RPC (a protobuf
        ``DecodeError``, which py-libp2p 0.8.1 does not catch: it would end the whole pubsub service, i.e. let any
        peer crash the node) loses that stream, and is counted and logged."""
        try:
            await super().stream_handler(stream)
        except DecodeError as exc:
            self.bad_rpcs += 1
            log.warning("peer %s sent a malformed pubsub RPC (%s): stream closed", stream.muxed_conn.peer_id, exc)
            with contextlib.suppress(Exception):
                await stream.reset()

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        # Called once per validated, first-seen message (own publishes included) from push_msg.
        self._on_message(publish_message)


def forget_failed_dial(host: IHost, peer_id: ID) -> None:
    """Drop ``peer_id`` from the swarm's negative dial cache (a failed dial blocks the peer for 60 s otherwise)."""
    cache = getattr(host.get_network(), "_negative_peer_cache", None)
    if cache is not None:
        cache.evict(str(peer_id))
