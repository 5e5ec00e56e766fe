"""Honest proposers' batches pass every honest voter's checks, fairness included, on random books (no false
refusals), and the market drains batch after batch."""

from __future__ import annotations

import random

import pytest

from relayer.matcher import build_batch
from relayer.quorum import Persist, Refused, SendProposal
from relayer.types import OrderFlag, Side, SignedOrder

from .sim import ONE, PRICE, T0, Net, make_order, rich

FLAGS = [0, 0, 0, 0, int(OrderFlag.POST_ONLY), int(OrderFlag.FOK), int(OrderFlag.REDUCE_ONLY)]


def random_book(rng: random.Random, count: int) -> list[SignedOrder]:
    orders = []
    for i in range(count):
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        label = rng.choice(["alice", "bob", "carol", "dave", "erin"])  # erin is never funded
        orders.append(
            make_order(
                label,
                side,
                rng.randint(1, 5) * ONE // 2,
                PRICE + rng.randint(-10, 10),
                salt=i + 1,
                created_at=T0 - 100 + rng.randint(0, 60),
                flags=rng.choice(FLAGS),
            )
        )
    return orders


@pytest.mark.parametrize("seed", range(6))
def test_honest_batches_get_no_refusal(seed: int) -> None:
    rng = random.Random(seed)
    net = Net()
    rich(net.chain, "alice", "bob", "carol", "dave")
    for o in random_book(rng, 40):
        net.add_order(o, seen_at=T0 - 60)
    net.start()
    net.advance(20_000)
    refusals = net.actions(Refused)
    assert not refusals, refusals[:3]
    proposals = net.actions(SendProposal)
    assert proposals, "no crossing orders at all: a useless seed"
    assert net.chain.last_seq >= 1
    # every proposal that was made landed (no conflicting certificates, no wasted rounds)
    assert [c.body for c in net.chain.landed] == [p.proposal.body for p in proposals]
    # the market drained: what still crosses in the book cannot fill (unfunded, post-only taker, FOK, ...)
    node = net.node(0)
    left = build_batch(node.book, net.chain.state(), net.chain.head_time, node.core.limits)
    assert left.fills == ()


@pytest.mark.parametrize("seed", range(4))
def test_lossy_network_keeps_safety_and_makes_progress(seed: int) -> None:
    """30% of messages are lost and one node sleeps for a while: every seq is taken once, no node ever signs two
    batches for one (seq, round), and the market still drains."""
    rng = random.Random(100 + seed)
    net = Net()
    rich(net.chain, "alice", "bob", "carol", "dave")
    for o in random_book(rng, 30):
        net.add_order(o, seen_at=T0 - 60)
    net.drop = lambda src, dst, data: rng.random() < 0.3
    net.start()
    sleeper = net.node(rng.randrange(4))
    for step in range(240):
        sleeper.online = not 40 <= step < 100
        net.advance(500)
    assert [c.seq for c in net.chain.landed] == list(range(1, net.chain.last_seq + 1))
    assert net.chain.last_seq >= 1
    for node in net.nodes.values():
        signed: dict[tuple[str, int, int], bytes] = {}
        for action in node.sent:
            if isinstance(action, Persist):
                key = (action.kind, action.record.seq, action.record.round)
                assert signed.setdefault(key, action.record.batch_hash) == action.record.batch_hash
    node = net.node(0)
    left = build_batch(node.book, net.chain.state(), net.chain.head_time, node.core.limits)
    assert left.fills == ()
