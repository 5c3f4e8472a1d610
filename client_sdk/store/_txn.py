"""What both store implementations share: argument checks around the record
operations, and the serialized transaction context (one transaction at a time).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Generic, TypeVar

from ..errors import StoreClosed, UsageError
from .base import (
    Record,
    Table,
    check_key,
    check_limit,
    check_prefix,
    check_table,
    check_value,
)

__all__ = ["StoreCore", "TransactionBase", "TransactionContext"]

# ids of the stores whose transaction the current task (context) is inside
_ACTIVE: ContextVar[frozenset[int]] = ContextVar("client_sdk_store_active", default=frozenset())


class TransactionBase(ABC):
    """Checks arguments and the transaction's liveness, then calls the ``_do_*`` hooks."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active = True

    def _check_active(self) -> None:
        if not self._active:
            raise UsageError("the transaction has ended")

    async def get(self, table: Table, key: bytes) -> bytes | None:
        """See :meth:`client_sdk.store.Transaction.get`."""
        self._check_active()
        return self._do_get(check_table(table), check_key(key))

    async def put(self, table: Table, key: bytes, value: bytes) -> None:
        """See :meth:`client_sdk.store.Transaction.put`."""
        self._check_active()
        self._do_put(check_table(table), check_key(key), check_value(value))

    async def delete(self, table: Table, key: bytes) -> bool:
        """See :meth:`client_sdk.store.Transaction.delete`."""
        self._check_active()
        return self._do_delete(check_table(table), check_key(key))

    async def delete_prefix(self, table: Table, prefix: bytes) -> int:
        """See :meth:`client_sdk.store.Transaction.delete_prefix`."""
        self._check_active()
        return self._do_delete_prefix(check_table(table), check_prefix(prefix, allow_empty=False))

    async def scan(
        self, table: Table, prefix: bytes = b"", limit: int | None = None
    ) -> list[Record]:
        """See :meth:`client_sdk.store.Transaction.scan`."""
        self._check_active()
        return self._do_scan(check_table(table), check_prefix(prefix), check_limit(limit))

    async def count(self, table: Table, prefix: bytes = b"") -> int:
        """See :meth:`client_sdk.store.Transaction.count`."""
        self._check_active()
        return self._do_count(check_table(table), check_prefix(prefix))

    @abstractmethod
    def _do_get(self, table: Table, key: bytes) -> bytes | None: ...

    @abstractmethod
    def _do_put(self, table: Table, key: bytes, value: bytes) -> None: ...

    @abstractmethod
    def _do_delete(self, table: Table, key: bytes) -> bool: ...

    @abstractmethod
    def _do_delete_prefix(self, table: Table, prefix: bytes) -> int: ...

    @abstractmethod
    def _do_scan(self, table: Table, prefix: bytes, limit: int | None) -> list[Record]: ...

    @abstractmethod
    def _do_count(self, table: Table, prefix: bytes) -> int: ...


TxT = TypeVar("TxT", bound=TransactionBase)


class StoreCore(ABC, Generic[TxT]):
    """The transaction machinery of a store: a lock serializing transactions, the
    closed flag, and the begin/commit/rollback hooks an implementation provides."""

    __slots__ = ("_closed", "_tx_lock")

    def __init__(self) -> None:
        self._tx_lock = asyncio.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def transaction(self) -> TransactionContext[TxT]:
        """See :meth:`client_sdk.store.Store.transaction`."""
        return TransactionContext(self)

    @abstractmethod
    def _begin(self) -> TxT:
        """Start a transaction (called with the lock held)."""

    @abstractmethod
    async def _commit(self, tx: TxT) -> None:
        """Make ``tx`` durable; on failure, roll it back and raise a StoreError."""

    @abstractmethod
    def _rollback(self, tx: TxT) -> None:
        """Undo every change of ``tx``."""


class TransactionContext(Generic[TxT]):
    """``async with store.transaction() as tx``: serialized; commit or roll back on exit."""

    __slots__ = ("_store", "_token", "_tx")

    def __init__(self, store: StoreCore[TxT]) -> None:
        self._store = store
        self._tx: TxT | None = None
        self._token: Token[frozenset[int]] | None = None

    async def __aenter__(self) -> TxT:
        """Wait for the store's lock and begin.

        Raises:
            StoreClosed: the store is closed.
            UsageError: already inside a transaction of this store, or this context
                manager was entered before.
        """
        store = self._store
        store._check_open()
        if self._tx is not None or self._token is not None:
            raise UsageError("a transaction context can be entered once")
        active = _ACTIVE.get()
        if id(store) in active:
            raise UsageError("a transaction of this store is already running in this task")
        await store._tx_lock.acquire()
        try:
            store._check_open()
            tx = store._begin()
        except BaseException:
            store._tx_lock.release()
            raise
        self._tx = tx
        self._token = _ACTIVE.set(active | {id(store)})
        return tx

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Commit if the block exited normally, else roll back (the error propagates).

        Raises:
            StoreError: the commit failed; nothing was committed.
        """
        store, tx, token = self._store, self._tx, self._token
        if tx is None or token is None:  # pragma: no cover - __aenter__ raised
            return
        tx._active = False
        try:
            if exc_type is None:
                await store._commit(tx)
            else:
                store._rollback(tx)
        finally:
            _ACTIVE.reset(token)
            store._tx_lock.release()
