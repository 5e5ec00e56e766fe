"""The matcher's fast path of relayer.margin: one side of a fill on plain ints, no frozen objects per fill.

:func:`trade` is ``relayer.margin.apply_trade`` followed by ``is_healthy_after_fill`` (any ``MarginError`` counting
as a failure, as ``build_batch`` and the contract treat it), restated on an account held as ``(balance, positions)``
with ``positions`` a dict ``market -> (size, cost, funding_index)`` of the open positions only. relayer.margin stays
the oracle: tests/matcher/test_fastmargin.py compares the two on random inputs (funding, several markets, flips,
closes, bounds). :func:`load` and :func:`to_account` convert from and to :class:`relayer.margin.Account`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from relayer.margin import (
    INT64_MAX,
    INT64_MIN,
    INT128_MAX,
    INT128_MIN,
    MAX_MARKETS,
    PPM,
    SIZE_ONE,
    Account,
    MarketParams,
    Position,
)

__all__ = ["MarketRow", "PositionTuple", "Rows", "load", "market_row", "to_account", "trade"]

PositionTuple = tuple[int, int, int]
"""``(size, cost, funding_index)`` of an open position (size != 0)."""
MarketRow = tuple[int, int, int, int]
"""``(oracle_price, funding_index, imr, mmr)`` of a market: what equity and the requirements read."""

_FEE_DIV = SIZE_ONE * PPM


def market_row(params: MarketParams) -> MarketRow:
    return (params.oracle_price, params.funding_index, params.imr, params.mmr)


class Rows(dict[int, "MarketRow | None"]):
    """Market rows computed on first use from a market map (None: an unknown market)."""

    __slots__ = ("markets",)

    def __init__(self, markets: Mapping[int, MarketParams]) -> None:
        super().__init__()
        self.markets = markets

    def __missing__(self, market: int) -> MarketRow | None:
        params = self.markets.get(market)
        row = self[market] = None if params is None else market_row(params)
        return row


def load(account: Account | None) -> tuple[int, dict[int, PositionTuple]]:
    """An account as ``(balance, positions)``; an absent account is empty."""
    if account is None:
        return 0, {}
    return account.balance, {m: (p.size, p.cost, p.funding_index) for m, p in account.positions.items()}


def _new_position(size: int, cost: int, funding_index: int) -> Position:
    position = object.__new__(Position)
    object.__setattr__(position, "size", size)
    object.__setattr__(position, "cost", cost)
    object.__setattr__(position, "funding_index", funding_index)
    return position


def to_account(balance: int, positions: Mapping[int, PositionTuple]) -> Account:
    """The :class:`Account` of a simulated ``(balance, positions)``, as ``Account(balance, {m: Position(...)})``
    builds it (open positions in ascending market id, read-only) but without re-running the bounds checks: every
    value comes from a checked ``Account`` or passed the same checks in :func:`trade` (tests compare the two)."""
    account = object.__new__(Account)
    object.__setattr__(account, "balance", balance)
    held = {m: _new_position(*positions[m]) for m in sorted(positions)}
    object.__setattr__(account, "positions", MappingProxyType(held))
    return account


def trade(
    balance: int,
    positions: dict[int, PositionTuple],
    rows: Mapping[int, MarketRow | None],
    market: int,
    funding_index: int,
    q: int,
    price: int,
    fee_rate: int,
) -> tuple[int, PositionTuple] | None:
    """One trader's side of a fill of ``q`` (+ buy, - sell) at ``price`` in ``market``: funding settled at
    ``funding_index``, the fill applied, the fee at ``fee_rate`` charged, then the health rule after a fill. Returns
    ``(new balance, new position in market)`` (size 0 means flat: drop it), or None where ``apply_trade`` /
    ``is_healthy_after_fill`` would raise ``MarginError`` or find the account unhealthy. ``rows`` gives each market's
    :data:`MarketRow` (None: unknown market; a :class:`Rows` computes them on first use) and must cover every
    market of ``positions``; ``positions`` is not modified."""
    if not INT64_MIN <= funding_index <= INT64_MAX or not 0 <= market < MAX_MARKETS or price <= 0 or fee_rate < 0:
        return None
    old = positions.get(market)
    if old is None:
        s = c = 0
        owed = 0
    else:
        s, c, f = old
        owed = -((-(s * (funding_index - f))) // SIZE_ONE)  # ceil_div(size * (index - f), SIZE_ONE)
    # apply_fill
    if s == 0 or (s > 0) == (q > 0):
        size, cost = s + q, c + q * price
    else:
        abs_q, abs_s = (q if q > 0 else -q), (s if s > 0 else -s)
        if abs_q <= abs_s:
            num = c * abs_q
            released = num // abs_s if num >= 0 else -((-num) // abs_s)  # sdiv
            size, cost = s + q, c - released
        else:
            size = q + s
            cost = size * price
    if not INT64_MIN <= size <= INT64_MAX or not INT128_MIN <= cost <= INT128_MAX or (size == 0 and cost != 0):
        return None
    abs_q = q if q >= 0 else -q
    charged = (abs_q * price * fee_rate + _FEE_DIV - 1) // _FEE_DIV  # ceil_div of a non-negative value
    balance = balance - owed * SIZE_ONE - q * price - charged * SIZE_ONE
    if not INT128_MIN <= balance <= INT128_MAX:
        return None
    # is_healthy_after_fill: maintenance if the position only shrank, else initial
    abs_size = size if size >= 0 else -size
    abs_before = s if s >= 0 else -s
    shrank = s != 0 and abs_size < abs_before and (size == 0 or (size > 0) == (s > 0))
    equity = balance
    need = 0
    for m, (ps, _pc, pf) in positions.items():
        if m == market:
            continue
        row = rows[m]
        if row is None:
            return None
        oracle, index, imr, mmr = row
        equity += ps * oracle + ((-(ps * (index - pf))) // SIZE_ONE) * SIZE_ONE
        need += -((-((ps if ps >= 0 else -ps) * oracle * (mmr if shrank else imr))) // PPM)
    if size != 0:
        row = rows[market]
        if row is None:
            return None
        oracle, index, imr, mmr = row
        equity += size * oracle + ((-(size * (index - funding_index))) // SIZE_ONE) * SIZE_ONE
        need += -((-(abs_size * oracle * (mmr if shrank else imr))) // PPM)
    if equity < need:
        return None
    return balance, (size, cost, funding_index)
