"""Node configuration: parsed once from JSON (plus environment overrides) into frozen, typed objects.

Every setting is declared once, below, with its type, default, bounds and a sentence of documentation. The same
declarations drive parsing, validation, the environment overrides, `relayer config docs` and docs/config.md.

Rules:
- Unknown keys are errors. Keys starting with "//" are comments and are ignored at any level.
- Every problem names the key's path (``api.port``, ``markets[1].symbol``); all problems are reported at once.
- Relative paths are resolved against the directory holding the config file.
- ``RELAYER__SECTION__KEY=value`` overrides ``section.key`` (see :data:`ENV_PREFIX`). The value is JSON (numbers,
  booleans, lists, ``null``); for text settings a bare string is taken as it is.
- Secrets never live here: the key comes from an encrypted keystore file (password from an environment variable or a
  prompt), or for development from the ``RELAYER_PRIVATE_KEY`` environment variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NewType, TypeVar
from urllib.parse import urlsplit

from relayer.errors import ConfigError

ENV_PREFIX = "RELAYER__"
COMMENT_PREFIX = "//"

EthAddress = NewType("EthAddress", str)
"""A 20-byte address, ``0x`` + 40 hex digits; mixed case must be a valid EIP-55 checksum."""
Multiaddr = NewType("Multiaddr", str)
"""A libp2p multiaddress such as ``/ip4/127.0.0.1/tcp/9000``."""
PeerAddr = NewType("PeerAddr", str)
"""A multiaddress that ends in ``/p2p/<peer id>``."""
HttpUrl = NewType("HttpUrl", str)
WsUrl = NewType("WsUrl", str)
Host = NewType("Host", str)
"""An IP address or a DNS host name to bind or connect to."""
LoggerName = NewType("LoggerName", str)

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]
StpMode = Literal["cancel_maker", "cancel_taker", "cancel_both"]

_NO_DEFAULT: Any = dataclasses.MISSING


def setting(
    doc: str,
    default: Any = _NO_DEFAULT,
    *,
    lo: int | None = None,
    hi: int | None = None,
    pattern: str | None = None,
    min_items: int = 0,
    example: Any = _NO_DEFAULT,
) -> Any:
    """Declare one config key: its sentence of documentation, default (none = required) and bounds."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "pattern": pattern, "min_items": min_items, "example": example}
    if isinstance(default, list | dict):
        raise TypeError("config defaults must be immutable: use a tuple, or mapping_setting() for objects")
    return field(default=default, metadata=meta)


def mapping_setting(doc: str, *, example: Any = _NO_DEFAULT) -> Any:
    """Declare a key whose value is an object of name -> value (defaults to empty)."""
    meta = {"doc": doc, "lo": None, "hi": None, "pattern": None, "min_items": 0, "example": example}
    return field(default_factory=dict, metadata=meta)


# --------------------------------------------------------------------------------------------------------------------
# The schema. Units are in the names: _ms milliseconds, _s seconds, _wei wei, _bps basis points (1/10000).


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSection:
    name: str = setting(
        "Human-readable node name, used in logs, metrics and the status endpoint.",
        "relayer",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
    )
    data_dir: Path = setting(
        "Directory of the node's LevelDB store and runtime files; relative to the config file. One node per directory.",
        Path("data"),
    )
    log_level: LogLevel = setting("Default log level for every logger.", "info")
    log_levels: dict[LoggerName, LogLevel] = mapping_setting(
        'Per-logger level overrides, e.g. {"relayer.p2p": "debug"}.',
        example={"relayer.p2p": "info"},
    )
    log_format: LogFormat = setting(
        "Log line format: 'text' for people, 'json' (one object a line) for machines.", "text"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysSection:
    keystore: Path = setting(
        "Encrypted keystore (eth-account v3 JSON) of the relayer key: it signs votes and proposals and is the libp2p "
        "identity, so the peer id and the relayer address name the same key. Relative to the config file.",
        Path("keystore.json"),
    )
    password_env: str = setting(
        "Name of the environment variable holding the keystore password; if unset the node prompts on a terminal.",
        "RELAYER_KEYSTORE_PASSWORD",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    gas_keystore: Path | None = setting(
        "Optional separate keystore of the account that pays gas for settlement transactions; null = the relayer key.",
        None,
    )
    gas_password_env: str = setting(
        "Name of the environment variable holding the gas keystore password.",
        "RELAYER_GAS_KEYSTORE_PASSWORD",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainSection:
    chain_id: int = setting(
        "EIP-155 chain id; the node refuses to start if the RPC reports another.",
        lo=1,
        hi=2**63 - 1,
        example=31337,
    )
    rpc_http: tuple[HttpUrl, ...] = setting(
        "JSON-RPC HTTP endpoints, tried in order; a dead one is skipped with backoff.",
        min_items=1,
        example=["http://127.0.0.1:8545"],
    )
    rpc_ws: tuple[WsUrl, ...] = setting(
        "JSON-RPC WebSocket endpoints for eth_subscribe (new heads and the exchange's logs), tried in order.",
        min_items=1,
        example=["ws://127.0.0.1:8545"],
    )
    exchange: EthAddress | None = setting(
        "Address of the exchange contract. May be null before deployment; `relayer run` requires it.",
        None,
    )
    start_block: int = setting(
        "Block to start reading events from when the store is empty (the exchange's deployment block).",
        0,
        lo=0,
        hi=2**63 - 1,
    )
    confirmations: int = setting(
        "Blocks on top of an event's block before it counts as final.",
        2,
        lo=0,
        hi=10_000,
    )
    log_range_blocks: int = setting(
        "Largest block range of one eth_getLogs request while backfilling.", 2_000, lo=1, hi=1_000_000
    )
    request_timeout_ms: int = setting("Deadline of one JSON-RPC request.", 10_000, lo=100, hi=600_000)
    reconnect_backoff_max_ms: int = setting(
        "Largest wait between reconnect attempts to an RPC endpoint.", 30_000, lo=100, hi=3_600_000
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSection:
    max_fee_per_gas_wei: int = setting(
        "Cap on the EIP-1559 max fee per gas of settlement transactions.", 500_000_000_000, lo=1, hi=10**24
    )
    max_priority_fee_per_gas_wei: int = setting(
        "Cap on the priority fee (tip) per gas.", 2_000_000_000, lo=0, hi=10**24
    )
    gas_margin_bps: int = setting(
        "Margin added to the gas estimate, in basis points (2000 = +20%).", 2_000, lo=0, hi=50_000
    )
    gas_limit_cap: int = setting(
        "Hard cap on a transaction's gas limit; keep it below the block gas limit.",
        15_000_000,
        lo=21_000,
        hi=1_000_000_000,
    )
    fee_bump_bps: int = setting(
        "Fee increase when replacing a stuck transaction, in basis points; at least 1000 (10%), the nodes' "
        "replacement minimum.",
        1_250,
        lo=1_000,
        hi=100_000,
    )
    resubmit_after_ms: int = setting(
        "Time without inclusion after which a transaction is bumped or resent.", 15_000, lo=500, hi=3_600_000
    )
    max_fee_bumps: int = setting(
        "Most fee bumps of one transaction before the worker reports it stuck.", 8, lo=0, hi=100
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class P2PSection:
    listen: tuple[Multiaddr, ...] = setting(
        "libp2p listen addresses (TCP, Noise-encrypted).",
        ("/ip4/0.0.0.0/tcp/9000",),
        min_items=1,
    )
    bootstrap: tuple[PeerAddr, ...] = setting(
        "Peers to dial at start and re-dial when the link drops; each ends in /p2p/<peer id>.",
        (),
        example=["/ip4/127.0.0.1/tcp/9001/p2p/16Uiu2HAmEWQnHq2jLKJypwVnVoQeFCULuyop6atvq2eWjYSUjzNi"],
    )
    heartbeat_ms: int = setting(
        "GossipSub heartbeat (py-libp2p's default of 120 s is far too slow for a small mesh).",
        1_000,
        lo=50,
        hi=60_000,
    )
    max_message_bytes: int = setting(
        "Largest gossip or stream message accepted; larger ones are rejected.",
        1_048_576,
        lo=1_024,
        hi=16_777_216,
    )
    reconnect_interval_ms: int = setting(
        "How often the node re-dials bootstrap peers and relayers it is not connected to.",
        2_000,
        lo=100,
        hi=600_000,
    )
    dial_backoff_ms: int = setting(
        "Pause after a failed dial before that peer is tried again.", 5_000, lo=0, hi=600_000
    )
    max_peers: int = setting("Most connected peers.", 64, lo=1, hi=10_000)
    sync_interval_ms: int = setting(
        "Period of the anti-entropy sync that compares open-order digests with a peer.",
        5_000,
        lo=100,
        hi=600_000,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSection:
    host: Host = setting("Address the trader API (HTTP + WebSocket) binds to.", "127.0.0.1")
    port: int = setting("TCP port of the trader API; 0 picks a free port (printed at start).", 8080, lo=0, hi=65_535)
    metrics: bool = setting("Serve Prometheus metrics at /metrics on the API port.", True)
    cors_origins: tuple[str, ...] = setting("Origins allowed by CORS for browser front ends; empty = none.", ())
    max_body_bytes: int = setting("Largest request body accepted.", 65_536, lo=1_024, hi=16_777_216)
    max_inflight_requests: int = setting(
        "Requests in flight before the API answers 503 with Retry-After.", 1_024, lo=1, hi=1_000_000
    )
    max_ws_subscribers: int = setting("Most concurrent WebSocket subscribers.", 1_000, lo=1, hi=1_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumSection:
    round_timeout_ms: int = setting(
        "Timeout of round 0 of a seq; later rounds double it up to the cap.", 2_000, lo=100, hi=600_000
    )
    round_timeout_max_ms: int = setting("Cap on the round timeout.", 30_000, lo=100, hi=3_600_000)
    batch_deadline_delta_s: int = setting(
        "A batch's deadline is the chain head time plus this; orders expiring by then are treated as expired.",
        60,
        lo=5,
        hi=3_600,
    )
    certificate_grace_s: int = setting(
        "After a certificate's deadline plus this grace without inclusion, the node moves to the next round.",
        15,
        lo=0,
        hi=3_600,
    )
    backup_submit_delay_ms: int = setting(
        "Backup submitters wait this times their rank before submitting a certificate that has not landed.",
        5_000,
        lo=0,
        hi=600_000,
    )
    max_fills_per_batch: int = setting("Most fills in one batch.", 256, lo=1, hi=10_000)
    batch_gas_cap: int = setting(
        "Gas budget of one batch; the proposer stops adding fills before it.",
        12_000_000,
        lo=100_000,
        hi=1_000_000_000,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OrdersSection:
    created_at_window_s: int = setting(
        "At API intake and on live gossip, an order's createdAt must be within this many seconds of when the node "
        "first sees it (no back-dating to jump the queue).",
        2,
        lo=0,
        hi=600,
    )
    ioc_window_s: int = setting(
        "Network parameter: an immediate-or-cancel order expires at createdAt + this; must exceed "
        "quorum.batch_deadline_delta_s.",
        120,
        lo=1,
        hi=86_400,
    )
    max_open_orders_per_trader: int = setting(
        "Most open orders one trader may hold on this node.", 200, lo=1, hi=1_000_000
    )
    max_book_orders: int = setting(
        "Most open orders in the whole book; beyond it the least likely to fill are evicted.",
        100_000,
        lo=1,
        hi=100_000_000,
    )
    self_trade_prevention: StpMode = setting(
        "What a self-trade cancels: the resting maker (dYdX and Hyperliquid's default), the taker, or both.",
        "cancel_maker",
    )
    deny_list_file: Path | None = setting(
        "Optional file of trader addresses (one per line, # comments) refused at intake; reloaded on change or SIGHUP.",
        None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreSection:
    snapshot_every_inputs: int = setting(
        "Write a book snapshot after this many applied inputs (bounds replay time).",
        10_000,
        lo=1,
        hi=100_000_000,
    )
    prune_horizon_blocks: int = setting(
        "Final data older than this many blocks is compacted away.", 100_000, lo=100, hi=2**40
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LiquidationSection:
    enabled: bool = setting("Run the opt-in liquidation keeper (liquidates accounts below maintenance margin).", False)
    scan_interval_ms: int = setting("How often the keeper scans accounts.", 5_000, lo=100, hi=3_600_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketEntry:
    id: int = setting("Market id as registered in the exchange contract.", lo=0, hi=2**32 - 1, example=1)
    symbol: str = setting(
        "Display symbol, BASE-QUOTE in capitals.",
        pattern=r"^[A-Z0-9]{1,12}-[A-Z0-9]{1,12}$",
        example="ETH-USD",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    node: NodeSection = setting("This node.", NodeSection())
    keys: KeysSection = setting("Where the node's keys come from (never the keys themselves).", KeysSection())
    chain: ChainSection = setting("The chain and the exchange contract.")
    worker: WorkerSection = setting("The contract worker: fees, gas and resubmission.", WorkerSection())
    p2p: P2PSection = setting("The libp2p host.", P2PSection())
    api: ApiSection = setting("The trader API.", ApiSection())
    quorum: QuorumSection = setting("Quorum rounds and batches.", QuorumSection())
    orders: OrdersSection = setting("Order intake and admission.", OrdersSection())
    store: StoreSection = setting("The LevelDB store.", StoreSection())
    liquidation: LiquidationSection = setting("The liquidation keeper.", LiquidationSection())
    markets: tuple[MarketEntry, ...] = setting(
        "Markets this node serves; their parameters (tick, margins, fees) are read from the contract.",
        min_items=1,
    )


# --------------------------------------------------------------------------------------------------------------------
# Validators of the named string types.

_HEX40 = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*$"
)
_LOGGER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_eth_address(value: str) -> str | None:
    if not _HEX40.match(value):
        return "must be 0x followed by 40 hex digits"
    body = value[2:]
    if body != body.lower() and body != body.upper():
        from eth_utils.address import is_checksum_address

        if not is_checksum_address(value):
            return "mixed-case address fails its EIP-55 checksum (a typo?)"
    return None


def check_host(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            return "must be an IP address or a host name"
    return None


def _check_url(value: str, schemes: tuple[str, ...]) -> str | None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in schemes:
        return f"must be a {' or '.join(s + '://' for s in schemes)} URL"
    if not parts.hostname or check_host(parts.hostname) is not None:
        return "URL has no valid host"
    if port == 0:
        return "URL port must not be 0"
    return None


def _check_multiaddr(value: str, *, need_peer: bool) -> str | None:
    from multiaddr import Multiaddr as MultiaddrValue

    try:
        ma = MultiaddrValue(value)
        protos = [p.name for p in ma.protocols()]
    except Exception as exc:  # noqa: BLE001 - the multiaddr package raises many unrelated types for bad input
        return f"not a valid multiaddr ({type(exc).__name__}: {exc})"
    if not protos or protos[0] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        return "multiaddr must start with /ip4, /ip6 or /dns"
    if len(protos) < 2 or protos[1] != "tcp":
        return "multiaddr must use /tcp (the relayer speaks TCP + Noise)"
    if need_peer:
        if protos[-1] != "p2p":
            return "bootstrap multiaddr must end in /p2p/<peer id>"
        from relayer.keys import check_peer_id

        problem = check_peer_id(ma.value_for_protocol("p2p"))
        if problem:
            return problem
    elif "p2p" in protos:
        return "listen multiaddr must not name a peer id"
    return None


_NEWTYPE_CHECKS: dict[object, Callable[[str], str | None]] = {
    EthAddress: check_eth_address,
    Multiaddr: lambda v: _check_multiaddr(v, need_peer=False),
    PeerAddr: lambda v: _check_multiaddr(v, need_peer=True),
    HttpUrl: lambda v: _check_url(v, ("http", "https")),
    WsUrl: lambda v: _check_url(v, ("ws", "wss")),
    Host: check_host,
    LoggerName: lambda v: None if _LOGGER.match(v) else "must be a dotted logger name such as relayer.p2p",
}


# --------------------------------------------------------------------------------------------------------------------
# The generic parser.


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path or '(top level)'}: {message}")


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, Path) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str or isinstance(tp, NewType):
        return "a string"
    if tp is Path:
        return "a path (string)"
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(inner[0]) + " or null"
    if origin is tuple:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    return str(tp)


def _parse_value(tp: Any, raw: Any, path: str, meta: Mapping[str, Any], base: Path, problems: _Problems) -> Any:
    """Convert ``raw`` (decoded JSON) to ``tp``; record a problem and return None on failure."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(inner[0], raw, path, meta, base, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(raw, dict):
            problems.add(path, f"must be an object, got {_describe(raw)}")
            return None
        return _parse_section(tp, raw, path, base, problems)  # type: ignore[arg-type]
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(raw, list):
            problems.add(path, f"must be a list, got {_describe(raw)}")
            return None
        if len(raw) < meta.get("min_items", 0):
            problems.add(path, f"needs at least {meta['min_items']} item(s)")
            return None
        items = [_parse_value(item_tp, item, f"{path}[{i}]", {}, base, problems) for i, item in enumerate(raw)]
        return tuple(items)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(raw, dict):
            problems.add(path, f"must be an object, got {_describe(raw)}")
            return None
        out: dict[Any, Any] = {}
        for k, v in raw.items():
            if k.startswith(COMMENT_PREFIX):
                continue
            kp = f"{path}.{k}"
            key = _parse_value(key_tp, k, kp, {}, base, problems)
            out[key] = _parse_value(val_tp, v, kp, {}, base, problems)
        return out
    if origin is Literal:
        allowed = typing.get_args(tp)
        if raw not in allowed or isinstance(raw, bool):
            problems.add(path, f"must be one of {', '.join(json.dumps(a) for a in allowed)}, got {_describe(raw)}")
            return None
        return raw
    if tp is bool:
        if not isinstance(raw, bool):
            problems.add(path, f"must be true or false, got {_describe(raw)}")
            return None
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            problems.add(path, f"must be an integer, got {_describe(raw)}")
            return None
        lo, hi = meta.get("lo"), meta.get("hi")
        if (lo is not None and raw < lo) or (hi is not None and raw > hi):
            problems.add(path, f"must be between {lo} and {hi}, got {raw}")
            return None
        return raw
    if tp is Path:
        if not isinstance(raw, str) or not raw:
            problems.add(path, f"must be a non-empty path string, got {_describe(raw)}")
            return None
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (base / p)
    if tp is str or isinstance(tp, NewType):
        if not isinstance(raw, str):
            problems.add(path, f"must be a string, got {_describe(raw)}")
            return None
        pattern = meta.get("pattern")
        if pattern and not re.match(pattern, raw):
            problems.add(path, f"{_describe(raw)} does not match {pattern}")
            return None
        check = _NEWTYPE_CHECKS.get(tp)
        problem = check(raw) if check else None
        if problem:
            problems.add(path, f"{problem}, got {_describe(raw)}")
            return None
        return raw
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {path}")  # a bug in this module


_T = TypeVar("_T")


def _parse_section(cls: type[_T], raw: dict[str, Any], path: str, base: Path, problems: _Problems) -> _T | None:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    prefix = f"{path}." if path else ""
    for key in raw:
        if key not in fields and not key.startswith(COMMENT_PREFIX):
            near = _nearest(key, fields)
            hint = f" (did you mean {near!r}?)" if near else ""
            problems.add(f"{prefix}{key}", f"unknown key{hint}")
    values: dict[str, Any] = {}
    ok = True
    for name, f in fields.items():
        if name in raw:
            before = len(problems.items)
            values[name] = _parse_value(hints[name], raw[name], prefix + name, f.metadata, base, problems)
            ok = ok and len(problems.items) == before
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.add(prefix + name, "is required")
            ok = False
        elif isinstance(f.default, Path):
            values[name] = base / f.default
        elif dataclasses.is_dataclass(f.default):
            # A whole section left out: parse its defaults so relative paths resolve against the config dir.
            values[name] = _parse_section(type(f.default), {}, prefix + name, base, problems)
    if not ok:
        return None
    return cls(**values)


def _nearest(key: str, names: Mapping[str, object]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
    return found[0] if found else None


def _cross_checks(cfg: Config, problems: _Problems) -> None:
    q, o = cfg.quorum, cfg.orders
    if q.round_timeout_max_ms < q.round_timeout_ms:
        problems.add("quorum.round_timeout_max_ms", f"must be >= quorum.round_timeout_ms ({q.round_timeout_ms})")
    if o.ioc_window_s <= q.batch_deadline_delta_s:
        problems.add(
            "orders.ioc_window_s",
            f"must exceed quorum.batch_deadline_delta_s ({q.batch_deadline_delta_s}) so an IOC order is "
            "eligible for at least one batch",
        )
    if cfg.worker.max_priority_fee_per_gas_wei > cfg.worker.max_fee_per_gas_wei:
        problems.add("worker.max_priority_fee_per_gas_wei", "must be <= worker.max_fee_per_gas_wei")
    seen_ids: dict[int, int] = {}
    seen_symbols: dict[str, int] = {}
    for i, m in enumerate(cfg.markets):
        if m.id in seen_ids:
            problems.add(f"markets[{i}].id", f"duplicates markets[{seen_ids[m.id]}].id ({m.id})")
        seen_ids.setdefault(m.id, i)
        if m.symbol in seen_symbols:
            problems.add(f"markets[{i}].symbol", f"duplicates markets[{seen_symbols[m.symbol]}].symbol")
        seen_symbols.setdefault(m.symbol, i)
    for name, values in (
        ("p2p.listen", cfg.p2p.listen),
        ("p2p.bootstrap", cfg.p2p.bootstrap),
        ("chain.rpc_http", cfg.chain.rpc_http),
        ("chain.rpc_ws", cfg.chain.rpc_ws),
    ):
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            problems.add(name, f"lists {dup[0]!r} more than once")
    if cfg.keys.gas_keystore is not None and cfg.keys.gas_keystore == cfg.keys.keystore:
        problems.add("keys.gas_keystore", "is the relayer keystore itself; leave it null to pay gas with that key")


# --------------------------------------------------------------------------------------------------------------------
# Environment overrides.


def _field_type(path: list[str]) -> Any | None:
    """The declared type at a dotted path of the schema, or None if there is no such key."""
    tp: Any = Config
    for part in path:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _is_texty(tp: Any) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (types.UnionType, typing.Union) else (tp,)
    return any(a is str or a is Path or isinstance(a, NewType) or typing.get_origin(a) is Literal for a in args)


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str], problems: _Problems) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``RELAYER__A__B=value`` applied to key ``a.b``."""
    out: dict[str, Any] = json.loads(json.dumps(raw))
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        dotted = ".".join(parts)
        tp = _field_type(parts)
        if tp is None or not parts[-1]:
            problems.add(f"{dotted} (from ${var})", "unknown key")
            continue
        text = env[var]
        value: Any
        if _is_texty(tp) and not text.startswith('"') and text != "null":
            value = text
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                problems.add(f"{dotted} (from ${var})", f"value is not valid JSON: {text[:40]!r}")
                continue
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------------------------------------------------
# Entry points.


def parse_config(raw: Any, *, base_dir: Path, source: str = "config", env: Mapping[str, str] | None = None) -> Config:
    """Parse decoded JSON into a :class:`Config`, raising :class:`ConfigError` listing every problem."""
    problems = _Problems()
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"(top level): must be a JSON object, got {_describe(raw)}"])
    if env is not None:
        raw = apply_env_overrides(raw, env, problems)
    cfg = _parse_section(Config, raw, "", base_dir.resolve(), problems)
    if cfg is not None:
        _cross_checks(cfg, problems)
    if problems.items or cfg is None:
        raise ConfigError(source, problems.items)
    return cfg


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment (``os.environ`` unless ``env`` is given) and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), ["(file): does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"(file): cannot be read: {exc}"]) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            str(p), [f"(file): not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    return parse_config(raw, base_dir=p.parent, source=str(p), env=os.environ if env is None else env)


def to_json(cfg: Any) -> Any:
    """The effective configuration as plain JSON data (paths as strings)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_json(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_json(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_json(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Documentation generated from the schema (docs/config.md and `relayer config docs`).


def iter_settings(
    cls: type[Any] = Config, prefix: str = ""
) -> typing.Iterator[tuple[str, Any, dataclasses.Field[Any]]]:
    """Yield (dotted path, type, field) for every leaf setting, depth first in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from iter_settings(tp, path + ".")  # type: ignore[arg-type]
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield path, tp, f
            yield from iter_settings(typing.get_args(tp)[0], path + "[].")
        else:
            yield path, tp, f


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return "`" + json.dumps(to_json(f.default)) + "`"
    if f.default_factory is not dataclasses.MISSING:
        return "`" + json.dumps(to_json(f.default_factory())) + "`"
    return "**required**"


def render_docs() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `relayer/config.py` by `relayer config docs` (`make docs`); do not edit by hand.",
        "",
        "The node reads one JSON file (`relayer run --config FILE`, check it with `relayer config check FILE`).",
        "Unknown keys are errors; keys starting with `//` are comments. Relative paths are resolved against the",
        "directory of the config file. Any key can be overridden from the environment: `section.key` is",
        f"`{ENV_PREFIX}SECTION__KEY` (for example `{ENV_PREFIX}API__PORT=8081`,",
        f"`{ENV_PREFIX}CHAIN__RPC_HTTP='[\"http://10.0.0.2:8545\"]'`); values are JSON, and text settings also take",
        "a bare string. The key itself is never in the config: it comes from the encrypted keystore named by",
        "`keys.keystore` (password from the variable named by `keys.password_env`, or a prompt), or, for",
        "development only, from the `RELAYER_PRIVATE_KEY` environment variable (hex).",
        "",
        "| key | type | default | range | meaning |",
        "|---|---|---|---|---|",
    ]
    for path, tp, f in iter_settings():
        meta = f.metadata
        rng = ""
        if meta.get("lo") is not None:
            rng = f"{meta['lo']:,} .. {meta['hi']:,}".replace(",", "_")
        elif meta.get("pattern"):
            rng = f"`{meta['pattern']}`"
        if meta.get("min_items"):
            rng = f"at least {meta['min_items']} item(s)"
        doc = meta["doc"].replace("|", "\\|")
        lines.append(f"| `{path}` | {_type_name(tp)} | {_default_text(f)} | {rng} | {doc} |")
    return "\n".join(lines) + "\n"


def example_config(cls: type[Any] = Config) -> dict[str, Any]:
    """A complete example config: every key with its default (or example) value, preceded by a "//key" comment."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    if cls is Config:
        out["//"] = (
            "perp-relayer node configuration. Every key is listed with its default; keys starting with // "
            "are comments. Reference: docs/config.md or `relayer config docs`."
        )
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out[f"//{f.name}"] = f.metadata["doc"]
        if dataclasses.is_dataclass(tp):
            out[f.name] = example_config(tp)  # type: ignore[arg-type]
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out[f.name] = [example_config(typing.get_args(tp)[0])]
        elif f.metadata.get("example", _NO_DEFAULT) is not _NO_DEFAULT:
            out[f.name] = f.metadata["example"]
        elif f.default is not dataclasses.MISSING:
            out[f.name] = to_json(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_json(f.default_factory())
        else:  # pragma: no cover - every required key declares an example
            raise TypeError(f"required key {f.name} of {cls.__name__} has no example")
    return out


def render_example() -> str:
    return json.dumps(example_config(), indent=2) + "\n"
