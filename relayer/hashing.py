"""keccak-256, fast: the C implementation of safe-pysha3 (a runtime dependency, ~1 µs a hash), which eth-hash's
default pycryptodome backend (~9 µs a hash through cffi) would otherwise serve. Every order digest, signer
recovery and checksum address at intake goes through here, so it sets how many orders a core can verify."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BACKEND", "keccak"]

keccak: Callable[[bytes], bytes]

try:
    from sha3 import keccak_256 as _keccak_256  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # pragma: no cover - the runtime lock installs it; keep working (slower) without it
    from eth_hash.auto import keccak as _eth_keccak

    keccak = _eth_keccak
    BACKEND = "eth-hash"
else:

    def keccak(data: bytes) -> bytes:
        return _keccak_256(data).digest()  # type: ignore[no-any-return]

    BACKEND = "pysha3"
