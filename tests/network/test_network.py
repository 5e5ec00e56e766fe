"""Four real `relayer run` processes on 127.0.0.1 and a real anvil: orders gossiped by a trader gateway (a libp2p
host that is not a relayer) are matched, certified by a quorum (n = 4, t = 3) and settled; every node's view equals
the contract's; a node killed with SIGKILL and restarted rejoins and takes part again."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from bindings import exchange as ex
from relayer import eip712
from relayer.chain.anvil import AnvilControl, AnvilProcess, start_anvil_sync
from relayer.chain.rpc import HttpRpc
from relayer.keys import RelayerKey
from relayer.processor import Processor
from relayer.quorum import BatchBody, Proposal, designated_proposer, envelope_digest
from relayer.store import Store
from relayer.types import Address, Fill, Hash32, SignedOrder
from tests.exchange.world import World

from .cluster import (
    N,
    Node,
    assert_views_match,
    crossing,
    gossip,
    last_seq,
    make_cluster,
    publish_garbage,
    publish_raw,
    resting_orders,
    wait_logs,
    wait_seq,
)


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilProcess]:
    with start_anvil_sync(log_path=tmp_path_factory.mktemp("net-anvil") / "anvil.log") as node:
        yield node


@pytest.fixture
async def world(anvil: AnvilProcess) -> AsyncIterator[World]:
    async with HttpRpc(anvil.http_url, timeout=30) as rpc:
        w = await World.create(rpc, AnvilControl(rpc), anvil.chain_id, relayers=N, threshold=3)
        for r in w.relayers:
            await w.control.set_balance(r.address, 10**22)
        yield w


@pytest.fixture
def cluster(tmp_path: Path, anvil: AnvilProcess, world: World) -> Iterator[list[Node]]:
    nodes = make_cluster(tmp_path, anvil, world)
    yield nodes
    for node in nodes:
        if node.alive():
            node.stop(signal.SIGKILL)


async def test_four_nodes_certify_and_settle_and_a_killed_node_rejoins(
    world: World, anvil: AnvilProcess, cluster: list[Node]
) -> None:
    maker = await world.trader("net-maker", deposit=1_000_000 * 10**6)
    taker = await world.trader("net-taker", deposit=1_000_000 * 10**6)
    for n in cluster:
        n.start()
    wait_logs(cluster, r"caught up with the chain")
    first = await gossip(world, anvil, cluster, lambda: crossing(world, maker, taker, 2 * 10**7))
    await wait_seq(world, cluster, 1)
    wait_logs(cluster, r"seq 2: round 0 starts \(included\)")  # every node saw batch 1 land
    assert await world.filled(first[1].order) == 2 * 10**7

    # kill -9 the node designated to propose seq 2 in round 0: the others (t = 3) time the silent round out, the next
    # proposer's batch lands; the killed one rejoins by itself and catches up
    chosen = designated_proposer([Address(r.address) for r in world.relayers], 2, 0)
    (victim,) = [n for n in cluster if n.key.address == chosen]
    victim.stop(signal.SIGKILL)
    second = await gossip(
        world, anvil, [n for n in cluster if n is not victim], lambda: crossing(world, maker, taker, 10**7)
    )
    await wait_seq(world, cluster, 2)
    wait_logs([n for n in cluster if n is not victim], r"seq 2: round 1 \(timeout\)")  # the silent round timed out
    victim.start()
    wait_logs([victim], r"caught up with the chain", timeout=60)
    # the other way round, with the restarted node in the mesh
    third = await gossip(world, anvil, cluster, lambda: crossing(world, taker, maker, 10**7))
    await wait_seq(world, cluster, 3)
    wait_logs(cluster, r"seq 4: round 0 starts \(included\)")
    for n in cluster:
        assert n.stop() == 0, n.text()[-3000:]
    await assert_views_match(world, cluster, [maker, taker], first + second + third)


async def test_anti_entropy_late_joiner_and_garbage(world: World, anvil: AnvilProcess, cluster: list[Node]) -> None:
    """Orders put into one node's store only (never gossiped) reach every node by anti-entropy, including a node that
    joins late; garbage and oversized gossip is refused without harm; the late joiner then takes part in a quorum."""
    maker = await world.trader("ae-maker", deposit=1_000_000 * 10**6)
    taker = await world.trader("ae-taker", deposit=1_000_000 * 10**6)
    early, late = cluster[:3], cluster[3]
    for n in early:
        n.start()
    wait_logs(early, r"caught up with the chain")
    first = await gossip(world, anvil, early, lambda: crossing(world, maker, taker, 10**7))
    await wait_seq(world, early, 1)
    wait_logs(early, r"seq 2: round 0 starts \(included\)")

    # node0 alone learns three resting orders (stopped, orders written through its processor, restarted)
    holder = cluster[0]
    assert holder.stop() == 0
    hidden = resting_orders(world, maker, 3)
    with Store.open(holder.home / "data") as store:
        processor = Processor.open(store, domain=world.domain)
        results = processor.intake_orders([(o, False) for o in hidden], now_ms=int(time.time() * 1000), source="sync")
        assert all(r.accepted for r in results), results
    holder.start()
    wait_logs([holder], r"caught up with the chain")

    # garbage on every topic, and an oversized message: refused by the validators, nobody crashes
    await publish_garbage(world, anvil, early)

    late.start()
    wait_logs([late], r"caught up with the chain")
    wait_logs([late], r"initial sync done: 3 of 3 bootstrap peer\(s\) answered", timeout=30)
    wait_logs(cluster[1:], r"order\(s\) from sync accepted", timeout=60)  # all but the holder fetched them

    # with node1 down, a batch needs the late joiner's vote (t = 3 of the remaining 3)
    assert cluster[1].stop(signal.SIGKILL) == -signal.SIGKILL
    second = await gossip(world, anvil, [cluster[0], cluster[2], late], lambda: crossing(world, taker, maker, 10**7))
    await wait_seq(world, cluster, 2)
    survivors = [cluster[0], cluster[2], late]
    wait_logs(survivors, r"seq 3: round 0 starts \(included\)")
    for n in survivors:
        assert n.stop() == 0, n.text()[-3000:]
    for n in survivors:
        with Store.open(n.home / "data") as store:
            held = {o.hash for o in Processor.open(store, domain=world.domain).open_orders()}
        assert {o.hash for o in hidden} <= held, f"node{n.index} lacks the anti-entropy orders"
        assert "the node crashed" not in n.text()  # (py-libp2p logs its own shutdown tracebacks; ours exit 0)
    await assert_views_match(world, survivors, [maker, taker], first + second)


@pytest.mark.parametrize("recovery", ["backup", "next_round"])
async def test_a_certificate_its_proposer_cannot_submit_is_recovered(
    tmp_path: Path, anvil: AnvilProcess, world: World, recovery: str
) -> None:
    """The proposer of (seq 1, round 0) has no gas money: its worker's transaction is refused, so the certificate it
    assembled never lands from it. ``backup``: the other holders check lastSeq after their staggered delay and the
    first one's backup submission settles that certificate. ``next_round``: with backups out of reach, the nodes give
    the certificate up once its deadline (+ grace) has passed, move to round 1, and round 1's proposer settles the
    orders."""
    chosen = designated_proposer([Address(r.address) for r in world.relayers], 1, 0)
    await world.control.set_balance(chosen, 0)
    maker = await world.trader(f"{recovery}-maker", deposit=1_000_000 * 10**6)
    taker = await world.trader(f"{recovery}-taker", deposit=1_000_000 * 10**6)
    # a long round 0, so that the designated proposer of (1, 0) is the one that sees the orders
    quorum: dict[str, int] = {"round_timeout_ms": 60_000, "round_timeout_max_ms": 60_000}
    if recovery == "backup":
        quorum["backup_submit_delay_ms"] = 1_000
    else:
        quorum.update({"backup_submit_delay_ms": 600_000, "batch_deadline_delta_s": 5, "certificate_grace_s": 1})
    nodes = make_cluster(tmp_path, anvil, world, extra={"quorum": quorum})
    try:
        for n in nodes:
            n.start()
        wait_logs(nodes, r"caught up with the chain")
        await gossip(world, anvil, nodes, lambda: crossing(world, maker, taker, 10**7))
        if recovery == "next_round":
            with trio.fail_after(60):  # the deadline is chain time: keep blocks coming
                while await last_seq(world) < 1:
                    await world.control.mine(1)
                    await trio.sleep(0.5)
        await wait_seq(world, nodes, 1)
        logs = await world.rpc.call(
            "eth_getLogs",
            [{"address": world.deployment.exchange, "fromBlock": hex(world.deployment.block), "toBlock": "latest"}],
        )
        events = (d.event for d in map(ex.decode_event, logs) if d is not None)
        settled = [e for e in events if isinstance(e, ex.BatchSettledEvent)]
        assert len(settled) == 1 and settled[0].seq == 1
        assert settled[0].submitter != chosen
        (proposer,) = [n for n in nodes if n.key.address == chosen]
        assert re.search(r"proposing seq 1 round 0", proposer.text())
        assert re.search(r"batch 1: failed", proposer.text()), proposer.text()[-3000:]
        others = [n for n in nodes if n is not proposer]
        if recovery == "backup":
            assert settled[0].round == 0
            assert any(re.search(r"submitting \(backup rank \d\)", n.text()) for n in others)
        else:
            assert settled[0].round >= 1  # round 0's certificate was given up, a later round's landed
            # at least one node gave the dead certificate up itself; the others may follow it by the f+1 jump rule
            # or by round 1's certificate, whichever reaches them first
            assert any(re.search(r"seq 1: round 1 \(certificate_dead\)", n.text()) for n in others)
            moved = r"seq 1: round [1-9][0-9]* \((certificate_dead|jump|certificate)\)"
            assert all(re.search(moved, n.text()) for n in others)
    finally:
        for n in nodes:
            if n.alive():
                n.stop(signal.SIGKILL)


async def _proposal(
    world: World, key: RelayerKey, seq: int, round_: int, orders: list[SignedOrder], amount: int
) -> bytes:
    """A proposal for (``seq``, ``round_``) on the chain as it is, signed by ``key``: one fill of ``amount`` between
    ``orders[0]`` (maker) and ``orders[1]``."""
    prev = ex.decode_last_batch_hash_result(await world.view(ex.encode_last_batch_hash()))
    head = int((await world.rpc.call("eth_getBlockByNumber", ["latest", False]))["timestamp"], 16)
    body = BatchBody(
        seq=seq,
        round=round_,
        prev_batch_hash=Hash32(prev),
        set_version=world.set_version,
        deadline=head + 30,
        orders=tuple(orders),
        fills=(Fill(0, 1, amount),),
    )
    digest = body.digest(world.domain)
    now = int(time.time())
    return Proposal(
        body=body,
        time=now,
        skipped=(),
        proposer=Address(key.address),
        batch_signature=eip712.sign_digest(key, digest),
        signature=eip712.sign_digest(key, envelope_digest(world.domain, digest, now, ())),
    ).encode()


async def test_a_malicious_and_equivocating_proposer_gets_no_batch_through(
    tmp_path: Path, anvil: AnvilProcess, world: World
) -> None:
    """Three honest `relayer run` processes and a fourth relayer played by the test. For seq 1, in a round it is
    designated for, it proposes an overfill: every honest node refuses it (no votes), and an honest proposer then
    settles those orders. For seq 2 it sends two different proposals for one round: the honest nodes store its two
    signatures as evidence, and again an honest proposer settles the orders, exactly once."""
    maker = await world.trader("mal-maker", deposit=1_000_000 * 10**6)
    taker = await world.trader("mal-taker", deposit=1_000_000 * 10**6)
    members = [Address(r.address) for r in world.relayers]
    nodes = make_cluster(
        tmp_path, anvil, world, extra={"quorum": {"round_timeout_ms": 800, "round_timeout_max_ms": 800}}
    )
    bad_key, honest = nodes[3].key, nodes[:3]
    try:
        for n in honest:
            n.start()
        wait_logs(honest, r"caught up with the chain")
        # never gossiped: the honest nodes first see these orders in the bad proposals
        first = crossing(world, maker, taker, 10**7)
        second = crossing(world, taker, maker, 10**7)

        async def overfill(r: int) -> list[bytes]:
            return [await _proposal(world, bad_key, 1, r, first, 2 * 10**7)]

        async def equivocate(r: int) -> list[bytes]:
            return [
                await _proposal(world, bad_key, 2, r, second, 10**7),
                await _proposal(world, bad_key, 2, r, second, 5 * 10**6),
            ]

        rounds = await publish_raw(
            world,
            anvil,
            honest,
            bad_key,
            lambda seq, r: designated_proposer(members, seq, r) == bad_key.address,
            [(1, overfill), (2, equivocate)],
        )
        wait_logs(honest, rf"refused seq 1 round {rounds[0]} from {bad_key.address}: overfill")
        wait_logs(honest, rf"EQUIVOCATION by {bad_key.address}")
        assert await wait_seq(world, honest, 2) == 2
        wait_logs(honest, r"seq 3: round 0 starts \(included\)")
    finally:
        for n in honest:
            if n.alive():
                assert n.stop() == 0, n.text()[-3000:]
    assert await world.filled(first[0].order) == 10**7  # the overfill never landed; the honest batch did
    assert await world.filled(second[0].order) in (10**7, 5 * 10**6)
    assert await last_seq(world) == 2
    for n in honest:
        with Store.open(n.home / "data") as store:
            evidence = list(store.iter_evidence())
        assert [(e.seq, e.round, e.signer) for e in evidence] == [(2, rounds[1], bad_key.address)], n.index
