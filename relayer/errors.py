"""The project's own exceptions. Third-party errors are mapped to these at module edges."""

from __future__ import annotations


class RelayerError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RelayerError):
    """The configuration is invalid. Holds every problem found, each naming the key's path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class KeyMaterialError(RelayerError):
    """A key could not be created, read or decrypted (never carries key material)."""


class ToolchainError(RelayerError):
    """A part of the pinned toolchain (anvil, solc-js) is missing or broken."""
