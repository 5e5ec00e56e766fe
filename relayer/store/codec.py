"""The value encoding: a small, canonical, length-prefixed tagged format (documented in docs/store.md).

One value is a tag byte followed by its body:

====  =========  ===================================================================
tag   type       body
====  =========  ===================================================================
0x00  None       (empty)
0x01  False      (empty)
0x02  True       (empty)
0x03  int >= 0   u32 length + big-endian magnitude (minimal: no leading zero bytes)
0x04  int < 0    u32 length + big-endian magnitude of -value
0x05  bytes      u32 length + raw bytes
0x06  str        u32 length + UTF-8
0x07  list       u32 count + that many values
0x08  map        u32 count + that many (str key, value) pairs, keys sorted and unique
====  =========  ===================================================================

Encoding is canonical (one byte string per value: minimal ints, sorted map keys), so equal values give equal
bytes and a hash over stored bytes is a hash over the state. Tuples encode as lists. No floats: every figure is an
integer (docs/units.md).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TypeAlias

Value: TypeAlias = "bool | int | bytes | str | list[Value] | dict[str, Value] | None"
"""A decoded value; encoding also accepts tuples (as lists) and any Mapping[str, ...] (as maps)."""

_U32 = struct.Struct(">I")
_NONE, _FALSE, _TRUE, _POS, _NEG, _BYTES, _STR, _LIST, _MAP = range(9)


class DecodeError(ValueError):
    """The bytes are not a well-formed, canonical encoding."""


def pack(value: object) -> bytes:
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(v: object, out: bytearray) -> None:
    if v is None:
        out.append(_NONE)
    elif v is True:
        out.append(_TRUE)
    elif v is False:
        out.append(_FALSE)
    elif isinstance(v, int):
        mag = abs(v)
        raw = mag.to_bytes((mag.bit_length() + 7) // 8, "big")
        out.append(_POS if v >= 0 else _NEG)
        out += _U32.pack(len(raw))
        out += raw
    elif isinstance(v, bytes | bytearray | memoryview):
        b = bytes(v)
        out.append(_BYTES)
        out += _U32.pack(len(b))
        out += b
    elif isinstance(v, str):
        s = v.encode("utf-8")
        out.append(_STR)
        out += _U32.pack(len(s))
        out += s
    elif isinstance(v, Mapping):
        keys = sorted(v)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError("map keys must be str")
        out.append(_MAP)
        out += _U32.pack(len(keys))
        for k in keys:
            _pack(k, out)
            _pack(v[k], out)
    elif isinstance(v, Sequence):
        out.append(_LIST)
        out += _U32.pack(len(v))
        for item in v:
            _pack(item, out)
    else:
        raise TypeError(f"cannot encode {type(v).__name__}")


def unpack(data: bytes) -> Value:
    value, end = _unpack(memoryview(data), 0)
    if end != len(data):
        raise DecodeError(f"{len(data) - end} trailing byte(s)")
    return value


def _length(buf: memoryview, pos: int) -> tuple[int, int]:
    if pos + 4 > len(buf):
        raise DecodeError("truncated length")
    (n,) = _U32.unpack_from(buf, pos)
    return n, pos + 4


def _body(buf: memoryview, pos: int) -> tuple[bytes, int]:
    n, pos = _length(buf, pos)
    if pos + n > len(buf):
        raise DecodeError("truncated body")
    return bytes(buf[pos : pos + n]), pos + n


def _unpack(buf: memoryview, pos: int) -> tuple[Value, int]:
    if pos >= len(buf):
        raise DecodeError("truncated value")
    tag = buf[pos]
    pos += 1
    if tag == _NONE:
        return None, pos
    if tag in (_FALSE, _TRUE):
        return tag == _TRUE, pos
    if tag in (_POS, _NEG):
        raw, pos = _body(buf, pos)
        if raw[:1] == b"\x00" or (tag == _NEG and not raw):
            raise DecodeError("non-canonical integer")
        mag = int.from_bytes(raw, "big")
        return (mag if tag == _POS else -mag), pos
    if tag == _BYTES:
        return _body(buf, pos)
    if tag == _STR:
        raw, pos = _body(buf, pos)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError as exc:
            raise DecodeError(f"bad UTF-8: {exc}") from None
    if tag == _LIST:
        n, pos = _length(buf, pos)
        items: list[Value] = []
        for _ in range(n):
            item, pos = _unpack(buf, pos)
            items.append(item)
        return items, pos
    if tag == _MAP:
        n, pos = _length(buf, pos)
        out: dict[str, Value] = {}
        last: str | None = None
        for _ in range(n):
            k, pos = _unpack(buf, pos)
            if not isinstance(k, str) or (last is not None and k <= last):
                raise DecodeError("map keys must be str, sorted and unique")
            last = k
            out[k], pos = _unpack(buf, pos)
        return out, pos
    raise DecodeError(f"unknown tag 0x{tag:02x}")
