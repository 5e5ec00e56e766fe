"""EIP-712 order intake throughput: order digests, signature recovery, and both together (relayer.eip712)."""

from __future__ import annotations

from benchmarks.run import rate
from relayer import eip712
from relayer.keys import RelayerKey
from relayer.types import Address, Fill, MarketId, Order, OrderFlag, Salt, Side, TriggerKind


def run() -> dict[str, float | int | str]:
    n = 5_000
    key = RelayerKey(b"\x01" * 32)
    domain = eip712.Domain(31337, Address("0x5FbDB2315678afecb367f032d93F642f64180aa3"))
    orders = [
        Order(
            trader=Address(key.address),
            market=MarketId(i % 64),
            side=Side(i % 2),
            price=2_000_000_000 + i,
            amount=100_000_000 + i,
            salt=Salt(i),
            created_at=1_700_000_000,
            expiry=1_700_000_060,
            flags=OrderFlag.NONE,
            trigger_kind=TriggerKind.NONE,
            trigger_price=0,
        )
        for i in range(n)
    ]
    digests = [eip712.order_digest(domain, o) for o in orders]
    signatures = [eip712.sign_digest(key, d) for d in digests]
    hashes = digests[:1000]
    fills = [Fill(i, i + 1, 100_000_000) for i in range(999)]
    batch_rate = rate(lambda i: eip712.batch_digest(domain, i + 1, 0, bytes(32), 1, 1, hashes, fills), 50)
    return {
        "iterations": n,
        "order_digest_per_s": rate(lambda i: eip712.order_digest(domain, orders[i]), n),
        "validate_order_per_s": rate(lambda i: eip712.validate_order(orders[i]), n),
        "recover_per_s": rate(lambda i: eip712.recover_address_bytes(digests[i], signatures[i]), n),
        "recover_checksummed_per_s": rate(lambda i: eip712.recover(digests[i], signatures[i]), n),
        "orders_hashed_and_recovered_per_s": rate(lambda i: eip712.verify_order(domain, orders[i], signatures[i]), n),
        "sign_per_s": rate(lambda i: eip712.sign_digest(key, digests[i]), n),
        "batch_digest_1000_orders_999_fills_per_s": batch_rate,
    }
