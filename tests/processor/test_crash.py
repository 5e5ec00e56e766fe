"""kill -9 a processor at random moments while it applies chain messages; after each restart the stored cursor and
the stored chain model match: the model equals a fresh processor fed the messages up to that cursor."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from relayer.processor import Processor
from relayer.store import Store

from ..conftest import ROOT
from .crash_runner import resume_index
from .synth import scenario

SEED = 7
ITERATIONS = 12
BUDGET_S = 20.0


def _start(directory: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.processor.crash_runner", str(directory), str(SEED)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_kill_minus_nine_keeps_cursor_and_chain_model_together(tmp_path: Path) -> None:
    messages = scenario(SEED, blocks=150).messages
    # The reference: a fresh processor's state hash after each message.
    reference: list[bytes] = []
    with Store.open(tmp_path / "reference") as s:
        p = Processor.open(s)
        for msg in messages:
            p.apply_chain(msg)
            reference.append(p.state_hash())

    rng = random.Random(SEED)
    started = time.monotonic()
    runs = kills_mid_stream = 0
    generation = 0
    directory = tmp_path / f"data-{generation}"
    while runs < ITERATIONS and time.monotonic() - started < BUDGET_S:
        runs += 1
        proc = _start(directory)
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith("ready"), f"runner failed: {first!r} {proc.stderr.read()}"
        acked = -1
        target = rng.randint(0, 120)
        lines = 0
        finished = False
        while lines < target:
            line = proc.stdout.readline()
            if not line or line.startswith("done"):
                finished = True
                break
            acked = max(acked, int(line.split()[1]))
            lines += 1
        if rng.random() < 0.7:
            time.sleep(rng.uniform(0, 0.003))  # a random moment, not a synchronisation
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for line in proc.stdout.readlines():
            if line.startswith("applied"):
                acked = max(acked, int(line.split()[1]))
        proc.stdout.close()
        proc.stderr.close()
        kills_mid_stream += not finished

        with Store.open(directory) as store:
            p = Processor.open(store)
            at = resume_index(p)
            assert at >= acked, f"the cursor ({at}) is behind a message already applied ({acked})"
            if at >= 0:
                assert p.state_hash() == reference[at], f"stored model does not match the cursor at message {at}"
            else:
                assert p.final.block is None and not p.pending
            assert store.get_cursor() == p.cursor
            done = at == len(messages) - 1
        if done:  # the runner got to the end: start over on a fresh directory
            generation += 1
            directory = tmp_path / f"data-{generation}"
    assert runs >= 8, f"only {runs} kill/restart cycles fit in the budget"
    assert kills_mid_stream >= runs // 2
