"""The key schema: a 1-byte keyspace prefix, then big-endian fixed-width components (iteration order is numeric).

Each keyspace has exactly one writer (:class:`Component`, DESIGN.md "store"); :data:`OWNER` is the table the
writer handles enforce.
"""

from __future__ import annotations

import enum
import struct

from relayer.types import Hash32

_U64 = struct.Struct(">Q")
_U64_U32 = struct.Struct(">QI")


class Space(enum.IntEnum):
    """Keyspaces, by their prefix byte."""

    META = 0x00
    ORDER = 0x01  # order hash (32) -> OrderRecord
    CANCEL = 0x02  # cancel hash (32) -> CancelRecord
    INPUT = 0x03  # input index (u64) -> InputRecord: the processor's applied-input log
    SNAPSHOT = 0x04  # input index (u64) the snapshot covers up to and including -> Snapshot
    CURSOR = 0x05  # (single key) -> ChainCursor
    BATCH = 0x06  # seq (u64) -> BatchRecord (included and final batches with their fills)
    PROPOSAL = 0x07  # seq (u64) + round (u32) -> QuorumRecord: this node's proposal
    VOTE = 0x08  # seq (u64) + round (u32) -> QuorumRecord: this node's vote
    TX = 0x09  # account nonce (u64) -> TxRecord
    PEER = 0x0A  # peer id (UTF-8) -> PeerRecord
    CHAIN = 0x0B  # entry kind (1 byte) + its id -> one entry of the final chain model (relayer/chainstate.py)
    BLOCK = 0x0C  # block number (u64) + block hash (32) -> BlockRecord: an included, not yet final block
    EVIDENCE = 0x0D  # seq (u64) + round (u32) + signer (20) + kind (1) -> EvidenceRecord: a peer's equivocation


class Component(enum.Enum):
    """The components that write to the store; each owns the keyspaces listed in :data:`OWNER`."""

    PROCESSOR = "processor"
    QUORUM = "quorum"
    WORKER = "worker"
    P2P = "p2p"


OWNER: dict[Space, Component] = {
    Space.ORDER: Component.PROCESSOR,
    Space.CANCEL: Component.PROCESSOR,
    Space.INPUT: Component.PROCESSOR,
    Space.SNAPSHOT: Component.PROCESSOR,
    Space.CURSOR: Component.PROCESSOR,
    Space.BATCH: Component.PROCESSOR,
    Space.PROPOSAL: Component.QUORUM,
    Space.VOTE: Component.QUORUM,
    Space.TX: Component.WORKER,
    Space.PEER: Component.P2P,
    Space.CHAIN: Component.PROCESSOR,
    Space.BLOCK: Component.PROCESSOR,
    Space.EVIDENCE: Component.QUORUM,
}

ALWAYS_SYNC: frozenset[Space] = frozenset({Space.PROPOSAL, Space.VOTE, Space.TX})
"""Every write to these keyspaces is a promise that leaves the node: it must be synced (enforced by the store)."""

META_KEY = bytes([Space.META]) + b"meta"
CURSOR_KEY = bytes([Space.CURSOR])


def spaces_of(component: Component) -> frozenset[Space]:
    return frozenset(s for s, c in OWNER.items() if c is component)


def _hash32(h: bytes) -> bytes:
    if len(h) != 32:
        raise ValueError(f"expected a 32-byte hash, got {len(h)} bytes")
    return bytes(h)


def order_key(order_hash: Hash32 | bytes) -> bytes:
    return bytes([Space.ORDER]) + _hash32(order_hash)


def cancel_key(cancel_hash: Hash32 | bytes) -> bytes:
    return bytes([Space.CANCEL]) + _hash32(cancel_hash)


def input_key(index: int) -> bytes:
    return bytes([Space.INPUT]) + _U64.pack(index)


def snapshot_key(index: int) -> bytes:
    return bytes([Space.SNAPSHOT]) + _U64.pack(index)


def batch_key(seq: int) -> bytes:
    return bytes([Space.BATCH]) + _U64.pack(seq)


def proposal_key(seq: int, round_: int) -> bytes:
    return bytes([Space.PROPOSAL]) + _U64_U32.pack(seq, round_)


def vote_key(seq: int, round_: int) -> bytes:
    return bytes([Space.VOTE]) + _U64_U32.pack(seq, round_)


EVIDENCE_KINDS = {"proposal": 1, "vote": 2}


def evidence_key(seq: int, round_: int, signer: bytes, kind: str) -> bytes:
    if len(signer) != 20:
        raise ValueError("a signer is 20 address bytes")
    return bytes([Space.EVIDENCE]) + _U64_U32.pack(seq, round_) + bytes(signer) + bytes([EVIDENCE_KINDS[kind]])


def tx_key(nonce: int) -> bytes:
    return bytes([Space.TX]) + _U64.pack(nonce)


def peer_key(peer_id: str) -> bytes:
    return bytes([Space.PEER]) + peer_id.encode("utf-8")


def chain_key(entry: bytes) -> bytes:
    """A final chain model entry; ``entry`` is the model's own key (kind byte + id, relayer/chainstate.py)."""
    if not entry:
        raise ValueError("a chain entry key is not empty")
    return bytes([Space.CHAIN]) + bytes(entry)


def block_key(number: int, block_hash: Hash32 | bytes) -> bytes:
    return bytes([Space.BLOCK]) + _U64.pack(number) + _hash32(block_hash)


def block_of(key: bytes) -> tuple[int, Hash32]:
    """(number, hash) of a BLOCK key."""
    return int(_U64.unpack_from(key, 1)[0]), Hash32(bytes(key[9:41]))


def u64_of(key: bytes) -> int:
    """The u64 component right after the prefix byte (input, snapshot, batch, tx keys)."""
    return int(_U64.unpack_from(key, 1)[0])


def seq_round_of(key: bytes) -> tuple[int, int]:
    seq, round_ = _U64_U32.unpack_from(key, 1)
    return int(seq), int(round_)
