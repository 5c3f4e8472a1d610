"""The SDK's encrypted local store (DESIGN 6; docs/sdk-store.md).

:class:`Store` is the interface the rest of the SDK programs against;
:class:`SqliteStore` keeps it in an encrypted SQLite file and :class:`MemoryStore`
in memory (tests, simulations). Records live in the :class:`Table` s::

    store = await SqliteStore.open(path, origin="wss://relay.example", key=key32)
    async with store.transaction() as tx:
        await tx.put(Table.SESSIONS, store.lookup_key("alice", 7), state)
    await store.aclose()
"""

from __future__ import annotations

from .base import (
    MAX_KEY_SIZE,
    MAX_ORIGIN_LENGTH,
    MAX_VALUE_SIZE,
    LookupPart,
    Record,
    Store,
    Table,
    Transaction,
)
from .crypto import LOOKUP_KEY_SIZE, ROOT_KEY_SIZE
from .header import DEFAULT_KDF, KDF_CEILING, KDF_FLOOR, SCHEMA_VERSION, KdfParams
from .memory import MemoryStore
from .sqlite import LOCK_SUFFIX, SqliteStore

__all__ = [
    "DEFAULT_KDF",
    "KDF_CEILING",
    "KDF_FLOOR",
    "LOCK_SUFFIX",
    "LOOKUP_KEY_SIZE",
    "MAX_KEY_SIZE",
    "MAX_ORIGIN_LENGTH",
    "MAX_VALUE_SIZE",
    "ROOT_KEY_SIZE",
    "SCHEMA_VERSION",
    "KdfParams",
    "LookupPart",
    "MemoryStore",
    "Record",
    "SqliteStore",
    "Store",
    "Table",
    "Transaction",
]
