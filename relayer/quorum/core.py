"""QuorumCore: one node's quorum state machine, transport-free and deterministic (docs/protocol.md).

Inputs are method calls, each with the node's current time ``now`` in integer milliseconds (the core never reads a
clock): :meth:`QuorumCore.on_chain` (the confirmed chain view: last included batch, relayer set, head time, chain
state), :meth:`~QuorumCore.on_proposal`, :meth:`~QuorumCore.on_vote`, :meth:`~QuorumCore.on_certificate` (or
:meth:`~QuorumCore.on_message` with raw bytes) and :meth:`~QuorumCore.tick`. Each returns the actions the node must
execute, IN ORDER: a :class:`Persist` must complete (synced, ``store.quorum().record_proposal/record_vote``) before
the next action runs, and if it fails the node drops the rest of that list (the promise never leaves the node).

The core holds no I/O: a restarted node re-creates it with its stored proposals and votes (``proposals=``,
``votes=``; see :func:`relayer.quorum.persist.load_records`), after which it never signs a second batch for a (seq,
round) it signed before and, as proposer, re-sends its stored proposal. Ties are broken explicitly (addresses as
numbers, rounds as integers); integers only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from relayer import eip712
from relayer.keys import RelayerKey
from relayer.matcher.batch import build_batch
from relayer.matcher.model import Limits
from relayer.quorum.messages import (
    BatchBody,
    Certificate,
    Message,
    MessageError,
    Proposal,
    Skip,
    Vote,
    decode_message,
    envelope_digest,
)
from relayer.quorum.rules import (
    ChainView,
    OrderSource,
    QuorumParams,
    Refusal,
    RuleError,
    check_certificate,
    check_proposal,
    check_proposal_signatures,
    designated_proposer,
    fault_tolerance,
    recover_vote,
    sorted_members,
)
from relayer.store.records import QuorumRecord
from relayer.types import Address, Hash32, SignedOrder

__all__ = [
    "Action",
    "BroadcastCertificate",
    "CheckThenSubmit",
    "Evidence",
    "Persist",
    "QuorumCore",
    "RecordEvidence",
    "Refused",
    "RoundChanged",
    "SendProposal",
    "SendVote",
    "SubmitCertificate",
]

log = logging.getLogger("relayer.quorum")

MAX_BUFFERED = 256
"""Early proposals (a later round or seq) held at most; more are dropped and counted."""
MAX_BUFFERED_PER_PROPOSER = 16
MAX_LOOSE_VOTES = 1024
MAX_ROUNDS_AHEAD = 10_000
"""Messages for rounds further above this node's round are dropped (bounds what one relayer can make it hold)."""
KEEP_SEQS = 64
"""Own proposals and votes of seqs this far below the current one are forgotten in memory (the store keeps them)."""


# ------------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Persist:
    """Store this node's ``kind`` ("proposal" or "vote") record synced; only then run the following actions."""

    kind: str
    record: QuorumRecord


@dataclass(frozen=True, slots=True)
class SendProposal:
    """Send ``data`` (the encoded proposal) to every relayer (gossip)."""

    proposal: Proposal
    data: bytes


@dataclass(frozen=True, slots=True)
class SendVote:
    """Send ``data`` (the encoded vote) directly to the proposer ``to``."""

    vote: Vote
    to: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class BroadcastCertificate:
    certificate: Certificate
    data: bytes


@dataclass(frozen=True, slots=True)
class SubmitCertificate:
    """Hand the certificate to this node's worker (the proposer submits at once)."""

    certificate: Certificate


@dataclass(frozen=True, slots=True)
class CheckThenSubmit:
    """Backup submission: read the contract's ``lastSeq``; submit only if it is still below ``seq`` (and
    ``lastBatchHash`` is the certificate's prevBatchHash)."""

    certificate: Certificate
    seq: int
    rank: int


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two different batch digests signed by ``signer`` for one (seq, round). Each side: the digest, the signature
    and the encoded message that carries it and binds the digest to (seq, round) (a Proposal or a Certificate, or a
    Vote whose digest such a message bound)."""

    kind: str  # "proposal" or "vote"
    signer: Address
    seq: int
    round: int
    first_digest: Hash32
    first_signature: bytes
    first_message: bytes
    second_digest: Hash32
    second_signature: bytes
    second_message: bytes


@dataclass(frozen=True, slots=True)
class RecordEvidence:
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Refused:
    """This node refused to vote for (seq, round)'s proposal (or ignored a message); informational."""

    seq: int
    round: int
    proposer: Address
    reason: Refusal
    detail: str


@dataclass(frozen=True, slots=True)
class RoundChanged:
    """The node's round for ``seq`` is now ``round``; ``cause``: start, included, timeout, certificate_dead, jump,
    certificate."""

    seq: int
    round: int
    cause: str


Action = (
    Persist
    | SendProposal
    | SendVote
    | BroadcastCertificate
    | SubmitCertificate
    | CheckThenSubmit
    | RecordEvidence
    | Refused
    | RoundChanged
)


@dataclass(slots=True)
class _Cert:
    cert: Certificate
    digest: Hash32
    seen: int  # ms
    dead: bool = False
    backup_done: bool = False


# ------------------------------------------------------------------------------------------------ the core


class QuorumCore:
    """One relayer's quorum state machine. ``source`` gives the node's own book and first-seen times; ``on_evidence``
    (optional) is called with every new :class:`Evidence` (which is also returned as :class:`RecordEvidence` and kept
    in :attr:`evidence`)."""

    def __init__(
        self,
        key: RelayerKey,
        domain: eip712.Domain,
        source: OrderSource,
        params: QuorumParams | None = None,
        *,
        proposals: Iterable[QuorumRecord] = (),
        votes: Iterable[QuorumRecord] = (),
        on_evidence: Callable[[Evidence], None] | None = None,
    ) -> None:
        self.key = key
        self.me = Address(key.address)
        self.domain = domain
        self.source = source
        self.params = params or QuorumParams()
        self.limits = Limits(
            deadline_delta=self.params.deadline_delta,
            max_fills=self.params.max_fills,
            gas_budget=self.params.gas_cap,
        )
        self.on_evidence = on_evidence
        self.counters: Counter[str] = Counter()
        self.evidence: list[Evidence] = []
        """IN-MEMORY evidence (no store keyspace yet: see docs/protocol.md "Evidence")."""
        self.view: ChainView | None = None
        self.seq = 0
        self.round = 0
        self.round_started = 0
        self.now = 0
        self._my_proposals: dict[tuple[int, int], Proposal] = {}
        self._my_votes: dict[tuple[int, int], Vote] = {}
        self._resend: set[tuple[int, int]] = set()
        for rec in proposals:
            try:
                msg = decode_message(rec.payload, domain)
            except MessageError as exc:
                log.warning("stored proposal for (%d, %d) does not decode: %s", rec.seq, rec.round, exc)
                self.counters["bad_stored_record"] += 1
                continue
            if isinstance(msg, Proposal):
                self._my_proposals[(rec.seq, rec.round)] = msg
                self._resend.add((rec.seq, rec.round))
        for rec in votes:
            try:
                msg = decode_message(rec.payload, domain)
            except MessageError as exc:
                log.warning("stored vote for (%d, %d) does not decode: %s", rec.seq, rec.round, exc)
                self.counters["bad_stored_record"] += 1
                continue
            if isinstance(msg, Vote):
                self._my_votes[(rec.seq, rec.round)] = msg
        self._reset_seq_state()
        self._buffer: dict[tuple[int, int, Address], Proposal] = {}

    def _reset_seq_state(self) -> None:
        self._proposals: dict[int, tuple[Proposal, Hash32]] = {}
        self._digests: dict[tuple[int, Hash32], bytes] = {}  # (round, digest) -> encoded message binding it
        self._collected: dict[int, dict[Address, bytes]] = {}
        self._certs: dict[int, _Cert] = {}
        self._higher: dict[int, set[Address]] = {}
        self._signed: dict[tuple[int, Address], tuple[Hash32, bytes, bytes, str]] = {}
        self._equivocated: set[tuple[int, Address]] = set()
        self._loose: dict[tuple[int, Hash32], dict[Address, Vote]] = {}

    # -------------------------------------------------------------------------------------------- reads

    @property
    def members(self) -> tuple[Address, ...]:
        return () if self.view is None else self.view.members

    @property
    def is_member(self) -> bool:
        return self.me in self.members

    def proposer_of(self, round_: int) -> Address:
        assert self.view is not None
        return designated_proposer(self.view.relayers.members, self.seq, round_)

    def certificate(self, round_: int) -> Certificate | None:
        c = self._certs.get(round_)
        return None if c is None else c.cert

    def timeout_at(self) -> int:
        """When the current round times out (ms), unless a certificate for it is live."""
        return self.round_started + self.params.round_timeout(self.round)

    # -------------------------------------------------------------------------------------------- inputs

    def on_chain(self, view: ChainView, now: int) -> list[Action]:
        """A new confirmed chain view. When it names a new last batch (or is the first view), round 0 of
        ``last_seq + 1`` starts (genesis: seq 1 at startup)."""
        self._clock(now)
        old = self.view
        self.view = view
        if old is not None and old.last_seq == view.last_seq and old.last_batch_hash == view.last_batch_hash:
            return []
        cause = "start" if old is None else "included"
        self.seq = view.last_seq + 1
        self._reset_seq_state()
        for old_key in [k for k in self._my_votes if k[0] < self.seq - KEEP_SEQS]:
            del self._my_votes[old_key]
        for old_key in [k for k in self._my_proposals if k[0] < self.seq - KEEP_SEQS]:
            del self._my_proposals[old_key]
        # this node's own stored signatures prove it reached those rounds of this seq (a restart resumes there)
        signed = [r for s, r in (*self._my_votes, *self._my_proposals) if s == self.seq]
        start = max(signed, default=0)
        log.info("seq %d: round %d starts (%s)", self.seq, start, cause)
        out = self._enter_round(start, cause)
        for key in sorted(k for k in self._buffer if k[0] <= self.seq):
            p = self._buffer.pop(key, None)
            if p is not None and p.seq == self.seq:
                out += self._handle_proposal(p)
        return out

    def on_message(self, data: bytes, now: int) -> list[Action]:
        """Decode and dispatch a received message; undecodable ones are counted (``malformed``) and dropped."""
        try:
            msg: Message = decode_message(data, self.domain)
        except MessageError as exc:
            self.counters["malformed"] += 1
            log.info("dropped a malformed quorum message: %s", exc)
            return []
        if isinstance(msg, Proposal):
            return self.on_proposal(msg, now)
        if isinstance(msg, Vote):
            return self.on_vote(msg, now)
        return self.on_certificate(msg, now)

    def on_proposal(self, p: Proposal, now: int) -> list[Action]:
        self._clock(now)
        if self.view is None or p.seq > self.seq:
            if self.view is not None and p.seq > self.seq + 1:
                self.counters["far_future_proposal"] += 1
                return []
            return self._buffer_proposal(p)
        if p.seq < self.seq:
            self.counters["stale_proposal"] += 1
            return []
        return self._handle_proposal(p)

    def on_vote(self, v: Vote, now: int) -> list[Action]:
        self._clock(now)
        if self.view is None or v.seq != self.seq or v.round > self.round + MAX_ROUNDS_AHEAD:
            self.counters["vote_other_seq"] += 1
            return []
        try:
            signer = recover_vote(v)
        except RuleError as exc:
            self.counters["bad_vote"] += 1
            log.info("dropped a vote for (%d, %d): %s", v.seq, v.round, exc.detail)
            return []
        if signer not in self.members:
            self.counters["vote_not_member"] += 1
            return []
        bound = self._digests.get((v.round, v.batch_digest))
        if bound is None:
            loose = self._loose.setdefault((v.round, v.batch_digest), {})
            if sum(len(x) for x in self._loose.values()) < MAX_LOOSE_VOTES:
                loose.setdefault(signer, v)
            else:
                self.counters["loose_vote_dropped"] += 1
            return []
        return self._bound_vote(v, signer)

    def on_certificate(self, c: Certificate, now: int) -> list[Action]:
        self._clock(now)
        view = self.view
        if view is None or c.seq != self.seq:
            self.counters["certificate_other_seq"] += 1
            return []
        if c.body.prev_batch_hash != view.last_batch_hash or c.body.set_version != view.relayers.version:
            self.counters["certificate_bad_anchor"] += 1
            return []
        try:
            digest = check_certificate(c, self.domain, view.relayers)
        except RuleError as exc:
            self.counters["bad_certificate"] += 1
            log.info("dropped a certificate for (%d, %d): %s", c.seq, c.round, exc)
            return []
        data = c.encode()
        out: list[Action] = []
        self._bind(c.round, digest, data)
        for signer, sig in c.signatures:
            out += self._observe(c.round, signer, digest, sig, data, "vote")
        if c.round not in self._certs:
            self._certs[c.round] = _Cert(c, digest, self.now)
            self.counters["certificates_seen"] += 1
        if c.round > self.round:
            out += self._enter_round(c.round, "certificate")
        out += self._bind_loose(c.round, digest)
        return out

    def tick(self, now: int) -> list[Action]:
        """Timers: propose when this node's round is its to propose and the book crosses; certificate deadlines;
        backup submissions; round timeouts."""
        self._clock(now)
        view = self.view
        if view is None:
            return []
        out = self._try_propose()
        chain_time = max(view.head_time, self.now // 1000)
        for r in sorted(self._certs):
            c = self._certs[r]
            if not c.dead and chain_time > c.cert.body.deadline + self.params.grace:
                c.dead = True
                self.counters["certificate_dead"] += 1
                log.warning("certificate for (%d, %d) passed its deadline + grace without inclusion", self.seq, r)
        out += self._backups()
        current = self._certs.get(self.round)
        if current is not None:
            if current.dead:
                out += self._enter_round(self.round + 1, "certificate_dead")
        elif self.now >= self.timeout_at():
            self.counters["round_timeout"] += 1
            out += self._enter_round(self.round + 1, "timeout")
        return out

    # -------------------------------------------------------------------------------------------- rounds

    def _clock(self, now: int) -> None:
        if now > self.now:
            self.now = now

    def _enter_round(self, round_: int, cause: str) -> list[Action]:
        self.round = round_
        self.round_started = self.now
        out: list[Action] = [RoundChanged(self.seq, round_, cause)]
        if cause not in ("start", "included"):
            log.info("seq %d: round %d (%s)", self.seq, round_, cause)
        out += self._try_propose()
        for key in sorted(k for k in self._buffer if k[0] == self.seq and k[1] <= round_):
            p = self._buffer.pop(key, None)
            if p is not None and p.round == round_:
                out += self._handle_proposal(p)
        return out

    def _note_higher(self, round_: int, signer: Address) -> list[Action]:
        """A bound signed message of ``signer`` for a round above ours. Jump to the highest round r such that
        f + 1 distinct relayers signed messages for rounds >= r (never on one relayer's word)."""
        if round_ <= self.round or self.view is None:
            return []
        self._higher.setdefault(round_, set()).add(signer)
        need = fault_tolerance(self.view.relayers) + 1
        seen: set[Address] = set()
        for r in sorted(self._higher, reverse=True):
            if r <= self.round:
                break
            seen |= self._higher[r]
            if len(seen) >= need:
                self.counters["round_jump"] += 1
                return self._enter_round(r, "jump")
        return []

    # -------------------------------------------------------------------------------------------- proposing

    def _try_propose(self) -> list[Action]:
        view = self.view
        if view is None or not self.is_member or self.proposer_of(self.round) != self.me:
            return []
        key = (self.seq, self.round)
        stored = self._my_proposals.get(key)
        if stored is not None:
            if key not in self._resend:
                return []
            self._resend.discard(key)
            if stored.body.prev_batch_hash != view.last_batch_hash:
                log.warning("stored proposal for (%d, %d) names another prevBatchHash: not re-sent", *key)
                return []
            digest = stored.digest(self.domain)
            self._proposals[self.round] = (stored, digest)
            data = stored.encode()
            self._bind(self.round, digest, data)
            self._collected.setdefault(self.round, {})[self.me] = stored.batch_signature
            log.info("re-sending the stored proposal for (%d, %d)", *key)
            return [
                Persist("proposal", QuorumRecord(self.seq, self.round, digest, data)),  # stored: a no-op
                SendProposal(stored, data),
                *self._bind_loose(self.round, digest),
            ]
        book = self.source.book()
        batch = build_batch(book, view.state, view.head_time, self.limits)
        if not batch.fills:
            return []
        orders: list[SignedOrder] = []
        for h in batch.orders:
            signed = book.get(h)
            if signed is None:  # the book cannot lose an order while build_batch reads it
                raise AssertionError(f"order 0x{h.hex()} left the book during build_batch")
            orders.append(signed)
        skipped: dict[bytes, int] = {}
        for group in (batch.skipped, batch.cancelled, batch.dead):
            for s in group:
                skipped.setdefault(s.hash, int(s.reason))
        body = BatchBody(
            seq=self.seq,
            round=self.round,
            prev_batch_hash=view.last_batch_hash,
            set_version=view.relayers.version,
            deadline=batch.deadline,
            orders=tuple(orders),
            fills=batch.fills,
        )
        digest = body.digest(self.domain)
        skips = tuple(Skip(Hash32(h), r) for h, r in skipped.items())
        time = self.now // 1000
        proposal = Proposal(
            body=body,
            time=time,
            skipped=skips,
            proposer=self.me,
            batch_signature=eip712.sign_digest(self.key, digest),
            signature=eip712.sign_digest(self.key, envelope_digest(self.domain, digest, time, skips)),
        )
        data = proposal.encode()
        self._my_proposals[key] = proposal
        self._proposals[self.round] = (proposal, digest)
        self._bind(self.round, digest, data)
        self._signed[(self.round, self.me)] = (digest, proposal.batch_signature, data, "proposal")
        self._collected.setdefault(self.round, {})[self.me] = proposal.batch_signature
        self.counters["proposals_made"] += 1
        log.info("proposing (%d, %d): %d fills, %d orders", self.seq, self.round, len(body.fills), len(orders))
        out: list[Action] = [
            Persist("proposal", QuorumRecord(self.seq, self.round, digest, data)),
            SendProposal(proposal, data),
        ]
        out += self._maybe_certify(self.round)
        out += self._bind_loose(self.round, digest)
        return out

    def _maybe_certify(self, round_: int) -> list[Action]:
        view = self.view
        mine = self._proposals.get(round_)
        if view is None or mine is None or mine[0].proposer != self.me or round_ in self._certs:
            return []
        if round_ != self.round:  # the network has moved on: a late certificate would only race the next round's
            self.counters["late_votes"] += 1
            return []
        got = self._collected.get(round_, {})
        if len(got) < view.relayers.threshold:
            return []
        signers = sorted(got, key=lambda a: int(a, 16))
        cert = Certificate(mine[0].body, tuple((a, got[a]) for a in signers))
        self._certs[round_] = _Cert(cert, mine[1], self.now, backup_done=True)
        self.counters["certificates_made"] += 1
        log.info("certificate for (%d, %d) with %d signatures", self.seq, round_, len(signers))
        return [BroadcastCertificate(cert, cert.encode()), SubmitCertificate(cert)]

    # -------------------------------------------------------------------------------------------- voting

    def _buffer_proposal(self, p: Proposal) -> list[Action]:
        """Hold an early proposal (a later round, or the next seq). Bounded in total and per proposer, so one
        relayer cannot crowd the others out; the next seq's proposals are checked for their envelope signature
        first (their set may not be known yet)."""
        key = (p.seq, p.round, p.proposer)
        if key in self._buffer:
            return []
        if p.seq != self.seq:
            try:
                eip712.verify_signer(p.envelope(self.domain), p.signature, p.proposer)
            except (eip712.SignatureError, MessageError):
                self.counters["bad_buffered_proposal"] += 1
                return []
        mine = sum(1 for k in self._buffer if k[2] == p.proposer)
        if len(self._buffer) >= MAX_BUFFERED or mine >= MAX_BUFFERED_PER_PROPOSER:
            self.counters["buffer_full"] += 1
            return []
        self._buffer[key] = p
        self.counters["proposal_buffered"] += 1
        return []

    def _handle_proposal(self, p: Proposal) -> list[Action]:
        """A proposal for the current seq: verify who signed it, watch for equivocation, then vote now (its round is
        ours), buffer it (a later round; it counts toward a jump) or drop it (an earlier round)."""
        view = self.view
        assert view is not None
        if p.round > self.round + MAX_ROUNDS_AHEAD:
            self.counters["far_round"] += 1
            return []
        try:
            digest = check_proposal_signatures(p, self.domain, view.relayers)
        except RuleError as exc:
            self.counters[f"refused_{exc.reason.value}"] += 1
            return [Refused(p.seq, p.round, p.proposer, exc.reason, exc.detail)]
        data = p.encode()
        out = self._observe(p.round, p.proposer, digest, p.batch_signature, data, "proposal")
        self._bind(p.round, digest, data)
        if p.round not in self._proposals:
            self._proposals[p.round] = (p, digest)
        out += self._bind_loose(p.round, digest)
        if p.round > self.round:
            out += self._buffer_proposal(p)
            out += self._note_higher(p.round, p.proposer)
            return out
        if p.round < self.round:
            self.counters["old_round_proposal"] += 1
            return out
        return out + self._consider(p, digest)

    def _consider(self, p: Proposal, digest: Hash32) -> list[Action]:
        view = self.view
        assert view is not None
        if p.proposer == self.me or not self.is_member:
            return []
        key = (p.seq, p.round)
        prior = self._my_votes.get(key)
        if prior is not None:
            if prior.batch_digest == digest:
                # the same promise again: Persist is a no-op when it is stored, and stores it if a failed write
                # kept it from leaving the first time
                self.counters["vote_resent"] += 1
                data = prior.encode()
                return [
                    Persist("vote", QuorumRecord(p.seq, p.round, digest, data)),
                    SendVote(prior, p.proposer, data),
                ]
            return self._refuse(p, Refusal.ALREADY_VOTED, f"already voted for 0x{prior.batch_digest.hex()}")
        if (p.round, p.proposer) in self._equivocated:
            return self._refuse(p, Refusal.EQUIVOCATED, "the proposer equivocated in this round")
        try:
            check_proposal(p, self.domain, view, self.source, self.now // 1000, self.params)
        except RuleError as exc:
            return self._refuse(p, exc.reason, exc.detail)
        vote = Vote(p.seq, p.round, digest, self.me, eip712.sign_digest(self.key, digest))
        data = vote.encode()
        self._my_votes[key] = vote
        self._signed.setdefault((p.round, self.me), (digest, vote.signature, data, "vote"))
        self.counters["votes_cast"] += 1
        return [Persist("vote", QuorumRecord(p.seq, p.round, digest, data)), SendVote(vote, p.proposer, data)]

    def _refuse(self, p: Proposal, reason: Refusal, detail: str) -> list[Action]:
        self.counters[f"refused_{reason.value}"] += 1
        log.warning("refusing (%d, %d) from %s: %s: %s", p.seq, p.round, p.proposer, reason.value, detail)
        return [Refused(p.seq, p.round, p.proposer, reason, detail)]

    def _bound_vote(self, v: Vote, signer: Address) -> list[Action]:
        data = v.encode()
        out = self._observe(v.round, signer, v.batch_digest, v.signature, data, "vote")
        if v.round > self.round:
            out += self._note_higher(v.round, signer)
        mine = self._proposals.get(v.round)
        if mine is not None and mine[0].proposer == self.me and mine[1] == v.batch_digest:
            got = self._collected.setdefault(v.round, {})
            if signer not in got:
                got[signer] = v.signature
                out += self._maybe_certify(v.round)
        return out

    def _bind(self, round_: int, digest: Hash32, data: bytes) -> None:
        self._digests.setdefault((round_, digest), data)

    def _bind_loose(self, round_: int, digest: Hash32) -> list[Action]:
        loose = self._loose.pop((round_, digest), None)
        out: list[Action] = []
        for signer in sorted(loose or {}, key=lambda a: int(a, 16)):
            assert loose is not None
            out += self._bound_vote(loose[signer], signer)
        return out

    # -------------------------------------------------------------------------------------------- evidence

    def _observe(
        self, round_: int, signer: Address, digest: Hash32, sig: bytes, data: bytes, kind: str
    ) -> list[Action]:
        """Remember the first digest ``signer`` signed for (seq, round); a different one is equivocation."""
        first = self._signed.get((round_, signer))
        if first is None:
            self._signed[(round_, signer)] = (digest, sig, data, kind)
            return []
        if first[0] == digest or (round_, signer) in self._equivocated:
            return []
        self._equivocated.add((round_, signer))
        both_proposals = kind == "proposal" and first[3] == "proposal"
        evidence = Evidence(
            kind="proposal" if both_proposals else "vote",
            signer=signer,
            seq=self.seq,
            round=round_,
            first_digest=first[0],
            first_signature=first[1],
            first_message=first[2],
            second_digest=digest,
            second_signature=sig,
            second_message=data,
        )
        self.evidence.append(evidence)
        self.counters["equivocation"] += 1
        log.error("EQUIVOCATION by %s at (%d, %d): batches 0x%s and 0x%s", signer, self.seq, round_,
                  first[0].hex(), digest.hex())  # fmt: skip
        if self.on_evidence is not None:
            self.on_evidence(evidence)
        return [RecordEvidence(evidence)]

    # -------------------------------------------------------------------------------------------- backups

    def _backups(self) -> list[Action]:
        view = self.view
        if view is None or not self.is_member:
            return []
        members = sorted_members(view.relayers.members)
        n = len(members)
        mine = members.index(self.me)
        out: list[Action] = []
        for r in sorted(self._certs):
            c = self._certs[r]
            if c.dead or c.backup_done or view.head_time > c.cert.body.deadline:
                continue
            proposer = members.index(self.proposer_of(r))
            rank = (mine - proposer) % n
            if rank == 0:
                c.backup_done = True  # the proposer submitted when it assembled the certificate
                continue
            due = c.seen + self.params.backup_delay_ms + (rank - 1) * self.params.backup_step_ms
            if self.now >= due:
                c.backup_done = True
                self.counters["backup_submissions"] += 1
                log.info("seq %d still not included: backup submission of round %d (rank %d)", self.seq, r, rank)
                out.append(CheckThenSubmit(c.cert, self.seq, rank))
        return out
