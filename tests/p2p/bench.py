"""Throughput and latency of the p2p layer, 4 hosts in one process on 127.0.0.1 (figures for docs/p2p.md).

.venv/bin/python -m tests.p2p.bench            # all figures
.venv/bin/python -m tests.p2p.bench gossip     # one of: gossip, gossip12, rr, batch, sync, stock
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import Any

import trio

from relayer.keys import RelayerKey
from relayer.p2p import P2PHost, wire

from .helpers import DOMAIN, config, make_orders, start, wait_mesh

ORDERS = make_orders(8_000)


async def _mesh(nursery: trio.Nursery, n: int, **cfg: object) -> tuple[list[P2PHost], list[trio.MemoryReceiveChannel]]:  # type: ignore[type-arg]
    hosts: list[P2PHost] = []
    chans = []
    for _ in range(n):
        boot = tuple(h.listen_addrs()[0] for h in hosts)
        h = P2PHost(RelayerKey.generate(), config(bootstrap=boot, **cfg))
        chans.append(h.subscribe(h.topics.orders))
        await start(nursery, h)
        hosts.append(h)
    with trio.fail_after(20):
        for h in hosts:
            await h.wait_for_peers([o.peer_id for o in hosts if o is not h])
        await wait_mesh(hosts, hosts[0].topics.orders)
    return hosts, chans


async def gossip(messages: int = 2_000, per_message: int = 1, protocols: tuple[str, ...] | None = None) -> float:
    """All 4 hosts publish round robin; time until every host has decoded every other host's messages."""
    extra = {"gossip_protocols": protocols} if protocols else {}
    async with trio.open_nursery() as nursery:
        hosts, chans = await _mesh(nursery, 4, **extra)
        payloads = [wire.encode_orders(ORDERS[i * per_message : (i + 1) * per_message]) for i in range(messages)]
        want = [sum(1 for j in range(messages) if j % 4 != i) for i in range(4)]

        async def drain(i: int) -> None:
            got = 0
            async for msg in chans[i]:
                wire.decode_orders(msg.data, DOMAIN)
                got += 1
                if got == want[i]:
                    return

        t0 = time.perf_counter()
        async with trio.open_nursery() as inner:
            for i in range(4):
                inner.start_soon(drain, i)
            for j, data in enumerate(payloads):
                await hosts[j % 4].publish(hosts[j % 4].topics.orders, data)
        dt = time.perf_counter() - t0
        assert all(not h.stats.dropped_inbound and not h.stats.dropped_outbound for h in hosts)
        nursery.cancel_scope.cancel()
    return messages / dt


async def batch(per_message: int, orders: int = 8_000) -> float:
    """One host publishes ``orders`` orders, ``per_message`` a message; orders/s until the 3 others decoded all."""
    messages = orders // per_message
    async with trio.open_nursery() as nursery:
        hosts, chans = await _mesh(nursery, 4)
        payloads = [wire.encode_orders(ORDERS[i * per_message : (i + 1) * per_message]) for i in range(messages)]

        async def drain(i: int) -> None:
            got = 0
            async for msg in chans[i]:
                got += len(wire.decode_orders(msg.data, DOMAIN))
                if got == messages * per_message:
                    return

        t0 = time.perf_counter()
        async with trio.open_nursery() as inner:
            for i in range(1, 4):
                inner.start_soon(drain, i)
            for data in payloads:
                await hosts[0].publish(hosts[0].topics.orders, data)
        dt = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return messages * per_message / dt


async def rr(n: int = 2_000, reuse: bool = True) -> tuple[float, float, float]:
    """Sequential request/response round trips, 64-byte payloads: (mean, p50, p99) in ms."""
    server = P2PHost(RelayerKey.generate(), config())
    client = P2PHost(RelayerKey.generate(), config(max_idle_streams=4 if reuse else 0))

    async def echo(peer: object, payload: bytes) -> bytes:
        return payload

    server.set_handler(server.protocols.quorum, echo)
    times = []
    async with trio.open_nursery() as nursery:
        await start(nursery, server)
        client.add_peer(server.listen_addrs()[0])
        await start(nursery, client)
        with trio.fail_after(10):
            await client.wait_for_peers([server.peer_id])
        for _ in range(n):
            t0 = time.perf_counter()
            await client.request(server.peer_id, server.protocols.quorum, bytes(64), 5)
            times.append((time.perf_counter() - t0) * 1000)
        nursery.cancel_scope.cancel()
    times.sort()
    return statistics.fmean(times), times[len(times) // 2], times[int(len(times) * 0.99)]


async def sync(n: int = 8_000) -> float:
    """Anti-entropy: a node holding nothing fetches ``n`` orders from a peer; orders/s (decode included)."""
    from relayer.p2p import OrderSync
    from relayer.p2p.wire import OrderSetIndex

    full, empty = OrderSetIndex(ORDERS[:n]), OrderSetIndex()

    async def take(peer: object, orders: list, cancels: list) -> None:  # type: ignore[type-arg]
        for o in orders:
            empty.add_order(o)

    a = P2PHost(RelayerKey.generate(), config())
    b = P2PHost(RelayerKey.generate(), config())
    OrderSync(a, DOMAIN, lambda: full, take)
    b_sync = OrderSync(b, DOMAIN, lambda: empty, take)
    async with trio.open_nursery() as nursery:
        await start(nursery, a)
        b.add_peer(a.listen_addrs()[0])
        await start(nursery, b)
        with trio.fail_after(10):
            await b.wait_for_peers([a.peer_id])
        t0 = time.perf_counter()
        result = await b_sync.sync_with(a.peer_id)
        dt = time.perf_counter() - t0
        assert result.orders == n and len(empty) == n
        nursery.cancel_scope.cancel()
    return n / dt


async def stock(messages: int = 500) -> list[int]:
    """The burst of the tests on stock py-libp2p (Noise, D = 6, a 1 s heartbeat, every other default kept): how many
    of the other hosts' messages each host receives (the test's hosts receive all of them)."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.tools.anyio_service import background_trio_service

    topic = "stock"
    got = [0] * 4
    last = [time.perf_counter()]
    ready: list[tuple[str, Pubsub, object]] = []
    stop = trio.Event()

    async def node(i: int, boots: list[str], task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        kp = create_new_key_pair()
        h = new_host(key_pair=kp, sec_opt={NOISE: Noise(kp, noise_privkey=create_x25519().private_key)})
        gs = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1
        )
        ps = Pubsub(h, gs)
        async with (
            h.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]),
            background_trio_service(ps),
            background_trio_service(gs),
            trio.open_nursery() as inner,
        ):
            await ps.wait_until_ready()
            sub = await ps.subscribe(topic)
            for b in boots:
                await h.connect(info_from_p2p_addr(multiaddr.Multiaddr(b)))
            ready.append((f"{h.get_addrs()[0]}/p2p/{h.get_id()}", ps, h))

            async def recv() -> None:
                while True:
                    m = await sub.get()
                    if m.from_id != h.get_id().to_bytes():
                        got[i] += 1
                        last[0] = time.perf_counter()

            inner.start_soon(recv)
            task_status.started()
            await stop.wait()
            inner.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for i in range(4):
            await nursery.start(node, i, [r[0] for r in ready])
        with trio.fail_after(20):
            for _, ps, h in ready:
                for _, _, other in ready:
                    if other is not h:
                        await ps.wait_for_mesh(other.get_id(), topic, timeout=20)  # type: ignore[attr-defined]
        for j in range(messages):
            await ready[j % 4][1].publish(topic, b"m%d" % j)
        while time.perf_counter() - last[0] < 3:  # noqa: ASYNC110 - until 3 s pass without a delivery: a quiet time
            await trio.sleep(0.5)
        stop.set()
        nursery.cancel_scope.cancel()
    return got


async def main(which: str) -> None:
    if which in ("all", "gossip"):
        print(f"gossip, 4 hosts, 1 order/message, meshsub 1.1: {await gossip():,.0f} messages/s")
    if which in ("all", "gossip12"):
        rate = await gossip(protocols=("/meshsub/1.2.0", "/meshsub/1.1.0"))
        print(f"gossip, 4 hosts, 1 order/message, meshsub 1.2: {rate:,.0f} messages/s")
    if which in ("all", "rr"):
        for reuse in (True, False):
            mean, p50, p99 = await rr(1_000 if reuse else 300, reuse)
            label = "reused stream" if reuse else "new stream each"
            print(f"request/response ({label}): mean {mean:.2f} ms, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    if which in ("all", "batch"):
        for n in (1, 10, 100, 500):
            rate = await batch(n, 500 * n if n < 16 else 8_000)
            print(f"orders/s, 1 publisher -> 3 hosts, {n} orders/message: {rate:,.0f}")
    if which in ("all", "stock"):
        got = await stock()
        print(f"stock py-libp2p, 500-message burst over 4 hosts, received per host (of 375): {got}")
    if which in ("all", "sync"):
        print(f"anti-entropy, 8,000 missing orders fetched from one peer: {await sync():,.0f} orders/s")


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "all")
