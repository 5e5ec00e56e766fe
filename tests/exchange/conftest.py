"""The exchange deployed once per session on the session anvil; every test runs on a snapshot that is reverted after
it, and ends by checking the accounting identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from relayer.chain.anvil import AnvilControl, AnvilProcess, start_anvil_sync
from relayer.chain.rpc import HttpRpc

from .world import World


@pytest.fixture(scope="session")
def exchange_anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilProcess]:
    with start_anvil_sync(log_path=tmp_path_factory.mktemp("exchange-anvil") / "anvil.log") as node:
        yield node


@pytest.fixture(scope="session")
def deployed_snapshot(exchange_anvil: AnvilProcess) -> dict[str, object]:
    """Deploys the exchange once, snapshots the chain; tests revert to it (returns the world's constructor args)."""

    async def deploy() -> dict[str, object]:
        async with HttpRpc(exchange_anvil.http_url, timeout=30) as rpc:
            control = AnvilControl(rpc)
            world = await World.create(rpc, control, exchange_anvil.chain_id)
            return {"deployment": world.deployment, "snapshot": await control.snapshot()}

    return trio.run(deploy)


@pytest.fixture
async def world(exchange_anvil: AnvilProcess, deployed_snapshot: dict[str, object]) -> AsyncIterator[World]:
    async with HttpRpc(exchange_anvil.http_url, timeout=30) as rpc:
        control = AnvilControl(rpc)
        with trio.fail_after(30):
            w = await World.create_from(rpc, control, exchange_anvil.chain_id, deployed_snapshot["deployment"])
        try:
            yield w
            with trio.fail_after(30):
                held, accounted = await w.accounting_identity()
            assert held == accounted, f"accounting identity broken: token balance {held} != {accounted}"
        finally:
            # Always back to the deployed state, even when the test or the identity failed (no state leaks into
            # the next test). evm_revert consumes the snapshot: take a fresh one at the same state.
            with trio.fail_after(30):
                await control.revert(str(deployed_snapshot["snapshot"]))
                deployed_snapshot["snapshot"] = await control.snapshot()
