"""The chain watcher (``Watcher``) and the messages it sends the processor (:mod:`relayer.watcher.events`)."""

from relayer.watcher.events import BlockRef, ChainLog, ChainMessage, Finalized, Head, Included, Retracted
from relayer.watcher.watcher import (
    ChainInconsistentError,
    Connector,
    Watcher,
    WatcherProtocolError,
    WatcherRpc,
    WatcherStats,
    WatcherSubscription,
)

__all__ = [
    "BlockRef",
    "ChainInconsistentError",
    "ChainLog",
    "ChainMessage",
    "Connector",
    "Finalized",
    "Head",
    "Included",
    "Retracted",
    "Watcher",
    "WatcherProtocolError",
    "WatcherRpc",
    "WatcherStats",
    "WatcherSubscription",
]
