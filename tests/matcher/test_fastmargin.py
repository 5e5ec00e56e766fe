"""The matcher's fast margin path (relayer.matcher.fastmargin) against relayer.margin, the oracle, on random inputs:
funding owed either way, accounts in several markets (some with unsettled funding), opens, increases, reductions,
closes, flips, reduce-only sized fills, unknown markets, fees and values at the edge of their storage types."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from relayer.margin import (
    INT64_MAX,
    INT128_MAX,
    SIZE_ONE,
    Account,
    MarginError,
    MarketParams,
    Position,
    apply_trade,
    is_healthy_after_fill,
)
from relayer.matcher.fastmargin import load, market_row, to_account, trade

MARKETS = (0, 1, 2, 5)


@st.composite
def market_params(draw: st.DrawFn) -> MarketParams:
    imr = draw(st.integers(1, 10**6))
    tick = draw(st.sampled_from((1, 10**6)))
    max_price = tick * draw(st.integers(1, 10**9))
    return MarketParams(
        imr=imr,
        mmr=draw(st.integers(1, imr)),
        maker_fee=draw(st.integers(0, 100_000)),
        taker_fee=draw(st.integers(0, 100_000)),
        liq_penalty=10_000,
        oracle_price=draw(st.integers(1, max_price)),
        funding_index=draw(st.integers(-(10**12), 10**12) | st.sampled_from((-(2**63), INT64_MAX))),
        tick=tick,
        min_size=1,
        max_order_size=2**62,
        max_position=2**62,
        max_price=max_price,
        max_funding_delta=10**9,
    )


sizes = st.integers(-(10**12), 10**12).filter(bool) | st.sampled_from((1, -1, INT64_MAX, -(2**63)))


@st.composite
def positions(draw: st.DrawFn, market_ids: list[int]) -> dict[int, Position]:
    out = {}
    for m in draw(st.lists(st.sampled_from(market_ids), unique=True, max_size=len(market_ids))):
        size = draw(sizes)
        cost = draw(st.integers(-(10**30), 10**30))
        out[m] = Position(size, cost, draw(st.integers(-(10**12), 10**12)))
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[Account, dict[int, MarketParams], int, int, int, int, int]:
    known = draw(st.lists(st.sampled_from(MARKETS), unique=True, min_size=1))
    markets = {m: draw(market_params()) for m in known}
    held = draw(positions(list(MARKETS)))  # may hold a position in a market missing from `markets`
    balance = draw(
        st.integers(-(10**30), 10**30) | st.integers(-(10**22), 10**22) | st.sampled_from((0, INT128_MAX, -INT128_MAX))
    )
    account = Account(balance, held)
    market = draw(st.sampled_from(known))
    size = account.position(market).size
    shape = draw(st.sampled_from(("any", "close", "reduce", "flip", "grow", "tiny", "huge")))
    if shape == "close" and size:
        q = -size
    elif shape == "reduce" and size:  # what a reduce-only order may take: never more than the position
        q = -draw(st.integers(1, abs(size))) if size > 0 else draw(st.integers(1, abs(size)))
    elif shape == "flip" and size:
        q = -size - draw(st.integers(1, 10**10)) if size > 0 else -size + draw(st.integers(1, 10**10))
    elif shape == "grow" and size:
        q = draw(st.integers(1, 10**10)) * (1 if size > 0 else -1)
    elif shape == "tiny":
        q = draw(st.sampled_from((1, -1)))
    elif shape == "huge":
        q = draw(st.sampled_from((INT64_MAX, -INT64_MAX, 2**62, -(2**62))))
    else:
        q = draw(st.integers(-(10**12), 10**12).filter(bool))
    params = markets[market]
    price = draw(st.integers(1, params.max_price) | st.just(params.oracle_price))
    fee_rate = draw(st.sampled_from((params.maker_fee, params.taker_fee)))
    return account, markets, market, params.funding_index, q, price, fee_rate


def _oracle(
    account: Account, markets: dict[int, MarketParams], market: int, index: int, q: int, price: int, rate: int
) -> Account | None:
    """What build_batch did before the fast path (its ``_trade``), on relayer.margin."""
    before = account.position(market).size
    try:
        after = apply_trade(account, market, index, q, price, rate).account
        healthy = is_healthy_after_fill(after, markets, market, before)
    except MarginError:
        return None
    return after if healthy else None


@settings(max_examples=2_000, deadline=None)
@given(case=cases())
def test_fast_trade_equals_relayer_margin(
    case: tuple[Account, dict[int, MarketParams], int, int, int, int, int],
) -> None:
    account, markets, market, index, q, price, rate = case
    expected = _oracle(account, markets, market, index, q, price, rate)
    balance, held = load(account)
    rows = {m: (market_row(markets[m]) if m in markets else None) for m in MARKETS}
    got = trade(balance, held, rows, market, index, q, price, rate)
    assert held == load(account)[1]  # the input is not modified
    event("skipped by margin" if expected is None else "filled")
    if expected is None:
        assert got is None
        return
    assert got is not None
    new_balance, position = got
    new_held = {m: p for m, p in held.items() if m != market}
    if position[0]:
        new_held[market] = position
    result = to_account(new_balance, new_held)
    assert result == expected
    assert result.balance == expected.balance and dict(result.positions) == dict(expected.positions)


@settings(max_examples=300, deadline=None)
@given(case=cases(), steps=st.lists(st.tuples(st.integers(-(10**10), 10**10), st.integers(0, 3)), max_size=8))
def test_fast_trade_chain_of_fills_equals_relayer_margin(
    case: tuple[Account, dict[int, MarketParams], int, int, int, int, int], steps: list[tuple[int, int]]
) -> None:
    """Fill after fill on the same account (as a batch simulates it), the fast state never drifts from the oracle."""
    account, markets, _market, _index, _q, _price, _rate = case
    known = sorted(markets)
    balance, held = load(account)
    rows = {m: (market_row(markets[m]) if m in markets else None) for m in MARKETS}
    for q, pick in steps:
        market = known[pick % len(known)]
        params = markets[market]
        price = params.oracle_price
        expected = _oracle(account, markets, market, params.funding_index, q, price, params.taker_fee)
        got = trade(balance, held, rows, market, params.funding_index, q, price, params.taker_fee)
        if expected is None:
            assert got is None
            continue
        assert got is not None
        balance = got[0]
        held = {m: p for m, p in held.items() if m != market}
        if got[1][0]:
            held[market] = got[1]
        account = expected
        assert to_account(balance, held) == expected


def test_known_cases() -> None:
    markets = {
        0: MarketParams(100_000, 50_000, 200, 500, 10_000, 2_000 * 10**6, 7, 10**6, 1, 10**12, 10**13, 10**15, 10**9)
    }
    rows = {0: market_row(markets[0])}
    long = Account(10**6 * SIZE_ONE, {0: Position(5 * 10**8, 5 * 10**8 * 2_000 * 10**6, 0)})
    for q in (-(10**8), -5 * 10**8, -6 * 10**8, 10**8):  # reduce, close, flip, grow; funding owed at index 7
        expected = _oracle(long, markets, 0, 7, q, 2_000 * 10**6, 500)
        got = trade(*load(long), rows, 0, 7, q, 2_000 * 10**6, 500)
        assert expected is not None and got is not None
        held = {0: got[1]} if got[1][0] else {}
        assert to_account(got[0], held) == expected
    broke = Account(0)
    assert _oracle(broke, markets, 0, 7, 10**8, 2_000 * 10**6, 500) is None
    assert trade(*load(broke), rows, 0, 7, 10**8, 2_000 * 10**6, 500) is None
