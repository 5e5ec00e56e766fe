"""Value types of the matcher: chain state in, limits, batches and skip reasons out (docs/matcher.md).

Pure data: integers in the units of docs/units.md, no I/O, no wall clock. Everything a batch depends on is here or in
the :class:`~relayer.matcher.book.Book`, so two nodes holding the same values build byte-identical batches.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from relayer.margin import Account, MarketParams
from relayer.types import Address, Fill, Hash32, Salt

__all__ = [
    "BATCH_BASE_GAS",
    "FILL_GAS",
    "MAX_BATCH_FILLS",
    "Batch",
    "ChainState",
    "Limits",
    "SkipReason",
    "SkippedOrder",
    "StpMode",
]

FILL_GAS = 90_000
"""Gas estimate per fill: docs/contracts.md "Gas" measured 88,511 per fill at 10 fills and 77,750 at 50 (common
case); 90,000 is a round upper figure of the common case. Fresh traders cost more (151,473 at 50 fills), which the
budget's headroom must absorb."""
BATCH_BASE_GAS = 130_000
"""Gas estimate of a batch with no fills (transaction, quorum signatures, header): 213,884 at one fill minus
:data:`FILL_GAS`, rounded up."""
MAX_BATCH_FILLS = 32_767
"""A batch's order list is indexed by ``uint16``; two orders per fill at most keep it within 65,535 entries."""


class SkipReason(enum.IntEnum):
    """Why an order was set aside or dropped. Values are the contract's skip codes (docs/contracts.md) so a
    proposer's reason and a settlement's reason compare directly."""

    SELF_TRADE = 2
    MARKET_MISMATCH = 3  # unknown market or no oracle price
    EXPIRED = 4  # expiry <= batch deadline
    CANCELLED = 5  # on chain, by a signed cancel, or below cancelUpTo
    POST_ONLY_TAKER = 8
    TRIGGER = 9
    BOUNDS = 10
    OVERFILL = 11  # nothing remains (filled on chain)
    FOK = 12
    REDUCE_ONLY = 13
    MARGIN_MAKER = 14
    MARGIN_TAKER = 15
    POSITION_LIMIT = 16


class StpMode(enum.IntEnum):
    """Self-trade prevention when the two best crossing orders belong to one trader."""

    CANCEL_MAKER = 0
    CANCEL_TAKER = 1
    CANCEL_BOTH = 2


@dataclass(frozen=True, slots=True)
class SkippedOrder:
    hash: Hash32
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class Limits:
    """What bounds one batch. ``deadline_delta`` seconds after the head time is the batch deadline; at most
    ``max_fills`` fills and ``BATCH_BASE_GAS + FILL_GAS * fills <= gas_budget``."""

    deadline_delta: int = 30
    max_fills: int = 200
    gas_budget: int = 30_000_000
    stp: StpMode = StpMode.CANCEL_MAKER

    def __post_init__(self) -> None:
        if not 0 <= self.deadline_delta < 2**32:
            raise ValueError(f"deadline_delta {self.deadline_delta} is not a uint32")
        if not 0 <= self.max_fills <= MAX_BATCH_FILLS:
            raise ValueError(f"max_fills {self.max_fills} is not in 0 .. {MAX_BATCH_FILLS}")
        if self.gas_budget < 0:
            raise ValueError("gas_budget must be >= 0")

    @property
    def fill_cap(self) -> int:
        """The number of fills the batch may hold under both bounds."""
        by_gas = max(0, (self.gas_budget - BATCH_BASE_GAS) // FILL_GAS)
        return min(self.max_fills, by_gas)


@dataclass(frozen=True, slots=True)
class ChainState:
    """The confirmed chain state the matcher reads (as the watcher rebuilds it from events).

    ``filled`` is the fill counter per (trader, salt) from included batches; ``cancelled`` the (trader, salt) pairs
    cancelled on chain; ``cancelled_up_to`` each trader's ``cancelUpTo`` salt. Accounts absent from ``accounts`` are
    empty (balance 0, no positions).
    """

    markets: Mapping[int, MarketParams]
    accounts: Mapping[Address, Account] = field(default_factory=dict)
    filled: Mapping[tuple[Address, Salt], int] = field(default_factory=dict)
    cancelled: frozenset[tuple[Address, Salt]] = frozenset()
    cancelled_up_to: Mapping[Address, int] = field(default_factory=dict)

    def account(self, trader: Address) -> Account:
        account = self.accounts.get(trader)
        return Account(0) if account is None else account

    def is_cancelled(self, trader: Address, salt: Salt) -> bool:
        return (trader, salt) in self.cancelled or salt < self.cancelled_up_to.get(trader, 0)


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch as :func:`~relayer.matcher.batch.build_batch` builds it.

    ``orders`` is the batch's order list (hashes, in order of first use) and ``fills`` index it (maker, taker,
    amount; the price is the maker's). ``skipped`` lists the crossing orders set aside for this batch with the
    reason (they stay in the book); ``cancelled`` the orders self-trade prevention cancels; ``dead`` the orders
    that can never fill again (expired at the deadline, cancelled, filled, out of bounds): the book drops both
    when the batch is retired (:class:`~relayer.matcher.book.Retire`). ``truncated`` is true when the fill cap
    stopped matching while orders still crossed.

    ``filled_delta`` (new absolute fill counters of the (trader, salt) pairs the fills touch) and
    ``accounts_delta`` (the touched accounts after every fill) are the proposer's simulation of what the contract
    will do, on ``base`` (the chain state the batch was built on); :attr:`post_state` merges them. None of the three
    is part of :meth:`encode` or of equality.
    """

    deadline: int
    orders: tuple[Hash32, ...]
    fills: tuple[Fill, ...]
    skipped: tuple[SkippedOrder, ...]
    cancelled: tuple[SkippedOrder, ...]
    dead: tuple[SkippedOrder, ...]
    truncated: bool
    base: ChainState = field(compare=False, repr=False)
    filled_delta: Mapping[tuple[Address, Salt], int] = field(compare=False, repr=False)
    accounts_delta: Mapping[Address, Account] = field(compare=False, repr=False)

    @property
    def post_state(self) -> ChainState:
        """The chain state after the contract applies every fill as simulated (a copy; O(size of the state)).

        A node's watcher applies ``filled_delta`` and ``accounts_delta`` to its own maps instead."""
        filled = dict(self.base.filled)
        filled.update(self.filled_delta)
        accounts = dict(self.base.accounts)
        accounts.update(self.accounts_delta)
        return replace(self.base, filled=filled, accounts=accounts)

    @property
    def gas_estimate(self) -> int:
        return BATCH_BASE_GAS + FILL_GAS * len(self.fills)

    def fill_hashes(self) -> list[tuple[Hash32, Hash32, int]]:
        """The fills as (maker hash, taker hash, amount)."""
        return [(self.orders[f.maker], self.orders[f.taker], f.amount) for f in self.fills]

    def encode(self) -> bytes:
        """Canonical bytes: equal batches encode equally, byte for byte (big-endian fixed-width integers)."""
        parts = [b"MB1", self.deadline.to_bytes(4, "big"), len(self.orders).to_bytes(2, "big"), *self.orders]
        parts.append(len(self.fills).to_bytes(2, "big"))
        for f in self.fills:
            parts.append(f.maker.to_bytes(2, "big") + f.taker.to_bytes(2, "big") + f.amount.to_bytes(8, "big"))
        for group in (self.skipped, self.cancelled, self.dead):
            parts.append(len(group).to_bytes(4, "big"))
            for s in group:
                parts.append(s.hash + bytes((s.reason,)))
        parts.append(b"\x01" if self.truncated else b"\x00")
        return b"".join(parts)
