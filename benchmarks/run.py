"""Run one benchmark module (benchmarks/bench_NAME.py), print its figures and write out/bench/NAME.json.

A benchmark module defines ``run() -> dict[str, float | int | str]``: named figures with units in their names.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rate(fn: Callable[[int], object], n: int) -> float:
    """Calls per second of ``fn(i)`` for ``i`` in ``range(n)`` (wall clock, perf_counter)."""
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.run NAME", file=sys.stderr)
        return 2
    name = argv[0]
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
    except ModuleNotFoundError:
        known = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "benchmarks").glob("bench_*.py"))
        print(f"unknown benchmark {name!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    print(f"bench {name}: {(module.__doc__ or '').strip().splitlines()[0]}")
    started = time.perf_counter()
    figures = module.run()
    # The figures at the top level (what later runs and tools compare), how they were taken under "_run".
    result = {
        **figures,
        "_run": {
            "benchmark": name,
            "seconds": round(time.perf_counter() - started, 3),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    out = ROOT / "out" / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"  {key:<{width}}  {shown}")
    print(f"  -> {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
