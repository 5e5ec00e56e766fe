"""kill -9 a writing process at random moments, many times; after each restart nothing promised is lost or torn."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from relayer.store import Space, Store

from ..conftest import ROOT
from .helpers import INITIAL, apply, cursor, decode_state, h32, order_record

ITERATIONS = 30
BUDGET_S = 25.0


def _start(directory: Path, run: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(directory), str(run)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_kill_minus_nine_loses_no_promise_and_tears_no_batch(tmp_path: Path) -> None:
    rng = random.Random(5)
    directory = tmp_path / "data"
    acked_orders: set[int] = set()
    acked_votes: dict[int, bytes] = {}
    started = time.monotonic()
    runs = 0
    refused = 0
    while runs < ITERATIONS and time.monotonic() - started < BUDGET_S:
        runs += 1
        proc = _start(directory, runs)
        assert proc.stdout is not None
        lines: list[str] = []
        target = rng.randint(1, 80)
        while len(lines) < target:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0, 0.004))  # a random moment, not a synchronisation
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        lines += proc.stdout.readlines()  # acks printed before the kill are promises too
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
        for line in lines:
            kind, *rest = line.split()
            if kind == "order":
                acked_orders.add(int(rest[0]))
            elif kind == "vote":
                seq, hx = int(rest[0]), bytes.fromhex(rest[1])
                assert acked_votes.setdefault(seq, hx) == hx, f"a second, different vote was sent for seq {seq}"
            elif kind == "refused":
                refused += 1

        with Store.open(directory) as store:
            inputs = list(store.iter_inputs())
            n = len(inputs)
            assert [i.index for i in inputs] == list(range(n)), "the input log has a gap"
            # Every acknowledged order survived; at most one completed batch was not yet acknowledged.
            assert all(i < n for i in acked_orders), (n, max(acked_orders, default=None))
            assert n <= max(acked_orders, default=-1) + 2
            # No torn batch: order b, input b and cursor b exist together, for exactly b < n.
            hashes = {o.signed.hash for o in store.iter_orders()}
            assert hashes == {h32("order", b) for b in range(n)}
            for b in range(n):
                assert store.get_order(h32("order", b)) == order_record(b)
            assert store.get_cursor() == (cursor(n - 1) if n else None)
            snaps = [int.from_bytes(key[1:], "big") for key, _ in store.items() if key[0] == Space.SNAPSHOT]
            assert snaps == [b for b in range(n) if b % 5 == 4]
            # Every vote sent is stored, and is the one that was sent.
            for seq, hx in acked_votes.items():
                stored = store.get_vote(seq, 0)
                assert stored is not None and stored.batch_hash == hx, f"vote for seq {seq} forgotten or changed"
            for q in store.iter_quorum(Space.VOTE):
                assert q.seq < n
            # Recovered state (snapshot + replay) equals a replay of every completed batch from scratch.
            rec = store.recover()
            state = decode_state(rec.snapshot.payload) if rec.snapshot else INITIAL
            for inp in rec.inputs_after:
                state = apply(state, inp)
            model = INITIAL
            for inp in inputs:
                model = apply(model, inp)
            assert state == model and state[0] == n
            assert rec.cursor == (cursor(n - 1) if n else None)
    assert runs >= 15, f"only {runs} kill/restart cycles fit in the budget"
    assert len(acked_orders) > runs
    # Restarts that found their seq already voted refused a second vote (they happen in most runs).
    assert refused > 0
