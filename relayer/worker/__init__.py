"""The contract worker: signs, sends and follows ``settleBatch`` transactions (see :mod:`relayer.worker.worker`)."""

from relayer.worker.fees import Fees
from relayer.worker.types import (
    ChainIdMismatchError,
    Outcome,
    SettleJob,
    WorkerConfig,
    WorkerError,
    WorkerResult,
    WorkerStats,
)
from relayer.worker.worker import Worker

__all__ = [
    "ChainIdMismatchError",
    "Fees",
    "Outcome",
    "SettleJob",
    "Worker",
    "WorkerConfig",
    "WorkerError",
    "WorkerResult",
    "WorkerStats",
]
