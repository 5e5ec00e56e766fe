"""A writing process for the kill -9 test: `python -m tests.store.crash_writer DIR RUN`.

Recovers (snapshot + replay), then loops: batch b = accept order b + input b + cursor b (+ a snapshot every 5th),
committed synced, then "order b" on stdout; then this node's vote for (seq b, round 0), then "vote b HASHHEX". On
start it also tries to vote for the last recovered seq with this run's hash: "refused b" if a vote is stored.
Lines are printed only after the synced write returned.
"""

from __future__ import annotations

import sys

from relayer.store import EquivocationError, InputRecord, Snapshot, Store

from .helpers import INITIAL, apply, cursor, decode_state, encode_state, order_record, vote


def main(directory: str, run: str) -> None:
    store = Store.open(directory)
    rec = store.recover()
    state = decode_state(rec.snapshot.payload) if rec.snapshot else INITIAL
    for inp in rec.inputs_after:
        state = apply(state, inp)
    processor, quorum = store.processor(), store.quorum()
    out = sys.stdout
    if state[0] > 0:
        try:
            v = quorum.record_vote(vote(state[0] - 1, 0, run))
            print(f"vote {v.seq} {v.batch_hash.hex()}", file=out, flush=True)
        except EquivocationError:
            print(f"refused {state[0] - 1}", file=out, flush=True)
    print("ready", file=out, flush=True)
    while True:
        b = processor.batch()
        index = b.accept_order(order_record(state[0]), input_payload=f"in-{state[0]}".encode())
        b.put_cursor(cursor(index))
        new_state = apply(state, InputRecord(index, "order", f"in-{state[0]}".encode()))
        if index % 5 == 4:
            b.put_snapshot(Snapshot(index, encode_state(new_state)))
        processor.commit(b, sync=True)
        state = new_state
        print(f"order {index}", file=out, flush=True)
        v = quorum.record_vote(vote(index, 0, run))
        print(f"vote {index} {v.batch_hash.hex()}", file=out, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
