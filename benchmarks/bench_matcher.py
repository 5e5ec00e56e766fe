"""Matcher throughput and latency on one core: the seeded mix (55% add, 30% cancel of random resting orders, 15%
crossing orders) matched through build_batch once per quorum round (headline) and once per crossing order
(``per_order_batches``), plus order verification rates on one process and on all cores."""

from __future__ import annotations

import gc
import time
from dataclasses import replace
from typing import Any

from eth_keys import keys

from relayer.eip712 import order_digest, sign_digest
from relayer.matcher import Book, Retire, build_batch
from relayer.matcher.workload import DOMAIN, IOC_WINDOW, BuildBatch, generate
from relayer.types import Order
from relayer.verify import Rejected, VerifyPool, verify_all

N_OPS = 200_000
ROUND_OPS = 500
SEED = 20261123


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1_000


N_VERIFY = 8_000


def _signed_orders(n: int) -> list[tuple[Order, bytes]]:
    """``n`` workload orders re-addressed to a real key and signed (EIP-712, relayer.eip712)."""
    secret = b"\x07" * 32
    trader = keys.PrivateKey(secret).public_key.to_checksum_address()
    out = []
    for add in generate(SEED, n * 2, traders=10, mix=(100, 0, 0)).orders[:n]:
        order = replace(add.order, trader=trader)
        out.append((order, sign_digest(secret, order_digest(DOMAIN, order))))
    return out


def _verify_rates() -> dict[str, float | int | str]:
    signed = _signed_orders(N_VERIFY)
    started = time.perf_counter()
    results = verify_all(DOMAIN, signed)
    one = len(signed) / (time.perf_counter() - started)
    assert not any(isinstance(r, Rejected) for r in results)
    with VerifyPool() as pool:
        pool.verify(DOMAIN, signed[: pool.workers * 100])  # start the workers
        started = time.perf_counter()
        results = pool.verify(DOMAIN, signed)
        pooled = len(results) / (time.perf_counter() - started)
        workers = pool.workers
    assert not any(isinstance(r, Rejected) for r in results)
    return {"verify_per_s_1proc": one, "verify_per_s_all": pooled, "verify_workers": workers}


def _drive(round_ops: int | None) -> dict[str, Any]:
    """Run the seeded mix through a book the way a node does: each :class:`BuildBatch` builds a batch on the chain
    state, settles it as simulated (the watcher's job) and retires it. Returns per-op latencies (ns), per-round
    latencies (ns), the wall time of the whole drive (s) and the results."""
    workload = generate(SEED, N_OPS, traders=200, round_ops=round_ops)
    book = Book(IOC_WINDOW)
    filled = dict(workload.chain.filled)  # owned here and updated in place, like a node's watcher
    accounts = dict(workload.chain.accounts)
    chain = replace(workload.chain, filled=filled, accounts=accounts)
    limits = workload.limits
    op_ns: list[int] = []
    round_ns: list[int] = []
    fills = 0
    clock = time.perf_counter_ns
    apply = book.apply
    gc.collect()
    started = clock()
    for op in workload.ops:
        t0 = clock()
        if isinstance(op, BuildBatch):
            batch = build_batch(book, chain, op.now, limits)
            filled.update(batch.filled_delta)
            accounts.update(batch.accounts_delta)
            apply(Retire(batch))
            fills += len(batch.fills)
            round_ns.append(clock() - t0)
        else:
            apply(op)
            op_ns.append(clock() - t0)
    elapsed = (clock() - started) / 1e9
    return {"op_ns": op_ns, "round_ns": round_ns, "elapsed": elapsed, "fills": fills, "book": book}


def _per_order_mode() -> dict[str, float | int]:
    """Every crossing order is matched at once through its own build_batch: the crossing op's latency includes the
    build (the figure a matching engine that matches on arrival would print)."""
    run = _drive(None)
    op_ns, round_ns = run["op_ns"], run["round_ns"]
    return {
        "ops_per_s": len(op_ns) / run["elapsed"],
        "p99_us_add_cancel": _percentile(sorted(op_ns), 0.99),
        "p50_us_cross_build": _percentile(sorted(round_ns), 0.50),
        "p99_us_cross_build": _percentile(sorted(round_ns), 0.99),
        "batches": len(round_ns),
        "fills": run["fills"],
        "state_hash": run["book"].state_hash(),
    }


def run() -> dict[str, Any]:
    """Headline figures: one batch per quorum round of ``ROUND_OPS`` operations (how a node matches: DESIGN.md
    "Quorum protocol"); ``ops_per_s`` counts every operation over the whole wall time, rounds included; the latency
    percentiles are per operation (add, cancel, crossing add) and the rounds have their own."""
    run = _drive(ROUND_OPS)
    op_ns, round_ns = sorted(run["op_ns"]), sorted(run["round_ns"])
    book = run["book"]
    return {
        "ops": len(op_ns),
        "round_ops": ROUND_OPS,
        "ops_per_s": len(op_ns) / run["elapsed"],
        "p50_us": _percentile(op_ns, 0.50),
        "p99_us": _percentile(op_ns, 0.99),
        "p999_us": _percentile(op_ns, 0.999),
        "max_us": op_ns[-1] / 1_000,
        "rounds": len(round_ns),
        "round_p50_us": _percentile(round_ns, 0.50),
        "round_p99_us": _percentile(round_ns, 0.99),
        "round_us_per_fill": sum(round_ns) / 1_000 / max(1, run["fills"]),
        "fills": run["fills"],
        "resting_orders": len(book),
        "state_hash": book.state_hash(),
        "per_order_batches": _per_order_mode(),
        **_verify_rates(),
    }
