"""Deploy the exchange and its collateral token, and set up markets: used by tests, benchmarks and devnet.

Everything is signed locally (relayer.chain.tx); nothing relies on unlocked node accounts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from bindings import exchange as ex
from bindings import test_token as tt
from relayer.chain.rpc import JsonRpc
from relayer.chain.tx import Receipt, Signer, call, send

log = logging.getLogger("relayer.chain.deploy")

TOKEN_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class Deployment:
    chain_id: int
    token: str
    exchange: str
    block: int  # the exchange's deployment block (chain.start_block in a node's config)
    owner: str
    oracle: str


def default_market_params(*, max_price: int = 10**12, tick: int = 1, min_size: int = 1) -> ex.MarketParams:
    """Parameters of a typical large-cap market: 5% initial, 3% maintenance, 2 / 5 bps fees, 1% penalty."""
    return ex.MarketParams(
        imr=50_000,
        mmr=30_000,
        maker_fee=200,
        taker_fee=500,
        liq_penalty=10_000,
        tick=tick,
        min_size=min_size,
        max_order_size=2**62,
        max_position=2**62,
        max_price=max_price,
        max_funding_delta=max_price // 100,
    )


async def deploy_contract(rpc: JsonRpc, signer: Signer, init_code: bytes, what: str) -> Receipt:
    receipt = await send(rpc, signer, to=None, data=init_code, what=f"deploy {what}", gas=None)
    if receipt.contract_address is None:
        raise RuntimeError(f"deploying {what} produced no contract address")  # a node bug, not an input error
    log.info(
        "deployed %s at %s (block %d, gas %d)", what, receipt.contract_address, receipt.block_number, receipt.gas_used
    )
    return receipt


async def deploy_exchange(
    rpc: JsonRpc,
    owner: Signer,
    *,
    oracle: Signer,
    relayers: Sequence[str],
    threshold: int,
    markets: Mapping[int, tuple[ex.MarketParams, int]],
    token: str | None = None,
) -> Deployment:
    """Deploy (or reuse) the collateral token and the exchange; create ``markets`` (id -> (params, oracle price)).

    ``owner`` deploys and administers; ``oracle`` sets prices and funding.
    """
    if token is None:
        token_receipt = await deploy_contract(
            rpc, owner, tt.deploy_data("Test USD", "TUSD", TOKEN_DECIMALS), "TestToken"
        )
        assert token_receipt.contract_address is not None
        token = token_receipt.contract_address
    init = ex.deploy_data(token, owner.address, oracle.address, [to_checksum_address(r) for r in relayers], threshold)
    receipt = await deploy_contract(rpc, owner, init, "Exchange")
    assert receipt.contract_address is not None
    exchange = receipt.contract_address
    for market_id, (params, price) in sorted(markets.items()):
        await send(
            rpc,
            owner,
            to=exchange,
            data=ex.encode_create_market(market_id, params),
            decode_revert=ex.decode_revert,
            what=f"createMarket({market_id})",
        )
        await send(
            rpc,
            oracle,
            to=exchange,
            data=ex.encode_set_oracle_price(market_id, price),
            decode_revert=ex.decode_revert,
            what=f"setOraclePrice({market_id})",
        )
    return Deployment(owner.chain_id, token, exchange, receipt.block_number, owner.address, oracle.address)


async def fund_trader(rpc: JsonRpc, deployment: Deployment, trader: Signer, amount: int) -> None:
    """Mint ``amount`` test tokens to ``trader``, approve the exchange and deposit them."""
    await send(
        rpc,
        trader,
        to=deployment.token,
        data=tt.encode_mint(trader.address, amount),
        what="mint",
        decode_revert=tt.decode_revert,
    )
    await send(
        rpc,
        trader,
        to=deployment.token,
        data=tt.encode_approve(deployment.exchange, amount),
        what="approve",
        decode_revert=tt.decode_revert,
    )
    await send(
        rpc,
        trader,
        to=deployment.exchange,
        data=ex.encode_deposit(amount),
        what="deposit",
        decode_revert=ex.decode_revert,
    )


async def token_balance(rpc: JsonRpc, deployment: Deployment, who: str) -> int:
    return tt.decode_balance_of_result(await call(rpc, deployment.token, tt.encode_balance_of(who)))
