"""Wire format of the relayer network: ORDERS and CANCELS gossip messages and the anti-entropy SYNC protocol.

Every message starts with a kind byte and a version byte. Integers are big-endian and fixed-width; records have a
fixed size, so a decoder checks one exact length before it reads a field. Decoding never trusts the sender: it
checks lengths and counts, enum values, the network-wide order bounds (:func:`relayer.eip712.validate_order`) and the
signature's byte rules (:func:`relayer.eip712.check_signature`), and computes every hash itself from the domain
(a sender cannot name a hash). Any fault raises :class:`WireError` with a stable ``reason``; nothing else escapes.
Signature *recovery* is not done here: it costs ~80 us an order and is the caller's job (relayer.verify).

ORDERS  = kind 0x01, version, u16 n, n x ORDER (132 bytes):
          trader 20 | market u32 | side u8 | price u64 | amount u64 | salt u64 | createdAt u32 | expiry u32 |
          flags u8 | triggerKind u8 | triggerPrice u64 | signature 65 (r | s | v)
CANCELS = kind 0x02, version, u16 n, n x CANCEL (93 bytes): trader 20 | salt u64 | signature 65

SYNC (request/response on the sync stream protocol; docs/p2p.md "Anti-entropy"):
  SUMMARY_REQ  0x10                         -> SUMMARY  0x11: 256 x (count u32 | digest 32)
  HASHES_REQ   0x12 u16 n, n x bucket u8    -> HASHES   0x13: truncated u8 | u32 n, n x hash 32
  FETCH_REQ    0x14 u16 n, n x hash 32      -> ITEMS    0x15: u16 n, n x ORDER | u16 m, m x CANCEL
The order set (open orders and signed cancels, keyed by hash) is split into 256 buckets by the first byte of the
hash; a bucket's digest is keccak of its sorted hashes (not an XOR: XOR is linear, so a trader submitting many
orders could craft two different sets with one digest).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relayer.eip712 import (
    Domain,
    EncodingError,
    InvalidOrderError,
    SignatureError,
    cancel_digest,
    check_signature,
    order_digest,
    to_checksum_address,
    validate_order,
)
from relayer.errors import RelayerError
from relayer.hashing import keccak
from relayer.types import Order, Salt, SignedCancel, SignedOrder

VERSION = 1

KIND_ORDERS = 0x01
KIND_CANCELS = 0x02
KIND_SUMMARY_REQ = 0x10
KIND_SUMMARY = 0x11
KIND_HASHES_REQ = 0x12
KIND_HASHES = 0x13
KIND_FETCH_REQ = 0x14
KIND_ITEMS = 0x15

BUCKETS = 256
MAX_ITEMS = 8_192
"""Most orders (or cancels) in one message; the byte limit of the host usually binds first."""
MAX_FETCH = 4_096
"""Most hashes in one FETCH request."""
MAX_HASHES = 65_536
"""Most hashes in one HASHES response (2 MiB of hashes)."""

_ORDER = struct.Struct(">20sIBQQQIIBBQ65s")
_CANCEL = struct.Struct(">20sQ65s")
_HEADER = 2
_COUNT = struct.Struct(">H")
_U32 = struct.Struct(">I")
_BUCKET = struct.Struct(">I32s")

ORDER_SIZE = _ORDER.size  # 132
CANCEL_SIZE = _CANCEL.size  # 93
ORDERS_OVERHEAD = _HEADER + _COUNT.size
_EMPTY_DIGEST = keccak(b"")


class WireError(RelayerError):
    """Bytes that are not a well-formed message. ``reason`` is a stable code: ``truncated``, ``trailing``,
    ``kind``, ``version``, ``count``, ``invalid_<field>`` (an order field out of bounds), ``sig_<reason>``
    (a signature breaking a byte rule, see :class:`relayer.eip712.SignatureError`), ``too_large``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"malformed message ({reason}): {detail}")


# --------------------------------------------------------------------------------------------------------------------
# Records


def _pack_order(so: SignedOrder) -> bytes:
    o = so.order
    try:
        return _ORDER.pack(
            bytes.fromhex(o.trader[2:]),
            o.market,
            o.side,
            o.price,
            o.amount,
            o.salt,
            o.created_at,
            o.expiry,
            o.flags,
            o.trigger_kind,
            o.trigger_price,
            so.signature,
        )
    except (struct.error, ValueError) as exc:
        raise WireError("unencodable", f"order {so.hash.hex()} does not fit the wire format: {exc}") from None


def _pack_cancel(sc: SignedCancel) -> bytes:
    try:
        return _CANCEL.pack(bytes.fromhex(sc.trader[2:]), sc.salt, sc.signature)
    except (struct.error, ValueError) as exc:
        raise WireError("unencodable", f"cancel {sc.hash.hex()} does not fit the wire format: {exc}") from None


def _check_sig(signature: bytes) -> None:
    try:
        check_signature(signature)
    except SignatureError as exc:
        raise WireError(f"sig_{exc.reason}", str(exc)) from None


def _unpack_order(domain: Domain, raw: bytes | memoryview) -> SignedOrder:
    (trader, market, side, price, amount, salt, created, expiry, flags, tkind, tprice, sig) = _ORDER.unpack(raw)
    try:
        order = Order.from_fields(
            to_checksum_address(trader), market, side, price, amount, salt, created, expiry, flags, tkind, tprice
        )
        validate_order(order)
        digest = order_digest(domain, order)
    except ValueError as exc:  # Side / TriggerKind out of range
        raise WireError("invalid_enum", str(exc)) from None
    except InvalidOrderError as exc:
        raise WireError(f"invalid_{exc.reason}", str(exc)) from None
    except EncodingError as exc:  # pragma: no cover - validate_order checks every field first
        raise WireError("invalid_encoding", str(exc)) from None
    _check_sig(sig)
    return SignedOrder(order=order, signature=sig, hash=digest)


def _unpack_cancel(domain: Domain, raw: bytes | memoryview) -> SignedCancel:
    trader_raw, salt, sig = _CANCEL.unpack(raw)
    if trader_raw == bytes(20):
        raise WireError("invalid_trader", "the zero address cannot sign")
    trader = to_checksum_address(trader_raw)
    _check_sig(sig)
    return SignedCancel(trader=trader, salt=Salt(salt), signature=sig, hash=cancel_digest(domain, trader, salt))


def _header(data: bytes, kind: int) -> None:
    if len(data) < _HEADER:
        raise WireError("truncated", f"{len(data)} bytes, no header")
    if data[0] != kind:
        raise WireError("kind", f"kind {data[0]:#04x}, expected {kind:#04x}")
    if data[1] != VERSION:
        raise WireError("version", f"version {data[1]}, this node speaks {VERSION}")


def _records(data: bytes, offset: int, size: int, limit: int) -> tuple[int, int]:
    """(count, offset of the first record) of a u16-counted record list starting at ``offset``."""
    if len(data) < offset + 2:
        raise WireError("truncated", "no record count")
    (n,) = _COUNT.unpack_from(data, offset)
    if n > limit:
        raise WireError("count", f"{n} records, at most {limit}")
    start = offset + 2
    if len(data) < start + n * size:
        raise WireError("truncated", f"{n} records of {size} bytes need {start + n * size} bytes, got {len(data)}")
    return n, start


# --------------------------------------------------------------------------------------------------------------------
# ORDERS and CANCELS gossip messages


def encode_orders(orders: Sequence[SignedOrder]) -> bytes:
    if len(orders) > MAX_ITEMS:
        raise WireError("count", f"{len(orders)} orders in one message, at most {MAX_ITEMS}")
    return bytes((KIND_ORDERS, VERSION)) + _COUNT.pack(len(orders)) + b"".join(_pack_order(o) for o in orders)


def decode_orders(data: bytes, domain: Domain) -> list[SignedOrder]:
    _header(data, KIND_ORDERS)
    n, pos = _records(data, _HEADER, ORDER_SIZE, MAX_ITEMS)
    if len(data) != pos + n * ORDER_SIZE:
        raise WireError("trailing", f"{len(data) - pos - n * ORDER_SIZE} bytes after {n} orders")
    view = memoryview(data)
    return [_unpack_order(domain, view[pos + i * ORDER_SIZE : pos + (i + 1) * ORDER_SIZE]) for i in range(n)]


def encode_cancels(cancels: Sequence[SignedCancel]) -> bytes:
    if len(cancels) > MAX_ITEMS:
        raise WireError("count", f"{len(cancels)} cancels in one message, at most {MAX_ITEMS}")
    return bytes((KIND_CANCELS, VERSION)) + _COUNT.pack(len(cancels)) + b"".join(_pack_cancel(c) for c in cancels)


def decode_cancels(data: bytes, domain: Domain) -> list[SignedCancel]:
    _header(data, KIND_CANCELS)
    n, pos = _records(data, _HEADER, CANCEL_SIZE, MAX_ITEMS)
    if len(data) != pos + n * CANCEL_SIZE:
        raise WireError("trailing", f"{len(data) - pos - n * CANCEL_SIZE} bytes after {n} cancels")
    view = memoryview(data)
    return [_unpack_cancel(domain, view[pos + i * CANCEL_SIZE : pos + (i + 1) * CANCEL_SIZE]) for i in range(n)]


def max_orders_per_message(max_message_bytes: int) -> int:
    return max(1, min(MAX_ITEMS, (max_message_bytes - ORDERS_OVERHEAD) // ORDER_SIZE))


GOSSIP_TARGET_BYTES = 131_072
"""The size an honest node packs its gossip messages to (at most; ``max_message_bytes`` may be lower). Measured with
py-libp2p 0.8.1: a pubsub RPC larger than the yamux window (256 KiB) is written in parts while the stream's window
refills, and another RPC written to the same stream meanwhile (a heartbeat's GRAFT, another publish) interleaves
with it: the receiver then reads a corrupt protobuf. 128 KiB (~990 orders) stays well inside one window."""


def pack_orders(orders: Sequence[SignedOrder], max_message_bytes: int) -> list[bytes]:
    """Split ``orders`` into as few ORDERS messages as fit ``min(max_message_bytes, GOSSIP_TARGET_BYTES)`` each
    (gossip many orders a message: py-libp2p's cost is per message, not per byte)."""
    step = max_orders_per_message(min(max_message_bytes, GOSSIP_TARGET_BYTES))
    return [encode_orders(orders[i : i + step]) for i in range(0, len(orders), step)]


def pack_cancels(cancels: Sequence[SignedCancel], max_message_bytes: int) -> list[bytes]:
    limit = min(max_message_bytes, GOSSIP_TARGET_BYTES)
    step = max(1, min(MAX_ITEMS, (limit - ORDERS_OVERHEAD) // CANCEL_SIZE))
    return [encode_cancels(cancels[i : i + step]) for i in range(0, len(cancels), step)]


def orders_validator(domain: Domain) -> ValidatorFn:
    """A topic validator for ORDERS: rejects what :func:`decode_orders` rejects, and empty messages."""

    def validate(data: bytes) -> str | None:
        try:
            if not decode_orders(data, domain):
                return "empty"
        except WireError as exc:
            return exc.reason
        return None

    return validate


def cancels_validator(domain: Domain) -> ValidatorFn:
    """A topic validator for CANCELS: rejects what :func:`decode_cancels` rejects, and empty messages."""

    def validate(data: bytes) -> str | None:
        try:
            if not decode_cancels(data, domain):
                return "empty"
        except WireError as exc:
            return exc.reason
        return None

    return validate


def opaque_validator(data: bytes) -> str | None:
    """The validator of opaque topics (quorum): only an empty message is objectively wrong here."""
    return "empty" if not data else None


# --------------------------------------------------------------------------------------------------------------------
# Anti-entropy: the order-set index and the SYNC messages


Summary = tuple[tuple[int, bytes], ...]
"""256 (count, digest) pairs, one per bucket (first byte of the hash)."""


class OrderSetIndex:
    """Open orders and signed cancels keyed by hash, bucketed for anti-entropy. Bucket digests are recomputed
    lazily, only for buckets that changed, so a node can keep one index up to date at O(1) a change."""

    def __init__(self, orders: Iterable[SignedOrder] = (), cancels: Iterable[SignedCancel] = ()) -> None:
        self._orders: dict[bytes, SignedOrder] = {}
        self._cancels: dict[bytes, SignedCancel] = {}
        self._buckets: list[set[bytes]] = [set() for _ in range(BUCKETS)]
        self._digests: list[bytes | None] = [_EMPTY_DIGEST] * BUCKETS
        for o in orders:
            self.add_order(o)
        for c in cancels:
            self.add_cancel(c)

    def __len__(self) -> int:
        return len(self._orders) + len(self._cancels)

    def __contains__(self, h: object) -> bool:
        return h in self._orders or h in self._cancels

    def _touch(self, h: bytes, add: bool) -> None:
        b = h[0]
        if add:
            self._buckets[b].add(h)
        else:
            self._buckets[b].discard(h)
        self._digests[b] = None

    def add_order(self, order: SignedOrder) -> None:
        if order.hash not in self._orders:
            self._orders[order.hash] = order
            self._touch(order.hash, True)

    def add_cancel(self, cancel: SignedCancel) -> None:
        if cancel.hash not in self._cancels:
            self._cancels[cancel.hash] = cancel
            self._touch(cancel.hash, True)

    def remove(self, h: bytes) -> None:
        if self._orders.pop(h, None) is not None or self._cancels.pop(h, None) is not None:
            self._touch(h, False)

    def summary(self) -> Summary:
        out = []
        for b in range(BUCKETS):
            digest = self._digests[b]
            if digest is None:
                digest = keccak(b"".join(sorted(self._buckets[b])))
                self._digests[b] = digest
            out.append((len(self._buckets[b]), digest))
        return tuple(out)

    def hashes(self, buckets: Iterable[int], limit: int = MAX_HASHES) -> tuple[list[bytes], bool]:
        """The hashes in ``buckets`` (sorted), at most ``limit``; the flag says whether some were left out."""
        out: list[bytes] = []
        for b in buckets:
            out.extend(sorted(self._buckets[b]))
            if len(out) > limit:
                return out[:limit], True
        return out, False

    def items(self, hashes: Iterable[bytes]) -> tuple[list[SignedOrder], list[SignedCancel]]:
        orders, cancels = [], []
        for h in hashes:
            o = self._orders.get(h)
            if o is not None:
                orders.append(o)
                continue
            c = self._cancels.get(h)
            if c is not None:
                cancels.append(c)
        return orders, cancels


def differing_buckets(mine: Summary, theirs: Summary) -> list[int]:
    """Buckets whose digest differs (where ``theirs`` may hold something ``mine`` lacks, or the other way round)."""
    return [b for b in range(BUCKETS) if mine[b][1] != theirs[b][1]]


def encode_summary_request() -> bytes:
    return bytes((KIND_SUMMARY_REQ, VERSION))


def encode_summary(summary: Summary) -> bytes:
    return bytes((KIND_SUMMARY, VERSION)) + b"".join(_BUCKET.pack(n, d) for n, d in summary)


def decode_summary(data: bytes) -> Summary:
    _header(data, KIND_SUMMARY)
    if len(data) != _HEADER + BUCKETS * _BUCKET.size:
        raise WireError("truncated" if len(data) < _HEADER + BUCKETS * _BUCKET.size else "trailing", "summary size")
    return tuple(_BUCKET.unpack_from(data, _HEADER + b * _BUCKET.size) for b in range(BUCKETS))


def encode_hashes_request(buckets: Sequence[int]) -> bytes:
    if len(buckets) > BUCKETS or any(not 0 <= b < BUCKETS for b in buckets):
        raise WireError("count", "bucket list out of range")
    return bytes((KIND_HASHES_REQ, VERSION)) + _COUNT.pack(len(buckets)) + bytes(buckets)


def decode_hashes_request(data: bytes) -> list[int]:
    _header(data, KIND_HASHES_REQ)
    n, pos = _records(data, _HEADER, 1, BUCKETS)
    if len(data) != pos + n:
        raise WireError("trailing", "bytes after the bucket list")
    buckets = list(data[pos : pos + n])
    if len(set(buckets)) != n:
        raise WireError("count", "a bucket is listed twice")
    return buckets


def encode_hashes(hashes: Sequence[bytes], truncated: bool) -> bytes:
    if len(hashes) > MAX_HASHES:
        raise WireError("count", f"{len(hashes)} hashes, at most {MAX_HASHES}")
    return bytes((KIND_HASHES, VERSION, int(truncated))) + _U32.pack(len(hashes)) + b"".join(hashes)


def decode_hashes(data: bytes) -> tuple[list[bytes], bool]:
    _header(data, KIND_HASHES)
    if len(data) < _HEADER + 5:
        raise WireError("truncated", "no hash count")
    if data[2] not in (0, 1):
        raise WireError("invalid_flag", f"truncated flag {data[2]}")
    (n,) = _U32.unpack_from(data, 3)
    if n > MAX_HASHES:
        raise WireError("count", f"{n} hashes, at most {MAX_HASHES}")
    pos = _HEADER + 5
    if len(data) != pos + 32 * n:
        raise WireError("truncated" if len(data) < pos + 32 * n else "trailing", f"{n} hashes")
    return [data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n)], bool(data[2])


def encode_fetch_request(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) > MAX_FETCH or any(len(h) != 32 for h in hashes):
        raise WireError("count", f"a fetch names 1 .. {MAX_FETCH} 32-byte hashes")
    return bytes((KIND_FETCH_REQ, VERSION)) + _COUNT.pack(len(hashes)) + b"".join(hashes)


def decode_fetch_request(data: bytes) -> list[bytes]:
    _header(data, KIND_FETCH_REQ)
    n, pos = _records(data, _HEADER, 32, MAX_FETCH)
    if len(data) != pos + 32 * n:
        raise WireError("trailing", "bytes after the hash list")
    return [data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n)]


def encode_items(orders: Sequence[SignedOrder], cancels: Sequence[SignedCancel]) -> bytes:
    if len(orders) > MAX_ITEMS or len(cancels) > MAX_ITEMS:
        raise WireError("count", "too many items in one response")
    return b"".join(
        (
            bytes((KIND_ITEMS, VERSION)),
            _COUNT.pack(len(orders)),
            b"".join(_pack_order(o) for o in orders),
            _COUNT.pack(len(cancels)),
            b"".join(_pack_cancel(c) for c in cancels),
        )
    )


def decode_items(data: bytes, domain: Domain) -> tuple[list[SignedOrder], list[SignedCancel]]:
    _header(data, KIND_ITEMS)
    n, pos = _records(data, _HEADER, ORDER_SIZE, MAX_ITEMS)
    end_orders = pos + n * ORDER_SIZE
    m, cpos = _records(data, end_orders, CANCEL_SIZE, MAX_ITEMS)
    if len(data) != cpos + m * CANCEL_SIZE:
        raise WireError("trailing", "bytes after the cancels")
    view = memoryview(data)
    orders = [_unpack_order(domain, view[pos + i * ORDER_SIZE : pos + (i + 1) * ORDER_SIZE]) for i in range(n)]
    cancels = [_unpack_cancel(domain, view[cpos + i * CANCEL_SIZE : cpos + (i + 1) * CANCEL_SIZE]) for i in range(m)]
    return orders, cancels


@dataclass(frozen=True, slots=True)
class _Sizes:
    order: int = ORDER_SIZE
    cancel: int = CANCEL_SIZE


def items_fitting(n_orders: int, n_cancels: int, max_message_bytes: int) -> bool:
    """Whether an ITEMS response of that many orders and cancels fits ``max_message_bytes``."""
    return _HEADER + 4 + n_orders * ORDER_SIZE + n_cancels * CANCEL_SIZE <= max_message_bytes


from collections.abc import Callable  # noqa: E402  (kept next to its only use)

ValidatorFn = Callable[[bytes], str | None]
