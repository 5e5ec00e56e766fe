"""Builders of deterministic records, and the tiny state machine the recovery tests replay."""

from __future__ import annotations

import hashlib

from relayer.store import ChainCursor, InputRecord, OrderRecord, QuorumRecord
from relayer.types import (
    Address,
    Hash32,
    MarketId,
    Order,
    OrderFlag,
    OrderState,
    Salt,
    Side,
    SignedOrder,
    TriggerKind,
)


def h32(*parts: object) -> Hash32:
    return Hash32(hashlib.sha256(repr(parts).encode()).digest())


def order_record(i: int, state: OrderState = OrderState.ACCEPTED, **kw: object) -> OrderRecord:
    order = Order(
        trader=Address("0x" + f"{i % 7 + 1:02x}" * 20),
        market=MarketId(1),
        side=Side(i % 2),
        price=1_000 + i,
        amount=10 + i,
        salt=Salt(i),
        created_at=1_700_000_000 + i,
        expiry=1_700_001_000 + i,
        flags=OrderFlag.NONE,
        trigger_kind=TriggerKind.NONE,
        trigger_price=0,
    )
    signed = SignedOrder(order, b"\x01" * 64 + b"\x1b", h32("order", i))
    return OrderRecord(signed, first_seen_ms=1_700_000_000_000 + i, state=state, **kw)  # type: ignore[arg-type]


def vote(seq: int, round_: int, tag: object = "") -> QuorumRecord:
    return QuorumRecord(seq, round_, h32("batch", seq, round_, tag), b"vote-bytes" + repr(tag).encode())


def cursor(n: int) -> ChainCursor:
    return ChainCursor(n, h32("block", n), tuple((m, h32("block", m)) for m in range(max(0, n - 3), n)))


# The replay state machine: the state is (inputs applied, running sha256); a snapshot stores it as 40 bytes.
INITIAL = (0, b"\x00" * 32)


def apply(state: tuple[int, bytes], inp: InputRecord) -> tuple[int, bytes]:
    count, digest = state
    assert inp.index == count, f"input {inp.index} applied as number {count}: a gap or a repeat"
    return count + 1, hashlib.sha256(digest + inp.kind.encode() + b"\x00" + inp.payload).digest()


def encode_state(state: tuple[int, bytes]) -> bytes:
    return state[0].to_bytes(8, "big") + state[1]


def decode_state(data: bytes) -> tuple[int, bytes]:
    return int.from_bytes(data[:8], "big"), data[8:]
