"""Config parsing: every kind of bad config is rejected with the offending key's path; good ones parse."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from relayer import config as cfgmod
from relayer.errors import ConfigError

from .conftest import ROOT

PEER = "16Uiu2HAmKr2SAqbQMBk99h3HNgJxBvYM4AWKvu98D7QFakVtzRpe"


def parse(raw: dict[str, Any], env: dict[str, str] | None = None, base: Path = Path("/srv/node")) -> cfgmod.Config:
    return cfgmod.parse_config(raw, base_dir=base, source="test.json", env=env or {})


def errors_of(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        cfgmod.parse_config(raw, base_dir=Path("/srv/node"), source="test.json", env=env or {})
    return info.value.problems


def test_minimal_config_fills_defaults_and_resolves_paths(valid_raw: dict[str, Any]) -> None:
    cfg = parse(valid_raw)
    assert cfg.node.name == "node-a"
    assert cfg.node.data_dir == Path("/srv/node/data")
    assert cfg.keys.keystore == Path("/srv/node/keystore.json")  # default, resolved against the config dir
    assert cfg.chain.rpc_http == ("http://127.0.0.1:8545",)
    assert cfg.api.port == 8080
    assert cfg.quorum.round_timeout_ms == 2000
    assert cfg.markets[0] == cfgmod.MarketEntry(id=1, symbol="ETH-USD")


def test_config_objects_are_frozen(valid_raw: dict[str, Any]) -> None:
    cfg = parse(valid_raw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.api.port = 1  # type: ignore[misc]
    assert isinstance(cfg.chain.rpc_http, tuple)


def test_comment_keys_are_ignored(valid_raw: dict[str, Any]) -> None:
    valid_raw["//"] = "top comment"
    valid_raw["api"] = {"//port": "a comment", "port": 9999}
    assert parse(valid_raw).api.port == 9999


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


# (what, dotted key to set, bad value, the path the error must name, a fragment of the message)
BAD_CASES = [
    ("unknown top-level key", "chian", {"chain_id": 1}, "chian", "unknown key"),
    ("unknown nested key, with a suggestion", "api.prot", 80, "api.prot", "did you mean 'port'"),
    ("wrong type: string for int", "api.port", "8080", "api.port", "must be an integer"),
    ("wrong type: bool for int", "chain.chain_id", True, "chain.chain_id", "must be an integer"),
    ("wrong type: int for bool", "api.metrics", 1, "api.metrics", "true or false"),
    ("wrong type: object for list", "chain.rpc_http", {"a": 1}, "chain.rpc_http", "must be a list"),
    ("wrong type: list for section", "quorum", [1], "quorum", "must be an object"),
    ("port out of range", "api.port", 70000, "api.port", "between 0 and 65535"),
    ("negative confirmations", "chain.confirmations", -1, "chain.confirmations", "between 0"),
    ("chain id zero", "chain.chain_id", 0, "chain.chain_id", "between 1"),
    (
        "fee bump under the 10% replacement minimum",
        "worker.fee_bump_bps",
        500,
        "worker.fee_bump_bps",
        "between 1000",
    ),
    ("address too short", "chain.exchange", "0x1234", "chain.exchange", "40 hex digits"),
    ("address not hex", "chain.exchange", "0x" + "g" * 40, "chain.exchange", "40 hex digits"),
    (
        "address with a bad EIP-55 checksum",
        "chain.exchange",
        "0x5FbDB2315678afecb367f032d93F642f64180aA3",
        "chain.exchange",
        "checksum",
    ),
    ("http URL with a ws scheme", "chain.rpc_http", ["ws://127.0.0.1:8545"], "chain.rpc_http[0]", "http://"),
    ("ws URL with an http scheme", "chain.rpc_ws", ["http://127.0.0.1:8545"], "chain.rpc_ws[0]", "ws://"),
    ("URL without a host", "chain.rpc_http", ["http://:8545"], "chain.rpc_http[0]", "no valid host"),
    ("URL with a bad port", "chain.rpc_http", ["http://127.0.0.1:99999"], "chain.rpc_http[0]", "valid URL"),
    ("empty RPC list", "chain.rpc_http", [], "chain.rpc_http", "at least 1"),
    ("multiaddr garbage", "p2p.listen", ["/ip4/999.1.1.1/tcp/1"], "p2p.listen[0]", "not a valid multiaddr"),
    ("multiaddr without tcp", "p2p.listen", ["/ip4/127.0.0.1/udp/9000"], "p2p.listen[0]", "/tcp"),
    (
        "bootstrap without a peer id",
        "p2p.bootstrap",
        ["/ip4/127.0.0.1/tcp/9001"],
        "p2p.bootstrap[0]",
        "/p2p/",
    ),
    (
        "bootstrap with a corrupt peer id",
        "p2p.bootstrap",
        [f"/ip4/127.0.0.1/tcp/9001/p2p/{PEER[:-4]}"],
        "p2p.bootstrap[0]",
        "multiaddr",
    ),
    (
        "listen address naming a peer",
        "p2p.listen",
        [f"/ip4/127.0.0.1/tcp/9001/p2p/{PEER}"],
        "p2p.listen[0]",
        "must not name a peer id",
    ),
    ("bad enum value", "node.log_level", "verbose", "node.log_level", "one of"),
    (
        "bad logger name",
        "node.log_levels",
        {"relayer..p2p": "debug"},
        "node.log_levels.relayer..p2p",
        "logger",
    ),
    ("bad host", "api.host", "bad host!", "api.host", "IP address or a host name"),
    ("bad node name", "node.name", "has spaces", "node.name", "does not match"),
    ("bad market symbol", "markets", [{"id": 1, "symbol": "eth/usd"}], "markets[0].symbol", "does not match"),
    ("market missing its id", "markets", [{"symbol": "ETH-USD"}], "markets[0].id", "is required"),
    (
        "duplicate market id",
        "markets",
        [{"id": 1, "symbol": "ETH-USD"}, {"id": 1, "symbol": "BTC-USD"}],
        "markets[1].id",
        "duplicates",
    ),
    (
        "timeout cap below the timeout",
        "quorum.round_timeout_max_ms",
        500,
        "quorum.round_timeout_max_ms",
        ">=",
    ),
    (
        "IOC window not above the batch deadline delta",
        "orders.ioc_window_s",
        30,
        "orders.ioc_window_s",
        "must exceed",
    ),
    ("empty path", "node.data_dir", "", "node.data_dir", "non-empty path"),
    ("null for a required key", "chain.chain_id", None, "chain.chain_id", "must be an integer"),
]


@pytest.mark.parametrize(("what", "key", "value", "path", "fragment"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_names_the_key(
    valid_raw: dict[str, Any], what: str, key: str, value: Any, path: str, fragment: str
) -> None:
    _set(valid_raw, key, value)
    problems = errors_of(valid_raw)
    matching = [p for p in problems if p.startswith(f"{path}:")]
    assert matching, f"{what}: no problem names {path!r}: {problems}"
    assert fragment in matching[0], f"{what}: {matching[0]!r} lacks {fragment!r}"


def test_missing_required_section_and_top_level_type() -> None:
    assert any(p.startswith("chain: is required") for p in errors_of({"markets": [{"id": 1, "symbol": "A-B"}]}))
    assert errors_of([1, 2]) == ["(top level): must be a JSON object, got [1, 2]"]


def test_every_problem_is_reported_at_once(valid_raw: dict[str, Any]) -> None:
    valid_raw["api"] = {"port": -1, "host": "bad host!"}
    valid_raw["chain"]["confirmations"] = "two"
    problems = errors_of(valid_raw)
    assert {p.split(":")[0] for p in problems} == {"api.port", "api.host", "chain.confirmations"}


def test_valid_bootstrap_and_mixed_inputs(valid_raw: dict[str, Any]) -> None:
    valid_raw["p2p"]["bootstrap"] = [
        f"/ip4/127.0.0.1/tcp/9001/p2p/{PEER}",
        f"/dns4/relayer-b/tcp/9000/p2p/{PEER}",
    ]
    valid_raw["chain"]["exchange"] = "0x5fbdb2315678afecb367f032d93f642f64180aa3"  # all lower case: no checksum
    valid_raw["chain"]["rpc_http"] = ["https://rpc.internal:8545/path", "http://[::1]:8545"]
    cfg = parse(valid_raw)
    assert len(cfg.p2p.bootstrap) == 2


# ------------------------------------------------------------------------------------------------------ env overrides


def test_env_overrides_typed_values(valid_raw: dict[str, Any]) -> None:
    env = {
        "RELAYER__API__PORT": "8181",
        "RELAYER__NODE__NAME": "from-env",
        "RELAYER__API__METRICS": "false",
        "RELAYER__CHAIN__RPC_HTTP": '["http://10.0.0.2:8545", "http://10.0.0.3:8545"]',
        "RELAYER__QUORUM__ROUND_TIMEOUT_MS": "3000",
        "RELAYER__KEYS__GAS_KEYSTORE": "gas.json",
        "UNRELATED": "x",
    }
    cfg = parse(valid_raw, env)
    assert cfg.api.port == 8181
    assert cfg.node.name == "from-env"
    assert cfg.api.metrics is False
    assert cfg.chain.rpc_http == ("http://10.0.0.2:8545", "http://10.0.0.3:8545")
    assert cfg.quorum.round_timeout_ms == 3000
    assert cfg.keys.gas_keystore == Path("/srv/node/gas.json")


def test_env_override_errors_name_the_variable(valid_raw: dict[str, Any]) -> None:
    problems = errors_of(
        valid_raw,
        {
            "RELAYER__API__PROT": "1",
            "RELAYER__API__PORT": "eighty",
            "RELAYER__QUORUM__ROUND_TIMEOUT_MS": "1.5",
        },
    )
    assert any(p.startswith("api.prot (from $RELAYER__API__PROT): unknown key") for p in problems)
    assert any(p.startswith("api.port (from $RELAYER__API__PORT): value is not valid JSON") for p in problems)
    assert any(p.startswith("quorum.round_timeout_ms: must be an integer") for p in problems)


def test_env_null_clears_optional(valid_raw: dict[str, Any]) -> None:
    assert parse(valid_raw, {"RELAYER__CHAIN__EXCHANGE": "null"}).chain.exchange is None


# ------------------------------------------------------------------------------------------------------ files


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        cfgmod.load_config(tmp_path / "nope.json", env={})
    bad = tmp_path / "bad.json"
    bad.write_text('{"node": {"name": "x",}}')
    with pytest.raises(ConfigError, match="not valid JSON at line 1"):
        cfgmod.load_config(bad, env={})


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, valid_raw: dict[str, Any]) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "c.json"
    f.write_text(json.dumps(valid_raw))
    cfg = cfgmod.load_config(f, env={})
    assert cfg.node.data_dir == (tmp_path / "sub" / "data").resolve()


def test_example_config_is_complete_and_valid() -> None:
    """config.example.json lists every key with a // comment, parses, and matches the schema's rendering."""
    text = (ROOT / "config.example.json").read_text()
    assert text == cfgmod.render_example(), "config.example.json is stale: run `make docs`"
    raw = json.loads(text)
    parse(raw)
    for path, _tp, _f in cfgmod.iter_settings():
        node: Any = raw
        parts = path.replace("[]", "").split(".")
        for part in parts[:-1]:
            node = node[part][0] if isinstance(node[part], list) else node[part]
        assert parts[-1] in node, f"config.example.json lacks {path}"
        assert f"//{parts[-1]}" in node, f"config.example.json does not document {path}"


def test_docs_config_md_matches_schema() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == cfgmod.render_docs(), "docs/config.md is stale: run `make docs`"
    for path, _tp, _f in cfgmod.iter_settings():
        assert f"`{path}`" in cfgmod.render_docs()


def test_schema_defaults_are_immutable() -> None:
    with pytest.raises(TypeError, match="immutable"):
        cfgmod.setting("x", [])
