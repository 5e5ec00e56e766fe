"""Rounds, certificates, timeouts and backups on a simulated network of four cores (n = 4, t = 3, f = 1)."""

from __future__ import annotations

import itertools

from relayer.quorum import BroadcastCertificate, CheckThenSubmit, RoundChanged, SendProposal, SubmitCertificate
from relayer.types import Side

from .sim import ONE, PRICE, Net, make_order, rich


def crossing_pair(net: Net, salt: int, amount: int = ONE) -> None:
    net.add_order(make_order("alice", Side.SELL, amount, PRICE, salt=salt, created_at=net.now // 1000))
    net.add_order(make_order("bob", Side.BUY, amount, PRICE, salt=salt, created_at=net.now // 1000 + 1))


def test_four_cores_certify_and_batches_land() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")
    net.start()
    for seq in (1, 2, 3):
        crossing_pair(net, salt=seq)
        net.run_until(lambda seq=seq: net.chain.last_seq == seq, max_ms=10_000)
        cert = net.chain.landed[-1]
        assert cert.seq == seq and cert.round == 0
        # the designated proposer of (seq, 0) proposed and submitted; signers ascending, >= t, proposer included
        proposer = net.proposer(seq, 0)
        assert [a.certificate for a in net.actions(SubmitCertificate, proposer)][-1] == cert
        signers = [int(a, 16) for a in cert.signers]
        assert signers == sorted(set(signers)) and len(signers) >= 3
        assert proposer.address in cert.signers
    # every core follows the chain into seq 4, round 0
    for node in net.nodes.values():
        assert (node.core.seq, node.core.round) == (4, 0)
    # fills landed: alice sold 3, bob bought 3 (counters per (trader, salt))
    assert sorted(net.chain.filled.values()) == [ONE] * 6
    # nobody but the proposers sent proposals, and no backup was needed
    assert not net.actions(CheckThenSubmit)
    assert len(net.actions(BroadcastCertificate)) == 3


def test_silent_proposer_is_replaced_after_its_round_times_out() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")
    silent = net.proposer(1, 0)
    silent.online = False
    net.start()
    crossing_pair(net, salt=1)
    took = net.run_until(lambda: net.chain.last_seq == 1, max_ms=20_000)
    cert = net.chain.landed[-1]
    assert cert.round == 1 and silent.address not in cert.signers
    assert net.proposer(1, 1).address in cert.signers
    # the others moved on by timeout after round 0's 2 s, not before
    assert 2_000 <= took < 4_000
    changes = [a for a in net.actions(RoundChanged) if a.seq == 1 and a.round == 1]
    assert {a.cause for a in changes} == {"timeout"} and len(changes) == 3


def test_certificate_that_never_lands_is_replaced_after_deadline_and_grace() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")
    net.auto_include = False
    net.start()
    crossing_pair(net, salt=1)
    net.run_until(lambda: bool(net.actions(SubmitCertificate)), max_ms=5_000)
    first = net.actions(SubmitCertificate)[0].certificate
    assert first.round == 0
    deadline = first.body.deadline
    # the round does not time out while its certificate can still land (deadline 30 s, round timeout 2 s)
    net.advance((deadline - net.now // 1000) * 1000)
    assert all(n.core.round == 0 for n in net.nodes.values())
    # backups were tried by the other holders (staggered by rank), each only once, all "check then submit"
    backups = net.actions(CheckThenSubmit)
    assert sorted(b.rank for b in backups) == [1, 2, 3]
    # deadline + grace passed without inclusion: round 1 with a new proposer, whose certificate lands
    net.auto_include = True
    net.run_until(lambda: net.chain.last_seq == 1, max_ms=30_000)
    landed = net.chain.landed[-1]
    assert landed.round == 1 and net.now // 1000 > deadline + net.params.grace
    causes = {a.cause for a in net.actions(RoundChanged) if a.seq == 1 and a.round == 1}
    assert causes == {"certificate_dead"}


def test_timeouts_grow_exponentially_and_reset_when_a_batch_lands() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")
    net.start()
    watcher = net.node(0)
    # no crossing orders: nobody proposes, rounds time out at 2, 4, 8, 16, 32, 60, 60 s
    starts = []
    for _ in range(7):
        r = watcher.core.round
        net.run_until(lambda r=r: watcher.core.round == r + 1, max_ms=120_000)
        starts.append(net.now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    assert watcher.core.params.round_timeout(watcher.core.round) == 60_000
    # an order pair arrives: the current round's proposer proposes at its next tick; the batch lands, timers reset
    crossing_pair(net, salt=1)
    net.run_until(lambda: net.chain.last_seq == 1, max_ms=5_000)
    assert watcher.core.seq == 2 and watcher.core.round == 0
    assert watcher.core.timeout_at() - watcher.core.round_started == 2_000
    assert len(net.actions(SendProposal)) == 1


def test_backup_submits_when_the_proposers_transaction_never_lands() -> None:
    net = Net()
    rich(net.chain, "alice", "bob")
    net.start()
    proposer = net.proposer(1, 0)
    net.dead_workers.add(proposer.address)
    crossing_pair(net, salt=1)
    took = net.run_until(lambda: net.chain.last_seq == 1, max_ms=20_000)
    assert net.chain.landed[0].round == 0  # the round-0 certificate, submitted by a backup
    backups = net.actions(CheckThenSubmit)
    assert len(backups) == 1 and backups[0].rank == 1  # the next holder by rank; the others saw the batch land
    rank1 = net.nodes[net.members[(net.members.index(proposer.address) + 1) % 4]]
    assert [src for src, a in net.submissions if isinstance(a, CheckThenSubmit)] == [rank1.address]
    assert net.params.backup_delay_ms <= took < net.params.backup_delay_ms + net.params.backup_step_ms
