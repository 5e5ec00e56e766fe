"""Bulk order verification, inline and over a process pool: results in input order, rejections with reasons."""

from __future__ import annotations

from dataclasses import replace

from eth_keys import keys

from relayer.eip712 import order_digest, sign_digest
from relayer.matcher.workload import DOMAIN, generate
from relayer.types import Order
from relayer.verify import Rejected, VerifyPool, verify_all

SECRET = b"\x11" * 32
TRADER = keys.PrivateKey(SECRET).public_key.to_checksum_address()


def _signed(n: int) -> list[tuple[Order, bytes]]:
    out = []
    for add in generate(5, n * 2, traders=3, mix=(100, 0, 0)).orders[:n]:
        o = replace(add.order, trader=TRADER)
        out.append((o, sign_digest(SECRET, order_digest(DOMAIN, o))))
    return out


def _spoil(items: list[tuple[Order, bytes]]) -> list[tuple[Order, bytes]]:
    """Every 7th order signed by someone else, every 11th with a flipped s, every 13th with a bad field."""
    out = []
    for i, (o, sig) in enumerate(items):
        if i % 7 == 3:
            sig = sign_digest(b"\x22" * 32, order_digest(DOMAIN, o))
        elif i % 11 == 5:
            sig = sig[:32] + bytes([sig[32] ^ 0x80]) + sig[33:]
        elif i % 13 == 6:
            o = replace(o, amount=0)
        out.append((o, sig))
    return out


def test_inline_results_in_order_with_reasons() -> None:
    items = _spoil(_signed(60))
    results = verify_all(DOMAIN, items)
    for i, ((o, _sig), r) in enumerate(zip(items, results, strict=True)):
        if i % 7 == 3:
            assert isinstance(r, Rejected) and r.reason == "wrong_signer"
        elif i % 11 == 5:
            assert isinstance(r, Rejected)
        elif i % 13 == 6:
            assert isinstance(r, Rejected) and r.reason == "invalid_amount"
        else:
            assert r == order_digest(DOMAIN, o)


def test_pool_gives_exactly_the_inline_results() -> None:
    items = _spoil(_signed(300))
    with VerifyPool(2, inline_below=10) as pool:
        pooled = pool.verify(DOMAIN, items)
        assert pool.verify(DOMAIN, items[:5]) == verify_all(DOMAIN, items[:5])  # small lots stay inline
    assert pooled == verify_all(DOMAIN, items)
    assert sum(isinstance(r, Rejected) for r in pooled) > 50
