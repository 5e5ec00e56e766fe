"""Voters' objective checks: every malicious proposal gets no honest vote, each with its own refusal reason; the
fairness rule; equivocation evidence; a restarted core never signs twice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from relayer import eip712
from relayer.matcher.model import SkipReason
from relayer.quorum import (
    NOT_SEEN,
    Certificate,
    Persist,
    Proposal,
    QuorumCore,
    QuorumParams,
    RecordEvidence,
    Refusal,
    Refused,
    SendProposal,
    SendVote,
    Skip,
    SubmitCertificate,
)
from relayer.types import Address, Hash32, OrderFlag, Side, SignedOrder

from .sim import ONE, PRICE, T0, Net, Node, craft, make_order, rich, trader_key


def honest_voters(net: Net, proposer: Node) -> list[Node]:
    return [n for n in net.nodes.values() if n is not proposer]


def offer(net: Net, p: Proposal, voters: Sequence[Node]) -> list[list[object]]:
    """Hand ``p`` to each voter; their actions are executed (Persist writes the store) and returned."""
    data = p.encode()
    out = []
    for v in voters:
        actions = v.core.on_message(data, net.now)
        net.execute(v, actions)
        out.append(list(actions))
    return out


def setup(book_orders: Sequence[SignedOrder] = ()) -> tuple[Net, Node, list[Node]]:
    net = Net()
    rich(net.chain, "alice", "bob", "carol")
    bad = net.proposer(1, 0)
    bad.online = False  # its core is replaced by hand-made messages signed with its key
    for o in book_orders:
        net.add_order(o, seen_at=T0 - 60)  # held for a minute: longer than the gossip bound
    net.start()
    return net, bad, honest_voters(net, bad)


def pair(created: int = T0 - 1) -> tuple[SignedOrder, SignedOrder]:
    sell = make_order("alice", Side.SELL, ONE, PRICE, salt=1, created_at=created)
    buy = make_order("bob", Side.BUY, ONE, PRICE, salt=1, created_at=created + 1)
    return sell, buy


def assert_refused(results: list[list[object]], reason: Refusal) -> None:
    for actions in results:
        assert not [a for a in actions if isinstance(a, SendVote | Persist)], actions
        refusals = [a for a in actions if isinstance(a, Refused)]
        assert [r.reason for r in refusals] == [reason], refusals


def test_a_valid_proposal_gets_every_honest_vote() -> None:
    sell, buy = pair()
    net, bad, voters = setup([sell, buy])
    p = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)])
    for actions in offer(net, p, voters):
        kinds = [type(a) for a in actions]
        assert kinds == [Persist, SendVote]  # persisted before it leaves
        vote = actions[1]
        assert isinstance(vote, SendVote) and vote.to == bad.address
        assert eip712.recover(p.digest(net.nodes[bad.address].core.domain), vote.vote.signature) == vote.vote.voter


@pytest.mark.parametrize(
    "case",
    ["overfill", "forged_signature", "wrong_maker", "bad_price", "signed_cancel", "chain_cancel", "prev_hash"],
)
def test_malicious_proposals_get_no_honest_vote(case: str) -> None:
    sell, buy = pair()
    orders: list[SignedOrder] = [sell, buy]
    fills = [(0, 1, ONE)]
    kwargs: dict[str, object] = {}
    reason: Refusal
    if case == "overfill":
        fills = [(0, 1, 2 * ONE)]
        reason = Refusal.OVERFILL
    elif case == "forged_signature":
        forged = make_order("bob", Side.BUY, ONE, PRICE, salt=1, created_at=T0, key=trader_key("mallory"))
        orders = [sell, forged]
        reason = Refusal.BAD_ORDER_SIGNATURE
    elif case == "wrong_maker":
        fills = [(1, 0, ONE)]  # the later order (bob's) named maker: it would set the price
        reason = Refusal.WRONG_MAKER
    elif case == "bad_price":
        cheap = make_order("bob", Side.BUY, ONE, PRICE - 1, salt=2, created_at=T0)
        orders = [sell, cheap]
        reason = Refusal.NO_CROSS
    elif case in ("signed_cancel", "chain_cancel"):
        reason = Refusal.CANCELLED
    else:
        kwargs["prev"] = b"\x01" * 32
        reason = Refusal.WRONG_PREV_HASH
    net, bad, voters = setup([sell, buy])
    if case == "signed_cancel":
        for v in voters:
            v.book.cancel(buy.order.trader, buy.order.salt)  # a trader-signed cancel every voter has seen
    if case == "chain_cancel":
        net.chain.cancelled.add(buy.order.key)
        net.push_chain()
    p = craft(bad.key, 1, 0, orders, fills, **kwargs)  # type: ignore[arg-type]
    assert_refused(offer(net, p, voters), reason)


def test_a_proposal_from_the_wrong_proposer_gets_no_vote() -> None:
    sell, buy = pair()
    net, bad, voters = setup([sell, buy])
    impostor = net.proposer(1, 1)  # designated for round 1, not round 0
    p = craft(impostor.key, 1, 0, [sell, buy], [(0, 1, ONE)])
    others = [v for v in voters if v is not impostor]
    assert_refused(offer(net, p, others), Refusal.WRONG_PROPOSER)
    # and a proposal whose proposer field names the right relayer but is signed by another key
    forged = Proposal(p.body, p.time, p.skipped, bad.address, p.batch_signature, p.signature)
    assert_refused(offer(net, forged, others), Refusal.BAD_PROPOSER_SIGNATURE)


@pytest.mark.parametrize(
    "case",
    [
        "deadline",
        "set_version",
        "expired",
        "backdated",
        "time",
        "future_seq",
        "empty",
        "unused_order",
        "superseded",
        "post_only_taker",
        "fok_partial",
        "self_trade",
        "wrong_seq",
    ],
)
def test_more_objective_refusals(case: str) -> None:
    sell, buy = pair()
    expired = make_order("carol", Side.BUY, ONE, PRICE, salt=9, created_at=T0 - 1, expiry=T0 + 30)
    backdated = make_order("carol", Side.BUY, ONE, PRICE, salt=10, created_at=T0 - 100)
    net, bad, voters = setup([sell, buy, expired])
    orders, fills, kw, reason = [sell, buy], [(0, 1, ONE)], dict[str, int](), None
    if case == "deadline":
        kw["deadline"], reason = T0 + 300, Refusal.BAD_DEADLINE
    elif case == "set_version":
        kw["set_version"], reason = 2, Refusal.WRONG_SET_VERSION
    elif case == "expired":
        orders, reason = [sell, expired], Refusal.EXPIRED
    elif case == "backdated":
        orders, reason = [sell, backdated], Refusal.BACKDATED
    elif case == "time":
        kw["time"], reason = T0 + 60, Refusal.BAD_TIME
    elif case == "empty":
        orders, fills, reason = [], [], Refusal.MALFORMED
    elif case == "unused_order":
        orders, reason = [sell, buy, expired], Refusal.MALFORMED
    elif case == "superseded":
        shrunk = make_order("bob", Side.BUY, ONE // 2, PRICE, salt=1, created_at=buy.order.created_at)
        for v in voters:
            v.book.add(shrunk)  # an amendment of bob's order (same salt, same createdAt, smaller)
        reason = Refusal.SUPERSEDED
    elif case == "post_only_taker":
        taker = make_order("bob", Side.BUY, ONE, PRICE, salt=3, created_at=T0, flags=int(OrderFlag.POST_ONLY))
        orders, reason = [sell, taker], Refusal.POST_ONLY_TAKER
    elif case == "fok_partial":
        fok = make_order("bob", Side.BUY, 2 * ONE, PRICE, salt=4, created_at=T0, flags=int(OrderFlag.FOK))
        orders, reason = [sell, fok], Refusal.FOK
    elif case == "self_trade":
        mine = make_order("alice", Side.BUY, ONE, PRICE, salt=5, created_at=T0)
        orders, reason = [sell, mine], Refusal.SELF_TRADE
    elif case == "wrong_seq":
        net.chain.last_seq, net.chain.last_hash = 5, Hash32(b"\x05" * 32)  # the voters' seq is 6 now
        net.push_chain()
        reason = Refusal.WRONG_SEQ
    seq = 2 if case == "future_seq" else 1
    if case == "wrong_seq":
        p = craft(bad.key, 1, 0, orders, fills)
        results = offer(net, p, voters)
        assert results == [[], [], []]  # an old seq: dropped, counted
        assert all(v.core.counters["stale_proposal"] == 1 for v in voters)
        return
    p = craft(bad.key, seq, 0, orders, fills, **kw)  # type: ignore[arg-type]
    results = offer(net, p, voters)
    if reason is None:  # a future seq: buffered until this node's seq reaches it, no vote now
        assert results == [[], [], []]
        assert all(v.core.counters["proposal_buffered"] == 1 for v in voters)
    else:
        assert_refused(results, reason)


def test_fairness_unlisted_or_falsely_listed_better_order_is_refused() -> None:
    sell, buy = pair()
    better = make_order("carol", Side.BUY, ONE, PRICE + 10, salt=1, created_at=T0 - 50)
    net, bad, voters = setup([sell, buy, better])
    now = net.now // 1000
    deadline = now + 30
    unlisted = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)], time=now, deadline=deadline)
    assert_refused(offer(net, unlisted, voters), Refusal.UNFAIR_SKIP)


def test_fairness_reasons_checked_objectively() -> None:
    sell, buy = pair()
    better = make_order("carol", Side.BUY, ONE, PRICE + 10, salt=1, created_at=T0 - 50)
    net, bad, voters = setup([sell, buy, better])
    now = net.now // 1000
    for round_, reason, ok in [
        (0, int(SkipReason.POST_ONLY_TAKER), False),  # carol's order is not post-only: false
        (0, NOT_SEEN, False),  # the voters have held it for longer than the gossip bound: false
    ]:
        p = craft(
            bad.key,
            1,
            round_,
            [sell, buy],
            [(0, 1, ONE)],
            time=now,
            deadline=now + 30,
            skipped=[Skip(better.hash, reason)],
        )
        results = offer(net, p, voters)
        assert ok is False
        assert_refused(results, Refusal.UNFAIR_SKIP)
    # a margin reason is the proposer's call: accepted (an unfunded best order cannot stall the market)
    p = craft(
        bad.key,
        1,
        0,
        [sell, buy],
        [(0, 1, ONE)],
        time=now,
        deadline=now + 30,
        skipped=[Skip(better.hash, int(SkipReason.MARGIN_TAKER))],
    )
    for actions in offer(net, p, voters):
        assert [type(a) for a in actions] == [Persist, SendVote]


def test_fairness_spares_orders_held_briefly() -> None:
    sell, buy = pair()
    net, bad, voters = setup([sell, buy])
    now = net.now // 1000
    fresh = make_order("carol", Side.BUY, ONE, PRICE + 10, salt=1, created_at=now)
    net.add_order(fresh)  # just arrived: the proposer may not have it yet
    p = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)], time=now, deadline=now + 30)
    for actions in offer(net, p, voters):
        assert [type(a) for a in actions] == [Persist, SendVote]


def test_unfunded_best_order_does_not_stall_the_market() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")  # carol has no collateral
    sell, buy = pair()
    best = make_order("carol", Side.BUY, ONE, PRICE + 10, salt=1, created_at=T0 - 50)
    for o in (sell, buy, best):
        net.add_order(o)
    net.advance(10_000)
    net.start()
    net.run_until(lambda: net.chain.last_seq == 1, max_ms=5_000)
    cert = net.chain.landed[-1]
    assert cert.round == 0 and {o.hash for o in cert.body.orders} == {sell.hash, buy.hash}
    proposal = net.actions(SendProposal)[0].proposal
    assert Skip(best.hash, int(SkipReason.MARGIN_MAKER)) in proposal.skipped  # carol's is the earlier order
    assert not net.actions(Refused)


def test_equivocating_proposer_yields_evidence_and_one_certificate_lands() -> None:
    sell, buy = pair()
    other = make_order("carol", Side.SELL, ONE, PRICE - 5, salt=1, created_at=T0 - 1)  # first seen in B
    net, bad, voters = setup([sell, buy])
    a = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)])
    b = craft(bad.key, 1, 0, [other, buy], [(0, 1, ONE)])
    domain = voters[0].core.domain
    da, db = a.digest(domain), b.digest(domain)
    assert da != db
    # split the voters: two see A first, one sees B first; then everyone sees the other one too
    first = offer(net, a, voters[:2]) + offer(net, b, voters[2:])
    second = offer(net, b, voters[:2]) + offer(net, a, voters[2:])
    votes: dict[bytes, dict[Address, bytes]] = {
        da: {bad.address: a.batch_signature},
        db: {bad.address: b.batch_signature},
    }
    for actions in first:
        for act in actions:
            if isinstance(act, SendVote):
                votes[act.vote.batch_digest][act.vote.voter] = act.vote.signature
    for actions in second:
        assert not [x for x in actions if isinstance(x, SendVote)]  # nobody signs (1, 0) twice
        ev = [x.evidence for x in actions if isinstance(x, RecordEvidence)]
        assert len(ev) == 1 and ev[0].kind == "proposal" and ev[0].signer == bad.address
        e = ev[0]
        assert {e.first_digest, e.second_digest} == {da, db}
        assert eip712.recover(e.first_digest, e.first_signature) == bad.address
        assert eip712.recover(e.second_digest, e.second_signature) == bad.address
    for v in voters:
        assert len(v.core.evidence) == 1
    # at most one certificate: A has 3 signers (t = 3), B only 2
    assert len(votes[da]) == 3 and len(votes[db]) == 2
    signers = sorted(votes[da], key=lambda x: int(x, 16))
    cert = Certificate(a.body, tuple((s, votes[da][s]) for s in signers))
    assert net.chain.include(cert)
    cert_b = Certificate(b.body, tuple(sorted(votes[db].items(), key=lambda x: int(x[0], 16))))
    assert not net.chain.include(cert_b)
    assert net.chain.last_seq == 1 and len(net.chain.landed) == 1


def test_restarted_voter_never_signs_a_second_batch(tmp_path: Path) -> None:
    sell, buy = pair()
    other = make_order("carol", Side.SELL, ONE, PRICE - 5, salt=1, created_at=T0 - 5)
    net = Net(store_dir=tmp_path)
    rich(net.chain, "alice", "bob", "carol")
    bad = net.proposer(1, 0)
    bad.online = False
    for o in (sell, buy, other):
        net.add_order(o)
    net.start()
    voter = honest_voters(net, bad)[0]
    a = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)])
    b = craft(bad.key, 1, 0, [other, buy], [(0, 1, ONE)])
    [first] = offer(net, a, [voter])
    sent = [x for x in first if isinstance(x, SendVote)]
    assert len(sent) == 1
    assert voter.store is not None
    stored = voter.store.get_vote(1, 0)
    assert stored is not None and stored.batch_hash == a.digest(voter.core.domain)
    voter = net.restart(voter.address)
    # the restarted core has no memory of A but the store does: B is refused, A gets the same vote again
    [again_b] = offer(net, b, [voter])
    assert [x.reason for x in again_b if isinstance(x, Refused)] == [Refusal.ALREADY_VOTED]
    assert not [x for x in again_b if isinstance(x, SendVote | Persist)]
    [again_a] = offer(net, a, [voter])
    # (A after B is also equivocation evidence against the proposer)
    assert [type(x) for x in again_a] == [RecordEvidence, Persist, SendVote]
    resent = [x for x in again_a if isinstance(x, SendVote)]
    assert len(resent) == 1 and resent[0].data == sent[0].data


def test_restarted_proposer_resends_its_stored_proposal(tmp_path: Path) -> None:
    net = Net(store_dir=tmp_path)
    rich(net.chain, "alice", "bob", "carol")
    sell, buy = pair()
    net.add_order(sell)
    net.add_order(buy)
    proposer = net.proposer(1, 0)
    net.drop = lambda src, dst, data: True  # the proposal leaves, but nothing arrives anywhere
    net.start()
    net.advance(500)
    [made] = net.actions(SendProposal, proposer)
    log = [type(a) for a in proposer.sent]
    assert log.index(Persist) < log.index(SendProposal)
    # a better order arrives, then the proposer crashes and comes back within the round
    net.add_order(make_order("carol", Side.BUY, ONE, PRICE + 10, salt=1, created_at=T0))
    net.drop = lambda src, dst, data: False
    restarted = net.restart(proposer.address)
    resent = [a for a in restarted.sent if isinstance(a, SendProposal)]
    assert len(resent) == 1 and resent[0].data == made.data  # the stored one, not a new batch
    [again] = [a for a in restarted.sent if isinstance(a, Persist)]  # the same record: a no-op for the store
    assert again.record.payload == made.data
    net.deliver()
    net.run_until(lambda: net.chain.last_seq == 1, max_ms=2_000)
    assert net.chain.landed[0].body == made.proposal.body
    assert [a.certificate.body for a in net.actions(SubmitCertificate)] == [made.proposal.body]


def test_two_certificates_for_one_round_are_evidence_against_every_double_signer() -> None:
    sell, buy = pair()
    other = make_order("carol", Side.SELL, ONE, PRICE - 5, salt=1, created_at=T0 - 1)
    net, bad, voters = setup([sell, buy])
    watcher, turncoat = voters[0], voters[1]
    a = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)])
    b = craft(bad.key, 1, 0, [other, buy], [(0, 1, ONE)])
    domain = watcher.core.domain

    def cert(p: Proposal, extra: Node) -> Certificate:
        d = p.digest(domain)
        sigs = {bad.address: p.batch_signature, turncoat.address: eip712.sign_digest(turncoat.key, d)}
        sigs[extra.address] = eip712.sign_digest(extra.key, d)
        return Certificate(p.body, tuple(sorted(sigs.items(), key=lambda x: int(x[0], 16))))

    first = watcher.core.on_message(cert(a, voters[2]).encode(), net.now)
    assert not [x for x in first if isinstance(x, RecordEvidence)]
    second = watcher.core.on_message(cert(b, watcher).encode(), net.now)
    evidence = sorted((x.evidence for x in second if isinstance(x, RecordEvidence)), key=lambda e: int(e.signer, 16))
    assert {e.signer for e in evidence} == {bad.address, turncoat.address}
    for e in evidence:
        assert e.kind == "vote" and (e.seq, e.round) == (1, 0)
        assert eip712.recover(e.first_digest, e.first_signature) == e.signer
        assert eip712.recover(e.second_digest, e.second_signature) == e.signer
        assert e.first_digest == a.digest(domain) and e.second_digest == b.digest(domain)
    assert watcher.core.certificate(0) == cert(a, voters[2])  # the first one is the one it backs up


def test_identical_inputs_give_identical_outputs() -> None:
    def run() -> list[bytes]:
        net = Net()
        rich(net.chain, "alice", "bob", "carol")
        sell, buy = pair()
        net.add_order(sell)
        net.add_order(buy)
        net.add_order(make_order("carol", Side.SELL, ONE, PRICE - 5, salt=1, created_at=T0 - 3))
        net.proposer(1, 0).online = False
        net.start()
        net.run_until(lambda: net.chain.last_seq == 1, max_ms=20_000)
        return [getattr(a, "data", b"") for _, a in net.log]

    assert run() == run()


def test_gas_cap_is_a_voter_check() -> None:
    sell, buy = pair()
    net = Net(params=QuorumParams(gas_cap=200_000))  # one fill is estimated at 220,000
    rich(net.chain, "alice", "bob")
    bad = net.proposer(1, 0)
    bad.online = False
    for o in (sell, buy):
        net.add_order(o, seen_at=T0 - 60)
    net.start()
    p = craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)])
    assert_refused(offer(net, p, honest_voters(net, bad)), Refusal.GAS_CAP)


def test_a_restarted_core_resumes_at_the_round_it_signed(tmp_path: Path) -> None:
    sell, buy = pair()
    net = Net(store_dir=tmp_path)
    rich(net.chain, "alice", "bob")
    for o in (sell, buy):
        net.add_order(o, seen_at=T0 - 60)
    for n in net.nodes.values():
        n.online = False
    net.start()
    p2 = net.proposer(1, 2)
    voter = next(n for n in net.nodes.values() if n is not p2)
    voter.core.on_chain(net.chain.view(), net.now)
    p = craft(p2.key, 1, 2, [sell, buy], [(0, 1, ONE)])
    voter.core.round = 2  # as if it had timed out twice
    net.execute(voter, voter.core.on_message(p.encode(), net.now))
    assert voter.core.counters["votes_cast"] == 1
    restarted = net.restart(voter.address)
    assert (restarted.core.seq, restarted.core.round) == (1, 2)


def test_the_store_refuses_a_second_vote_even_if_a_core_forgot_the_first(tmp_path: Path) -> None:
    sell, buy = pair()
    other = make_order("carol", Side.SELL, ONE, PRICE - 5, salt=1, created_at=T0 - 1)
    net = Net(store_dir=tmp_path)
    rich(net.chain, "alice", "bob", "carol")
    bad = net.proposer(1, 0)
    bad.online = False
    for o in (sell, buy):
        net.add_order(o, seen_at=T0 - 60)
    net.start()
    voter = honest_voters(net, bad)[0]
    offer(net, craft(bad.key, 1, 0, [sell, buy], [(0, 1, ONE)]), [voter])
    # a core created WITHOUT the stored votes (a bug in the node) would sign B; the store stops the promise
    voter.core = QuorumCore(voter.key, voter.core.domain, voter.core.source, net.params)
    net.execute(voter, voter.core.on_chain(net.chain.view(), net.now))
    before = len(net.queue)
    [actions] = offer(net, craft(bad.key, 1, 0, [other, buy], [(0, 1, ONE)]), [voter])
    assert [type(a) for a in actions] == [Persist, SendVote]
    assert [a.record.round for _, a in net.persist_failures] == [0]
    assert len(net.queue) == before  # the second vote never left
