"""The chain layer: JSON-RPC clients on trio (:mod:`.rpc`), their named errors (:mod:`.errors`) and the anvil
launcher for tests and devnet (:mod:`.anvil`, imported explicitly: production code does not need it)."""

from relayer.chain.errors import (
    AnvilError,
    AnvilStartError,
    AnvilStartTimeoutError,
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
from relayer.chain.rpc import FailoverRpc, HttpRpc, JsonRpc, Subscription, WsRpc, from_quantity, to_quantity

__all__ = [
    "AnvilError",
    "AnvilStartError",
    "AnvilStartTimeoutError",
    "ChainError",
    "FailoverRpc",
    "HttpRpc",
    "JsonRpc",
    "QuantityError",
    "RpcConnectionError",
    "RpcProtocolError",
    "RpcResponseError",
    "RpcTimeout",
    "RpcTransportError",
    "RpcUnavailableError",
    "RpcUrlError",
    "Subscription",
    "SubscriptionOverflowError",
    "WsRpc",
    "from_quantity",
    "to_quantity",
]
