"""The shared vocabulary: frozen domain and message types every component speaks (docs/DESIGN.md).

Started by the foundation and filled in by the issues that need more: the contracts issue fixes units and the EIP-712
encoding (relayer/eip712.py), the matcher adds batch types, the quorum adds proposals and votes. Values are integers
in the units of docs/units.md; nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

Address = NewType("Address", str)
"""EIP-55 checksummed 20-byte address, ``0x``-prefixed."""
Hash32 = NewType("Hash32", bytes)
"""A 32-byte keccak digest (order hash, batch hash, block hash)."""
PeerId = NewType("PeerId", str)
"""A libp2p peer id in base58 (``16Uiu2...`` for the relayers' secp256k1 keys)."""
MarketId = NewType("MarketId", int)
Seq = NewType("Seq", int)
"""Settlement sequence number of a batch on the exchange contract (not an account nonce)."""
Round = NewType("Round", int)
Salt = NewType("Salt", int)
"""Per-trader order identity: fills and cancels count per (trader, salt)."""


class Side(enum.IntEnum):
    BUY = 0
    SELL = 1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderFlag(enum.IntFlag):
    """Bit layout of ``Order.flags`` (the contract uses the same bits; docs/units.md)."""

    NONE = 0
    POST_ONLY = 1 << 0
    REDUCE_ONLY = 1 << 1
    IOC = 1 << 2
    FOK = 1 << 3


class TriggerKind(enum.IntEnum):
    NONE = 0
    STOP_LOSS = 1
    TAKE_PROFIT = 2


class OrderState(enum.Enum):
    """Lifecycle states (DESIGN.md "Order and fill lifecycle"); every figure names its state."""

    ACCEPTED = "accepted"
    PROPOSED = "proposed"
    CERTIFIED = "certified"
    SUBMITTED = "submitted"
    INCLUDED = "included"
    FINAL = "final"
    SKIPPED = "skipped"
    REORGED = "reorged"
    DEAD = "dead"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Order:
    """The fields a trader signs (EIP-712 type ``Order``)."""

    trader: Address
    market: MarketId
    side: Side
    price: int
    amount: int
    salt: Salt
    created_at: int
    expiry: int
    flags: OrderFlag
    trigger_kind: TriggerKind
    trigger_price: int

    @property
    def key(self) -> tuple[Address, Salt]:
        """Identity for fills and cancels: every version (amendment) of an order shares it."""
        return (self.trader, self.salt)

    @classmethod
    def from_fields(
        cls,
        trader: Address,
        market: int,
        side: int,
        price: int,
        amount: int,
        salt: int,
        created_at: int,
        expiry: int,
        flags: int,
        trigger_kind: int,
        trigger_price: int,
    ) -> Order:
        """An order from its plain fields in signing order (as decoders read them); the side, flags and trigger
        kind become their enums (``ValueError`` for a value outside them)."""
        return cls(
            trader=trader,
            market=MarketId(market),
            side=Side(side),
            price=price,
            amount=amount,
            salt=Salt(salt),
            created_at=created_at,
            expiry=expiry,
            flags=OrderFlag(flags),
            trigger_kind=TriggerKind(trigger_kind),
            trigger_price=trigger_price,
        )


@dataclass(frozen=True, slots=True)
class SignedOrder:
    order: Order
    signature: bytes  # 65 bytes r || s || v, v in {27, 28}, low s
    hash: Hash32


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill of a batch (EIP-712 type ``Fill``): ``amount`` base atoms between two entries of the batch's order list.

    ``maker`` and ``taker`` are indices (``uint16``) into the batch's ordered list of order hashes
    (``Batch.orders``); the fill executes at the maker's price.
    """

    maker: int
    taker: int
    amount: int


@dataclass(frozen=True, slots=True)
class SignedCancel:
    """A trader-signed cancel of every version of (trader, salt)."""

    trader: Address
    salt: Salt
    signature: bytes
    hash: Hash32


@dataclass(frozen=True, slots=True)
class ChainHead:
    number: int
    hash: Hash32
    timestamp: int
