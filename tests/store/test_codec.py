"""The value encoding and the key schema: round trips, canonical bytes, numeric key order (property tests)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayer.store import codec
from relayer.store import keys as k

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: codec.Value) -> None:
    assert codec.unpack(codec.pack(value)) == value


@given(values, values)
def test_canonical_equal_values_equal_bytes(a: codec.Value, b: codec.Value) -> None:
    # bool is not int in this encoding, so compare with types
    same = codec.unpack(codec.pack(a)) == codec.unpack(codec.pack(b)) and repr(a) == repr(b)
    if same:
        assert codec.pack(a) == codec.pack(b)
    if codec.pack(a) == codec.pack(b):
        assert repr(codec.unpack(codec.pack(a))) == repr(codec.unpack(codec.pack(b)))


@given(values, st.integers(min_value=0, max_value=200))
def test_truncated_or_extended_bytes_are_errors(value: codec.Value, cut: int) -> None:
    data = codec.pack(value)
    if cut < len(data):
        with pytest.raises(codec.DecodeError):
            codec.unpack(data[:cut])
    with pytest.raises(codec.DecodeError):
        codec.unpack(data + b"\x00")


def test_non_canonical_forms_are_rejected() -> None:
    with pytest.raises(codec.DecodeError):
        codec.unpack(b"\x03\x00\x00\x00\x02\x00\x01")  # leading zero byte
    with pytest.raises(codec.DecodeError):
        codec.unpack(b"\x04\x00\x00\x00\x00")  # negative zero
    unsorted = b"\x08\x00\x00\x00\x02" + codec.pack("b") + codec.pack(1) + codec.pack("a") + codec.pack(2)
    with pytest.raises(codec.DecodeError):
        codec.unpack(unsorted)
    with pytest.raises(codec.DecodeError):
        codec.unpack(b"\x09")
    with pytest.raises(TypeError):
        codec.pack(1.5)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_u64_keys_sort_numerically(a: int, b: int) -> None:
    for make in (k.input_key, k.snapshot_key, k.batch_key, k.tx_key):
        assert (make(a) < make(b)) == (a < b)
        assert k.u64_of(make(a)) == a


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_seq_round_keys_sort_by_seq_then_round(s1: int, r1: int, s2: int, r2: int) -> None:
    for make in (k.proposal_key, k.vote_key):
        assert (make(s1, r1) < make(s2, r2)) == ((s1, r1) < (s2, r2))
        assert k.seq_round_of(make(s1, r1)) == (s1, r1)


def test_every_keyspace_but_meta_has_exactly_one_writer() -> None:
    assert set(k.OWNER) == set(k.Space) - {k.Space.META}
    owned = [s for c in k.Component for s in k.spaces_of(c)]
    assert len(owned) == len(set(owned)) == len(k.OWNER)
    with pytest.raises(ValueError, match="32-byte"):
        k.order_key(b"short")
