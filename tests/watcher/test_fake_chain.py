"""The watcher's backfill, confirmation, reorg, restart and reconnect logic against a deterministic fake chain."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from relayer.store.records import ChainCursor
from relayer.types import Hash32
from relayer.watcher import Finalized, Included, Retracted, Watcher

from .fake import EXCHANGE, FakeChain
from .helpers import Running, View, running


def make(chain: FakeChain, cursor: ChainCursor | None = None, **options: Any) -> Watcher:
    options.setdefault("start_block", 1)
    options.setdefault("confirmations", 3)
    options.setdefault("log_range_blocks", 4)
    options.setdefault("backoff_max_s", 2.0)
    urls = options.pop("urls", ["fake-a"])
    return Watcher(urls, EXCHANGE, cursor, connect=chain.connect, **options)


async def synced(run: Running, chain: FakeChain, seconds: float = 10.0) -> None:
    """Until the watcher has reported the fake chain's head block (number and hash)."""
    await run.wait_for(
        lambda: (
            run.view.cursor is not None
            and (run.view.cursor.number, run.view.cursor.hash) == (chain.head.number, chain.head.hash)
            and run.watcher.stats.cursor == chain.head.number
        ),
        seconds,
    )


def check_view(view: View, chain: FakeChain, start: int = 1) -> None:
    """The consumer holds exactly the canonical chain's exchange logs, and the block hashes it holds are canonical."""
    assert view.salts() == chain.expected(start)
    for number, block_hash in view.at_height().items():
        assert chain.blocks[number].hash == block_hash, f"view holds a non-canonical block {number}"


async def test_backfill_in_bounded_ranges_then_live() -> None:
    chain = FakeChain()
    chain.mine(30, logs=2, every=3)  # blocks 1..30, logs in 1, 4, 7, ...
    view = View()
    w = make(chain, confirmations=3, log_range_blocks=4)
    async with running(w, view) as run:
        await synced(run, chain)
        check_view(view, chain)
        ranges = chain.get_logs_ranges()
        assert ranges, "backfill used eth_getLogs"
        assert all(b - a + 1 <= 4 and b <= 30 for a, b in ranges), ranges
        # The final region (1..27) is reported only where there are logs (and range ends); the last 3 blocks each.
        included = {inc.block.number for inc in view.blocks.values()}
        assert {28, 29, 30} <= included
        assert not {2, 3, 5, 6} & included
        assert {inc.block.number for h, inc in view.blocks.items() if h not in view.final} == {28, 29, 30}
        assert view.cursor is not None and [n for n, _ in view.cursor.recent] == [28, 29, 30]
        # Live: blocks mined now arrive by subscription, are included at once and finalized 3 blocks later; a new
        # head on top of the cursor costs one call (its logs, by block hash).
        calls = len(chain.calls)
        chain.mine(1, logs=3)
        await synced(run, chain)
        assert [m for m, _ in chain.calls[calls:]] == ["eth_getLogs"]
        assert "blockHash" in chain.calls[-1][1][0]
        assert chain.blocks[31].hash in view.blocks and chain.blocks[31].hash not in view.final
        chain.mine(3)
        await synced(run, chain)
        assert chain.blocks[31].hash in view.final
        check_view(view, chain)
        assert w.stats.lag == 0 and w.stats.head == 34 and w.stats.reorgs == 0
        assert w.stats.delivered_logs == len(chain.expected(1))


@pytest.mark.parametrize("removed_logs", [False, True], ids=["anvil-style", "removed-logs"])
async def test_live_reorg_retracts_and_replaces(removed_logs: bool) -> None:
    chain = FakeChain(removed_logs=removed_logs)
    chain.mine(10, logs=1)
    view = View()
    w = make(chain, confirmations=5)
    async with running(w, view) as run:
        await synced(run, chain)
        before = dict(view.blocks)
        chain.reorg(3, 4, logs=2)  # 8..10 replaced by 8'..11'
        await synced(run, chain)
        check_view(view, chain)
        assert w.stats.reorgs == 1 and w.stats.retracted_blocks == 3
        assert (w.stats.removed_logs > 0) == removed_logs
        gone = [h for h in before if h not in view.blocks]
        assert sorted(before[h].block.number for h in gone) == [8, 9, 10]
        assert view.retracted == [before[h].block.hash for h in sorted(gone, key=lambda h: -before[h].block.number)]


async def test_reorg_to_a_shorter_chain_and_a_lagging_head() -> None:
    chain = FakeChain()
    chain.mine(12, logs=1)
    view = View()
    w = make(chain, confirmations=6)
    async with running(w, view) as run:
        await synced(run, chain)
        # A node that reports an older head whose hash we hold is behind, not reorged: nothing is retracted.
        for sub in chain.subs:
            if sub.kind == "newHeads":
                sub.push(chain.blocks[10].header())
        await trio.testing.wait_all_tasks_blocked()
        assert w.stats.reorgs == 0 and view.cursor is not None and view.cursor.number == 12
        # evm_revert-like: back to 9 silently, then a new block 10' (lower than the cursor).
        chain.revert_to(9)
        chain.mine(1, logs=1)
        await synced(run, chain)
        check_view(view, chain)
        assert w.stats.reorgs == 1 and w.stats.retracted_blocks == 3


async def test_restart_from_stored_cursor_retracts_what_left_the_chain_while_down() -> None:
    chain = FakeChain()
    chain.mine(20, logs=1)
    view = View()
    async with running(make(chain, confirmations=4), view) as run:
        await synced(run, chain)
    stored = view.cursor
    assert stored is not None and [n for n, _ in stored.recent] == [17, 18, 19, 20]
    # While the node is down: blocks 19 and 20 are replaced, and more blocks are mined (a gap of several ranges).
    chain.reorg(2, 2, logs=2, notify=False)
    chain.mine(15, logs=1, every=2, notify=False)
    w = make(chain, stored, confirmations=4, log_range_blocks=4)
    async with running(w, view) as run:
        await synced(run, chain)
        check_view(view, chain)
        assert w.stats.retracted_blocks == 2 and w.stats.reorgs == 1
        retracted = view.retracted[-2:]
        assert retracted == [stored.recent[3][1], stored.recent[2][1]]  # highest first
        assert len([r for r in chain.get_logs_ranges() if r[0] > 20]) >= 2


async def test_restart_without_reorg_finalizes_the_stored_window() -> None:
    chain = FakeChain()
    chain.mine(10, logs=1)
    view = View()
    async with running(make(chain, confirmations=3), view) as run:
        await synced(run, chain)
    stored = view.cursor
    assert stored is not None and len(stored.recent) == 3
    chain.mine(5, notify=False)
    w = make(chain, stored, confirmations=3)
    async with running(w, view) as run:
        await synced(run, chain)
        # 8..10 were non-final when stored: now finalized with their full headers (not just number and hash).
        finalized = {chain.blocks[n].hash for n in (8, 9, 10)}
        assert finalized <= view.final
        check_view(view, chain)
        assert w.stats.reorgs == 0 and w.stats.retracted_blocks == 0


async def test_reorg_during_backfill_is_read_again() -> None:
    chain = FakeChain()
    chain.mine(24, logs=1)
    calls = 0

    def reorg_once(method: str, params: list[Any]) -> None:
        nonlocal calls
        if method == "eth_getLogs":
            calls += 1
            if calls == 6:  # in the middle of the backfill, the top 4 blocks change
                chain.on_call = None
                chain.reorg(4, 5, logs=2, notify=False)

    chain.on_call = reorg_once
    view = View()
    w = make(chain, confirmations=6, log_range_blocks=3)
    async with running(w, view) as run:
        await run.wait_for(lambda: view.cursor is not None and view.cursor.number == chain.head.number)
        check_view(view, chain)
        assert w.stats.round_retries >= 1


async def test_deep_reorg_is_counted_and_the_watcher_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    chain = FakeChain()
    chain.mine(12, logs=1)
    view = View()
    w = make(chain, confirmations=2)
    async with running(w, view) as run:
        await synced(run, chain)
        chain.reorg(5, 6, logs=1)  # deeper than 2 confirmations
        await synced(run, chain)
        assert w.stats.deep_reorgs == 1
        assert "DEEPER THAN 2 CONFIRMATIONS" in caplog.text
        # What was in the window is retracted; the new chain is read on from the newest final block.
        assert w.stats.retracted_blocks == 2
        new = {chain.blocks[n].hash for n in range(11, 14)}
        assert new <= set(view.blocks)
        chain.mine(2, logs=1)
        await synced(run, chain)


async def test_undecodable_and_unknown_logs_are_counted_and_delivered_without_event() -> None:
    chain = FakeChain()
    chain.mine(2)
    view = View()
    w = make(chain, confirmations=1)
    async with running(w, view) as run:
        await synced(run, chain)
        chain.mine_with(chain.logs(1, "bad") + chain.logs(1, "unknown") + chain.logs(1))
        await synced(run, chain)
        events = list(view.logs().values())
        assert len(events) == 3 and events.count(None) == 2
        assert w.stats.undecodable_logs == 1 and w.stats.unknown_logs == 1
        check_view(view, chain)


async def test_refused_ranges_are_split() -> None:
    chain = FakeChain()
    chain.mine(40, logs=1, every=5)
    chain.refuse_range_over = 3
    view = View()
    w = make(chain, confirmations=2, log_range_blocks=10)
    async with running(w, view) as run:
        await synced(run, chain)
        check_view(view, chain)
        assert w.stats.split_ranges > 0


async def test_dead_endpoints_and_dropped_connections_reconnect_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chain = FakeChain()
    chain.mine(8, logs=1)
    view = View()
    w = make(chain, urls=["dead-1", "fake-b"], confirmations=2, backoff_max_s=4.0)
    async with running(w, view) as run:
        await synced(run, chain)
        assert chain.connects[:2] == ["dead-1", "fake-b"] and w.stats.reconnects == 1
        # The node goes away for a while, blocks (with a reorg) happen meanwhile, then it is back.
        chain.down = True
        chain.drop()
        start = trio.current_time()
        chain.reorg(1, 1, logs=1, notify=False)
        chain.mine(6, logs=1, notify=False)
        await trio.sleep(30)
        attempts = len(chain.connects)
        chain.down = False
        await synced(run, chain, 60)
        check_view(view, chain)
        assert w.stats.reconnects >= 5
        # Backoff: doubling, capped at 4 s: at most ~30/4 + log2(40) attempts in 30 s, not one per tick.
        assert attempts - 2 <= 14, attempts
        assert trio.current_time() - start < 40
        # Calls that fail mid-session end the session, never the watcher.
        chain.fail_calls = 3
        chain.mine(1, logs=1)
        await synced(run, chain, 60)
        check_view(view, chain)


async def test_subscription_logs_merge_with_getlogs_exactly_once() -> None:
    """A log that only the subscription delivered (a node whose eth_getLogs lags) is still reported, once."""
    chain = FakeChain()
    chain.mine(3)
    view = View()
    w = make(chain, confirmations=1)
    async with running(w, view) as run:
        await synced(run, chain)
        block = chain.mine_with(chain.logs(2), notify=False)
        raws = block.raw_logs()
        for sub in chain.subs:
            if sub.kind == "logs":
                sub.push(raws[0])
                sub.push(raws[0])  # a duplicate notification
        # eth_getLogs of the new block forgets the second log; the subscription had only the first: both arrive.
        real = chain.answer

        def lagging(method: str, params: list[Any]) -> Any:
            result = real(method, params)
            return result[1:] if method == "eth_getLogs" else result

        chain.answer = lagging  # type: ignore[method-assign]
        for sub in chain.subs:
            if sub.kind == "newHeads":
                sub.push(block.header())
        await synced(run, chain)
        inc = view.blocks[block.hash]
        assert len(inc.logs) == 2


def test_cursor_validation() -> None:
    chain = FakeChain()
    h = [Hash32(bytes([i]) * 32) for i in range(4)]
    with pytest.raises(ValueError, match="contiguous"):
        make(chain, ChainCursor(5, h[3], ((3, h[1]), (5, h[3]))))
    with pytest.raises(ValueError, match="contiguous"):
        make(chain, ChainCursor(5, h[3], ((4, h[1]), (5, h[2]))))
    with pytest.raises(ValueError, match="exchange"):
        Watcher(["ws://127.0.0.1:1"], "0x12", None, start_block=0, confirmations=1, log_range_blocks=1, backoff_max_s=1)
    with pytest.raises(ValueError, match="URL"):
        Watcher([], EXCHANGE, None, start_block=0, confirmations=1, log_range_blocks=1, backoff_max_s=1)


async def test_messages_carry_the_cursor_after_them() -> None:
    """Replaying the messages' cursors: each Included/Finalized/Retracted cursor is the watcher's state after it."""
    chain = FakeChain()
    chain.mine(6, logs=1)
    view = View()
    seen: list[Any] = []
    original = view.apply

    def spy(msg: Any) -> None:
        original(msg)
        if isinstance(msg, Included | Finalized | Retracted):
            seen.append(msg)

    view.apply = spy  # type: ignore[method-assign]
    w = make(chain, confirmations=2)
    async with running(w, view) as run:
        await synced(run, chain)
        chain.reorg(2, 2)
        await synced(run, chain)
        assert w.cursor == view.cursor
    for msg in seen:
        window = [n for n, _ in msg.cursor.recent]
        assert window == list(range(msg.cursor.number - len(window) + 1, msg.cursor.number + 1))
        if isinstance(msg, Finalized):
            assert msg.block.number not in window
        if isinstance(msg, Included):
            assert window[-1] == msg.block.number


async def _run_some(watcher: Watcher, view: View, limit: int) -> int:
    """Run ``watcher`` into ``view`` until ``limit`` messages were applied (then it is killed, like a node that
    crashes right after storing a message) or until it is idle. Returns how many messages were applied."""
    send, recv = trio.open_memory_channel[Any](0)
    applied = 0
    async with trio.open_nursery() as nursery:

        async def consume() -> None:
            nonlocal applied
            async for msg in recv:
                view.apply(msg)
                applied += 1
                if applied == limit:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watcher.run, send)
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return applied


@pytest.mark.parametrize("seed", range(4))
async def test_killed_after_any_message_restarts_without_loss_or_duplicate(seed: int) -> None:
    """The node dies after a random number of messages, the chain moves on (blocks, reorgs within the window) while
    it is down, and a new watcher starts from the cursor stored with the last applied message: the view's strict
    checks (nothing included twice, nothing retracted that is unknown or final) hold throughout, and at the end the
    view is the chain."""
    import random

    rng = random.Random(seed)
    chain = FakeChain()
    chain.mine(12, logs=1, every=2)
    view = View()
    total = 0
    top = chain.head.number  # the highest head so far: a reorg must not reach its final blocks (top - 3 and below)
    for _ in range(40):
        total += await _run_some(make(chain, view.cursor, confirmations=3), view, rng.randint(1, 6))
        action = rng.random()
        depth = min(rng.randint(1, 3), chain.head.number - top + 3)
        if action < 0.3 and depth >= 1:
            chain.reorg(depth, rng.randint(1, 4), logs=rng.randint(0, 2), notify=False)
        elif action < 0.8:
            chain.mine(rng.randint(1, 6), logs=rng.randint(0, 2), every=2, notify=False)
        top = max(top, chain.head.number)
    w = make(chain, view.cursor, confirmations=3)
    total += await _run_some(w, view, 10**9)
    check_view(view, chain)
    assert view.cursor is not None and view.cursor.number == chain.head.number
    assert view.retracted, "some restarts had to retract blocks"
    assert total > 100


@pytest.mark.parametrize("seed", range(3))
async def test_random_live_reorgs_drops_and_node_styles(seed: int) -> None:
    """One watcher, live: random blocks, reorgs (notified, with or without ``removed`` logs, sometimes to a shorter
    chain), dropped connections and failing calls; after each step the view is the chain."""
    import random

    rng = random.Random(1000 + seed)
    chain = FakeChain(removed_logs=seed % 2 == 1, orphans_by_hash=seed == 2)
    chain.mine(8, logs=1)
    view = View()
    w = make(chain, confirmations=3, log_range_blocks=3, backoff_min_s=0.001, backoff_max_s=0.002)
    top = chain.head.number
    async with running(w, view) as run:
        for _ in range(60):
            action = rng.random()
            depth = min(rng.randint(1, 3), chain.head.number - top + 3)
            if action < 0.3 and depth >= 1:
                chain.reorg(depth, rng.randint(1, 4), logs=rng.randint(0, 2))
            elif action < 0.4:
                chain.drop()
                chain.mine(rng.randint(0, 8), logs=1, notify=False)
            elif action < 0.45:
                chain.fail_calls = rng.randint(1, 3)
                chain.mine(1, logs=1)
            else:
                chain.mine(rng.randint(1, 3), logs=rng.randint(0, 2))
            top = max(top, chain.head.number)
            await synced(run, chain)
            check_view(view, chain)
    assert w.stats.reorgs > 0 and w.stats.deep_reorgs == 0


async def test_getlogs_past_a_head_that_went_back_starts_the_round_again() -> None:
    """The node's head drops below the range being read (eth_getLogs past the head is an error, as on anvil): the
    round starts again from the new head instead of splitting ranges or failing the session."""
    chain = FakeChain()
    chain.mine(20, logs=1)

    def shrink(method: str, params: list[Any]) -> None:
        if method == "eth_getLogs" and "toBlock" in params[0] and int(params[0]["toBlock"], 16) == 20:
            chain.on_call = None
            chain.revert_to(18)  # 19 and 20 (not reported yet) are gone: reading ..20 fails
            chain.mine(1, logs=2, notify=False)

    chain.on_call = shrink
    view = View()
    w = make(chain, confirmations=2, log_range_blocks=8)
    async with running(w, view) as run:
        await synced(run, chain)
        check_view(view, chain)
        assert w.stats.round_retries == 1 and w.stats.split_ranges == 0 and w.stats.reconnects == 0
