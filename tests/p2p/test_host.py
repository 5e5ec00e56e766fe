"""The libp2p host on real sockets (127.0.0.1): identity, Noise only, gossip without silent drops, validators,
request/response, and re-dialling a restarted peer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from relayer.config import parse_config
from relayer.keys import RelayerKey
from relayer.p2p import HostConfig, P2PHost, RequestError, Topics, peer_address, wire
from relayer.types import PeerId

from .helpers import DOMAIN, config, make_orders, start, wait_mesh


async def test_identity_is_the_relayer_key_and_noise_is_the_only_security() -> None:
    key = RelayerKey.generate()
    host = P2PHost(key, config())
    async with host:  # the context-manager form runs the host in its own nursery
        lp = host.libp2p_host
        assert lp.get_id().to_base58() == key.peer_id == host.peer_id
        assert peer_address(host.peer_id) == key.address  # the peer id names the relayer's address
        assert peer_address("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N") is None  # a sha256 (non-secp) id
        upgrader = lp.get_network().upgrader  # type: ignore[attr-defined]
        assert list(upgrader.security_multistream.transports) == ["/noise"]
        addr = host.listen_addrs()[0]
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith(f"/p2p/{key.peer_id}")

        # A peer offering only plaintext cannot connect.
        kp = create_new_key_pair()
        plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
        async with plain.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.fail_after(10), pytest.raises(Exception):  # noqa: B017, PT011 - any refusal will do
                await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            assert plain.get_connected_peers() == []
        assert host.connected_peers() == []
    assert host.listen_addrs() == []  # stopped


def test_config_from_the_node_config_and_namespaced_topics(valid_raw: dict[str, Any], tmp_path: Path) -> None:
    cfg = parse_config(valid_raw, base_dir=tmp_path)
    assert cfg.chain.exchange is not None
    hc = HostConfig.from_section(cfg.p2p, chain_id=cfg.chain.chain_id, exchange=cfg.chain.exchange, max_idle_streams=2)
    assert hc.listen == ("/ip4/127.0.0.1/tcp/9000",) and hc.heartbeat_ms == cfg.p2p.heartbeat_ms == 1_000
    assert hc.max_idle_streams == 2
    host = P2PHost(RelayerKey.generate(), hc)
    ex = cfg.chain.exchange.lower()
    assert host.topics == Topics(
        f"/perp/31337/{ex}/orders/1", f"/perp/31337/{ex}/cancels/1", f"/perp/31337/{ex}/quorum/1"
    )
    assert host.protocols.sync == f"/perp/31337/{ex}/sync/1"
    other = P2PHost(RelayerKey.generate(), config(chain_id=1))
    assert other.topics.orders != host.topics.orders and other.protocols.quorum != host.protocols.quorum


async def test_four_hosts_receive_a_burst_of_500_messages_without_drops() -> None:
    hosts: list[P2PHost] = []
    channels = []
    orders = make_orders(500)
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            boot = tuple(h.listen_addrs()[0] for h in hosts)
            host = P2PHost(RelayerKey.generate(), config(bootstrap=boot))
            channels.append(host.subscribe(host.topics.orders, validator=wire.orders_validator(DOMAIN)))
            await start(nursery, host)
            hosts.append(host)
        with trio.fail_after(15):
            for h in hosts:
                await h.wait_for_peers([o.peer_id for o in hosts if o is not h])
            await wait_mesh(hosts, hosts[0].topics.orders)

        received: list[set[bytes]] = [set() for _ in hosts]
        senders: list[set[PeerId]] = [set() for _ in hosts]
        expected = {o.hash for i, o in enumerate(orders)}

        async def collect(i: int) -> None:
            mine = {o.hash for j, o in enumerate(orders) if j % 4 == i}
            async for msg in channels[i]:
                for o in wire.decode_orders(msg.data, DOMAIN):
                    received[i].add(o.hash)
                senders[i].add(msg.sender)
                if received[i] == expected - mine:
                    return

        with trio.fail_after(45):
            async with trio.open_nursery() as inner:
                for i in range(4):
                    inner.start_soon(collect, i)
                for j, order in enumerate(orders):  # as fast as the hosts take them, round robin over publishers
                    await hosts[j % 4].publish(hosts[j % 4].topics.orders, wire.encode_orders([order]))
        for i, h in enumerate(hosts):
            assert received[i] == expected - {o.hash for j, o in enumerate(orders) if j % 4 == i}
            assert senders[i] == {o.peer_id for o in hosts if o is not h}
            assert h.stats.own_echoes == 125  # own publishes come back from py-libp2p, counted, not delivered
            assert h.stats.published[h.topics.orders] == 125
            assert not h.stats.dropped_inbound and h.stats.dropped_outbound == 0
            assert not h.stats.rejected
        nursery.cancel_scope.cancel()


async def test_garbage_and_oversized_messages_are_rejected_and_counted() -> None:
    victim = P2PHost(RelayerKey.generate(), config(max_message_bytes=4_096))
    honest = P2PHost(RelayerKey.generate(), config(max_message_bytes=4_096))
    attacker = P2PHost(RelayerKey.generate(), config(max_message_bytes=65_536))
    topic = victim.topics.orders
    inbox = victim.subscribe(topic, validator=wire.orders_validator(DOMAIN))
    honest.subscribe(topic, validator=wire.orders_validator(DOMAIN))
    attacker.subscribe(topic)  # no validator of its own: its garbage leaves the attacker
    async with trio.open_nursery() as nursery:
        await start(nursery, victim)
        boot = (victim.listen_addrs()[0],)
        for h in (honest, attacker):
            h.add_peer(boot[0])
            await start(nursery, h)
        with trio.fail_after(15):
            await victim.wait_for_peers([honest.peer_id, attacker.peer_id])
            await wait_mesh([victim, honest, attacker], topic)
            good = make_orders(3)
            bad_sig = wire.encode_orders(good[:1])[:-1] + bytes([0])  # v = 0 breaks the byte rules
            garbage = [
                b"",
                b"\x00",
                b"\x01\x01\x00\x05",
                b"\xff" * 300,
                bad_sig,
                wire.encode_cancels([]),
                wire.encode_orders([]),
            ]
            for data in garbage:
                await attacker.publish(topic, data)
            await attacker.publish(topic, wire.encode_orders(make_orders(40, start=100)))  # 5.3 KB > 4 KiB
            await attacker.publish(topic, wire.encode_orders(good[:2]))  # after its garbage, on the same stream
            await honest.publish(topic, wire.encode_orders(good[2:]))
            msgs: dict[PeerId, list[bytes]] = {}
            for _ in range(2):
                msg = await inbox.receive()
                msgs[msg.sender] = [o.hash for o in wire.decode_orders(msg.data, DOMAIN)]
        assert msgs == {attacker.peer_id: [o.hash for o in good[:2]], honest.peer_id: [good[2].hash]}
        rejected = {reason: n for (t, reason), n in victim.stats.rejected.items() if t == topic}
        assert rejected == {"truncated": 3, "kind": 2, "sig_v": 1, "empty": 1, "oversize": 1}, rejected
        assert victim.stats.delivered[topic] == 2
        assert victim.connected_peers() == sorted([honest.peer_id, attacker.peer_id])  # nothing crashed
        await victim.publish(topic, b"junk")  # an own publish is validated too: counted, not sent, no exception
        assert victim.stats.rejected[(topic, "kind")] == 3
        nursery.cancel_scope.cancel()


async def test_request_response_reuses_streams_and_survives_a_failing_handler() -> None:
    server = P2PHost(RelayerKey.generate(), config())
    client = P2PHost(RelayerKey.generate(), config())
    proto = server.protocols.quorum
    seen: list[PeerId] = []

    async def handler(peer: PeerId, payload: bytes) -> bytes:
        seen.append(peer)
        if payload == b"raise":
            raise ValueError("bad vote")
        if payload == b"sleep":
            await trio.sleep(10)
        return payload[::-1]

    server.set_handler(proto, handler)
    async with trio.open_nursery() as nursery:
        await start(nursery, server)
        client.add_peer(server.listen_addrs()[0])
        await start(nursery, client)
        with trio.fail_after(20):
            await client.wait_for_peers([server.peer_id])
            for i in range(50):
                assert await client.request(server.peer_id, proto, b"vote %d" % i, 5) == (b"vote %d" % i)[::-1]
            assert client.stats.streams_opened == 1 and client.stats.streams_reused == 49

            with pytest.raises(RequestError) as err:
                await client.request(server.peer_id, proto, b"raise", 5)
            assert err.value.reason == "remote" and "bad vote" in str(err.value)
            assert server.stats.handler_errors == 1
            assert await client.request(server.peer_id, proto, b"after", 5) == b"retfa"  # same stream, still fine

            with pytest.raises(RequestError) as err:
                await client.request(server.peer_id, proto, b"sleep", 0.3)
            assert err.value.reason == "timeout"
            assert await client.request(server.peer_id, proto, b"again", 5) == b"niaga"

            with pytest.raises(RequestError) as err:
                await client.request(server.peer_id, "/perp/unknown/1", b"x", 5)
            assert err.value.reason == "unreachable"
            with pytest.raises(RequestError) as err:
                await client.request(server.peer_id, proto, bytes(client.config.max_message_bytes + 1), 5)
            assert err.value.reason == "too_large"
        assert set(seen) == {client.peer_id}
        assert server.connected_peers() == [client.peer_id]
        nursery.cancel_scope.cancel()


async def test_a_restarted_peer_is_redialled_and_rejoins_the_mesh() -> None:
    key_a = RelayerKey.generate()
    a = P2PHost(key_a, config())
    topic = a.topics.quorum
    a.subscribe(topic, validator=wire.opaque_validator)
    async with trio.open_nursery() as nursery:
        scope_a = await start(nursery, a)
        addr_a = a.listen_addrs()[0]
        others = [P2PHost(RelayerKey.generate(), config(bootstrap=(addr_a,))) for _ in range(2)]
        for h in others:
            h.subscribe(topic, validator=wire.opaque_validator)
            await start(nursery, h)
        with trio.fail_after(10):
            for h in others:
                await h.wait_for_peers([a.peer_id])

        scope_a.cancel()  # kill A
        with trio.fail_after(10):
            for h in others:
                while a.peer_id in h.connected_peers():
                    await h.wait_peers_changed()

        port = multiaddr.Multiaddr(addr_a).value_for_protocol("tcp")
        a2 = P2PHost(key_a, config(listen=(f"/ip4/127.0.0.1/tcp/{port}",)))  # same key, same port, no bootstrap
        inbox = a2.subscribe(topic, validator=wire.opaque_validator)
        start_time = trio.current_time()
        await start(nursery, a2)
        with trio.fail_after(5):  # reconnect_interval 0.1 s + backoff 0.1 s: well within the bound
            await a2.wait_for_peers([h.peer_id for h in others])
            for h in others:
                await h.wait_for_peers([a2.peer_id])
                await h.wait_for_subscriber(a2.peer_id, topic)
            await others[0].publish(topic, b"proposal after restart")
            msg = await inbox.receive()
        assert msg.data == b"proposal after restart" and msg.sender == others[0].peer_id
        assert trio.current_time() - start_time < 5
        nursery.cancel_scope.cancel()


async def test_packed_messages_get_through_and_a_malformed_rpc_does_not_crash_the_host() -> None:
    """Orders packed as the node packs them (GOSSIP_TARGET_BYTES a message) all arrive; a peer that writes bytes that
    are not a pubsub RPC on the pubsub protocol loses its stream, and the host keeps working."""
    a = P2PHost(RelayerKey.generate(), config(max_message_bytes=1_048_576))
    b = P2PHost(RelayerKey.generate(), config(max_message_bytes=1_048_576))
    topic = a.topics.orders
    inbox = b.subscribe(topic, validator=wire.orders_validator(DOMAIN))
    a.subscribe(topic)
    orders = make_orders(3_000)
    messages = wire.pack_orders(orders, 1_048_576)
    assert len(messages) == 4 and all(len(m) <= wire.GOSSIP_TARGET_BYTES for m in messages)
    async with trio.open_nursery() as nursery:
        await start(nursery, b)
        a.add_peer(b.listen_addrs()[0])
        await start(nursery, a)
        with trio.fail_after(30):
            await wait_mesh([a, b], topic)
            # a corrupt RPC on a fresh pubsub stream: length prefix 300, then bytes that are no protobuf
            info = info_from_p2p_addr(multiaddr.Multiaddr(b.listen_addrs()[0]))
            a.libp2p_host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3_600)
            stream = await a.libp2p_host.new_stream(info.peer_id, [PROTOCOL_ID_V11])
            await stream.write(b"\xac\x02" + b"\xff" * 300)
            for m in messages:
                await a.publish(topic, m)
            got = 0
            while got < len(orders):
                got += len(wire.decode_orders((await inbox.receive()).data, DOMAIN))
        assert got == len(orders) and a.stats.dropped_outbound == 0
        assert b.pubsub.bad_rpcs == 1
        nursery.cancel_scope.cancel()
