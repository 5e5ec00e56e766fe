"""The contract's margin math in Python (quote-balance model, docs/units.md): Solidity's division, fills, funding, fees,
scaled margin views, withdrawal, liquidation, and the accounting identity: fills move value, they never create it."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from relayer import margin
from relayer.margin import (
    PPM,
    SIZE_ONE,
    Account,
    BoundsError,
    MarginError,
    MarketParams,
    Position,
    apply_fill,
    ceil_div,
    floor_div,
    sdiv,
)

FEW = settings(max_examples=60, deadline=None)
FLAT = Position(0, 0, 0)
big = st.integers(-(2**200), 2**200)
positive = st.integers(1, 2**130)


def market(**changes: Any) -> MarketParams:
    params: dict[str, Any] = {
        "imr": 100_000,  # 10%
        "mmr": 50_000,  # 5%
        "maker_fee": 200,
        "taker_fee": 500,
        "liq_penalty": 10_000,  # 1%
        "oracle_price": 1000,
        "funding_index": 0,
        "tick": 1,
        "min_size": 1,
        "max_order_size": 2**62,
        "max_position": 2**62,
        "max_price": 2**62,
        "max_funding_delta": 10**6,
    }
    params.update(changes)
    return MarketParams(**params)


def atoms(n: int) -> int:
    """``n`` whole collateral atoms as a scaled balance."""
    return n * SIZE_ONE


def liquidatable(account: Account, markets: dict[int, MarketParams]) -> bool:
    return margin.equity(account, markets) < margin.maintenance_requirement(account, markets)


# --- division ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "trunc", "ceil", "floor"),
    [
        (7, 2, 3, 4, 3),
        (-7, 2, -3, -3, -4),
        (6, 3, 2, 2, 2),
        (-6, 3, -2, -2, -2),
        (0, 5, 0, 0, 0),
        (-1, 5, 0, 0, -1),
        (1, 5, 0, 1, 0),
        (-(10**8) - 1, 10**8, -1, -1, -2),
    ],
)
def test_division_table(a: int, b: int, trunc: int, ceil: int, floor: int) -> None:
    assert sdiv(a, b) == trunc
    assert ceil_div(a, b) == ceil
    assert floor_div(a, b) == floor


def test_sdiv_differs_from_python_floor_on_negatives() -> None:
    assert -7 // 2 == -4 and sdiv(-7, 2) == -3
    assert 7 // -2 == -4 and sdiv(7, -2) == -3
    assert sdiv(-7, -2) == 3
    with pytest.raises(ZeroDivisionError):
        sdiv(1, 0)
    with pytest.raises(ValueError, match="positive divisor"):
        ceil_div(1, 0)
    with pytest.raises(ValueError, match="positive divisor"):
        floor_div(1, -1)


@FEW
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6).filter(bool))
def test_sdiv_matches_float_truncation_on_small_numbers(a: int, b: int) -> None:
    assert sdiv(a, b) == int(a / b)


@FEW
@given(big, st.integers(-(2**130), 2**130).filter(bool))
def test_sdiv_matches_exact_truncation(a: int, b: int) -> None:
    assert sdiv(a, b) == math.trunc(Fraction(a, b))


@FEW
@given(big, positive)
def test_ceil_and_floor_div_match_exact_rounding(x: int, d: int) -> None:
    assert ceil_div(x, d) == math.ceil(Fraction(x, d))
    assert floor_div(x, d) == math.floor(Fraction(x, d))


@pytest.mark.parametrize(
    ("balance", "shown"),
    [(atoms(5), 5), (atoms(5) + 1, 5), (atoms(5) - 1, 4), (0, 0), (-1, -1), (atoms(-5) + 1, -5), (atoms(-5), -5)],
)
def test_collateral_atoms_floors_for_display(balance: int, shown: int) -> None:
    assert margin.collateral_atoms(balance) == shown


# --- fills ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "q", "p", "after", "pnl"),
    [
        # open and add, long and short: no PnL, cost adds q*p
        (FLAT, 3 * SIZE_ONE, 2000, Position(3 * SIZE_ONE, 6000 * SIZE_ONE, 0), 0),
        (Position(3 * SIZE_ONE, 6000 * SIZE_ONE, 0), SIZE_ONE, 2100, Position(4 * SIZE_ONE, 8100 * SIZE_ONE, 0), 0),
        (FLAT, -5 * SIZE_ONE, 100, Position(-5 * SIZE_ONE, -500 * SIZE_ONE, 0), 0),
        (Position(-5, -500, 0), -1, 90, Position(-6, -590, 0), 0),
        # reduce a long at a profit: r = 8100e8 * 1/4 = 2025e8; PnL = 2200 - 2025
        (Position(4 * SIZE_ONE, 8100 * SIZE_ONE, 0), -SIZE_ONE, 2200, Position(3 * SIZE_ONE, 6075 * SIZE_ONE, 0), 175),
        # reduce a short at a loss: r = -500e8 * 2/5 = -200e8; PnL = -2*110 + 200 = -20
        (
            Position(-5 * SIZE_ONE, -500 * SIZE_ONE, 0),
            2 * SIZE_ONE,
            110,
            Position(-3 * SIZE_ONE, -300 * SIZE_ONE, 0),
            -20,
        ),
        # released cost truncates toward zero: long r = 10/3 -> 3; short r = -10/3 -> -3 (Python's // would give -4)
        (Position(3, 10, 5), -1, 1, Position(2, 7, 5), -1),
        (Position(-3, -10, 5), 1, 1, Position(-2, -7, 5), 0),
        # display PnL floors: a loss of a fraction of an atom shows as a whole atom, a gain of one is dropped
        (Position(1, 150, 0), -1, 100, FLAT, -1),
        (Position(1, 100, 0), -1, 150, FLAT, 0),
        (Position(SIZE_ONE, 1000 * SIZE_ONE - 1, 0), -SIZE_ONE, 1000, FLAT, 0),
        (Position(SIZE_ONE, 1000 * SIZE_ONE + 1, 0), -SIZE_ONE, 1000, FLAT, -1),
        # close exactly: the whole cost is released
        (Position(-7, -1234, 9), 7, 200, Position(0, 0, 9), math.floor(Fraction(-7 * 200 + 1234, SIZE_ONE))),
        # flip long -> short: close 2 units (PnL 2*900 - 2000 = -200), open 3 short at 900
        (
            Position(2 * SIZE_ONE, 2000 * SIZE_ONE, 0),
            -5 * SIZE_ONE,
            900,
            Position(-3 * SIZE_ONE, -2700 * SIZE_ONE, 0),
            -200,
        ),
        # flip short -> long: close (PnL floor((-1*50 + 40) / 1e8) = -1), open 2 long at 50
        (Position(-1, -40, 3), 3, 50, Position(2, 100, 3), -1),
        (Position(-SIZE_ONE, -60 * SIZE_ONE, 3), 3 * SIZE_ONE, 50, Position(2 * SIZE_ONE, 100 * SIZE_ONE, 3), 10),
    ],
)
def test_apply_fill_cases(before: Position, q: int, p: int, after: Position, pnl: int) -> None:
    assert apply_fill(before, q, p) == (after, pnl)


def test_storage_bounds() -> None:
    with pytest.raises(BoundsError) as info:
        apply_fill(Position(2**63 - 1, 2**63 - 1, 0), 1, 1)
    assert info.value.reason == "size_int64"
    with pytest.raises(BoundsError) as info:
        apply_fill(FLAT, 2**62, 2**66)
    assert info.value.reason == "cost_int128"
    with pytest.raises(BoundsError) as info:
        Position(-(2**63) - 1, 0, 0)
    assert info.value.reason == "size_int64"
    with pytest.raises(BoundsError) as info:
        Position(1, 1, 2**63)
    assert info.value.reason == "funding_index_int64"
    for balance in (2**127, -(2**127) - 1):
        with pytest.raises(BoundsError) as info:
            Account(balance)
        assert info.value.reason == "balance_int128"
    assert Account(2**127 - 1).balance == 2**127 - 1 and Account(-(2**127)).balance == -(2**127)
    with pytest.raises(MarginError) as flat:
        Position(0, 5, 0)
    assert flat.value.reason == "flat_cost"
    with pytest.raises(MarginError):
        apply_fill(FLAT, 1, 0)
    # the largest fills the units allow stay inside the storage types
    apply_fill(Position(-(2**62), -(2**124), 0), 2**63 - 1, 2**62)


# --- funding and fees ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "moved", "owed"),
    [
        (1, 1, 1),  # a long pays when the index rises: a fraction of an atom rounds up to a whole one
        (-1, 1, 0),  # the short receives it rounded toward zero: nothing
        (1, -1, 0),  # a long receives when the index falls: toward zero
        (-1, -1, 1),  # a short pays when it falls: up
        (3 * SIZE_ONE, 7, 21),
        (-3 * SIZE_ONE, 7, -21),
        (SIZE_ONE + 1, 10, 11),
        (-(SIZE_ONE + 1), 10, -10),
        (5, 0, 0),
    ],
)
def test_funding_owed_rounding(size: int, moved: int, owed: int) -> None:
    position = Position(size, size * 100, 40)
    assert margin.funding_owed(position, 40 + moved) == owed


def test_settle_funding_debits_whole_atoms() -> None:
    account = Account(atoms(1000) + 7, {2: Position(2 * SIZE_ONE, 2 * SIZE_ONE * 100, 10)})
    settled, owed = margin.settle_funding(account, 2, 13)
    assert owed == 6
    assert settled == Account(atoms(994) + 7, {2: Position(2 * SIZE_ONE, 2 * SIZE_ONE * 100, 13)})
    assert margin.settle_funding(settled, 2, 13) == (settled, 0)
    assert margin.settle_funding(account, 5, 99) == (account, 0)  # no position there


@FEW
@given(st.integers(-(2**62), 2**62), st.integers(-(2**40), 2**40), st.integers(-(2**40), 2**40))
def test_funding_never_pays_out_more_than_it_takes(size: int, start: int, index: int) -> None:
    long_owes = margin.funding_owed(Position(abs(size), abs(size), start), index)
    short_owes = margin.funding_owed(Position(-abs(size), -abs(size), start), index)
    assert 0 <= long_owes + short_owes <= 1  # the pool gains the rounding, at most one atom per pair


@pytest.mark.parametrize(
    ("amount", "price", "rate", "expected"),
    [
        (1, 1, 1, 1),  # any non-zero fee is at least one atom
        (SIZE_ONE, 2000 * 10**6, 500, 1_000_000),  # 1 unit at 2000.000000, 5 bp: exactly 1.000000
        (SIZE_ONE, 2000 * 10**6 + 1, 500, 1_000_001),
        (SIZE_ONE, 1000, 0, 0),
        (0, 1000, 500, 0),
    ],
)
def test_fee_rounds_up(amount: int, price: int, rate: int, expected: int) -> None:
    assert margin.fee(amount, price, rate) == expected


@FEW
@given(st.integers(0, 2**63 - 1), st.integers(1, 2**62), st.integers(0, 100_000))
def test_fee_is_never_below_the_exact_fee(amount: int, price: int, rate: int) -> None:
    charged = margin.fee(amount, price, rate)
    exact = Fraction(amount * price * rate, SIZE_ONE * PPM)
    assert exact <= charged < exact + 1
    assert margin.liquidation_penalty(amount, price, rate) == charged


def test_apply_trade_settles_funding_then_moves_the_quote_then_charges() -> None:
    # deposited 10_000 atoms, bought 1 unit at 1000: balance 9000 atoms
    account = Account(atoms(9000), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})
    trade = margin.apply_trade(account, 0, 4, -SIZE_ONE // 2, 1100, 500)
    assert trade.funding_owed == 4  # ceil(1 unit * 4)
    assert trade.fee == margin.fee(SIZE_ONE // 2, 1100, 500) == 1  # ceil(0.275)
    assert trade.realized_pnl == 50  # display: 550 received - 500 of released cost
    # balance: - 4 funding + 0.5 * 1100 received - 1 fee; the realized PnL is not credited on top
    assert trade.account == Account(atoms(9000 - 4 + 550 - 1), {0: Position(SIZE_ONE // 2, 500 * SIZE_ONE, 4)})
    opened = margin.apply_trade(Account(atoms(100)), 7, -3, SIZE_ONE, 10, 0)
    assert opened.account == Account(atoms(90), {7: Position(SIZE_ONE, 10 * SIZE_ONE, -3)})
    assert opened.funding_owed == 0 and opened.realized_pnl == 0


def test_a_fill_of_one_base_atom_moves_a_fraction_of_an_atom_exactly() -> None:
    buyer = margin.apply_trade(Account(atoms(1)), 0, 0, 1, 7, 0).account
    seller = margin.apply_trade(Account(atoms(1)), 0, 0, -1, 7, 0).account
    assert buyer.balance == atoms(1) - 7 and seller.balance == atoms(1) + 7
    assert buyer.balance + seller.balance == atoms(2)
    assert margin.collateral_atoms(buyer.balance) == 0 and margin.collateral_atoms(seller.balance) == 1
    # with a fee each side pays a whole atom, so the sum stays a whole number of atoms
    charged = margin.apply_trade(Account(atoms(1)), 0, 0, 1, 7, 1)
    assert charged.fee == 1 and charged.account.balance == -7


# --- margin views --------------------------------------------------------------------------------------------------

MARKETS = {
    0: market(imr=100_000, mmr=50_000, oracle_price=2000, funding_index=10),
    1: market(imr=200_000, mmr=100_000, oracle_price=53, funding_index=-4),
}
SHORT1 = -3 * SIZE_ONE - 1
# deposited 1_000_000 atoms, bought 2 units at 1900, sold 3.00000001 units at 60
MULTI = Account(
    atoms(1_000_000) - 2 * SIZE_ONE * 1900 - SHORT1 * 60,
    {0: Position(2 * SIZE_ONE, 2 * SIZE_ONE * 1900, 7), 1: Position(SHORT1, SHORT1 * 60, -1)},
)


def test_equity_and_requirements_on_a_multi_market_account_are_scaled() -> None:
    assert MULTI.balance == 99_638_000_000_060  # 1_000_000 - 3800 + 180.0000006 atoms
    # + 2 * 2000 + (-3.00000001 * 53) - funding (ceil(2 * 3) = 6 on market 0, ceil(3.00000001 * 3) = 10 on market 1)
    assert margin.equity(MULTI, MARKETS) == MULTI.balance + atoms(4000) - atoms(159) - 53 - atoms(6 + 10)
    assert margin.equity(MULTI, MARKETS) == 100_020_500_000_007  # 1_000_205.00000007 atoms, exactly
    # the display PnL says the same, floored: 200 + 21 (7 * 3.00000001 = 21.00000007)
    pnl = sum(margin.unrealized_pnl(p, MARKETS[m].oracle_price) for m, p in MULTI.positions.items())
    assert pnl == 200 + 21
    # initial: 4000 * 10% = 400 atoms exactly; notional 159.00000053 * 20% = 31.800000106 -> up to the scaled unit
    assert margin.initial_requirement(MULTI, MARKETS) == atoms(400) + 3_180_000_011
    # maintenance: 200 atoms + 159.00000053 * 10% = 15.900000053 -> 1_590_000_006 scaled
    assert margin.maintenance_requirement(MULTI, MARKETS) == atoms(200) + 1_590_000_006
    assert MULTI.mask == 0b11
    with pytest.raises(MarginError) as info:
        margin.equity(MULTI, {0: MARKETS[0]})
    assert info.value.reason == "market"


def test_equity_is_unchanged_by_settling_funding() -> None:
    settled = MULTI
    for m, params in MARKETS.items():
        settled, _ = margin.settle_funding(settled, m, params.funding_index)
    assert settled.balance == MULTI.balance - atoms(6 + 10)
    assert margin.equity(settled, MARKETS) == margin.equity(MULTI, MARKETS)


def test_cost_plays_no_part_in_equity() -> None:
    a = Account(atoms(-900), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})
    b = Account(atoms(-900), {0: Position(SIZE_ONE, 1 * SIZE_ONE, 0)})
    markets = {0: market()}
    assert margin.equity(a, markets) == margin.equity(b, markets) == atoms(100)
    assert margin.unrealized_pnl(a.positions[0], 1000) == 0 and margin.unrealized_pnl(b.positions[0], 1000) == 999


@pytest.mark.parametrize(
    ("before", "after", "shrank"),
    [
        (10, 5, True),
        (10, 0, True),
        (-10, -3, True),
        (-10, 0, True),
        (10, -5, False),
        (-10, 3, False),
        (10, 10, False),
        (10, 11, False),
        (0, 5, False),
        (0, 0, False),
        (-10, -11, False),
    ],
)
def test_only_shrank(before: int, after: int, shrank: bool) -> None:
    assert margin.only_shrank(before, after) is shrank


def test_health_after_a_fill_uses_maintenance_only_for_a_shrinking_position() -> None:
    markets = {0: market()}  # oracle 1000, imr 10%, mmr 5%, fees off below
    # deposited 30 atoms, bought 1 unit at 1000: equity 30 atoms, below maintenance (50)
    start = Account(atoms(30 - 1000), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})
    assert margin.equity(start, markets) == atoms(30)

    def after(q: int) -> Account:
        return margin.apply_trade(start, 0, 0, q, 1000, 0).account

    half = after(-SIZE_ONE // 2)  # initial 50 > 30 >= maintenance 25: healthy, since it only shrank
    assert margin.equity(half, markets) == atoms(30)
    assert margin.is_healthy_after_fill(half, markets, 0, SIZE_ONE)
    flipped = after(-3 * SIZE_ONE // 2)  # the same |size| on the other side: checked at initial
    assert flipped.positions[0].size == -SIZE_ONE // 2
    assert not margin.is_healthy_after_fill(flipped, markets, 0, SIZE_ONE)
    assert not margin.is_healthy_after_fill(after(SIZE_ONE // 10), markets, 0, SIZE_ONE)
    closed = after(-SIZE_ONE)  # closed: nothing required, 30 atoms left
    assert closed == Account(atoms(30)) and margin.is_healthy_after_fill(closed, markets, 0, SIZE_ONE)
    # an opening fill needs initial margin: exactly enough passes, one scaled unit less does not
    opened = margin.apply_trade(Account(atoms(100)), 0, 0, SIZE_ONE, 1000, 0).account
    assert margin.equity(opened, markets) == margin.initial_requirement(opened, markets) == atoms(100)
    assert margin.is_healthy_after_fill(opened, markets, 0, 0)
    assert not margin.is_healthy_after_fill(Account(opened.balance - 1, opened.positions), markets, 0, 0)


def test_withdrawal_rule() -> None:
    markets = {0: market()}
    # deposited 500, bought 1 at 900: balance -400 atoms, equity 600, initial 100
    account = Account(atoms(-400), {0: Position(SIZE_ONE, 900 * SIZE_ONE, 0)})
    assert margin.can_withdraw(account, markets, 500)  # no `amount <= balance` check: the balance is negative
    assert not margin.can_withdraw(account, markets, 501)
    # a short in profit: deposited 100, sold 1 at 1300: balance 1400, equity 400, initial 100
    short = Account(atoms(1400), {0: Position(-SIZE_ONE, -1300 * SIZE_ONE, 0)})
    assert margin.can_withdraw(short, markets, 300)
    assert not margin.can_withdraw(short, markets, 301)
    # a flat account with sub-atom dust: the dust stays behind
    dusty = Account(atoms(7) + 5)
    assert margin.can_withdraw(dusty, {}, 7)
    assert not margin.can_withdraw(dusty, {}, 8)
    for amount in (0, -1, 2**96 + 1):  # ZeroAmount / AmountTooLarge in the contract
        with pytest.raises(MarginError) as info:
            margin.can_withdraw(dusty, {}, amount)
        assert info.value.reason == "amount"
    assert margin.can_withdraw(Account(atoms(2**96)), {}, 2**96)
    # unsettled funding counts in equity
    owing = Account(atoms(-500), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, -50)})  # owes 50 of funding at index 0
    assert margin.equity(owing, markets) == atoms(450)
    assert margin.can_withdraw(owing, markets, 350)
    assert not margin.can_withdraw(owing, markets, 351)


# --- liquidation ---------------------------------------------------------------------------------------------------

# deposited 50 atoms, bought 1 unit at 1100; oracle 1000: equity -50 atoms
UNDERWATER = Account(atoms(50 - 1100), {0: Position(SIZE_ONE, 1100 * SIZE_ONE, 0)})


@pytest.mark.parametrize(
    ("fund_before", "fund_after", "bad_debt"),
    [
        (30, 0, 20),  # the fund pays what it holds, the rest is bad debt
        (100, 50, 0),  # the fund covers it all
        (0, 0, 50),  # no insurance
        (-5, -5, 50),  # a negative fund pays nothing
    ],
)
def test_liquidation_of_a_whole_position_with_bad_debt(fund_before: int, fund_after: int, bad_debt: int) -> None:
    markets = {0: market()}
    result = margin.liquidate(UNDERWATER, Account(atoms(1000)), markets, 0, SIZE_ONE, insurance_fund=fund_before)
    assert result.trader_pnl == -100  # display
    assert result.penalty == 0  # the raw penalty is 10, but the equity after the takeover is -50: cap 0
    assert result.deficit == 50
    assert result.trader == Account(0)  # -50 atoms + deficit
    assert result.insurance_fund == fund_after and result.bad_debt == bad_debt
    assert result.liquidator == Account(0, {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})
    assert result.liquidator_pnl == 0


def test_bad_debt_cover_rounds_the_deficit_up_and_leaves_dust() -> None:
    markets = {0: market()}
    trader = Account(UNDERWATER.balance + 3, UNDERWATER.positions)  # -49.99999997 atoms after the takeover
    result = margin.liquidate(trader, Account(atoms(1000)), markets, 0, SIZE_ONE, insurance_fund=10)
    assert result.deficit == 50 and result.insurance_fund == 0 and result.bad_debt == 40
    assert result.trader == Account(3)  # not set to 0: 3 scaled units of dust stay
    assert margin.collateral_atoms(result.trader.balance) == 0


def test_no_bad_debt_while_another_position_is_open() -> None:
    markets = {0: market(), 1: market(oracle_price=10)}
    other = Position(SIZE_ONE, 10 * SIZE_ONE, 0)
    trader = Account(UNDERWATER.balance - atoms(10), {**UNDERWATER.positions, 1: other})
    result = margin.liquidate(trader, Account(atoms(1000)), markets, 0, SIZE_ONE, insurance_fund=100)
    assert result.trader == Account(atoms(-60), {1: other})  # still holds market 1: its balance stays negative
    assert result.deficit == 0 and result.bad_debt == 0 and result.insurance_fund == 100


def test_partial_liquidation_pays_the_penalty() -> None:
    markets = {0: market(funding_index=2)}
    # deposited 130, bought 1 at 1100 at index 0: equity -970 + 1000 - 2 of funding = 28 < 50
    trader = Account(atoms(130 - 1100), {0: Position(SIZE_ONE, 1100 * SIZE_ONE, 0)})
    assert margin.equity(trader, markets) == atoms(28)
    result = margin.liquidate(trader, Account(atoms(1000)), markets, 0, SIZE_ONE // 2, insurance_fund=0)
    assert result.trader_funding_owed == 2 and result.liquidator_funding_owed == 0
    assert result.trader_pnl == -50  # display
    assert result.penalty == 5  # ceil(0.5 * 1000 * 1%), below the cap of 28
    assert result.trader == Account(atoms(-970 - 2 + 500 - 5), {0: Position(SIZE_ONE // 2, 550 * SIZE_ONE, 2)})
    assert result.insurance_fund == 5 and result.bad_debt == 0 and result.deficit == 0
    assert result.liquidator == Account(atoms(500), {0: Position(SIZE_ONE // 2, 500 * SIZE_ONE, 2)})


def test_the_penalty_is_capped_at_the_equity_after_the_takeover_in_whole_atoms() -> None:
    markets = {0: market()}
    # equity 3.5 atoms: liquidatable (maintenance 50), and the raw penalty on the whole position is 10
    trader = Account(atoms(-997) + SIZE_ONE // 2, {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})
    result = margin.liquidate(trader, Account(atoms(1000)), markets, 0, SIZE_ONE, insurance_fund=0)
    assert result.penalty == 3  # 3.5 truncated
    assert result.trader == Account(SIZE_ONE // 2)  # half an atom of dust, not negative: no deficit
    assert result.insurance_fund == 3 and result.deficit == 0


def test_the_penalty_cap_counts_unsettled_funding_in_other_markets() -> None:
    markets = {0: market(), 1: market(oracle_price=10, funding_index=4)}
    other = Position(SIZE_ONE, 10 * SIZE_ONE, 0)  # owes 4 atoms of funding there, unsettled
    # equity: -990 + 1000 + 10 - 4 = 16 atoms; maintenance 50.5
    trader = Account(atoms(-990), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0), 1: other})
    assert margin.equity(trader, markets) == atoms(16)
    result = margin.liquidate(trader, Account(atoms(1000)), markets, 0, SIZE_ONE, insurance_fund=0)
    assert result.penalty == 10  # below the cap of 16
    assert result.trader == Account(0, {1: other})
    # equity 6 atoms, after the takeover too: the penalty of 10 is capped at 6
    poorer = Account(atoms(-1000), trader.positions)
    capped = margin.liquidate(poorer, Account(atoms(1000)), markets, 0, SIZE_ONE, insurance_fund=0)
    assert capped.penalty == 6
    # still open in market 1, so the negative balance stays: no deficit cover
    assert capped.trader == Account(atoms(-6), {1: other}) and capped.deficit == 0


def test_liquidation_refusals() -> None:
    markets = {0: market()}
    healthy = Account(atoms(1000 - 1000), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})  # equity 1000
    with pytest.raises(MarginError) as info:
        margin.liquidate(healthy, Account(atoms(1000)), markets, 0, 0, 0)  # health is checked before the amount
    assert info.value.reason == "healthy"
    # the liquidator needs initial margin on what it took over: 100 atoms exactly passes, a scaled unit less fails
    margin.liquidate(UNDERWATER, Account(atoms(100)), markets, 0, SIZE_ONE, 0)
    with pytest.raises(MarginError) as info:
        margin.liquidate(UNDERWATER, Account(atoms(100) - 1), markets, 0, SIZE_ONE, 0)
    assert info.value.reason == "liquidator_margin"
    # ... even when taking over only shrinks its own position: a short of 2 with equity 80 ends short 1 with
    # equity 80, above maintenance (50) but below initial (100)
    short = Account(atoms(2000 + 80), {0: Position(-2 * SIZE_ONE, -2000 * SIZE_ONE, 0)})
    shrunk = margin.apply_trade(short, 0, 0, SIZE_ONE, 1000, 0).account
    assert margin.equity(shrunk, markets) == atoms(80)
    assert margin.is_healthy_after_fill(shrunk, markets, 0, -2 * SIZE_ONE)  # what a fill would need
    with pytest.raises(MarginError) as info:
        margin.liquidate(UNDERWATER, short, markets, 0, SIZE_ONE, 0)
    assert info.value.reason == "liquidator_margin"
    for amount in (0, SIZE_ONE + 1):
        with pytest.raises(MarginError) as info:
            margin.liquidate(UNDERWATER, Account(atoms(1000)), markets, 0, amount, 0)
        assert info.value.reason == "amount"
    with pytest.raises(MarginError) as info:
        margin.liquidate(UNDERWATER, Account(atoms(1000)), markets, 1, SIZE_ONE, 0)
    assert info.value.reason == "market"
    limited = {0: market(max_position=SIZE_ONE)}
    holder = Account(atoms(1000), {0: Position(1, 1000, 0)})
    with pytest.raises(MarginError) as info:
        margin.liquidate(UNDERWATER, holder, limited, 0, SIZE_ONE, 0)
    assert info.value.reason == "position_limit"
    assert margin.liquidate(UNDERWATER, holder, limited, 0, SIZE_ONE - 1, 0).liquidator.positions[0].size == SIZE_ONE


def test_liquidation_price_examples() -> None:
    markets = {0: market()}
    long = Account(atoms(-900), {0: Position(SIZE_ONE, 1000 * SIZE_ONE, 0)})  # -900 + P < 5% P below 947.37
    assert margin.liquidation_price(long, markets, 0) == 947
    short = Account(atoms(1100), {0: Position(-SIZE_ONE, -1000 * SIZE_ONE, 0)})  # 1100 - P < 5% P above 1047.6
    assert margin.liquidation_price(short, markets, 0) == 1048

    def at(account: Account, price: int) -> bool:
        return liquidatable(account, {0: dataclasses.replace(markets[0], oracle_price=price)})

    assert at(long, 947) and not at(long, 948)
    assert at(short, 1048) and not at(short, 1047)
    # P* = 1000 exactly: equity == maintenance there, which is not liquidatable
    edge = Account(atoms(-950), long.positions)
    assert margin.liquidation_price(edge, markets, 0) == 999
    assert at(edge, 999) and not at(edge, 1000)
    edge_short = Account(atoms(1050), short.positions)  # 1050 - P < 5% P above exactly 1000
    assert margin.liquidation_price(edge_short, markets, 0) == 1001
    assert at(edge_short, 1001) and not at(edge_short, 1000)
    assert margin.liquidation_price(Account(atoms(10**9), long.positions), markets, 0) is None  # fully funded
    with pytest.raises(MarginError):
        margin.liquidation_price(long, markets, 1)
    assert margin.liquidation_price(Account(atoms(5)), markets, 0) is None
    assert margin.liquidation_price(Account(atoms(-(10**6)), short.positions), markets, 0) == 1  # at every price
    small = {0: market(max_price=2000)}
    assert margin.liquidation_price(Account(atoms(10**6), short.positions), small, 0) is None  # not up to 2000
    assert margin.liquidation_price(Account(atoms(-(10**6)), long.positions), small, 0) == 2000  # at every price
    full = {0: market(imr=PPM, mmr=PPM)}
    assert margin.liquidation_price(long, full, 0) == 2**62  # -900 + P < P at every price
    assert margin.liquidation_price(Account(0, long.positions), full, 0) is None  # P >= P at every price


@FEW
@given(
    st.integers(-(2**40), 2**40).filter(bool),
    st.integers(-(10**20), 10**20),
    st.integers(1, PPM),
    st.integers(1, 10**9),
    st.integers(-(10**6), 10**6),
)
def test_liquidation_price_is_the_exact_boundary(
    size: int, balance: int, mmr: int, other_price: int, funding: int
) -> None:
    params = market(imr=mmr, mmr=mmr, funding_index=funding)
    markets = {0: params, 1: market(oracle_price=other_price)}
    account = Account(balance, {0: Position(size, size * 1000, 0), 1: Position(SIZE_ONE, SIZE_ONE * 500, 0)})
    boundary = margin.liquidation_price(account, markets, 0)

    def at(price: int) -> bool:
        return liquidatable(account, {**markets, 0: dataclasses.replace(params, oracle_price=price)})

    top = params.max_price
    if boundary is None:
        assert not at(1 if size > 0 else top)  # not even at the worst valid price
    elif size > 0:
        assert at(boundary) and at(1)
        assert boundary == top or not at(boundary + 1)
    else:
        assert at(boundary) and at(top)
        assert boundary == 1 or not at(boundary - 1)


def test_market_params_bounds() -> None:
    for changes in (
        {"mmr": 0},
        {"mmr": 200_000},  # above imr
        {"imr": PPM + 1, "mmr": 1},
        {"taker_fee": 100_001},
        {"liq_penalty": -1},
        {"oracle_price": 0},
        {"max_price": 2**62 + 1},
        {"max_price": 1000, "tick": 3, "oracle_price": 999},  # maxPrice % tick != 0
        {"max_order_size": 2**62 + 1},  # the contract's MAX_SIZE_BOUND
        {"max_position": 2**62 + 1},
        {"funding_index": 2**63},
        {"tick": 0},
    ):
        with pytest.raises(MarginError) as info:
            market(**changes)
        assert info.value.reason == "params"


# --- the accounting identity ---------------------------------------------------------------------------------------


def test_accounting_identity() -> None:
    balances = [atoms(150) - 5, atoms(-50) + 5, 0]  # Σ = 100 atoms
    assert margin.accounting_identity_holds(100, balances, 0, 0, 0, 0)
    assert margin.accounting_identity_holds(100 + 7 + 3 - 2 - 4, balances, 7, 3, -2, 4)
    assert not margin.accounting_identity_holds(101, balances, 0, 0, 0, 0)
    assert not margin.accounting_identity_holds(100, [*balances, 1], 0, 0, 0, 0)  # not a whole number of atoms
    assert not margin.accounting_identity_holds(100, [*balances, -SIZE_ONE + 1], 0, 0, 0, 0)  # not rounded away
    assert margin.accounting_identity_holds(0, [], 0, 0, 0, 0)


TRADERS = 4
display_trades = st.lists(
    st.tuples(
        st.integers(0, TRADERS - 1),
        st.integers(1, TRADERS - 1),
        st.integers(-(2**40), 2**40).filter(bool),
        st.integers(1, 2**40),
    ),
    min_size=1,
    max_size=25,
)


@FEW
@given(display_trades, st.integers(1, 2**40))
def test_display_pnl_is_zero_sum_up_to_flooring(fills: list[tuple[int, int, int, int]], mark: int) -> None:
    """The display figures (realized and unrealized PnL) only ever floor: summed over everyone they are within one
    atom per floor of zero, never above it. (Balances, not these figures, carry the money.)"""
    positions = [FLAT] * TRADERS
    realized = [0] * TRADERS
    floors = 0
    for buyer, offset, q, p in fills:
        seller = (buyer + offset) % TRADERS  # never the buyer itself
        for who, signed in ((buyer, q), (seller, -q)):
            positions[who], pnl = apply_fill(positions[who], signed, p)
            realized[who] += pnl
            floors += 1
        assert sum(pos.size for pos in positions) == 0
        open_cost = sum(pos.cost for pos in positions)
        assert open_cost - floors * SIZE_ONE < sum(realized) * SIZE_ONE <= open_cost
    total = sum(realized) + sum(margin.unrealized_pnl(pos, mark) for pos in positions)
    assert -(floors + TRADERS) < total <= 0
    # close everyone out against the next trader at the mark: realized PnL alone sums to <= 0
    for who in range(TRADERS - 1):
        q = -positions[who].size
        if q:
            positions[who], pnl_a = apply_fill(positions[who], q, mark)
            positions[who + 1], pnl_b = apply_fill(positions[who + 1], -q, mark)
            realized[who] += pnl_a
            realized[who + 1] += pnl_b
            floors += 2
    assert all(pos == Position(0, 0, 0) for pos in positions)
    assert -floors < sum(realized) <= 0


deposit_op = st.tuples(st.just("deposit"), st.integers(0, TRADERS - 1), st.integers(1, 2**40))
fill_op = st.tuples(
    st.just("fill"),
    st.integers(0, TRADERS - 1),  # buyer
    st.integers(1, TRADERS - 1),  # seller offset: never the buyer itself
    st.integers(0, 1),  # market
    st.integers(1, 2**40),  # amount
    st.integers(1, 2**40),  # price
    st.booleans(),  # the buyer is the maker
)
funding_op = st.tuples(st.just("funding"), st.integers(0, 1), st.integers(-(10**6), 10**6))
ops = st.lists(st.one_of(deposit_op, fill_op, funding_op), min_size=1, max_size=40)
rates = st.tuples(st.integers(0, 100_000), st.integers(0, 100_000))


@settings(max_examples=80, deadline=None)
@given(ops, st.lists(rates, min_size=2, max_size=2))
def test_conservation_fills_move_value_and_create_none(
    op_list: list[tuple[Any, ...]], fees: list[tuple[int, int]]
) -> None:
    accounts = [Account(0)] * TRADERS
    indices = [0, 0]
    deposits = collected = pool = 0
    for op in op_list:
        if op[0] == "deposit":
            _, who, amount = op
            accounts[who] = Account(accounts[who].balance + atoms(amount), accounts[who].positions)
            deposits += amount
        elif op[0] == "funding":
            _, m, delta = op
            indices[m] += delta
        else:
            _, buyer, offset, m, amount, price, buyer_makes = op
            seller = (buyer + offset) % TRADERS
            maker_rate, taker_rate = fees[m]
            for who, signed, rate in (
                (buyer, amount, maker_rate if buyer_makes else taker_rate),
                (seller, -amount, taker_rate if buyer_makes else maker_rate),
            ):
                trade = margin.apply_trade(accounts[who], m, indices[m], signed, price, rate)
                accounts[who] = trade.account
                pool += trade.funding_owed
                collected += trade.fee
                assert Fraction(amount * price * rate, SIZE_ONE * PPM) <= trade.fee
        total = sum(a.balance for a in accounts)
        assert total + (collected + pool) * SIZE_ONE == deposits * SIZE_ONE
        assert total % SIZE_ONE == 0
        assert margin.accounting_identity_holds(deposits, (a.balance for a in accounts), collected, 0, pool, 0)
        for m in (0, 1):
            assert sum(a.position(m).size for a in accounts) == 0
    # settling everyone's funding keeps the identity; then the pool holds only rounding in its favour
    for who in range(TRADERS):
        for m in (0, 1):
            accounts[who], owed = margin.settle_funding(accounts[who], m, indices[m])
            pool += owed
    assert margin.accounting_identity_holds(deposits, (a.balance for a in accounts), collected, 0, pool, 0)
    assert pool >= 0 and collected >= 0


# Liquidations and withdrawals too, with the contract's health checks, at oracle prices that move a lot: sizes of a
# few whole units plus dust, fills near the starting oracle price (1000), small deposits (so leverage is high).
small_deposit = st.tuples(st.just("deposit"), st.integers(0, TRADERS - 1), st.integers(1, 10**4))
units_and_dust = st.builds(lambda units, dust: units * SIZE_ONE + dust, st.integers(0, 20), st.integers(1, SIZE_ONE))
small_fill = st.tuples(
    st.just("fill"),
    st.integers(0, TRADERS - 1),
    st.integers(1, TRADERS - 1),
    st.integers(0, 1),
    units_and_dust,
    st.integers(800, 1200),
    st.booleans(),
)
oracle_op = st.tuples(st.just("oracle"), st.integers(0, 1), st.integers(1, 3000))
withdraw_op = st.tuples(st.just("withdraw"), st.integers(0, TRADERS - 1), st.integers(1, 10**4))
liquidate_op = st.tuples(st.just("liquidate"), st.booleans())  # the first liquidatable position, whole or half
insurance_op = st.tuples(st.just("insurance"), st.integers(1, 10**3))
busy_ops = st.lists(
    st.one_of(
        small_fill,
        oracle_op,
        liquidate_op,
        small_fill,
        liquidate_op,
        small_deposit,
        withdraw_op,
        funding_op,
        insurance_op,
    ),
    min_size=10,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(10**3, 10**5), min_size=TRADERS, max_size=TRADERS), busy_ops)
def test_accounting_identity_through_withdrawals_and_liquidations(
    initial: list[int], op_list: list[tuple[Any, ...]]
) -> None:
    markets = {0: market(), 1: market(imr=200_000, mmr=100_000, liq_penalty=100_000)}
    accounts = [Account(atoms(amount)) for amount in initial]
    token, fees, insurance, pool, bad_debt = sum(initial), 0, 0, 0, 0
    for op in op_list:
        kind = op[0]
        if kind == "deposit":
            _, who, amount = op
            accounts[who] = Account(accounts[who].balance + atoms(amount), accounts[who].positions)
            token += amount
        elif kind == "insurance":
            token += op[1]
            insurance += op[1]
        elif kind == "funding":
            _, m, delta = op
            markets[m] = dataclasses.replace(markets[m], funding_index=markets[m].funding_index + delta)
        elif kind == "oracle":
            _, m, price = op
            markets[m] = dataclasses.replace(markets[m], oracle_price=price)
        elif kind == "withdraw":
            _, who, amount = op
            if margin.can_withdraw(accounts[who], markets, amount):
                accounts[who] = Account(accounts[who].balance - atoms(amount), accounts[who].positions)
                token -= amount
                event("withdrawal")
        elif kind == "fill":
            _, buyer, offset, m, amount, price, buyer_makes = op
            seller = (buyer + offset) % TRADERS
            params = markets[m]
            sides = []
            for who, signed, makes in ((buyer, amount, buyer_makes), (seller, -amount, not buyer_makes)):
                rate = params.maker_fee if makes else params.taker_fee
                before = accounts[who].position(m).size
                trade = margin.apply_trade(accounts[who], m, params.funding_index, signed, price, rate)
                sides.append((who, trade, before))
            if all(margin.is_healthy_after_fill(t.account, markets, m, before) for _, t, before in sides):
                for who, trade, _ in sides:  # the contract writes both sides or neither
                    accounts[who] = trade.account
                    pool += trade.funding_owed
                    fees += trade.fee
                event("fill")
            else:
                event("fill skipped: margin")
        else:
            whole = op[1]
            targets = [(w, m) for w, a in enumerate(accounts) for m in a.positions if liquidatable(a, markets)]
            if not targets:
                event("nobody to liquidate")
                continue
            who, m = targets[0]
            by = max((w for w in range(TRADERS) if w != who), key=lambda w: margin.equity(accounts[w], markets))
            size = abs(accounts[who].position(m).size)
            try:
                result = margin.liquidate(
                    accounts[who], accounts[by], markets, m, size if whole else size // 2, insurance
                )
            except MarginError as refused:
                event(f"liquidation refused: {refused.reason}")
                continue  # the contract reverts: nothing changes
            accounts[who], accounts[by] = result.trader, result.liquidator
            pool += result.trader_funding_owed + result.liquidator_funding_owed
            insurance = result.insurance_fund
            bad_debt += result.bad_debt
            event("liquidation with a deficit" if result.deficit else "liquidation")
            assert result.deficit == 0 or not result.trader.positions
            assert 0 <= result.trader.balance < SIZE_ONE or result.deficit == 0
        assert margin.accounting_identity_holds(token, (a.balance for a in accounts), fees, insurance, pool, bad_debt)
        for m in (0, 1):
            assert sum(a.position(m).size for a in accounts) == 0


def test_position_limit_lets_an_oversized_position_shrink() -> None:
    from relayer.margin import within_position_limit

    assert within_position_limit(0, 100, 100)
    assert not within_position_limit(0, 101, 100)
    assert not within_position_limit(-50, -51, 100)
    assert within_position_limit(150, -10, 100)  # above a lowered limit, shrinking: allowed
    assert not within_position_limit(150, 10, 100)
    assert not within_position_limit(150, -310, 100)  # flips to -160: larger than the limit and than before
    assert within_position_limit(150, -250, 100)  # flips to -100: within the limit
