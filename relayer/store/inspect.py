"""Read-only views of a store for operators (`relayer db ...`): JSON-able records and JSON-lines export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from relayer.store import codec
from relayer.store import keys as k
from relayer.store.db import MAGIC, Store
from relayer.store.records import CODE_STATE, OrderRecord


def jsonable(value: codec.Value) -> Any:
    """A decoded value as JSON data: bytes as 0x-hex."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {key: jsonable(v) for key, v in value.items()}
    return value


def order_json(rec: OrderRecord) -> dict[str, Any]:
    o = rec.signed.order
    return {
        "hash": "0x" + rec.signed.hash.hex(),
        "state": rec.state.value,
        "first_seen_ms": rec.first_seen_ms,
        "updated_block": rec.updated_block,
        "filled": {s.value: a for s, a in rec.filled},
        "signature": "0x" + rec.signed.signature.hex(),
        "order": {
            "trader": o.trader,
            "market": int(o.market),
            "side": o.side.name.lower(),
            "price": o.price,
            "amount": o.amount,
            "salt": int(o.salt),
            "created_at": o.created_at,
            "expiry": o.expiry,
            "flags": int(o.flags),
            "trigger_kind": int(o.trigger_kind),
            "trigger_price": o.trigger_price,
        },
    }


def _key_json(key: bytes) -> dict[str, Any]:
    space = k.Space(key[0]) if key[0] in k.Space._value2member_map_ else None
    out: dict[str, Any] = {
        "space": space.name.lower() if space is not None else f"unknown_{key[0]:02x}",
        "key": "0x" + key.hex(),
    }
    if space in (k.Space.INPUT, k.Space.SNAPSHOT, k.Space.BATCH):
        out["index" if space is not k.Space.BATCH else "seq"] = k.u64_of(key)
    elif space is k.Space.TX:
        out["nonce"] = k.u64_of(key)
    elif space in (k.Space.PROPOSAL, k.Space.VOTE):
        out["seq"], out["round"] = k.seq_round_of(key)
    elif space is k.Space.PEER:
        out["peer_id"] = key[1:].decode("utf-8", "replace")
    return out


def export(store: Store) -> Iterator[dict[str, Any]]:
    """Every record as one JSON object (key fields + decoded value), in key order."""
    for key, value in store.items():
        row = _key_json(key)
        if key == k.META_KEY:
            row["value"] = {"magic": MAGIC.rstrip(b"\x00").decode(), "schema_version": store.schema_version}
        else:
            try:
                decoded = codec.unpack(value)
            except codec.DecodeError as exc:
                row["undecodable"] = str(exc)
                row["raw"] = "0x" + value.hex()
                yield row
                continue
            if isinstance(decoded, dict) and isinstance(decoded.get("state"), int) and decoded["state"] in CODE_STATE:
                decoded["state"] = CODE_STATE[decoded["state"]].value
            row["value"] = jsonable(decoded)
        yield row
