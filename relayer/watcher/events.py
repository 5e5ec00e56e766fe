"""What the watcher tells the processor (DESIGN.md "Order and fill lifecycle": included, final, retracted).

Every message carries the :class:`~relayer.store.records.ChainCursor` that holds once the message is applied. The
processor writes the message's effects and that cursor in one LevelDB write batch, so a node killed at any point
resumes from a cursor that covers exactly what it has stored: the watcher, restarted from that cursor, delivers
everything after it once, and retracts (by block hash) what a reorg took away while the node was down.

Messages come in chain order on one channel. For a block ``B``:

* :class:`Included` ``B`` (with its decoded exchange logs, possibly none) comes after every block below ``B``;
* :class:`Finalized` ``B`` comes once the head is ``confirmations`` blocks past ``B`` and ``B`` is still canonical;
  the processor may then forget how to undo ``B``;
* :class:`Retracted` ``B`` comes when ``B`` (included, never finalized) left the canonical chain; blocks are retracted
  from the highest down, and the replacement blocks follow as :class:`Included`.

A block without exchange logs may be reported only through the cursor (the processor needs no message for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relayer.store.records import ChainCursor
from relayer.types import Hash32

__all__ = ["BlockRef", "ChainLog", "ChainMessage", "Finalized", "Head", "Included", "Retracted"]


@dataclass(frozen=True, slots=True)
class BlockRef:
    number: int
    hash: Hash32
    parent_hash: Hash32
    timestamp: int


@dataclass(frozen=True, slots=True)
class ChainLog:
    """One log of the exchange contract. ``event`` is the decoded binding event (``bindings.exchange``), or None
    when the log could not be decoded (counted and logged by the watcher, ignored by the processor)."""

    block_number: int
    block_hash: Hash32
    tx_hash: Hash32
    tx_index: int
    log_index: int
    event: Any

    @property
    def key(self) -> tuple[bytes, bytes, int]:
        """The de-duplication key (blockHash, txHash, logIndex)."""
        return (self.block_hash, self.tx_hash, self.log_index)


@dataclass(frozen=True, slots=True)
class Included:
    block: BlockRef
    logs: tuple[ChainLog, ...]
    cursor: ChainCursor


@dataclass(frozen=True, slots=True)
class Finalized:
    block: BlockRef
    cursor: ChainCursor


@dataclass(frozen=True, slots=True)
class Retracted:
    block: BlockRef
    cursor: ChainCursor


@dataclass(frozen=True, slots=True)
class Head:
    """The chain head moved (``lag`` = head number minus cursor number); the cursor is unchanged."""

    block: BlockRef
    lag: int


ChainMessage = Included | Finalized | Retracted | Head
