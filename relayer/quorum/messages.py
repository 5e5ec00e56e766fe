"""Quorum messages: Proposal, Vote, Certificate, with one canonical binary encoding (docs/protocol.md).

Every relayer signature is over the contract's EIP-712 batch digest (:func:`relayer.eip712.batch_digest`), so a
certificate's signatures are exactly what ``settleBatch`` checks (:func:`settle_call`). A proposal carries a second
signature by its proposer over an *envelope* digest that also binds the proposal time and the skipped list, which are
not part of the batch.

Decoding never crashes on garbage: every fault raises :class:`MessageError`. The encoding is canonical: a decoded
message re-encodes to exactly the bytes it came from (anything else is refused), so equal messages are equal bytes.
Integers are big-endian fixed width; addresses are 20 raw bytes; signatures 65 bytes ``r ‖ s ‖ v``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from bindings import exchange as ex
from relayer import eip712
from relayer.errors import RelayerError
from relayer.hashing import keccak
from relayer.matcher.model import SkipReason
from relayer.types import Address, Fill, Hash32, Order, SignedOrder

__all__ = [
    "ENVELOPE_TAG",
    "MAGIC",
    "MAX_MESSAGE_BYTES",
    "MAX_SKIPPED",
    "NOT_SEEN",
    "TAG_CERTIFICATE",
    "TAG_PROPOSAL",
    "TAG_VOTE",
    "BatchBody",
    "Certificate",
    "Message",
    "MessageError",
    "Proposal",
    "Skip",
    "Vote",
    "decode_message",
    "envelope_digest",
    "precheck",
    "settle_batch",
    "settle_call",
]

MAGIC = b"PQ\x01"
"""Every message starts with these three bytes (protocol 'PQ', version 1), then a one-byte tag."""
TAG_PROPOSAL = 1
TAG_VOTE = 2
TAG_CERTIFICATE = 3
ENVELOPE_TAG = b"perp-relayer/quorum/proposal/v1"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_SKIPPED = 65_535
NOT_SEEN = 0
"""Skip reason code "not yet seen" (the proposer did not hold the order); the other codes are the contract's
(:class:`~relayer.matcher.model.SkipReason`)."""
_REASONS = frozenset({NOT_SEEN, *(int(r) for r in SkipReason)})

_ORDER = struct.Struct(">20sIBQQQIIBBQ")  # the Order struct's fields in EIP-712 order, 71 bytes
_FILL = struct.Struct(">HHQ")
_SIG_LEN = 65


class MessageError(RelayerError):
    """A quorum message that does not decode, is not canonical, or is out of bounds."""


# ------------------------------------------------------------------------------------------------ bytes


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise MessageError(f"truncated message: need {n} bytes at offset {self.pos}, have {len(self.data)}")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise MessageError(f"{len(self.data) - self.pos} trailing bytes")


def _u(value: int, size: int, name: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << (8 * size):
        raise MessageError(f"{name} {value!r} does not fit {size} bytes")
    return value.to_bytes(size, "big")


def _addr_bytes(address: str, name: str) -> bytes:
    try:
        raw = bytes.fromhex(address[2:]) if address[:2] in ("0x", "0X") else b""
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 20:
        raise MessageError(f"{name} {address!r} is not a 20-byte hex address")
    return raw


def _address(raw: bytes) -> Address:
    return eip712.to_checksum_address(raw)


def _sig(sig: bytes, name: str) -> bytes:
    if not isinstance(sig, bytes | bytearray) or len(sig) != _SIG_LEN:
        raise MessageError(f"{name} must be {_SIG_LEN} bytes")
    return bytes(sig)


def _h32(value: bytes, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise MessageError(f"{name} must be 32 bytes")
    return bytes(value)


def _encode_order(signed: SignedOrder) -> bytes:
    o = signed.order
    try:
        body = _ORDER.pack(
            _addr_bytes(o.trader, "trader"),
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
        )
    except struct.error as exc:
        raise MessageError(f"order field out of range: {exc}") from None
    return body + _sig(signed.signature, "order signature")


def _decode_order(r: _Reader, domain: eip712.Domain) -> SignedOrder:
    raw = r.take(_ORDER.size)
    trader, market, side, price, amount, salt, created, expiry, flags, kind, trigger = _ORDER.unpack(raw)
    try:
        order = Order.from_fields(
            _address(trader), market, side, price, amount, salt, created, expiry, flags, kind, trigger
        )
    except ValueError as exc:
        raise MessageError(f"order field out of range: {exc}") from None
    signature = r.take(_SIG_LEN)
    try:
        h = eip712.order_digest(domain, order)
    except eip712.EncodingError as exc:
        raise MessageError(str(exc)) from None
    return SignedOrder(order=order, signature=signature, hash=h)


# ------------------------------------------------------------------------------------------------ the batch


@dataclass(frozen=True, slots=True)
class BatchBody:
    """The batch exactly as ``settleBatch`` takes it (the contract's ``Batch`` struct), with typed orders.

    ``orders[i].hash`` is the order's EIP-712 digest under the domain the message was decoded with."""

    seq: int
    round: int
    prev_batch_hash: Hash32
    set_version: int
    deadline: int
    orders: tuple[SignedOrder, ...]
    fills: tuple[Fill, ...]

    @property
    def order_hashes(self) -> tuple[Hash32, ...]:
        return tuple(o.hash for o in self.orders)

    def digest(self, domain: eip712.Domain) -> Hash32:
        """The EIP-712 batch digest every relayer signs (and batch ``seq + 1`` names as ``prevBatchHash``)."""
        try:
            return eip712.batch_digest(
                domain,
                self.seq,
                self.round,
                self.prev_batch_hash,
                self.set_version,
                self.deadline,
                self.order_hashes,
                self.fills,
            )
        except eip712.EncodingError as exc:
            raise MessageError(str(exc)) from None

    def encode(self) -> bytes:
        if len(self.orders) > 0xFFFF or len(self.fills) > 0xFFFF:
            raise MessageError("a batch holds at most 65,535 orders and 65,535 fills")
        parts = [
            _u(self.seq, 8, "seq"),
            _u(self.round, 4, "round"),
            _h32(self.prev_batch_hash, "prevBatchHash"),
            _u(self.set_version, 8, "setVersion"),
            _u(self.deadline, 4, "deadline"),
            len(self.orders).to_bytes(2, "big"),
        ]
        parts.extend(_encode_order(o) for o in self.orders)
        parts.append(len(self.fills).to_bytes(2, "big"))
        for f in self.fills:
            parts.append(_u(f.maker, 2, "fill maker") + _u(f.taker, 2, "fill taker") + _u(f.amount, 8, "fill amount"))
        return b"".join(parts)

    @staticmethod
    def read(r: _Reader, domain: eip712.Domain) -> BatchBody:
        seq, round_ = r.uint(8), r.uint(4)
        prev = Hash32(r.take(32))
        set_version, deadline = r.uint(8), r.uint(4)
        orders = tuple(_decode_order(r, domain) for _ in range(r.uint(2)))
        fills = []
        for _ in range(r.uint(2)):
            maker, taker, amount = _FILL.unpack(r.take(_FILL.size))
            fills.append(Fill(maker, taker, amount))
        return BatchBody(seq, round_, prev, set_version, deadline, orders, tuple(fills))

    def to_binding(self) -> ex.Batch:
        """The contract's ``Batch`` struct (bindings.exchange)."""
        return ex.Batch(
            seq=self.seq,
            round=self.round,
            prev_batch_hash=bytes(self.prev_batch_hash),
            set_version=self.set_version,
            deadline=self.deadline,
            orders=tuple(_order_binding(o) for o in self.orders),
            fills=tuple(ex.Fill(maker=f.maker, taker=f.taker, amount=f.amount) for f in self.fills),
        )


def _split(sig: bytes) -> ex.Signature:
    return ex.Signature(r=sig[:32], s=sig[32:64], v=sig[64])


def _order_binding(signed: SignedOrder) -> ex.SignedOrder:
    o = signed.order
    return ex.SignedOrder(
        order=ex.Order(
            trader=o.trader,
            market=int(o.market),
            side=int(o.side),
            price=o.price,
            amount=o.amount,
            salt=int(o.salt),
            created_at=o.created_at,
            expiry=o.expiry,
            flags=int(o.flags),
            trigger_kind=int(o.trigger_kind),
            trigger_price=o.trigger_price,
        ),
        sig=_split(signed.signature),
    )


# ------------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class Skip:
    """A better-priced order the proposer set aside, with its reason code (:data:`NOT_SEEN` or a SkipReason)."""

    hash: Hash32
    reason: int


def envelope_digest(domain: eip712.Domain, batch_digest: bytes, time: int, skipped: Sequence[Skip]) -> Hash32:
    """What a proposer signs besides the batch digest: ``keccak(ENVELOPE_TAG ‖ separator ‖ batchDigest ‖ time (u64)
    ‖ count (u32) ‖ (hash ‖ reason (u8))*)``."""
    parts = [ENVELOPE_TAG, domain.separator, _h32(batch_digest, "batch digest"), _u(time, 8, "time")]
    parts.append(_u(len(skipped), 4, "skipped count"))
    parts.extend(_h32(s.hash, "skipped hash") + _u(s.reason, 1, "skip reason") for s in skipped)
    return Hash32(keccak(b"".join(parts)))


@dataclass(frozen=True, slots=True)
class Proposal:
    """Batch ``body`` proposed for (seq, round) by ``proposer`` at ``time`` (seconds, the proposer's clock).

    ``batch_signature`` is the proposer's signature over the batch digest (its vote, counted in the certificate);
    ``signature`` its signature over :func:`envelope_digest` (binds ``time`` and ``skipped``)."""

    body: BatchBody
    time: int
    skipped: tuple[Skip, ...]
    proposer: Address
    batch_signature: bytes
    signature: bytes
    _digest: list[Hash32] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def seq(self) -> int:
        return self.body.seq

    @property
    def round(self) -> int:
        return self.body.round

    def digest(self, domain: eip712.Domain) -> Hash32:
        """The batch digest (computed once)."""
        if not self._digest:
            self._digest.append(self.body.digest(domain))
        return self._digest[0]

    def envelope(self, domain: eip712.Domain) -> Hash32:
        return envelope_digest(domain, self.digest(domain), self.time, self.skipped)

    def encode(self) -> bytes:
        if len(self.skipped) > MAX_SKIPPED:
            raise MessageError(f"at most {MAX_SKIPPED} skipped orders")
        parts = [MAGIC, bytes((TAG_PROPOSAL,)), self.body.encode(), _u(self.time, 8, "time")]
        parts.append(len(self.skipped).to_bytes(4, "big"))
        for s in self.skipped:
            if s.reason not in _REASONS:
                raise MessageError(f"unknown skip reason {s.reason!r}")
            parts.append(_h32(s.hash, "skipped hash") + bytes((s.reason,)))
        parts += [_addr_bytes(self.proposer, "proposer"), _sig(self.batch_signature, "batch signature")]
        parts.append(_sig(self.signature, "signature"))
        return b"".join(parts)

    @staticmethod
    def read(r: _Reader, domain: eip712.Domain) -> Proposal:
        body = BatchBody.read(r, domain)
        time = r.uint(8)
        count = r.uint(4)
        if count > MAX_SKIPPED:
            raise MessageError(f"{count} skipped orders (at most {MAX_SKIPPED})")
        skipped = []
        for _ in range(count):
            h = Hash32(r.take(32))
            reason = r.uint(1)
            if reason not in _REASONS:
                raise MessageError(f"unknown skip reason {reason}")
            skipped.append(Skip(h, reason))
        proposer = _address(r.take(20))
        return Proposal(body, time, tuple(skipped), proposer, r.take(_SIG_LEN), r.take(_SIG_LEN))


@dataclass(frozen=True, slots=True)
class Vote:
    """``voter`` approves the batch with digest ``batch_digest`` proposed for (seq, round); ``signature`` is over
    ``batch_digest`` (so it goes into the certificate as is)."""

    seq: int
    round: int
    batch_digest: Hash32
    voter: Address
    signature: bytes

    def encode(self) -> bytes:
        return b"".join(
            (
                MAGIC,
                bytes((TAG_VOTE,)),
                _u(self.seq, 8, "seq"),
                _u(self.round, 4, "round"),
                _h32(self.batch_digest, "batch digest"),
                _addr_bytes(self.voter, "voter"),
                _sig(self.signature, "signature"),
            )
        )

    @staticmethod
    def read(r: _Reader) -> Vote:
        seq, round_ = r.uint(8), r.uint(4)
        digest = Hash32(r.take(32))
        return Vote(seq, round_, digest, _address(r.take(20)), r.take(_SIG_LEN))


@dataclass(frozen=True, slots=True)
class Certificate:
    """A batch with at least threshold relayer signatures over its digest, as (signer, signature) pairs with
    signers unique and strictly ascending by address (the contract's order). Directly settleable."""

    body: BatchBody
    signatures: tuple[tuple[Address, bytes], ...]
    _digest: list[Hash32] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def seq(self) -> int:
        return self.body.seq

    @property
    def round(self) -> int:
        return self.body.round

    @property
    def signers(self) -> tuple[Address, ...]:
        return tuple(a for a, _ in self.signatures)

    def digest(self, domain: eip712.Domain) -> Hash32:
        if not self._digest:
            self._digest.append(self.body.digest(domain))
        return self._digest[0]

    def encode(self) -> bytes:
        if len(self.signatures) > 0xFFFF:
            raise MessageError("too many signatures")
        parts = [MAGIC, bytes((TAG_CERTIFICATE,)), self.body.encode(), len(self.signatures).to_bytes(2, "big")]
        for address, sig in self.signatures:
            parts.append(_addr_bytes(address, "signer") + _sig(sig, "signature"))
        return b"".join(parts)

    @staticmethod
    def read(r: _Reader, domain: eip712.Domain) -> Certificate:
        body = BatchBody.read(r, domain)
        sigs = tuple((_address(r.take(20)), r.take(_SIG_LEN)) for _ in range(r.uint(2)))
        return Certificate(body, sigs)


Message = Proposal | Vote | Certificate


def decode_message(data: bytes, domain: eip712.Domain) -> Message:
    """Decode one message; :class:`MessageError` for anything that is not exactly a canonical message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(data) < len(MAGIC) + 1 or not data.startswith(MAGIC):
        raise MessageError("not a quorum message (bad magic or version)")
    r = _Reader(data)
    r.take(len(MAGIC))
    tag = r.uint(1)
    try:
        msg = _read(tag, r, domain)
    except MessageError:
        raise
    except (ValueError, TypeError, struct.error, OverflowError, eip712.EncodingError) as exc:
        raise MessageError(f"malformed message: {exc}") from None
    r.done()
    if msg.encode() != data:
        raise MessageError("not in canonical form")
    return msg


def _read(tag: int, r: _Reader, domain: eip712.Domain) -> Message:
    if tag == TAG_PROPOSAL:
        return Proposal.read(r, domain)
    if tag == TAG_VOTE:
        return Vote.read(r)
    if tag == TAG_CERTIFICATE:
        return Certificate.read(r, domain)
    raise MessageError(f"unknown message tag {tag}")


def precheck(data: bytes, domain: eip712.Domain) -> Message:
    """What a gossip validator may reject without any view: the message decodes canonically and every signature in
    it (relayer and order signatures) has the bytes the contract accepts (length, v, r/s ranges, low s). No curve
    arithmetic and no chain state; :class:`MessageError` otherwise."""
    msg = decode_message(data, domain)
    sigs: list[bytes] = []
    if isinstance(msg, Vote):
        sigs.append(msg.signature)
    else:
        sigs += [o.signature for o in msg.body.orders]
        if isinstance(msg, Proposal):
            sigs += [msg.batch_signature, msg.signature]
        else:
            sigs += [sig for _, sig in msg.signatures]
    for sig in sigs:
        try:
            eip712.check_signature(sig)
        except eip712.SignatureError as exc:
            raise MessageError(f"bad signature bytes: {exc}") from None
    return msg


# ------------------------------------------------------------------------------------------------ settlement


def settle_batch(cert: Certificate) -> tuple[ex.Batch, list[ex.Signature]]:
    """The certificate as ``settleBatch``'s arguments (bindings.exchange structs)."""
    return cert.body.to_binding(), [_split(sig) for _, sig in cert.signatures]


def settle_call(cert: Certificate) -> bytes:
    """Calldata of ``settleBatch(batch, signatures)`` for this certificate."""
    batch, sigs = settle_batch(cert)
    return ex.encode_settle_batch(batch, sigs)
