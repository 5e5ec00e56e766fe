"""A simulated network of QuorumCores in one process: fake clock, message delivery under the test's control, a
simulated chain that includes certificates (seq, prevBatchHash, deadline and fill counters as the contract keeps
them). Deterministic: queues are FIFO, nodes are visited in address order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from relayer import eip712, margin
from relayer.chain.deploy import default_market_params
from relayer.chainstate import MarketInfo, RelayerSet
from relayer.keys import RelayerKey
from relayer.matcher.book import Book
from relayer.matcher.model import ChainState
from relayer.quorum import (
    Action,
    BatchBody,
    BroadcastCertificate,
    Certificate,
    ChainView,
    CheckThenSubmit,
    OrderSource,
    Persist,
    Proposal,
    QuorumCore,
    QuorumParams,
    SendProposal,
    SendVote,
    Skip,
    SubmitCertificate,
    Vote,
    decode_message,
    envelope_digest,
    sorted_members,
)
from relayer.quorum.persist import load_records, persist
from relayer.store import EquivocationError, QuorumWriter, Store
from relayer.types import Address, Fill, Hash32, MarketId, Order, OrderFlag, Salt, Side, SignedOrder, TriggerKind
from tests.exchange.world import test_key

CHAIN_ID = 31337
DOMAIN = eip712.Domain(chain_id=CHAIN_ID, verifying_contract=Address("0x" + "5a" * 20))
MARKET = 1
PRICE = 2_000 * 10**6
ONE = margin.SIZE_ONE
FAR = 2**32 - 1
T0 = 1_700_000_000  # chain / wall time at the start, seconds
ZERO32 = Hash32(bytes(32))
RICH = 10**6 * 10**6 * ONE  # a million collateral units


def relayer_keys(n: int) -> list[RelayerKey]:
    keys = [RelayerKey(test_key(f"relayer-{i}")) for i in range(n)]
    return sorted(keys, key=lambda k: int(k.address, 16))


def trader_key(label: str) -> bytes:
    return test_key(f"trader {label}")


def trader_address(label: str) -> Address:
    return Address(RelayerKey(trader_key(label)).address)


def market_params() -> margin.MarketParams:
    params = MarketInfo(default_market_params(), PRICE).to_margin()
    assert params is not None
    return params


def make_order(
    label: str,
    side: Side,
    amount: int = ONE,
    price: int = PRICE,
    *,
    salt: int,
    created_at: int = T0,
    expiry: int = FAR,
    flags: int = 0,
    key: bytes | None = None,
    domain: eip712.Domain = DOMAIN,
) -> SignedOrder:
    order = Order(
        trader=trader_address(label),
        market=MarketId(MARKET),
        side=side,
        price=price,
        amount=amount,
        salt=Salt(salt),
        created_at=created_at,
        expiry=expiry,
        flags=OrderFlag(flags),
        trigger_kind=TriggerKind.NONE,
        trigger_price=0,
    )
    digest = eip712.order_digest(domain, order)
    sig = eip712.sign_digest(key if key is not None else trader_key(label), digest)
    return SignedOrder(order=order, signature=sig, hash=digest)


@dataclass
class SimChain:
    """The contract's settlement state: last seq and batch hash, fill counters, the head time (seconds)."""

    relayers: RelayerSet
    last_seq: int = 0
    last_hash: Hash32 = ZERO32
    head_time: int = T0
    filled: dict[tuple[Address, Salt], int] = field(default_factory=dict)
    cancelled: set[tuple[Address, Salt]] = field(default_factory=set)
    accounts: dict[Address, margin.Account] = field(default_factory=dict)
    landed: list[Certificate] = field(default_factory=list)

    def state(self) -> ChainState:
        return ChainState(
            markets={MARKET: market_params()},
            accounts=dict(self.accounts),
            filled=dict(self.filled),
            cancelled=frozenset(self.cancelled),
        )

    def view(self) -> ChainView:
        return ChainView(self.last_seq, self.last_hash, self.relayers, self.head_time, self.state())

    def include(self, cert: Certificate) -> bool:
        """settleBatch: True if the certificate takes its seq (the contract's anchor checks)."""
        b = cert.body
        if b.seq != self.last_seq + 1 or b.prev_batch_hash != self.last_hash or self.head_time > b.deadline:
            return False
        assert len(cert.signatures) >= self.relayers.threshold
        for f in b.fills:
            for idx in (f.maker, f.taker):
                key = b.orders[idx].order.key
                self.filled[key] = self.filled.get(key, 0) + f.amount
        self.last_seq, self.last_hash = b.seq, cert.digest(DOMAIN)
        self.landed.append(cert)
        return True


@dataclass
class Node:
    key: RelayerKey
    core: QuorumCore
    book: Book
    seen: dict[bytes, int]
    store: Store | None = None
    sent: list[Action] = field(default_factory=list)
    online: bool = True

    @property
    def address(self) -> Address:
        return Address(self.key.address)


class Net:
    """N cores, a FIFO message queue, a fake clock (ms) and a simulated chain."""

    def __init__(
        self,
        n: int = 4,
        threshold: int = 3,
        params: QuorumParams | None = None,
        store_dir: Path | None = None,
    ) -> None:
        self.keys = relayer_keys(n)
        self.params = params or QuorumParams()
        members = sorted_members([Address(k.address) for k in self.keys])
        self.chain = SimChain(RelayerSet(1, members, threshold))
        self.now = T0 * 1000
        self.queue: list[tuple[Address, bytes]] = []
        self.submissions: list[tuple[Address, Action]] = []
        self.log: list[tuple[Address, Action]] = []
        self.drop: Callable[[Address, Address, bytes], bool] = lambda src, dst, data: False
        self.auto_include = True
        self.dead_workers: set[Address] = set()  # their submissions never reach the chain
        self.store_dir = store_dir
        self._sources: list[Address] = []
        self.persist_failures: list[tuple[Address, Persist]] = []
        self._writers: dict[Address, QuorumWriter] = {}
        self.nodes: dict[Address, Node] = {}
        for k in self.keys:
            self.nodes[Address(k.address)] = self._make_node(k, Book(), {})

    def _make_node(self, key: RelayerKey, book: Book, seen: dict[bytes, int]) -> Node:
        store = None
        proposals: list = []
        votes: list = []
        if self.store_dir is not None:
            store = Store.open(self.store_dir / key.address)
            proposals, votes = load_records(store)
        source = OrderSource(lambda: book, seen.get)
        core = QuorumCore(key, DOMAIN, source, self.params, proposals=proposals, votes=votes)
        return Node(key, core, book, seen, store)

    def restart(self, address: Address) -> Node:
        """Throw the node's core away and re-create it from its store (the book and first-seen times survive, as
        the processor would restore them); it catches up with the chain at once."""
        old = self.nodes[address]
        assert old.store is not None
        old.store.close()
        self._writers.pop(address, None)
        node = self._make_node(old.key, old.book, old.seen)
        self.nodes[address] = node
        self.execute(node, node.core.on_chain(self.chain.view(), self.now))
        return node

    @property
    def members(self) -> tuple[Address, ...]:
        return self.chain.relayers.members

    def node(self, i: int) -> Node:
        return self.nodes[self.members[i]]

    def proposer(self, seq: int, round_: int) -> Node:
        return self.nodes[self.members[(seq + round_) % len(self.members)]]

    # ---------------------------------------------------------------- inputs

    def start(self) -> None:
        view = self.chain.view()
        for node in self._online():
            self.execute(node, node.core.on_chain(view, self.now))
        self.deliver()

    def add_order(self, signed: SignedOrder, to: Sequence[Node] | None = None, *, seen_at: int | None = None) -> None:
        for node in to if to is not None else list(self.nodes.values()):
            node.book.add(signed)
            node.seen.setdefault(signed.hash, (self.now // 1000) if seen_at is None else seen_at)

    def _online(self) -> list[Node]:
        return [self.nodes[a] for a in self.members if a in self.nodes and self.nodes[a].online]

    def execute(self, node: Node, actions: list[Action]) -> None:
        for action in actions:
            self.log.append((node.address, action))
            node.sent.append(action)
            if isinstance(action, Persist):
                if node.store is not None:
                    try:
                        persist(self._writer(node), action)
                    except EquivocationError:
                        self.persist_failures.append((node.address, action))
                        return  # the promise must not leave: drop the rest of this step's actions
            elif isinstance(action, SendProposal | BroadcastCertificate):
                for other in self.members:
                    if other != node.address:
                        self.queue.append((other, action.data))
                        self._sources.append(node.address)
            elif isinstance(action, SendVote):
                self.queue.append((action.to, action.data))
                self._sources.append(node.address)
            elif isinstance(action, SubmitCertificate | CheckThenSubmit):
                self.submissions.append((node.address, action))
                if self.auto_include and node.address not in self.dead_workers:
                    cert = action.certificate
                    if isinstance(action, CheckThenSubmit) and self.chain.last_seq >= action.seq:
                        continue  # the check: already included, no transaction
                    if self.chain.include(cert):
                        self.push_chain()

    def _writer(self, node: Node) -> QuorumWriter:
        w = self._writers.get(node.address)
        if w is None:
            assert node.store is not None
            w = self._writers[node.address] = node.store.quorum()
        return w

    def push_chain(self) -> None:
        view = self.chain.view()
        for node in self._online():
            self.execute(node, node.core.on_chain(view, self.now))

    def deliver(self, limit: int = 100_000) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < limit, "message storm"
            dst, data = self.queue.pop(0)
            src = self._sources.pop(0)
            node = self.nodes.get(dst)
            if node is None or not node.online or self.drop(src, dst, data):
                continue
            self.execute(node, node.core.on_message(data, self.now))

    def advance(self, ms: int, step: int = 250) -> None:
        """Move the clock (and the chain head) forward in steps, ticking every online node and delivering."""
        end = self.now + ms
        while self.now < end:
            self.now = min(end, self.now + step)
            self.chain.head_time = max(self.chain.head_time, self.now // 1000)
            self.push_chain()
            for node in self._online():
                self.execute(node, node.core.tick(self.now))
            self.deliver()

    def run_until(self, cond: Callable[[], bool], max_ms: int = 600_000, step: int = 250) -> int:
        start = self.now
        while not cond():
            assert self.now - start < max_ms, "condition not reached"
            self.advance(step, step)
        return self.now - start

    def actions(self, kind: type, node: Node | None = None) -> list:
        return [a for src, a in self.log if isinstance(a, kind) and (node is None or src == node.address)]

    def decode(self, data: bytes) -> object:
        return decode_message(data, DOMAIN)


def rich(chain: SimChain, *labels: str) -> None:
    for label in labels:
        chain.accounts[trader_address(label)] = margin.Account(RICH)


def with_body(cert: Certificate, **changes: object) -> Certificate:
    return Certificate(replace(cert.body, **changes), cert.signatures)  # type: ignore[arg-type]


def craft(
    key: RelayerKey,
    seq: int,
    round_: int,
    orders: Sequence[SignedOrder],
    fills: Sequence[tuple[int, int, int]],
    *,
    prev: bytes = bytes(32),
    set_version: int = 1,
    deadline: int = T0 + 30,
    time: int = T0,
    skipped: Sequence[Skip] = (),
) -> Proposal:
    """A proposal signed by ``key``, whatever it holds (for malicious proposers)."""
    body = BatchBody(
        seq=seq,
        round=round_,
        prev_batch_hash=Hash32(prev),
        set_version=set_version,
        deadline=deadline,
        orders=tuple(orders),
        fills=tuple(Fill(m, t, a) for m, t, a in fills),
    )
    digest = body.digest(DOMAIN)
    return Proposal(
        body=body,
        time=time,
        skipped=tuple(skipped),
        proposer=Address(key.address),
        batch_signature=eip712.sign_digest(key, digest),
        signature=eip712.sign_digest(key, envelope_digest(DOMAIN, digest, time, tuple(skipped))),
    )


def vote_of(key: RelayerKey, seq: int, round_: int, digest: bytes) -> Vote:
    return Vote(seq, round_, Hash32(digest), Address(key.address), eip712.sign_digest(key, digest))
