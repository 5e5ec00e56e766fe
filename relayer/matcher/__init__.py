"""The pure matching core (docs/matcher.md): a per-market book in canonical priority and build_batch.

No I/O, no wall clock, integers only; equal inputs give byte-identical batches and equal book hashes.
"""

from __future__ import annotations

from relayer.matcher.batch import build_batch, dead_reason, market_order_price, remaining
from relayer.matcher.book import (
    AddOrder,
    Book,
    Cancel,
    CancelUpTo,
    Event,
    OracleUpdate,
    Output,
    Retire,
    trigger_holds,
)
from relayer.matcher.model import (
    BATCH_BASE_GAS,
    FILL_GAS,
    MAX_BATCH_FILLS,
    Batch,
    ChainState,
    Limits,
    SkippedOrder,
    SkipReason,
    StpMode,
)

__all__ = [
    "BATCH_BASE_GAS",
    "FILL_GAS",
    "MAX_BATCH_FILLS",
    "AddOrder",
    "Batch",
    "Book",
    "Cancel",
    "CancelUpTo",
    "ChainState",
    "Event",
    "Limits",
    "OracleUpdate",
    "Output",
    "Retire",
    "SkipReason",
    "SkippedOrder",
    "StpMode",
    "build_batch",
    "dead_reason",
    "market_order_price",
    "remaining",
    "trigger_holds",
]
