"""The chain model: the exchange contract's state as its events tell it (docs/contracts.md "Events").

A :class:`ChainModel` is built only from decoded exchange events (``bindings.exchange``), applied block by block in
log order. It holds what the matcher reads (:class:`~relayer.matcher.model.ChainState`: markets with oracle price and
funding index, accounts, fill counters per (trader, salt), on-chain cancels, ``cancelUpTo`` salts) and what the quorum
needs (last settled seq and its batch hash, relayer sets with their threshold and the set version in force, the last
applied block).

``OrderFilled`` carries both traders' balances and position sizes after the fill but not the position's cost or
funding index: those are computed with :mod:`relayer.margin` (bit for bit with the contract) and the computed balance,
size and fee are cross-checked against the event. A mismatch is logged loudly and counted (``fill_mismatch``); the
event's values win for what it carries. ``Deposited``, ``Withdrawn`` and ``FundingUpdated`` are cross-checked the same
way.

Canonical form: the model is a set of entries ``(key, value)`` (:meth:`ChainModel.entries`), each key a kind byte
and big-endian id, each value a canonical map (relayer/store/codec.py). Equal models give equal entries, byte for
byte, so :meth:`ChainModel.state_hash` lets two nodes compare; the processor stores the final model as exactly these
entries (keyspace CHAIN) and rewrites only the entries a finalized block changed (:attr:`ChainModel.dirty`).

Entries (an absent entry is the zero value: an empty account, no fills and not cancelled, ``cancelUpTo`` 0):

====  =====================================  ===============================================================
kind  id                                     value
====  =====================================  ===============================================================
``g`` (none)                                 globals: last seq, batch hash, set versions, relayer sets, block
``m`` market id (u32)                        market parameters, oracle price, funding index
``a`` trader (20 bytes)                      balance (scaled) and open positions (size, cost, funding index)
``o`` trader (20 bytes) + salt (u64)         fill counter and on-chain cancel of (trader, salt)
``u`` trader (20 bytes)                      ``cancelUpTo`` salt
====  =====================================  ===============================================================
"""

from __future__ import annotations

import functools
import hashlib
import logging
import struct
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from eth_utils.address import to_checksum_address

from bindings import exchange as ex
from relayer import margin
from relayer.errors import RelayerError
from relayer.margin import Account, Position
from relayer.matcher.model import ChainState
from relayer.store import codec
from relayer.types import Address, Hash32, Salt
from relayer.watcher.events import BlockRef, ChainLog

__all__ = [
    "ChainModel",
    "ChainModelError",
    "MarketInfo",
    "RelayerSet",
    "checksum",
    "decode_logs",
    "encode_logs",
]

log = logging.getLogger("relayer.chainstate")

ZERO32 = Hash32(b"\x00" * 32)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

GLOBALS = b"g"
MARKET = b"m"
ACCOUNT = b"a"
ORDER = b"o"
UP_TO = b"u"


class ChainModelError(RelayerError):
    """A stored chain model entry or block log that does not decode."""


@functools.lru_cache(maxsize=65_536)
def checksum(address: str) -> Address:
    """The EIP-55 form the model keys traders by (cached: events repeat the same few addresses)."""
    return Address(to_checksum_address(address))


def _addr20(address: str) -> bytes:
    raw = bytes.fromhex(address[2:] if address[:2] in ("0x", "0X") else address)
    if len(raw) != 20:
        raise ValueError(f"not a 20-byte address: {address!r}")
    return raw


@dataclass(frozen=True, slots=True)
class MarketInfo:
    """A market as the contract stores it: parameters, oracle price (0 = none yet) and funding index."""

    params: ex.MarketParams
    oracle_price: int = 0
    funding_index: int = 0

    def to_margin(self) -> margin.MarketParams | None:
        """The matcher's :class:`~relayer.margin.MarketParams`; None while the market has no oracle price (the
        contract skips its fills: MARKET_MISMATCH) or when its values are outside what relayer.margin accepts (an
        oracle price above a lowered ``maxPrice``): then the matcher leaves the market alone."""
        if self.oracle_price == 0:
            return None
        p = self.params
        try:
            return margin.MarketParams(
                imr=p.imr,
                mmr=p.mmr,
                maker_fee=p.maker_fee,
                taker_fee=p.taker_fee,
                liq_penalty=p.liq_penalty,
                oracle_price=self.oracle_price,
                funding_index=self.funding_index,
                tick=p.tick,
                min_size=p.min_size,
                max_order_size=p.max_order_size,
                max_position=p.max_position,
                max_price=p.max_price,
                # a uint64 on chain; |delta| of an int64 never exceeds 2**63, so the cap changes nothing
                max_funding_delta=min(p.max_funding_delta, margin.INT64_MAX),
            )
        except margin.MarginError as exc:
            log.warning("market parameters outside relayer.margin's bounds, hidden from the matcher: %s", exc)
            return None


@dataclass(frozen=True, slots=True)
class RelayerSet:
    version: int
    members: tuple[Address, ...]
    threshold: int


# ------------------------------------------------------------------------------------------------------ the model


class ChainModel:
    """The contract's state rebuilt from its events. Mutable; apply blocks with :meth:`apply_block`.

    ``counters`` (when set) counts anomalies (cross-check mismatches, events that cannot apply); only the view that
    first applies a block should count, so a block folded into the final view later is not counted twice.
    """

    def __init__(self) -> None:
        self.markets: dict[int, MarketInfo] = {}
        self.accounts: dict[Address, Account] = {}
        self.filled: dict[tuple[Address, Salt], int] = {}
        self.cancelled: set[tuple[Address, Salt]] = set()
        self.cancelled_up_to: dict[Address, int] = {}
        self.last_seq = 0
        self.last_batch_hash = ZERO32
        self.set_version = 0
        self.active_set_version = 0
        self.relayer_sets: dict[int, RelayerSet] = {}
        self.block: BlockRef | None = None
        self.dirty: set[bytes] | None = None
        """Entry keys changed since tracking started (None: not tracking)."""
        self.counters: Counter[str] | None = None
        self._view: ChainState | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            ex.OrderFilledEvent: self._order_filled,
            ex.AccountUpdatedEvent: self._account_updated,
            ex.DepositedEvent: self._deposited,
            ex.WithdrawnEvent: self._withdrawn,
            ex.OrderCancelledEvent: self._order_cancelled,
            ex.CancelledUpToEvent: self._cancelled_up_to,
            ex.MarketCreatedEvent: self._market_created,
            ex.MarketUpdatedEvent: self._market_updated,
            ex.OraclePriceEvent: self._oracle_price,
            ex.FundingUpdatedEvent: self._funding_updated,
            ex.BatchSettledEvent: self._batch_settled,
            ex.RelayersUpdatedEvent: self._relayers_updated,
        }

    # -------------------------------------------------------------------------------------------- reads

    @property
    def relayer_set(self) -> RelayerSet | None:
        """The set that governs the next batch (``seq = last_seq + 1``): the one in force when the last landed."""
        return self.relayer_sets.get(self.active_set_version)

    def account(self, trader: str) -> Account:
        acc = self.accounts.get(checksum(trader))
        return Account(0) if acc is None else acc

    def chain_state(self) -> ChainState:
        """What the matcher reads: a frozen copy (cached until the model changes)."""
        if self._view is None:
            markets = {}
            for mid, info in self.markets.items():
                params = info.to_margin()
                if params is not None:
                    markets[mid] = params
            self._view = ChainState(
                markets=markets,
                accounts=dict(self.accounts),
                filled=dict(self.filled),
                cancelled=frozenset(self.cancelled),
                cancelled_up_to=dict(self.cancelled_up_to),
            )
        return self._view

    def copy(self) -> ChainModel:
        """An independent copy (values are immutable, so the maps are copied shallowly); no tracking, no counters."""
        m = ChainModel()
        m.markets = dict(self.markets)
        m.accounts = dict(self.accounts)
        m.filled = dict(self.filled)
        m.cancelled = set(self.cancelled)
        m.cancelled_up_to = dict(self.cancelled_up_to)
        m.last_seq, m.last_batch_hash = self.last_seq, self.last_batch_hash
        m.set_version, m.active_set_version = self.set_version, self.active_set_version
        m.relayer_sets = dict(self.relayer_sets)
        m.block = self.block
        return m

    # -------------------------------------------------------------------------------------------- applying

    def apply_block(self, block: BlockRef, logs: Iterable[ChainLog]) -> None:
        """Apply one block's decoded logs in order (logs whose event is None are skipped) and make it the last
        applied block."""
        for entry in logs:
            if entry.event is not None:
                self.apply_event(entry.event, where=f"block {block.number} log {entry.log_index}")
        self.set_block(block)

    def set_block(self, block: BlockRef) -> None:
        self.block = block
        self._touch(GLOBALS)

    def apply_event(self, event: Any, *, where: str = "") -> None:
        handler = self._handlers.get(type(event))
        if handler is None:  # FillSkipped, Liquidated, FeesWithdrawn, OwnerChanged, OracleChanged: no state here
            return
        try:
            handler(event)
        except (margin.MarginError, ValueError, TypeError) as exc:
            self._anomaly("bad_event", f"{type(event).__name__} at {where} cannot apply, ignored: {exc}")
        self._view = None

    def _anomaly(self, kind: str, message: str) -> None:
        if self.counters is not None:
            self.counters[kind] += 1
            log.error("chain event anomaly (%s): %s", kind, message)

    def _touch(self, key: bytes) -> None:
        if self.dirty is not None:
            self.dirty.add(key)
        self._view = None

    def _set_account(self, trader: Address, account: Account) -> None:
        if account.balance == 0 and not account.positions:
            self.accounts.pop(trader, None)
        else:
            self.accounts[trader] = account
        self._touch(ACCOUNT + _addr20(trader))

    def _set_filled(self, trader: Address, salt: int, amount: int) -> None:
        key = (trader, Salt(salt))
        if amount:
            self.filled[key] = amount
        else:
            self.filled.pop(key, None)
        self._touch(ORDER + _addr20(trader) + _U64.pack(salt))

    def _market(self, market: int) -> MarketInfo | None:
        info = self.markets.get(market)
        if info is None:
            self._anomaly("unknown_market", f"event for market {market}, which no MarketCreated made")
        return info

    def _side(
        self, e: ex.OrderFilledEvent, trader: Address, q: int, rate: int, index: int, want: tuple[int, int, int]
    ) -> Account:
        """One trader's side of a fill, computed with relayer.margin and cross-checked against (fee, balance, size)
        of the event; the event's balance and size win."""
        account = self.account(trader)
        _, balance, size = want
        cost: int | None
        try:
            trade = margin.apply_trade(account, e.market, index, q, e.price, rate)
            pos = trade.account.position(e.market, index)
            got = (trade.fee, trade.account.balance, pos.size)
            cost = pos.cost
        except margin.MarginError as exc:
            got, cost = (-1, -1, -1), None
            self._anomaly("fill_mismatch", f"seq {e.seq} fill {e.fill_index}: relayer.margin refused: {exc}")
        if got != want:
            self._anomaly(
                "fill_mismatch",
                f"seq {e.seq} fill {e.fill_index} {trader}: computed (fee, balance, size) {got} != event {want}",
            )
            if cost is None or got[2] != size:
                cost = size * e.price  # the entry cost is unknown: mark the position at the fill price
        assert cost is not None
        return account.with_position(e.market, Position(size, cost if size else 0, index), balance)

    def _order_filled(self, e: ex.OrderFilledEvent) -> None:
        info = self._market(e.market)
        index = info.funding_index if info is not None else 0
        maker_rate = info.params.maker_fee if info is not None else 0
        taker_rate = info.params.taker_fee if info is not None else 0
        maker, taker = checksum(e.maker), checksum(e.taker)
        taker_q = e.amount if e.taker_side == 0 else -e.amount
        maker_after = self._side(e, maker, -taker_q, maker_rate, index, (e.maker_fee, e.maker_balance, e.maker_size))
        self._set_account(maker, maker_after)
        taker_after = self._side(e, taker, taker_q, taker_rate, index, (e.taker_fee, e.taker_balance, e.taker_size))
        self._set_account(taker, taker_after)
        self._set_filled(maker, e.maker_salt, e.maker_filled)
        self._set_filled(taker, e.taker_salt, e.taker_filled)

    def _account_updated(self, e: ex.AccountUpdatedEvent) -> None:
        trader = checksum(e.trader)
        position = Position(e.size, e.cost if e.size else 0, e.funding_index)
        self._set_account(trader, self.account(trader).with_position(e.market, position, e.balance))

    def _deposited(self, e: ex.DepositedEvent) -> None:
        trader = checksum(e.trader)
        account = self.account(trader)
        if account.balance + e.amount * margin.SIZE_ONE != e.balance:
            self._anomaly("balance_mismatch", f"Deposited {trader}: {account.balance} + {e.amount} != {e.balance}")
        self._set_account(trader, Account(e.balance, account.positions))

    def _withdrawn(self, e: ex.WithdrawnEvent) -> None:
        trader = checksum(e.trader)
        account = self.account(trader)
        if account.balance - e.amount * margin.SIZE_ONE != e.balance:
            self._anomaly("balance_mismatch", f"Withdrawn {trader}: {account.balance} - {e.amount} != {e.balance}")
        self._set_account(trader, Account(e.balance, account.positions))

    def _order_cancelled(self, e: ex.OrderCancelledEvent) -> None:
        trader = checksum(e.trader)
        self.cancelled.add((trader, Salt(e.salt)))
        self._touch(ORDER + _addr20(trader) + _U64.pack(e.salt))

    def _cancelled_up_to(self, e: ex.CancelledUpToEvent) -> None:
        trader = checksum(e.trader)
        if e.salt:
            self.cancelled_up_to[trader] = e.salt
        else:
            self.cancelled_up_to.pop(trader, None)
        self._touch(UP_TO + _addr20(trader))

    def _market_created(self, e: ex.MarketCreatedEvent) -> None:
        if e.market in self.markets:
            self._anomaly("market_exists", f"MarketCreated for existing market {e.market}: parameters replaced")
            self.markets[e.market] = MarketInfo(e.params, self.markets[e.market].oracle_price)
        else:
            self.markets[e.market] = MarketInfo(e.params)
        self._touch(MARKET + _U32.pack(e.market))

    def _market_updated(self, e: ex.MarketUpdatedEvent) -> None:
        info = self._market(e.market) or MarketInfo(e.params)
        self.markets[e.market] = MarketInfo(e.params, info.oracle_price, info.funding_index)
        self._touch(MARKET + _U32.pack(e.market))

    def _oracle_price(self, e: ex.OraclePriceEvent) -> None:
        info = self._market(e.market)
        if info is not None:
            self.markets[e.market] = MarketInfo(info.params, e.price, info.funding_index)
            self._touch(MARKET + _U32.pack(e.market))

    def _funding_updated(self, e: ex.FundingUpdatedEvent) -> None:
        info = self._market(e.market)
        if info is not None:
            if info.funding_index + e.delta != e.index:
                self._anomaly(
                    "funding_mismatch", f"market {e.market}: {info.funding_index} + {e.delta} != index {e.index}"
                )
            self.markets[e.market] = MarketInfo(info.params, info.oracle_price, e.index)
            self._touch(MARKET + _U32.pack(e.market))

    def _batch_settled(self, e: ex.BatchSettledEvent) -> None:
        if e.seq != self.last_seq + 1:
            self._anomaly("seq_gap", f"BatchSettled seq {e.seq} after seq {self.last_seq}")
        self.last_seq = e.seq
        self.last_batch_hash = Hash32(bytes(e.batch_hash))
        self.active_set_version = self.set_version  # the set in force now governs the next batch
        for version in [v for v in self.relayer_sets if v < self.active_set_version]:
            del self.relayer_sets[version]
        self._touch(GLOBALS)

    def _relayers_updated(self, e: ex.RelayersUpdatedEvent) -> None:
        self.relayer_sets[e.version] = RelayerSet(e.version, tuple(checksum(m) for m in e.members), e.threshold)
        self.set_version = e.version
        if self.active_set_version == 0:  # the constructor's set governs batch 1
            self.active_set_version = e.version
        self._touch(GLOBALS)

    # -------------------------------------------------------------------------------------------- canonical form

    def entry_value(self, key: bytes) -> bytes | None:
        """The encoded value of entry ``key`` now (None: the entry is absent, i.e. the zero value)."""
        kind = key[:1]
        if kind == GLOBALS:
            b = self.block
            return codec.pack(
                {
                    "seq": self.last_seq,
                    "batch": self.last_batch_hash,
                    "version": self.set_version,
                    "active": self.active_set_version,
                    "sets": [[s.version, list(s.members), s.threshold] for _, s in sorted(self.relayer_sets.items())],
                    "block": None if b is None else [b.number, b.hash, b.parent_hash, b.timestamp],
                }
            )
        if kind == MARKET:
            info = self.markets.get(_U32.unpack_from(key, 1)[0])
            if info is None:
                return None
            return codec.pack(
                {"params": list(info.params.to_abi()), "price": info.oracle_price, "index": info.funding_index}
            )
        trader = checksum("0x" + key[1:21].hex())
        if kind == ACCOUNT:
            acc = self.accounts.get(trader)
            if acc is None:
                return None
            positions = [[m, p.size, p.cost, p.funding_index] for m, p in sorted(acc.positions.items())]
            return codec.pack({"balance": acc.balance, "positions": positions})
        if kind == ORDER:
            okey = (trader, Salt(_U64.unpack_from(key, 21)[0]))
            amount, cancelled = self.filled.get(okey, 0), okey in self.cancelled
            if not amount and not cancelled:
                return None
            return codec.pack({"filled": amount, "cancelled": cancelled})
        if kind == UP_TO:
            salt = self.cancelled_up_to.get(trader, 0)
            return None if not salt else codec.pack({"salt": salt})
        raise ValueError(f"unknown chain entry kind {kind!r}")

    def entry_keys(self) -> list[bytes]:
        keys = [GLOBALS]
        keys += [MARKET + _U32.pack(m) for m in self.markets]
        keys += [ACCOUNT + _addr20(a) for a in self.accounts]
        orders = set(self.filled) | self.cancelled
        keys += [ORDER + _addr20(t) + _U64.pack(s) for t, s in orders]
        keys += [UP_TO + _addr20(t) for t in self.cancelled_up_to]
        keys.sort()
        return keys

    def entries(self) -> Iterator[tuple[bytes, bytes]]:
        """Every present entry as (key, value), in key order: the canonical form of the model."""
        for key in self.entry_keys():
            value = self.entry_value(key)
            if value is not None:
                yield key, value

    def state_hash(self) -> bytes:
        """sha256 over the canonical entries: equal models have equal hashes on every node."""
        h = hashlib.sha256(b"perp-relayer chain model v1")
        for key, value in self.entries():
            h.update(struct.pack(">II", len(key), len(value)))
            h.update(key)
            h.update(value)
        return h.digest()

    @classmethod
    def from_entries(cls, items: Iterable[tuple[bytes, bytes]]) -> ChainModel:
        """The model whose canonical entries are ``items`` (as stored); :class:`ChainModelError` if one does not
        decode."""
        m = cls()
        for key, value in items:
            try:
                m._load_entry(key, codec.unpack(value))
            except (codec.DecodeError, ValueError, TypeError, KeyError, IndexError, margin.MarginError) as exc:
                raise ChainModelError(f"chain entry 0x{key.hex()} does not decode: {exc}") from None
        m._view = None
        return m

    def _load_entry(self, key: bytes, v: Any) -> None:
        kind = key[:1]
        if not isinstance(v, dict):
            raise TypeError("an entry is a map")
        if kind == GLOBALS:
            self.last_seq, self.last_batch_hash = int(v["seq"]), Hash32(bytes(v["batch"]))
            self.set_version, self.active_set_version = int(v["version"]), int(v["active"])
            for version, members, threshold in v["sets"]:
                self.relayer_sets[version] = RelayerSet(version, tuple(checksum(a) for a in members), threshold)
            b = v["block"]
            self.block = None if b is None else BlockRef(int(b[0]), Hash32(bytes(b[1])), Hash32(bytes(b[2])), int(b[3]))
            return
        if kind == MARKET:
            self.markets[_U32.unpack_from(key, 1)[0]] = MarketInfo(
                ex.MarketParams.from_abi(v["params"]), int(v["price"]), int(v["index"])
            )
            return
        if len(key) < 21:
            raise ValueError("short entry key")
        trader = checksum("0x" + key[1:21].hex())
        if kind == ACCOUNT:
            positions = {int(p[0]): Position(int(p[1]), int(p[2]), int(p[3])) for p in v["positions"]}
            self.accounts[trader] = Account(int(v["balance"]), positions)
        elif kind == ORDER:
            okey = (trader, Salt(_U64.unpack_from(key, 21)[0]))
            if v["filled"]:
                self.filled[okey] = int(v["filled"])
            if v["cancelled"] is True:
                self.cancelled.add(okey)
        elif kind == UP_TO:
            self.cancelled_up_to[trader] = int(v["salt"])
        else:
            raise ValueError(f"unknown entry kind {kind!r}")


# ------------------------------------------------------------------------------------------------------ block logs

_EVENT_CLASSES: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(ex.ExchangeEvent)}
_STRUCTS: dict[str, type] = {"MarketParams": ex.MarketParams}


def _encode_value(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return {"t": type(v).__name__, "f": [_encode_value(getattr(v, f.name)) for f in fields(v)]}
    if isinstance(v, tuple | list):
        return [_encode_value(x) for x in v]
    if isinstance(v, bool | int | bytes | str):
        return v
    raise TypeError(f"cannot encode a {type(v).__name__} in a log")


def _decode_value(v: Any, classes: dict[str, type]) -> Any:
    if isinstance(v, dict):
        cls = classes.get(v["t"]) or _STRUCTS.get(v["t"])
        if cls is None:
            raise ValueError(f"unknown type {v['t']!r}")
        return cls(*[_decode_value(x, _STRUCTS) for x in v["f"]])
    if isinstance(v, list):
        return tuple(_decode_value(x, _STRUCTS) for x in v)
    return v


def encode_logs(logs: Iterable[ChainLog]) -> bytes:
    """A block's decoded logs in the canonical encoding (BlockRecord.logs); undecodable logs (event None) are kept
    out."""
    rows = [
        [entry.tx_hash, entry.tx_index, entry.log_index, _encode_value(entry.event)]
        for entry in logs
        if entry.event is not None
    ]
    return codec.pack(rows)


def _log_rows(number: int, block_hash: Hash32, data: bytes) -> tuple[ChainLog, ...]:
    rows = codec.unpack(data)
    if not isinstance(rows, list):
        raise TypeError("logs are a list")
    out = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 4:
            raise TypeError("malformed log row")
        tx_hash, tx_index, log_index, event = row
        if not isinstance(event, dict) or event.get("t") not in _EVENT_CLASSES:
            raise TypeError("not an exchange event")
        out.append(
            ChainLog(
                number,
                block_hash,
                Hash32(bytes(tx_hash)),  # type: ignore[arg-type]
                int(tx_index),  # type: ignore[arg-type]
                int(log_index),  # type: ignore[arg-type]
                _decode_value(event, _EVENT_CLASSES),
            )
        )
    return tuple(out)


def decode_logs(number: int, block_hash: Hash32, data: bytes) -> tuple[ChainLog, ...]:
    """The logs :func:`encode_logs` encoded, as ChainLogs of block (number, hash); ChainModelError if malformed."""
    try:
        return _log_rows(number, block_hash, data)
    except (codec.DecodeError, ValueError, TypeError, KeyError) as exc:
        raise ChainModelError(f"logs of block {number} 0x{block_hash.hex()} do not decode: {exc}") from None
