"""Shared pieces of the p2p tests: signed orders and cancels, host configs, a running set of hosts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import trio

from relayer import eip712
from relayer.keys import RelayerKey
from relayer.p2p import HostConfig, P2PHost
from relayer.types import Address, MarketId, Order, OrderFlag, Salt, Side, SignedCancel, SignedOrder, TriggerKind

CHAIN_ID = 31337
EXCHANGE = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = eip712.Domain(CHAIN_ID, Address(EXCHANGE))
T0 = 1_800_000_000
TRADER_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
TRADER = Address(RelayerKey(TRADER_KEY).address)

FAST = HostConfig(
    chain_id=CHAIN_ID,
    exchange=EXCHANGE,
    listen=("/ip4/127.0.0.1/tcp/0",),
    heartbeat_ms=200,
    reconnect_interval_ms=100,
    dial_backoff_ms=100,
    dial_timeout_ms=2_000,
    request_timeout_ms=5_000,
)


def config(**changes: object) -> HostConfig:
    return replace(FAST, **changes)  # type: ignore[arg-type]


def make_order(salt: int, *, price: int = 2_000 * 10**6, side: Side = Side.BUY) -> SignedOrder:
    order = Order(
        trader=TRADER,
        market=MarketId(1),
        side=side,
        price=price,
        amount=10**8,
        salt=Salt(salt),
        created_at=T0,
        expiry=T0 + 86_400,
        flags=OrderFlag.NONE,
        trigger_kind=TriggerKind.NONE,
        trigger_price=0,
    )
    digest = eip712.order_digest(DOMAIN, order)
    return SignedOrder(order=order, signature=eip712.sign_digest(TRADER_KEY, digest), hash=digest)


def make_orders(n: int, start: int = 0) -> list[SignedOrder]:
    return [make_order(start + i, price=2_000 * 10**6 + i) for i in range(n)]


def make_cancel(salt: int) -> SignedCancel:
    digest = eip712.cancel_digest(DOMAIN, TRADER, salt)
    return SignedCancel(trader=TRADER, salt=Salt(salt), signature=eip712.sign_digest(TRADER_KEY, digest), hash=digest)


async def start(nursery: trio.Nursery, host: P2PHost) -> trio.CancelScope:
    """Start ``host`` in ``nursery``; the returned scope stops it."""
    scope = trio.CancelScope()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await host.run(task_status=task_status)

    await nursery.start(run)
    return scope


async def wait_mesh(hosts: Sequence[P2PHost], topic: str) -> None:
    """Wait until every host has each of its connected peers in its mesh for ``topic``."""
    for h in hosts:
        for peer in h.connected_peers():
            await h.wait_for_mesh(peer, topic)
