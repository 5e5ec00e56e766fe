"""settleBatch's rules on a real chain, each one valid and invalid (docs/units.md; DESIGN.md "Orders" and "Quorum
protocol"): order signatures, fill amounts, expiry, cancels, the matching rules, flags, triggers, bounds, margin, the
quorum, relayer set changes and the settlement sequence; and the contract's hashes against relayer.eip712.

Every skipped fill is checked for its FillSkipped reason and for having changed nothing: `settle_checked` reads the
fill counters, accounts, positions and fees of every order and trader in the batch before and after, and requires
the state after to be the state before plus exactly the effects of the fills the contract reports as applied.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import pytest
from eth_utils import keccak, to_checksum_address

from bindings import exchange as ex
from relayer import eip712
from relayer.chain.deploy import default_market_params
from relayer.chain.tx import Signer, TxRevertedError, call, send
from relayer.keys import SECP256K1_N

from .world import FAR, MARKET, ONE, PRICE, Party, Settled, World, from_binding, to_binding, with_sig
from .world import test_key as key_for


class Skip(IntEnum):
    """FillSkipped reason codes: the SKIP_* public constants of contracts/Exchange.sol."""

    BAD_SIGNATURE = 1
    SELF_TRADE = 2
    MARKET_MISMATCH = 3
    EXPIRED = 4
    CANCELLED = 5
    NO_CROSS = 6
    WRONG_MAKER = 7
    POST_ONLY_TAKER = 8
    TRIGGER = 9
    BOUNDS = 10
    OVERFILL = 11
    FOK = 12
    REDUCE_ONLY = 13
    MARGIN_MAKER = 14
    MARGIN_TAKER = 15
    POSITION_LIMIT = 16


BUY, SELL = 0, 1
POST_ONLY, REDUCE_ONLY, IOC, FOK = 1, 2, 4, 8
STOP_LOSS, TAKE_PROFIT = 1, 2
USD = 10**6  # one whole collateral unit in atoms (6 decimals)
DEPOSIT = 10_000 * USD
GAS = 3_000_000  # fixed gas where the block timestamp matters (no estimate against another timestamp)
ZERO32 = b"\0" * 32
ZERO_ADDRESS = "0x" + "00" * 20
ECRECOVER = "0x0000000000000000000000000000000000000001"
PPM = 10**6


# ---------------------------------------------------------------------------------------------------- helpers
async def funded(world: World, *labels: str, deposit: int = DEPOSIT) -> list[Party]:
    return [await world.trader(label, deposit=deposit) for label in labels]


def so(world: World, trader: Party, side: int, amount: int, price: int = PRICE, **kw: Any) -> ex.SignedOrder:
    """A signed order (``kw``: salt, created_at, expiry, flags, trigger_kind, trigger_price, market)."""
    return world.sign_order(world.order(trader, side, amount, price, **kw))


def order_hash(world: World, signed: ex.SignedOrder) -> bytes:
    return eip712.order_digest(world.domain, from_binding(signed.order))


def stranger(world: World, label: str) -> Party:
    return Party(label, Signer(key_for(label), world.chain_id))


def by_address(parties: Iterable[Party]) -> list[Party]:
    return sorted(parties, key=lambda p: int(p.address, 16))


async def send_as(world: World, party: Party, data: bytes, what: str) -> list[Any]:
    """Send a transaction to the exchange from ``party``; the decoded events of its receipt."""
    await world.control.set_balance(party.address, 10**24)
    receipt = await send(
        world.rpc, party.signer, to=world.deployment.exchange, data=data, decode_revert=ex.decode_revert, what=what
    )
    return [d.event for d in (ex.decode_event(log) for log in receipt.logs) if d is not None]


async def reverts(pending: Awaitable[object], expected: ex.ExchangeError | type[ex.ExchangeError]) -> Any:
    """Await ``pending``; it must revert with ``expected`` (an instance: same type and arguments; or a type)."""
    with pytest.raises(TxRevertedError) as info:
        await pending
    got = info.value.decoded
    if isinstance(expected, type):
        assert isinstance(got, expected), f"reverted with {got!r}, expected {expected.__name__}"
    else:
        assert type(got) is type(expected) and got.args == expected.args, f"reverted with {got!r}, not {expected!r}"
    return got


async def last_seq(world: World) -> int:
    return ex.decode_last_seq_result(await world.view(ex.encode_last_seq()))


async def filled(world: World, signed: ex.SignedOrder) -> int:
    return (await order_state(world, signed)).filled


async def order_state(world: World, signed: ex.SignedOrder) -> ex.GetOrderStateResult:
    o = signed.order
    return ex.decode_get_order_state_result(await world.view(ex.encode_get_order_state(o.trader, o.salt)))


async def block_timestamp(world: World, number: int) -> int:
    block = await world.rpc.call("eth_getBlockByNumber", [hex(number), False])
    return int(block["timestamp"], 16)


async def create_market(world: World, market: int, params: ex.MarketParams, price: int | None) -> None:
    await send_as(world, world.owner, ex.encode_create_market(market, params), f"createMarket({market})")
    if price is not None:
        await world.set_price(price, market=market)


def fee(amount: int, price: int, rate: int) -> int:
    return -(-amount * price * rate // (ONE * PPM))


@dataclass(frozen=True)
class State:
    filled: dict[tuple[str, int], int]
    accounts: dict[str, tuple[int, int]]
    positions: dict[tuple[str, int], tuple[int, int, int]]
    fees: int


async def state_of(world: World, orders: Sequence[ex.SignedOrder]) -> State:
    keys = sorted({(o.order.trader, o.order.salt) for o in orders})
    traders = sorted({t for t, _ in keys})
    markets = sorted({o.order.market for o in orders} | {MARKET})
    fill_counts = {}
    for trader, salt in keys:
        st = ex.decode_get_order_state_result(await world.view(ex.encode_get_order_state(trader, salt)))
        fill_counts[(trader, salt)] = int(st.filled)
    accounts = {}
    positions = {}
    for t in traders:
        a = await world.account(t)
        accounts[t] = (int(a.balance), int(a.open_mask))
        for m in markets:
            p = ex.decode_get_position_result(await world.view(ex.encode_get_position(t, m)))
            positions[(t, m)] = (p.size, p.cost, p.funding_index)
    fees = ex.decode_fees_collected_result(await world.view(ex.encode_fees_collected()))
    return State(fill_counts, accounts, positions, fees)


async def settle_checked(
    world: World,
    orders: Sequence[ex.SignedOrder],
    fills: Sequence[tuple[int, int, int]],
    expect: Sequence[Skip | None],
    *,
    gas: int | None = None,
) -> Settled:
    """Settle one batch; fill i must be skipped with ``expect[i]`` (or applied when None), the batch must take its
    seq, and the state after must be the state before plus exactly the applied fills (so skipped ones changed
    nothing: no fill counter, balance, position or fee moved for them). No funding moves in these tests."""
    assert len(fills) == len(expect)
    before = await state_of(world, orders)
    b = world.batch(orders, fills)
    settled = await world.settle(b, gas=gas)
    hashes = [order_hash(world, o) for o in orders]
    skipped = {e.fill_index: e for e in settled.of(ex.FillSkippedEvent)}
    applied = {e.fill_index: e for e in settled.filled}
    for i, ((m, t, amount), want) in enumerate(zip(fills, expect, strict=True)):
        if want is None:
            assert i in applied, f"fill {i} was skipped with {skipped[i].reason if i in skipped else None}"
            e = applied[i]
            assert (e.seq, e.maker_hash, e.taker_hash, e.amount) == (b.seq, hashes[m], hashes[t], amount)
        else:
            assert i in skipped, f"fill {i} was applied, expected a skip with {want!r}"
            s = skipped[i]
            assert s.reason == want, f"fill {i}: skipped with reason {s.reason}, expected {want!r} ({int(want)})"
            assert (s.seq, s.maker_hash, s.taker_hash) == (b.seq, hashes[m], hashes[t])
    assert len(applied) + len(skipped) == len(fills)
    (bs,) = settled.of(ex.BatchSettledEvent)
    assert (bs.seq, bs.filled, bs.skipped) == (b.seq, len(applied), len(skipped))
    assert await last_seq(world) == b.seq

    after = await state_of(world, orders)
    want_filled = dict(before.filled)
    want_balance = {t: bal for t, (bal, _) in before.accounts.items()}
    want_size = {k: size for k, (size, _, _) in before.positions.items()}
    want_fees = before.fees
    for e in applied.values():
        want_filled[(e.maker, e.maker_salt)] += e.amount
        want_filled[(e.taker, e.taker_salt)] += e.amount
        q = e.amount if e.taker_side == SELL else -e.amount  # the maker's signed amount
        want_balance[e.maker] -= q * e.price + e.maker_fee * ONE
        want_balance[e.taker] += q * e.price - e.taker_fee * ONE
        want_size[(e.maker, e.market)] += q
        want_size[(e.taker, e.market)] -= q
        want_fees += e.maker_fee + e.taker_fee
    assert after.filled == want_filled
    assert {t: bal for t, (bal, _) in after.accounts.items()} == want_balance
    assert {k: size for k, (size, _, _) in after.positions.items()} == want_size
    assert after.fees == want_fees
    touched = {e.maker for e in applied.values()} | {e.taker for e in applied.values()}
    for t, acc in before.accounts.items():
        if t not in touched:
            assert after.accounts[t] == acc, f"{t} took part only in skipped fills but its account changed"
    for k, pos in before.positions.items():
        if k[0] not in touched:
            assert after.positions[k] == pos, f"{k} took part only in skipped fills but its position changed"
    return settled


async def expect_skip(
    world: World, maker: ex.SignedOrder, taker: ex.SignedOrder, amount: int, reason: Skip, *, gas: int | None = None
) -> Settled:
    return await settle_checked(world, [maker, taker], [(0, 1, amount)], [reason], gas=gas)


async def expect_fill(
    world: World, maker: ex.SignedOrder, taker: ex.SignedOrder, amount: int, *, gas: int | None = None
) -> ex.OrderFilledEvent:
    settled = await settle_checked(world, [maker, taker], [(0, 1, amount)], [None], gas=gas)
    return settled.filled[0]


async def ecrecover(world: World, digest: bytes, sig: ex.Signature) -> str | None:
    """The EVM's ecrecover precompile (no low-s rule): the signer by plain math, None when it recovers nothing."""
    out = await call(world.rpc, ECRECOVER, digest + sig.v.to_bytes(32, "big") + sig.r + sig.s)
    return to_checksum_address(out[12:]) if len(out) == 32 else None


# ---------------------------------------------------------------------------------------------------- reason codes
async def test_skip_reason_codes_match_the_contract(world: World) -> None:
    for reason in Skip:
        name = reason.name.lower()
        encode, decode = getattr(ex, f"encode_skip_{name}"), getattr(ex, f"decode_skip_{name}_result")
        assert decode(await world.view(encode())) == reason.value, reason


# ---------------------------------------------------------------------------------------------------- order signatures
async def test_forged_order_signatures_are_skipped(world: World) -> None:
    alice, bob, carol = await funded(world, "alice", "bob", "carol")
    maker = world.order(alice, BUY, ONE, created_at=100)
    taker = world.order(bob, SELL, ONE, created_at=200)
    good_maker, good_taker = world.sign_order(maker), world.sign_order(taker)
    taker_by_carol = world.sign_order(taker, key=carol.key)  # bob's order, carol's key
    maker_by_bob = world.sign_order(maker, key=bob.key)
    # bob's genuine signature of another of his orders, pasted onto this one
    pasted = replace(good_taker, sig=world.sign_order(world.order(bob, SELL, 2 * ONE, created_at=200)).sig)
    await settle_checked(
        world,
        [good_maker, taker_by_carol, maker_by_bob, good_taker, pasted],
        [(0, 1, ONE), (2, 3, ONE), (0, 4, ONE)],
        [Skip.BAD_SIGNATURE] * 3,
    )
    await expect_fill(world, good_maker, good_taker, ONE)


async def test_high_s_order_signature_is_refused(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = so(world, alice, BUY, 2 * ONE, created_at=100), so(world, bob, SELL, 2 * ONE, created_at=200)

    def high_s(signed: ex.SignedOrder) -> ex.SignedOrder:
        s = int.from_bytes(signed.sig.s, "big")
        assert s <= SECP256K1_N // 2
        return with_sig(signed, s=(SECP256K1_N - s).to_bytes(32, "big"), v=55 - signed.sig.v)  # 27 <-> 28

    high_maker, high_taker = high_s(maker), high_s(taker)
    # the same signer by math: plain ecrecover accepts the malleated twin; the contract must not
    assert await ecrecover(world, order_hash(world, taker), high_taker.sig) == bob.address
    assert await ecrecover(world, order_hash(world, maker), high_maker.sig) == alice.address
    await settle_checked(
        world, [maker, high_taker, high_maker, taker], [(0, 1, ONE), (2, 3, ONE)], [Skip.BAD_SIGNATURE] * 2
    )
    await expect_fill(world, maker, taker, ONE)


async def test_malformed_order_signatures_are_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = so(world, alice, BUY, ONE, created_at=100), so(world, bob, SELL, ONE, created_at=200)
    v = taker.sig.v
    bad = [
        with_sig(taker, v=v - 27),  # the raw recovery id 0/1
        with_sig(taker, v=(v - 27) ^ 1),
        with_sig(taker, v=v + 2),  # 29/30
        with_sig(taker, v=255),
        with_sig(taker, v=26),
        with_sig(taker, r=ZERO32),
        with_sig(taker, s=ZERO32),
    ]
    await settle_checked(
        world, [maker, *bad], [(0, i + 1, ONE) for i in range(len(bad))], [Skip.BAD_SIGNATURE] * len(bad)
    )
    await expect_fill(world, maker, taker, ONE)


async def test_order_signed_for_another_exchange_is_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = world.order(alice, BUY, ONE, created_at=100), world.order(bob, SELL, ONE, created_at=200)
    elsewhere = eip712.Domain(chain_id=world.chain_id, verifying_contract=world.deployment.token)  # type: ignore[arg-type]
    assert elsewhere.separator != world.domain.separator
    good_maker, good_taker = world.sign_order(maker), world.sign_order(taker)
    await settle_checked(
        world,
        [good_maker, world.sign_order(taker, domain=elsewhere), world.sign_order(maker, domain=elsewhere), good_taker],
        [(0, 1, ONE), (2, 3, ONE)],
        [Skip.BAD_SIGNATURE] * 2,
    )
    await expect_fill(world, good_maker, good_taker, ONE)


async def test_order_signed_for_another_chain_is_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = world.order(alice, BUY, ONE, created_at=100), world.order(bob, SELL, ONE, created_at=200)
    other_chain = eip712.Domain(chain_id=world.chain_id + 1, verifying_contract=world.domain.verifying_contract)
    separator = ex.decode_domain_separator_result(await world.view(ex.encode_domain_separator()))
    assert separator == world.domain.separator != other_chain.separator
    good_maker, good_taker = world.sign_order(maker), world.sign_order(taker)
    await settle_checked(
        world,
        [
            good_maker,
            world.sign_order(taker, domain=other_chain),
            world.sign_order(maker, domain=other_chain),
            good_taker,
        ],
        [(0, 1, ONE), (2, 3, ONE)],
        [Skip.BAD_SIGNATURE] * 2,
    )
    await expect_fill(world, good_maker, good_taker, ONE)


# ---------------------------------------------------------------------------------------------------- amounts
async def test_fill_larger_than_remaining_is_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = so(world, alice, BUY, 2 * ONE, created_at=100), so(world, bob, SELL, 5 * ONE, created_at=200)
    await expect_skip(world, maker, taker, 3 * ONE, Skip.OVERFILL)  # the maker has only 2
    await expect_fill(world, maker, taker, 2 * ONE)  # exactly the remaining
    await expect_skip(world, maker, taker, 1, Skip.OVERFILL)  # nothing remains
    # the taker's side too: 2 against a taker of 1
    big_maker, small_taker = so(world, alice, BUY, 10 * ONE, created_at=300), so(world, bob, SELL, ONE, created_at=400)
    await expect_skip(world, big_maker, small_taker, 2 * ONE, Skip.OVERFILL)
    assert (await filled(world, maker), await filled(world, taker)) == (2 * ONE, 2 * ONE)
    assert (await filled(world, big_maker), await filled(world, small_taker)) == (0, 0)


async def test_second_of_two_fills_exceeding_the_amount_is_skipped(world: World) -> None:
    alice, bob, carol = await funded(world, "alice", "bob", "carol")
    maker = so(world, alice, SELL, 3 * ONE, created_at=100)
    t1, t2 = so(world, bob, BUY, 2 * ONE, created_at=200), so(world, carol, BUY, 2 * ONE, created_at=300)
    await settle_checked(world, [maker, t1, t2], [(0, 1, 2 * ONE), (0, 2, 2 * ONE)], [None, Skip.OVERFILL])
    assert (await filled(world, maker), await filled(world, t1), await filled(world, t2)) == (2 * ONE, 2 * ONE, 0)
    assert (await world.position(alice)).size == -2 * ONE and (await world.position(carol)).size == 0
    # what does remain still fills
    await expect_fill(world, maker, t2, ONE)
    assert await filled(world, maker) == 3 * ONE


async def test_amendment_shares_the_fill_counter_of_its_trader_and_salt(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    v1 = world.sign_order(world.order(alice, SELL, 3 * ONE, created_at=100, salt=77))
    v2 = world.sign_order(world.order(alice, SELL, 3 * ONE, created_at=100, salt=77, expiry=FAR - 1))
    assert order_hash(world, v1) != order_hash(world, v2) and v1.sig != v2.sig
    taker = so(world, bob, BUY, 10 * ONE, created_at=200)
    await expect_fill(world, v1, taker, 2 * ONE)
    assert await filled(world, v2) == 2 * ONE  # one counter for (trader, salt)
    await expect_skip(world, v2, taker, 2 * ONE, Skip.OVERFILL)  # v2 does not restart at 3
    await expect_fill(world, v2, taker, ONE)
    await expect_skip(world, v2, taker, 1, Skip.OVERFILL)
    await expect_skip(world, v1, taker, 1, Skip.OVERFILL)
    assert await filled(world, v1) == 3 * ONE and (await world.position(alice)).size == -3 * ONE


# ---------------------------------------------------------------------------------------------------- expiry
async def test_expired_orders_are_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    t = await world.now() + 1_000
    maker = so(world, alice, BUY, ONE, created_at=100, expiry=t + 1)
    taker = so(world, bob, SELL, ONE, created_at=200, expiry=t + 1)
    await world.control.set_next_block_timestamp(t)
    fill = await settle_checked(world, [maker, taker], [(0, 1, ONE)], [None], gas=GAS)
    assert await block_timestamp(world, fill.receipt.block_number) == t  # expiry t + 1 > t: live

    m_exp = so(world, alice, BUY, ONE, created_at=100, expiry=t + 1)
    t_exp = so(world, bob, SELL, ONE, created_at=200, expiry=t + 1)
    m_far, t_far = so(world, alice, BUY, ONE, created_at=100), so(world, bob, SELL, ONE, created_at=200)
    long_gone = so(world, bob, SELL, ONE, created_at=200, expiry=2_000)
    await world.control.set_next_block_timestamp(t + 1)
    skipped = await settle_checked(
        world,
        [m_exp, t_far, m_far, t_exp, long_gone],
        [(0, 1, ONE), (2, 3, ONE), (2, 4, ONE)],
        [Skip.EXPIRED] * 3,  # expiry <= block.timestamp, on the maker's side and on the taker's
        gas=GAS,
    )
    assert await block_timestamp(world, skipped.receipt.block_number) == t + 1
    await world.control.increase_time(3_600)
    await expect_fill(world, m_far, t_far, ONE, gas=GAS)


# ---------------------------------------------------------------------------------------------------- cancels
async def test_on_chain_cancel_only_by_the_trader_and_for_every_version(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    v1 = world.order(alice, BUY, 2 * ONE, created_at=100, salt=40)
    v2 = world.order(alice, BUY, ONE, created_at=100, salt=40)  # an amendment: same (trader, salt)
    other = world.order(alice, BUY, ONE, created_at=100, salt=41)
    taker = so(world, bob, SELL, 5 * ONE, created_at=200)

    await reverts(send_as(world, bob, ex.encode_cancel(to_binding(v1)), "cancel"), ex.NotTraderError())
    await reverts(send_as(world, world.owner, ex.encode_cancel(to_binding(v1)), "cancel"), ex.NotTraderError())
    assert (await order_state(world, world.sign_order(v1))).cancelled is False

    events = await send_as(world, alice, ex.encode_cancel(to_binding(v1)), "cancel")
    assert ex.OrderCancelledEvent(trader=alice.address, salt=40) in events
    assert (await order_state(world, world.sign_order(v2))).cancelled is True
    await settle_checked(
        world,
        [world.sign_order(v1), taker, world.sign_order(v2)],
        [(0, 1, ONE), (2, 1, ONE)],
        [Skip.CANCELLED, Skip.CANCELLED],
    )
    await expect_fill(world, world.sign_order(other), taker, ONE)  # another salt is untouched

    # a cancelled taker
    late = world.order(bob, SELL, ONE, created_at=300)
    await send_as(world, bob, ex.encode_cancel(to_binding(late)), "cancel")
    await expect_skip(
        world,
        world.sign_order(world.order(alice, BUY, ONE, created_at=100)),
        world.sign_order(late),
        ONE,
        Skip.CANCELLED,
    )


async def test_cancel_up_to_cancels_salts_below_only(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    below = so(world, alice, BUY, ONE, created_at=100, salt=49)
    at = so(world, alice, BUY, ONE, created_at=100, salt=50)
    taker = so(world, bob, SELL, 5 * ONE, created_at=200, salt=3)

    events = await send_as(world, alice, ex.encode_cancel_up_to(50), "cancelUpTo")
    assert ex.CancelledUpToEvent(trader=alice.address, salt=50) in events
    await expect_skip(world, below, taker, ONE, Skip.CANCELLED)  # salt s - 1
    await expect_fill(world, at, taker, ONE)  # salt s

    await reverts(send_as(world, alice, ex.encode_cancel_up_to(50), "cancelUpTo"), ex.SaltNotIncreasingError(50, 50))
    await reverts(send_as(world, alice, ex.encode_cancel_up_to(49), "cancelUpTo"), ex.SaltNotIncreasingError(50, 49))
    await reverts(send_as(world, bob, ex.encode_cancel_up_to(0), "cancelUpTo"), ex.SaltNotIncreasingError(0, 0))

    # the taker's side: bob's salt 3 falls below 4
    await send_as(world, bob, ex.encode_cancel_up_to(4), "cancelUpTo")
    await expect_skip(world, so(world, alice, BUY, ONE, created_at=100, salt=51), taker, ONE, Skip.CANCELLED)
    await expect_fill(
        world,
        so(world, alice, BUY, ONE, created_at=100, salt=52),
        so(world, bob, SELL, ONE, created_at=200, salt=4),
        ONE,
    )


# ---------------------------------------------------------------------------------------------------- matching
async def test_self_trade_is_skipped(world: World) -> None:
    (alice,) = await funded(world, "alice")
    maker, taker = so(world, alice, BUY, ONE, created_at=100), so(world, alice, SELL, ONE, created_at=200)
    await expect_skip(world, maker, taker, ONE, Skip.SELF_TRADE)
    await settle_checked(world, [maker], [(0, 0, ONE)], [Skip.SELF_TRADE])  # one order on both sides


async def test_maker_must_be_the_earlier_order_by_created_at_then_hash(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    buy, sell = so(world, alice, BUY, ONE, created_at=100), so(world, bob, SELL, ONE, created_at=200)
    await expect_skip(world, sell, buy, ONE, Skip.WRONG_MAKER)  # the later createdAt as maker
    await expect_fill(world, buy, sell, ONE)

    a, b = so(world, alice, BUY, ONE, created_at=300), so(world, bob, SELL, ONE, created_at=300)
    lo, hi = sorted((a, b), key=lambda o: order_hash(world, o))
    await expect_skip(world, hi, lo, ONE, Skip.WRONG_MAKER)  # equal createdAt, the larger hash as maker
    await expect_fill(world, lo, hi, ONE)


async def test_fill_executes_at_the_makers_price(world: World) -> None:
    alice, bob, carol, dave = await funded(world, "alice", "bob", "carol", "dave")
    buy = so(world, alice, BUY, ONE, 2_010 * USD, created_at=100)
    sell = so(world, bob, SELL, ONE, 2_000 * USD, created_at=200)
    await expect_skip(world, sell, buy, ONE, Skip.WRONG_MAKER)  # the proposer cannot pick the cheaper price
    f = await expect_fill(world, buy, sell, ONE)
    assert (f.maker, f.taker, f.price, f.taker_side) == (alice.address, bob.address, 2_010 * USD, SELL)
    assert (f.maker_fee, f.taker_fee) == (fee(ONE, 2_010 * USD, 200), fee(ONE, 2_010 * USD, 500))
    assert (await world.position(alice)).cost == ONE * 2_010 * USD
    assert (await world.position(bob)).cost == -ONE * 2_010 * USD
    assert (await world.account(alice)).balance == (DEPOSIT - f.maker_fee) * ONE - ONE * 2_010 * USD
    assert (await world.account(bob)).balance == (DEPOSIT - f.taker_fee) * ONE + ONE * 2_010 * USD

    sell_maker = so(world, carol, SELL, ONE, 1_990 * USD, created_at=300)
    buy_taker = so(world, dave, BUY, ONE, 2_000 * USD, created_at=400)
    f = await expect_fill(world, sell_maker, buy_taker, ONE)
    assert (f.price, f.taker_side) == (1_990 * USD, BUY)
    assert (await world.position(dave)).cost == ONE * 1_990 * USD


async def test_orders_that_do_not_cross_are_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    await settle_checked(
        world,
        [
            so(world, alice, BUY, ONE, PRICE - 1, created_at=100),
            so(world, bob, SELL, ONE, PRICE, created_at=200),
            so(world, bob, SELL, ONE, PRICE + 1, created_at=100),
            so(world, alice, BUY, ONE, PRICE, created_at=200),
        ],
        [(0, 1, ONE), (2, 3, ONE)],
        [Skip.NO_CROSS, Skip.NO_CROSS],
    )
    await expect_fill(world, so(world, alice, BUY, ONE, created_at=100), so(world, bob, SELL, ONE, created_at=200), ONE)


async def test_market_mismatch_is_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    await create_market(world, 3, default_market_params(), None)  # exists, but has no oracle price yet
    await settle_checked(
        world,
        [
            so(world, alice, BUY, ONE, created_at=100),
            so(world, bob, BUY, ONE, created_at=200),  # same side
            so(world, alice, SELL, ONE, created_at=100),
            so(world, bob, SELL, ONE, created_at=200),  # same side
            so(world, bob, SELL, ONE, created_at=200, market=7),  # another (unknown) market
            so(world, alice, BUY, ONE, created_at=100, market=7),
            so(world, bob, 2, ONE, created_at=200),  # side 2
            so(world, alice, BUY, ONE, created_at=100, market=3),
            so(world, bob, SELL, ONE, created_at=200, market=3),
        ],
        [(0, 1, ONE), (2, 3, ONE), (0, 4, ONE), (5, 4, ONE), (0, 6, ONE), (7, 8, ONE)],
        [Skip.MARKET_MISMATCH] * 6,
    )
    await expect_fill(world, so(world, alice, BUY, ONE, created_at=100), so(world, bob, SELL, ONE, created_at=200), ONE)


async def test_post_only_may_only_be_the_maker(world: World) -> None:
    alice, bob, carol = await funded(world, "alice", "bob", "carol")
    po_maker = so(world, alice, BUY, ONE, created_at=100, flags=POST_ONLY)
    sell = so(world, bob, SELL, 2 * ONE, created_at=200)
    await expect_fill(world, po_maker, sell, ONE)
    po_taker = so(world, carol, BUY, ONE, created_at=300, flags=POST_ONLY)
    await expect_skip(world, sell, po_taker, ONE, Skip.POST_ONLY_TAKER)
    await expect_fill(world, sell, so(world, carol, BUY, ONE, created_at=300), ONE)


async def test_fill_or_kill_fills_only_in_full(world: World) -> None:
    alice, bob, carol, dave = await funded(world, "alice", "bob", "carol", "dave")
    maker = so(world, alice, BUY, 5 * ONE, created_at=100)
    fok_taker = so(world, bob, SELL, 2 * ONE, created_at=200, flags=FOK)
    await expect_skip(world, maker, fok_taker, ONE, Skip.FOK)
    await expect_fill(world, maker, fok_taker, 2 * ONE)

    fok_maker = so(world, carol, SELL, 2 * ONE, created_at=300, flags=FOK)
    taker = so(world, dave, BUY, 5 * ONE, created_at=400)
    await expect_skip(world, fok_maker, taker, ONE, Skip.FOK)
    # two fills that together make the whole amount are still partial fills
    await settle_checked(world, [fok_maker, taker], [(0, 1, ONE), (0, 1, ONE)], [Skip.FOK, Skip.FOK])
    await expect_fill(world, fok_maker, taker, 2 * ONE)


async def test_reduce_only_may_not_open_increase_or_flip(world: World) -> None:
    alice, bob, carol, dave = await funded(world, "alice", "bob", "carol", "dave")
    await expect_fill(
        world, so(world, alice, BUY, 2 * ONE, created_at=10), so(world, bob, SELL, 2 * ONE, created_at=20), 2 * ONE
    )
    # alice is long 2, bob short 2, carol flat; dave takes the other side
    d_buy, d_sell = so(world, dave, BUY, 10 * ONE, created_at=300), so(world, dave, SELL, 10 * ONE, created_at=300)
    carol_sell = so(world, carol, SELL, ONE, created_at=400, flags=REDUCE_ONLY)  # no position
    alice_sell3 = so(world, alice, SELL, 3 * ONE, created_at=400, flags=REDUCE_ONLY)  # would flip long 2 to short 1
    alice_buy = so(world, alice, BUY, ONE, created_at=400, flags=REDUCE_ONLY)  # same direction
    bob_sell_maker = so(world, bob, SELL, ONE, created_at=250, flags=REDUCE_ONLY)  # same direction, as maker
    d_buy_late = so(world, dave, BUY, 10 * ONE, created_at=500)
    bob_buy3 = so(world, bob, BUY, 3 * ONE, created_at=400, flags=REDUCE_ONLY)  # would flip short 2 to long 1
    carol_buy = so(world, carol, BUY, ONE, created_at=400, flags=REDUCE_ONLY)  # no position
    await settle_checked(
        world,
        [d_buy, d_sell, carol_sell, alice_sell3, alice_buy, bob_sell_maker, d_buy_late, bob_buy3, carol_buy],
        [(0, 2, ONE), (0, 3, 3 * ONE), (1, 4, ONE), (5, 6, ONE), (1, 7, 3 * ONE), (1, 8, ONE)],
        [Skip.REDUCE_ONLY] * 6,
    )
    # valid: reducing, down to exactly flat, then nothing more
    await expect_fill(world, d_buy, alice_sell3, ONE)
    await expect_fill(world, d_buy, alice_sell3, ONE)
    assert (await world.position(alice)).size == 0
    await expect_skip(world, d_buy, alice_sell3, ONE, Skip.REDUCE_ONLY)
    bob_buy_maker = so(world, bob, BUY, 2 * ONE, created_at=250, flags=REDUCE_ONLY)
    await expect_fill(world, bob_buy_maker, so(world, dave, SELL, 5 * ONE, created_at=500), 2 * ONE)
    assert (await world.position(bob)).size == 0


async def test_triggers_are_checked_against_the_oracle_price(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    m_buy, m_sell = so(world, bob, BUY, 100 * ONE, created_at=100), so(world, bob, SELL, 100 * ONE, created_at=100)

    def trig(side: int, kind: int, trigger: int, created_at: int = 200) -> ex.SignedOrder:
        return so(world, alice, side, ONE, created_at=created_at, trigger_kind=kind, trigger_price=trigger)

    def against(i: int, o: ex.SignedOrder) -> tuple[int, int, int]:
        return (1 if o.order.side == BUY else 0, i, ONE)  # the trigger order takes from bob's opposite order

    # oracle at PRICE: stop-loss buy needs p >= t, sell p <= t; take-profit buy p <= t, sell p >= t
    unmet = [
        trig(BUY, STOP_LOSS, PRICE + 1),
        trig(SELL, STOP_LOSS, PRICE - 1),
        trig(BUY, TAKE_PROFIT, PRICE - 1),
        trig(SELL, TAKE_PROFIT, PRICE + 1),
    ]
    maker_unmet = trig(BUY, STOP_LOSS, PRICE + 1, created_at=50)  # a trigger on the maker's side
    late_sell = so(world, bob, SELL, ONE, created_at=300)
    await settle_checked(
        world,
        [m_buy, m_sell, *unmet, maker_unmet, late_sell],
        [*(against(i + 2, o) for i, o in enumerate(unmet)), (6, 7, ONE)],
        [Skip.TRIGGER] * 5,
    )
    met = [
        trig(BUY, STOP_LOSS, PRICE),  # boundaries hold
        trig(SELL, STOP_LOSS, PRICE),
        trig(BUY, TAKE_PROFIT, PRICE),
        trig(SELL, TAKE_PROFIT, PRICE),
        trig(BUY, STOP_LOSS, PRICE - 1),
        trig(SELL, STOP_LOSS, PRICE + 1),
        trig(BUY, TAKE_PROFIT, PRICE + 1),
        trig(SELL, TAKE_PROFIT, PRICE - 1),
    ]
    await settle_checked(world, [m_buy, m_sell, *met], [against(i + 2, o) for i, o in enumerate(met)], [None] * 8)

    # the oracle moves: triggers that held no longer do, others now do
    sl_sell, tp_buy = trig(SELL, STOP_LOSS, PRICE), trig(BUY, TAKE_PROFIT, PRICE)
    sl_buy, tp_sell = trig(BUY, STOP_LOSS, PRICE + 50 * USD), trig(SELL, TAKE_PROFIT, PRICE + 50 * USD)
    await world.set_price(PRICE + 50 * USD)
    await settle_checked(
        world, [m_buy, m_sell, sl_sell, tp_buy], [against(2, sl_sell), against(3, tp_buy)], [Skip.TRIGGER] * 2
    )
    await settle_checked(world, [m_buy, m_sell, sl_buy, tp_sell], [against(2, sl_buy), against(3, tp_sell)], [None] * 2)


# ---------------------------------------------------------------------------------------------------- bounds
async def test_orders_outside_the_market_bounds_are_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    params = replace(default_market_params(tick=100, min_size=1_000), max_order_size=10**12)
    await create_market(world, 2, params, PRICE)
    assert PRICE % 100 == 0 and params.max_price % 100 == 0

    def on2(party: Party, side: int, amount: int, price: int = PRICE, **kw: Any) -> ex.SignedOrder:
        return so(world, party, side, amount, price, market=2, **kw)

    buy, sell = on2(alice, BUY, 10_000, created_at=100), on2(bob, SELL, 10_000, created_at=200)
    cases = [
        (on2(alice, BUY, 10_000, PRICE + 1, created_at=100), sell, 1_000),  # price off the tick
        (buy, on2(bob, SELL, 10_000, PRICE - 1, created_at=200), 1_000),  # price off the tick (taker)
        (buy, on2(bob, SELL, 999, created_at=200), 999),  # amount below minSize
        (on2(alice, BUY, 10**12 + 1, created_at=100), sell, 1_000),  # amount above maxOrderSize
        (on2(alice, BUY, 10_000, params.max_price + 100, created_at=100), sell, 1_000),  # price above maxPrice
        (on2(bob, SELL, 10_000, 0, created_at=100), on2(alice, BUY, 10_000, created_at=200), 1_000),  # price 0
        (buy, on2(bob, SELL, 10_000, created_at=200, flags=16), 1_000),  # unknown flag bit
        (on2(alice, BUY, 10_000, created_at=100, flags=128 | POST_ONLY), sell, 1_000),
        (buy, on2(bob, SELL, 10_000, created_at=200, trigger_kind=3, trigger_price=PRICE), 1_000),  # unknown trigger
        (buy, sell, 0),  # a fill of nothing
    ]
    orders = [o for m, t, _ in cases for o in (m, t)]
    await settle_checked(
        world, orders, [(2 * i, 2 * i + 1, a) for i, (_, _, a) in enumerate(cases)], [Skip.BOUNDS] * len(cases)
    )
    # within bounds: on the tick, at minSize; the known flags (IOC here) are fine
    await expect_fill(world, buy, on2(bob, SELL, 1_000, created_at=200, flags=IOC), 1_000)
    await expect_fill(
        world, so(world, alice, BUY, ONE, created_at=100), so(world, bob, SELL, ONE, created_at=200, flags=IOC), ONE
    )


async def test_position_limit_is_skipped(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    await create_market(world, 4, replace(default_market_params(), max_position=3 * ONE), PRICE)
    maker, taker = (
        so(world, alice, BUY, 5 * ONE, created_at=100, market=4),
        so(world, bob, SELL, 5 * ONE, created_at=200, market=4),
    )
    await expect_skip(world, maker, taker, 4 * ONE, Skip.POSITION_LIMIT)
    await expect_fill(world, maker, taker, 3 * ONE)
    await expect_skip(world, maker, taker, 1, Skip.POSITION_LIMIT)


# ---------------------------------------------------------------------------------------------------- margin
async def test_margin_breach_is_skipped_and_the_rest_of_the_batch_applies(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    ghost, ghost2 = await world.trader("ghost"), await world.trader("ghost2")  # no collateral
    orders = [
        so(world, alice, BUY, ONE, created_at=100),
        so(world, ghost, SELL, ONE, created_at=200),  # unfunded taker
        so(world, ghost, BUY, ONE, created_at=50),  # unfunded maker
        so(world, bob, SELL, ONE, created_at=300),
        so(world, ghost, BUY, ONE, created_at=50),
        so(world, ghost2, SELL, ONE, created_at=300),  # both unfunded: the maker is checked first
        so(world, alice, BUY, ONE, created_at=100),
        so(world, bob, SELL, ONE, created_at=200),
    ]
    settled = await settle_checked(
        world,
        orders,
        [(0, 1, ONE), (2, 3, ONE), (4, 5, ONE), (6, 7, ONE)],
        [Skip.MARGIN_TAKER, Skip.MARGIN_MAKER, Skip.MARGIN_MAKER, None],
    )
    assert world.seq == 1 == settled.of(ex.BatchSettledEvent)[0].seq  # the batch took its seq
    assert (await world.position(alice)).size == ONE and (await world.position(ghost)).size == 0
    assert (await world.account(ghost)).balance == 0


# ---------------------------------------------------------------------------------------------------- quorum
async def test_quorum_needs_threshold_signatures(world: World) -> None:
    r = world.relayers
    b = world.batch([], [])
    proposer = r[(b.seq + b.round) % len(r)]
    await reverts(world.settle(b, world.quorum(b, r[:2])), ex.NotEnoughSignaturesError(2, 3))
    await reverts(world.settle(b, world.quorum(b, [proposer])), ex.NotEnoughSignaturesError(1, 3))
    await reverts(world.settle(b, []), ex.NotEnoughSignaturesError(0, 3))
    assert await last_seq(world) == 0
    await world.settle(b, world.quorum(b, by_address([proposer, *(p for p in r if p is not proposer)][:3])))
    b2 = world.batch([], [])
    await world.settle(b2, world.quorum(b2, r))  # all four
    assert await last_seq(world) == 2


async def test_quorum_signers_must_be_unique_and_ascending(world: World) -> None:
    r0, r1, r2, r3 = world.relayers
    b = world.batch([], [])
    await reverts(world.settle(b, world.quorum(b, [r0, r0, r1])), ex.SignersNotAscendingError(1))
    await reverts(world.settle(b, world.quorum(b, [r0, r1, r1])), ex.SignersNotAscendingError(2))
    await reverts(world.settle(b, world.quorum(b, [r0, r1, r1, r1])), ex.SignersNotAscendingError(2))
    await reverts(world.settle(b, world.quorum(b, [r1, r0, r2])), ex.SignersNotAscendingError(1))
    await reverts(world.settle(b, world.quorum(b, [r0, r2, r1])), ex.SignersNotAscendingError(2))
    await reverts(world.settle(b, world.quorum(b, [r3, r2, r1])), ex.SignersNotAscendingError(1))
    await world.settle(b, world.quorum(b, [r0, r2, r3]))


async def test_quorum_signers_outside_the_set_are_refused(world: World) -> None:
    r0, r1, r2, _ = world.relayers
    alice = await world.trader("alice")
    b = world.batch([], [])
    for outsider in (alice, stranger(world, "not a relayer")):
        signers = by_address([r0, r1, outsider])
        await reverts(world.settle(b, world.quorum(b, signers)), ex.SignerNotInSetError(outsider.address))
        # enough members do not excuse a stranger's signature
        signers = by_address([r0, r1, r2, outsider])
        await reverts(world.settle(b, world.quorum(b, signers)), ex.SignerNotInSetError(outsider.address))
    # a member's signature of another batch recovers to some other address
    other = world.batch([], [], round_=1)
    sigs = [*world.quorum(b, [r0, r1]), *world.quorum(other, [r2])]
    await reverts(world.settle(b, sigs), ex.ExchangeError)
    assert await last_seq(world) == 0


async def test_quorum_signature_hygiene(world: World) -> None:
    r0, r1, r2, _ = world.relayers
    b = world.batch([], [])
    good = world.quorum(b, [r0, r1, r2])
    s = int.from_bytes(good[1].s, "big")
    high = replace(good[1], s=(SECP256K1_N - s).to_bytes(32, "big"), v=55 - good[1].v)
    assert await ecrecover(world, world.batch_digest(b), high) == r1.address
    for bad in (high, replace(good[1], v=good[1].v - 27), replace(good[1], v=29), replace(good[1], r=ZERO32)):
        await reverts(world.settle(b, [good[0], bad, good[2]]), ex.BadQuorumSignatureError(1))
    await world.settle(b, good)


async def test_relayer_set_change_applies_from_the_batch_after_next(world: World) -> None:
    r0, r1, r2, r3 = world.relayers
    x, y = stranger(world, "relayer-new-x"), stranger(world, "relayer-new-y")
    await world.settle(world.batch([], []))  # batch N = 1, under version 1
    events = await send_as(
        world, world.owner, ex.encode_set_relayers([x.address, y.address], [r0.address], 4), "setRelayers"
    )
    (updated,) = [e for e in events if isinstance(e, ex.RelayersUpdatedEvent)]
    new_set = {r1.address, r2.address, r3.address, x.address, y.address}
    assert (updated.version, set(updated.members), updated.threshold) == (2, new_set, 4)
    relayers = ex.decode_get_relayers_result(await world.view(ex.encode_get_relayers()))
    assert (set(relayers.output0), relayers.threshold, relayers.version) == (new_set, 4, 2)
    assert ex.decode_active_set_version_result(await world.view(ex.encode_active_set_version())) == 1

    # batch N + 1: still the old version, the old signers (the removed r0 included) and the old threshold
    b = world.batch([], [], set_version=2)
    await reverts(world.settle(b, world.quorum(b, by_address([r1, r2, x, y]))), ex.WrongSetVersionError(1, 2))
    b = world.batch([], [], set_version=1)
    await reverts(world.settle(b, world.quorum(b, by_address([r1, r2, x]))), ex.SignerNotInSetError(x.address))
    settled = await world.settle(b, world.quorum(b, [r0, r1, r2]))
    assert settled.of(ex.BatchSettledEvent)[0].set_version == 1
    assert ex.decode_active_set_version_result(await world.view(ex.encode_active_set_version())) == 2

    # batch N + 2: the new version, new members and threshold 4
    b = world.batch([], [], set_version=1)
    await reverts(world.settle(b, world.quorum(b, [r0, r1, r2])), ex.WrongSetVersionError(2, 1))
    b = world.batch([], [], set_version=2)
    await reverts(world.settle(b, world.quorum(b, by_address([r0, r1, r2, r3]))), ex.SignerNotInSetError(r0.address))
    await reverts(world.settle(b, world.quorum(b, by_address([r1, r2, x]))), ex.NotEnoughSignaturesError(3, 4))
    settled = await world.settle(b, world.quorum(b, by_address([r1, r2, x, y])))
    assert settled.of(ex.BatchSettledEvent)[0].set_version == 2
    world.set_version = 2


async def test_invalid_relayer_sets_are_refused(world: World) -> None:
    r0, r1, r2, r3 = (p.address for p in world.relayers)
    x = stranger(world, "relayer-new-x").address

    async def set_relayers(adds: list[str], removes: list[str], threshold: int, who: Party | None = None) -> Any:
        data = ex.encode_set_relayers(adds, removes, threshold)
        return await send_as(world, who or world.owner, data, "setRelayers")

    cases = [
        (([], [r0, r1, r2, r3], 1), 5),  # empty set
        (([], [], 2), 7),  # 2 of 4 is not a strict majority
        (([], [], 0), 7),
        (([x], [r0], 2), 7),
        (([], [], 5), 7),  # more than n
        (([x, x], [], 3), 4),  # duplicate add
        (([r1], [], 3), 4),  # already a member
        (([], [x], 3), 1),  # remove of a non-member
        (([], [r0, r0], 3), 2),  # duplicate remove
        (([ZERO_ADDRESS], [], 3), 3),
    ]
    for (adds, removes, threshold), reason in cases:
        await reverts(set_relayers(adds, removes, threshold), ex.InvalidRelayerSetError(reason))
    alice = await world.trader("alice")
    await reverts(set_relayers([x], [], 3, who=alice), ex.NotOwnerError())
    await reverts(set_relayers([x], [], 3, who=world.relayers[0]), ex.NotOwnerError())
    assert ex.decode_set_version_result(await world.view(ex.encode_set_version())) == 1
    # the boundaries that are valid: t = n, and the smallest strict majority
    await set_relayers([], [], 4)
    await set_relayers([x], [], 3)  # 3 of 5
    assert ex.decode_set_version_result(await world.view(ex.encode_set_version())) == 3


# ---------------------------------------------------------------------------------------------------- sequence
async def test_genesis_is_seq_1_with_a_zero_prev_batch_hash(world: World) -> None:
    assert await last_seq(world) == 0
    assert ex.decode_last_batch_hash_result(await world.view(ex.encode_last_batch_hash())) == ZERO32
    parent = keccak(b"no such batch")
    await reverts(world.settle(world.batch([], [], prev=parent)), ex.BadPrevBatchHashError(ZERO32, parent))
    await reverts(world.settle(world.batch([], [], seq=0)), ex.BadSeqError(1, 0))
    genesis = world.batch([], [])
    assert (genesis.seq, genesis.prev_batch_hash) == (1, ZERO32)
    settled = await world.settle(genesis)
    (bs,) = settled.of(ex.BatchSettledEvent)
    assert (bs.seq, bs.round, bs.batch_hash) == (1, 0, settled.digest)
    assert ex.decode_last_batch_hash_result(await world.view(ex.encode_last_batch_hash())) == settled.digest


async def test_replayed_and_skipped_seq_are_refused(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = so(world, alice, BUY, 5 * ONE, created_at=100), so(world, bob, SELL, 5 * ONE, created_at=200)
    b1 = world.batch([maker, taker], [(0, 1, ONE)])
    sigs1 = world.quorum(b1)
    await world.settle(b1, sigs1)
    await reverts(world.settle(b1, sigs1), ex.BadSeqError(2, 1))  # the same certificate again
    assert await filled(world, maker) == ONE
    await reverts(world.settle(world.batch([], [], seq=3)), ex.BadSeqError(2, 3))
    await reverts(world.settle(world.batch([], [], seq=2**64 - 1)), ex.BadSeqError(2, 2**64 - 1))
    await world.settle(world.batch([maker, taker], [(0, 1, ONE)]))
    assert await last_seq(world) == 2 and await filled(world, maker) == 2 * ONE


async def test_prev_batch_hash_must_name_the_batch_that_landed(world: World) -> None:
    round0, round1 = world.batch([], [], round_=0), world.batch([], [], round_=1)  # two certificates for seq 1
    landed = await world.settle(round0)
    await reverts(world.settle(round1), ex.BadSeqError(2, 1))
    on_loser = world.batch([], [], prev=world.batch_digest(round1))
    await reverts(world.settle(on_loser), ex.BadPrevBatchHashError(landed.digest, world.batch_digest(round1)))
    await reverts(world.settle(world.batch([], [], prev=ZERO32)), ex.BadPrevBatchHashError(landed.digest, ZERO32))
    await world.settle(world.batch([], []))
    assert await last_seq(world) == 2


async def test_stale_deadline_is_refused(world: World) -> None:
    now = await world.now()
    got = await reverts(world.settle(world.batch([], [], deadline=now - 1)), ex.DeadlinePassedError)
    assert got.deadline == now - 1 and got.timestamp > now - 1
    # deadline == block.timestamp is still on time
    t = now + 100
    await world.control.set_next_block_timestamp(t)
    settled = await world.settle(world.batch([], [], deadline=t), gas=GAS)
    assert await block_timestamp(world, settled.receipt.block_number) == t
    # one second late, mined: refused
    await world.control.set_next_block_timestamp(t + 10)
    with pytest.raises(TxRevertedError) as info:
        await world.settle(world.batch([], [], deadline=t + 9), gas=GAS)
    assert info.value.receipt is not None and info.value.receipt.status == 0
    assert await last_seq(world) == 1


async def test_wrong_set_version_is_refused(world: World) -> None:
    for version in (0, 2, 2**64 - 1):
        await reverts(world.settle(world.batch([], [], set_version=version)), ex.WrongSetVersionError(1, version))
    await world.settle(world.batch([], [], set_version=1))


async def test_fill_index_out_of_range_reverts_the_batch(world: World) -> None:
    alice, bob = await funded(world, "alice", "bob")
    maker, taker = so(world, alice, BUY, 5 * ONE, created_at=100), so(world, bob, SELL, 5 * ONE, created_at=200)
    orders = [maker, taker]
    await reverts(world.settle(world.batch(orders, [(0, 1, ONE), (0, 2, ONE)])), ex.FillIndexOutOfRangeError(1))
    await reverts(world.settle(world.batch(orders, [(2, 1, ONE)])), ex.FillIndexOutOfRangeError(0))
    await reverts(world.settle(world.batch([], [(0, 0, ONE)])), ex.FillIndexOutOfRangeError(0))
    assert await last_seq(world) == 0 and await filled(world, maker) == 0
    await settle_checked(world, orders, [(0, 1, ONE)], [None])


# ---------------------------------------------------------------------------------------------------- hashes
def _uint(rng: random.Random, bits: int) -> int:
    roll = rng.random()
    if roll < 0.1:
        return 0
    if roll < 0.2:
        return (1 << bits) - 1
    if roll < 0.35:
        return rng.randrange(256)
    return rng.getrandbits(bits)


def _random_order(rng: random.Random) -> ex.Order:
    return ex.Order(
        trader=to_checksum_address(rng.randbytes(20)),
        market=_uint(rng, 32),
        side=_uint(rng, 8),
        price=_uint(rng, 64),
        amount=_uint(rng, 64),
        salt=_uint(rng, 64),
        created_at=_uint(rng, 32),
        expiry=_uint(rng, 32),
        flags=_uint(rng, 8),
        trigger_kind=_uint(rng, 8),
        trigger_price=_uint(rng, 64),
    )


async def test_hash_order_matches_the_python_digest(world: World) -> None:
    rng = random.Random(0x0D3E)
    for _ in range(25):
        order = _random_order(rng)
        got = ex.decode_hash_order_result(await world.view(ex.encode_hash_order(order)))
        assert got == eip712.order_digest(world.domain, from_binding(order)), order


async def test_hash_batch_matches_the_python_digest(world: World) -> None:
    rng = random.Random(0xBA7C)
    for _ in range(25):
        orders = tuple(
            ex.SignedOrder(
                order=_random_order(rng), sig=ex.Signature(r=rng.randbytes(32), s=rng.randbytes(32), v=_uint(rng, 8))
            )
            for _ in range(rng.randrange(5))
        )
        fills = tuple(ex.Fill(_uint(rng, 16), _uint(rng, 16), _uint(rng, 64)) for _ in range(rng.randrange(5)))
        b = ex.Batch(
            seq=_uint(rng, 64),
            round=_uint(rng, 32),
            prev_batch_hash=rng.randbytes(32),
            set_version=_uint(rng, 64),
            deadline=_uint(rng, 32),
            orders=orders,
            fills=fills,
        )
        want = eip712.batch_digest(
            world.domain,
            b.seq,
            b.round,
            b.prev_batch_hash,
            b.set_version,
            b.deadline,
            [eip712.order_digest(world.domain, from_binding(o.order)) for o in orders],
            [(f.maker, f.taker, f.amount) for f in fills],
        )
        got = ex.decode_hash_batch_result(await world.view(ex.encode_hash_batch(b)))
        assert got == want, b
