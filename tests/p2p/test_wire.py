"""The wire format: round trips, and decoding garbage raises WireError (never anything else)."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayer import eip712
from relayer.keys import SECP256K1_N
from relayer.p2p import wire
from relayer.p2p.wire import OrderSetIndex, WireError
from relayer.types import Address

from .helpers import DOMAIN, make_cancel, make_order, make_orders

ORDERS = make_orders(5)
CANCELS = [make_cancel(1000 + i) for i in range(3)]


def test_orders_and_cancels_round_trip_with_hashes_computed_by_the_receiver() -> None:
    data = wire.encode_orders(ORDERS)
    assert len(data) == wire.ORDERS_OVERHEAD + 5 * wire.ORDER_SIZE == 4 + 5 * 132
    assert wire.decode_orders(data, DOMAIN) == ORDERS
    assert wire.decode_cancels(wire.encode_cancels(CANCELS), DOMAIN) == CANCELS
    assert wire.decode_items(wire.encode_items(ORDERS, CANCELS), DOMAIN) == (ORDERS, CANCELS)
    # Another network (chain id) gives other hashes: a receiver never trusts a sender's hash.
    other = eip712.Domain(1, DOMAIN.verifying_contract)
    assert [o.hash for o in wire.decode_orders(data, other)] != [o.hash for o in ORDERS]


def test_pack_orders_splits_by_the_byte_limit() -> None:
    orders = make_orders(70)
    msgs = wire.pack_orders(orders, 4_096)  # 31 orders a message
    assert [len(m) for m in msgs] == [4 + 31 * 132, 4 + 31 * 132, 4 + 8 * 132]
    assert [o for m in msgs for o in wire.decode_orders(m, DOMAIN)] == orders
    assert wire.max_orders_per_message(1_048_576) == 7_943


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (b"\x02\x01\x00\x00", "kind"),
        (b"\x01\x02\x00\x00", "version"),
        (b"\x01\x01\x00", "truncated"),
        (b"\x01\x01\x00\x01" + bytes(131), "truncated"),
        (b"\x01\x01\x00\x00\x00", "trailing"),
        (b"\x01\x01\xff\xff", "count"),
    ],
)
def test_malformed_orders_messages(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_orders(data, DOMAIN)
    assert err.value.reason == reason


def _tamper(offset: int, value: bytes) -> bytes:
    data = bytearray(wire.encode_orders(ORDERS[:1]))
    data[4 + offset : 4 + offset + len(value)] = value
    return bytes(data)


HALF_N = SECP256K1_N // 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_tamper(0, bytes(20)), "invalid_trader"),
        (_tamper(24, b"\x02"), "invalid_enum"),  # side
        (_tamper(25, bytes(8)), "invalid_price"),
        (_tamper(33, bytes(8)), "invalid_amount"),
        (_tamper(57, b"\x10"), "invalid_flags"),
        (_tamper(58, b"\x07"), "invalid_enum"),  # trigger kind
        (_tamper(59, b"\x00\x00\x00\x00\x00\x00\x00\x01"), "invalid_trigger_price"),
        (_tamper(67 + 64, b"\x00"), "sig_v"),
        (_tamper(67 + 32, (HALF_N + 1).to_bytes(32, "big")), "sig_high_s"),
        (_tamper(67, bytes(32)), "sig_zero_r"),
    ],
)
def test_orders_out_of_bounds_are_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_orders(data, DOMAIN)
    assert err.value.reason == reason


def test_unencodable_orders_raise_wire_error() -> None:
    bad = replace(ORDERS[0], order=replace(ORDERS[0].order, price=1 << 64))
    with pytest.raises(WireError) as err:
        wire.encode_orders([bad])
    assert err.value.reason == "unencodable"


DECODERS = [
    lambda d: wire.decode_orders(d, DOMAIN),
    lambda d: wire.decode_cancels(d, DOMAIN),
    lambda d: wire.decode_items(d, DOMAIN),
    wire.decode_summary,
    wire.decode_hashes_request,
    wire.decode_hashes,
    wire.decode_fetch_request,
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(range(len(DECODERS))), st.sampled_from([0x01, 0x02, 0x11, 0x12, 0x13]))
def test_garbage_raises_only_wire_error(body: bytes, which: int, kind: int) -> None:
    for data in (body, bytes((kind, 1)) + body):
        with contextlib.suppress(WireError):
            DECODERS[which](data)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 4 + 2 * 132 - 1), st.integers(0, 255))
def test_single_byte_corruption_never_escapes_as_another_error(pos: int, value: int) -> None:
    data = bytearray(wire.encode_orders(ORDERS[:2]))
    data[pos] = value
    try:
        out = wire.decode_orders(bytes(data), DOMAIN)
    except WireError:
        return
    assert len(out) == 2  # an accepted corruption still yields two well-formed orders (with other hashes)


def test_validators_say_why() -> None:
    validate = wire.orders_validator(DOMAIN)
    assert validate(wire.encode_orders(ORDERS)) is None
    assert validate(wire.encode_orders([])) == "empty"
    assert validate(b"junk") == "kind"
    assert wire.cancels_validator(DOMAIN)(wire.encode_cancels(CANCELS)) is None
    assert wire.opaque_validator(b"") == "empty" and wire.opaque_validator(b"x") is None


def test_sync_messages_round_trip() -> None:
    index = OrderSetIndex(ORDERS, CANCELS)
    summary = index.summary()
    assert wire.decode_summary(wire.encode_summary(summary)) == summary
    assert sum(n for n, _ in summary) == len(index) == 8
    assert wire.decode_hashes_request(wire.encode_hashes_request([3, 1, 200])) == [3, 1, 200]
    hashes, truncated = index.hashes(range(256))
    assert hashes == sorted([*(o.hash for o in ORDERS), *(c.hash for c in CANCELS)])
    assert not truncated
    assert wire.decode_hashes(wire.encode_hashes(hashes, False)) == (hashes, False)
    assert wire.decode_fetch_request(wire.encode_fetch_request(hashes)) == hashes
    with pytest.raises(WireError):
        wire.decode_hashes_request(wire.encode_hashes_request([1]) + b"\x01")
    with pytest.raises(WireError):
        wire.decode_hashes_request(b"\x12\x01\x00\x02\x05\x05")  # a bucket twice
    with pytest.raises(WireError):
        wire.decode_hashes(b"\x13\x01\x02" + struct.pack(">I", 0))  # flag not 0/1


def test_index_digests_track_changes_per_bucket() -> None:
    a = OrderSetIndex(ORDERS, CANCELS)
    b = OrderSetIndex(ORDERS[:4], CANCELS)
    diff = wire.differing_buckets(a.summary(), b.summary())
    assert diff == [ORDERS[4].hash[0]]
    b.add_order(ORDERS[4])
    assert a.summary() == b.summary()
    b.remove(CANCELS[0].hash)
    assert wire.differing_buckets(a.summary(), b.summary()) == [CANCELS[0].hash[0]]
    assert CANCELS[0].hash not in b and ORDERS[0].hash in b
    assert a.items([ORDERS[0].hash, CANCELS[1].hash, bytes(32)]) == ([ORDERS[0]], [CANCELS[1]])
    # Same count, different members: the digest (keccak of the sorted hashes) tells them apart.
    by_bucket: dict[int, object] = {}
    salt = 7_000
    while True:  # two orders in one bucket (a birthday search over ~20 salts)
        o = make_order(salt)
        if o.hash[0] in by_bucket:
            break
        by_bucket[o.hash[0]] = o
        salt += 1
    c, d = OrderSetIndex([o]), OrderSetIndex([by_bucket[o.hash[0]]])  # type: ignore[list-item]
    assert [n for n, _ in c.summary()] == [n for n, _ in d.summary()]
    assert wire.differing_buckets(c.summary(), d.summary()) == [o.hash[0]]


def test_hashes_are_capped() -> None:
    index = OrderSetIndex(make_orders(40))
    hashes, truncated = index.hashes(range(256), limit=10)
    assert len(hashes) == 10 and truncated


def test_address_in_orders_is_checksummed() -> None:
    out = wire.decode_orders(wire.encode_orders(ORDERS[:1]), DOMAIN)[0]
    assert out.order.trader == Address(ORDERS[0].order.trader)
