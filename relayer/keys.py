"""The relayer key: one secp256k1 key that signs votes and proposals and is the node's libp2p identity.

So the Ethereum address (what the exchange's relayer registry lists) and the libp2p peer id (what the network sees)
name the same key, and a peer can check one against the other.

Key material never appears in logs, reprs or exceptions. It lives in an encrypted eth-account (v3) keystore; the
password comes from an environment variable or a terminal prompt. ``RELAYER_PRIVATE_KEY`` (hex) is a development
shortcut that bypasses the keystore, and says so in the log.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayer.errors import KeyMaterialError

log = logging.getLogger("relayer.keys")

DEV_KEY_ENV = "RELAYER_PRIVATE_KEY"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DEFAULT_SCRYPT_N = 262_144  # eth-account's default work factor (about 1 s here); tests pass a smaller one

# libp2p peer ids: a multihash of the protobuf-encoded public key. A secp256k1 key (KeyType 2) encodes to
# 0x08 0x02 0x12 0x21 + 33-byte compressed point = 37 bytes, short enough (<= 42) for the identity multihash (0x00).
_PB_SECP256K1_PREFIX = bytes([0x08, 0x02, 0x12, 0x21])
_MH_IDENTITY = 0x00
_MH_SHA256 = 0x12
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        idx = _B58.find(ch)
        if idx < 0:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + idx
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def peer_id_from_public_key(compressed: bytes) -> str:
    """The libp2p peer id (base58, ``16Uiu2...``) of a 33-byte compressed secp256k1 public key."""
    if len(compressed) != 33 or compressed[0] not in (2, 3):
        raise ValueError("expected a 33-byte compressed secp256k1 public key")
    encoded = _PB_SECP256K1_PREFIX + compressed
    return b58encode(bytes([_MH_IDENTITY, len(encoded)]) + encoded)


def public_key_from_peer_id(peer_id: str) -> bytes | None:
    """The compressed secp256k1 key inside a peer id, or None if the id does not embed one."""
    try:
        raw = b58decode(peer_id)
    except ValueError:
        return None
    if len(raw) == 39 and raw[0] == _MH_IDENTITY and raw[1] == 37 and raw[2:6] == _PB_SECP256K1_PREFIX:
        return raw[6:]
    return None


def check_peer_id(peer_id: str) -> str | None:
    """None if ``peer_id`` is a well-formed libp2p peer id, else what is wrong with it."""
    try:
        raw = b58decode(peer_id)
    except ValueError as exc:
        return f"peer id is not base58 ({exc})"
    if len(raw) < 2 or raw[1] != len(raw) - 2:
        return "peer id is not a multihash"
    if raw[0] == _MH_IDENTITY:
        if raw[2:6] == _PB_SECP256K1_PREFIX and len(raw) == 39 and raw[6] in (2, 3):
            import coincurve

            try:
                coincurve.PublicKey(raw[6:])
            except ValueError:
                return "peer id embeds a public key that is not a point on secp256k1 (corrupt or mistyped id)"
            return None
        return "peer id embeds a key that is not a compressed secp256k1 key (relayers use secp256k1 identities)"
    if raw[0] == _MH_SHA256 and raw[1] == 32:
        return None
    return "peer id uses an unknown multihash"


@dataclass(frozen=True, slots=True)
class RelayerKey:
    """A secp256k1 private key with its derived identities. Its repr never shows the secret."""

    secret: bytes = field(repr=False)
    address: str = field(init=False)
    public_key: bytes = field(init=False)  # 33-byte compressed

    def __post_init__(self) -> None:
        if len(self.secret) != 32 or not 0 < int.from_bytes(self.secret, "big") < SECP256K1_N:
            raise KeyMaterialError("a private key must be 32 bytes in 1 .. n-1 of secp256k1")
        from eth_keys.datatypes import PrivateKey

        pk = PrivateKey(self.secret)
        object.__setattr__(self, "address", pk.public_key.to_checksum_address())
        object.__setattr__(self, "public_key", pk.public_key.to_compressed_bytes())

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> RelayerKey:
        while True:
            candidate = secrets.token_bytes(32)
            if 0 < int.from_bytes(candidate, "big") < SECP256K1_N:
                return cls(candidate)

    @classmethod
    def from_hex(cls, text: str) -> RelayerKey:
        body = text.strip()
        body = body[2:] if body[:2].lower() == "0x" else body
        try:
            raw = bytes.fromhex(body)
        except ValueError:
            raise KeyMaterialError("private key is not hex") from None
        if len(raw) != 32:
            raise KeyMaterialError(f"private key must be 32 bytes (64 hex digits), got {len(raw)} bytes")
        return cls(raw)


def _read_keystore_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyMaterialError(f"keystore {path} does not exist (create one with `relayer init`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyMaterialError(f"keystore {path} is not readable keystore JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict) or ("crypto" not in data and "Crypto" not in data):
        raise KeyMaterialError(f"keystore {path} is not an eth-account keystore (no 'crypto' section)")
    return data


def keystore_address(path: Path) -> str | None:
    """The address recorded in a keystore, read without decrypting it (None if the file does not record one)."""
    data = _read_keystore_json(path)
    addr = data.get("address")
    if not isinstance(addr, str):
        return None
    from eth_utils.address import to_checksum_address

    try:
        return str(to_checksum_address("0x" + addr.removeprefix("0x")))
    except ValueError:
        raise KeyMaterialError(f"keystore {path} records a malformed address") from None


def write_keystore(path: Path, key: RelayerKey, password: str, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> None:
    """Encrypt ``key`` into a new keystore file (mode 0600). Never overwrites an existing file."""
    if not password:
        raise KeyMaterialError("refusing to write a keystore with an empty password")
    if path.exists():
        raise KeyMaterialError(f"{path} already exists; refusing to overwrite a keystore")
    from eth_account import Account

    blob = Account.encrypt(key.secret, password, kdf="scrypt", iterations=scrypt_n)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".keystore-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(blob, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.link(tmp, path)  # atomic, and fails rather than replacing a file that appeared meanwhile
    except FileExistsError:
        raise KeyMaterialError(f"{path} already exists; refusing to overwrite a keystore") from None
    finally:
        os.unlink(tmp)


def decrypt_keystore(path: Path, password: str) -> RelayerKey:
    data = _read_keystore_json(path)
    from eth_account import Account

    try:
        secret = Account.decrypt(data, password)
    except ValueError:
        raise KeyMaterialError(f"cannot decrypt keystore {path}: wrong password or corrupt file") from None
    key = RelayerKey(bytes(secret))
    recorded = keystore_address(path)
    if recorded is not None and recorded != key.address:
        raise KeyMaterialError(f"keystore {path} records address {recorded} but holds the key of {key.address}")
    return key


def password_from(env_name: str, env: Mapping[str, str], *, interactive: bool, what: str) -> str:
    """The keystore password from ``env[env_name]``, or a terminal prompt when ``interactive``."""
    value = env.get(env_name)
    if value:
        return value
    if interactive:
        import click

        return str(click.prompt(f"Password for {what}", hide_input=True))
    raise KeyMaterialError(f"no password for {what}: set the environment variable {env_name} or run on a terminal")


def load_relayer_key(keystore: Path, password_env: str, env: Mapping[str, str], *, interactive: bool) -> RelayerKey:
    """The relayer key: ``RELAYER_PRIVATE_KEY`` if set (development), else the decrypted keystore."""
    dev = env.get(DEV_KEY_ENV)
    if dev:
        key = RelayerKey.from_hex(dev)
        log.warning(
            "using the development key from $%s for %s; use a keystore in production",
            DEV_KEY_ENV,
            key.address,
        )
        return key
    password = password_from(password_env, env, interactive=interactive, what=f"keystore {keystore}")
    return decrypt_keystore(keystore, password)
