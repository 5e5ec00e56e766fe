"""The relayer network with nodes as separate processes (4 `relayer run` on 127.0.0.1, a real anvil): certificate
latency (proposal sent → certificate assembled, from the proposer's log) over a run of batches, and order intake at
every peer (orders gossiped by a trader gateway, validated and stored at all 4 nodes) per second, with the CPU each
process used."""

from __future__ import annotations

import json
import os
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from relayer import eip712
from relayer.chain.anvil import AnvilControl, AnvilProcess, start_anvil
from relayer.chain.rpc import HttpRpc
from relayer.types import Hash32, Side, SignedOrder
from tests.exchange.world import PRICE, World
from tests.network.cluster import Node, crossing, gossip, make_cluster, wait_logs, wait_seq

BATCHES = int(os.environ.get("BENCH_P2P_BATCHES", "20"))
ORDERS = 8_000


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ts(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def _records(node: Node) -> list[dict[str, Any]]:
    out = []
    for line in node.text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _certificate_latencies(nodes: list[Node]) -> list[float]:
    """Per (seq, round) proposed by a node: its 'proposing' line → its 'certificate ... submitting' line (ms)."""
    out = []
    for n in nodes:
        proposed: dict[int, float] = {}
        for r in _records(n):
            msg = str(r.get("msg", ""))
            if msg.startswith("proposing seq "):
                proposed[int(msg.split()[2])] = _ts(r["ts"])
            elif msg.startswith("certificate for seq ") and msg.endswith("(proposer)"):
                seq = int(msg.split()[3])
                if seq in proposed:
                    out.append((_ts(r["ts"]) - proposed[seq]) * 1_000)
    return out


def _resting(world: World, party: Any, n: int, start_salt: int) -> list[SignedOrder]:
    """``n`` resting buys far below the price (they never cross), createdAt now."""
    now = int(time.time())
    out = []
    for i in range(n):
        o = world.order(party, Side.BUY, 10**6, PRICE // 2 - i, salt=start_salt + i, created_at=now, expiry=now + 3_600)
        digest = eip712.order_digest(world.domain, o)
        out.append(SignedOrder(o, eip712.sign_digest(party.key, digest), Hash32(digest)))
    return out


def _accepted(node: Node) -> int:
    total = 0
    for r in _records(node):
        msg = str(r.get("msg", ""))
        if " order(s) from gossip accepted" in msg:
            total += int(msg.split("/", 1)[0])
    return total


async def _main(tmp: Path, anvil: AnvilProcess) -> dict[str, Any]:
    async with HttpRpc(anvil.http_url, timeout=60) as rpc:
        world = await World.create(rpc, AnvilControl(rpc), anvil.chain_id, relayers=4, threshold=3)
        for r in world.relayers:
            await world.control.set_balance(r.address, 10**22)
        maker = await world.trader("bench-maker", deposit=10**12)
        taker = await world.trader("bench-taker", deposit=10**12)
        resting = await world.trader("bench-resting", deposit=10**12)
        nodes = make_cluster(tmp, anvil, world, extra={"orders": {"created_at_window_s": 60}})
        for n in nodes:
            n.log_args = ["--log-format", "json", "--log", "relayer.node=debug"]
            n.start()
        try:
            wait_logs(nodes, r"caught up with the chain")
            pids = [n.proc.pid for n in nodes if n.proc is not None]
            cpu0 = [_cpu_seconds(p) for p in pids]
            wall0 = time.perf_counter()
            for i in range(BATCHES):
                a, b = (maker, taker) if i % 2 == 0 else (taker, maker)
                await gossip(world, anvil, nodes, lambda a=a, b=b: crossing(world, a, b, 10**6))
                await wait_seq(world, nodes, i + 1)
            latencies = _certificate_latencies(nodes)
            orders = _resting(world, resting, ORDERS, 10_000)

            async def all_accepted() -> None:
                with trio.move_on_after(300):
                    while min(_accepted(n) for n in nodes) < ORDERS:  # noqa: ASYNC110 -- polling the nodes' logs
                        await trio.sleep(0.1)

            started = time.time()
            await gossip(world, anvil, nodes, orders, until=all_accepted)
            counts = [_accepted(n) for n in nodes]
            if min(counts) < ORDERS:
                refusals = [r["msg"] for n in nodes for r in _records(n) if "refused" in str(r.get("msg", ""))]
                raise RuntimeError(f"only {counts} of {ORDERS} orders accepted per node; {refusals[:4]}")
            last = max(
                _ts(r["ts"])
                for n in nodes
                for r in _records(n)
                if " order(s) from gossip accepted" in str(r.get("msg", ""))
            )
            wall = time.perf_counter() - wall0
            cpu = [_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        finally:
            for n in nodes:
                if n.alive():
                    n.stop(signal.SIGTERM)
    return {
        "nodes": len(nodes),
        "batches": BATCHES,
        "certificate_p50_ms": statistics.median(latencies),
        "certificate_p99_ms": sorted(latencies)[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "certificate_samples": len(latencies),
        "orders": ORDERS,
        "orders_per_s_all_peers": ORDERS / max(1e-9, last - started),
        "cpu_s_per_process": [round(c, 2) for c in cpu],
        "cpu_share_per_process": [round(c / wall, 3) for c in cpu],
        "wall_s": wall,
    }


def run() -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="bench-p2p-") as tmp:
            async with start_anvil(log_path=Path(tmp) / "anvil.log") as anvil:
                return await _main(Path(tmp), anvil)  # type: ignore[arg-type]

    return trio.run(main)
