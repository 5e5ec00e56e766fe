"""Send signed transactions and make calls over any :class:`~relayer.chain.rpc.JsonRpc` client.

The small, synchronous-in-spirit path used by deployment, devnet and tests: sign locally with eth-account (never an
unlocked node account), send, and wait for the receipt. The contract worker (relayer/worker/) builds its own
persistent nonce and fee management on top of the same primitives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from eth_account import Account
from eth_utils.address import to_checksum_address

from relayer.chain.errors import ChainError, RpcResponseError
from relayer.chain.rpc import JsonRpc, from_quantity, to_quantity

log = logging.getLogger("relayer.chain.tx")

DEFAULT_GAS_MARGIN_BPS = 2_000  # +20% on eth_estimateGas
RECEIPT_POLL_S = 0.05


class TxRevertedError(ChainError):
    """A transaction was mined and reverted, or its gas estimate reverted before sending.

    ``data`` is the revert data when the node returned it (custom error selector + arguments), ``decoded`` what a
    decoder made of it (the caller passes one: the bindings' ``decode_revert``).
    """

    def __init__(self, what: str, data: bytes | None, decoded: BaseException | None, receipt: Any = None) -> None:
        self.data = data
        self.decoded = decoded
        self.receipt = receipt
        reason = repr(decoded) if decoded is not None else (("0x" + data.hex()) if data else "no revert data")
        super().__init__(f"{what} reverted: {reason}")


RevertDecoder = Callable[[bytes], BaseException | None]


def revert_data(exc: RpcResponseError) -> bytes | None:
    """The revert data a node put in a JSON-RPC error (``data`` as hex, or ``{"data": hex}``), or None."""
    data: Any = exc.data
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: str
    gas_used: int
    status: int
    contract_address: str | None
    logs: tuple[dict[str, Any], ...]

    @classmethod
    def from_rpc(cls, raw: dict[str, Any]) -> Receipt:
        addr = raw.get("contractAddress")
        return cls(
            tx_hash=raw["transactionHash"],
            block_number=from_quantity(raw["blockNumber"]),
            block_hash=raw["blockHash"],
            gas_used=from_quantity(raw["gasUsed"]),
            status=from_quantity(raw["status"]),
            contract_address=to_checksum_address(addr) if addr else None,
            logs=tuple(raw.get("logs") or ()),
        )


class Signer:
    """A local key that signs transactions for one chain. Its repr never shows the key."""

    def __init__(self, private_key: bytes, chain_id: int) -> None:
        self._key = private_key
        self.chain_id = chain_id
        self.address: str = Account.from_key(private_key).address

    def __repr__(self) -> str:
        return f"Signer({self.address}, chain_id={self.chain_id})"

    def sign(self, tx: dict[str, Any]) -> bytes:
        signed = Account.sign_transaction(tx, self._key)
        return bytes(signed.raw_transaction)


async def call(
    rpc: JsonRpc,
    to: str,
    data: bytes,
    *,
    sender: str | None = None,
    block: str = "latest",
    decode_revert: RevertDecoder | None = None,
) -> bytes:
    """``eth_call``; a revert raises :class:`TxRevertedError` with the decoded custom error when possible."""
    params: dict[str, Any] = {"to": to, "data": "0x" + data.hex()}
    if sender:
        params["from"] = sender
    try:
        result = await rpc.call("eth_call", [params, block])
    except RpcResponseError as exc:
        raw = revert_data(exc)
        if raw is None and "revert" not in str(exc).lower():
            raise
        raise TxRevertedError("eth_call", raw, decode_revert(raw) if (raw and decode_revert) else None) from exc
    return bytes.fromhex(str(result)[2:])


async def _fees(rpc: JsonRpc) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas): twice the latest base fee plus the node's suggested tip."""
    block = await rpc.call("eth_getBlockByNumber", ["latest", False])
    base = from_quantity(block.get("baseFeePerGas") or "0x0")
    try:
        tip = from_quantity(await rpc.call("eth_maxPriorityFeePerGas", []))
    except RpcResponseError:
        tip = 1_000_000_000
    return 2 * base + tip, tip


async def send(
    rpc: JsonRpc,
    signer: Signer,
    *,
    to: str | None,
    data: bytes = b"",
    value: int = 0,
    gas: int | None = None,
    decode_revert: RevertDecoder | None = None,
    what: str = "transaction",
    receipt_timeout_s: float = 60.0,
) -> Receipt:
    """Sign and send a type-2 transaction, wait for its receipt, and raise :class:`TxRevertedError` if it reverted.

    Without ``gas`` the gas is ``eth_estimateGas`` + 20%; a reverting estimate raises before anything is sent.
    """
    tx: dict[str, Any] = {"from": signer.address, "data": "0x" + data.hex(), "value": to_quantity(value)}
    if to is not None:
        tx["to"] = to
    if gas is None:
        try:
            estimate = from_quantity(await rpc.call("eth_estimateGas", [tx]))
        except RpcResponseError as exc:
            raw = revert_data(exc)
            decoded = decode_revert(raw) if (raw and decode_revert) else None
            raise TxRevertedError(f"{what} (gas estimate)", raw, decoded) from exc
        gas = estimate * (10_000 + DEFAULT_GAS_MARGIN_BPS) // 10_000
    nonce = from_quantity(await rpc.call("eth_getTransactionCount", [signer.address, "pending"]))
    max_fee, tip = await _fees(rpc)
    body: dict[str, Any] = {
        "type": 2,
        "chainId": signer.chain_id,
        "nonce": nonce,
        "gas": gas,
        "maxFeePerGas": max_fee,
        "maxPriorityFeePerGas": tip,
        "value": value,
        "data": data,
    }
    if to is not None:
        body["to"] = to_checksum_address(to)
    raw_tx = signer.sign(body)
    tx_hash = await rpc.call("eth_sendRawTransaction", ["0x" + raw_tx.hex()])
    log.debug("sent %s nonce=%d tx=%s", what, nonce, tx_hash)
    receipt = await wait_receipt(rpc, str(tx_hash), timeout_s=receipt_timeout_s)
    if receipt.status != 1:
        raw = await _replay_revert(rpc, tx, receipt.block_number)
        decoded = decode_revert(raw) if (raw and decode_revert) else None
        raise TxRevertedError(what, raw, decoded, receipt)
    return receipt


async def _replay_revert(rpc: JsonRpc, tx: dict[str, Any], block_number: int) -> bytes | None:
    """The revert data of a mined, reverted transaction: replay it as an eth_call on the state before its block."""
    try:
        await rpc.call("eth_call", [tx, to_quantity(max(block_number - 1, 0))])
    except RpcResponseError as exc:
        return revert_data(exc)
    return None


async def wait_receipt(rpc: JsonRpc, tx_hash: str, *, timeout_s: float = 60.0) -> Receipt:
    """Poll ``eth_getTransactionReceipt`` until the transaction is mined (bounded by ``timeout_s``)."""
    with trio.fail_after(timeout_s):
        while True:
            raw = await rpc.call("eth_getTransactionReceipt", [tx_hash])
            if raw:
                return Receipt.from_rpc(raw)
            await trio.sleep(RECEIPT_POLL_S)
