"""Gas per fill of settleBatch on a real anvil: the common case, the worst case, and where the gas goes.

- gas_per_fill[N]: one resting maker filled by N takers who already hold positions (fresh taker orders), total
  transaction gas / N.
- worst_gas_per_fill_50: 100 fresh orders of 100 distinct traders with no position yet, 50 fills.
- breakdown_50: the common case at 50 fills split by part, from an opcode trace (debug_traceTransaction): calldata
  (intrinsic), signatures (ecrecover calls), fill counters, positions, balances, fees, market reads for margin,
  events, and the rest (hashing, checks, ABI decoding, margin arithmetic).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import trio
from eth_utils import keccak

from bindings import exchange as ex
from relayer.chain.anvil import AnvilControl, start_anvil_sync
from relayer.chain.rpc import HttpRpc
from tests.exchange.world import ONE, PRICE, Party, World

SIZES = (1, 10, 50, 100)
DEPOSIT = 10**12  # a million collateral units each: margin never binds here

# Storage slots of Exchange (solc storageLayout; checked against the views below).
SLOT_MARKETS, SLOT_ACCOUNTS, SLOT_POSITIONS, SLOT_ORDER_STATE = 2, 3, 4, 5
SLOT_FEES = 13


def _word(x: int | str) -> bytes:
    if isinstance(x, str):
        return bytes(12) + bytes.fromhex(x[2:])
    return x.to_bytes(32, "big")


def _map(key: int | str, slot: bytes | int) -> int:
    base = slot if isinstance(slot, bytes) else _word(slot)
    return int.from_bytes(keccak(_word(key) + base), "big")


def _calldata_gas(data: bytes) -> int:
    zeros = data.count(0)
    return 4 * zeros + 16 * (len(data) - zeros)


async def _seed_positions(world: World, takers: list[Party], seed: Party) -> None:
    """Give every taker an open long (bought from ``seed``), in batches of up to 100 fills."""
    for start in range(0, len(takers), 100):
        chunk = takers[start : start + 100]
        maker = world.order(seed, side=1, amount=len(chunk) * ONE, created_at=10)
        orders = [world.sign_order(maker)]
        fills = []
        for i, t in enumerate(chunk, start=1):
            orders.append(world.sign_order(world.order(t, side=0, amount=ONE, created_at=20)))
            fills.append((0, i, ONE))
        settled = await world.settle(world.batch(orders, fills), gas=25_000_000)
        assert not settled.skipped, settled.skipped


async def _common_case(world: World, n: int, maker: Party, takers: list[Party]) -> tuple[int, Any]:
    resting = world.order(maker, side=1, amount=n * ONE, created_at=100)
    orders = [world.sign_order(resting)]
    fills = []
    for i, t in enumerate(takers[:n], start=1):
        orders.append(world.sign_order(world.order(t, side=0, amount=ONE, created_at=200 + i)))
        fills.append((0, i, ONE))
    settled = await world.settle(world.batch(orders, fills), gas=25_000_000)
    assert not settled.skipped and len(settled.filled) == n
    return settled.receipt.gas_used, settled


async def _worst_case(world: World, fresh: list[Party]) -> int:
    orders, fills = [], []
    for i in range(50):
        a, b = fresh[2 * i], fresh[2 * i + 1]
        orders.append(world.sign_order(world.order(a, side=1, amount=ONE, created_at=100)))
        orders.append(world.sign_order(world.order(b, side=0, amount=ONE, created_at=200)))
        fills.append((2 * i, 2 * i + 1, ONE))
    settled = await world.settle(world.batch(orders, fills), gas=25_000_000)
    assert not settled.skipped and len(settled.filled) == 50
    return settled.receipt.gas_used


async def _breakdown(world: World, settled: Any, parties: list[Party]) -> dict[str, int]:
    order_slots = {
        _map(salt, _word(_map(trader, SLOT_ORDER_STATE)))
        for e in settled.filled
        for trader, salt in ((e.maker, e.maker_salt), (e.taker, e.taker_salt))
    }
    tx_hash = settled.receipt.tx_hash
    tx = await world.rpc.call("eth_getTransactionByHash", [tx_hash])
    calldata = bytes.fromhex(tx["input"][2:])
    # Step traces of a 50-fill batch run to hundreds of MB with stacks: a client of its own with a higher cap.
    async with HttpRpc(world.rpc_url, timeout=600, max_response_bytes=2**31) as big:
        trace = await big.call(
            "debug_traceTransaction",
            [tx_hash, {"disableMemory": True, "disableStorage": True, "disableStack": False}],
        )
    # Which storage slots belong to what (the layout is checked: feesCollected read raw equals the view).
    raw_fees = int(await world.rpc.call("eth_getStorageAt", [world.deployment.exchange, hex(SLOT_FEES), "latest"]), 16)
    if raw_fees != ex.decode_fees_collected_result(await world.view(ex.encode_fees_collected())):
        raise RuntimeError("storage layout of Exchange changed: update the SLOT_* constants of bench_gas.py")
    owner_of: dict[int, str] = {SLOT_FEES: "fees"}
    for p in parties:
        owner_of[_map(p.address, SLOT_ACCOUNTS)] = "balances"
        owner_of[_map(1, _word(_map(p.address, SLOT_POSITIONS)))] = "positions"
    market_base = _map(1, SLOT_MARKETS)
    for k in range(8):
        owner_of[market_base + k] = "margin_market_reads"
    parts: dict[str, int] = defaultdict(int)
    steps = [st for st in trace["structLogs"] if int(st["depth"]) == 1]
    if not steps:
        raise RuntimeError("debug_traceTransaction returned no steps (anvil needs --steps-tracing)")
    for step, nxt in zip(steps, [*steps[1:], None], strict=True):
        op = step["op"]
        # The gas a step really used: the drop to the next step (a CALL's gasCost is what it forwarded).
        cost = int(step["gas"]) - int(nxt["gas"]) if nxt is not None else int(step["gasCost"])
        if op in ("SLOAD", "SSTORE"):
            slot = int(step["stack"][-1], 16)
            part = owner_of.get(slot) or ("fill_counters" if slot in order_slots else "other_storage")
            parts[part] += cost
        elif op == "STATICCALL" and int(step["stack"][-2], 16) == 1:
            parts["signatures"] += cost
        elif op.startswith("LOG"):
            parts["events"] += cost
        elif op == "KECCAK256":
            parts["hashing"] += cost
        else:
            parts["execution"] += cost
    parts["calldata"] = _calldata_gas(calldata)
    parts["intrinsic_base"] = 21_000
    total = sum(parts.values())
    parts["unattributed"] = settled.receipt.gas_used - total
    return dict(sorted(parts.items()))


async def _run() -> dict[str, Any]:
    with start_anvil_sync(extra_args=("--gas-limit", "100000000", "--steps-tracing")) as node:
        async with HttpRpc(node.http_url, timeout=60) as rpc:
            control = AnvilControl(rpc)
            world = await World.create(rpc, control, node.chain_id)
            world.rpc_url = node.http_url
            maker = await world.trader("maker", deposit=DEPOSIT)
            seed = await world.trader("seed", deposit=DEPOSIT * 100)
            takers = [await world.trader(f"taker-{i}", deposit=DEPOSIT) for i in range(max(SIZES))]
            await _seed_positions(world, takers, seed)
            gas_per_fill: dict[str, int] = {}
            breakdown: dict[str, int] = {}
            for n in SIZES:
                snap = await control.snapshot()
                gas, settled = await _common_case(world, n, maker, takers)
                gas_per_fill[str(n)] = gas // n
                if n == 50:
                    breakdown = await _breakdown(world, settled, [maker, *takers])
                await control.revert(snap)
                world.seq, world.last_hash = await _chain_seq(world)
            fresh = [await world.trader(f"fresh-{i}", deposit=DEPOSIT) for i in range(100)]
            worst = await _worst_case(world, fresh)
    return {"gas_per_fill": gas_per_fill, "worst_gas_per_fill_50": worst // 50, "breakdown_50": breakdown}


async def _chain_seq(world: World) -> tuple[int, bytes]:
    seq = ex.decode_last_seq_result(await world.view(ex.encode_last_seq()))
    last = ex.decode_last_batch_hash_result(await world.view(ex.encode_last_batch_hash()))
    return seq, last


def run() -> dict[str, Any]:
    result = trio.run(_run)
    result["goal_gas_per_fill_50"] = 60_000
    result["price"] = PRICE
    return result
