"""secp256k1 signing and recovery throughput (eth-keys on coincurve), the per-order cost of intake."""

from __future__ import annotations

import time
from collections.abc import Callable

from eth_keys import keys
from eth_keys.backends import get_backend
from eth_utils import keccak


def _rate(fn: Callable[[int], object], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def run() -> dict[str, float | int | str]:
    n = 5_000
    pk = keys.PrivateKey(b"\x01" * 32)
    digests = [keccak(i.to_bytes(8, "big")) for i in range(n)]
    sigs = [pk.sign_msg_hash(d) for d in digests]
    return {
        "backend": type(get_backend()).__name__,
        "iterations": n,
        "sign_per_s": _rate(lambda i: pk.sign_msg_hash(digests[i]), n),
        "recover_per_s": _rate(lambda i: sigs[i].recover_public_key_from_msg_hash(digests[i]), n),
        "keccak256_per_s": _rate(lambda i: keccak(digests[i]), n),
    }
