"""Anti-entropy between real hosts: a node fetches exactly the orders and cancels it lacks."""

from __future__ import annotations

import pytest
import trio

from relayer.keys import RelayerKey
from relayer.p2p import OrderSync, P2PHost
from relayer.p2p.wire import OrderSetIndex, WireError
from relayer.types import PeerId, SignedCancel, SignedOrder

from .helpers import DOMAIN, config, make_cancel, make_orders, start

ORDERS = make_orders(1_500)
CANCELS = [make_cancel(50_000 + i) for i in range(10)]


class Node:
    """The part of a node OrderSync talks to: an order set kept in an index, fed by sync."""

    def __init__(self, orders: list[SignedOrder], cancels: list[SignedCancel]) -> None:
        self.index = OrderSetIndex(orders, cancels)
        self.fetches: list[tuple[PeerId, int, int]] = []
        self.changed = trio.Event()

    async def on_items(self, peer: PeerId, orders: list[SignedOrder], cancels: list[SignedCancel]) -> None:
        self.fetches.append((peer, len(orders), len(cancels)))
        for o in orders:
            self.index.add_order(o)
        for c in cancels:
            self.index.add_cancel(c)
        self.changed.set()
        self.changed = trio.Event()


async def test_a_node_fetches_what_it_lacks_on_connect_and_both_converge() -> None:
    a_node = Node(ORDERS, CANCELS)
    own_b = make_orders(5, start=90_000)
    b_node = Node([*ORDERS[:200], *own_b], CANCELS[:2])
    a = P2PHost(RelayerKey.generate(), config(max_message_bytes=65_536))  # small answers: several FETCH rounds
    b = P2PHost(RelayerKey.generate(), config(max_message_bytes=65_536))
    a_sync = OrderSync(a, DOMAIN, lambda: a_node.index, a_node.on_items, interval_ms=60_000)
    b_sync = OrderSync(b, DOMAIN, lambda: b_node.index, b_node.on_items, interval_ms=60_000)
    async with trio.open_nursery() as nursery:
        await start(nursery, a)
        b.add_peer(a.listen_addrs()[0])
        await start(nursery, b)
        nursery.start_soon(b_sync.run)  # syncs with a peer as soon as it connects
        with trio.fail_after(20):
            while len(b_node.index) < len(ORDERS) + len(CANCELS) + 5:
                await b_node.changed.wait()
        assert b_node.index.summary() != a_node.index.summary()  # a still lacks b's own five
        assert {p for p, _, _ in b_node.fetches} == {a.peer_id}
        assert sum(n for _, n, _ in b_node.fetches) == 1_300 and sum(m for _, _, m in b_node.fetches) == 8
        assert len(b_node.fetches) >= 3  # 1,300 orders do not fit one 64 KiB answer
        assert b_sync.stats.orders_fetched == 1_300 and b_sync.stats.cancels_fetched == 8
        assert a_sync.stats.requests_served >= 1 + 1 + 3

        with trio.fail_after(10):
            result = await a_sync.sync_with(b.peer_id)  # the other direction, by hand
        assert (result.orders, result.cancels, result.missing) == (5, 0, 5)
        assert a_node.index.summary() == b_node.index.summary()
        again = await b_sync.sync_with(a.peer_id)
        assert (again.differing_buckets, again.missing, again.requests) == (0, 0, 1)  # in sync: one summary
        nursery.cancel_scope.cancel()


async def test_a_bad_responder_is_a_counted_failure_not_a_crash() -> None:
    liar = P2PHost(RelayerKey.generate(), config())
    node = Node([], [])
    honest = P2PHost(RelayerKey.generate(), config())
    sync = OrderSync(honest, DOMAIN, lambda: node.index, node.on_items, interval_ms=60_000)
    answers = [b"\x11\x01" + bytes(10), b"garbage"]

    async def lie(peer: PeerId, payload: bytes) -> bytes:
        return answers.pop(0)

    liar.set_handler(honest.protocols.sync, lie)
    async with trio.open_nursery() as nursery:
        await start(nursery, liar)
        honest.add_peer(liar.listen_addrs()[0])
        await start(nursery, honest)
        with trio.fail_after(10):
            await honest.wait_for_peers([liar.peer_id])
            with pytest.raises(WireError):
                await sync.sync_with(liar.peer_id)
            await sync._round(liar.peer_id)
        assert sync.stats.failed_rounds == 1 and sync.stats.bad_responses == 1
        assert node.fetches == []
        # The responder side rejects garbage requests with an error answer, and keeps serving.
        with trio.fail_after(10):
            from relayer.p2p import RequestError

            with pytest.raises(RequestError) as err:
                await liar.request(honest.peer_id, honest.protocols.sync, b"\x99\x01", 5)
            assert err.value.reason == "remote" and "kind" in str(err.value)
            assert sync.stats.bad_requests == 1
            assert await liar.request(honest.peer_id, honest.protocols.sync, b"\x10\x01", 5)
        nursery.cancel_scope.cancel()
