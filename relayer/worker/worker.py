"""The contract worker: turns certified batches into signed ``settleBatch`` transactions and sees them through.

It executes what it is handed; the quorum decides what to submit and when (backup submission included). For each
job, in seq order:

1. the contract's ``lastSeq`` (latest block): a seq already included is reported ``stale``, nothing is sent;
2. a pre-flight ``eth_call`` on the pending state (so a job pipelined behind our own pending transaction sees it):
   a revert is decoded to the exchange's named custom error and reported ``failed`` before any gas is spent
   (``BadSeq`` of a seq already taken is ``stale``);
3. ``eth_estimateGas`` plus ``gas_margin_bps``, refused above ``min(gas_limit_cap, block gas limit)``;
4. EIP-1559 fees from ``eth_feeHistory`` (next base fee, median tip), capped by config;
5. the next nonce; the signed transaction is written to the store (synced) BEFORE it is broadcast.

Several transactions are in flight at once with consecutive nonces (a job does not wait for the previous receipt),
so seq order is nonce order. A monitor task polls the account's nonce and receipts: included transactions are
tracked to ``confirmations`` blocks and reported ``included`` then ``final``; a transaction without a receipt after
``resubmit_after_ms`` is re-broadcast if the node dropped it, else replaced with fees bumped by ``fee_bump_bps`` (at
most ``max_fee_bumps`` times, within the caps); a nonce taken by another transaction of the same key is detected (the
nonce moved on without a receipt for any of our versions) and its job is sent again with a new nonce.

Nothing here relies on unlocked node accounts: every transaction is signed locally by the gas key's
:class:`~relayer.chain.tx.Signer`, which may differ from the relayer's voting key.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from eth_account import Account
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes

from bindings import exchange as ex
from relayer.chain.errors import QuantityError, RpcResponseError, RpcTransportError
from relayer.chain.rpc import JsonRpc, from_quantity, to_quantity
from relayer.chain.tx import Receipt, Signer, TxRevertedError, call, revert_data
from relayer.codegen import ContractError
from relayer.store.db import Store, WorkerWriter
from relayer.store.records import TxRecord
from relayer.types import Hash32
from relayer.worker.fees import Fees, bump, fees_from_history, market_fees
from relayer.worker.types import (
    ChainIdMismatchError,
    SettleJob,
    WorkerConfig,
    WorkerError,
    WorkerResult,
    WorkerStats,
)

__all__ = ["Worker"]

log = logging.getLogger("relayer.worker")

FEE_HISTORY_BLOCKS = 5

_KNOWN = ("already known", "known transaction", "already imported", "alreadyknown")
_NONCE_LOW = ("nonce too low", "nonce is too low", "oldnonce", "invalid nonce")
_UNDERPRICED = ("underpriced", "replacement fee too low")

# Errors of one RPC round that leave the job or the check to be retried (the node gave no usable answer).
_RETRYABLE = (RpcTransportError, QuantityError)


@dataclass(eq=False)
class _Slot:
    """One nonce of ours in flight: its job and every version (hash, raw) sent for it, newest last."""

    nonce: int
    job: SettleJob
    gas: int
    fees: Fees
    versions: list[tuple[str, bytes]]
    sent_at: float
    bumps: int = 0
    resend: bool = False
    stuck: bool = False
    missing_since: float | None = None
    receipt: Receipt | None = None
    recovered: bool = False
    successor: SettleJob | None = None
    """Another certificate for the same seq, to replace this transaction at the same nonce."""

    @property
    def tx_hash(self) -> str:
        return self.versions[-1][0]

    @property
    def raw(self) -> bytes:
        return self.versions[-1][1]


def _matches(message: str, needles: tuple[str, ...]) -> bool:
    low = message.lower()
    return any(n in low for n in needles)


def _describe(error: BaseException) -> str:
    """``Name(field=value, ...)`` with bytes as 0x-hex (the bindings' str shows Python bytes literals)."""
    if isinstance(error, ContractError) and error.FIELDS:
        values = [getattr(error, f) for f in error.FIELDS]
        shown = ", ".join(
            f"{f}={'0x' + v.hex() if isinstance(v, bytes) else repr(v)}"
            for f, v in zip(error.FIELDS, values, strict=True)
        )
        return f"{error.SIGNATURE.partition('(')[0]}({shown})"
    return str(error)


def _reason(decoded: BaseException | None, data: bytes | None) -> str:
    if decoded is not None:
        return _describe(decoded)
    return f"revert data 0x{data.hex()}" if data else "reverted without data"


async def _gather(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run ``calls`` concurrently; each one's result, or the exception it raised, in order. The caller handles or
    re-raises every exception, so nothing is swallowed (trio's exception groups would mix them otherwise)."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, which handles or re-raises it
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(len(calls)):
            nursery.start_soon(one, i)
    return results


async def _no_preflight() -> bytes:
    return b""


class Worker:
    """Submits ``settleBatch`` jobs for one gas key (see the module docstring).

    ``writer`` is the store's :class:`WorkerWriter` (``store.worker()``) and ``store`` the store it belongs to (read at
    start to recover transactions in flight). Without a writer the worker keeps its records IN MEMORY ONLY (tests and
    tools; a restart then loses them).

    Use: ``await worker.start()`` (optional: ``run`` starts it), then ``nursery.start_soon(worker.run, send_channel)``
    and ``await worker.submit(job)`` per certificate.
    """

    def __init__(
        self,
        rpc: JsonRpc,
        signer: Signer,
        writer: WorkerWriter | None,
        store: Store | None,
        config: WorkerConfig,
    ) -> None:
        self.rpc = rpc
        self.signer = signer
        self.config = config
        self.stats = WorkerStats()
        self._writer = writer
        self._store = store if store is not None else (writer.store if writer is not None else None)
        # IN-MEMORY FALLBACK (no writer): records live only as long as this object.
        self._memory: dict[int, TxRecord] | None = {} if writer is None else None
        self._queue: list[tuple[int, int, SettleJob]] = []
        self._order = itertools.count()
        self._active: set[int] = set()
        self._parked: list[SettleJob] = []
        self._slots: dict[int, _Slot] = {}
        self._next_nonce = 0
        self._block_gas_limit = config.gas_limit_cap
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._results: trio.MemorySendChannel[WorkerResult] | None = None
        self._early: list[WorkerResult] = []
        self._started = False
        self._last_refusal = ""
        self._exact_gas = config.gas_estimator == "estimate"
        self._simulate = True  # eth_simulateV1 for gas, until the node shows it lacks it

    # ------------------------------------------------------------------------------------------------ public

    @property
    def address(self) -> str:
        """The gas-paying account."""
        return self.signer.address

    @property
    def next_nonce(self) -> int:
        """The nonce the next new transaction gets."""
        return self._next_nonce

    def in_flight(self) -> dict[int, str]:
        """Nonce -> newest transaction hash of every transaction not yet final."""
        return {n: s.tx_hash for n, s in sorted(self._slots.items())}

    async def start(self) -> None:
        """Check the chain and recover from the store; raises :class:`ChainIdMismatchError` on the wrong chain."""
        cfg = self.config
        if self.signer.chain_id != cfg.chain_id:
            raise ChainIdMismatchError(
                f"the gas key signs for chain {self.signer.chain_id}, but chain.chain_id is {cfg.chain_id}"
            )
        chain_id = from_quantity(await self.rpc.call("eth_chainId"))
        if chain_id != cfg.chain_id:
            raise ChainIdMismatchError(
                f"the RPC endpoint serves chain id {chain_id}, but chain.chain_id is {cfg.chain_id}; "
                "refusing to sign or send anything"
            )
        code = await self.rpc.call("eth_getCode", [cfg.exchange, "latest"])
        if not isinstance(code, str) or code in ("0x", "0x0", ""):
            raise WorkerError(f"no contract at the exchange address {cfg.exchange} on chain {chain_id}")
        block = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        self._block_gas_limit = from_quantity(block["gasLimit"])
        latest = await self._account_nonce("latest")
        pending = await self._account_nonce("pending")
        records = await trio.to_thread.run_sync(self._load_records)
        await self._recover(records, latest, pending)
        now = trio.current_time()
        for nonce in sorted(self._slots):
            if self._slots[nonce].resend:
                await self._resend(self._slots[nonce], now)
        self._started = True
        log.info(
            "worker for %s on chain %d started: exchange %s, next nonce %d, %d transaction(s) recovered",
            self.address,
            chain_id,
            cfg.exchange,
            self._next_nonce,
            self.stats.recovered,
        )

    async def submit(self, job: SettleJob) -> None:
        """Queue a job; it is sent in seq order after the jobs before it. A seq already queued or in flight is
        ignored (counted in ``duplicates``)."""
        if job.seq in self._active:
            await self._supersede(job)
            return
        self._active.add(job.seq)
        self.stats.submitted += 1
        self._push(job)

    async def _supersede(self, job: SettleJob) -> None:
        """A job for a seq we already hold. The same certificate again is a duplicate; a different one (a later
        round) takes the place of the old one: in the queue, or at the nonce of our pending transaction (sent as a
        replacement, with bumped fees, once every lower nonce is mined); a seq of ours already included makes it
        stale."""

        def swap(entries: list[SettleJob]) -> bool:
            for i, old in enumerate(entries):
                if old.seq == job.seq:
                    if old.calldata == job.calldata:
                        return False
                    entries[i] = job
                    return True
            return False

        queued = [entry[2] for entry in self._queue]
        holders = [s for s in self._slots.values() if s.job.seq == job.seq]
        if any(j.seq == job.seq for j in queued):
            if swap(queued):
                self._queue = [(j.seq, next(self._order), j) for j in queued]
                heapq.heapify(self._queue)
                log.info("seq %d: a new certificate replaces the queued one", job.seq)
                self.stats.superseded += 1
                self._notify()
                return
        elif any(j.seq == job.seq for j in self._parked):
            if swap(self._parked):
                log.info("seq %d: a new certificate replaces the parked one", job.seq)
                self.stats.superseded += 1
                return
        elif holders and holders[-1].receipt is None:
            slot = holders[-1]
            if job.calldata not in (slot.job.calldata, slot.successor.calldata if slot.successor else b""):
                log.info("seq %d: a new certificate will replace tx %s at nonce %d", job.seq, slot.tx_hash, slot.nonce)
                slot.successor = job
                self.stats.superseded += 1
                self._notify()
                return
        elif (
            holders
            and (receipt := holders[-1].receipt) is not None
            and receipt.status == 1
            and job.calldata != holders[-1].job.calldata
        ):
            await self._stale(job, f"seq {job.seq} is already included by our tx {receipt.tx_hash}")
            return
        self.stats.duplicates += 1
        log.info("seq %d is already queued or in flight; ignoring the duplicate job", job.seq)

    async def run(self, results: trio.MemorySendChannel[WorkerResult]) -> None:
        """Send queued jobs and track them until final; every outcome goes to ``results``. Runs until cancelled."""
        if not self._started:
            await self.start()
        self._results = results
        early, self._early = self._early, []
        for result in early:
            await results.send(result)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._submit_loop)
            nursery.start_soon(self._monitor_loop)

    async def wait_until(self, predicate: Callable[[WorkerStats], bool]) -> None:
        """Return once ``predicate(stats)`` holds (re-checked whenever the worker's state changes)."""
        while not predicate(self.stats):
            await self._wait_change()

    # ------------------------------------------------------------------------------------------------ plumbing

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _push(self, job: SettleJob) -> None:
        heapq.heappush(self._queue, (job.seq, next(self._order), job))
        self._notify()

    def _gauge(self) -> None:
        n = len(self._slots)
        self.stats.in_flight = n
        self.stats.max_in_flight = max(self.stats.max_in_flight, n)

    def _unpark(self) -> None:
        parked, self._parked = self._parked, []
        for job in parked:
            self._push(job)

    def _lower_pending(self, seq: int) -> bool:
        """Is a job of ours with a lower seq still waiting to be sent or mined?"""
        return any(s.job.seq < seq and s.receipt is None for s in self._slots.values()) or any(
            q < seq for q, _, _ in self._queue
        )

    async def _report(self, result: WorkerResult) -> None:
        if self._results is None:
            self._early.append(result)
        else:
            await self._results.send(result)

    def _load_records(self) -> list[TxRecord]:
        if self._memory is not None:
            return list(self._memory.values())
        assert self._store is not None
        return list(self._store.iter_txs())

    async def _record(self, slot: _Slot, status: str, version: tuple[str, bytes] | None = None) -> None:
        """Write the slot's transaction (synced): the promise is kept before the raw transaction leaves."""
        tx_hash, raw = version or slot.versions[-1]
        rec = TxRecord(slot.nonce, Hash32(bytes.fromhex(tx_hash[2:])), raw, slot.job.seq, status)
        if self._memory is not None:
            self._memory[slot.nonce] = rec
            return
        assert self._writer is not None
        await trio.to_thread.run_sync(self._writer.record_tx, rec)

    async def _account_nonce(self, tag: str) -> int:
        return from_quantity(await self.rpc.call("eth_getTransactionCount", [self.address, tag]))

    async def _last_seq(self) -> int:
        data = await call(self.rpc, self.config.exchange, ex.encode_last_seq(), block="latest")
        return ex.decode_last_seq_result(data)

    def _sign(self, job: SettleJob, nonce: int, gas: int, fees: Fees) -> tuple[str, bytes]:
        body: dict[str, Any] = {
            "type": 2,
            "chainId": self.config.chain_id,
            "nonce": nonce,
            "to": self.config.exchange,
            "value": 0,
            "data": job.calldata,
            "gas": gas,
            "maxFeePerGas": fees.max_fee,
            "maxPriorityFeePerGas": fees.tip,
        }
        raw = self.signer.sign(body)
        return "0x" + keccak(raw).hex(), raw

    def _call_params(self, job: SettleJob) -> dict[str, str]:
        return {"from": self.address, "to": self.config.exchange, "data": "0x" + job.calldata.hex()}

    # ------------------------------------------------------------------------------------------------ recovery

    def _decode_record(self, rec: TxRecord) -> tuple[SettleJob, int, Fees] | None:
        try:
            tx = TypedTransaction.from_bytes(HexBytes(rec.raw)).as_dict()
            job = SettleJob(rec.seq, bytes(tx["data"]))
            to = to_checksum_address(bytes(tx["to"]))
            fees = Fees(int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"]))
            sender = Account.recover_transaction(rec.raw)
        except (ValueError, TypeError, KeyError, WorkerError) as exc:
            log.warning(
                "stored transaction of nonce %d (seq %d) does not decode (%s); ignoring it", rec.nonce, rec.seq, exc
            )
            return None
        if (
            sender != self.address
            or to != self.config.exchange
            or int(tx["nonce"]) != rec.nonce
            or int(tx["chainId"]) != self.config.chain_id
        ):
            log.warning(
                "stored transaction of nonce %d (seq %d) is from %s to %s on chain %s, not from %s to %s on chain %d "
                "(another gas key, exchange or chain); ignoring it",
                rec.nonce,
                rec.seq,
                sender,
                to,
                tx.get("chainId"),
                self.address,
                self.config.exchange,
                self.config.chain_id,
            )
            return None
        return job, int(tx["gas"]), fees

    async def _recover(self, records: list[TxRecord], latest: int, pending: int) -> None:
        """Pick up what the store holds in flight.

        - ``sent``/``included`` below the chain's nonce: tracked (receipt, confirmations); a nonce used without a
          receipt for our transaction was taken by another sender and its job is sent again;
        - ``sent`` at or above it: re-broadcast, as long as every lower nonce is ours or pending in the node;
          after a gap (a nonce nobody will fill) the jobs are queued again and the nonces reused.
        """
        now = trio.current_time()
        kept: set[int] = set()
        gap = False
        for rec in sorted(records, key=lambda r: r.nonce):
            if rec.status not in ("sent", "included"):
                continue
            decoded = self._decode_record(rec)
            if decoded is None:
                continue
            job, gas, fees = decoded
            tx_hash = "0x" + bytes(rec.tx_hash).hex()
            slot = _Slot(rec.nonce, job, gas, fees, [(tx_hash, rec.raw)], now, recovered=True)
            if rec.nonce >= latest:
                gap = gap or any(n >= pending and n not in kept for n in range(latest, rec.nonce))
                if gap:
                    log.warning(
                        "nonce %d (seq %d) from the store sits after a nonce gap (chain nonce %d); "
                        "queueing seq %d again",
                        rec.nonce,
                        rec.seq,
                        latest,
                        rec.seq,
                    )
                    await self._record(slot, "abandoned")
                    self._requeue(job)
                    continue
                kept.add(rec.nonce)
                slot.resend = True
            self._slots[rec.nonce] = slot
            self._active.add(job.seq)
            self.stats.recovered += 1
        self._next_nonce = max([pending, *(n + 1 for n in kept)])
        self._gauge()

    def _requeue(self, job: SettleJob) -> None:
        self.stats.requeued += 1
        self._active.add(job.seq)
        self._push(job)

    # ------------------------------------------------------------------------------------------------ submission

    async def _submit_loop(self) -> None:
        retry = self.config.rpc_retry_ms / 1000
        while True:
            job = await self._take_job()
            try:
                await self._process(job)
            except _RETRYABLE as exc:
                self.stats.rpc_errors += 1
                log.warning("seq %d: RPC failed before sending (%s); retrying in %.1f s", job.seq, exc, retry)
                self._push(job)
                await trio.sleep(retry)
            except RpcResponseError as exc:
                await self._fail(job, f"node refused a call: {exc}")
            self._notify()

    async def _take_job(self) -> SettleJob:
        while True:
            unmined = sum(1 for s in self._slots.values() if s.receipt is None)
            if self._queue and unmined < self.config.max_in_flight:
                return heapq.heappop(self._queue)[2]
            await self._wait_change()

    async def _prepare(
        self, job: SettleJob, block: str = "pending", *, replacing: bool = False
    ) -> tuple[int, Fees] | None:
        """Checks before spending gas: the seq is not included yet, the pre-flight call passes, the gas estimate is
        under the cap. Returns the gas limit and the market's fees, or None once the job has been reported (stale or
        failed) or parked.

        ``block`` is the state to run on: ``pending`` for a new job (it sees our own lower seqs in flight),
        ``latest`` for a certificate that replaces our pending transaction of the same seq.
        """
        # The reads are independent: run them at once (latency of the slowest), decide in this order. With the
        # access-list estimator the estimate IS the pre-flight (one run of the call that reverts with the same data
        # as eth_call), so the call is not run twice: a 100-fill batch costs the node ~16 ms per extra run.
        if self.config.gas_estimator == "access-list" and not self._exact_gas:
            preflight_call = _no_preflight
        else:
            preflight_call = partial(
                call,
                self.rpc,
                self.config.exchange,
                job.calldata,
                sender=self.address,
                block=block,
                decode_revert=ex.decode_revert,
            )
        last, preflight, estimate, fees = await _gather(
            self._last_seq,
            preflight_call,
            partial(self._estimate, job, block),
            self._market_fees,
        )
        if isinstance(last, BaseException):
            raise last
        if job.seq <= last:
            await self._stale(job, f"seq {job.seq} is already included (the contract's last seq is {last})")
            return None
        if isinstance(preflight, TxRevertedError):
            await self._refused(job, preflight.decoded, preflight.data, may_park=not replacing)
            return None
        if isinstance(preflight, BaseException):
            raise preflight
        gas = await self._gas(job, estimate, may_park=not replacing)
        if gas is None:
            return None
        if isinstance(fees, BaseException):
            raise fees
        return gas, fees

    async def _process(self, job: SettleJob) -> None:
        prepared = await self._prepare(job)
        if prepared is None:
            return
        gas, fees = prepared
        async with self._lock:
            nonce = self._next_nonce
            tx_hash, raw = self._sign(job, nonce, gas, fees)
            slot = _Slot(nonce, job, gas, fees, [(tx_hash, raw)], trio.current_time())
            await self._record(slot, "sent")
            self._next_nonce = nonce + 1
            self._slots[nonce] = slot
            self.stats.sent += 1
            self._gauge()
            self._unpark()  # a job parked behind this seq may pass its pre-flight now
            log.info(
                "seq %d: sending tx %s nonce %d gas %d max fee %d tip %d",
                job.seq,
                tx_hash,
                nonce,
                gas,
                fees.max_fee,
                fees.tip,
            )
            status = await self._broadcast(slot)
            if status == "rejected" and self._slots.get(nonce) is slot and self._next_nonce == nonce + 1:
                # Refused outright (funds, fee cap...): nothing holds the nonce, so the next job reuses it.
                del self._slots[nonce]
                self._next_nonce = nonce
                self._gauge()
                await self._record(slot, "rejected")
                await self._fail(job, f"node refused the transaction: {self._last_refusal}")

    async def _refused(
        self, job: SettleJob, decoded: BaseException | None, data: bytes | None, *, may_park: bool = True
    ) -> None:
        """A pre-flight revert: stale when the seq is taken, parked behind our own lower seq, else failed."""
        if isinstance(decoded, ex.BadSeqError) and decoded.expected > decoded.got:
            await self._stale(job, f"seq {job.seq} is already taken on the pending state ({_describe(decoded)})")
            return
        if may_park and isinstance(decoded, ex.BadSeqError) and self._lower_pending(job.seq):
            log.info("seq %d waits for a lower seq of ours to be sent or mined (%s)", job.seq, _describe(decoded))
            self._parked.append(job)
            return
        self.stats.preflight_failed += 1
        await self._fail(job, f"pre-flight revert: {_reason(decoded, data)}", decoded)

    async def _gas(self, job: SettleJob, estimate: int | BaseException, *, may_park: bool) -> int | None:
        """The gas limit from an estimate (or the error the estimate raised): estimate plus margin, under the cap."""
        if isinstance(estimate, RpcResponseError):
            exc = estimate
            data = revert_data(exc)
            if data is None and "revert" not in exc.message.lower():
                await self._fail(job, f"gas estimate failed: {exc.message}")
                return None
            await self._refused(job, ex.decode_revert(data) if data else None, data, may_park=may_park)
            return None
        if isinstance(estimate, BaseException):
            raise estimate
        cap = min(self.config.gas_limit_cap, self._block_gas_limit)
        if estimate > cap:
            await self._fail(job, f"gas estimate {estimate} is above the cap {cap}")
            return None
        return min(estimate * (10_000 + self.config.gas_margin_bps) // 10_000, cap)

    async def _estimate(self, job: SettleJob, block: str) -> int:
        """The gas ``job`` needs on the pending state.

        ``eth_createAccessList`` runs the call once and reports its gas (a 100-fill batch: ~20 ms on anvil);
        ``eth_estimateGas`` searches for the exact limit by running it a dozen times or more (~200 ms), so it is the
        fallback: when the node lacks the former, when the former reports an error (the estimate then yields the
        revert data), with ``gas_estimator="estimate"``, and for good once a transaction ran out of gas.
        """
        call_params = self._call_params(job)
        params = [call_params, block]
        if self.config.gas_estimator == "access-list" and not self._exact_gas and self._simulate:
            gas = await self._simulate_gas(call_params, block)
            if gas is not None:
                return gas
        if self.config.gas_estimator == "access-list" and not self._exact_gas:
            try:
                result = await self.rpc.call("eth_createAccessList", params)
            except RpcResponseError as exc:
                if revert_data(exc) is not None or "revert" in exc.message.lower():
                    raise
                log.info("eth_createAccessList is not usable (%s); estimating gas with eth_estimateGas", exc.message)
                self._exact_gas = True
            else:
                if isinstance(result, dict) and not result.get("error") and "gasUsed" in result:
                    return from_quantity(result["gasUsed"])
        return from_quantity(await self.rpc.call("eth_estimateGas", params))

    async def _simulate_gas(self, call_params: dict[str, str], block: str) -> int | None:
        """The gas of one ``eth_simulateV1`` run of the call (the cheapest single execution that reports gas: ~23 ms
        for a 100-fill batch on anvil against ~32 ms for ``eth_createAccessList``), raising the revert as
        ``eth_call`` would; None when the node does not offer it (then never asked again)."""
        try:
            result = await self.rpc.call("eth_simulateV1", [{"blockStateCalls": [{"calls": [call_params]}]}, block])
            outcome = result[0]["calls"][0]
            status, gas_used = outcome["status"], from_quantity(outcome["gasUsed"])
        except RpcResponseError as exc:
            log.info("eth_simulateV1 is not usable (%s); estimating gas with eth_createAccessList", exc.message)
            self._simulate = False
            return None
        except (LookupError, TypeError, ValueError) as exc:
            log.info("eth_simulateV1 answered in an unexpected shape (%s); not using it", exc)
            self._simulate = False
            return None
        if status != "0x1":
            message = str((outcome.get("error") or {}).get("message", "execution reverted"))
            raise RpcResponseError(
                3, f"execution reverted: {message}", outcome.get("returnData"), method="eth_simulateV1"
            )
        return gas_used

    async def _market_fees(self) -> Fees:
        cfg = self.config
        try:
            history = await self.rpc.call("eth_feeHistory", [to_quantity(FEE_HISTORY_BLOCKS), "latest", [50]])
            base, tip = fees_from_history(history)
        except (RpcResponseError, ValueError, TypeError, AttributeError) as exc:
            log.debug("eth_feeHistory unusable (%s); using the latest block's base fee", exc)
            block = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
            base = from_quantity(block.get("baseFeePerGas") or "0x0")
            try:
                tip = from_quantity(await self.rpc.call("eth_maxPriorityFeePerGas", []))
            except RpcResponseError:
                tip = 1_000_000_000
        fees = market_fees(base, tip, max_fee_cap=cfg.max_fee_per_gas_wei, tip_cap=cfg.max_priority_fee_per_gas_wei)
        if fees.max_fee < base:
            log.warning(
                "the max fee cap %d is below the next block's base fee %d: transactions wait until it drops",
                fees.max_fee,
                base,
            )
        return fees

    async def _broadcast(self, slot: _Slot) -> str:
        """Send the slot's newest version. Returns ``ok``, ``known``, ``nonce-low``, ``underpriced``, ``transport``
        or ``rejected`` (the node refused it for another reason, kept in ``_last_refusal``). Called under the lock."""
        tx_hash = slot.tx_hash
        try:
            got = await self.rpc.call("eth_sendRawTransaction", ["0x" + slot.raw.hex()])
        except _RETRYABLE as exc:
            self.stats.rpc_errors += 1
            slot.resend = True
            log.warning(
                "nonce %d seq %d: sending tx %s failed (%s); will send it again", slot.nonce, slot.job.seq, tx_hash, exc
            )
            return "transport"
        except RpcResponseError as exc:
            if _matches(exc.message, _KNOWN):
                return "known"
            if _matches(exc.message, _NONCE_LOW):
                log.warning(
                    "nonce %d seq %d: node says nonce too low for tx %s (mined already, or used by another sender)",
                    slot.nonce,
                    slot.job.seq,
                    tx_hash,
                )
                with contextlib.suppress(*_RETRYABLE):  # if this fails too, the monitor sorts it out
                    self._next_nonce = max(self._next_nonce, await self._account_nonce("pending"))
                return "nonce-low"
            if _matches(exc.message, _UNDERPRICED):
                log.warning(
                    "nonce %d seq %d: another transaction holds the nonce at a higher fee (%s); bumping",
                    slot.nonce,
                    slot.job.seq,
                    exc.message,
                )
                slot.sent_at = -math.inf
                return "underpriced"
            self._last_refusal = exc.message
            log.warning("nonce %d seq %d: node refused tx %s: %s", slot.nonce, slot.job.seq, tx_hash, exc.message)
            return "rejected"
        if isinstance(got, str) and got.lower() != tx_hash:
            log.warning("nonce %d: node answered hash %s for tx %s", slot.nonce, got, tx_hash)
        return "ok"

    def _release(self, seq: int) -> None:
        """The seq is no longer ours to submit, unless a transaction of ours still carries it."""
        if not any(s.job.seq == seq for s in self._slots.values()):
            self._active.discard(seq)

    async def _stale(self, job: SettleJob, why: str, **extra: Any) -> None:
        self.stats.stale += 1
        self._release(job.seq)
        self._unpark()
        log.info("seq %d is stale: %s", job.seq, why)
        await self._report(WorkerResult(job.seq, "stale", reason=why, **extra))

    async def _fail(self, job: SettleJob, why: str, error: BaseException | None = None) -> None:
        self.stats.failed += 1
        self._release(job.seq)
        self._unpark()
        log.warning("seq %d failed: %s", job.seq, why)
        await self._report(WorkerResult(job.seq, "failed", reason=why, error=error))

    # ------------------------------------------------------------------------------------------------ monitor

    async def _monitor_loop(self) -> None:
        interval = self.config.poll_interval_ms / 1000
        while True:
            if not self._slots:
                await self._wait_change()
                continue
            try:
                await self._check()
            except _RETRYABLE as exc:
                self.stats.rpc_errors += 1
                log.warning("checking transactions in flight failed (%s); retrying", exc)
            except RpcResponseError as exc:
                self.stats.rpc_errors += 1
                log.warning("the node refused a read while checking transactions in flight: %s", exc)
            if self._parked:
                self._unpark()  # their pre-flight may pass now (a node's pending state can lag a moment)
            self._notify()
            await trio.sleep(interval)

    async def _check(self) -> None:
        latest = await self._account_nonce("latest")
        head: int | None = None
        now = trio.current_time()
        for nonce in sorted(self._slots):
            slot = self._slots.get(nonce)
            if slot is None:
                continue
            if slot.receipt is not None:
                if head is None:
                    head = from_quantity(await self.rpc.call("eth_blockNumber"))
                await self._check_final(slot, head)
            elif nonce < latest:
                if not await self._check_mined(slot, now):
                    break  # the receipt may lag the nonce: report inclusions in nonce (= seq) order
            else:
                await self._check_pending(slot, now, lowest=nonce == latest)

    async def _check_mined(self, slot: _Slot, now: float) -> bool:
        """The account's nonce moved past the slot's: find which of our versions was mined. Returns False while
        none has a receipt yet (nodes may serve the new nonce before the receipts); after ``nonce_taken_after_ms``
        of that, another transaction took the nonce."""
        for tx_hash, _ in reversed(slot.versions):
            raw = await self.rpc.call("eth_getTransactionReceipt", [tx_hash])
            if raw:
                await self._on_receipt(slot, Receipt.from_rpc(raw))
                return True
        if slot.missing_since is None:
            slot.missing_since = now
        if now - slot.missing_since < self.config.nonce_taken_after_ms / 1000:
            return False
        await self._nonce_taken(slot)
        return True

    async def _on_receipt(self, slot: _Slot, receipt: Receipt) -> None:
        slot.receipt = receipt
        slot.missing_since = None
        version = next(v for v in slot.versions if v[0] == receipt.tx_hash.lower())
        job = slot.job
        if receipt.status == 1:
            self.stats.included += 1
            self.stats.gas_used += receipt.gas_used
            await self._record(slot, "included", version)
            log.info(
                "seq %d included in block %d: tx %s nonce %d gas %d",
                job.seq,
                receipt.block_number,
                receipt.tx_hash,
                slot.nonce,
                receipt.gas_used,
            )
            await self._report(self._result(slot, "included"))
            self._unpark()
            return
        del self._slots[slot.nonce]
        self._gauge()
        self._unpark()
        last = await self._last_seq()
        if last >= job.seq:
            await self._record(slot, "stale", version)
            await self._stale(
                job,
                f"seq {job.seq} was taken by another transaction first; tx {receipt.tx_hash} reverted",
                tx_hash=receipt.tx_hash,
                nonce=slot.nonce,
                block_number=receipt.block_number,
                block_hash=receipt.block_hash,
                gas_used=receipt.gas_used,
            )
            return
        decoded, data = await self._replay(slot, receipt)
        await self._record(slot, "reverted", version)
        if isinstance(decoded, ex.BadSeqError) and decoded.expected < decoded.got and self._lower_pending(job.seq):
            log.warning(
                "seq %d: tx %s reverted ahead of a lower seq (%s); sending it again",
                job.seq,
                receipt.tx_hash,
                _describe(decoded),
            )
            self._requeue(job)
            return
        out_of_gas = decoded is None and receipt.gas_used >= slot.gas - slot.gas // 64
        if out_of_gas and not self._exact_gas:
            log.warning(
                "seq %d: tx %s ran out of gas (%d); estimating with eth_estimateGas from now on and sending it again",
                job.seq,
                receipt.tx_hash,
                slot.gas,
            )
            self._exact_gas = True
            self._requeue(job)
            return
        self.stats.reverted += 1
        self._active.discard(job.seq)
        reason = f"out of gas ({receipt.gas_used} of {slot.gas})" if out_of_gas else _reason(decoded, data)
        log.warning("seq %d: tx %s reverted in block %d: %s", job.seq, receipt.tx_hash, receipt.block_number, reason)
        await self._report(self._result(slot, "reverted", reason=reason, error=decoded))

    async def _replay(self, slot: _Slot, receipt: Receipt) -> tuple[BaseException | None, bytes | None]:
        """The revert of a mined transaction, replayed as an eth_call in its block (that block's time and state; the
        reverted transaction changed nothing, though transactions after it in the block are included)."""
        try:
            await call(
                self.rpc,
                self.config.exchange,
                slot.job.calldata,
                sender=self.address,
                block=to_quantity(receipt.block_number),
                decode_revert=ex.decode_revert,
            )
        except TxRevertedError as exc:
            return exc.decoded, exc.data
        return None, None

    def _result(self, slot: _Slot, outcome: Any, **extra: Any) -> WorkerResult:
        r = slot.receipt
        assert r is not None
        return WorkerResult(
            slot.job.seq,
            outcome,
            tx_hash=r.tx_hash,
            nonce=slot.nonce,
            block_number=r.block_number,
            block_hash=r.block_hash,
            gas_used=r.gas_used,
            **extra,
        )

    async def _check_final(self, slot: _Slot, head: int) -> None:
        receipt = slot.receipt
        assert receipt is not None
        if head < receipt.block_number + self.config.confirmations:
            return
        raw = await self.rpc.call("eth_getTransactionReceipt", [receipt.tx_hash])
        if not raw or Receipt.from_rpc(raw).block_hash != receipt.block_hash:
            log.warning(
                "seq %d: tx %s left block %d (reorg); tracking it again",
                slot.job.seq,
                receipt.tx_hash,
                receipt.block_number,
            )
            slot.receipt = None
            slot.resend = not raw
            if raw:
                await self._on_receipt(slot, Receipt.from_rpc(raw))
            return
        del self._slots[slot.nonce]
        self._gauge()
        self._active.discard(slot.job.seq)
        self.stats.final += 1
        version = next(v for v in slot.versions if v[0] == receipt.tx_hash.lower())
        await self._record(slot, "final", version)
        log.info("seq %d final: tx %s in block %d", slot.job.seq, receipt.tx_hash, receipt.block_number)
        await self._report(self._result(slot, "final"))

    async def _check_pending(self, slot: _Slot, now: float, *, lowest: bool) -> None:
        cfg = self.config
        if slot.resend:
            await self._resend(slot, now)
            return
        if slot.successor is not None and lowest:
            await self._bump(slot, now)
            return
        if now - slot.sent_at < cfg.resubmit_after_ms / 1000:
            return
        if await self.rpc.call("eth_getTransactionByHash", [slot.tx_hash]) is None:
            log.warning(
                "nonce %d seq %d: the node no longer knows tx %s (dropped); sending it again",
                slot.nonce,
                slot.job.seq,
                slot.tx_hash,
            )
            await self._resend(slot, now)
            return
        await self._bump(slot, now)

    async def _resend(self, slot: _Slot, now: float) -> None:
        """Broadcast the slot's newest version again (dropped by the node, an earlier send failed, or recovered)."""
        slot.resend = False
        slot.sent_at = now
        self.stats.resent += 1
        async with self._lock:
            await self._broadcast(slot)
        self._unpark()  # a job parked behind this seq may pass its pre-flight now

    async def _bump(self, slot: _Slot, now: float) -> None:
        """Replace the slot's transaction with higher fees (and the successor's certificate, if there is one)."""
        cfg = self.config
        slot.sent_at = now
        job, gas = slot.job, slot.gas
        if slot.successor is not None:
            job, slot.successor = slot.successor, None
            # Every lower nonce is mined (see _check_pending), so the latest state is the one it will run on.
            prepared = await self._prepare(job, "latest", replacing=True)
            self._active.add(slot.job.seq)
            if prepared is None:
                return  # reported; the old transaction keeps the nonce
            gas = prepared[0]
        elif slot.bumps >= cfg.max_fee_bumps:
            await self._stuck(slot, f"still pending after {slot.bumps} fee bumps")
            return
        market = await self._market_fees()
        new = bump(
            slot.fees,
            market,
            bump_bps=cfg.fee_bump_bps,
            max_fee_cap=cfg.max_fee_per_gas_wei,
            tip_cap=cfg.max_priority_fee_per_gas_wei,
        )
        successor = job is not slot.job
        if new is None:
            if successor:
                await self._fail(job, f"cannot replace tx {slot.tx_hash}: the fee caps allow no bump")
            else:
                await self._stuck(slot, f"the fee caps allow no further bump (max fee {slot.fees.max_fee})")
            return
        async with self._lock:
            mined = self._slots.get(slot.nonce) is not slot or slot.receipt is not None
            status = "mined"
            if not mined:
                old_hash, old_fees, old_job, old_gas = slot.tx_hash, slot.fees, slot.job, slot.gas
                slot.versions.append(self._sign(job, slot.nonce, gas, new))
                slot.fees, slot.job, slot.gas = new, job, gas
                await self._record(slot, "sent")
                status = await self._broadcast(slot)
                if status == "rejected":
                    slot.versions.pop()
                    slot.fees, slot.job, slot.gas = old_fees, old_job, old_gas
                    await self._record(slot, "sent")
                else:
                    slot.bumps += 1
                    self.stats.replaced += 1
        if status in ("mined", "rejected"):
            if successor and status == "mined":
                await self._stale(job, f"the transaction of the earlier certificate for seq {job.seq} was mined first")
            elif successor:
                await self._fail(job, f"node refused the replacement: {self._last_refusal}")
            return
        log.info(
            "nonce %d seq %d: replaced tx %s by %s%s (bump %d of %d, max fee %d -> %d, tip %d -> %d)",
            slot.nonce,
            slot.job.seq,
            old_hash,
            slot.tx_hash,
            " carrying the new certificate" if successor else "",
            slot.bumps,
            cfg.max_fee_bumps,
            old_fees.max_fee,
            new.max_fee,
            old_fees.tip,
            new.tip,
        )

    async def _stuck(self, slot: _Slot, why: str) -> None:
        if slot.stuck:
            return
        slot.stuck = True
        self.stats.stuck += 1
        log.warning("nonce %d seq %d: tx %s is stuck: %s", slot.nonce, slot.job.seq, slot.tx_hash, why)
        await self._report(WorkerResult(slot.job.seq, "stuck", tx_hash=slot.tx_hash, nonce=slot.nonce, reason=why))

    async def _nonce_taken(self, slot: _Slot) -> None:
        """Our nonce was used by a transaction that is none of ours: send the job again with a new nonce."""
        del self._slots[slot.nonce]
        self._gauge()
        self.stats.nonce_conflicts += 1
        log.warning(
            "nonce %d (seq %d) was used by another transaction of %s (is the gas key used elsewhere?); "
            "sending seq %d again with a new nonce",
            slot.nonce,
            slot.job.seq,
            self.address,
            slot.job.seq,
        )
        await self._record(slot, "lost")
        pending = await self._account_nonce("pending")
        async with self._lock:
            self._next_nonce = max(self._next_nonce, pending)
        self._requeue(slot.job)
