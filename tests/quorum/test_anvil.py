"""Three cores (of a 4-relayer set, t = 3) certify a batch from their own books; the certificate settles on the real
contract on anvil, and the chain's events move every core to the next seq."""

from __future__ import annotations

from pathlib import Path

import trio

from bindings import exchange as ex
from relayer import eip712
from relayer.chain.anvil import AnvilControl, start_anvil
from relayer.chain.rpc import HttpRpc, JsonRpc, from_quantity
from relayer.chain.tx import send
from relayer.chainstate import ChainModel
from relayer.keys import RelayerKey
from relayer.matcher.book import Book
from relayer.quorum import (
    Action,
    BroadcastCertificate,
    Certificate,
    ChainView,
    OrderSource,
    QuorumCore,
    SendProposal,
    SendVote,
    SubmitCertificate,
    settle_call,
)
from relayer.types import Address, Hash32, Order, SignedOrder

from ..exchange.world import ONE, PRICE, World


async def chain_view(rpc: JsonRpc, world: World) -> ChainView:
    """The confirmed chain as a node's processor would rebuild it: every exchange event applied to a ChainModel."""
    model = ChainModel()
    raw = await rpc.call(
        "eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest", "address": world.deployment.exchange}]
    )
    for entry in raw:
        decoded = ex.decode_event(entry)
        if decoded is not None:
            model.apply_event(decoded.event)
    block = await rpc.call("eth_getBlockByNumber", ["latest", False])
    relayers = model.relayer_set
    assert relayers is not None
    return ChainView(
        model.last_seq, model.last_batch_hash, relayers, from_quantity(block["timestamp"]), model.chain_state()
    )


def signed(world: World, order: Order, key: bytes) -> SignedOrder:
    digest = eip712.order_digest(world.domain, order)
    return SignedOrder(order, eip712.sign_digest(key, digest), digest)


async def test_three_cores_certify_and_the_certificate_settles_on_anvil(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with start_anvil(log_path=tmp_path / "anvil.log") as node, HttpRpc(node.http_url, timeout=30) as rpc:
            world = await World.create(rpc, AnvilControl(rpc), node.chain_id, relayers=4, threshold=3)
            alice = await world.trader("alice", deposit=10_000 * 10**6)
            bob = await world.trader("bob", deposit=10_000 * 10**6)
            now = await world.now()
            sell = world.order(alice, 1, 2 * ONE, PRICE, created_at=now - 2)
            buy = world.order(bob, 0, 2 * ONE, PRICE + 5, created_at=now - 1)
            orders = [signed(world, sell, alice.key), signed(world, buy, bob.key)]
            view = await chain_view(rpc, world)
            assert (view.last_seq, view.relayers.threshold, len(view.relayers.members)) == (0, 3, 4)

            # relayer 1 proposes (1, 0) = index (1 + 0) mod 4; relayer 3 is down
            cores: dict[Address, QuorumCore] = {}
            for party in world.relayers[:3]:
                book = Book()
                seen: dict[bytes, int] = {}
                for o in orders:
                    book.add(o)
                    seen[o.hash] = now
                core = QuorumCore(RelayerKey(party.key), world.domain, OrderSource(lambda b=book: b, seen.get))
                cores[core.me] = core
            clock = view.head_time * 1000
            queue: list[tuple[Address, bytes]] = []
            certs: list[Certificate] = []

            def run(src: Address, actions: list[Action]) -> None:
                for a in actions:
                    if isinstance(a, SendProposal | BroadcastCertificate):
                        queue.extend((dst, a.data) for dst in cores if dst != src)
                    elif isinstance(a, SendVote):
                        queue.append((a.to, a.data))
                    elif isinstance(a, SubmitCertificate):
                        certs.append(a.certificate)

            for addr, core in cores.items():
                run(addr, core.on_chain(view, clock))
            while queue:
                dst, data = queue.pop(0)
                run(dst, cores[dst].on_message(data, clock))
            assert len(certs) == 1
            cert = certs[0]
            assert cert.seq == 1 and cert.round == 0 and len(cert.signatures) == 3
            assert world.relayers[3].address not in cert.signers

            # the certificate is directly settleable: its calldata goes to the contract as is
            await world.control.set_balance(world.relayers[1].address, 10**24)
            receipt = await send(
                rpc,
                world.relayers[1].signer,
                to=world.deployment.exchange,
                data=settle_call(cert),
                decode_revert=ex.decode_revert,
                what="settleBatch(1)",
            )
            events = [d.event for d in (ex.decode_event(lg) for lg in receipt.logs) if d is not None]
            [settled] = [e for e in events if isinstance(e, ex.BatchSettledEvent)]
            assert settled.seq == 1 and Hash32(settled.batch_hash) == cert.digest(world.domain)
            fills = [e for e in events if isinstance(e, ex.OrderFilledEvent)]
            assert [(f.amount, f.price) for f in fills] == [(2 * ONE, PRICE)]  # the maker's (alice's) price
            assert await world.filled(sell) == 2 * ONE and await world.filled(buy) == 2 * ONE

            # the chain's events move every core to seq 2, round 0
            after = await chain_view(rpc, world)
            assert after.last_seq == 1 and after.last_batch_hash == cert.digest(world.domain)
            for core in cores.values():
                core.on_chain(after, clock + 1_000)
                assert (core.seq, core.round) == (2, 0)
