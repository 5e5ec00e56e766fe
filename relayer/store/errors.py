"""The store's named errors. plyvel's exceptions are mapped to these at the edge (relayer/store/db.py)."""

from __future__ import annotations

from relayer.errors import RelayerError


class StoreError(RelayerError):
    """Base class of every store error; the message names the data directory or the key concerned."""


class StoreLockedError(StoreError):
    """Another process (or another handle in this one) has the data directory open."""


class StoreCorruptError(StoreError):
    """LevelDB reports corruption, or a record cannot be decoded. Never answered by a silent reset."""


class ForeignStoreError(StoreError):
    """The directory holds files that are not this project's store (no meta record, or a wrong magic)."""


class StoreVersionError(StoreError):
    """The store was written by a newer binary (an unknown schema version): this binary must not touch it."""


class StoreMissingError(StoreError):
    """There is no store in the directory and the caller asked not to create one."""


class KeyspaceError(StoreError):
    """A writer tried to touch a keyspace it does not own, or a promise write was not synced (a programming error)."""


class EquivocationError(StoreError):
    """A different proposal or vote is already stored for this (seq, round): signing another would equivocate."""
