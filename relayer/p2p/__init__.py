"""The relayer's peer-to-peer layer on py-libp2p (docs/p2p.md): the host, the wire format, anti-entropy sync."""

from relayer.p2p.host import (
    GossipMessage,
    Handler,
    HostConfig,
    P2PError,
    P2PHost,
    P2PStats,
    Protocols,
    RequestError,
    Topics,
    Validator,
    namespace,
    peer_address,
)
from relayer.p2p.sync import OrderSync, SyncResult, SyncStats
from relayer.p2p.wire import OrderSetIndex, WireError

__all__ = [
    "GossipMessage",
    "Handler",
    "HostConfig",
    "OrderSetIndex",
    "OrderSync",
    "P2PError",
    "P2PHost",
    "P2PStats",
    "Protocols",
    "RequestError",
    "SyncResult",
    "SyncStats",
    "Topics",
    "Validator",
    "WireError",
    "namespace",
    "peer_address",
]
