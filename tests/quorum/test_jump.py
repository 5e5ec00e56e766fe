"""Round jumps need f + 1 distinct relayers' signed messages for a higher round (n = 4, t = 3: f + 1 = 2)."""

from __future__ import annotations

from relayer.quorum import RoundChanged, SubmitCertificate
from relayer.types import Side

from .sim import ONE, PRICE, T0, Net, craft, make_order, rich, vote_of


def setup() -> Net:
    net = Net()
    rich(net.chain, "alice", "bob")
    for n in net.nodes.values():
        n.online = False  # inputs by hand only
    net.start()
    return net


def orders() -> tuple:
    sell = make_order("alice", Side.SELL, ONE, PRICE, salt=1, created_at=T0 - 1)
    buy = make_order("bob", Side.BUY, ONE, PRICE, salt=1, created_at=T0)
    return sell, buy


def test_one_relayers_word_never_makes_a_node_jump() -> None:
    net = setup()
    sell, buy = orders()
    p3 = net.proposer(1, 3)
    watcher = next(n for n in net.nodes.values() if n is not p3)
    watcher.core.on_chain(net.chain.view(), net.now)
    assert (watcher.core.seq, watcher.core.round) == (1, 0)
    proposal = craft(p3.key, 1, 3, [sell, buy], [(0, 1, ONE)])
    digest = proposal.digest(watcher.core.domain)
    assert watcher.core.on_message(proposal.encode(), net.now) == []
    assert watcher.core.round == 0
    # the same relayer's vote for its own batch is still one relayer's word
    assert watcher.core.on_vote(vote_of(p3.key, 1, 3, digest), net.now) == []
    assert watcher.core.round == 0
    # a vote relabelled to a higher round (the signature is over round 3's digest) is not bound to round 9: ignored
    other = next(n for n in net.nodes.values() if n not in (p3, watcher))
    assert watcher.core.on_vote(vote_of(other.key, 1, 9, digest), net.now) == []
    assert watcher.core.round == 0
    # a second relayer's vote for round 3: f + 1 = 2 distinct signers, jump to 3 (and consider the buffered proposal)
    actions = watcher.core.on_vote(vote_of(other.key, 1, 3, digest), net.now)
    assert [a for a in actions if isinstance(a, RoundChanged)] == [RoundChanged(1, 3, "jump")]
    assert watcher.core.round == 3
    assert watcher.core.counters["votes_cast"] == 1  # it voted for the round-3 proposal once its round reached 3


def test_jump_goes_to_the_highest_round_f_plus_one_relayers_reached() -> None:
    net = setup()
    sell, buy = orders()
    p3, p5 = net.proposer(1, 3), net.proposer(1, 5)
    assert p3 is not p5
    watcher = next(n for n in net.nodes.values() if n not in (p3, p5))
    watcher.core.on_chain(net.chain.view(), net.now)
    assert watcher.core.on_message(craft(p5.key, 1, 5, [sell, buy], [(0, 1, ONE)]).encode(), net.now) == []
    assert watcher.core.round == 0
    actions = watcher.core.on_message(craft(p3.key, 1, 3, [sell, buy], [(0, 1, ONE)]).encode(), net.now)
    # two relayers at rounds >= 3, only one at >= 5: jump to 3
    assert RoundChanged(1, 3, "jump") in actions and watcher.core.round == 3


def test_a_certificate_for_a_higher_round_moves_a_node_there() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")
    sell, buy = orders()
    net.add_order(sell)
    net.add_order(buy)
    late = net.proposer(1, 0)
    net.drop = lambda src, dst, data: late.address in (src, dst)  # cut off from everyone
    net.auto_include = False
    net.start()
    late.online = False  # and asleep: it stays in round 0
    # round 0's proposal reaches nobody; the others time out, move to round 1 and certify there
    net.run_until(lambda: bool(net.actions(SubmitCertificate)), max_ms=10_000)
    [submitted] = net.actions(SubmitCertificate)
    cert = submitted.certificate
    assert cert.round == 1 and late.address not in cert.signers
    assert (late.core.seq, late.core.round) == (1, 0)
    # the certificate (t >= f + 1 signers of round 1) reaches it: it moves to round 1
    actions = late.core.on_message(cert.encode(), net.now)
    assert RoundChanged(1, 1, "certificate") in actions and late.core.round == 1
    assert late.core.certificate(1) == cert
