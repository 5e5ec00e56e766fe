"""The contract's margin, fee, funding and liquidation math, bit for bit (docs/units.md "Accounts and positions").

Pure functions over plain integers in the units of docs/units.md: no floats, no I/O. Every division is the contract's:
:func:`sdiv` (Solidity's signed ``/``, truncating toward zero), :func:`ceil_div` and :func:`floor_div`. Python's ``//``
floors, so it appears below only through those helpers.

The model is a QUOTE BALANCE (like dYdX v4): an account's ``balance`` is kept *scaled*, in collateral atoms x
``SIZE_ONE``, and every fill moves ``amount * price`` (exact in those units) from the buyer's balance to the seller's.
A fill creates and destroys nothing, so the accounting identity (:func:`accounting_identity_holds`) holds exactly at
every step. Fees, funding, penalties, deposits and withdrawals are whole atoms (x ``SIZE_ONE``), so the sum of all
balances is always a whole number of atoms even where one account holds a fraction of one. A position's ``cost`` is
only for display (average entry price, realized PnL): it plays no part in equity. Equity and the margin
requirements are scaled like balances. Rounding favours the exchange: fees, funding debits, requirements and
penalties round up.

The frozen :class:`Position`, :class:`Account` and :class:`MarketParams` hold plain ints and check the integer widths
the contract stores them in (:class:`BoundsError`), so a property test can feed the same ints to this module and to the
contract and compare the results field by field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from relayer.errors import RelayerError

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "INT128_MAX",
    "INT128_MIN",
    "INT192_MAX",
    "INT192_MIN",
    "INT256_MAX",
    "INT256_MIN",
    "MAX_DEPOSIT",
    "MAX_FEE_RATE",
    "MAX_LIQ_PENALTY",
    "MAX_MARKETS",
    "MAX_MARKET_ORDER_SIZE",
    "MAX_ORDER_SIZE",
    "MAX_POSITION",
    "MAX_PRICE",
    "PPM",
    "SIZE_ONE",
    "Account",
    "BoundsError",
    "Liquidation",
    "MarginError",
    "MarketParams",
    "Position",
    "Trade",
    "accounting_identity_holds",
    "apply_fill",
    "apply_trade",
    "can_withdraw",
    "ceil_div",
    "collateral_atoms",
    "equity",
    "fee",
    "floor_div",
    "funding_owed",
    "initial_requirement",
    "is_healthy_after_fill",
    "liquidate",
    "liquidation_penalty",
    "liquidation_price",
    "maintenance_requirement",
    "only_shrank",
    "sdiv",
    "settle_funding",
    "unrealized_pnl",
    "within_position_limit",
]

SIZE_ONE = 10**8
"""Base atoms per whole base unit, for every market; also the scale of balances, equity and requirements."""
PPM = 10**6
"""Parts per million: 100% for margin ratios, fee rates and penalties."""
MAX_MARKETS = 64
"""Market ids are ``0 .. 63`` (an account's open markets are a 64-bit mask)."""

MAX_PRICE = 2**62
"""Upper bound of every ``market.maxPrice`` (order, trigger and oracle prices are ``1 .. maxPrice``)."""
MAX_ORDER_SIZE = 2**63 - 1
"""Upper bound of an order's amount as docs/units.md states it (a ``uint64`` that stays below ``2**63``)."""
MAX_MARKET_ORDER_SIZE = 2**62
"""Upper bound of ``market.maxOrderSize`` that the contract's ``_checkParams`` accepts (``MAX_SIZE_BOUND``)."""
MAX_POSITION = 2**62
"""Upper bound of every ``market.maxPosition`` (``|position size| <= maxPosition``)."""
MAX_FEE_RATE = 100_000
"""Fee rates are at most 10% (ppm)."""
MAX_LIQ_PENALTY = 100_000
"""The liquidation penalty is at most 10% of the liquidated notional (ppm)."""
MAX_DEPOSIT = 2**96
"""The largest single deposit or withdrawal, in atoms (the contract's ``AmountTooLarge``)."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT128_MIN, INT128_MAX = -(2**127), 2**127 - 1
INT192_MIN, INT192_MAX = -(2**191), 2**191 - 1
INT256_MIN, INT256_MAX = -(2**255), 2**255 - 1


class MarginError(RelayerError):
    """A margin operation the contract would refuse. ``reason`` is a short code naming what failed."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class BoundsError(MarginError):
    """A value left the integer type the contract stores it in (``reason``: ``size_int64``, ``cost_int128``,
    ``funding_index_int64``, ``balance_int128``)."""


def _check_range(value: int, low: int, high: int, reason: str) -> None:
    if not low <= value <= high:
        raise BoundsError(reason, f"{value} is outside {low} .. {high}")


# --- division ----------------------------------------------------------------------------------------------------


def sdiv(a: int, b: int) -> int:
    """Solidity's signed ``a / b``: the quotient truncated toward zero (``-7 / 2 == -3``, where Python's ``//`` gives
    ``-4``). Division by zero raises ZeroDivisionError (the contract panics)."""
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def ceil_div(x: int, d: int) -> int:
    """``ceilDiv(x, d)`` for ``d > 0``: ``x / d`` when ``x <= 0``, ``(x + d - 1) / d`` when ``x > 0`` (toward +inf)."""
    if d <= 0:
        raise ValueError(f"ceil_div needs a positive divisor, got {d}")
    return sdiv(x, d) if x <= 0 else (x + d - 1) // d


def floor_div(x: int, d: int) -> int:
    """``floorDiv(x, d)`` for ``d > 0``: rounds toward -inf (Python's ``//`` does exactly this for ``d > 0``)."""
    if d <= 0:
        raise ValueError(f"floor_div needs a positive divisor, got {d}")
    return x // d


def collateral_atoms(balance: int) -> int:
    """A scaled balance (or equity) floored to whole collateral atoms, for display: ``floorDiv(balance, SIZE_ONE)``.

    Only display rounds: the contract never floors a balance (a liquidated account may keep sub-atom dust)."""
    return floor_div(balance, SIZE_ONE)


# --- state -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """A position in one market: ``size`` (int64 base atoms, + long / - short), ``cost`` (int128, sum of signed
    ``amount * price``, reduced proportionally when the position shrinks; display only) and ``funding_index`` (int64,
    the market's index when funding was last settled). A flat position has cost 0."""

    size: int
    cost: int
    funding_index: int

    def __post_init__(self) -> None:
        _check_range(self.size, INT64_MIN, INT64_MAX, "size_int64")
        _check_range(self.cost, INT128_MIN, INT128_MAX, "cost_int128")
        _check_range(self.funding_index, INT64_MIN, INT64_MAX, "funding_index_int64")
        if self.size == 0 and self.cost != 0:
            raise MarginError("flat_cost", f"a flat position has cost 0, got {self.cost}")


@dataclass(frozen=True, slots=True)
class Account:
    """An account: ``balance`` (int128, collateral atoms x ``SIZE_ONE``, the exact quote balance; a long's is
    typically negative) and its open positions by market id.

    Flat positions are dropped, so ``positions`` holds exactly the markets of the contract's open-market mask.
    ``positions`` is read-only; functions return new accounts.
    """

    balance: int
    positions: Mapping[int, Position] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_range(self.balance, INT128_MIN, INT128_MAX, "balance_int128")
        open_positions: dict[int, Position] = {}
        for market, position in sorted(self.positions.items()):
            if not 0 <= market < MAX_MARKETS:
                raise MarginError("market", f"market id {market} is not in 0 .. {MAX_MARKETS - 1}")
            if position.size != 0:
                open_positions[market] = position
        object.__setattr__(self, "positions", MappingProxyType(open_positions))

    @property
    def mask(self) -> int:
        """The 64-bit mask of markets with an open position (bit ``m`` for market ``m``)."""
        mask = 0
        for market in self.positions:
            mask |= 1 << market
        return mask

    def position(self, market: int, funding_index: int = 0) -> Position:
        """The position in ``market``; flat (at ``funding_index``) if none is open."""
        position = self.positions.get(market)
        return Position(0, 0, funding_index) if position is None else position

    def with_position(self, market: int, position: Position, balance: int | None = None) -> Account:
        """A copy with ``position`` in ``market`` (dropped if flat) and, if given, a new scaled ``balance``."""
        positions = dict(self.positions)
        positions[market] = position
        return Account(self.balance if balance is None else balance, positions)


@dataclass(frozen=True, slots=True)
class MarketParams:
    """A market's parameters and its current oracle price and funding index, as the contract stores them.

    Rates are ppm; ``oracle_price`` and ``funding_index`` share the unit of a price (collateral atoms per whole base
    unit). Construction checks the bounds of the contract's ``_checkParams`` (``MarginError`` with reason ``params``).
    """

    imr: int
    mmr: int
    maker_fee: int
    taker_fee: int
    liq_penalty: int
    oracle_price: int
    funding_index: int
    tick: int
    min_size: int
    max_order_size: int
    max_position: int
    max_price: int
    max_funding_delta: int

    def __post_init__(self) -> None:
        checks = (
            (0 < self.mmr <= self.imr <= PPM, "0 < mmr <= imr <= PPM"),
            (0 <= self.maker_fee <= MAX_FEE_RATE, "0 <= maker_fee <= 100_000"),
            (0 <= self.taker_fee <= MAX_FEE_RATE, "0 <= taker_fee <= 100_000"),
            (0 <= self.liq_penalty <= MAX_LIQ_PENALTY, "0 <= liq_penalty <= 100_000"),
            (1 <= self.tick <= self.max_price <= MAX_PRICE, "1 <= tick <= max_price <= 2**62"),
            (self.tick >= 1 and self.max_price % self.tick == 0, "max_price is a multiple of tick"),
            (1 <= self.oracle_price <= self.max_price, "1 <= oracle_price <= max_price"),
            (
                1 <= self.min_size <= self.max_order_size <= MAX_MARKET_ORDER_SIZE,
                "1 <= min_size <= max_order_size <= 2**62",
            ),
            (1 <= self.max_position <= MAX_POSITION, "1 <= max_position <= 2**62"),
            (INT64_MIN <= self.funding_index <= INT64_MAX, "funding_index is an int64"),
            (0 <= self.max_funding_delta <= INT64_MAX, "0 <= max_funding_delta <= 2**63-1"),
        )
        for ok, rule in checks:
            if not ok:
                raise MarginError("params", f"market parameters break {rule}: {self!r}")


def _market(markets: Mapping[int, MarketParams], market: int) -> MarketParams:
    try:
        return markets[market]
    except KeyError:
        raise MarginError("market", f"no parameters for market {market}") from None


# --- funding -----------------------------------------------------------------------------------------------------


def funding_owed(position: Position, index: int) -> int:
    """Unsettled funding in atoms, ``ceilDiv(size * (index - position.funding_index), SIZE_ONE)``: positive is owed
    by the trader (longs pay when the index rises), negative is owed to it. Rounds toward +inf: payers pay up,
    receivers get rounded toward zero."""
    return ceil_div(position.size * (index - position.funding_index), SIZE_ONE)


def settle_funding(account: Account, market: int, index: int) -> tuple[Account, int]:
    """Settle ``market``'s funding at ``index``: ``balance -= owed * SIZE_ONE``, ``position.funding_index = index``.

    Returns the new account and ``owed`` in atoms (the caller adds it to the funding pool). No open position:
    ``(account, 0)``.
    """
    position = account.positions.get(market)
    if position is None:
        return account, 0
    owed = funding_owed(position, index)
    settled = replace(position, funding_index=index)
    return account.with_position(market, settled, account.balance - owed * SIZE_ONE), owed


# --- fills -------------------------------------------------------------------------------------------------------


def apply_fill(position: Position, signed_amount: int, price: int) -> tuple[Position, int]:
    """Apply a fill of ``signed_amount`` (+ buy, - sell) at ``price`` to a position; returns ``(position, pnl)``
    where ``pnl`` is the realized PnL in atoms FOR DISPLAY (it moves no money: the balance moves by ``-q*p``).

    Funding must be settled first (the position's funding index is kept). With ``(s, c)`` the position and ``q``,
    ``p`` the fill: same direction or from flat, ``(s + q, c + q*p)`` and no PnL; reducing (``|q| <= |s|``), released
    cost ``r = sdiv(c*|q|, |s|)``, ``(s + q, c - r)`` and PnL ``floorDiv(-q*p - r, SIZE_ONE)``; flipping
    (``|q| > |s|``), close first (PnL ``floorDiv(s*p - c, SIZE_ONE)``) then ``(s + q, (s + q)*p)``.
    """
    if price <= 0:
        raise MarginError("price", f"a fill price is positive, got {price}")
    s, c, q = position.size, position.cost, signed_amount
    if s == 0 or (s > 0) == (q > 0):
        return Position(s + q, c + q * price, position.funding_index), 0
    if abs(q) <= abs(s):
        released = sdiv(c * abs(q), abs(s))
        pnl = floor_div(-q * price - released, SIZE_ONE)
        return Position(s + q, c - released, position.funding_index), pnl
    pnl = floor_div(s * price - c, SIZE_ONE)
    rest = q + s
    return Position(rest, rest * price, position.funding_index), pnl


def fee(amount: int, price: int, rate: int) -> int:
    """``ceilDiv(amount * price * rate, SIZE_ONE * PPM)`` atoms: the fee of one side of a fill (rounds up)."""
    if amount < 0 or price < 0 or rate < 0:
        raise MarginError("fee", f"amount, price and rate are non-negative, got {amount}, {price}, {rate}")
    return ceil_div(amount * price * rate, SIZE_ONE * PPM)


@dataclass(frozen=True, slots=True)
class Trade:
    """What one trader's side of a fill did: the account after it and the amounts moved (atoms)."""

    account: Account
    funding_owed: int  # to the funding pool (settled on the fill's market before the fill)
    realized_pnl: int  # DISPLAY only (apply_fill): the balance moved by -q*p, not by this
    fee: int  # to feesCollected


def _side(
    account: Account, market: int, funding_index: int, signed_amount: int, price: int
) -> tuple[int, Position, int, int]:
    """The contract's ``_loadSide`` then ``_applyToSide`` on plain ints (the balance is an unchecked int256 in memory
    until ``_storeSide``): ``(funding owed, position, display PnL, scaled balance)``."""
    position = account.position(market, funding_index)
    owed = funding_owed(position, funding_index)
    balance = account.balance - owed * SIZE_ONE
    position, pnl = apply_fill(replace(position, funding_index=funding_index), signed_amount, price)
    return owed, position, pnl, balance - signed_amount * price


def apply_trade(
    account: Account, market: int, funding_index: int, signed_amount: int, price: int, fee_rate: int
) -> Trade:
    """One trader's side of a fill, in the contract's order: settle ``market``'s funding at ``funding_index``
    (``balance -= owed * SIZE_ONE``), apply the fill (``balance -= q * p``, position by :func:`apply_fill`), charge
    ``fee(|q|, p, fee_rate)`` (``balance -= fee * SIZE_ONE``).

    Health is checked on the result (:func:`is_healthy_after_fill`); the position limit (``|size| <= maxPosition``)
    and the order checks are the caller's.
    """
    owed, position, pnl, balance = _side(account, market, funding_index, signed_amount, price)
    charged = fee(abs(signed_amount), price, fee_rate)
    return Trade(account.with_position(market, position, balance - charged * SIZE_ONE), owed, pnl, charged)


# --- margin views ------------------------------------------------------------------------------------------------


def unrealized_pnl(position: Position, oracle_price: int) -> int:
    """DISPLAY only: ``floorDiv(size * oracle - cost, SIZE_ONE)`` atoms (rounds down). Not part of equity."""
    return floor_div(position.size * oracle_price - position.cost, SIZE_ONE)


def equity(account: Account, markets: Mapping[int, MarketParams]) -> int:
    """Scaled equity at oracle prices: ``balance + sum_m size_m * oracle_m - sum_m owed_m * SIZE_ONE`` (owed: the
    unsettled funding at the market's current index). The contract's ``_healthWith``."""
    return _equity(account.balance, account.positions, markets)


def _equity(balance: int, positions: Mapping[int, Position], markets: Mapping[int, MarketParams]) -> int:
    total = balance
    for market, position in positions.items():
        if position.size != 0:
            params = _market(markets, market)
            total += position.size * params.oracle_price - funding_owed(position, params.funding_index) * SIZE_ONE
    return total


def _requirement(account: Account, markets: Mapping[int, MarketParams], initial: bool) -> int:
    total = 0
    for market, position in account.positions.items():
        params = _market(markets, market)
        ratio = params.imr if initial else params.mmr
        total += ceil_div(abs(position.size) * params.oracle_price * ratio, PPM)
    return total


def initial_requirement(account: Account, markets: Mapping[int, MarketParams]) -> int:
    """Scaled: ``sum_m ceilDiv(|size_m| * oracle_m * imr_m, PPM)``."""
    return _requirement(account, markets, initial=True)


def maintenance_requirement(account: Account, markets: Mapping[int, MarketParams]) -> int:
    """Scaled: ``sum_m ceilDiv(|size_m| * oracle_m * mmr_m, PPM)``."""
    return _requirement(account, markets, initial=False)


def within_position_limit(size_before: int, signed_amount: int, max_position: int) -> bool:
    """The contract's position limit for one side of a fill: ``|size after| <= max_position``, except that a position
    already above the limit (after ``updateMarket`` lowered it) may always shrink."""
    after = size_before + signed_amount
    return abs(after) <= max_position or abs(after) < abs(size_before)


def only_shrank(size_before: int, size_after: int) -> bool:
    """True when a position only shrank: it was open, and is now flat or smaller on the same side (no flip)."""
    if size_before == 0 or abs(size_after) >= abs(size_before):
        return False
    return size_after == 0 or (size_after > 0) == (size_before > 0)


def is_healthy_after_fill(account: Account, markets: Mapping[int, MarketParams], market: int, size_before: int) -> bool:
    """The health rule after a fill in ``market``: ``equity >= maintenance`` if the trader's position there only
    shrank (:func:`only_shrank`), else ``equity >= initial``. ``account`` is the state after the whole fill (funding
    settled, fill applied, fee charged); ``size_before`` the position size in ``market`` before it."""
    size_after = account.position(market).size
    need = (
        maintenance_requirement(account, markets)
        if only_shrank(size_before, size_after)
        else initial_requirement(account, markets)
    )
    return equity(account, markets) >= need


def can_withdraw(account: Account, markets: Mapping[int, MarketParams], amount: int) -> bool:
    """Withdrawal of ``amount`` atoms: allowed iff ``equity - amount * SIZE_ONE >= initial`` (funding unsettled, as
    stored). There is no separate ``amount <= balance`` bound: a long with a negative balance may withdraw from its
    unrealized profit. ``amount`` outside ``1 .. MAX_DEPOSIT`` is refused by the contract before any margin check
    (``ZeroAmount`` / ``AmountTooLarge``): :class:`MarginError` with reason ``amount``."""
    if not 1 <= amount <= MAX_DEPOSIT:
        raise MarginError("amount", f"a withdrawal is 1 .. 2**96 atoms, got {amount}")
    return equity(account, markets) - amount * SIZE_ONE >= initial_requirement(account, markets)


def accounting_identity_holds(
    token_balance: int, balances: Iterable[int], fees: int, insurance: int, funding_pool: int, bad_debt: int
) -> bool:
    """docs/units.md "Accounting identity": ``Σ balance`` (scaled) is a multiple of ``SIZE_ONE`` and
    ``token_balance == Σ balance / SIZE_ONE + fees + insurance + funding_pool - bad_debt`` exactly (atoms)."""
    total = sum(balances)
    if total % SIZE_ONE != 0:
        return False
    return token_balance == total // SIZE_ONE + fees + insurance + funding_pool - bad_debt


# --- liquidation -------------------------------------------------------------------------------------------------


def liquidation_penalty(amount: int, oracle_price: int, rate: int) -> int:
    """``ceilDiv(q * oracle * liqPenalty, SIZE_ONE * PPM)`` atoms (rounds up), before the cap at the trader's
    equity."""
    if amount < 0 or oracle_price < 0 or rate < 0:
        raise MarginError("penalty", f"amount, price and rate are non-negative, got {amount}, {oracle_price}, {rate}")
    return ceil_div(amount * oracle_price * rate, SIZE_ONE * PPM)


@dataclass(frozen=True, slots=True)
class Liquidation:
    """The outcome of :func:`liquidate`: both accounts after it and the amounts moved (atoms)."""

    trader: Account
    liquidator: Account
    trader_funding_owed: int  # to the funding pool
    liquidator_funding_owed: int  # to the funding pool
    trader_pnl: int  # display only
    liquidator_pnl: int  # display only
    penalty: int  # paid to the insurance fund (after the cap)
    insurance_fund: int  # after the penalty and any bad-debt cover
    bad_debt: int  # newly recorded bad debt (the contract's `uncovered`)
    deficit: int  # credited to the trader's balance (x SIZE_ONE): insurance cover + bad_debt; 0 if none


def liquidate(
    trader: Account,
    liquidator: Account,
    markets: Mapping[int, MarketParams],
    market: int,
    amount: int,
    insurance_fund: int,
) -> Liquidation:
    """Liquidate ``amount`` of ``trader``'s position in ``market`` into ``liquidator``: the contract's ``liquidate``,
    step for step (the caller must be another address than the trader; that check is the caller's).

    1. ``market`` must be known (reason ``market``); the trader's stored state must have ``equity < maintenance``
       (else ``healthy``); then ``0 < amount <= |size|`` (else ``amount``).
    2. The trader settles funding on ``market`` and closes ``amount`` at the oracle price (no fee, no limit).
    3. ``penalty = liquidation_penalty(...)`` capped at ``eqAfter / SIZE_ONE`` (truncated; 0 when ``eqAfter <= 0``),
       ``eqAfter`` the trader's scaled equity after step 2; the balance pays ``penalty * SIZE_ONE`` to the fund.
    4. The liquidator settles funding and takes the other side at the oracle price; its ``|size|`` must stay within
       ``max_position`` (else ``position_limit``) and it must end with ``equity >= initial`` even if its position
       shrank (else ``liquidator_margin``).
    5. If the trader then has no open position in any market and a negative balance, ``deficit =
       ceilDiv(-balance, SIZE_ONE)`` atoms are added to its balance (which may leave it sub-atom dust); the fund
       pays ``min(max(fund, 0), deficit)`` and the rest is new bad debt.
    """
    params = _market(markets, market)
    if equity(trader, markets) >= maintenance_requirement(trader, markets):
        raise MarginError("healthy", "the account meets its maintenance requirement")
    size = trader.position(market).size
    if not 0 < amount <= abs(size):
        raise MarginError("amount", f"liquidation amount {amount} is not in 1 .. |size| = {abs(size)}")
    price, index = params.oracle_price, params.funding_index
    q = -amount if size > 0 else amount  # the trader's closing side

    t_owed, t_position, t_pnl, t_balance = _side(trader, market, index, q, price)
    t_positions = {**trader.positions, market: t_position}
    eq_after = _equity(t_balance, t_positions, markets)
    cap = sdiv(eq_after, SIZE_ONE) if eq_after > 0 else 0
    penalty = min(liquidation_penalty(amount, price, params.liq_penalty), cap)
    t_balance -= penalty * SIZE_ONE
    fund = insurance_fund + penalty

    if not within_position_limit(liquidator.position(market).size, -q, params.max_position):
        raise MarginError("position_limit", f"the liquidator's position would exceed {params.max_position}")
    l_owed, l_position, l_pnl, l_balance = _side(liquidator, market, index, -q, price)
    after_liquidator = liquidator.with_position(market, l_position, l_balance)
    if equity(after_liquidator, markets) < initial_requirement(after_liquidator, markets):
        raise MarginError("liquidator_margin", "the liquidator would end below its initial requirement")

    deficit = bad_debt = 0
    if all(p.size == 0 for p in t_positions.values()) and t_balance < 0:  # the open-market mask is 0
        deficit = ceil_div(-t_balance, SIZE_ONE)
        from_insurance = min(max(fund, 0), deficit)
        fund -= from_insurance
        bad_debt = deficit - from_insurance
        t_balance += deficit * SIZE_ONE
    after_trader = Account(t_balance, t_positions)
    return Liquidation(after_trader, after_liquidator, t_owed, l_owed, t_pnl, l_pnl, penalty, fund, bad_debt, deficit)


def liquidation_price(account: Account, markets: Mapping[int, MarketParams], market: int) -> int | None:
    """An ESTIMATE, for the API: the oracle price of ``market`` at which the account becomes liquidatable
    (``equity < maintenance``), with every other market's price and every funding index held where they are now.

    For a long, the HIGHEST valid price (``1 .. max_price``) at which it is liquidatable: it is at that price and
    every lower one. For a short, the LOWEST: it is at that price and every higher one. None when no valid price
    makes the account liquidatable (a long that stays healthy down to price 1, a short healthy up to ``max_price``,
    or no position in ``market``).

    Derivation (scaled units): with ``s`` the size, everything but market m's price terms is fixed: ``F =
    other_equity - other_maintenance`` (m's unsettled funding stays in ``other_equity``). At price ``P`` the account
    is liquidatable iff ``f(P) = F + s*P - ceilDiv(|s|*P*mmr, PPM) < 0``. Without the ceil, ``g(P) = F + s*P -
    |s|*P*mmr/PPM`` is zero at ``P* = -F*PPM / (s*PPM - |s|*mmr)``. Since ``g - 1 < f <= g`` and ``f`` is an
    integer, ``f(P) < 0`` exactly when ``g(P) < 0`` (at ``g == 0`` the ceil's argument is an integer, so ``f == 0``).
    A long is thus liquidatable iff ``P < P*`` (result ``ceil(P*) - 1``), a short iff ``P > P*`` (``floor(P*) + 1``).

    Error bound: zero for the contract's check in the state given (no rounding is lost). As an estimate of a future
    liquidation it moves with the terms held fixed: a change of ``E`` scaled units in the other markets' equity
    minus maintenance, or in funding owed, moves it by ``E*PPM / (|s|*(PPM - mmr))`` price units for a long
    (``PPM + mmr`` for a short), rounded outward by at most one unit. A long with ``mmr == PPM`` has ``f == F`` at
    every price: ``max_price`` if ``F < 0``, else None.
    """
    params = _market(markets, market)
    position = account.positions.get(market)
    if position is None:
        return None
    s, oracle, mmr = position.size, params.oracle_price, params.mmr
    fixed = (equity(account, markets) - s * oracle) - (
        maintenance_requirement(account, markets) - ceil_div(abs(s) * oracle * mmr, PPM)
    )
    if s > 0:
        denominator = s * (PPM - mmr)
        if denominator == 0:
            return params.max_price if fixed < 0 else None
        highest = ceil_div(-fixed * PPM, denominator) - 1
        return min(highest, params.max_price) if highest >= 1 else None
    lowest = floor_div(fixed * PPM, -s * (PPM + mmr)) + 1
    return max(lowest, 1) if lowest <= params.max_price else None
