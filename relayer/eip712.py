"""EIP-712 type strings, struct hashes and digests, signing and fast recovery (docs/units.md "EIP-712").

One definition shared with the contract: the type strings below are the ones in docs/units.md, character for
character, and the tests check every digest against eth-account's reference encoder. The hashing is done here by
hand (32-byte words and keccak) because intake hashes and recovers every order: eth-account's generic encoder is about
a hundred times slower.

Digests are what gets signed: ``keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(message))``. ``Batch.orders`` lists
order digests (not struct hashes), and a batch's digest is the ``prevBatchHash`` the next batch names.

Signatures are 65 bytes ``r ‖ s ‖ v`` with ``v ∈ {27, 28}``, ``0 < r < n``, ``0 < s ≤ n/2`` (low-s) and a non-zero
recovered signer, exactly what the contract accepts; anything else raises :class:`SignatureError` with a reason code,
before any curve arithmetic where the fault is visible in the bytes (:func:`check_signature`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import coincurve

from relayer.errors import KeyMaterialError, RelayerError
from relayer.hashing import keccak
from relayer.keys import SECP256K1_N, RelayerKey
from relayer.margin import MAX_MARKETS, MAX_ORDER_SIZE, MAX_PRICE
from relayer.types import Address, Fill, Hash32, Order, OrderFlag, Side, TriggerKind

__all__ = [
    "BATCH_ENCODED_TYPE",
    "BATCH_TYPE",
    "BATCH_TYPEHASH",
    "CANCEL_TYPE",
    "CANCEL_TYPEHASH",
    "CANCEL_UP_TO_TYPE",
    "CANCEL_UP_TO_TYPEHASH",
    "DOMAIN_NAME",
    "DOMAIN_TYPE",
    "DOMAIN_TYPEHASH",
    "DOMAIN_VERSION",
    "FILL_TYPE",
    "FILL_TYPEHASH",
    "ORDER_TYPE",
    "ORDER_TYPEHASH",
    "Domain",
    "EncodingError",
    "FillLike",
    "InvalidOrderError",
    "SignatureError",
    "batch_digest",
    "batch_struct_hash",
    "cancel_digest",
    "cancel_up_to_digest",
    "check_signature",
    "fill_struct_hash",
    "order_digest",
    "order_struct_hash",
    "recover",
    "recover_address_bytes",
    "sign_digest",
    "to_checksum_address",
    "validate_order",
    "verify_order",
    "verify_signer",
]

DOMAIN_NAME = "PerpRelayerExchange"
DOMAIN_VERSION = "1"

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
ORDER_TYPE = (
    "Order(address trader,uint32 market,uint8 side,uint64 price,uint64 amount,uint64 salt,uint32 createdAt,"
    "uint32 expiry,uint8 flags,uint8 triggerKind,uint64 triggerPrice)"
)
CANCEL_TYPE = "Cancel(address trader,uint64 salt)"
CANCEL_UP_TO_TYPE = "CancelUpTo(address trader,uint64 salt)"
FILL_TYPE = "Fill(uint16 maker,uint16 taker,uint64 amount)"
BATCH_TYPE = (
    "Batch(uint64 seq,uint32 round,bytes32 prevBatchHash,uint64 setVersion,uint32 deadline,bytes32[] orders,"
    "Fill[] fills)"
)
BATCH_ENCODED_TYPE = BATCH_TYPE + FILL_TYPE
"""EIP-712 ``encodeType(Batch)``: the referenced struct types follow the primary type (sorted by name; only Fill)."""

DOMAIN_TYPEHASH = keccak(DOMAIN_TYPE.encode())
ORDER_TYPEHASH = keccak(ORDER_TYPE.encode())
CANCEL_TYPEHASH = keccak(CANCEL_TYPE.encode())
CANCEL_UP_TO_TYPEHASH = keccak(CANCEL_UP_TO_TYPE.encode())
FILL_TYPEHASH = keccak(FILL_TYPE.encode())
BATCH_TYPEHASH = keccak(BATCH_ENCODED_TYPE.encode())

_HALF_N = SECP256K1_N // 2  # the contract's low-s bound: s <= n/2 with Solidity's (flooring) division
_ZERO_ADDRESS = bytes(20)
_ADDRESS_PAD = bytes(12)
_EIP191_PREFIX = b"\x19\x01"
_HEX = frozenset("0123456789abcdefABCDEF")


class EncodingError(RelayerError):
    """A value does not fit its EIP-712 field (``field`` names it): it cannot be hashed as the contract would."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        super().__init__(f"cannot encode {field}: {detail}")


class SignatureError(RelayerError):
    """A signature the contract would refuse. ``reason`` is one of :data:`SignatureError.REASONS`."""

    REASONS = (
        "length",  # not 65 bytes
        "v",  # v not 27 or 28
        "zero_r",
        "r_range",  # r >= n
        "zero_s",
        "high_s",  # s > n/2 (the malleable twin of a valid signature, or s >= n)
        "unrecoverable",  # r is not the x coordinate of a curve point
        "zero_signer",
        "wrong_signer",  # valid, but not signed by the expected address
    )

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        self.reason = reason
        super().__init__(f"invalid signature ({reason})" + (f": {detail}" if detail else ""))


class InvalidOrderError(RelayerError):
    """An order outside the bounds of docs/units.md. ``reason`` names the offending field (snake_case)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"invalid order ({reason}): {detail}")


# --- words -------------------------------------------------------------------------------------------------------


def _uint(value: int, bits: int, name: str) -> bytes:
    if not 0 <= value < 1 << bits:
        raise EncodingError(name, f"{value!r} is not a uint{bits}")
    return value.to_bytes(32, "big")


def _address_raw(text: str, name: str) -> bytes:
    """The 20 bytes of a ``0x``-prefixed hex address (any case; checksums are checked by :func:`validate_order`)."""
    if not isinstance(text, str) or len(text) != 42 or text[:2] not in ("0x", "0X") or not _HEX.issuperset(text[2:]):
        raise EncodingError(name, f"{text!r} is not a 0x-prefixed 20-byte hex address")
    return bytes.fromhex(text[2:])


def _bytes32(value: bytes, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise EncodingError(name, "expected 32 bytes")
    return bytes(value)


@functools.lru_cache(maxsize=1 << 16)
def to_checksum_address(raw: bytes) -> Address:
    """EIP-55 form of 20 address bytes (a quicker equivalent of eth_utils.to_checksum_address). Cached: intake checks
    every order's trader, and a network sees the same traders over and over."""
    if len(raw) != 20:
        raise EncodingError("address", f"expected 20 bytes, got {len(raw)}")
    lower = raw.hex()
    mask = keccak(lower.encode("ascii")).hex()
    return Address("0x" + "".join(c.upper() if m > "7" else c for c, m in zip(lower, mask, strict=False)))


# --- domain ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Domain:
    """The exchange's EIP-712 domain; ``separator`` is its ``hashStruct(EIP712Domain)``, computed once.

    ``verifying_contract`` is stored checksummed; any-case hex is accepted, mixed case must be a valid checksum.
    """

    chain_id: int
    verifying_contract: Address
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION
    separator: Hash32 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.chain_id, bool) or not 0 < self.chain_id < 1 << 256:
            raise EncodingError("chainId", f"{self.chain_id!r} is not a positive uint256")
        raw = _address_raw(self.verifying_contract, "verifyingContract")
        checksummed = to_checksum_address(raw)
        body = self.verifying_contract[2:]
        if body != body.lower() and body != body.upper() and self.verifying_contract != checksummed:
            raise EncodingError("verifyingContract", f"{self.verifying_contract} fails its EIP-55 checksum")
        object.__setattr__(self, "verifying_contract", checksummed)
        separator = keccak(
            DOMAIN_TYPEHASH
            + keccak(self.name.encode("utf-8"))
            + keccak(self.version.encode("utf-8"))
            + self.chain_id.to_bytes(32, "big")
            + _ADDRESS_PAD
            + raw
        )
        object.__setattr__(self, "separator", Hash32(separator))

    def digest(self, struct_hash: bytes) -> Hash32:
        """``keccak256(0x19 0x01 ‖ separator ‖ struct_hash)``: what is signed."""
        return Hash32(keccak(_EIP191_PREFIX + self.separator + struct_hash))


# --- structs -----------------------------------------------------------------------------------------------------


def order_struct_hash(order: Order) -> Hash32:
    """``hashStruct(Order)``. Raises :class:`EncodingError` if a field does not fit its Solidity type."""
    return Hash32(
        keccak(
            b"".join(
                (
                    ORDER_TYPEHASH,
                    _ADDRESS_PAD,
                    _address_raw(order.trader, "trader"),
                    _uint(order.market, 32, "market"),
                    _uint(order.side, 8, "side"),
                    _uint(order.price, 64, "price"),
                    _uint(order.amount, 64, "amount"),
                    _uint(order.salt, 64, "salt"),
                    _uint(order.created_at, 32, "createdAt"),
                    _uint(order.expiry, 32, "expiry"),
                    _uint(order.flags, 8, "flags"),
                    _uint(order.trigger_kind, 8, "triggerKind"),
                    _uint(order.trigger_price, 64, "triggerPrice"),
                )
            )
        )
    )


def order_digest(domain: Domain, order: Order) -> Hash32:
    """The order's EIP-712 digest: its hash everywhere (dedup, priority tie-break, ``Batch.orders``)."""
    return domain.digest(order_struct_hash(order))


def _cancel_struct_hash(typehash: bytes, trader: str, salt: int) -> bytes:
    return keccak(typehash + _ADDRESS_PAD + _address_raw(trader, "trader") + _uint(salt, 64, "salt"))


def cancel_digest(domain: Domain, trader: str, salt: int) -> Hash32:
    """Digest of ``Cancel(trader, salt)``: cancels every version of (trader, salt)."""
    return domain.digest(_cancel_struct_hash(CANCEL_TYPEHASH, trader, salt))


def cancel_up_to_digest(domain: Domain, trader: str, salt: int) -> Hash32:
    """Digest of ``CancelUpTo(trader, salt)``: cancels every salt below ``salt``."""
    return domain.digest(_cancel_struct_hash(CANCEL_UP_TO_TYPEHASH, trader, salt))


FillLike = Fill | tuple[int, int, int]
"""A fill as the typed :class:`relayer.types.Fill` or a plain ``(maker_index, taker_index, amount)`` tuple."""


def _fill_words(fill: FillLike) -> bytes:
    if isinstance(fill, Fill):
        maker, taker, amount = fill.maker, fill.taker, fill.amount
    else:
        maker, taker, amount = fill
    return (
        FILL_TYPEHASH
        + _uint(maker, 16, "Fill.maker")
        + _uint(taker, 16, "Fill.taker")
        + _uint(amount, 64, "Fill.amount")
    )


def fill_struct_hash(fill: FillLike) -> Hash32:
    """``hashStruct(Fill)``."""
    return Hash32(keccak(_fill_words(fill)))


def batch_struct_hash(
    seq: int,
    round: int,  # the EIP-712 field's name (shadows the builtin here only)
    prev_batch_hash: bytes,
    set_version: int,
    deadline: int,
    order_hashes: Sequence[bytes],
    fills: Iterable[FillLike],
) -> Hash32:
    """``hashStruct(Batch)``: ``bytes32[]`` hashes as keccak of the concatenated elements, ``Fill[]`` as keccak of the
    concatenated ``hashStruct(Fill)`` (EIP-712 arrays; an empty array hashes to ``keccak256("")``)."""
    orders_hash = keccak(b"".join(_bytes32(h, "orders[]") for h in order_hashes))
    fills_hash = keccak(b"".join(keccak(_fill_words(f)) for f in fills))
    return Hash32(
        keccak(
            b"".join(
                (
                    BATCH_TYPEHASH,
                    _uint(seq, 64, "seq"),
                    _uint(round, 32, "round"),
                    _bytes32(prev_batch_hash, "prevBatchHash"),
                    _uint(set_version, 64, "setVersion"),
                    _uint(deadline, 32, "deadline"),
                    orders_hash,
                    fills_hash,
                )
            )
        )
    )


def batch_digest(
    domain: Domain,
    seq: int,
    round: int,  # the EIP-712 field's name (shadows the builtin here only)
    prev_batch_hash: bytes,
    set_version: int,
    deadline: int,
    order_hashes: Sequence[bytes],
    fills: Iterable[FillLike],
) -> Hash32:
    """The batch's digest: what relayers sign, and the ``prevBatchHash`` of batch ``seq + 1``."""
    return domain.digest(batch_struct_hash(seq, round, prev_batch_hash, set_version, deadline, order_hashes, fills))


# --- signatures --------------------------------------------------------------------------------------------------


def sign_digest(key: RelayerKey | bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest: 65 bytes ``r ‖ s ‖ v`` with ``v ∈ {27, 28}`` and low s (libsecp256k1 only makes low s).

    ``key`` is a :class:`RelayerKey` or a raw 32-byte secret (a trader's key in tests and the CLI).
    """
    secret = key.secret if isinstance(key, RelayerKey) else key
    digest = _bytes32(digest, "digest")
    try:
        private = coincurve.PrivateKey(secret)
    except (ValueError, TypeError):
        raise KeyMaterialError("a private key must be 32 bytes in 1 .. n-1 of secp256k1") from None
    sig = private.sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes((27 + sig[64],))


def check_signature(signature: bytes) -> None:
    """Raise :class:`SignatureError` if the signature's bytes break a rule (length, v, r and s ranges, low s).

    Needs no curve arithmetic: gossip validators call it to reject objective faults cheaply.
    """
    if len(signature) != 65:
        raise SignatureError("length", f"{len(signature)} bytes, expected 65")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError("v", f"v = {v}, expected 27 or 28")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if r == 0:
        raise SignatureError("zero_r")
    if r >= SECP256K1_N:
        raise SignatureError("r_range", "r >= n")
    if s == 0:
        raise SignatureError("zero_s")
    if s > _HALF_N:
        raise SignatureError("high_s", "s > n/2")


def recover_address_bytes(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address that signed ``digest``; raises :class:`SignatureError` for a signature the contract
    refuses."""
    signature = bytes(signature)
    check_signature(signature)
    digest = _bytes32(digest, "digest")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes((signature[64] - 27,)), digest, hasher=None
        )
    except ValueError:
        raise SignatureError("unrecoverable", "no public key recovers from this r") from None
    raw = keccak(public.format(compressed=False)[1:])[12:]
    if raw == _ZERO_ADDRESS:
        raise SignatureError("zero_signer")
    return raw


def recover(digest: bytes, signature: bytes) -> Address:
    """The checksummed address that signed ``digest`` (see :func:`recover_address_bytes`)."""
    return to_checksum_address(recover_address_bytes(digest, signature))


def verify_signer(digest: bytes, signature: bytes, expected: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is a valid signature of ``digest`` by ``expected``."""
    if recover_address_bytes(digest, signature) != _address_raw(expected, "signer"):
        raise SignatureError("wrong_signer", f"not signed by {expected}")


def verify_order(domain: Domain, order: Order, signature: bytes) -> Hash32:
    """Check that ``order.trader`` signed ``order`` under ``domain``; returns the order's digest (its hash)."""
    digest = order_digest(domain, order)
    verify_signer(digest, signature, order.trader)
    return digest


# --- order bounds ------------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ALL_FLAGS = int(OrderFlag.POST_ONLY | OrderFlag.REDUCE_ONLY | OrderFlag.IOC | OrderFlag.FOK)
_TRIGGER_KINDS = frozenset(int(k) for k in TriggerKind)


def validate_order(order: Order) -> None:
    """Check an order's fields against the network-wide bounds of docs/units.md; raise :class:`InvalidOrderError`.

    Market-specific bounds (tick, min size, max order size and max price of the market) are checked elsewhere.
    Stricter than the contract in two places, both harmless at intake: ``expiry > created_at`` (an order that expires
    no later than it was created can never be live), and ``trigger_price == 0`` when ``trigger_kind`` is none.
    """
    trader = order.trader
    try:
        raw = _address_raw(trader, "trader")
    except EncodingError:
        raise InvalidOrderError("trader", f"{trader!r} is not a 0x-prefixed 20-byte hex address") from None
    if trader != to_checksum_address(raw):
        raise InvalidOrderError("trader", f"{trader} is not in EIP-55 checksum form")
    if raw == _ZERO_ADDRESS:
        raise InvalidOrderError("trader", "the zero address cannot sign")
    if not _is_int(order.market) or not 0 <= order.market < MAX_MARKETS:
        raise InvalidOrderError("market", f"{order.market!r} is not a market id in 0 .. {MAX_MARKETS - 1}")
    if not _is_int(order.side) or order.side not in (Side.BUY, Side.SELL):
        raise InvalidOrderError("side", f"{order.side!r} is not 0 (buy) or 1 (sell)")
    if not _is_int(order.price) or not 1 <= order.price <= MAX_PRICE:
        raise InvalidOrderError("price", f"{order.price!r} is not in 1 .. 2**62")
    if not _is_int(order.amount) or not 1 <= order.amount <= MAX_ORDER_SIZE:
        raise InvalidOrderError("amount", f"{order.amount!r} is not in 1 .. 2**63-1")
    if not _is_int(order.salt) or not 0 <= order.salt < 1 << 64:
        raise InvalidOrderError("salt", f"{order.salt!r} is not a uint64")
    if not _is_int(order.created_at) or not 0 <= order.created_at < 1 << 32:
        raise InvalidOrderError("created_at", f"{order.created_at!r} is not a uint32")
    if not _is_int(order.expiry) or not 0 <= order.expiry < 1 << 32:
        raise InvalidOrderError("expiry", f"{order.expiry!r} is not a uint32")
    if order.expiry <= order.created_at:
        raise InvalidOrderError("expiry", f"expiry {order.expiry} is not after createdAt {order.created_at}")
    if not _is_int(order.flags) or not 0 <= order.flags <= 0xFF or order.flags & ~_ALL_FLAGS:
        raise InvalidOrderError("flags", f"{order.flags!r} has bits outside {_ALL_FLAGS:#x}")
    if not _is_int(order.trigger_kind) or order.trigger_kind not in _TRIGGER_KINDS:
        raise InvalidOrderError("trigger_kind", f"{order.trigger_kind!r} is not 0 (none), 1 (stop-loss) or 2")
    if not _is_int(order.trigger_price):
        raise InvalidOrderError("trigger_price", f"{order.trigger_price!r} is not an integer")
    if order.trigger_kind == TriggerKind.NONE:
        if order.trigger_price != 0:
            raise InvalidOrderError("trigger_price", "must be 0 when the order has no trigger")
    elif not 1 <= order.trigger_price <= MAX_PRICE:
        raise InvalidOrderError("trigger_price", f"{order.trigger_price} is not in 1 .. 2**62")
