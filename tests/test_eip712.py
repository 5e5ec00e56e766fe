"""EIP-712 digests agree with eth-account's reference encoder; signatures follow the contract's rules exactly."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import coincurve
import pytest
from eth_account import Account as EthAccount
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.address import to_checksum_address as reference_checksum
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from relayer import eip712
from relayer.eip712 import Domain, EncodingError, InvalidOrderError, SignatureError
from relayer.keys import SECP256K1_N, RelayerKey
from relayer.types import Address, Fill, MarketId, Order, OrderFlag, Salt, Side, TriggerKind

ROOT = Path(__file__).resolve().parent.parent
EXCHANGE = Address("0x5FbDB2315678afecb367f032d93F642f64180aa3")
DOMAIN = Domain(31337, EXCHANGE)
TRADER_SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
TRADER = Address("0x2c7536E3605D9C16a7a3D7b1898e529396a65c23")  # eth-account's documented example key
FEW = settings(max_examples=30, deadline=None)

# The reference side builds eth-account messages from its own field tables, not from relayer.eip712.
REFERENCE_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Order": [
        {"name": "trader", "type": "address"},
        {"name": "market", "type": "uint32"},
        {"name": "side", "type": "uint8"},
        {"name": "price", "type": "uint64"},
        {"name": "amount", "type": "uint64"},
        {"name": "salt", "type": "uint64"},
        {"name": "createdAt", "type": "uint32"},
        {"name": "expiry", "type": "uint32"},
        {"name": "flags", "type": "uint8"},
        {"name": "triggerKind", "type": "uint8"},
        {"name": "triggerPrice", "type": "uint64"},
    ],
    "Cancel": [{"name": "trader", "type": "address"}, {"name": "salt", "type": "uint64"}],
    "CancelUpTo": [{"name": "trader", "type": "address"}, {"name": "salt", "type": "uint64"}],
    "Fill": [
        {"name": "maker", "type": "uint16"},
        {"name": "taker", "type": "uint16"},
        {"name": "amount", "type": "uint64"},
    ],
    "Batch": [
        {"name": "seq", "type": "uint64"},
        {"name": "round", "type": "uint32"},
        {"name": "prevBatchHash", "type": "bytes32"},
        {"name": "setVersion", "type": "uint64"},
        {"name": "deadline", "type": "uint32"},
        {"name": "orders", "type": "bytes32[]"},
        {"name": "fills", "type": "Fill[]"},
    ],
}
STRUCTS_OF = {"Order": ["Order"], "Cancel": ["Cancel"], "CancelUpTo": ["CancelUpTo"], "Batch": ["Batch", "Fill"]}


def full_message(domain: Domain, primary: str, message: dict[str, Any]) -> dict[str, Any]:
    types = {name: REFERENCE_TYPES[name] for name in ["EIP712Domain", *STRUCTS_OF[primary]]}
    return {
        "types": types,
        "primaryType": primary,
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": message,
    }


def reference_digest(domain: Domain, primary: str, message: dict[str, Any]) -> bytes:
    return bytes(_hash_eip191_message(encode_typed_data(full_message=full_message(domain, primary, message))))


def order_message(order: Order) -> dict[str, Any]:
    return {
        "trader": order.trader,
        "market": int(order.market),
        "side": int(order.side),
        "price": order.price,
        "amount": order.amount,
        "salt": int(order.salt),
        "createdAt": order.created_at,
        "expiry": order.expiry,
        "flags": int(order.flags),
        "triggerKind": int(order.trigger_kind),
        "triggerPrice": order.trigger_price,
    }


addresses = st.binary(min_size=20, max_size=20).filter(any).map(lambda raw: Address(reference_checksum(raw)))
uint = st.integers  # readability below


@st.composite
def orders(draw: st.DrawFn) -> Order:
    created_at = draw(uint(0, 2**32 - 2))
    kind = draw(st.sampled_from(TriggerKind))
    return Order(
        trader=draw(addresses),
        market=MarketId(draw(uint(0, 63))),
        side=draw(st.sampled_from(Side)),
        price=draw(uint(1, 2**62)),
        amount=draw(uint(1, 2**63 - 1)),
        salt=Salt(draw(uint(0, 2**64 - 1))),
        created_at=created_at,
        expiry=draw(uint(created_at + 1, 2**32 - 1)),
        flags=OrderFlag(draw(uint(0, 15))),
        trigger_kind=kind,
        trigger_price=0 if kind is TriggerKind.NONE else draw(uint(1, 2**62)),
    )


domains = st.builds(Domain, uint(1, 2**64), addresses)
hashes = st.binary(min_size=32, max_size=32)
fills = st.builds(Fill, uint(0, 2**16 - 1), uint(0, 2**16 - 1), uint(1, 2**64 - 1))

SAMPLE = Order(
    trader=TRADER,
    market=MarketId(3),
    side=Side.SELL,
    price=2_500_000_000,
    amount=150_000_000,
    salt=Salt(42),
    created_at=1_700_000_000,
    expiry=1_700_003_600,
    flags=OrderFlag.REDUCE_ONLY | OrderFlag.IOC,
    trigger_kind=TriggerKind.STOP_LOSS,
    trigger_price=2_400_000_000,
)


# --- the type strings are units.md's, character for character ----------------------------------------------------


def test_type_strings_are_the_ones_in_units_md() -> None:
    text = (ROOT / "docs" / "units.md").read_text(encoding="utf-8")
    section = text.split("## EIP-712", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block is not None
    assert block.group(1).splitlines() == [
        eip712.ORDER_TYPE,
        eip712.CANCEL_TYPE,
        eip712.CANCEL_UP_TO_TYPE,
        eip712.FILL_TYPE,
        eip712.BATCH_TYPE,
    ]
    assert f"`{eip712.DOMAIN_TYPE}`" in section
    assert f'`"{eip712.DOMAIN_NAME}"`' in section and f'`"{eip712.DOMAIN_VERSION}"`' in section


def test_typehashes() -> None:
    assert keccak(text=eip712.ORDER_TYPE) == eip712.ORDER_TYPEHASH
    # EIP-712 encodeType appends the referenced struct types, sorted by name, to the primary type.
    assert (
        keccak(
            text="Batch(uint64 seq,uint32 round,bytes32 prevBatchHash,uint64 setVersion,uint32 deadline,"
            "bytes32[] orders,Fill[] fills)Fill(uint16 maker,uint16 taker,uint64 amount)"
        )
        == eip712.BATCH_TYPEHASH
    )


@FEW
@given(domains)
def test_domain_separator_matches_eth_account(domain: Domain) -> None:
    signable = encode_typed_data(full_message=full_message(domain, "Cancel", {"trader": TRADER, "salt": 1}))
    assert signable.header == domain.separator


def test_domain_normalises_and_checks_the_contract_address() -> None:
    assert Domain(1, Address(EXCHANGE.lower())).verifying_contract == EXCHANGE
    assert Domain(1, Address(EXCHANGE.lower())) == Domain(1, EXCHANGE)
    with pytest.raises(EncodingError):
        Domain(1, Address(EXCHANGE[:-1] + "A"))  # mixed case with a broken checksum
    with pytest.raises(EncodingError):
        Domain(1, Address(EXCHANGE[:-1]))
    with pytest.raises(EncodingError):
        Domain(0, EXCHANGE)


# --- digests against eth-account ----------------------------------------------------------------------------------


@FEW
@given(domains, orders())
def test_order_digest_matches_eth_account(domain: Domain, order: Order) -> None:
    eip712.validate_order(order)
    assert eip712.order_digest(domain, order) == reference_digest(domain, "Order", order_message(order))


def test_order_digest_known_sample() -> None:
    digest = eip712.order_digest(DOMAIN, SAMPLE)
    assert digest == reference_digest(DOMAIN, "Order", order_message(SAMPLE))
    assert eip712.order_struct_hash(SAMPLE) != digest


@FEW
@given(domains, addresses, uint(0, 2**64 - 1))
def test_cancel_digests_match_eth_account(domain: Domain, trader: Address, salt: int) -> None:
    message = {"trader": trader, "salt": salt}
    assert eip712.cancel_digest(domain, trader, salt) == reference_digest(domain, "Cancel", message)
    assert eip712.cancel_up_to_digest(domain, trader, salt) == reference_digest(domain, "CancelUpTo", message)
    assert eip712.cancel_digest(domain, trader, salt) != eip712.cancel_up_to_digest(domain, trader, salt)


def batch_message(
    seq: int, rnd: int, prev: bytes, version: int, deadline: int, order_hashes: list[bytes], batch_fills: list[Fill]
) -> dict[str, Any]:
    return {
        "seq": seq,
        "round": rnd,
        "prevBatchHash": prev,
        "setVersion": version,
        "deadline": deadline,
        "orders": order_hashes,
        "fills": [{"maker": f.maker, "taker": f.taker, "amount": f.amount} for f in batch_fills],
    }


@FEW
@given(
    domains,
    uint(1, 2**64 - 1),
    uint(0, 2**32 - 1),
    hashes,
    uint(0, 2**64 - 1),
    uint(0, 2**32 - 1),
    st.lists(hashes, max_size=6),
    st.lists(fills, max_size=6),
)
def test_batch_digest_matches_eth_account(
    domain: Domain,
    seq: int,
    rnd: int,
    prev: bytes,
    version: int,
    deadline: int,
    order_hashes: list[bytes],
    batch_fills: list[Fill],
) -> None:
    ours = eip712.batch_digest(domain, seq, rnd, prev, version, deadline, order_hashes, batch_fills)
    expected = reference_digest(
        domain, "Batch", batch_message(seq, rnd, prev, version, deadline, order_hashes, batch_fills)
    )
    assert ours == expected
    as_tuples = [(f.maker, f.taker, f.amount) for f in batch_fills]
    assert eip712.batch_digest(domain, seq, rnd, prev, version, deadline, order_hashes, as_tuples) == ours


@pytest.mark.parametrize(("n_orders", "n_fills"), [(0, 0), (1, 0), (0, 1), (2, 1), (5, 4)])
def test_batch_digest_empty_and_multi_element_arrays(n_orders: int, n_fills: int) -> None:
    order_hashes = [keccak(i.to_bytes(2, "big")) for i in range(n_orders)]
    batch_fills = [Fill(i, i + 1, 10**8 * (i + 1)) for i in range(n_fills)]
    args = (7, 2, bytes(32), 1, 1_700_000_100, order_hashes, batch_fills)
    assert eip712.batch_digest(DOMAIN, *args) == reference_digest(DOMAIN, "Batch", batch_message(*args))
    # The array hashes are keccak of the concatenated elements (keccak("") when empty), as the contract computes them.
    fills_hash = keccak(b"".join(eip712.fill_struct_hash(f) for f in batch_fills))
    struct = keccak(
        eip712.BATCH_TYPEHASH
        + (7).to_bytes(32, "big")
        + (2).to_bytes(32, "big")
        + bytes(32)
        + (1).to_bytes(32, "big")
        + (1_700_000_100).to_bytes(32, "big")
        + keccak(b"".join(order_hashes))
        + fills_hash
    )
    assert eip712.batch_struct_hash(*args) == struct


def test_batch_digest_depends_on_fill_order_and_order_list() -> None:
    hs = [keccak(b"a"), keccak(b"b")]
    base = eip712.batch_digest(DOMAIN, 1, 0, bytes(32), 1, 100, hs, [Fill(0, 1, 5), Fill(1, 0, 6)])
    assert base != eip712.batch_digest(DOMAIN, 1, 0, bytes(32), 1, 100, hs, [Fill(1, 0, 6), Fill(0, 1, 5)])
    assert base != eip712.batch_digest(DOMAIN, 1, 0, bytes(32), 1, 100, hs[::-1], [Fill(0, 1, 5), Fill(1, 0, 6)])


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: eip712.order_struct_hash(dataclasses.replace(SAMPLE, price=2**64)), "price"),
        (lambda: eip712.order_struct_hash(dataclasses.replace(SAMPLE, market=MarketId(-1))), "market"),
        (lambda: eip712.order_struct_hash(dataclasses.replace(SAMPLE, trader=Address("0x12"))), "trader"),
        (lambda: eip712.fill_struct_hash(Fill(2**16, 0, 1)), "Fill.maker"),
        (lambda: eip712.fill_struct_hash((0, 0, 2**64)), "Fill.amount"),
        (lambda: eip712.batch_digest(DOMAIN, 1, 0, bytes(31), 1, 1, [], []), "prevBatchHash"),
        (lambda: eip712.batch_digest(DOMAIN, 1, 2**32, bytes(32), 1, 1, [], []), "round"),
        (lambda: eip712.batch_digest(DOMAIN, 1, 0, bytes(32), 1, 1, [b"x"], []), "orders[]"),
        (lambda: eip712.cancel_digest(DOMAIN, TRADER, 2**64), "salt"),
    ],
)
def test_values_outside_their_solidity_type_do_not_hash(call: Any, field: str) -> None:
    with pytest.raises(EncodingError) as info:
        call()
    assert info.value.field == field


@FEW
@given(st.binary(min_size=20, max_size=20))
def test_checksum_matches_eth_utils(raw: bytes) -> None:
    assert str(eip712.to_checksum_address(raw)) == str(reference_checksum(raw))


# --- signing and recovery -----------------------------------------------------------------------------------------


@FEW
@given(st.integers(1, SECP256K1_N - 1), hashes)
def test_sign_then_recover_round_trips(secret: int, digest: bytes) -> None:
    key = RelayerKey(secret.to_bytes(32, "big"))
    signature = eip712.sign_digest(key, digest)
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2
    assert eip712.recover(digest, signature) == key.address
    assert eip712.sign_digest(key.secret, digest) == signature
    eip712.verify_signer(digest, signature, key.address)


@FEW
@given(orders())
def test_order_signature_equals_eth_accounts(order: Order) -> None:
    signed = EthAccount.sign_typed_data(TRADER_SECRET, full_message=full_message(DOMAIN, "Order", order_message(order)))
    ours = eip712.sign_digest(TRADER_SECRET, eip712.order_digest(DOMAIN, order))
    assert ours == bytes(signed.signature)  # both RFC 6979: byte-identical
    assert eip712.recover(eip712.order_digest(DOMAIN, order), ours) == TRADER


def test_verify_order() -> None:
    order = dataclasses.replace(SAMPLE, trader=TRADER)
    signature = eip712.sign_digest(TRADER_SECRET, eip712.order_digest(DOMAIN, order))
    assert eip712.verify_order(DOMAIN, order, signature) == eip712.order_digest(DOMAIN, order)
    other = dataclasses.replace(order, trader=EXCHANGE)
    with pytest.raises(SignatureError) as info:
        eip712.verify_order(DOMAIN, other, signature)
    assert info.value.reason == "wrong_signer"
    with pytest.raises(SignatureError) as info:
        eip712.verify_order(DOMAIN, dataclasses.replace(order, amount=order.amount - 1), signature)
    assert info.value.reason == "wrong_signer"


@pytest.mark.parametrize(
    "other",
    [Domain(1, EXCHANGE), Domain(31337, Address("0x" + "11" * 20)), Domain(31337, EXCHANGE, version="2")],
)
def test_signature_from_another_domain_recovers_someone_else(other: Domain) -> None:
    signature = eip712.sign_digest(TRADER_SECRET, eip712.order_digest(other, SAMPLE))
    assert eip712.recover(eip712.order_digest(other, SAMPLE), signature) == TRADER
    assert eip712.recover(eip712.order_digest(DOMAIN, SAMPLE), signature) != TRADER


def _reason(digest: bytes, signature: bytes) -> str:
    with pytest.raises(SignatureError) as info:
        eip712.recover(digest, signature)
    return info.value.reason


def _with(signature: bytes, r: int | None = None, s: int | None = None, v: int | None = None) -> bytes:
    r_bytes = signature[:32] if r is None else r.to_bytes(32, "big")
    s_bytes = signature[32:64] if s is None else s.to_bytes(32, "big")
    return r_bytes + s_bytes + bytes((signature[64] if v is None else v,))


def test_high_s_twin_is_rejected() -> None:
    digest = eip712.order_digest(DOMAIN, SAMPLE)
    signature = eip712.sign_digest(TRADER_SECRET, digest)
    s = int.from_bytes(signature[32:64], "big")
    twin = _with(signature, s=SECP256K1_N - s, v=55 - signature[64])  # flip 27 <-> 28
    # The twin is a mathematically valid signature by the same key; only the low-s rule refuses it.
    public = coincurve.PublicKey.from_signature_and_message(twin[:64] + bytes((twin[64] - 27,)), digest, hasher=None)
    assert keccak(public.format(compressed=False)[1:])[12:] == bytes.fromhex(TRADER[2:])
    assert _reason(digest, twin) == "high_s"
    assert _reason(digest, _with(signature, s=SECP256K1_N // 2 + 1)) == "high_s"
    assert _reason(digest, _with(signature, s=SECP256K1_N)) == "high_s"


def test_signature_rules() -> None:
    digest = eip712.order_digest(DOMAIN, SAMPLE)
    signature = eip712.sign_digest(TRADER_SECRET, digest)
    for v in (0, 1, 26, 29, 255):
        assert _reason(digest, _with(signature, v=v)) == "v"
    assert _reason(digest, _with(signature, r=0)) == "zero_r"
    assert _reason(digest, _with(signature, r=SECP256K1_N)) == "r_range"
    assert _reason(digest, _with(signature, s=0)) == "zero_s"
    assert _reason(digest, _with(signature, r=5)) == "unrecoverable"  # 5 is not the x of a curve point
    for length in (0, 64, 66):
        assert _reason(digest, (signature * 2)[:length]) == "length"
    eip712.check_signature(signature)


def test_bad_key_and_digest() -> None:
    from relayer.errors import KeyMaterialError

    with pytest.raises(KeyMaterialError):
        eip712.sign_digest(bytes(32), bytes(32))
    with pytest.raises(EncodingError):
        eip712.sign_digest(TRADER_SECRET, b"short")
    with pytest.raises(EncodingError):
        eip712.recover(b"short", eip712.sign_digest(TRADER_SECRET, bytes(32)))


# --- order bounds -------------------------------------------------------------------------------------------------


def test_valid_orders_pass() -> None:
    eip712.validate_order(SAMPLE)
    eip712.validate_order(dataclasses.replace(SAMPLE, price=2**62, amount=2**63 - 1, market=MarketId(63)))
    eip712.validate_order(
        dataclasses.replace(SAMPLE, flags=OrderFlag(15), trigger_kind=TriggerKind.NONE, trigger_price=0)
    )
    eip712.validate_order(dataclasses.replace(SAMPLE, created_at=0, expiry=2**32 - 1, salt=Salt(2**64 - 1)))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"trader": TRADER.lower()}, "trader"),
        ({"trader": "0x" + "00" * 20}, "trader"),
        ({"trader": "0x1234"}, "trader"),
        ({"market": 64}, "market"),
        ({"market": -1}, "market"),
        ({"side": 2}, "side"),
        ({"side": True}, "side"),
        ({"price": 0}, "price"),
        ({"price": 2**62 + 1}, "price"),
        ({"amount": 0}, "amount"),
        ({"amount": 2**63}, "amount"),
        ({"salt": 2**64}, "salt"),
        ({"salt": -1}, "salt"),
        ({"created_at": 2**32}, "created_at"),
        ({"expiry": SAMPLE.created_at}, "expiry"),
        ({"expiry": SAMPLE.created_at - 1}, "expiry"),
        ({"expiry": 2**32}, "expiry"),
        ({"flags": 16}, "flags"),
        ({"flags": 0x80 | 1}, "flags"),
        ({"trigger_kind": 3}, "trigger_kind"),
        ({"trigger_price": 0}, "trigger_price"),
        ({"trigger_price": 2**62 + 1}, "trigger_price"),
        ({"trigger_kind": TriggerKind.NONE, "trigger_price": 5}, "trigger_price"),
        ({"price": 1.5}, "price"),
    ],
)
def test_invalid_orders_name_their_field(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidOrderError) as info:
        eip712.validate_order(dataclasses.replace(SAMPLE, **changes))
    assert info.value.reason == reason
