"""Schema migrations: ``MIGRATIONS[n]`` upgrades a store from version n to n+1 inside one atomic, synced batch.

A migration sees the raw DB and returns the writes (key -> value, or None to delete) that bring it to version n+1;
the store adds the new meta record to the same batch, so a crash mid-migration leaves the old version intact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from relayer.store import codec
from relayer.store.keys import Space
from relayer.store.records import STATE_CODE
from relayer.types import OrderState

Migration = Callable[[Iterable[tuple[bytes, bytes]]], dict[bytes, bytes | None]]


def _v1_to_v2(items: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes | None]:
    """v1 stored an order's state and the keys of its fill amounts as state names ("accepted"); v2 as codes."""
    writes: dict[bytes, bytes | None] = {}
    for key, value in items:
        if key[:1] != bytes([Space.ORDER]):
            continue
        m = codec.unpack(value)
        if not isinstance(m, dict):
            raise codec.DecodeError("not a v1 order record")
        state, old_filled = m.get("state"), m.get("filled")
        if not isinstance(state, str) or not isinstance(old_filled, list):
            raise codec.DecodeError("not a v1 order record")
        m["state"] = STATE_CODE[OrderState(state)]
        filled: list[codec.Value] = []
        for pair in old_filled:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str):
                raise codec.DecodeError("not a v1 fill amount")
            filled.append([STATE_CODE[OrderState(pair[0])], pair[1]])
        m["filled"] = sorted(filled, key=lambda p: p[0] if isinstance(p, list) and isinstance(p[0], int) else 0)
        writes[key] = codec.pack(m)
    return writes


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}
