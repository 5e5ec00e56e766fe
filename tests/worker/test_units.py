"""The worker's pure parts: fee arithmetic, settings and job validation (no chain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bindings import exchange as ex
from relayer.config import parse_config
from relayer.worker import SettleJob, WorkerConfig, WorkerError
from relayer.worker.fees import DEFAULT_TIP_WEI, Fees, bump, fees_from_history, market_fees

EXCHANGE = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
GWEI = 10**9


def test_fees_from_history_use_next_base_fee_and_median_tip() -> None:
    history = {
        "baseFeePerGas": ["0x64", "0x6e", "0x78"],  # the last one is the next block's
        "reward": [["0x3"], ["0x1"], ["0x2"]],
    }
    assert fees_from_history(history) == (120, 2)
    assert fees_from_history({"baseFeePerGas": ["0x1"], "reward": []}) == (1, DEFAULT_TIP_WEI)
    with pytest.raises(ValueError, match="baseFeePerGas"):
        fees_from_history({"reward": []})


def test_market_fees_are_capped() -> None:
    assert market_fees(10 * GWEI, 1 * GWEI, max_fee_cap=100 * GWEI, tip_cap=2 * GWEI) == Fees(21 * GWEI, GWEI)
    assert market_fees(10 * GWEI, 5 * GWEI, max_fee_cap=100 * GWEI, tip_cap=2 * GWEI) == Fees(22 * GWEI, 2 * GWEI)
    assert market_fees(80 * GWEI, 1 * GWEI, max_fee_cap=50 * GWEI, tip_cap=2 * GWEI) == Fees(50 * GWEI, GWEI)
    assert market_fees(1, 10, max_fee_cap=3, tip_cap=10) == Fees(3, 3)


def test_bump_raises_both_fees_by_at_least_the_replacement_minimum() -> None:
    old = Fees(100 * GWEI, 2 * GWEI)
    market = Fees(50 * GWEI, GWEI)
    new = bump(old, market, bump_bps=1_000, max_fee_cap=10**15, tip_cap=10**15)
    assert new == Fees(110 * GWEI, 2_200_000_000)
    # rounding up: 10% of 7 wei is 0.7, so 8
    assert bump(Fees(7, 7), Fees(0, 0), bump_bps=1_000, max_fee_cap=100, tip_cap=100) == Fees(8, 8)
    # the market moved more than the bump: follow the market
    assert bump(old, Fees(300 * GWEI, 3 * GWEI), bump_bps=1_250, max_fee_cap=10**15, tip_cap=10**15) == Fees(
        300 * GWEI, 3 * GWEI
    )
    # the caps leave no room for a +10% replacement on either fee: no bump
    assert bump(old, market, bump_bps=1_000, max_fee_cap=105 * GWEI, tip_cap=10**15) is None
    assert bump(old, market, bump_bps=1_000, max_fee_cap=10**15, tip_cap=2 * GWEI) is None


def test_config_validation() -> None:
    cfg = WorkerConfig(chain_id=1, exchange=EXCHANGE.lower())
    assert cfg.exchange == EXCHANGE  # checksummed
    bad: list[dict[str, Any]] = [
        {"exchange": "0x1234"},
        {"fee_bump_bps": 999},
        {"max_priority_fee_per_gas_wei": 10, "max_fee_per_gas_wei": 5},
        {"max_in_flight": 0},
        {"confirmations": -1},
    ]
    for overrides in bad:
        with pytest.raises(WorkerError):
            WorkerConfig(**{"chain_id": 1, "exchange": EXCHANGE, **overrides})


def test_config_from_node_config(valid_raw: dict[str, Any]) -> None:
    valid_raw["worker"] = {"fee_bump_bps": 2_000, "max_fee_bumps": 3}
    valid_raw["chain"]["confirmations"] = 5
    cfg = WorkerConfig.from_config(parse_config(valid_raw, base_dir=Path.cwd(), env={}), poll_interval_ms=50)
    assert (cfg.chain_id, cfg.exchange, cfg.confirmations) == (31337, EXCHANGE, 5)
    assert (cfg.fee_bump_bps, cfg.max_fee_bumps, cfg.poll_interval_ms) == (2_000, 3, 50)
    valid_raw["chain"]["exchange"] = None
    with pytest.raises(WorkerError, match=r"chain\.exchange"):
        WorkerConfig.from_config(parse_config(valid_raw, base_dir=Path.cwd(), env={}))


def test_job_validation() -> None:
    b = ex.Batch(seq=7, round=0, prev_batch_hash=b"\0" * 32, set_version=1, deadline=1, orders=(), fills=())
    job = SettleJob.settle(b, [])
    assert job.seq == 7 and job.calldata[:4] == ex.SETTLE_BATCH_SELECTOR
    with pytest.raises(WorkerError, match="not a settleBatch"):
        SettleJob(7, ex.encode_last_seq())
    with pytest.raises(WorkerError, match="seq"):
        SettleJob(0, job.calldata)
