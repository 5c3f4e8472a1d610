"""An in-memory :class:`~client_sdk.store.Store` for tests and simulations.

Same contract as :class:`~client_sdk.store.SqliteStore` (atomic, serialized
transactions; ordered scans; keyed lookup hashes) but nothing persists and values
are kept unencrypted in process memory: it protects nothing at rest because there
is no rest.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from e2ee.primitives import Rng, default_rng

from ..errors import UsageError
from ._txn import StoreCore, TransactionBase
from .base import LookupPart, Record, Table, check_origin, prefix_end
from .crypto import ROOT_KEY_SIZE, STORE_ID_SIZE, RecordKeys

__all__ = ["MemoryStore"]


class _Table:
    """One table: values by key and the keys in order (for scans)."""

    __slots__ = ("keys", "values")

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def set(self, key: bytes, value: bytes | None) -> bytes | None:
        """Set (or remove, with ``None``) a value; the previous one."""
        old = self.values.get(key)
        if value is None:
            if old is not None:
                del self.values[key]
                del self.keys[bisect_left(self.keys, key)]
        else:
            if old is None:
                insort(self.keys, key)
            self.values[key] = value
        return old

    def range(self, prefix: bytes) -> list[bytes]:
        """The keys starting with ``prefix``, in order."""
        start = bisect_left(self.keys, prefix)
        end_key = prefix_end(prefix)
        end = len(self.keys) if end_key is None else bisect_left(self.keys, end_key)
        return self.keys[start:end]


class _MemoryTransaction(TransactionBase):
    __slots__ = ("_tables", "undo")

    def __init__(self, tables: dict[Table, _Table]) -> None:
        super().__init__()
        self._tables = tables
        self.undo: list[tuple[Table, bytes, bytes | None]] = []

    def _set(self, table: Table, key: bytes, value: bytes | None) -> bytes | None:
        old = self._tables[table].set(key, value)
        self.undo.append((table, key, old))
        return old

    def _do_get(self, table: Table, key: bytes) -> bytes | None:
        return self._tables[table].values.get(key)

    def _do_put(self, table: Table, key: bytes, value: bytes) -> None:
        self._set(table, key, value)

    def _do_delete(self, table: Table, key: bytes) -> bool:
        return self._set(table, key, None) is not None

    def _do_delete_prefix(self, table: Table, prefix: bytes) -> int:
        keys = self._tables[table].range(prefix)
        for key in keys:
            self._set(table, key, None)
        return len(keys)

    def _do_scan(self, table: Table, prefix: bytes, limit: int | None) -> list[Record]:
        values = self._tables[table].values
        keys = self._tables[table].range(prefix)
        return [(key, values[key]) for key in keys[:limit]]

    def _do_count(self, table: Table, prefix: bytes) -> int:
        return len(self._tables[table].range(prefix))


class MemoryStore(StoreCore[_MemoryTransaction]):
    """A store in process memory (see the module docstring)."""

    __slots__ = ("_keys", "_origin", "_tables")

    def __init__(self, *, origin: str, key: bytes | None = None, rng: Rng = default_rng) -> None:
        """An empty store for relay ``origin``; ``key`` (32 bytes, default random)
        keys :meth:`lookup_key`.

        Raises:
            UsageError: a bad origin or key.
        """
        super().__init__()
        self._origin = check_origin(origin)
        if key is not None and (not isinstance(key, bytes) or len(key) != ROOT_KEY_SIZE):
            raise UsageError(f"a store key must be {ROOT_KEY_SIZE} bytes")
        self._keys = RecordKeys(key or rng(ROOT_KEY_SIZE), rng(STORE_ID_SIZE))
        self._tables = {table: _Table() for table in Table}

    @property
    def origin(self) -> str:
        """The relay origin this store belongs to."""
        return self._origin

    def lookup_key(self, *parts: LookupPart) -> bytes:
        """See :meth:`client_sdk.store.Store.lookup_key`.

        Raises:
            UsageError: no parts, or a part of another type or out of range.
        """
        return self._keys.lookup(*parts)

    def _begin(self) -> _MemoryTransaction:
        return _MemoryTransaction(self._tables)

    async def _commit(self, tx: _MemoryTransaction) -> None:
        tx.undo.clear()

    def _rollback(self, tx: _MemoryTransaction) -> None:
        for table, key, old in reversed(tx.undo):
            self._tables[table].set(key, old)
        tx.undo.clear()

    async def aclose(self) -> None:
        """Wait for a running transaction, then refuse further use; idempotent."""
        async with self._tx_lock:
            self._closed = True

    async def __aenter__(self) -> MemoryStore:
        """``async with store:`` closes the store on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the store."""
        await self.aclose()

    def __repr__(self) -> str:
        return "MemoryStore()"
