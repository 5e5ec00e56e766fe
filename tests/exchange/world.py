"""A deployed exchange on a real anvil, with relayers, traders and helpers to sign orders and settle batches.

Used by the contract tests and the gas benchmark. Keys are derived deterministically from labels (test keys only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eth_utils import keccak

from bindings import exchange as ex
from relayer import eip712, margin
from relayer.chain.anvil import AnvilControl
from relayer.chain.deploy import Deployment, default_market_params, deploy_exchange, fund_trader, token_balance
from relayer.chain.rpc import JsonRpc
from relayer.chain.tx import Receipt, Signer, call, send
from relayer.types import Order

MARKET = 1
PRICE = 2_000 * 10**6  # 2,000 collateral units (6 decimals) per whole base unit
ONE = margin.SIZE_ONE
FAR = 2**32 - 1  # an expiry far in the future


def test_key(label: str) -> bytes:
    return keccak(text=f"perp-relayer test key {label}")


@dataclass
class Party:
    label: str
    signer: Signer
    salt: int = 1

    @property
    def address(self) -> str:
        return self.signer.address

    @property
    def key(self) -> bytes:
        return self.signer._key

    def next_salt(self) -> int:
        self.salt += 1
        return self.salt


@dataclass
class Settled:
    receipt: Receipt
    events: list[Any]
    digest: bytes

    def of(self, cls: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    @property
    def skipped(self) -> list[int]:
        return [e.reason for e in self.of(ex.FillSkippedEvent)]

    @property
    def filled(self) -> list[ex.OrderFilledEvent]:
        return self.of(ex.OrderFilledEvent)


@dataclass
class World:
    rpc: JsonRpc
    control: AnvilControl
    chain_id: int
    deployment: Deployment
    owner: Party
    oracle: Party
    relayers: list[Party]  # sorted by address (the order signatures must come in)
    threshold: int
    domain: eip712.Domain
    traders: dict[str, Party] = field(default_factory=dict)
    seq: int = 0
    last_hash: bytes = b"\0" * 32
    set_version: int = 1
    rpc_url: str = ""

    # ------------------------------------------------------------------------------------------ setup
    @classmethod
    async def create(
        cls, rpc: JsonRpc, control: AnvilControl, chain_id: int, *, relayers: int = 4, threshold: int = 3
    ) -> World:
        def party(label: str) -> Party:
            return Party(label, Signer(test_key(label), chain_id))

        owner, oracle = party("owner"), party("oracle")
        for p in (owner, oracle):
            await control.set_balance(p.address, 10**24)
        rel = sorted((party(f"relayer-{i}") for i in range(relayers)), key=lambda p: int(p.address, 16))
        deployment = await deploy_exchange(
            rpc,
            owner.signer,
            oracle=oracle.signer,
            relayers=[r.address for r in rel],
            threshold=threshold,
            markets={MARKET: (default_market_params(), PRICE)},
        )
        domain = eip712.Domain(chain_id=chain_id, verifying_contract=deployment.exchange)
        return cls(rpc, control, chain_id, deployment, owner, oracle, rel, threshold, domain)

    @classmethod
    async def create_from(cls, rpc: JsonRpc, control: AnvilControl, chain_id: int, deployment: object) -> World:
        """A world over an exchange :meth:`create` deployed earlier (same deterministic keys)."""
        assert isinstance(deployment, Deployment)

        def party(label: str) -> Party:
            return Party(label, Signer(test_key(label), chain_id))

        rel = sorted((party(f"relayer-{i}") for i in range(4)), key=lambda p: int(p.address, 16))
        domain = eip712.Domain(chain_id=chain_id, verifying_contract=deployment.exchange)
        return cls(rpc, control, chain_id, deployment, party("owner"), party("oracle"), rel, 3, domain)

    async def trader(self, label: str, deposit: int = 0) -> Party:
        """A trader with gas money and ``deposit`` collateral atoms in the exchange."""
        if label not in self.traders:
            p = Party(label, Signer(test_key(f"trader {label}"), self.chain_id))
            await self.control.set_balance(p.address, 10**24)
            self.traders[label] = p
        p = self.traders[label]
        if deposit:
            await fund_trader(self.rpc, self.deployment, p.signer, deposit)
        return p

    # ------------------------------------------------------------------------------------------ orders
    async def now(self) -> int:
        block = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        return int(block["timestamp"], 16)

    def order(
        self,
        trader: Party,
        side: int,
        amount: int,
        price: int = PRICE,
        *,
        salt: int | None = None,
        created_at: int = 1_000,
        expiry: int = FAR,
        flags: int = 0,
        trigger_kind: int = 0,
        trigger_price: int = 0,
        market: int = MARKET,
    ) -> Order:
        return Order(
            trader=trader.address,  # type: ignore[arg-type]
            market=market,  # type: ignore[arg-type]
            side=side,  # type: ignore[arg-type]
            price=price,
            amount=amount,
            salt=trader.next_salt() if salt is None else salt,  # type: ignore[arg-type]
            created_at=created_at,
            expiry=expiry,
            flags=flags,  # type: ignore[arg-type]
            trigger_kind=trigger_kind,  # type: ignore[arg-type]
            trigger_price=trigger_price,
        )

    def sign_order(self, order: Order, key: bytes | None = None, domain: eip712.Domain | None = None) -> ex.SignedOrder:
        digest = eip712.order_digest(domain or self.domain, order)
        sig = eip712.sign_digest(key if key is not None else self._key_of(order.trader), digest)
        return ex.SignedOrder(order=to_binding(order), sig=split_sig(sig))

    def _key_of(self, address: str) -> bytes:
        for p in self.traders.values():
            if p.address == address:
                return p.key
        raise KeyError(address)

    # ------------------------------------------------------------------------------------------ batches
    def batch(
        self,
        orders: Sequence[ex.SignedOrder],
        fills: Iterable[tuple[int, int, int]],
        *,
        seq: int | None = None,
        round_: int = 0,
        prev: bytes | None = None,
        set_version: int | None = None,
        deadline: int = FAR,
    ) -> ex.Batch:
        return ex.Batch(
            seq=self.seq + 1 if seq is None else seq,
            round=round_,
            prev_batch_hash=self.last_hash if prev is None else prev,
            set_version=self.set_version if set_version is None else set_version,
            deadline=deadline,
            orders=tuple(orders),
            fills=tuple(ex.Fill(maker=m, taker=t, amount=a) for m, t, a in fills),
        )

    def batch_digest(self, b: ex.Batch) -> bytes:
        hashes = [eip712.order_digest(self.domain, from_binding(o.order)) for o in b.orders]
        return eip712.batch_digest(
            self.domain,
            b.seq,
            b.round,
            b.prev_batch_hash,
            b.set_version,
            b.deadline,
            hashes,
            [(f.maker, f.taker, f.amount) for f in b.fills],
        )

    def quorum(self, b: ex.Batch, signers: Sequence[Party] | None = None) -> list[ex.Signature]:
        digest = self.batch_digest(b)
        chosen = self.relayers[: self.threshold] if signers is None else list(signers)
        return [split_sig(eip712.sign_digest(p.key, digest)) for p in chosen]

    async def settle(
        self,
        b: ex.Batch,
        sigs: Sequence[ex.Signature] | None = None,
        *,
        submitter: Party | None = None,
        gas: int | None = None,
    ) -> Settled:
        """Submit ``settleBatch``; on success advance the world's seq and last batch hash."""
        sigs = self.quorum(b) if sigs is None else sigs
        sender = submitter or self.relayers[0]
        await self.control.set_balance(sender.address, 10**24)
        receipt = await send(
            self.rpc,
            sender.signer,
            to=self.deployment.exchange,
            data=ex.encode_settle_batch(b, sigs),
            decode_revert=ex.decode_revert,
            what=f"settleBatch({b.seq})",
            gas=gas,
        )
        events = [d.event for d in (ex.decode_event(log) for log in receipt.logs) if d is not None]
        digest = self.batch_digest(b)
        settled = [e for e in events if isinstance(e, ex.BatchSettledEvent)]
        assert len(settled) == 1 and settled[0].batch_hash == digest
        self.seq, self.last_hash = b.seq, digest
        return Settled(receipt, events, digest)

    async def match(self, maker: Order, taker: Order, amount: int | None = None) -> Settled:
        """Settle one fill of ``maker`` against ``taker``."""
        orders = [self.sign_order(maker), self.sign_order(taker)]
        return await self.settle(self.batch(orders, [(0, 1, amount or min(maker.amount, taker.amount))]))

    # ------------------------------------------------------------------------------------------ state
    async def view(self, data: bytes) -> bytes:
        return await call(self.rpc, self.deployment.exchange, data, decode_revert=ex.decode_revert)

    async def account(self, who: Party | str) -> ex.GetAccountResult:
        addr = who if isinstance(who, str) else who.address
        return ex.decode_get_account_result(await self.view(ex.encode_get_account(addr)))

    async def position(self, who: Party, market: int = MARKET) -> ex.Position:
        return ex.decode_get_position_result(await self.view(ex.encode_get_position(who.address, market)))

    async def health(self, who: Party) -> ex.GetHealthResult:
        return ex.decode_get_health_result(await self.view(ex.encode_get_health(who.address)))

    async def filled(self, order: Order) -> int:
        st = ex.decode_get_order_state_result(await self.view(ex.encode_get_order_state(order.trader, order.salt)))
        return int(st.filled)

    async def oracle_send(self, data: bytes, what: str) -> Receipt:
        return await send(
            self.rpc,
            self.oracle.signer,
            to=self.deployment.exchange,
            data=data,
            decode_revert=ex.decode_revert,
            what=what,
        )

    async def set_price(self, price: int, market: int = MARKET) -> None:
        await self.oracle_send(ex.encode_set_oracle_price(market, price), "setOraclePrice")

    async def accounting_identity(self) -> tuple[int, int]:
        """(token balance of the exchange, Σ balances / SIZE_ONE + fees + insurance + funding pool - bad debt)."""
        balances = [int((await self.account(p)).balance) for p in self.traders.values()]
        total = sum(balances)
        assert total % ONE == 0, f"Σ balances {total} is not a whole number of atoms"
        pools = 0
        for enc, dec, sign in (
            (ex.encode_fees_collected, ex.decode_fees_collected_result, 1),
            (ex.encode_insurance_fund, ex.decode_insurance_fund_result, 1),
            (ex.encode_funding_pool, ex.decode_funding_pool_result, 1),
            (ex.encode_bad_debt, ex.decode_bad_debt_result, -1),
        ):
            pools += sign * dec(await self.view(enc()))
        held = await token_balance(self.rpc, self.deployment, self.deployment.exchange)
        return held, total // ONE + pools


def to_binding(o: Order) -> ex.Order:
    return ex.Order(
        trader=o.trader,
        market=int(o.market),
        side=int(o.side),
        price=o.price,
        amount=o.amount,
        salt=int(o.salt),
        created_at=o.created_at,
        expiry=o.expiry,
        flags=int(o.flags),
        trigger_kind=int(o.trigger_kind),
        trigger_price=o.trigger_price,
    )


def from_binding(o: ex.Order) -> Order:
    return Order(
        trader=o.trader,  # type: ignore[arg-type]
        market=o.market,  # type: ignore[arg-type]
        side=o.side,  # type: ignore[arg-type]
        price=o.price,
        amount=o.amount,
        salt=o.salt,  # type: ignore[arg-type]
        created_at=o.created_at,
        expiry=o.expiry,
        flags=o.flags,  # type: ignore[arg-type]
        trigger_kind=o.trigger_kind,  # type: ignore[arg-type]
        trigger_price=o.trigger_price,
    )


def split_sig(sig: bytes) -> ex.Signature:
    return ex.Signature(r=sig[:32], s=sig[32:64], v=sig[64])


def with_sig(signed: ex.SignedOrder, **changes: Any) -> ex.SignedOrder:
    return replace(signed, sig=replace(signed.sig, **changes))
