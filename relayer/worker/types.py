"""The contract worker's inputs, outputs, settings and errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from eth_utils.address import is_address, to_checksum_address

from bindings import exchange as ex
from relayer.errors import RelayerError

if TYPE_CHECKING:
    from relayer.config import Config

__all__ = [
    "ChainIdMismatchError",
    "Outcome",
    "SettleJob",
    "WorkerConfig",
    "WorkerError",
    "WorkerResult",
    "WorkerStats",
]

Outcome = Literal["included", "final", "reverted", "stale", "failed", "stuck"]
"""What happened to a job:

- ``included``: its transaction is in a block (``block_number``, ``gas_used``); reported again if a reorg moved it;
- ``final``: that block is ``confirmations`` deep and still canonical;
- ``reverted``: mined but reverted (``reason`` names the decoded custom error);
- ``stale``: its seq was already taken (included before it was sent, or by another relayer's transaction while
  it was in flight): quiet and counted, no gas spent when detected before sending;
- ``failed``: not sent, or rejected by the node (``reason``: a pre-flight revert decoded to a named error, a gas
  estimate above the cap, a node rejection);
- ``stuck``: informational, not final: the transaction got ``max_fee_bumps`` bumps (or reached the fee caps) and
  is still not included; the worker keeps re-broadcasting it and reports ``included`` if it lands.
"""


class WorkerError(RelayerError):
    """The worker cannot run as configured (wrong chain, no contract, bad job)."""


class ChainIdMismatchError(WorkerError):
    """The RPC endpoint (or the gas key's signer) is on another chain than the configured one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """The worker's settings: config ``chain.*`` and ``worker.*`` plus internal knobs. Fees in wei, times in ms."""

    chain_id: int
    exchange: str
    confirmations: int = 2
    max_fee_per_gas_wei: int = 500_000_000_000
    max_priority_fee_per_gas_wei: int = 2_000_000_000
    gas_margin_bps: int = 2_000
    gas_limit_cap: int = 15_000_000
    fee_bump_bps: int = 1_250
    resubmit_after_ms: int = 15_000
    max_fee_bumps: int = 8
    poll_interval_ms: int = 100
    """How often in-flight transactions are checked (nonce, receipts, confirmations)."""
    max_in_flight: int = 32
    """Most transactions pending at once (pipelined with consecutive nonces); further jobs wait their turn."""
    nonce_taken_after_ms: int = 3_000
    """How long the account's nonce may be past one of our transactions without a receipt for it before the nonce
    counts as taken by another sender (receipts can lag the nonce for a moment)."""
    rpc_retry_ms: int = 500
    """Pause before retrying a job whose RPC calls failed on every endpoint."""
    gas_estimator: Literal["access-list", "estimate"] = "access-list"
    """``access-list``: the gas used by one ``eth_createAccessList`` run (fast; falls back to the other when
    unsupported or after an out-of-gas); ``estimate``: ``eth_estimateGas`` (exact, a dozen runs or more)."""

    def __post_init__(self) -> None:
        if not is_address(self.exchange):
            raise WorkerError(f"worker: exchange address {self.exchange!r} is not an address")
        object.__setattr__(self, "exchange", to_checksum_address(self.exchange))
        if self.fee_bump_bps < 1_000:
            raise WorkerError("worker: fee_bump_bps must be at least 1000 (the nodes' 10% replacement minimum)")
        if self.max_priority_fee_per_gas_wei > self.max_fee_per_gas_wei:
            raise WorkerError("worker: max_priority_fee_per_gas_wei must be <= max_fee_per_gas_wei")
        if self.gas_estimator not in ("access-list", "estimate"):
            raise WorkerError(f"worker: gas_estimator must be 'access-list' or 'estimate', got {self.gas_estimator!r}")
        for name in ("chain_id", "resubmit_after_ms", "poll_interval_ms", "max_in_flight", "gas_limit_cap"):
            if getattr(self, name) < 1:
                raise WorkerError(f"worker: {name} must be positive")
        for name in (
            "confirmations",
            "gas_margin_bps",
            "max_fee_bumps",
            "rpc_retry_ms",
            "max_fee_per_gas_wei",
            "nonce_taken_after_ms",
        ):
            if getattr(self, name) < 0:
                raise WorkerError(f"worker: {name} must not be negative")

    @classmethod
    def from_config(cls, cfg: Config, **overrides: Any) -> WorkerConfig:
        """From the node's config (``chain.exchange`` must be set)."""
        if cfg.chain.exchange is None:
            raise WorkerError("chain.exchange is not set: the worker needs the exchange's address")
        w = cfg.worker
        values: dict[str, Any] = {
            "confirmations": cfg.chain.confirmations,
            "max_fee_per_gas_wei": w.max_fee_per_gas_wei,
            "max_priority_fee_per_gas_wei": w.max_priority_fee_per_gas_wei,
            "gas_margin_bps": w.gas_margin_bps,
            "gas_limit_cap": w.gas_limit_cap,
            "fee_bump_bps": w.fee_bump_bps,
            "resubmit_after_ms": w.resubmit_after_ms,
            "max_fee_bumps": w.max_fee_bumps,
        }
        values.update(overrides)
        return cls(chain_id=cfg.chain.chain_id, exchange=str(cfg.chain.exchange), **values)


@dataclass(frozen=True, slots=True)
class SettleJob:
    """A certified batch ready to submit: the ``settleBatch`` calldata and the seq it settles."""

    seq: int
    calldata: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not 0 < self.seq < 2**64:
            raise WorkerError(f"job seq must be in [1, 2**64), got {self.seq!r}")
        if self.calldata[:4] != ex.SETTLE_BATCH_SELECTOR:
            raise WorkerError(f"job for seq {self.seq} is not a settleBatch call")

    @classmethod
    def settle(cls, batch: ex.Batch, signatures: Sequence[ex.Signature]) -> SettleJob:
        """The job for a certificate: ``settleBatch(batch, signatures)``."""
        return cls(batch.seq, ex.encode_settle_batch(batch, signatures))


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """One report to the processor (see :data:`Outcome`). ``error`` is the decoded custom error when there is one."""

    seq: int
    outcome: Outcome
    tx_hash: str | None = None
    nonce: int | None = None
    block_number: int | None = None
    block_hash: str | None = None
    gas_used: int | None = None
    reason: str | None = None
    error: BaseException | None = field(default=None, compare=False)


@dataclass(slots=True)
class WorkerStats:
    """Counters (monotonic) and gauges of one worker."""

    submitted: int = 0
    """Jobs accepted by :meth:`Worker.submit`."""
    duplicates: int = 0
    """Jobs ignored because the same certificate was already queued or in flight."""
    superseded: int = 0
    """Jobs that replaced another certificate of the same seq (queued, or sent and not yet mined)."""
    sent: int = 0
    """Transactions first sent (one per nonce assigned)."""
    replaced: int = 0
    """Fee bumps (a replacement with the same nonce)."""
    resent: int = 0
    """The same signed transaction broadcast again (dropped, or after a failed send)."""
    included: int = 0
    final: int = 0
    reverted: int = 0
    stale: int = 0
    failed: int = 0
    preflight_failed: int = 0
    """Jobs refused before sending because the pre-flight eth_call reverted (part of ``failed``)."""
    stuck: int = 0
    nonce_conflicts: int = 0
    """Nonces that another transaction of the same key took; their jobs were sent again with a new nonce."""
    requeued: int = 0
    rpc_errors: int = 0
    """Job attempts or checks that failed on every RPC endpoint (retried)."""
    recovered: int = 0
    """In-flight transactions picked up from the store at start."""
    in_flight: int = 0
    max_in_flight: int = 0
    gas_used: int = 0
