"""Matcher throughput and latency: mixed ops (55% add, 30% cancel, 15% crossing + build_batch) on one core."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

from eth_keys import keys

from relayer.eip712 import order_digest, sign_digest, verify_order
from relayer.matcher import Book, Retire, build_batch
from relayer.matcher.workload import DOMAIN, IOC_WINDOW, BuildBatch, generate
from relayer.types import Order

N_OPS = 200_000
SEED = 20261123


def _percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1_000


N_VERIFY = 4_000


def _signed_orders(n: int) -> list[tuple[Order, bytes]]:
    """``n`` workload orders re-addressed to a real key and signed (EIP-712, relayer.eip712)."""
    secret = b"\x07" * 32
    trader = keys.PrivateKey(secret).public_key.to_checksum_address()
    out = []
    for add in generate(SEED, n * 2, traders=10, mix=(100, 0, 0)).orders[:n]:
        order = replace(add.order, trader=trader)
        out.append((order, sign_digest(secret, order_digest(DOMAIN, order))))
    return out


def _verify_chunk(chunk: list[tuple[Order, bytes]]) -> int:
    for order, signature in chunk:
        verify_order(DOMAIN, order, signature)
    return len(chunk)


def _verify_rates() -> dict[str, float | int | str]:
    signed = _signed_orders(N_VERIFY)
    started = time.perf_counter()
    _verify_chunk(signed)
    one = len(signed) / (time.perf_counter() - started)
    workers = os.cpu_count() or 1
    size = max(1, len(signed) // (workers * 4))
    chunks = [signed[i : i + size] for i in range(0, len(signed), size)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_verify_chunk, chunks[:workers]))  # warm the workers up
        started = time.perf_counter()
        done = sum(pool.map(_verify_chunk, chunks))
        pooled = done / (time.perf_counter() - started)
    return {"verify_orders_per_s_1proc": one, "verify_orders_per_s_pool": pooled, "verify_pool_workers": workers}


def run() -> dict[str, float | int | str]:
    workload = generate(SEED, N_OPS, traders=200)
    ops = workload.ops
    book = Book(IOC_WINDOW)
    filled = dict(workload.chain.filled)  # owned here and updated in place, like a node's watcher
    accounts = dict(workload.chain.accounts)
    chain = replace(workload.chain, filled=filled, accounts=accounts)
    limits = workload.limits
    simple: list[int] = []  # adds and cancels
    cross: list[int] = []  # a crossing order added, then build_batch, settle and retire
    fills = batches = 0
    clock = time.perf_counter_ns
    i, n = 0, len(ops)
    started = clock()
    while i < n:
        op = ops[i]
        t0 = clock()
        if i + 1 < n and isinstance(ops[i + 1], BuildBatch):  # a crossing order: add it, then match it
            book.apply(op)  # type: ignore[arg-type]
            build = ops[i + 1]
            assert isinstance(build, BuildBatch)
            batch = build_batch(book, chain, build.now, limits)
            filled.update(batch.filled_delta)
            accounts.update(batch.accounts_delta)
            book.apply(Retire(batch))
            fills += len(batch.fills)
            batches += 1
            i += 2
            cross.append(clock() - t0)
        else:
            book.apply(op)  # type: ignore[arg-type]
            i += 1
            simple.append(clock() - t0)
    elapsed = (clock() - started) / 1e9
    latencies = sorted(simple + cross)
    simple.sort()
    cross.sort()
    return {
        "ops": len(latencies),
        "ops_per_s": len(latencies) / elapsed,
        "p50_us": _percentile(latencies, 0.50),
        "p99_us": _percentile(latencies, 0.99),
        "p999_us": _percentile(latencies, 0.999),
        "max_us": latencies[-1] / 1_000,
        "p99_us_add_cancel": _percentile(simple, 0.99),
        "p50_us_cross_build": _percentile(cross, 0.50),
        "p99_us_cross_build": _percentile(cross, 0.99),
        "batches": batches,
        "fills": fills,
        "resting_orders": len(book),
        "state_hash": book.state_hash(),
        **_verify_rates(),
    }
