"""A processor for the kill -9 test: `python -m tests.processor.crash_runner DIR SEED`.

Opens the processor on DIR, finds where its stored cursor is in the seeded scenario (the cursor's tag is the index of
the message that wrote it), then applies every later message, printing "applied TAG" (the stored cursor's tag) after
each apply_chain returned; "done" at the end.
"""

from __future__ import annotations

import sys

from relayer.processor import Processor
from relayer.store import Store

from .synth import scenario


def resume_index(p: Processor) -> int:
    return -1 if p.cursor is None else p.cursor.recent[0][0]


def main(directory: str, seed: str) -> None:
    messages = scenario(int(seed), blocks=150).messages
    store = Store.open(directory)
    p = Processor.open(store)
    start = resume_index(p) + 1
    print(f"ready {start}", flush=True)
    for msg in messages[start:]:
        p.apply_chain(msg)
        print(f"applied {resume_index(p)}", flush=True)
    print("done", flush=True)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
