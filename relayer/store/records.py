"""The typed records of each keyspace and their encoding (schema version :data:`SCHEMA_VERSION`).

Each record is a frozen dataclass with ``encode() -> bytes`` and ``decode(bytes)``; the bytes are the canonical
map encoding of relayer/store/codec.py. A record that cannot be decoded raises :class:`codec.DecodeError`, which the
store maps to :class:`StoreCorruptError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relayer.store import codec
from relayer.types import (
    Address,
    Hash32,
    Order,
    OrderState,
    Salt,
    SignedCancel,
    SignedOrder,
)

SCHEMA_VERSION = 2
"""v1 stored an order's lifecycle state (and the keys of its fill amounts) as the state's name; v2 as a 1-byte code."""

STATE_CODE: dict[OrderState, int] = {s: i for i, s in enumerate(OrderState)}
"""OrderState -> its code in schema v2 (declaration order of the enum; append only)."""
CODE_STATE: dict[int, OrderState] = {i: s for s, i in STATE_CODE.items()}

TERMINAL: frozenset[OrderState] = frozenset(
    {OrderState.FINAL, OrderState.CANCELLED, OrderState.EXPIRED, OrderState.REJECTED}
)
"""States after which an order never changes again: such records may be pruned past the horizon."""


def _map(data: bytes) -> dict[str, Any]:
    value = codec.unpack(data)
    if not isinstance(value, dict):
        raise codec.DecodeError("a record must be a map")
    return value


def _get(m: Mapping[str, Any], key: str, tp: type | tuple[type, ...]) -> Any:
    if key not in m:
        raise codec.DecodeError(f"field {key!r} missing")
    v = m[key]
    if not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
        raise codec.DecodeError(f"field {key!r} has type {type(v).__name__}")
    return v


def _state(code: Any) -> OrderState:
    if not isinstance(code, int) or code not in CODE_STATE:
        raise codec.DecodeError(f"unknown order state code {code!r}")
    return CODE_STATE[code]


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """An accepted order: its signed form, when this node first saw it, its state and fill amounts per state."""

    signed: SignedOrder
    first_seen_ms: int
    state: OrderState = OrderState.ACCEPTED
    filled: tuple[tuple[OrderState, int], ...] = ()
    """Base atoms filled, per fill state (e.g. included, final); states with zero are left out; sorted by code."""
    updated_block: int = 0
    """Chain block of the last state change (0 = none yet); pruning compares it with the horizon."""

    def encode(self) -> bytes:
        o = self.signed.order
        return codec.pack(
            {
                "order": [
                    o.trader,
                    int(o.market),
                    int(o.side),
                    o.price,
                    o.amount,
                    int(o.salt),
                    o.created_at,
                    o.expiry,
                    int(o.flags),
                    int(o.trigger_kind),
                    o.trigger_price,
                ],
                "sig": self.signed.signature,
                "hash": self.signed.hash,
                "seen": self.first_seen_ms,
                "state": STATE_CODE[self.state],
                "filled": [[STATE_CODE[s], a] for s, a in sorted(self.filled, key=lambda p: STATE_CODE[p[0]])],
                "block": self.updated_block,
            }
        )

    @staticmethod
    def decode(data: bytes) -> OrderRecord:
        m = _map(data)
        f = _get(m, "order", list)
        if len(f) != 11 or not isinstance(f[0], str) or not all(isinstance(x, int) for x in f[1:]):
            raise codec.DecodeError("malformed order fields")
        try:
            order = Order.from_fields(Address(f[0]), *f[1:])
        except ValueError as exc:
            raise codec.DecodeError(f"malformed order: {exc}") from None
        filled = []
        for pair in _get(m, "filled", list):
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], int):
                raise codec.DecodeError("malformed fill amounts")
            filled.append((_state(pair[0]), pair[1]))
        return OrderRecord(
            signed=SignedOrder(order, _get(m, "sig", bytes), Hash32(_get(m, "hash", bytes))),
            first_seen_ms=_get(m, "seen", int),
            state=_state(m.get("state")),
            filled=tuple(filled),
            updated_block=_get(m, "block", int),
        )

    def filled_in(self, state: OrderState) -> int:
        return sum(a for s, a in self.filled if s is state)


@dataclass(frozen=True, slots=True)
class CancelRecord:
    cancel: SignedCancel
    first_seen_ms: int

    def encode(self) -> bytes:
        c = self.cancel
        return codec.pack(
            {"trader": c.trader, "salt": int(c.salt), "sig": c.signature, "hash": c.hash, "seen": self.first_seen_ms}
        )

    @staticmethod
    def decode(data: bytes) -> CancelRecord:
        m = _map(data)
        cancel = SignedCancel(
            Address(_get(m, "trader", str)),
            Salt(_get(m, "salt", int)),
            _get(m, "sig", bytes),
            Hash32(_get(m, "hash", bytes)),
        )
        return CancelRecord(cancel, _get(m, "seen", int))


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One input the processor applied, in order: ``kind`` names it, ``payload`` is the processor's encoding."""

    index: int
    kind: str
    payload: bytes

    def encode(self) -> bytes:
        return codec.pack({"kind": self.kind, "payload": self.payload})

    @staticmethod
    def decode(index: int, data: bytes) -> InputRecord:
        m = _map(data)
        return InputRecord(index, _get(m, "kind", str), _get(m, "payload", bytes))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The processor's state after applying every input up to and including ``index`` (opaque ``payload``)."""

    index: int
    payload: bytes

    def encode(self) -> bytes:
        return codec.pack({"payload": self.payload})

    @staticmethod
    def decode(index: int, data: bytes) -> Snapshot:
        return Snapshot(index, _get(_map(data), "payload", bytes))


@dataclass(frozen=True, slots=True)
class ChainCursor:
    """The last processed block and the recent block hashes (for reorg detection)."""

    number: int
    hash: Hash32
    recent: tuple[tuple[int, Hash32], ...] = ()

    def encode(self) -> bytes:
        return codec.pack({"number": self.number, "hash": self.hash, "recent": [[n, h] for n, h in self.recent]})

    @staticmethod
    def decode(data: bytes) -> ChainCursor:
        m = _map(data)
        recent = []
        for pair in _get(m, "recent", list):
            if not isinstance(pair, list) or len(pair) != 2:
                raise codec.DecodeError("malformed recent block")
            recent.append((int(pair[0]), Hash32(bytes(pair[1]))))
        return ChainCursor(_get(m, "number", int), Hash32(_get(m, "hash", bytes)), tuple(recent))


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch seen included (or final) on chain, with its fills (``payload``: the processor's encoding).

    ``worker_tx`` and ``outcome`` are what the contract worker reported for this seq (the transaction it submitted;
    ``"submitted"``, ``"stale"`` or ``"reverted"``): kept apart from ``state``, which only the chain decides. Both
    are left out of the encoding while unset, so records without them encode as before.
    """

    seq: int
    hash: Hash32
    state: OrderState  # INCLUDED or FINAL (or REORGED; SUBMITTED while only the worker has reported on it)
    block_number: int
    payload: bytes = b""
    worker_tx: Hash32 | None = None
    outcome: str = ""

    def encode(self) -> bytes:
        m: dict[str, Any] = {
            "hash": self.hash,
            "state": STATE_CODE[self.state],
            "block": self.block_number,
            "payload": self.payload,
        }
        if self.worker_tx is not None:
            m["worker_tx"] = self.worker_tx
        if self.outcome:
            m["outcome"] = self.outcome
        return codec.pack(m)

    @staticmethod
    def decode(seq: int, data: bytes) -> BatchRecord:
        m = _map(data)
        return BatchRecord(
            seq,
            Hash32(_get(m, "hash", bytes)),
            _state(m.get("state")),
            _get(m, "block", int),
            _get(m, "payload", bytes),
            Hash32(_get(m, "worker_tx", bytes)) if "worker_tx" in m else None,
            _get(m, "outcome", str) if "outcome" in m else "",
        )


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """An included block that is not final yet, with its decoded exchange logs (``logs``: the processor's
    encoding), so a restarted processor rebuilds its included view without asking the chain."""

    number: int
    hash: Hash32
    parent_hash: Hash32
    timestamp: int
    logs: bytes = b""

    def encode(self) -> bytes:
        return codec.pack({"parent": self.parent_hash, "time": self.timestamp, "logs": self.logs})

    @staticmethod
    def decode(number: int, block_hash: Hash32, data: bytes) -> BlockRecord:
        m = _map(data)
        return BlockRecord(
            number, block_hash, Hash32(_get(m, "parent", bytes)), _get(m, "time", int), _get(m, "logs", bytes)
        )


@dataclass(frozen=True, slots=True)
class QuorumRecord:
    """This node's proposal or vote for (seq, round): the batch hash it signed and the signed message bytes."""

    seq: int
    round: int
    batch_hash: Hash32
    payload: bytes

    def encode(self) -> bytes:
        return codec.pack({"batch": self.batch_hash, "payload": self.payload})

    @staticmethod
    def decode(seq: int, round_: int, data: bytes) -> QuorumRecord:
        m = _map(data)
        return QuorumRecord(seq, round_, Hash32(_get(m, "batch", bytes)), _get(m, "payload", bytes))


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """Two different batch digests one relayer signed for one (seq, round): both digests, both signatures and the
    signed messages that bind each digest to (seq, round). Anyone can re-check it with the relayer's address."""

    seq: int
    round: int
    signer: str
    kind: str  # "proposal" or "vote"
    first_digest: Hash32
    first_signature: bytes
    first_message: bytes
    second_digest: Hash32
    second_signature: bytes
    second_message: bytes

    def encode(self) -> bytes:
        return codec.pack(
            {
                "signer": self.signer,
                "kind": self.kind,
                "first": [self.first_digest, self.first_signature, self.first_message],
                "second": [self.second_digest, self.second_signature, self.second_message],
            }
        )

    @staticmethod
    def decode(seq: int, round_: int, data: bytes) -> EvidenceRecord:
        m = _map(data)
        first, second = _get(m, "first", list), _get(m, "second", list)
        if len(first) != 3 or len(second) != 3:
            raise codec.DecodeError("malformed evidence")
        return EvidenceRecord(
            seq,
            round_,
            _get(m, "signer", str),
            _get(m, "kind", str),
            Hash32(bytes(first[0])),
            bytes(first[1]),
            bytes(first[2]),
            Hash32(bytes(second[0])),
            bytes(second[1]),
            bytes(second[2]),
        )


@dataclass(frozen=True, slots=True)
class TxRecord:
    """A transaction the worker handed to the chain: its nonce, hash, raw signed bytes and the seq it settles."""

    nonce: int
    tx_hash: Hash32
    raw: bytes
    seq: int
    status: str = "sent"

    def encode(self) -> bytes:
        return codec.pack({"hash": self.tx_hash, "raw": self.raw, "seq": self.seq, "status": self.status})

    @staticmethod
    def decode(nonce: int, data: bytes) -> TxRecord:
        m = _map(data)
        return TxRecord(
            nonce, Hash32(_get(m, "hash", bytes)), _get(m, "raw", bytes), _get(m, "seq", int), _get(m, "status", str)
        )


@dataclass(frozen=True, slots=True)
class PeerRecord:
    peer_id: str
    addrs: tuple[str, ...] = field(default=())
    last_seen_ms: int = 0

    def encode(self) -> bytes:
        return codec.pack({"addrs": list(self.addrs), "seen": self.last_seen_ms})

    @staticmethod
    def decode(peer_id: str, data: bytes) -> PeerRecord:
        m = _map(data)
        addrs = _get(m, "addrs", list)
        if not all(isinstance(a, str) for a in addrs):
            raise codec.DecodeError("malformed peer addresses")
        return PeerRecord(peer_id, tuple(addrs), _get(m, "seen", int))
