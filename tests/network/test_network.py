"""Four real `relayer run` processes on 127.0.0.1 and a real anvil: orders gossiped by a trader gateway (a libp2p
host that is not a relayer) are matched, certified by a quorum (n = 4, t = 3) and settled; every node's view equals
the contract's; a node killed with SIGKILL and restarted rejoins and takes part again."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relayer.chain.anvil import AnvilControl, AnvilProcess, start_anvil_sync
from relayer.chain.rpc import HttpRpc
from relayer.processor import Processor
from relayer.store import Store
from tests.exchange.world import World

from .cluster import (
    N,
    Node,
    assert_views_match,
    crossing,
    gossip,
    make_cluster,
    publish_garbage,
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

    # kill -9 one node; the other three (t = 3) still certify; the killed one rejoins and catches up
    victim = cluster[2]
    victim.stop(signal.SIGKILL)
    second = await gossip(
        world, anvil, [n for n in cluster if n is not victim], lambda: crossing(world, maker, taker, 10**7)
    )
    await wait_seq(world, cluster, 2)
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
