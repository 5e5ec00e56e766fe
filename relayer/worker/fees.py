"""EIP-1559 fees: what the node suggests, capped by config, and the bump that replaces a stuck transaction.

Pure integer arithmetic; the worker feeds it the node's ``eth_feeHistory`` answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relayer.chain.rpc import from_quantity

__all__ = ["Fees", "bump", "fees_from_history", "market_fees"]

DEFAULT_TIP_WEI = 1_000_000_000
"""Tip used when the node reports no rewards (empty blocks)."""


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee: int
    tip: int

    def __post_init__(self) -> None:
        if not 0 <= self.tip <= self.max_fee:
            raise ValueError(f"need 0 <= tip <= max fee, got tip {self.tip} and max fee {self.max_fee}")


def _ceil_bps(value: int, bps: int) -> int:
    return -(-value * (10_000 + bps) // 10_000)


def fees_from_history(history: Mapping[str, Any]) -> tuple[int, int]:
    """(next block's base fee, suggested tip) from an ``eth_feeHistory(n, "latest", [50])`` answer.

    The base fee is the last entry of ``baseFeePerGas`` (the block after the newest one); the tip is the lower median
    of the blocks' 50th-percentile rewards, or :data:`DEFAULT_TIP_WEI` when there are none.
    """
    bases = history.get("baseFeePerGas") or []
    if not bases:
        raise ValueError("eth_feeHistory answer without baseFeePerGas")
    base = from_quantity(bases[-1])
    rewards = sorted(from_quantity(r[0]) for r in (history.get("reward") or []) if r)
    tip = rewards[(len(rewards) - 1) // 2] if rewards else DEFAULT_TIP_WEI
    return base, tip


def market_fees(base_fee: int, tip: int, *, max_fee_cap: int, tip_cap: int) -> Fees:
    """Twice the next base fee plus the tip (room for six full blocks of base-fee rise), each capped."""
    tip = min(tip, tip_cap, max_fee_cap)
    max_fee = min(2 * base_fee + tip, max_fee_cap)
    return Fees(max_fee, min(tip, max_fee))


def bump(old: Fees, market: Fees, *, bump_bps: int, max_fee_cap: int, tip_cap: int) -> Fees | None:
    """The fees of a replacement: both the max fee and the tip at least ``bump_bps`` above the old ones (nodes
    refuse a replacement below +10% on both), and at least the market's; None when the caps do not allow that."""
    need_fee = _ceil_bps(old.max_fee, bump_bps)
    need_tip = _ceil_bps(old.tip, bump_bps)
    max_fee = min(max(need_fee, market.max_fee), max_fee_cap)
    tip = min(max(need_tip, market.tip), tip_cap, max_fee)
    if max_fee < need_fee or tip < need_tip:
        return None
    return Fees(max_fee, tip)
