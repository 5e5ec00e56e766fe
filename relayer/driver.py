"""The quorum's driver: runs the transport-free :class:`~relayer.quorum.QuorumCore` inside a node (docs/protocol.md).

The core is pure; this module gives it time (the wall clock, in ms: rounds, timeouts and proposal times are network
clocks, unlike the matcher which only ever reads chain time), chain views (from the processor's included chain model
after every chain message), the quorum messages peers send (gossip topic ``quorum``), and executes the actions it
returns, in order:

* ``Persist`` → the quorum's LevelDB writer, synced, BEFORE anything that follows leaves the node; if the store
  refuses (a different record for that (seq, round): the node would equivocate) the rest of the list is dropped;
* ``SendProposal`` / ``SendVote`` / ``BroadcastCertificate`` → gossip on the quorum topic (a vote is addressed to its
  proposer but gossiped: the proposer is often one hop away, and every node learns who voted, for round jumps);
* ``SubmitCertificate`` → the node's worker; ``CheckThenSubmit`` (backup) → read ``lastSeq`` first, submit only if
  the seq is still open;
* ``RecordEvidence`` → logged loudly and stored (keyspace EVIDENCE); ``Refused`` / ``RoundChanged`` → logs and counters.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import trio

from bindings import exchange as ex
from relayer.chain.errors import ChainError
from relayer.chain.rpc import JsonRpc
from relayer.eip712 import Domain
from relayer.quorum import (
    Action,
    BroadcastCertificate,
    Certificate,
    ChainView,
    CheckThenSubmit,
    Evidence,
    Persist,
    Proposal,
    QuorumCore,
    RecordEvidence,
    Refused,
    RoundChanged,
    SendProposal,
    SendVote,
    SubmitCertificate,
    settle_call,
)
from relayer.quorum.persist import persist
from relayer.store.db import QuorumWriter
from relayer.store.errors import StoreError
from relayer.store.records import EvidenceRecord
from relayer.types import Hash32
from relayer.worker import SettleJob

__all__ = ["QuorumDriver", "now_ms"]

log = logging.getLogger("relayer.quorum")

TICK_S = 0.05
"""How often timers are checked (round timeouts, backups): a round timeout is seconds, so 50 ms is fine-grained."""


def now_ms() -> int:
    return int(time.time() * 1000)


Publish = Callable[[bytes], Awaitable[None]]
Submit = Callable[[SettleJob, Hash32], Awaitable[None]]
OnProposal = Callable[[Proposal], None]


class QuorumDriver:
    """Feeds a :class:`QuorumCore` and executes its actions. ``publish`` gossips on the quorum topic; ``submit``
    hands a certified batch to the worker; ``on_proposal`` lets the node take in orders it first sees in a proposal."""

    def __init__(
        self,
        core: QuorumCore,
        domain: Domain,
        writer: QuorumWriter,
        rpc: JsonRpc,
        exchange: str,
        publish: Publish,
        submit: Submit,
        on_proposal: OnProposal | None = None,
    ) -> None:
        self.core = core
        self.domain = domain
        self.writer = writer
        self.rpc = rpc
        self.exchange = exchange
        self.publish = publish
        self.submit = submit
        self.on_proposal = on_proposal
        self.counters: Counter[str] = Counter()
        self.evidence: list[Evidence] = []
        self.certified: dict[int, Hash32] = {}  # seq -> digest of the certificate this node submitted or holds
        self.changed = trio.Event()
        self._lock = trio.Lock()  # actions of one input run to the end before the next input's

    # --- inputs -------------------------------------------------------------------------------------------------

    async def chain(self, view: ChainView | None) -> None:
        if view is None:
            return
        async with self._lock:
            await self._run(self.core.on_chain(view, now_ms()))

    async def message(self, data: bytes) -> None:
        async with self._lock:
            self.counters["messages"] += 1
            await self._run(self.core.on_message(data, now_ms()))

    async def ticker(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            async with self._lock:
                await self._run(self.core.tick(now_ms()))

    # --- actions ------------------------------------------------------------------------------------------------

    async def _run(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Persist):
                try:
                    persist(self.writer, action)
                except StoreError as exc:
                    self.counters["persist_refused"] += 1
                    log.warning("quorum: not sending (%s): %s", action.kind, exc)
                    return  # the promise must not leave: drop what follows
            elif isinstance(action, SendProposal):
                self.counters["proposals_sent"] += 1
                log.info(
                    "proposing seq %d round %d: %d fills, %d orders",
                    action.proposal.body.seq,
                    action.proposal.body.round,
                    len(action.proposal.body.fills),
                    len(action.proposal.body.orders),
                )
                await self._gossip(action.data)
            elif isinstance(action, SendVote):
                self.counters["votes_sent"] += 1
                log.debug("voting for seq %d round %d (proposer %s)", action.vote.seq, action.vote.round, action.to)
                await self._gossip(action.data)
            elif isinstance(action, BroadcastCertificate):
                self.counters["certificates_broadcast"] += 1
                await self._gossip(action.data)
            elif isinstance(action, SubmitCertificate):
                await self._submit(action.certificate, "proposer")
            elif isinstance(action, CheckThenSubmit):
                await self._backup(action)
            elif isinstance(action, RecordEvidence):
                self.evidence.append(action.evidence)
                self.counters["evidence"] += 1
                e = action.evidence
                try:
                    self.writer.record_evidence(
                        EvidenceRecord(
                            e.seq,
                            e.round,
                            e.signer,
                            e.kind,
                            e.first_digest,
                            e.first_signature,
                            e.first_message,
                            e.second_digest,
                            e.second_signature,
                            e.second_message,
                        )
                    )
                except StoreError as exc:
                    log.warning("quorum: evidence not stored: %s", exc)
                log.error(
                    "EQUIVOCATION by %s: two %ss for seq %d round %d (%s and %s); evidence kept",
                    e.signer,
                    e.kind,
                    e.seq,
                    e.round,
                    e.first_digest.hex()[:16],
                    e.second_digest.hex()[:16],
                )
            elif isinstance(action, Refused):
                self.counters[f"refused_{action.reason.value}"] += 1
                log.warning(
                    "refused seq %d round %d from %s: %s (%s)",
                    action.seq,
                    action.round,
                    action.proposer,
                    action.reason.value,
                    action.detail,
                )
            elif isinstance(action, RoundChanged):
                self.counters[f"round_{action.cause}"] += 1
                log.debug("seq %d: round %d (%s)", action.seq, action.round, action.cause)
        self.changed.set()
        self.changed = trio.Event()

    async def _gossip(self, data: bytes) -> None:
        try:
            await self.publish(data)
        except Exception as exc:  # noqa: BLE001 -- a failed publish is retried by the round logic, never fatal
            self.counters["publish_failed"] += 1
            log.warning("quorum: publish failed: %s", exc)

    async def _submit(self, cert: Certificate, why: str) -> None:
        digest = cert.body.digest(self.domain)
        seq = cert.body.seq
        if self.certified.get(seq) == digest:
            return
        self.certified[seq] = digest
        self.counters[f"submitted_{why}"] += 1
        log.info(
            "certificate for seq %d round %d (%d signatures, %d fills): submitting (%s)",
            seq,
            cert.body.round,
            len(cert.signatures),
            len(cert.body.fills),
            why,
        )
        await self.submit(SettleJob(seq, settle_call(cert)), digest)

    async def _backup(self, action: CheckThenSubmit) -> None:
        try:
            raw = await self.rpc.call("eth_call", [{"to": self.exchange, "data": "0x" + ex.encode_last_seq().hex()}])
            last = ex.decode_last_seq_result(bytes.fromhex(str(raw)[2:]))
        except (ChainError, ValueError) as exc:
            log.warning("backup for seq %d: cannot read lastSeq (%s); not submitting", action.seq, exc)
            return
        if last >= action.seq:
            self.counters["backup_not_needed"] += 1
            return
        await self._submit(action.certificate, f"backup rank {action.rank}")
