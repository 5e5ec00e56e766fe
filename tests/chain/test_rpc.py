"""JSON-RPC clients: against the real anvil (calls, raw transactions, errors, failover, subscriptions) and against fake
servers that stall, close or answer garbage (error mapping)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import pytest
import trio
import trio.testing
from eth_account import Account
from trio_websocket import ConnectionClosed, WebSocketConnection

from relayer.chain.errors import (
    ChainError,
    QuantityError,
    RpcConnectionError,
    RpcProtocolError,
    RpcResponseError,
    RpcTimeout,
    RpcTransportError,
    RpcUnavailableError,
    RpcUrlError,
    SubscriptionOverflowError,
)
from relayer.chain.rpc import FailoverRpc, HttpRpc, WsRpc, endpoint_label, from_quantity, to_quantity
from relayer.errors import RelayerError

from .conftest import (
    EMITTER_INIT,
    PING_TOPIC,
    REVERTER_INIT,
    Chain,
    StreamHandler,
    WsHandler,
    answer,
    deploy,
    http_response,
    read_request,
    send_tx,
    sign_transfer,
)

TcpServer = Callable[[StreamHandler], Awaitable[str]]
WsServer = Callable[[WsHandler], Awaitable[str]]


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------------------------------------
# Quantities and URLs (pure)


@pytest.mark.parametrize("value", [0, 1, 255, 10**18, 2**256 - 1])
def test_quantity_round_trip(value: int) -> None:
    encoded = to_quantity(value)
    assert encoded == hex(value)
    assert from_quantity(encoded) == value


@pytest.mark.parametrize("value", [-1, 2**256, True, 1.0, "0x1", None])
def test_to_quantity_rejects(value: Any) -> None:
    with pytest.raises(QuantityError):
        to_quantity(value)


@pytest.mark.parametrize("value", ["0x", "12", "0xg", "0X1", "-0x1", " 0x1", "0x" + "1" * 65, 1, None, b"0x1"])
def test_from_quantity_rejects(value: Any) -> None:
    with pytest.raises(QuantityError):
        from_quantity(value)


def test_from_quantity_accepts_leading_zeros() -> None:
    assert from_quantity("0x00ff") == 255


def test_errors_are_relayer_errors_and_quantity_errors_are_value_errors() -> None:
    assert issubclass(RpcTransportError, ChainError)
    assert issubclass(RpcResponseError, ChainError)
    assert issubclass(ChainError, RelayerError)
    assert issubclass(QuantityError, ValueError)
    assert not issubclass(RpcResponseError, RpcTransportError)


@pytest.mark.parametrize("url", ["ftp://host", "http://", "http://user:pw@host:1", "host:8545", "http://h:99999"])
def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(RpcUrlError):
        HttpRpc(url)


def test_endpoint_label_hides_the_path() -> None:
    assert endpoint_label("https://mainnet.example/v3/SECRETKEY") == "https://mainnet.example:443"
    assert HttpRpc("http://[::1]:8545/key").endpoint == "http://[::1]:8545"


# --------------------------------------------------------------------------------------------------------------------
# HTTP against the real anvil


@pytest.mark.anvil
async def test_chain_id_and_block_number(chain: Chain) -> None:
    with trio.fail_after(10):
        assert from_quantity(await chain.rpc.call("eth_chainId")) == chain.node.chain_id
        before = from_quantity(await chain.rpc.call("eth_blockNumber"))
        await chain.control.mine(2)
        assert from_quantity(await chain.rpc.call("eth_blockNumber")) == before + 2


@pytest.mark.anvil
async def test_keep_alive_reuses_one_connection(chain: Chain) -> None:
    with trio.fail_after(10):
        async with HttpRpc(chain.node.http_url) as rpc:
            for _ in range(5):
                await rpc.call("eth_blockNumber")
            assert rpc.connections_opened == 1


@pytest.mark.anvil
async def test_batch_returns_results_and_errors_in_order(chain: Chain) -> None:
    with trio.fail_after(10):
        results = await chain.rpc.batch([("eth_chainId", []), ("no_such_method", []), ("eth_blockNumber", [])])
    assert from_quantity(results[0]) == chain.node.chain_id
    assert isinstance(results[1], RpcResponseError)
    assert results[1].code == -32601
    from_quantity(results[2])


@pytest.mark.anvil
async def test_signed_raw_transaction_and_receipt(chain: Chain) -> None:
    node, rpc = chain.node, chain.rpc
    sender = Account.from_key(node.private_keys[1])
    assert sender.address == node.accounts[1]
    recipient = Account.create().address
    with trio.fail_after(20):
        nonce = from_quantity(await rpc.call("eth_getTransactionCount", [sender.address, "pending"]))
        head = await rpc.call("eth_getBlockByNumber", ["latest", False])
        signed = sign_transfer(
            node.private_keys[1],
            chain_id=node.chain_id,
            nonce=nonce,
            to=recipient,
            value=12345,
            base_fee=from_quantity(head["baseFeePerGas"]),
        )
        async with WsRpc(node.ws_url) as ws, await ws.subscribe("newHeads") as heads:
            tx_hash = await rpc.call("eth_sendRawTransaction", [signed.raw_transaction.to_0x_hex()])
            assert tx_hash == signed.hash.to_0x_hex()
            # anvil automines, but the block may land just after the send returns: wait on heads, not on a timer.
            while (receipt := await rpc.call("eth_getTransactionReceipt", [tx_hash])) is None:
                await heads.receive()
        assert receipt["status"] == "0x1"
        assert receipt["from"].lower() == sender.address.lower()
        assert from_quantity(await rpc.call("eth_getBalance", [recipient, "latest"])) == 12345


@pytest.mark.anvil
async def test_json_rpc_error_maps_to_response_error_with_code(chain: Chain) -> None:
    with trio.fail_after(10), pytest.raises(RpcResponseError) as caught:
        await chain.rpc.call("no_such_method", [])
    assert caught.value.code == -32601
    assert caught.value.method == "no_such_method"


@pytest.mark.anvil
async def test_revert_keeps_the_revert_data(chain: Chain) -> None:
    # eth_call of init code that reverts with 0xdeadbeef: what a custom error's selector looks like on the wire.
    with trio.fail_after(10), pytest.raises(RpcResponseError) as caught:
        await chain.rpc.call("eth_call", [{"data": "0x" + REVERTER_INIT.hex()}, "latest"])
    assert caught.value.code == 3
    assert caught.value.data == "0xdeadbeef"


@pytest.mark.anvil
async def test_failover_skips_a_dead_url_and_uses_anvil(chain: Chain) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with trio.fail_after(10):
        async with FailoverRpc([dead, chain.node.http_url], timeout=5) as rpc:
            assert from_quantity(await rpc.call("eth_chainId")) == chain.node.chain_id
            dead_state, live_state = rpc.endpoints
            assert dead_state.failures == 1
            assert "cannot connect" in dead_state.last_error
            assert live_state.failures == 0


# --------------------------------------------------------------------------------------------------------------------
# HTTP against fake servers


async def test_connection_refused_maps_to_connection_error() -> None:
    with trio.fail_after(10), pytest.raises(RpcConnectionError, match="cannot connect"):
        await HttpRpc(f"http://127.0.0.1:{_free_port()}").call("eth_chainId")


async def test_stalling_server_maps_to_timeout(tcp_server: TcpServer) -> None:
    async def stall(stream: trio.SocketStream) -> None:
        await read_request(stream, h11.Connection(h11.SERVER))
        await trio.sleep_forever()

    url = await tcp_server(stall)
    start = time.perf_counter()
    with trio.fail_after(10), pytest.raises(RpcTimeout, match=r"no answer within 0\.2 s"):
        await HttpRpc(url, timeout=0.2).call("eth_chainId")
    assert time.perf_counter() - start < 5


async def test_server_closing_without_answer_maps_to_connection_error(tcp_server: TcpServer) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await read_request(stream, h11.Connection(h11.SERVER))
        await stream.aclose()

    url = await tcp_server(hang_up)
    with trio.fail_after(10), pytest.raises(RpcConnectionError, match="closed before a complete answer"):
        await HttpRpc(url).call("eth_chainId")


async def test_server_closing_mid_answer_maps_to_connection_error(tcp_server: TcpServer) -> None:
    async def half(stream: trio.SocketStream) -> None:
        await read_request(stream, h11.Connection(h11.SERVER))
        await stream.send_all(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"jsonrpc"')
        await stream.aclose()

    url = await tcp_server(half)
    with trio.fail_after(10), pytest.raises(RpcConnectionError):
        await HttpRpc(url).call("eth_chainId")


def _raw(payload: bytes) -> StreamHandler:
    async def handler(stream: trio.SocketStream) -> None:
        await read_request(stream, h11.Connection(h11.SERVER))
        await stream.send_all(payload)
        await stream.aclose()

    return handler


def _json(make: Callable[[Any], Any], status: int = 200) -> StreamHandler:
    async def handler(stream: trio.SocketStream) -> None:
        http = h11.Connection(h11.SERVER)
        while (request := await read_request(stream, http)) is not None:
            body = make(request)
            await stream.send_all(
                http_response(http, body if isinstance(body, bytes) else json.dumps(body).encode(), status=status)
            )
            http.start_next_cycle()

    return handler


GARBAGE = {
    "not http": _raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    "not json": _json(lambda r: b"<html>hello</html>"),
    "wrong id": _json(lambda r: {"jsonrpc": "2.0", "id": r["id"] + 1, "result": "0x1"}),
    "no result": _json(lambda r: {"jsonrpc": "2.0", "id": r["id"]}),
    "not an object": _json(lambda r: [1, 2, 3]),
    "bad error object": _json(lambda r: {"jsonrpc": "2.0", "id": r["id"], "error": "boom"}),
    "http 502": _json(lambda r: b"Bad Gateway", status=502),
}


@pytest.mark.parametrize("kind", GARBAGE)
async def test_garbage_maps_to_protocol_error(tcp_server: TcpServer, kind: str) -> None:
    url = await tcp_server(GARBAGE[kind])
    with trio.fail_after(10), pytest.raises(RpcProtocolError):
        await HttpRpc(url).call("eth_chainId")


async def test_json_rpc_error_with_http_error_status_is_still_an_answer(tcp_server: TcpServer) -> None:
    error = {"code": -32005, "message": "rate limited", "data": {"retry": 1}}
    url = await tcp_server(_json(lambda r: {"jsonrpc": "2.0", "id": r["id"], "error": error}, status=429))
    with trio.fail_after(10), pytest.raises(RpcResponseError) as caught:
        await HttpRpc(url).call("eth_chainId")
    assert (caught.value.code, caught.value.message, caught.value.data) == (-32005, "rate limited", {"retry": 1})


async def test_idle_connection_closed_by_server_is_retried_once(tcp_server: TcpServer) -> None:
    """The keep-alive race: the server drops an idle connection; the next call resends on a new one."""
    served = 0

    async def one_answer_then_close(stream: trio.SocketStream) -> None:
        nonlocal served
        http = h11.Connection(h11.SERVER)
        request = await read_request(stream, http)
        served += 1
        await stream.send_all(http_response(http, answer(request, hex(served))))
        await stream.aclose()  # no "Connection: close": the client thinks it may reuse the connection

    url = await tcp_server(one_answer_then_close)
    with trio.fail_after(10):
        async with HttpRpc(url) as rpc:
            assert await rpc.call("eth_blockNumber") == "0x1"
            await trio.testing.wait_all_tasks_blocked()  # the server's close has reached the client's socket
            assert await rpc.call("eth_blockNumber") == "0x2"
            assert rpc.connections_opened == 2


async def test_cancelled_call_discards_its_connection(tcp_server: TcpServer) -> None:
    """A call cancelled mid-exchange must not leave a half-read answer on a pooled connection."""
    release = trio.Event()

    async def slow_first(stream: trio.SocketStream) -> None:
        http = h11.Connection(h11.SERVER)
        while (request := await read_request(stream, http)) is not None:
            if request["method"] == "slow":
                await release.wait()
            await stream.send_all(http_response(http, answer(request, request["method"])))
            http.start_next_cycle()

    url = await tcp_server(slow_first)
    with trio.fail_after(10):
        async with HttpRpc(url) as rpc:
            with trio.move_on_after(0.2) as scope:
                await rpc.call("slow")
            assert scope.cancelled_caught
            release.set()  # the stale answer to "slow" would now arrive on the old connection
            assert await rpc.call("fast") == "fast"
            assert rpc.connections_opened == 2


async def test_failover_does_not_fail_over_on_a_json_rpc_error(tcp_server: TcpServer) -> None:
    second_calls = 0

    def count(request: Any) -> Any:
        nonlocal second_calls
        second_calls += 1
        return {"jsonrpc": "2.0", "id": request["id"], "result": "0x1"}

    reverting = await tcp_server(
        _json(lambda r: {"jsonrpc": "2.0", "id": r["id"], "error": {"code": 3, "message": "reverted", "data": "0x12"}})
    )
    second = await tcp_server(_json(count))
    with trio.fail_after(10):
        async with FailoverRpc([reverting, second]) as rpc:
            with pytest.raises(RpcResponseError) as caught:
                await rpc.call("eth_call", [{}])
            assert caught.value.data == "0x12"
            assert second_calls == 0
            assert rpc.endpoints[0].failures == 0


async def test_failover_backs_off_exponentially_up_to_the_cap(tcp_server: TcpServer) -> None:
    connections = 0

    async def hang_up(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()

    now = 1000.0
    flaky = await tcp_server(hang_up)
    good = await tcp_server(_json(lambda r: {"jsonrpc": "2.0", "id": r["id"], "result": "0x7"}))
    with trio.fail_after(10):
        async with FailoverRpc([flaky, good], backoff_base=1.0, backoff_cap=4.0, clock=lambda: now) as rpc:
            delays = []
            for _ in range(5):
                assert await rpc.call("eth_blockNumber") == "0x7"
                state = rpc.endpoints[0]
                delays.append(state.retry_at - now)
                assert await rpc.call("eth_blockNumber") == "0x7"  # within the backoff: not even tried
                now = state.retry_at
            assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
            assert connections == 5


async def test_failover_reports_every_endpoint_when_all_fail() -> None:
    urls = [f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"]
    with trio.fail_after(10):
        async with FailoverRpc(urls) as rpc:
            with pytest.raises(RpcUnavailableError) as caught:
                await rpc.call("eth_chainId")
            assert len(caught.value.errors) == 2
            # Both are now backing off: the next call still tries the one whose backoff ends first.
            with pytest.raises(RpcUnavailableError) as again:
                await rpc.call("eth_chainId")
            assert len(again.value.errors) == 1


# --------------------------------------------------------------------------------------------------------------------
# WebSocket against the real anvil


@pytest.mark.anvil
async def test_ws_calls_and_new_heads(chain: Chain) -> None:
    with trio.fail_after(20):
        async with WsRpc(chain.node.ws_url) as ws:
            assert from_quantity(await ws.call("eth_chainId")) == chain.node.chain_id
            start = from_quantity(await ws.call("eth_blockNumber"))
            async with await ws.subscribe("newHeads") as heads:
                assert heads.id is not None
                for _ in range(3):
                    await chain.rpc.call("evm_mine")
                numbers = []
                async for head in heads:
                    numbers.append(from_quantity(head["number"]))
                    if len(numbers) == 3:
                        break
            assert numbers == [start + 1, start + 2, start + 3]
            with pytest.raises(RpcResponseError):
                await ws.call("no_such_method")


@pytest.mark.anvil
async def test_ws_logs_subscription_receives_a_log(chain: Chain) -> None:
    key = chain.node.private_keys[2]
    with trio.fail_after(20):
        emitter = await deploy(chain.rpc, key, EMITTER_INIT, chain_id=chain.node.chain_id)
        async with WsRpc(chain.node.ws_url) as ws:
            logs = await ws.subscribe("logs", [{"address": emitter}])
            receipt = await send_tx(chain.rpc, key, chain_id=chain.node.chain_id, to=emitter, data=b"hello")
            event = await logs.receive()
            await logs.unsubscribe()
    assert event["address"].lower() == emitter.lower()
    assert event["topics"] == ["0x" + PING_TOPIC.hex()]
    assert bytes.fromhex(event["data"][2:]) == b"hello"
    assert event["transactionHash"] == receipt["transactionHash"]
    assert event.get("removed", False) is False


# --------------------------------------------------------------------------------------------------------------------
# WebSocket against fake servers


def _ws_node(*, notifications: int = 0, close_after_subscribe: bool = False, ignore: tuple[str, ...] = ()) -> WsHandler:
    """A fake node: answers every call with its method name, ``eth_subscribe`` with "0xsub" followed by
    ``notifications`` notifications, ignores the methods in ``ignore`` and answers ``garbage`` with garbage."""

    async def handler(ws: WebSocketConnection) -> None:
        try:
            while True:
                request = json.loads(await ws.get_message())
                method = request["method"]
                if method in ignore:
                    continue
                if method == "garbage":
                    await ws.send_message("{not json")
                    continue
                result = "0xsub" if method == "eth_subscribe" else method
                await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}))
                if method == "eth_subscribe":
                    for i in range(notifications):
                        note = {"subscription": "0xsub", "result": {"n": i}}
                        await ws.send_message(
                            json.dumps({"jsonrpc": "2.0", "method": "eth_subscription", "params": note})
                        )
                    if close_after_subscribe:
                        await ws.aclose()
                        return
        except ConnectionClosed:
            return

    return handler


async def test_ws_closed_socket_ends_subscriptions_and_calls_with_connection_error(ws_server: WsServer) -> None:
    url = await ws_server(_ws_node(notifications=2, close_after_subscribe=True))
    with trio.fail_after(10):
        async with WsRpc(url) as ws:
            sub = await ws.subscribe("newHeads")
            # What arrived before the close is still delivered; then the close is an error, not a quiet end.
            assert [await sub.receive(), await sub.receive()] == [{"n": 0}, {"n": 1}]
            with pytest.raises(RpcConnectionError, match="WebSocket closed"):
                await sub.receive()
            with pytest.raises(RpcConnectionError, match="WebSocket closed"):
                await anext(sub)
            with pytest.raises(RpcConnectionError):
                await ws.call("eth_chainId")


async def test_ws_slow_subscriber_fails_loudly(ws_server: WsServer) -> None:
    url = await ws_server(_ws_node(notifications=5))
    with trio.fail_after(10):
        async with WsRpc(url) as ws:
            sub = await ws.subscribe("newHeads", buffer=2)
            # The answer to this call follows the 5 notifications, so by now all of them reached the client.
            assert await ws.call("eth_chainId") == "eth_chainId"
            assert [await sub.receive(), await sub.receive()] == [{"n": 0}, {"n": 1}]
            with pytest.raises(SubscriptionOverflowError):
                await sub.receive()
            assert await ws.call("still_usable") == "still_usable"


async def test_ws_call_timeout_maps_to_rpc_timeout(ws_server: WsServer) -> None:
    url = await ws_server(_ws_node(ignore=("stall",)))
    with trio.fail_after(10):
        async with WsRpc(url, timeout=0.2) as ws:
            with pytest.raises(RpcTimeout, match=r"stall: no answer within 0\.2 s"):
                await ws.call("stall")
            assert await ws.call("eth_chainId") == "eth_chainId"


async def test_ws_garbage_fails_the_connection_with_protocol_error(ws_server: WsServer) -> None:
    url = await ws_server(_ws_node())
    with trio.fail_after(10):
        async with WsRpc(url) as ws:
            with pytest.raises(RpcProtocolError, match="not JSON"):
                await ws.call("garbage")
            with pytest.raises(RpcConnectionError, match="connection is gone"):
                await ws.call("eth_chainId")


async def test_ws_connection_refused_maps_to_connection_error() -> None:
    with trio.fail_after(10), pytest.raises(RpcConnectionError, match="cannot connect"):
        async with WsRpc(f"ws://127.0.0.1:{_free_port()}"):
            pass


async def test_ws_body_exception_leaves_unwrapped(ws_server: WsServer) -> None:
    url = await ws_server(_ws_node())
    with trio.fail_after(10), pytest.raises(KeyError):
        async with WsRpc(url):
            raise KeyError("mine")
