"""Named errors of the chain layer (JSON-RPC clients and the anvil launcher).

Two families matter to callers:

- :class:`RpcTransportError`: the endpoint gave no JSON-RPC answer (timeout, refused/reset/EOF, garbage). Trying
  another endpoint, or the same one later, may help; :class:`~relayer.chain.rpc.FailoverRpc` fails over on these.
- :class:`RpcResponseError`: the node answered with a JSON-RPC error object. That is a real answer (a revert, a bad
  nonce, an unknown method) and asking another node would not change it.
"""

from __future__ import annotations

from typing import Any

from relayer.errors import RelayerError

_MAX_DATA_REPR = 200


class ChainError(RelayerError):
    """Base class of every error raised by ``relayer.chain``."""


class RpcTransportError(ChainError):
    """The endpoint did not give a JSON-RPC answer. ``endpoint`` is the URL without path or credentials."""

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        self.endpoint = endpoint
        self.detail = message
        super().__init__(f"{endpoint}: {message}" if endpoint else message)


class RpcTimeout(RpcTransportError):  # noqa: N818 - the name the rest of the node uses
    """No complete answer within the call's deadline."""


class RpcConnectionError(RpcTransportError):
    """The connection could not be made, or was refused, reset or closed (EOF) before a complete answer."""


class RpcProtocolError(RpcTransportError):
    """The endpoint answered, but not with valid JSON-RPC: not HTTP, not JSON, wrong id, no result, HTTP 5xx..."""


class RpcUnavailableError(RpcTransportError):
    """Every endpoint of a :class:`~relayer.chain.rpc.FailoverRpc` failed for one call; ``errors`` says how."""

    def __init__(self, errors: list[RpcTransportError]) -> None:
        self.errors = list(errors)
        detail = "; ".join(str(e) for e in self.errors) or "no endpoints"
        super().__init__(f"all RPC endpoints failed: {detail}")


class RpcResponseError(ChainError):
    """The node answered with a JSON-RPC error object.

    ``data`` is kept as sent: for a revert it holds the revert data (``0x`` + selector + ABI-encoded arguments of a
    custom error, or of ``Error(string)``).
    """

    def __init__(self, code: int, message: str, data: Any = None, *, method: str = "") -> None:
        self.code = code
        self.message = message
        self.data = data
        self.method = method
        text = f"{method}: " if method else ""
        text += f"JSON-RPC error {code}: {message}"
        if data is not None:
            shown = repr(data)
            text += f" (data={shown[:_MAX_DATA_REPR]}{'...' if len(shown) > _MAX_DATA_REPR else ''})"
        super().__init__(text)


class SubscriptionOverflowError(ChainError):
    """A subscriber fell so far behind that its bounded buffer filled up; later notifications were not delivered.

    Everything received before the gap is still delivered; this error is raised in place of the first missing one.
    """


class QuantityError(ChainError, ValueError):
    """A value is not a valid JSON-RPC quantity (``0x``-prefixed hex of an unsigned 256-bit integer)."""


class RpcUrlError(ChainError, ValueError):
    """An RPC URL cannot be used (wrong scheme, no host, credentials in the URL...)."""


class AnvilError(ChainError):
    """The local anvil chain misbehaved (for example an ``evm_revert`` to an unknown snapshot)."""


class AnvilStartError(AnvilError):
    """anvil did not start. ``output`` holds what it printed; ``pid`` is its process id when it got that far."""

    def __init__(self, message: str, *, output: str = "", pid: int | None = None) -> None:
        self.output = output
        self.pid = pid
        tail = "\n".join(output.strip().splitlines()[-20:])
        super().__init__(f"{message}\n--- anvil output (last lines) ---\n{tail}" if tail else message)


class AnvilStartTimeoutError(AnvilStartError):
    """anvil did not print its listening address within the startup timeout."""
