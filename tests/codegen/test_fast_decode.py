"""The word-by-word decoder of static tuples gives exactly eth-abi's results, and refuses what eth-abi refuses."""

from __future__ import annotations

import pytest
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from hypothesis import given, settings
from hypothesis import strategies as st

from bindings import exchange as ex
from relayer.codegen import AbiDecodeError, decode

TYPES = ("uint8", "uint64", "uint256", "int64", "int128", "int256", "address", "bool", "bytes32", "bytes4")


@settings(max_examples=300, deadline=None)
@given(kinds=st.lists(st.sampled_from(TYPES), min_size=1, max_size=6), words=st.data())
def test_random_words_decode_like_eth_abi(kinds: list[str], words: st.DataObject) -> None:
    """Random 32-byte words (mostly malformed for narrow types, some valid): the same value or both refuse."""
    raw = b""
    for _kind in kinds:
        mode = words.draw(st.sampled_from(("random", "small", "negative")))
        if mode == "random":
            raw += words.draw(st.binary(min_size=32, max_size=32))
        elif mode == "small":
            raw += words.draw(st.integers(0, 2**8 - 1)).to_bytes(32, "big")
        else:
            raw += (2**256 - words.draw(st.integers(1, 2**63))).to_bytes(32, "big")
    try:
        expected = abi_decode(kinds, raw)
    except DecodingError:
        with pytest.raises(AbiDecodeError):
            decode(kinds, raw)
        return
    assert decode(kinds, raw) == expected


def test_valid_values_round_trip() -> None:
    kinds = ["uint64", "int64", "address", "bool", "bytes32", "int256"]
    values = [2**64 - 1, -(2**63), "0x5FbDB2315678afecb367f032d93F642f64180aa3", True, b"\x01" * 32, -1]
    got = decode(kinds, abi_encode(kinds, values))
    assert got == abi_decode(kinds, abi_encode(kinds, values))
    assert got[2] == values[2].lower() and got[:2] == tuple(values[:2]) and got[3:] == tuple(values[3:])  # type: ignore[union-attr]


def test_wrong_length_and_dynamic_types_go_to_eth_abi() -> None:
    with pytest.raises(AbiDecodeError):
        decode(["uint64", "uint64"], bytes(63))
    assert decode(["string"], abi_encode(["string"], ["hi"])) == ("hi",)


def test_every_exchange_event_still_decodes_its_own_encoding() -> None:
    """Every event's data types pass through the fast path or eth-abi consistently (round trip with eth-abi)."""
    seen = 0
    for name in dir(ex):
        cls = getattr(ex, name)
        types = getattr(cls, "DATA_TYPES", None)
        if not name.endswith("Event") or not types:
            continue
        zero = abi_decode(list(types), abi_encode(list(types), [_zero(t) for t in types]))
        assert decode(list(types), abi_encode(list(types), list(zero))) == zero
        seen += 1
    assert seen >= 10


def _zero(kind: str) -> object:
    if kind == "address":
        return "0x" + "00" * 20
    if kind == "bool":
        return False
    if kind.startswith("bytes") and kind != "bytes":
        return bytes(int(kind[5:]))
    if kind in ("bytes", "string"):
        return b"" if kind == "bytes" else ""
    if kind.endswith("[]"):
        return []
    if kind.startswith("("):
        return tuple(_zero(p) for p in kind[1:-1].split(","))
    return 0
