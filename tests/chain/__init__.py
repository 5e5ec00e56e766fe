"""Tests of relayer.chain: JSON-RPC clients and the anvil launcher."""
