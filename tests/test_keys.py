"""The relayer key: keystore round trips, and the peer id agrees with py-libp2p's own derivation."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayer import keys
from relayer.errors import KeyMaterialError

from .conftest import FAST_SCRYPT_N

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


def test_address_and_peer_id_are_bound_to_one_key() -> None:
    from libp2p.crypto.secp256k1 import Secp256k1PrivateKey
    from libp2p.peer.id import ID

    key = keys.RelayerKey(SECRET)
    assert key.address == "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"  # eth-account's documented example key
    libp2p_key = Secp256k1PrivateKey.new(SECRET)
    assert key.peer_id == ID.from_pubkey(libp2p_key.get_public_key()).to_base58()
    assert key.peer_id.startswith("16Uiu2")
    assert keys.public_key_from_peer_id(key.peer_id) == key.public_key
    assert keys.check_peer_id(key.peer_id) is None


@given(st.binary(min_size=0, max_size=48))
def test_base58_round_trip(data: bytes) -> None:
    assert keys.b58decode(keys.b58encode(data)) == data


@pytest.mark.parametrize(
    ("peer_id", "fragment"),
    [
        ("0OIl", "not base58"),
        ("16Uiu2HAm", "not a multihash"),
        (
            keys.b58encode(bytes([0x12, 0x20]) + b"\x01" * 32),
            None,
        ),  # a sha256 peer id (e.g. an RSA/ed25519 peer)
        (keys.b58encode(bytes([0x99, 0x02, 1, 2])), "unknown multihash"),
        (
            keys.b58encode(bytes([0x00, 0x24]) + bytes([0x08, 0x01, 0x12, 0x20]) + b"\x01" * 32),
            "not a compressed",
        ),
    ],
)
def test_check_peer_id(peer_id: str, fragment: str | None) -> None:
    problem = keys.check_peer_id(peer_id)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None
        assert fragment in problem


def test_repr_never_shows_the_secret() -> None:
    key = keys.RelayerKey(SECRET)
    assert SECRET.hex() not in repr(key)
    assert SECRET.hex()[:16] not in str(key)


@pytest.mark.parametrize("bad", ["", "0x12", "zz" * 32, "00" * 32, "ff" * 32])
def test_from_hex_rejects_bad_keys(bad: str) -> None:
    with pytest.raises(KeyMaterialError):
        keys.RelayerKey.from_hex(bad)


def test_keystore_round_trip_and_hygiene(tmp_path: Path) -> None:
    key = keys.RelayerKey.generate()
    path = tmp_path / "ks" / "keystore.json"
    keys.write_keystore(path, key, "pw", scrypt_n=FAST_SCRYPT_N)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key.secret.hex() not in path.read_text()
    assert keys.keystore_address(path) == key.address
    assert keys.decrypt_keystore(path, "pw") == key
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(KeyMaterialError, match="already exists"):
        keys.write_keystore(path, keys.RelayerKey.generate(), "pw", scrypt_n=FAST_SCRYPT_N)
    assert keys.decrypt_keystore(path, "pw") == key  # untouched by the refused overwrite
    with pytest.raises(KeyMaterialError, match="wrong password"):
        keys.decrypt_keystore(path, "not-pw")
    with pytest.raises(KeyMaterialError, match="empty password"):
        keys.write_keystore(tmp_path / "other.json", key, "", scrypt_n=FAST_SCRYPT_N)


def test_keystore_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="does not exist"):
        keys.keystore_address(tmp_path / "missing.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(KeyMaterialError, match="not readable keystore JSON"):
        keys.keystore_address(garbage)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(KeyMaterialError, match="no 'crypto' section"):
        keys.keystore_address(foreign)


def test_keystore_whose_address_does_not_match_its_key(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    keys.write_keystore(path, keys.RelayerKey(SECRET), "pw", scrypt_n=FAST_SCRYPT_N)
    blob = json.loads(path.read_text())
    blob["address"] = "00" * 20
    path.write_text(json.dumps(blob))
    with pytest.raises(KeyMaterialError, match="records address"):
        keys.decrypt_keystore(path, "pw")


def test_load_relayer_key_sources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "k.json"
    keys.write_keystore(path, keys.RelayerKey(SECRET), "pw", scrypt_n=FAST_SCRYPT_N)
    assert keys.load_relayer_key(path, "PW_VAR", {"PW_VAR": "pw"}, interactive=False).secret == SECRET
    with pytest.raises(KeyMaterialError, match="set the environment variable PW_VAR"):
        keys.load_relayer_key(path, "PW_VAR", {}, interactive=False)
    dev = keys.load_relayer_key(path, "PW_VAR", {keys.DEV_KEY_ENV: "0x" + "11" * 32}, interactive=False)
    assert dev.secret == bytes([0x11]) * 32
    assert "development key" in caplog.text
    assert "11" * 32 not in caplog.text


def test_eth_keys_uses_coincurve() -> None:
    """Without coincurve, eth-keys silently falls back to pure Python, ten times slower."""
    from eth_keys.backends import get_backend

    assert type(get_backend()).__name__ == "CoinCurveECCBackend"
