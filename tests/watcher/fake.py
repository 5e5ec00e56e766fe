"""A deterministic in-memory chain that speaks the watcher's RPC (calls and subscriptions), with reorgs, node styles
(anvil: no ``removed`` logs; real nodes: ``removed: true``) and failure injection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from eth_utils.crypto import keccak

from bindings import exchange as ex
from relayer.chain.errors import RpcConnectionError, RpcResponseError
from relayer.chain.rpc import from_quantity, to_quantity

EXCHANGE = "0x" + "ee" * 20
OTHER = "0x" + "0c" * 20
TRADER_TOPIC = "0x" + "00" * 12 + "ab" * 20
UNKNOWN_TOPIC = "0x" + "77" * 32


def _hx(b: bytes) -> str:
    return "0x" + b.hex()


@dataclass
class FakeLog:
    """What a transaction emitted; ``kind`` is "ok" (a CancelledUpTo), "unknown" (unknown topic0) or "bad" (a known
    topic0 with data that does not decode)."""

    salt: int
    kind: str = "ok"
    address: str = EXCHANGE


@dataclass
class FakeBlock:
    number: int
    hash: bytes
    parent: bytes
    timestamp: int
    logs: list[FakeLog] = field(default_factory=list)

    def header(self) -> dict[str, Any]:
        return {
            "number": to_quantity(self.number),
            "hash": _hx(self.hash),
            "parentHash": _hx(self.parent),
            "timestamp": to_quantity(self.timestamp),
        }

    def raw_logs(self, *, removed: bool = False) -> list[dict[str, Any]]:
        out = []
        for i, lg in enumerate(self.logs):
            if lg.kind == "unknown":
                topics, data = [UNKNOWN_TOPIC], "0x"
            else:
                topics = [_hx(ex.CancelledUpToEvent.TOPIC0), TRADER_TOPIC]
                data = _hx(lg.salt.to_bytes(32, "big")) if lg.kind == "ok" else "0x1234"
            tx = keccak(self.hash + i.to_bytes(4, "big"))
            out.append(
                {
                    "address": lg.address,
                    "topics": topics,
                    "data": data,
                    "blockNumber": to_quantity(self.number),
                    "blockHash": _hx(self.hash),
                    "transactionHash": _hx(tx),
                    "transactionIndex": to_quantity(i),
                    "logIndex": to_quantity(i),
                    "removed": removed,
                }
            )
        return out


class FakeSub:
    def __init__(self, kind: str, params: Sequence[Any]) -> None:
        self.kind = kind
        self.params = list(params)
        self._send, self._recv = trio.open_memory_channel[Any](10_000)

    def push(self, item: Any) -> None:
        self._send.send_nowait(item)

    def kill(self) -> None:
        self._send.close()

    async def receive(self) -> Any:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise RpcConnectionError("fake connection closed", endpoint="fake") from None


class FakeChain:
    def __init__(self, *, removed_logs: bool = False, orphans_by_hash: bool = False) -> None:
        self.removed_logs = removed_logs  # a real node: removed logs are notified on reorgs
        self.orphans_by_hash = orphans_by_hash  # eth_getBlockByHash still answers for blocks that left the chain
        self.blocks: list[FakeBlock] = []
        self.by_hash: dict[bytes, FakeBlock] = {}
        self._counter = 0
        self.subs: list[FakeSub] = []
        self.calls: list[tuple[str, list[Any]]] = []
        self.down = False  # connecting fails
        self.refuse_range_over: int | None = None  # eth_getLogs answers an error for larger ranges
        self.fail_calls: int = 0  # the next n calls fail with a connection error
        self.on_call: Callable[[str, list[Any]], None] | None = None  # a hook run before answering (e.g. a reorg)
        self.connects: list[str] = []
        self.salt = 0
        self.mine(1)  # genesis

    # ---------------------------------------------------------------------------------------------- chain
    @property
    def head(self) -> FakeBlock:
        return self.blocks[-1]

    def _new_block(self, logs: list[FakeLog]) -> FakeBlock:
        self._counter += 1
        parent = self.blocks[-1].hash if self.blocks else b"\0" * 32
        number = len(self.blocks)
        block = FakeBlock(number, keccak(b"fake block %d" % self._counter), parent, 1_000 + number * 12, logs)
        self.blocks.append(block)
        self.by_hash[block.hash] = block
        return block

    def logs(self, n: int, kind: str = "ok") -> list[FakeLog]:
        out = []
        for _ in range(n):
            self.salt += 1
            out.append(FakeLog(self.salt, kind))
        return out

    def mine(self, n: int = 1, *, logs: int = 0, every: int = 1, notify: bool = True) -> list[FakeBlock]:
        """Mine ``n`` blocks; each ``every``-th one gets ``logs`` exchange logs (plus one of another contract)."""
        mined = []
        for i in range(n):
            extra = self.logs(logs) if logs and i % every == 0 else []
            if extra:
                extra.append(FakeLog(0, address=OTHER))
            mined.append(self._new_block(extra))
        if notify:
            for block in mined:
                self._notify(block)
        return mined

    def mine_with(self, logs: list[FakeLog], *, notify: bool = True) -> FakeBlock:
        block = self._new_block(logs)
        if notify:
            self._notify(block)
        return block

    def reorg(self, depth: int, new_blocks: int | None = None, *, logs: int = 1, notify: bool = True) -> None:
        """Replace the top ``depth`` blocks by ``new_blocks`` (default: as many) with ``logs`` logs each."""
        gone = self.blocks[len(self.blocks) - depth :]
        del self.blocks[len(self.blocks) - depth :]
        if not self.orphans_by_hash:
            for b in gone:
                del self.by_hash[b.hash]
        if notify and self.removed_logs:
            for b in reversed(gone):
                for raw in b.raw_logs(removed=True):
                    self._push("logs", raw)
        self.mine(depth if new_blocks is None else new_blocks, logs=logs, notify=notify)

    def revert_to(self, number: int) -> None:
        """Drop the blocks above ``number`` without any notification (like evm_revert)."""
        for b in self.blocks[number + 1 :]:
            if not self.orphans_by_hash:
                del self.by_hash[b.hash]
        del self.blocks[number + 1 :]

    def _notify(self, block: FakeBlock) -> None:
        for raw in block.raw_logs():
            self._push("logs", raw)
        self._push("newHeads", block.header())

    def _push(self, kind: str, item: Any) -> None:
        for sub in self.subs:
            if sub.kind != kind:
                continue
            if kind == "logs" and item["address"] != sub.params[0]["address"]:
                continue
            sub.push(item)

    def drop(self) -> None:
        """Close every connection (subscriptions end with a connection error)."""
        for sub in self.subs:
            sub.kill()
        self.subs.clear()

    def expected(self, start: int = 0) -> dict[tuple[bytes, bytes, int], int | None]:
        """The exchange's logs on the canonical chain from ``start``: key -> salt (None when not decodable)."""
        out = {}
        for b in self.blocks[start:]:
            for raw, lg in zip(b.raw_logs(), b.logs, strict=True):
                if lg.address == EXCHANGE:
                    key = (b.hash, bytes.fromhex(raw["transactionHash"][2:]), from_quantity(raw["logIndex"]))
                    out[key] = lg.salt if lg.kind == "ok" else None
        return out

    # ---------------------------------------------------------------------------------------------- rpc
    @asynccontextmanager
    async def connect(self, url: str) -> AsyncIterator[FakeRpc]:
        self.connects.append(url)
        await trio.lowlevel.checkpoint()
        if self.down or url.startswith("dead"):
            raise RpcConnectionError("connection refused", endpoint=url)
        yield FakeRpc(self)

    def answer(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, params))
        if self.on_call is not None:
            self.on_call(method, params)
        if self.fail_calls:
            self.fail_calls -= 1
            raise RpcConnectionError("connection reset", endpoint="fake")
        if method == "eth_getBlockByNumber":
            tag = params[0]
            number = self.head.number if tag == "latest" else from_quantity(tag)
            return self.blocks[number].header() if number < len(self.blocks) else None
        if method == "eth_getBlockByHash":
            block = self.by_hash.get(bytes.fromhex(params[0][2:]))
            return None if block is None else block.header()
        if method == "eth_getLogs":
            query = params[0]
            if "blockHash" in query:
                block = self.by_hash.get(bytes.fromhex(query["blockHash"][2:]))
                if block is None or self.blocks[block.number] is not block:
                    raise RpcResponseError(-32000, "unknown block", method=method)
                blocks = [block]
            else:
                first, last = from_quantity(query["fromBlock"]), from_quantity(query["toBlock"])
                if last > self.head.number:
                    raise RpcResponseError(-32000, "block range extends beyond current head block", method=method)
                if self.refuse_range_over is not None and last - first + 1 > self.refuse_range_over:
                    raise RpcResponseError(-32005, "query returned more than 10000 results", method=method)
                blocks = self.blocks[first : last + 1]
            return [raw for b in blocks for raw in b.raw_logs() if raw["address"] == query["address"]]
        raise RpcResponseError(-32601, f"method {method} not found", method=method)

    def get_logs_ranges(self) -> list[tuple[int, int]]:
        return [
            (from_quantity(p[0]["fromBlock"]), from_quantity(p[0]["toBlock"]))
            for m, p in self.calls
            if m == "eth_getLogs" and "fromBlock" in p[0]
        ]


class FakeRpc:
    def __init__(self, chain: FakeChain) -> None:
        self.chain = chain
        self.closed = False

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise RpcConnectionError("closed", endpoint="fake")
        return self.chain.answer(method, list(params))

    async def subscribe(self, kind: str, params: Sequence[Any] = ()) -> FakeSub:
        await trio.lowlevel.checkpoint()
        sub = FakeSub(kind, params)
        self.chain.subs.append(sub)
        return sub
