"""JSON-RPC clients on trio: HTTP (keep-alive pool, h11), WebSocket (multiplexed, subscriptions) and failover.

web3.py's async providers run on asyncio, so the node speaks JSON-RPC itself and uses web3/eth_abi only offline.

Every call has a deadline at its call site (``trio.fail_after``) and every failure leaves as a named error from
:mod:`relayer.chain.errors`: :class:`RpcTimeout`, :class:`RpcConnectionError` and :class:`RpcProtocolError` when the
endpoint gave no JSON-RPC answer, :class:`RpcResponseError` when it answered with a JSON-RPC error object.

Endpoint URLs appear in errors and logs only as ``scheme://host:port``: provider URLs often carry an API key in the
path.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import urlsplit

import h11
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

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

__all__ = [
    "FailoverRpc",
    "HttpRpc",
    "JsonRpc",
    "Subscription",
    "WsRpc",
    "endpoint_label",
    "from_quantity",
    "to_quantity",
]

log = logging.getLogger("relayer.chain.rpc")

DEFAULT_TIMEOUT: Final = 10.0
MAX_UINT256: Final = 2**256 - 1
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
_USER_AGENT: Final = "perp-relayer"


# --------------------------------------------------------------------------------------------------------------------
# Quantities


def to_quantity(value: int) -> str:
    """Encode an unsigned integer as a JSON-RPC quantity: ``0x`` + lowercase hex without leading zeros."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuantityError(f"quantity must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_UINT256:
        raise QuantityError(f"quantity out of range [0, 2**256): {value}")
    return hex(value)


def from_quantity(value: object) -> int:
    """Decode a JSON-RPC quantity (``0x``-prefixed hex, at most 256 bits) into an int.

    Leading zeros are accepted (some nodes send them although the spec forbids them); ``0x``, a missing prefix,
    signs, whitespace and non-strings are rejected.
    """
    if not isinstance(value, str) or _QUANTITY.fullmatch(value) is None:
        raise QuantityError(f"not a JSON-RPC quantity: {value!r}")
    return int(value, 16)


# --------------------------------------------------------------------------------------------------------------------
# Common pieces


class JsonRpc(Protocol):
    """What the rest of the node needs from a JSON-RPC client; :class:`HttpRpc`, :class:`WsRpc` and
    :class:`FailoverRpc` all provide it."""

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any: ...


@dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int
    target: str
    label: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443, "ws": 80, "wss": 443}[self.scheme]
        return host if self.port == default else f"{host}:{self.port}"


def _parse_url(url: str, schemes: tuple[str, ...]) -> _Url:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RpcUrlError(f"invalid RPC URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise RpcUrlError(f"RPC URL scheme must be one of {', '.join(schemes)}, got {scheme or 'none'!r}")
    if not parts.hostname:
        raise RpcUrlError(f"RPC URL without a host ({scheme}://...)")
    if parts.username is not None or parts.password is not None:
        raise RpcUrlError("RPC URL with credentials in it is not supported (put the key in the path)")
    if port is None:
        port = 443 if scheme in ("https", "wss") else 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return _Url(scheme, host, port, target, f"{scheme}://{shown}:{port}")


def endpoint_label(url: str) -> str:
    """``scheme://host:port`` of an RPC URL: what logs and errors show (the path may hold an API key)."""
    return _parse_url(url, ("http", "https", "ws", "wss")).label


def _check_params(params: Sequence[Any]) -> list[Any]:
    if isinstance(params, (str, bytes)):
        raise TypeError("params must be a sequence of parameters, not a string")
    return list(params)


def _encode(request_id: int, method: str, params: Sequence[Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": _check_params(params)}


def _error_from(obj: Any, method: str, endpoint: str) -> RpcResponseError:
    if (
        isinstance(obj, dict)
        and isinstance(obj.get("code"), int)
        and not isinstance(obj.get("code"), bool)
        and isinstance(obj.get("message"), str)
    ):
        return RpcResponseError(obj["code"], obj["message"], obj.get("data"), method=method)
    raise RpcProtocolError(f"{method}: malformed JSON-RPC error object {_short(obj)}", endpoint=endpoint)


def _result_of(answer: Any, request_id: int, method: str, endpoint: str) -> Any:
    """The ``result`` of one JSON-RPC response object, or the named error it stands for."""
    if not isinstance(answer, dict):
        raise RpcProtocolError(f"{method}: answer is not a JSON-RPC object: {_short(answer)}", endpoint=endpoint)
    answer_id = answer.get("id")
    if "error" in answer and answer_id is None:
        # The server could not read the request's id (parse error, invalid request): still a real JSON-RPC answer.
        raise _error_from(answer["error"], method, endpoint)
    if answer_id != request_id or isinstance(answer_id, bool):
        raise RpcProtocolError(f"{method}: answer has id {answer_id!r}, expected {request_id}", endpoint=endpoint)
    if "error" in answer:
        raise _error_from(answer["error"], method, endpoint)
    if "result" not in answer:
        raise RpcProtocolError(f"{method}: answer has neither result nor error: {_short(answer)}", endpoint=endpoint)
    return answer["result"]


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _loads(payload: bytes | str, what: str, endpoint: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise RpcProtocolError(f"{what}: answer is not JSON: {_short(payload)}", endpoint=endpoint) from None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------------------------
# HTTP


class _ClosedBeforeAnswerError(RpcConnectionError):
    """EOF or reset before any byte of the answer: on a reused keep-alive connection the request may be retried."""


@dataclass(eq=False)
class _Connection:
    stream: trio.abc.Stream
    http: h11.Connection
    reused: bool = False


class HttpRpc:
    """JSON-RPC over HTTP/1.1 on trio with a small keep-alive pool.

    ``call`` sends one request on an idle pooled connection (or a new one, at most ``max_connections`` at once) and
    bounds the whole exchange, connect included, by ``trio.fail_after(timeout)``. A connection is reused only after a
    complete exchange; one that failed or was cancelled mid-way is closed. When a reused connection turns out to have
    been closed by the server before any byte of the answer arrived, the request is sent once more on a new
    connection (the usual keep-alive race); JSON-RPC reads are idempotent and a re-sent raw transaction is at worst
    answered "already known".

    Use as ``async with HttpRpc(url) as rpc`` or call :meth:`aclose` when done.
    """

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        max_connections: int = 8,
        max_response_bytes: int = 64 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._url = _parse_url(url, ("http", "https"))
        self.timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._ssl_context = ssl_context
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[_Connection] = []
        self._ids = itertools.count(1)
        self._closed = False
        self.connections_opened = 0
        """How many TCP connections this client has opened (keep-alive makes it grow slower than calls)."""

    @property
    def endpoint(self) -> str:
        """``scheme://host:port`` (no path: it may hold an API key)."""
        return self._url.label

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections; calls after this raise :class:`RpcConnectionError`."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Send one request and return its ``result``, within the client's ``timeout``.

        A caller that needs a tighter deadline wraps the call in its own ``trio.fail_after``.
        """
        request_id = next(self._ids)
        body = _dumps(_encode(request_id, method, params)).encode()
        answer = await self._post(body, method)
        return _result_of(answer, request_id, method, self.endpoint)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any | RpcResponseError]:
        """Send several requests in one JSON-RPC batch; return, in order, each result or its RpcResponseError.

        Transport and protocol failures raise as for :meth:`call`; a batch the server rejects as a whole (one
        error object instead of a list) raises its :class:`RpcResponseError`.
        """
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        body = _dumps([_encode(i, method, params) for i, (method, params) in zip(ids, calls, strict=True)]).encode()
        what = f"batch of {len(calls)}"
        answer = await self._post(body, what)
        if isinstance(answer, dict) and "error" in answer:
            raise _error_from(answer["error"], what, self.endpoint)
        if not isinstance(answer, list):
            raise RpcProtocolError(f"{what}: answer is not a JSON array: {_short(answer)}", endpoint=self.endpoint)
        by_id: dict[int, Any] = {}
        for item in answer:
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, int) or item_id not in ids or item_id in by_id:
                raise RpcProtocolError(f"{what}: unexpected item {_short(item)}", endpoint=self.endpoint)
            by_id[item_id] = item
        results: list[Any | RpcResponseError] = []
        for request_id, (method, _) in zip(ids, calls, strict=True):
            if request_id not in by_id:
                raise RpcProtocolError(f"{what}: no answer for {method} (id {request_id})", endpoint=self.endpoint)
            try:
                results.append(_result_of(by_id[request_id], request_id, method, self.endpoint))
            except RpcResponseError as exc:
                results.append(exc)
        return results

    async def _post(self, body: bytes, what: str) -> Any:
        if self._closed:
            raise RpcConnectionError(f"{what}: client is closed", endpoint=self.endpoint)
        limit = self.timeout
        try:
            with trio.fail_after(limit):
                async with self._limiter:
                    status, payload = await self._exchange_with_retry(body, what)
        except trio.TooSlowError:
            raise RpcTimeout(f"{what}: no answer within {limit:g} s", endpoint=self.endpoint) from None
        if status != 200:
            # A JSON-RPC error object sent with a non-200 status is still a real answer; anything else is not.
            try:
                answer = json.loads(payload)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                return answer
            raise RpcProtocolError(f"{what}: HTTP {status}: {_short(payload)}", endpoint=self.endpoint)
        return _loads(payload, what, self.endpoint)

    async def _exchange_with_retry(self, body: bytes, what: str) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else None
        while True:
            if conn is None:
                conn = await self._connect(what)
            try:
                status, payload, keep = await self._exchange(conn, body, what)
            except _ClosedBeforeAnswerError as exc:
                await trio.aclose_forcefully(conn.stream)
                if conn.reused:
                    log.debug("rpc %s: idle keep-alive connection was closed by the server; retrying", self.endpoint)
                    conn = None
                    continue
                raise RpcConnectionError(exc.detail, endpoint=self.endpoint) from None
            except BaseException:
                # Failed, timed out or cancelled mid-exchange: the connection's state is unknown.
                await trio.aclose_forcefully(conn.stream)
                raise
            if keep and not self._closed:
                conn.http.start_next_cycle()
                conn.reused = True
                self._idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            return status, payload

    async def _connect(self, what: str) -> _Connection:
        url = self._url
        try:
            if url.scheme == "https":
                context = self._ssl_context or ssl.create_default_context()
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    url.host, url.port, ssl_context=context, https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(url.host, url.port)
        except OSError as exc:
            raise RpcConnectionError(f"{what}: cannot connect: {exc}", endpoint=self.endpoint) from None
        self.connections_opened += 1
        return _Connection(stream, h11.Connection(h11.CLIENT))

    async def _exchange(self, conn: _Connection, body: bytes, what: str) -> tuple[int, bytes, bool]:
        """One request and its complete answer: (status, body, connection reusable)."""
        url = self._url
        http = conn.http
        request = h11.Request(
            method="POST",
            target=url.target,
            headers=[
                ("Host", url.host_header),
                ("User-Agent", _USER_AGENT),
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        data = http.send(request) or b""
        data += http.send(h11.Data(data=body)) or b""
        data += http.send(h11.EndOfMessage()) or b""
        received = 0
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClosedBeforeAnswerError(
                f"{what}: connection lost while sending: {_cause(exc)}", endpoint=self.endpoint
            ) from None

        status = 0
        chunks: list[bytes] = []
        size = 0
        eof = False
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                if eof:
                    error = _ClosedBeforeAnswerError if received == 0 else RpcConnectionError
                    raise error(f"{what}: connection closed before a complete answer", endpoint=self.endpoint) from None
                raise RpcProtocolError(f"{what}: not a valid HTTP answer: {exc}", endpoint=self.endpoint) from None
            if event is h11.NEED_DATA:
                try:
                    chunk = await conn.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    error = _ClosedBeforeAnswerError if received == 0 else RpcConnectionError
                    raise error(f"{what}: connection lost: {_cause(exc)}", endpoint=self.endpoint) from None
                received += len(chunk)
                eof = not chunk
                http.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self._max_response_bytes:
                    raise RpcProtocolError(
                        f"{what}: answer larger than {self._max_response_bytes} bytes", endpoint=self.endpoint
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                keep = http.our_state is h11.DONE and http.their_state is h11.DONE
                return status, b"".join(chunks), keep
            elif isinstance(event, h11.ConnectionClosed):
                error = _ClosedBeforeAnswerError if received == 0 else RpcConnectionError
                raise error(f"{what}: connection closed before a complete answer", endpoint=self.endpoint)
            # InformationalResponse (1xx) and PAUSED cannot end an exchange: keep reading.


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(cause or exc) or type(cause or exc).__name__


# --------------------------------------------------------------------------------------------------------------------
# Failover


@dataclass
class EndpointState:
    """Health of one endpoint of a :class:`FailoverRpc` (for logs, metrics and tests)."""

    label: str
    failures: int = 0
    retry_at: float = -math.inf
    last_error: str = ""


class FailoverRpc:
    """Tries HTTP endpoints in order and returns the first JSON-RPC answer.

    An endpoint that fails with an :class:`RpcTransportError` (timeout, connection, garbage) is skipped for a backoff
    that doubles with each consecutive failure (``backoff_base`` · 2ⁿ⁻¹, at most ``backoff_cap`` seconds) and resets
    on success. When every endpoint is backing off, the one whose backoff ends first is tried anyway, so a call never
    fails without trying. :class:`RpcResponseError` is a real answer and is raised at once, without failover.
    When every tried endpoint fails, :class:`RpcUnavailableError` lists why.

    ``clock`` defaults to ``trio.current_time`` (tests may inject their own).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        clock: Callable[[], float] | None = None,
        max_connections: int = 8,
    ) -> None:
        if isinstance(urls, str) or not urls:
            raise RpcUrlError("FailoverRpc needs a non-empty list of URLs")
        if not 0 < backoff_base <= backoff_cap:
            raise ValueError(f"need 0 < backoff_base <= backoff_cap, got {backoff_base} and {backoff_cap}")
        self._clients = [HttpRpc(u, timeout, max_connections=max_connections) for u in urls]
        self._states = [EndpointState(c.endpoint) for c in self._clients]
        self._base = backoff_base
        self._cap = backoff_cap
        self._clock = clock or trio.current_time

    @property
    def endpoints(self) -> list[EndpointState]:
        """The endpoints' health, in configured order."""
        return list(self._states)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    def _order(self) -> list[int]:
        now = self._clock()
        ready = [i for i, s in enumerate(self._states) if s.retry_at <= now]
        if ready:
            return ready
        return [min(range(len(self._states)), key=lambda i: self._states[i].retry_at)]

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """``call`` on the first endpoint that answers; each attempt is bounded by the ``timeout`` given at
        construction."""
        errors: list[RpcTransportError] = []
        for i in self._order():
            state = self._states[i]
            try:
                result = await self._clients[i].call(method, params)
            except RpcTransportError as exc:
                self._failed(state, exc)
                errors.append(exc)
                continue
            if state.failures:
                log.info("rpc endpoint %s is answering again after %d failures", state.label, state.failures)
            state.failures = 0
            state.retry_at = -math.inf
            return result
        raise RpcUnavailableError(errors)

    def _failed(self, state: EndpointState, exc: RpcTransportError) -> None:
        now = self._clock()
        state.last_error = str(exc)
        if state.retry_at > now:
            return  # a concurrent call already counted this outage
        state.failures += 1
        delay = min(self._base * 2 ** (state.failures - 1), self._cap)
        state.retry_at = now + delay
        log.warning("rpc endpoint %s failed (%s); skipping it for %.1f s", state.label, exc, delay)


# --------------------------------------------------------------------------------------------------------------------
# WebSocket


class _Pending:
    __slots__ = ("answer", "done", "error", "subscription")

    def __init__(self, subscription: Subscription | None = None) -> None:
        self.done = trio.Event()
        self.answer: Any = None
        self.error: RpcTransportError | None = None
        self.subscription = subscription


class Subscription:
    """Notifications of one ``eth_subscribe``, as an async iterator of their ``result`` values.

    Bounded: when the subscriber lets ``buffer`` notifications pile up, the subscription fails with
    :class:`SubscriptionOverflowError` (after delivering what was buffered) instead of dropping any. A closed connection
    ends it with :class:`RpcConnectionError`; :meth:`unsubscribe` (or leaving ``async with``) ends it cleanly.
    """

    def __init__(self, rpc: WsRpc, kind: str, buffer: int) -> None:
        self.kind = kind
        self.id: str | None = None
        self._rpc = rpc
        self._buffer = buffer
        self._send, self._recv = trio.open_memory_channel[Any](buffer)
        self._error: ChainError | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.kind} id={self.id}>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

    async def receive(self) -> Any:
        """The next notification; raises the subscription's error, or ``trio.EndOfChannel`` once unsubscribed."""
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise

    async def unsubscribe(self) -> None:
        """End the subscription here and on the node (no-op when the connection is already gone)."""
        await self._rpc.unsubscribe(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unsubscribe()

    def _deliver(self, item: Any) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self._end(
                SubscriptionOverflowError(
                    f"subscription {self.kind} ({self.id}) overflowed: the subscriber let {self._buffer} "
                    "notifications pile up"
                )
            )
            return False
        except trio.ClosedResourceError:
            return False
        return True

    def _end(self, error: ChainError | None) -> None:
        if self._error is None:
            self._error = error
        self._send.close()


class WsRpc:
    """JSON-RPC over one WebSocket: requests multiplexed by id, plus ``eth_subscribe`` subscriptions.

    ``async with WsRpc(url) as ws:`` connects (bounded by ``connect_timeout``) and runs a reader task in its own
    nursery; leaving the block closes the socket. A closed or broken socket fails every pending call and ends every
    subscription with :class:`RpcConnectionError`; garbage from the server fails them with :class:`RpcProtocolError`.
    Exceptions from the body leave unwrapped (the internal nursery never adds an exception of its own).
    """

    def __init__(
        self,
        url: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        connect_timeout: float = DEFAULT_TIMEOUT,
        subscription_buffer: int = 1024,
        max_message_size: int = 16 * 1024 * 1024,
    ) -> None:
        if subscription_buffer < 1:
            raise ValueError(f"subscription_buffer must be at least 1, got {subscription_buffer}")
        self._url_text = url
        self._url = _parse_url(url, ("ws", "wss"))
        self.timeout = timeout
        self._connect_timeout = connect_timeout
        self._subscription_buffer = subscription_buffer
        self._max_message_size = max_message_size
        self._ws: WebSocketConnection | None = None
        self._pending: dict[int, _Pending] = {}
        self._subs: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self._error: RpcTransportError | None = None
        self._session: AbstractAsyncContextManager[None] | None = None

    @property
    def endpoint(self) -> str:
        return self._url.label

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("a WsRpc can be entered only once")
        session = self._run()
        await session.__aenter__()
        self._session = session
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._session is not None, "not entered"
        return await self._session.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _run(self) -> AsyncIterator[None]:
        try:
            async with open_websocket_url(
                self._url_text,
                connect_timeout=self._connect_timeout,
                disconnect_timeout=min(self._connect_timeout, 5.0),
                max_message_size=self._max_message_size,
                message_queue_size=64,
            ) as ws:
                self._ws = ws
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._reader, ws)
                        try:
                            yield
                        finally:
                            nursery.cancel_scope.cancel()
                            self._fail_all(RpcConnectionError("WebSocket client closed", endpoint=self.endpoint))
                except BaseExceptionGroup as group:
                    # The reader never raises, so a group here holds the body's single exception: unwrap it.
                    if len(group.exceptions) == 1:
                        raise group.exceptions[0] from None
                    raise
        except ConnectionTimeout:
            raise RpcTimeout(
                f"WebSocket handshake not done within {self._connect_timeout:g} s", endpoint=self.endpoint
            ) from None
        except ConnectionRejected as exc:
            raise RpcConnectionError(
                f"WebSocket handshake rejected: HTTP {exc.status_code}", endpoint=self.endpoint
            ) from None
        except DisconnectionTimeout:
            raise RpcTimeout("WebSocket closing handshake timed out", endpoint=self.endpoint) from None
        except HandshakeError as exc:
            raise RpcConnectionError(f"cannot connect: {_cause(exc)}", endpoint=self.endpoint) from None

    def _fail_all(self, error: RpcTransportError) -> None:
        if self._error is None:
            self._error = error
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.error = error
            p.done.set()
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            sub._end(error)

    async def _reader(self, ws: WebSocketConnection) -> None:
        """Dispatch every incoming message; on close or garbage, fail everything that waits. Never raises."""
        error: RpcTransportError
        try:
            while True:
                message = await ws.get_message()
                self._dispatch(message)
        except ConnectionClosed as exc:
            reason = exc.reason
            detail = (
                f"code {reason.code} {reason.name}" + (f": {reason.reason}" if reason.reason else "") if reason else ""
            )
            error = RpcConnectionError(f"WebSocket closed ({detail})", endpoint=self.endpoint)
        except RpcProtocolError as exc:
            error = exc
        log.warning("%s", error)
        self._fail_all(error)

    def _dispatch(self, message: str | bytes) -> None:
        obj = _loads(message, "WebSocket message", self.endpoint)
        if not isinstance(obj, dict):
            raise RpcProtocolError(f"WebSocket message is not a JSON-RPC object: {_short(obj)}", endpoint=self.endpoint)
        if obj.get("method") == "eth_subscription":
            params = obj.get("params")
            if (
                not isinstance(params, dict)
                or not isinstance(params.get("subscription"), str)
                or "result" not in params
            ):
                raise RpcProtocolError(
                    f"malformed eth_subscription notification: {_short(obj)}", endpoint=self.endpoint
                )
            sub = self._subs.get(params["subscription"])
            if sub is None:
                log.debug("%s: notification for unknown subscription %s", self.endpoint, params["subscription"])
            elif not sub._deliver(params["result"]):
                del self._subs[params["subscription"]]
                log.error("%s", sub._error)
            return
        if "id" not in obj:
            raise RpcProtocolError(
                f"WebSocket message is neither answer nor notification: {_short(obj)}", endpoint=self.endpoint
            )
        pending = self._pending.pop(obj["id"], None) if type(obj["id"]) is int else None
        if pending is None:
            log.debug("%s: answer for unknown or abandoned request id %r", self.endpoint, obj["id"])
            return
        pending.answer = obj
        sub = pending.subscription
        if sub is not None and isinstance(obj.get("result"), str):
            # Register before the next message is read: the first notification may follow immediately.
            sub.id = obj["result"]
            self._subs[sub.id] = sub
        pending.done.set()

    def _check_open(self, what: str) -> WebSocketConnection:
        if self._error is not None:
            raise RpcConnectionError(f"{what}: connection is gone ({self._error.detail})", endpoint=self.endpoint)
        if self._ws is None:
            raise RuntimeError("use `async with WsRpc(url) as ws` before calling")
        return self._ws

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Send one request and return its ``result``, within the client's ``timeout``."""
        pending = await self._request(method, params, None)
        return _result_of(pending.answer, pending.answer["id"], method, self.endpoint)

    async def subscribe(self, kind: str, params: Sequence[Any] = (), *, buffer: int | None = None) -> Subscription:
        """``eth_subscribe(kind, *params)``, e.g. ``subscribe("newHeads")`` or ``subscribe("logs", [filter])``."""
        sub = Subscription(self, kind, buffer or self._subscription_buffer)
        pending = await self._request("eth_subscribe", [kind, *_check_params(params)], sub)
        result = _result_of(pending.answer, pending.answer["id"], "eth_subscribe", self.endpoint)
        if not isinstance(result, str):
            raise RpcProtocolError(f"eth_subscribe returned {_short(result)}, not an id", endpoint=self.endpoint)
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering ``sub`` and tell the node; a no-op when the connection is already gone."""
        if sub.id is not None and self._subs.get(sub.id) is sub:
            del self._subs[sub.id]
        sub._end(None)
        if sub.id is None or self._error is not None:
            return
        await self.call("eth_unsubscribe", [sub.id])

    async def _request(self, method: str, params: Sequence[Any], sub: Subscription | None) -> _Pending:
        ws = self._check_open(method)
        request_id = next(self._ids)
        text = _dumps(_encode(request_id, method, params))
        pending = _Pending(sub)
        limit = self.timeout
        self._pending[request_id] = pending
        try:
            with trio.fail_after(limit):
                await self._send(ws, text, method, limit)
                await pending.done.wait()
        except trio.TooSlowError:
            raise RpcTimeout(f"{method}: no answer within {limit:g} s", endpoint=self.endpoint) from None
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            # A fresh exception per waiter: one instance raised in many tasks would mix their tracebacks.
            raise type(pending.error)(f"{method}: {pending.error.detail}", endpoint=self.endpoint)
        return pending

    async def _send(self, ws: WebSocketConnection, text: str, method: str, limit: float) -> None:
        # A send cancelled half-way would leave a partial frame on the socket, so it runs shielded under its own
        # deadline; a send that cannot finish in time abandons the whole connection.
        with trio.CancelScope(shield=True), trio.move_on_after(limit) as scope:
            try:
                await ws.send_message(text)
            except ConnectionClosed:
                raise RpcConnectionError(f"{method}: WebSocket is closed", endpoint=self.endpoint) from None
        if scope.cancelled_caught:
            error = RpcTimeout(f"{method}: send stalled for {limit:g} s; connection abandoned", endpoint=self.endpoint)
            self._fail_all(RpcConnectionError(error.detail, endpoint=self.endpoint))
            raise error
