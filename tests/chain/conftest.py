"""Fixtures for the chain layer: one real anvil per session with per-test snapshot isolation, fresh anvils on demand,
fake servers for error mapping, and small transaction helpers (signed offline with eth_account)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from trio_websocket import WebSocketConnection, WebSocketRequest, serve_websocket

from relayer.chain.anvil import AnvilControl, AnvilNode, AnvilProcess, start_anvil, start_anvil_sync
from relayer.chain.rpc import HttpRpc, JsonRpc, from_quantity

# --------------------------------------------------------------------------------------------------------------------
# Hand-assembled contracts

PING_TOPIC = keccak(text="Ping(bytes)")
# Runtime: copy the calldata to memory and emit it as the data of LOG1(PING_TOPIC), then stop.
#   CALLDATASIZE PUSH1 0 PUSH1 0 CALLDATACOPY PUSH32 topic CALLDATASIZE PUSH1 0 LOG1 STOP
EMITTER_RUNTIME = bytes.fromhex("3660006000377f") + PING_TOPIC + bytes.fromhex("366000a100")
# Init code: CODECOPY the runtime (which follows these 11 bytes) to memory 0 and RETURN it.
EMITTER_INIT = (
    bytes([0x60, len(EMITTER_RUNTIME), 0x80, 0x60, 0x0B, 0x60, 0x00, 0x39, 0x60, 0x00, 0xF3]) + EMITTER_RUNTIME
)
# Init code that reverts with the 4 bytes 0xdeadbeef (like a custom error's selector), for eth_call:
#   PUSH4 deadbeef PUSH1 0 MSTORE PUSH1 4 PUSH1 28 REVERT
REVERTER_INIT = bytes.fromhex("63deadbeef600052" + "6004601cfd")


async def send_tx(
    rpc: JsonRpc,
    key: str,
    *,
    chain_id: int,
    to: str | None = None,
    value: int = 0,
    data: bytes = b"",
    gas: int = 100_000,
) -> dict[str, Any]:
    """Sign an EIP-1559 transaction offline and send it raw; return its receipt.

    Uses ``eth_sendRawTransactionSync`` (EIP-7966, which the pinned anvil serves): it answers once the transaction
    is mined, whereas after a plain ``eth_sendRawTransaction`` anvil's automine may not have produced the receipt
    yet (see test_rpc.py for that path, waiting on newHeads).
    """
    sender = Account.from_key(key).address
    nonce = from_quantity(await rpc.call("eth_getTransactionCount", [sender, "pending"]))
    block = await rpc.call("eth_getBlockByNumber", ["latest", False])
    base_fee = from_quantity(block["baseFeePerGas"])
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "value": value,
        "data": data,
        "gas": gas,
        "maxPriorityFeePerGas": 10**9,
        "maxFeePerGas": 2 * base_fee + 10**9,
    }
    if to is not None:
        tx["to"] = to_checksum_address(to)
    signed = Account.sign_transaction(tx, key)
    receipt = await rpc.call("eth_sendRawTransactionSync", [signed.raw_transaction.to_0x_hex()])
    assert receipt["transactionHash"] == signed.hash.to_0x_hex()
    return dict(receipt)


def sign_transfer(key: str, *, chain_id: int, nonce: int, to: str, value: int, base_fee: int) -> Any:
    """An offline-signed EIP-1559 value transfer (eth_account's SignedTransaction)."""
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": to,
        "value": value,
        "gas": 21_000,
        "maxPriorityFeePerGas": 10**9,
        "maxFeePerGas": 2 * base_fee + 10**9,
    }
    return Account.sign_transaction(tx, key)


async def deploy(rpc: JsonRpc, key: str, init_code: bytes, *, chain_id: int) -> str:
    receipt = await send_tx(rpc, key, chain_id=chain_id, data=init_code, gas=200_000)
    assert receipt["status"] == "0x1"
    address = receipt["contractAddress"]
    assert isinstance(address, str)
    return address


# --------------------------------------------------------------------------------------------------------------------
# anvil


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilProcess]:
    """One anvil for the whole session (sync helper); use the ``chain`` fixture for per-test isolation."""
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    with start_anvil_sync(log_path=log) as node:
        yield node


@dataclass(frozen=True)
class Chain:
    node: AnvilProcess
    rpc: HttpRpc
    control: AnvilControl


@pytest.fixture
async def chain(anvil: AnvilProcess) -> AsyncIterator[Chain]:
    """The session anvil, snapshotted before the test and reverted after it (state, blocks and time)."""
    async with HttpRpc(anvil.http_url, timeout=10) as rpc:
        control = AnvilControl(rpc)
        with trio.fail_after(10):
            snapshot = await control.snapshot()
        yield Chain(anvil, rpc, control)
        with trio.fail_after(10):
            await control.revert(snapshot)


FreshAnvil = Callable[..., AbstractAsyncContextManager[AnvilNode]]


@pytest.fixture
def fresh_anvil(tmp_path: Path) -> FreshAnvil:
    """``async with fresh_anvil(**start_anvil_options) as node``: a node of the test's own, logging to tmp_path."""
    counter = itertools.count()

    def factory(**options: Any) -> AbstractAsyncContextManager[AnvilNode]:
        options.setdefault("log_path", tmp_path / f"anvil-{next(counter)}.log")
        return start_anvil(**options)

    return factory


# --------------------------------------------------------------------------------------------------------------------
# Fake servers

StreamHandler = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
def tcp_server(nursery: trio.Nursery) -> Callable[[StreamHandler], Awaitable[str]]:
    """``url = await tcp_server(handler)``: a TCP server on 127.0.0.1 running ``handler`` per connection."""

    async def start(handler: StreamHandler) -> str:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    return start


WsHandler = Callable[[WebSocketConnection], Awaitable[None]]


@pytest.fixture
def ws_server(nursery: trio.Nursery) -> Callable[[WsHandler], Awaitable[str]]:
    """``url = await ws_server(handler)``: a WebSocket server on 127.0.0.1 running ``handler`` per connection."""

    async def start(handler: WsHandler) -> str:
        async def accept(request: WebSocketRequest) -> None:
            await handler(await request.accept())

        server = await nursery.start(partial(serve_websocket, accept, "127.0.0.1", 0, ssl_context=None))
        return f"ws://127.0.0.1:{server.port}"

    return start


async def read_request(stream: trio.abc.Stream, http: h11.Connection) -> Any:
    """Read one HTTP request and return its JSON body, or None when the client closed the connection."""
    body = b""
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return json.loads(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None


def http_response(http: h11.Connection, payload: bytes, *, status: int = 200) -> bytes:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    data = http.send(h11.Response(status_code=status, headers=headers)) or b""
    data += http.send(h11.Data(data=payload)) or b""
    data += http.send(h11.EndOfMessage()) or b""
    return data


def answer(request: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode()
