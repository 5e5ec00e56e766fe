"""Canonical encodings: round trips, and garbage never crashes the decoder (one error type)."""

from __future__ import annotations

import random

import pytest

from bindings import exchange as ex
from relayer import eip712
from relayer.quorum import Certificate, MessageError, Proposal, Skip, Vote, decode_message, precheck, settle_call
from relayer.quorum.messages import MAGIC
from relayer.types import Side

from .sim import DOMAIN, ONE, PRICE, T0, craft, make_order, relayer_keys, vote_of


def sample() -> tuple[Proposal, Vote, Certificate]:
    keys = relayer_keys(4)
    sell = make_order("alice", Side.SELL, ONE, PRICE, salt=1, created_at=T0 - 1, flags=1)
    buy = make_order("bob", Side.BUY, 3 * ONE, PRICE + 7, salt=2**64 - 1, created_at=T0, expiry=T0 + 90)
    p = craft(keys[1], 7, 2, [sell, buy], [(0, 1, ONE)], prev=b"\x07" * 32, skipped=[Skip(b"\x01" * 32, 14)])
    digest = p.digest(DOMAIN)
    v = vote_of(keys[2], 7, 2, digest)
    sigs = tuple((k.address, eip712.sign_digest(k, digest)) for k in keys[:3])
    c = Certificate(p.body, sigs)  # type: ignore[arg-type]
    return p, v, c


def test_round_trips_are_exact() -> None:
    for msg in sample():
        data = msg.encode()
        assert data.startswith(MAGIC)
        back = decode_message(data, DOMAIN)
        assert back == msg and back.encode() == data
    p, _, c = sample()
    assert decode_message(p.encode(), DOMAIN).digest(DOMAIN) == p.digest(DOMAIN)  # type: ignore[union-attr]
    assert c.digest(DOMAIN) == p.digest(DOMAIN)


def test_certificate_is_settlebatch_calldata() -> None:
    _, _, c = sample()
    data = settle_call(c)
    assert data[:4] == ex.SETTLE_BATCH_SELECTOR
    batch = c.body.to_binding()
    assert batch.seq == 7 and batch.round == 2 and len(batch.orders) == 2
    assert batch.orders[1].order.salt == 2**64 - 1
    sigs = [ex.Signature(r=s[:32], s=s[32:64], v=s[64]) for _, s in c.signatures]
    assert data == ex.encode_settle_batch(batch, sigs)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_truncations_flips_and_trailing_bytes_never_crash(which: int) -> None:
    data = sample()[which].encode()
    rng = random.Random(which)
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            decode_message(data[:cut], DOMAIN)
    with pytest.raises(MessageError):
        decode_message(data + b"\x00", DOMAIN)
    outcomes = {"refused": 0, "decoded": 0}
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            msg = decode_message(bytes(mutated), DOMAIN)
        except MessageError:
            outcomes["refused"] += 1
        else:  # a flip inside a value field is another well-formed message (its signatures no longer verify)
            assert msg.encode() == bytes(mutated)
            outcomes["decoded"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 400


def test_random_garbage_is_one_error_type() -> None:
    rng = random.Random(7)
    bad: list[object] = [b"", b"PQ", MAGIC, MAGIC + b"\x09", MAGIC + b"\x01" + b"\xff" * 40, "text", None, 5]
    bad += [MAGIC + bytes([rng.randint(1, 3)]) + rng.randbytes(rng.randint(0, 600)) for _ in range(500)]
    for data in bad:
        with pytest.raises(MessageError):
            decode_message(data, DOMAIN)  # type: ignore[arg-type]


def test_out_of_range_fields_do_not_encode() -> None:
    p, v, _ = sample()
    with pytest.raises(MessageError):
        Vote(2**64, 0, v.batch_digest, v.voter, v.signature).encode()
    with pytest.raises(MessageError):
        Vote(1, 0, v.batch_digest, v.voter, v.signature[:64]).encode()
    with pytest.raises(MessageError):
        Proposal(p.body, p.time, (Skip(b"\x00" * 32, 99),), p.proposer, p.batch_signature, p.signature).encode()


def test_precheck_rejects_bad_signature_bytes_without_a_view() -> None:
    p, v, c = sample()
    for msg in (p, v, c):
        assert precheck(msg.encode(), DOMAIN) == msg
    high_s = v.signature[:32] + (2**256 - 1).to_bytes(32, "big") + v.signature[64:]
    with pytest.raises(MessageError, match="high_s"):
        precheck(Vote(v.seq, v.round, v.batch_digest, v.voter, high_s).encode(), DOMAIN)
    bad_v = p.signature[:64] + b"\x05"
    forged = Proposal(p.body, p.time, p.skipped, p.proposer, p.batch_signature, bad_v)
    with pytest.raises(MessageError, match="bad signature"):
        precheck(forged.encode(), DOMAIN)
