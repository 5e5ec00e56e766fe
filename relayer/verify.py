"""Bulk order verification: EIP-712 signatures checked with relayer.eip712, on one core or on all of them.

A node verifies every order it takes in (API, gossip, sync). One at a time the fast path in relayer.eip712 does ~12k
orders/s per core; state sync and a busy gossip mesh hand over thousands at once, and :class:`VerifyPool` spreads
those over a process pool (signature recovery is CPU-bound and holds the GIL). Small lots are verified in the
calling process, where a round trip to a worker would cost more than the work.

Results come back in input order, one per order: the order's hash (its EIP-712 digest) or the reason it was refused
(``SignatureError.reason``, ``InvalidOrderError`` field), so a caller counts rejections by reason and never raises on
bad input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from relayer.eip712 import Domain, EncodingError, InvalidOrderError, SignatureError, validate_order, verify_order
from relayer.types import Hash32, Order

__all__ = ["Rejected", "VerifyPool", "verify_all"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why one order failed verification: ``reason`` is a stable code (``bad_signature``, ``wrong_signer``,
    ``high_s``, ``bad_v``, ``invalid_<field>``...), ``detail`` says what was wrong."""

    reason: str
    detail: str


def _verify_one(domain: Domain, order: Order, signature: bytes) -> Hash32 | Rejected:
    try:
        validate_order(order)
        return verify_order(domain, order, signature)
    except SignatureError as exc:
        return Rejected(exc.reason, str(exc))
    except InvalidOrderError as exc:
        return Rejected(f"invalid_{exc.reason}", str(exc))
    except EncodingError as exc:
        return Rejected("invalid_encoding", str(exc))


def verify_all(domain: Domain, items: Sequence[tuple[Order, bytes]]) -> list[Hash32 | Rejected]:
    """Verify ``(order, signature)`` pairs in this process."""
    return [_verify_one(domain, order, signature) for order, signature in items]


class VerifyPool:
    """A process pool for bulk verification (``workers`` defaults to every core). Lots smaller than
    ``inline_below`` are verified in the calling process. Use as a context manager, or call :meth:`close`."""

    def __init__(self, workers: int | None = None, *, inline_below: int = 64) -> None:
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        self.inline_below = inline_below
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def verify(self, domain: Domain, items: Sequence[tuple[Order, bytes]]) -> list[Hash32 | Rejected]:
        """Verify ``(order, signature)`` pairs; results in input order."""
        if self.workers == 1 or len(items) < self.inline_below:
            return verify_all(domain, items)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers)
        # a few chunks per worker keep them all busy to the end without paying a round trip per order
        size = max(1, -(-len(items) // (self.workers * 4)))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        out: list[Hash32 | Rejected] = []
        for part in self._pool.map(verify_all, [domain] * len(chunks), chunks):
            out.extend(part)
        return out
