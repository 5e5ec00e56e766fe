"""A cluster of real `relayer run` processes on 127.0.0.1 against a real anvil, for the network tests and
`make bench-p2p`: configs with bootstrap lists, start / SIGKILL / SIGTERM, log waits, and a trader gateway (a libp2p
host that is not a relayer) that gossips signed orders."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from bindings import exchange as ex
from relayer import eip712
from relayer.chain.anvil import AnvilProcess
from relayer.keys import RelayerKey
from relayer.p2p import HostConfig, P2PHost
from relayer.p2p.wire import pack_orders
from relayer.processor import Processor
from relayer.store import Store
from relayer.types import Hash32, Order, Side, SignedOrder
from tests.conftest import ROOT, VALID
from tests.exchange.world import MARKET, PRICE, World
from tests.exchange.world import test_key as key_of

RELAYER = ROOT / ".venv" / "bin" / "relayer"
N = 4


def make_cluster(
    tmp_path: Path, anvil: AnvilProcess, world: World, *, n: int = N, extra: dict[str, Any] | None = None
) -> list[Node]:
    """``n`` node configs (not started): relayer keys ``relayer-i`` (World's relayer set), each bootstrapping from
    all the others. ``extra`` merges into every config's sections."""
    keys = [RelayerKey(key_of(f"relayer-{i}")) for i in range(n)]
    ports = [free_port() for _ in range(n)]
    addrs = [f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{keys[i].peer_id}" for i in range(n)]
    nodes = []
    for i in range(n):
        raw = copy.deepcopy(VALID)
        home = tmp_path / f"node{i}"
        home.mkdir()
        raw["node"].update({"name": f"node{i}", "data_dir": str(home / "data")})
        raw["chain"].update(
            {
                "chain_id": anvil.chain_id,
                "rpc_http": [anvil.http_url],
                "rpc_ws": [anvil.ws_url],
                "exchange": world.deployment.exchange,
                "start_block": world.deployment.block,
                "confirmations": 2,
            }
        )
        raw["p2p"] = {
            "listen": [f"/ip4/127.0.0.1/tcp/{ports[i]}"],
            "bootstrap": [a for j, a in enumerate(addrs) if j != i],
            "heartbeat_ms": 200,
            "reconnect_interval_ms": 300,
            "dial_backoff_ms": 300,
        }
        raw["quorum"] = {"round_timeout_ms": 1_500}
        for section, values in (extra or {}).items():
            raw.setdefault(section, {}).update(values)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYER")}
        env.update({"RELAYER_PRIVATE_KEY": keys[i].secret.hex(), "HOME": str(home)})
        nodes.append(Node(i, home, raw, env, keys[i]))
    return nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, index: int, home: Path, config: dict[str, Any], env: dict[str, str], key: RelayerKey) -> None:
        self.index = index
        self.key = key
        self.listen = str(config["p2p"]["listen"][0])
        self.home = home
        self.config_path = home / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = home / "node.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_args: list[str] = ["--log", "relayer.quorum=debug,relayer.node=debug"]

    def start(self) -> None:
        handle = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(RELAYER), *self.log_args, "run", "--config", str(self.config_path)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        handle.close()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        self.proc = None
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_logs(nodes: list[Node], pattern: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(re.search(pattern, n.text()) for n in nodes):
            return
        for n in nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise AssertionError(f"node{n.index} exited {n.proc.returncode}:\n{n.text()[-4000:]}")
        time.sleep(0.1)
    missing = [n.index for n in nodes if not re.search(pattern, n.text())]
    raise AssertionError(f"nodes {missing} never logged {pattern!r}:\n{nodes[missing[0]].text()[-4000:]}")


async def last_seq(world: World) -> int:
    return int(ex.decode_last_seq_result(await world.view(ex.encode_last_seq())))


async def wait_seq(world: World, nodes: list[Node], at_least: int, limit_s: float = 90.0) -> int:
    with trio.move_on_after(limit_s):
        while (seq := await last_seq(world)) < at_least:
            for n in nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise AssertionError(f"node{n.index} exited {n.proc.returncode}:\n{n.text()[-4000:]}")
            await trio.sleep(0.2)
        return seq
    logs = "\n".join(f"--- node{n.index}\n{n.text()[-2500:]}" for n in nodes)
    raise AssertionError(f"seq {at_least} never landed (last seq {await last_seq(world)}):\n{logs}")


def crossing(world: World, maker_party: Any, taker_party: Any, amount: int) -> list[SignedOrder]:
    """A resting sell and a later buy at the same price, createdAt = now (the gossip intake window)."""
    now = int(time.time())
    out = []
    for party, side, created in ((maker_party, Side.SELL, now - 1), (taker_party, Side.BUY, now)):
        o: Order = world.order(party, side, amount, PRICE, created_at=created, expiry=now + 3_600)
        digest = eip712.order_digest(world.domain, o)
        out.append(SignedOrder(o, eip712.sign_digest(party.key, digest), Hash32(digest)))
    return out


@asynccontextmanager
async def gateway(
    world: World, anvil: AnvilProcess, nodes: list[Node], *, key: RelayerKey | None = None, quorum: bool = False
) -> AsyncIterator[P2PHost]:
    """A libp2p host on the network's topics (a trader gateway with a fresh key, or a relayer with ``key``),
    connected to every node and seen by each as a subscriber of ORDERS (of QUORUM when ``quorum``); closed on exit."""
    cfg = HostConfig(
        chain_id=anvil.chain_id,
        exchange=world.deployment.exchange,
        listen=("/ip4/127.0.0.1/tcp/0",),
        heartbeat_ms=200,
        reconnect_interval_ms=200,
        dial_backoff_ms=200,
    )
    host = P2PHost(key or RelayerKey.generate(), cfg)
    topic = host.topics.quorum if quorum else host.topics.orders
    if quorum:
        host.subscribe(topic)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        for n in nodes:
            host.add_peer(f"{n.listen}/p2p/{n.key.peer_id}")
        with trio.fail_after(30):
            for n in nodes:
                await host.wait_for_subscriber(n.key.peer_id, topic)
        yield host
        nursery.cancel_scope.cancel()


async def gossip(
    world: World,
    anvil: AnvilProcess,
    nodes: list[Node],
    orders: list[SignedOrder] | Callable[[], list[SignedOrder]],
    until: Callable[[], Awaitable[None]] | None = None,
) -> list[SignedOrder]:
    """Publish ``orders`` from a trader gateway host (not a relayer) connected to every node; a callable is called
    once the gateway is connected (orders signed then are fresh for the nodes' createdAt window). Returns them."""
    async with gateway(world, anvil, nodes) as host:
        if callable(orders):
            orders = orders()
        for message in pack_orders(orders, host.config.max_message_bytes):
            await host.publish(host.topics.orders, message)
        if until is not None:
            await until()  # keep the gateway up (its queued messages keep flowing) until the caller has seen them
        else:
            await trio.sleep(1.0)  # let the messages leave before the host closes
    return orders


async def assert_views_match(world: World, nodes: list[Node], parties: list[Any], orders: list[SignedOrder]) -> None:
    for n in nodes:
        with Store.open(n.home / "data") as store:
            state = Processor.open(store).chain_state()
        for p in parties:
            acct = await world.account(p)
            assert state.account(p.address).balance == int(acct.balance), (n.index, p.label)
            pos = await world.position(p, MARKET)
            got = state.account(p.address).position(MARKET)
            assert (got.size, got.cost) == (pos.size, pos.cost), (n.index, p.label)
        for o in orders:
            assert state.filled.get((o.order.trader, o.order.salt), 0) == await world.filled(o.order), n.index


def resting_orders(world: World, party: Any, n: int, *, first_salt: int = 1_000_000) -> list[SignedOrder]:
    """``n`` buys far below the price (they never cross), createdAt now."""
    now = int(time.time())
    out = []
    for i in range(n):
        o: Order = world.order(
            party, Side.BUY, 10**6, PRICE // 2 - i, salt=first_salt + i, created_at=now, expiry=now + 3_600
        )
        digest = eip712.order_digest(world.domain, o)
        out.append(SignedOrder(o, eip712.sign_digest(party.key, digest), Hash32(digest)))
    return out


async def publish_garbage(world: World, anvil: AnvilProcess, nodes: list[Node]) -> None:
    """Malformed, truncated and oversized messages on every topic, from a gateway host (not a relayer)."""
    async with gateway(world, anvil, nodes) as host:
        junk = [b"\x00", b"garbage" * 10, bytes(range(256)) * 4, b"\x01\x01" + b"\xff" * 300]
        for topic in (host.topics.orders, host.topics.cancels, host.topics.quorum):
            for data in junk:
                with contextlib.suppress(Exception):  # the gateway's own validator may refuse it locally
                    await host.publish(topic, data)
        with contextlib.suppress(Exception):
            await host.publish(host.topics.orders, b"\x01" * (host.config.max_message_bytes + 1))
        await trio.sleep(1.0)


def current_round(node: Node, seq: int = 1) -> int:
    rounds = [int(r) for r in re.findall(rf"seq {seq}: round (\d+) ", node.text())]
    return max(rounds, default=0)


async def publish_raw(
    world: World,
    anvil: AnvilProcess,
    nodes: list[Node],
    key: RelayerKey,
    designated: Callable[[int, int], bool],
    makers: list[tuple[int, Callable[[int], Awaitable[list[bytes]]]]],
) -> list[int]:
    """Play a relayer with ``key`` on the quorum topic. For each ``(seq, maker)``: wait until every node works on
    ``seq``, pick the next round at least two ahead of every node's where ``designated(seq, round)``, wait until every
    node has entered that round (their logs say so), then publish ``await maker(round)``. Returns the rounds
    used."""
    used: list[int] = []
    async with gateway(world, anvil, nodes, key=key, quorum=True) as host:
        for seq, make in makers:
            with trio.fail_after(90):
                while not all(re.search(rf"seq {seq}: round 0 starts", n.text()) for n in nodes):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            round_ = max(current_round(n, seq) for n in nodes) + 2
            while not designated(seq, round_):
                round_ += 1
            with trio.fail_after(60):
                while not all(current_round(n, seq) >= round_ for n in nodes):  # noqa: ASYNC110 -- polling logs
                    await trio.sleep(0.01)
            for data in await make(round_):
                await host.publish(host.topics.quorum, data)
            used.append(round_)
        await trio.sleep(1.0)
    return used
