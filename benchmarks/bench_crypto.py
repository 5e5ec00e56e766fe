"""secp256k1 signing and recovery throughput (eth-keys on coincurve), the per-order cost of intake."""

from __future__ import annotations

from eth_keys import keys
from eth_keys.backends import get_backend
from eth_utils import keccak

from benchmarks.run import rate


def run() -> dict[str, float | int | str]:
    n = 5_000
    pk = keys.PrivateKey(b"\x01" * 32)
    digests = [keccak(i.to_bytes(8, "big")) for i in range(n)]
    sigs = [pk.sign_msg_hash(d) for d in digests]
    return {
        "backend": type(get_backend()).__name__,
        "iterations": n,
        "sign_per_s": rate(lambda i: pk.sign_msg_hash(digests[i]), n),
        "recover_per_s": rate(lambda i: sigs[i].recover_public_key_from_msg_hash(digests[i]), n),
        "keccak256_per_s": rate(lambda i: keccak(digests[i]), n),
    }
