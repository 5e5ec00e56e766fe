"""A strict consumer of the watcher's messages (what the processor does, reduced to block hashes), and a harness that
runs a watcher feeding it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from relayer.store.records import ChainCursor
from relayer.watcher import ChainMessage, Finalized, Head, Included, Retracted, Watcher


@dataclass
class View:
    """Applies Included / Retracted / Finalized by block hash, checking the order and exactly-once rules, and keeps
    the cursor of the last applied message (what the processor stores with it)."""

    blocks: dict[bytes, Included] = field(default_factory=dict)
    final: set[bytes] = field(default_factory=set)
    cursor: ChainCursor | None = None
    retracted: list[bytes] = field(default_factory=list)
    heads: int = 0
    messages: int = 0
    changed: trio.Event = field(default_factory=trio.Event)

    def apply(self, msg: ChainMessage) -> None:
        self.messages += 1
        if isinstance(msg, Head):
            self.heads += 1
        elif isinstance(msg, Included):
            h = msg.block.hash
            assert h not in self.blocks, f"block {msg.block.number} included twice"
            floor = self.cursor.number if self.cursor is not None else -1
            assert msg.block.number > floor, f"block {msg.block.number} included at or below cursor {floor}"
            assert msg.cursor.number == msg.block.number and msg.cursor.hash == h
            assert all(lg.block_hash == h and lg.block_number == msg.block.number for lg in msg.logs)
            keys = [lg.key for lg in msg.logs]
            assert len(set(keys)) == len(keys), "a log twice in one block"
            self.blocks[h] = msg
        elif isinstance(msg, Retracted):
            h = msg.block.hash
            assert h in self.blocks, f"retracted unknown block {msg.block.number}"
            assert h not in self.final, f"retracted final block {msg.block.number}"
            assert self.cursor is not None and self.cursor.number == msg.block.number, "not the highest block"
            assert msg.cursor.number < msg.block.number
            del self.blocks[h]
            self.retracted.append(h)
        elif isinstance(msg, Finalized):
            h = msg.block.hash
            assert h in self.blocks, f"finalized unknown block {msg.block.number}"
            assert h not in self.final, f"block {msg.block.number} finalized twice"
            self.final.add(h)
        if not isinstance(msg, Head):
            self.cursor = msg.cursor
        self.changed.set()
        self.changed = trio.Event()

    def logs(self) -> dict[tuple[bytes, bytes, int], Any]:
        """Every log held, by key, with its decoded event (None when undecodable)."""
        out: dict[tuple[bytes, bytes, int], Any] = {}
        for inc in self.blocks.values():
            for lg in inc.logs:
                assert lg.key not in out, "a log delivered twice"
                out[lg.key] = lg.event
        return out

    def salts(self) -> dict[tuple[bytes, bytes, int], int | None]:
        return {k: (getattr(e, "salt", None) if e is not None else None) for k, e in self.logs().items()}

    def at_height(self) -> dict[int, bytes]:
        return {inc.block.number: h for h, inc in self.blocks.items()}


@dataclass
class Running:
    watcher: Watcher
    view: View
    scope: trio.CancelScope

    async def wait_for(self, predicate: Callable[[], bool], seconds: float = 10.0) -> None:
        with trio.fail_after(seconds):
            while not predicate():
                await self.view.changed.wait()

    async def caught_up(self, number: int, seconds: float = 10.0, *, block_hash: bytes | None = None) -> None:
        """Until the view's cursor is at block ``number`` (with ``block_hash`` when given) and the watcher is there."""
        await self.wait_for(
            lambda: (
                self.view.cursor is not None
                and self.view.cursor.number == number
                and (block_hash is None or self.view.cursor.hash == block_hash)
                and self.watcher.stats.cursor == number
            ),
            seconds,
        )

    def stop(self) -> None:
        self.scope.cancel()


@asynccontextmanager
async def running(watcher: Watcher, view: View) -> AsyncIterator[Running]:
    """Run ``watcher`` into ``view`` until the block ends (the watcher is cancelled then)."""
    send, recv = trio.open_memory_channel[ChainMessage](0)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def watch() -> None:
            with scope:
                async with send:
                    await watcher.run(send)

        async def consume() -> None:
            async with recv:
                async for msg in recv:
                    view.apply(msg)

        nursery.start_soon(watch)
        nursery.start_soon(consume)
        yield Running(watcher, view, scope)
        scope.cancel()
