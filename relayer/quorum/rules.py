"""The voter's objective checks of a proposal and the certificate checks (docs/protocol.md "Voting rules").

Pure functions of the proposal, the node's confirmed chain view, its own book and the times passed in. Every refusal
names one reason (:class:`Refusal`) and a detail a person can read. Margin is deliberately NOT checked: it is the
proposer's job and the chain's (a failing fill is skipped), so a voter whose view lags cannot block the network.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relayer import eip712
from relayer.chainstate import ChainModel, RelayerSet
from relayer.matcher.batch import dead_reason
from relayer.matcher.book import Book, trigger_holds
from relayer.matcher.model import BATCH_BASE_GAS, FILL_GAS, ChainState, SkipReason
from relayer.quorum.messages import NOT_SEEN, BatchBody, Certificate, MessageError, Proposal, Skip, Vote
from relayer.types import Address, Hash32, OrderFlag, Salt, Side, SignedOrder

__all__ = [
    "CHECKED_SKIP_REASONS",
    "ChainView",
    "OrderSource",
    "QuorumParams",
    "Refusal",
    "RuleError",
    "check_certificate",
    "check_proposal",
    "check_proposal_signatures",
    "designated_proposer",
    "fault_tolerance",
    "recover_vote",
    "sorted_members",
]

_POST_ONLY, _REDUCE_ONLY, _FOK = int(OrderFlag.POST_ONLY), int(OrderFlag.REDUCE_ONLY), int(OrderFlag.FOK)


class Refusal(enum.Enum):
    """Why a voter refuses a proposal (or a node ignores a message). Values are stable names for logs/metrics."""

    WRONG_SEQ = "wrong_seq"
    WRONG_PROPOSER = "wrong_proposer"
    BAD_PROPOSER_SIGNATURE = "bad_proposer_signature"
    WRONG_PREV_HASH = "wrong_prev_batch_hash"
    WRONG_SET_VERSION = "wrong_set_version"
    BAD_DEADLINE = "bad_deadline"
    BAD_TIME = "bad_proposal_time"
    GAS_CAP = "gas_cap"
    MALFORMED = "malformed_batch"
    BAD_ORDER_SIGNATURE = "bad_order_signature"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    DEAD = "dead_order"  # bounds, market or already filled (dead_reason other than expired / cancelled)
    BACKDATED = "backdated"
    MARKET_MISMATCH = "market_mismatch"
    NO_CROSS = "no_cross"
    WRONG_MAKER = "wrong_maker"
    SELF_TRADE = "self_trade"
    POST_ONLY_TAKER = "post_only_taker"
    FOK = "fok"
    OVERFILL = "overfill"
    UNFAIR_SKIP = "unfair_skip"
    ALREADY_VOTED = "already_voted"
    EQUIVOCATED = "proposer_equivocated"
    NOT_A_MEMBER = "not_a_member"


class RuleError(Exception):
    """A check failed: ``reason`` and a readable ``detail``."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True, slots=True)
class ChainView:
    """The node's confirmed chain as the quorum needs it: the last included batch (seq and digest), the relayer set
    governing batch ``last_seq + 1``, the chain head time (seconds) and the matcher's chain state (fill counters,
    on-chain cancels, markets)."""

    last_seq: int
    last_batch_hash: Hash32
    relayers: RelayerSet
    head_time: int
    state: ChainState

    @property
    def members(self) -> tuple[Address, ...]:
        return sorted_members(self.relayers.members)

    @classmethod
    def from_model(cls, model: ChainModel, head_time: int) -> ChainView | None:
        """The view of a :class:`~relayer.chainstate.ChainModel` (the processor's included view) at chain head time
        ``head_time``; None while the model knows no relayer set (nothing to run a quorum for yet)."""
        relayers = model.relayer_set
        if relayers is None:
            return None
        return cls(model.last_seq, model.last_batch_hash, relayers, head_time, model.chain_state())


@dataclass(frozen=True, slots=True)
class QuorumParams:
    """Network parameters every node must agree on (seconds unless said otherwise; round timers in milliseconds)."""

    deadline_delta: int = 30
    """A proposer's deadline is its head time + this."""
    deadline_tolerance: int = 15
    """A voter accepts ``head < deadline <= head + deadline_delta + deadline_tolerance`` (heads differ a little)."""
    gas_cap: int = 30_000_000
    max_fills: int = 200
    intake_window: int = 2
    """createdAt of an order first seen in a proposal must be within this of the proposal's time."""
    clock_tolerance: int = 10
    """A proposal's time must be within this of the voter's clock."""
    gossip_bound: int = 5
    """An order a voter has held this long is one every honest proposer must have seen (fairness rule)."""
    round_timeout_ms: int = 2_000
    round_timeout_cap_ms: int = 60_000
    grace: int = 10
    """Seconds after a certificate's deadline before nodes give up on it and move to the next round."""
    backup_delay_ms: int = 6_000
    backup_step_ms: int = 3_000

    def round_timeout(self, round_: int) -> int:
        """Round ``round_``'s timeout in ms: base * 2**round, capped (rounds restart at 0 for every seq)."""
        if round_ >= 40:
            return self.round_timeout_cap_ms
        return min(self.round_timeout_ms << round_, self.round_timeout_cap_ms)


def sorted_members(members: Sequence[Address]) -> tuple[Address, ...]:
    """The set sorted ascending by address as a number (the contract's signer order)."""
    return tuple(sorted(members, key=lambda a: int(a, 16)))


def designated_proposer(members: Sequence[Address], seq: int, round_: int) -> Address:
    """The proposer of (seq, round): index ``(seq + round) mod n`` of the set sorted by address."""
    ordered = sorted_members(members)
    return ordered[(seq + round_) % len(ordered)]


def fault_tolerance(relayers: RelayerSet) -> int:
    """f = n - t: messages from f + 1 distinct relayers include at least one honest one."""
    return len(relayers.members) - relayers.threshold


def recover_vote(vote: Vote) -> Address:
    """The vote's signer if the signature is valid and is the named voter's; RuleError otherwise."""
    try:
        signer = eip712.recover(vote.batch_digest, vote.signature)
    except (eip712.SignatureError, eip712.EncodingError) as exc:
        raise RuleError(Refusal.BAD_PROPOSER_SIGNATURE, f"vote signature: {exc}") from None
    if signer != vote.voter:
        raise RuleError(Refusal.BAD_PROPOSER_SIGNATURE, f"vote signed by {signer}, not {vote.voter}")
    return signer


def check_proposal_signatures(p: Proposal, domain: eip712.Domain, relayers: RelayerSet) -> Hash32:
    """The proposer is the designated one for (seq, round) and signed both the batch and the envelope; returns the
    batch digest."""
    expected = designated_proposer(relayers.members, p.seq, p.round)
    if p.proposer != expected:
        raise RuleError(Refusal.WRONG_PROPOSER, f"{p.proposer} is not the proposer of ({p.seq}, {p.round}): {expected}")
    try:
        digest = p.digest(domain)
        envelope = p.envelope(domain)
    except MessageError as exc:  # a Proposal built in memory with out-of-range fields (decoded ones cannot be)
        raise RuleError(Refusal.MALFORMED, str(exc)) from None
    for what, d, sig in (("batch", digest, p.batch_signature), ("envelope", envelope, p.signature)):
        try:
            eip712.verify_signer(d, sig, p.proposer)
        except eip712.SignatureError as exc:
            raise RuleError(Refusal.BAD_PROPOSER_SIGNATURE, f"{what} signature: {exc}") from None
    return digest


class OrderSource:
    """The node's own book as the quorum reads it: the matcher's :class:`Book` (which knows signed cancels and
    superseded versions) and the time (seconds) the node first saw each order. ``first_seen`` must answer for every
    order the node holds (an order that came by sync: the time it came); None means "first seen in this proposal",
    which subjects the order to the intake-window check. Subclass or pass callables."""

    def __init__(self, book: Callable[[], Book], first_seen: Callable[[bytes], int | None]) -> None:
        self._book = book
        self._first_seen = first_seen

    def book(self) -> Book:
        return self._book()

    def first_seen(self, order_hash: bytes) -> int | None:
        return self._first_seen(order_hash)


def _structure(body: BatchBody) -> None:
    if not body.fills:
        raise RuleError(Refusal.MALFORMED, "a batch without fills")
    hashes = body.order_hashes
    if len(set(hashes)) != len(hashes):
        raise RuleError(Refusal.MALFORMED, "an order is listed twice")
    used: set[int] = set()
    for i, f in enumerate(body.fills):
        n = len(hashes)
        if not (0 <= f.maker < n and 0 <= f.taker < n) or f.maker == f.taker:
            raise RuleError(Refusal.MALFORMED, f"fill {i} indexes orders ({f.maker}, {f.taker}) of {n}")
        if f.amount <= 0:
            raise RuleError(Refusal.MALFORMED, f"fill {i} has amount {f.amount}")
        used.update((f.maker, f.taker))
    if len(used) != len(hashes):
        raise RuleError(Refusal.MALFORMED, "the order list holds orders no fill uses")


def _order_alive(signed: SignedOrder, book: Book, state: ChainState, deadline: int) -> None:
    o = signed.order
    reason = dead_reason(o, state, deadline)
    if reason == SkipReason.EXPIRED:
        raise RuleError(Refusal.EXPIRED, f"order 0x{signed.hash.hex()} expires at {o.expiry} <= deadline {deadline}")
    if reason == SkipReason.CANCELLED:
        raise RuleError(Refusal.CANCELLED, f"order 0x{signed.hash.hex()} is cancelled on chain")
    if (o.trader, o.salt) in book.cancelled or o.salt < book.cancelled_up_to.get(o.trader, 0):
        raise RuleError(Refusal.CANCELLED, f"order 0x{signed.hash.hex()} is cancelled by a signed cancel")
    if signed.hash in book.superseded:
        raise RuleError(Refusal.SUPERSEDED, f"order 0x{signed.hash.hex()} is superseded by a newer version")
    current = book.current(o.trader, o.salt)
    if current is not None and current != signed.hash:
        newer = book.get(current)
        # amendments never move createdAt back; one that keeps it only shrinks the amount
        if newer is not None and (
            newer.order.created_at > o.created_at
            or (newer.order.created_at == o.created_at and newer.order.amount < o.amount)
        ):
            raise RuleError(Refusal.SUPERSEDED, f"order 0x{signed.hash.hex()} has a newer version 0x{current.hex()}")
    if reason is not None:
        raise RuleError(Refusal.DEAD, f"order 0x{signed.hash.hex()} can never fill: {reason.name}")


def _fills(body: BatchBody, state: ChainState) -> None:
    orders = body.orders
    done: dict[tuple[Address, Salt], int] = {}
    fok_uses: dict[int, int] = {}
    for i, f in enumerate(body.fills):
        maker, taker = orders[f.maker], orders[f.taker]
        m, t = maker.order, taker.order
        if m.market != t.market or m.side == t.side:
            raise RuleError(
                Refusal.MARKET_MISMATCH, f"fill {i}: markets {m.market}/{t.market}, sides {m.side}/{t.side}"
            )
        buy, sell = (m, t) if m.side == Side.BUY else (t, m)
        if buy.price < sell.price:
            raise RuleError(Refusal.NO_CROSS, f"fill {i}: buy {buy.price} < sell {sell.price}")
        if (t.created_at, taker.hash) < (m.created_at, maker.hash):
            raise RuleError(Refusal.WRONG_MAKER, f"fill {i}: the maker is not the earlier order by (createdAt, hash)")
        if m.trader == t.trader:
            raise RuleError(Refusal.SELF_TRADE, f"fill {i}: maker and taker are both {m.trader}")
        if int(t.flags) & _POST_ONLY:
            raise RuleError(Refusal.POST_ONLY_TAKER, f"fill {i}: the taker is post-only")
        for idx, signed in ((f.maker, maker), (f.taker, taker)):
            o = signed.order
            if int(o.flags) & _FOK:
                fok_uses[idx] = fok_uses.get(idx, 0) + 1
                if f.amount != o.amount or fok_uses[idx] > 1 or state.filled.get(o.key, 0):
                    raise RuleError(Refusal.FOK, f"fill {i}: FOK order 0x{signed.hash.hex()} not filled whole once")
            key = o.key
            total = done.get(key, state.filled.get(key, 0)) + f.amount
            if total > o.amount:
                raise RuleError(
                    Refusal.OVERFILL,
                    f"fill {i}: order 0x{signed.hash.hex()} filled to {total} of {o.amount} (incl. on-chain fills)",
                )
            done[key] = total


# Skip reasons a voter can judge false on its own confirmed state (docs/protocol.md "Fairness"); every other reason
# (margin, position limit, bounds, market, cancelled) is taken on the proposer's word: a lagging or partial view must
# not let one voter block the market.
CHECKED_SKIP_REASONS = frozenset(
    {
        NOT_SEEN,
        int(SkipReason.EXPIRED),
        int(SkipReason.OVERFILL),
        int(SkipReason.POST_ONLY_TAKER),
        int(SkipReason.FOK),
        int(SkipReason.TRIGGER),
        int(SkipReason.REDUCE_ONLY),
        int(SkipReason.SELF_TRADE),
    }
)


def _skip_false(
    signed: SignedOrder, reason: int, body: BatchBody, book: Book, state: ChainState, traders_in_batch: set[Address]
) -> bool:
    """True when the listed ``reason`` for skipping ``signed`` is false by the voter's own confirmed state."""
    o = signed.order
    flags = int(o.flags)
    if reason == NOT_SEEN:
        return True  # the voter has held it longer than the gossip bound (the caller's precondition)
    if reason in (SkipReason.EXPIRED, SkipReason.OVERFILL):
        return True  # the caller found it alive at the deadline with something remaining
    if reason == SkipReason.POST_ONLY_TAKER:
        return not flags & _POST_ONLY
    if reason == SkipReason.FOK:
        return not flags & _FOK
    if reason == SkipReason.TRIGGER:
        params = state.markets.get(o.market)
        return params is not None and trigger_holds(o, params.oracle_price)
    if reason == SkipReason.REDUCE_ONLY:
        if not flags & _REDUCE_ONLY:
            return True
        if o.trader in traders_in_batch:
            return False  # earlier fills of the batch may have used up the position
        pos = state.account(o.trader).positions.get(o.market)
        size = 0 if pos is None else pos.size
        return size > 0 if o.side == Side.SELL else size < 0
    if reason == SkipReason.SELF_TRADE:
        other = o.side.opposite
        for s in body.orders:
            if s.order.trader == o.trader and s.order.market == o.market and s.order.side == other:
                return False
        for h in book.orders:
            s = book.orders[h]
            if s.order.trader == o.trader and s.order.market == o.market and s.order.side == other:
                crosses = s.order.price <= o.price if o.side == Side.BUY else s.order.price >= o.price
                if crosses:
                    return False
        return True
    return False  # not objectively checkable: accepted


def _fairness(
    body: BatchBody, skipped: Sequence[Skip], book: Book, source: OrderSource, state: ChainState, now: int, bound: int
) -> None:
    """Refuse a batch that passes over a better-priced live order the voter has held longer than ``bound`` seconds
    unless it is listed with a reason the voter cannot prove false."""
    in_batch = set(body.order_hashes)
    keys_in_batch = {s.order.key for s in body.orders}
    traders_in_batch = {s.order.trader for s in body.orders}
    listed: dict[bytes, int] = {}
    for skip in skipped:
        listed.setdefault(skip.hash, skip.reason)
    worst: dict[tuple[int, Side], int] = {}
    for used in body.orders:
        o = used.order
        key = (int(o.market), o.side)
        cur = worst.get(key)
        if cur is None or (o.price < cur if o.side == Side.BUY else o.price > cur):
            worst[key] = o.price
    for (market, side), price in sorted(worst.items()):
        bids, asks = book.sides(market)
        walk = bids if side == Side.BUY else asks
        for h in walk.hashes():
            signed = book.orders[h]
            o = signed.order
            if not (o.price > price if side == Side.BUY else o.price < price):
                break  # priority order: the rest are no better
            if h in in_batch or o.key in keys_in_batch:
                continue
            seen = source.first_seen(h)
            if seen is None or seen + bound > now:
                continue  # not held long enough: the proposer may not have it yet
            if dead_reason(o, state, body.deadline) is not None:
                continue
            reason = listed.get(h)
            if reason is None:
                raise RuleError(
                    Refusal.UNFAIR_SKIP, f"better-priced order 0x{h.hex()} (price {o.price}) skipped without a reason"
                )
            if reason in CHECKED_SKIP_REASONS and _skip_false(signed, reason, body, book, state, traders_in_batch):
                raise RuleError(
                    Refusal.UNFAIR_SKIP, f"better-priced order 0x{h.hex()} skipped with reason {reason}, which is false"
                )


def check_proposal(
    p: Proposal,
    domain: eip712.Domain,
    view: ChainView,
    source: OrderSource,
    now: int,
    params: QuorumParams,
) -> Hash32:
    """Every objective check of DESIGN.md "Quorum protocol", in order; returns the batch digest, or raises
    :class:`RuleError`. ``now`` is the voter's clock in seconds."""
    body = p.body
    if body.seq != view.last_seq + 1:
        raise RuleError(Refusal.WRONG_SEQ, f"seq {body.seq}, expected {view.last_seq + 1}")
    digest = check_proposal_signatures(p, domain, view.relayers)
    if body.prev_batch_hash != view.last_batch_hash:
        raise RuleError(
            Refusal.WRONG_PREV_HASH,
            f"prevBatchHash 0x{body.prev_batch_hash.hex()} != last batch 0x{view.last_batch_hash.hex()}",
        )
    if body.set_version != view.relayers.version:
        raise RuleError(Refusal.WRONG_SET_VERSION, f"set version {body.set_version} != {view.relayers.version}")
    head = view.head_time
    if not head < body.deadline <= head + params.deadline_delta + params.deadline_tolerance:
        raise RuleError(Refusal.BAD_DEADLINE, f"deadline {body.deadline} vs head time {head}")
    if abs(p.time - now) > params.clock_tolerance:
        raise RuleError(Refusal.BAD_TIME, f"proposal time {p.time} vs voter clock {now}")
    gas = BATCH_BASE_GAS + FILL_GAS * len(body.fills)
    if gas > params.gas_cap or len(body.fills) > params.max_fills:
        raise RuleError(Refusal.GAS_CAP, f"{len(body.fills)} fills, gas estimate {gas} > cap {params.gas_cap}")
    _structure(body)
    for signed in body.orders:
        try:
            eip712.verify_signer(signed.hash, signed.signature, signed.order.trader)
        except eip712.SignatureError as exc:
            raise RuleError(Refusal.BAD_ORDER_SIGNATURE, f"order 0x{signed.hash.hex()}: {exc}") from None
    book = source.book()
    state = view.state
    for signed in body.orders:
        _order_alive(signed, book, state, body.deadline)
        if source.first_seen(signed.hash) is None and abs(signed.order.created_at - p.time) > params.intake_window:
            raise RuleError(
                Refusal.BACKDATED,
                f"order 0x{signed.hash.hex()} first seen in the proposal: createdAt {signed.order.created_at} vs "
                f"proposal time {p.time}",
            )
    _fills(body, state)
    _fairness(body, p.skipped, book, source, state, now, params.gossip_bound)
    return digest


def check_certificate(cert: Certificate, domain: eip712.Domain, relayers: RelayerSet) -> Hash32:
    """Signatures valid, signers unique, strictly ascending, members of the set, at least threshold of them, the
    designated proposer among them. Returns the batch digest. (Chain anchors are the caller's check.)"""
    try:
        digest = cert.digest(domain)
    except MessageError as exc:
        raise RuleError(Refusal.MALFORMED, str(exc)) from None
    members = set(relayers.members)
    last = -1
    for address, sig in cert.signatures:
        value = int(address, 16)
        if value <= last:
            raise RuleError(Refusal.MALFORMED, "certificate signers are not strictly ascending")
        last = value
        if address not in members:
            raise RuleError(Refusal.NOT_A_MEMBER, f"certificate signer {address} is not in set {relayers.version}")
        try:
            eip712.verify_signer(digest, sig, address)
        except eip712.SignatureError as exc:
            raise RuleError(Refusal.BAD_PROPOSER_SIGNATURE, f"certificate signature of {address}: {exc}") from None
    if len(cert.signatures) < relayers.threshold:
        raise RuleError(Refusal.MALFORMED, f"{len(cert.signatures)} signatures < threshold {relayers.threshold}")
    proposer = designated_proposer(relayers.members, cert.seq, cert.round)
    if proposer not in {a for a, _ in cert.signatures}:
        raise RuleError(Refusal.WRONG_PROPOSER, f"the proposer {proposer} did not sign the certificate")
    return digest
