"""The quorum's only I/O, for the node to call: load this node's stored proposals and votes (to re-create a
:class:`~relayer.quorum.core.QuorumCore` after a restart) and execute a :class:`~relayer.quorum.core.Persist` action.

Both are synchronous LevelDB calls (run them through ``trio.to_thread.run_sync`` from async code).
"""

from __future__ import annotations

from relayer.quorum.core import Persist
from relayer.store.db import QuorumWriter, Store
from relayer.store.keys import Space
from relayer.store.records import QuorumRecord

__all__ = ["load_records", "persist"]


def load_records(store: Store, from_seq: int = 0) -> tuple[list[QuorumRecord], list[QuorumRecord]]:
    """This node's stored (proposals, votes) with ``seq >= from_seq``."""
    proposals = [r for r in store.iter_quorum(Space.PROPOSAL) if r.seq >= from_seq]
    votes = [r for r in store.iter_quorum(Space.VOTE) if r.seq >= from_seq]
    return proposals, votes


def persist(writer: QuorumWriter, action: Persist) -> None:
    """Store the record synced; raises ``EquivocationError`` if a different one is stored for its (seq, round), in
    which case the node must drop the actions that follow (the promise must not leave)."""
    if action.kind == "proposal":
        writer.record_proposal(action.record)
    elif action.kind == "vote":
        writer.record_vote(action.record)
    else:
        raise ValueError(f"unknown record kind {action.kind!r}")
