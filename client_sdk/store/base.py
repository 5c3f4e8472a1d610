"""The store interface: record tables, the :class:`Store` and :class:`Transaction`
protocols every implementation follows, and the limits they check (DESIGN 6).

A store holds records addressed by ``(table, primary key)`` with an opaque value,
all bytes. Keys are ordered bytewise (``scan`` returns them in that order). Keys are
stored as they are: a key that names a peer (user id, device id) must be a keyed
hash from :meth:`Store.lookup_key`, never the identifier itself; values are
encrypted by the SQLite implementation.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Final, Protocol, TypeAlias

from ..errors import UsageError

__all__ = [
    "MAX_KEY_SIZE",
    "MAX_ORIGIN_LENGTH",
    "MAX_VALUE_SIZE",
    "LookupPart",
    "Record",
    "Store",
    "Table",
    "Transaction",
    "check_key",
    "check_limit",
    "check_origin",
    "check_prefix",
    "check_table",
    "check_value",
    "prefix_end",
]

MAX_KEY_SIZE: Final = 512
"""Largest primary key: keys are a few 32-byte lookup hashes and counters; a bound
keeps the index small and a misuse (a value passed as a key) loud."""
MAX_VALUE_SIZE: Final = 16 * 1024 * 1024
"""Largest record value: far above any session state or message (``MAX_STATE_SIZE``,
``MAX_PLAINTEXT``); larger content belongs in attachments, not in one row."""
MAX_ORIGIN_LENGTH: Final = 2048
"""Longest relay origin a store remembers (a URL origin; bounds the header)."""
_MAX_TABLE_NAME: Final = 64


class Table(StrEnum):
    """The SDK's record kinds. The value is the name stored on disk and bound into
    every record's associated data: never rename a member; add new ones freely."""

    OWN_DEVICE = "own_device"
    PREKEYS = "prekeys"
    PEER_DEVICE_LISTS = "peer_device_lists"
    SESSIONS = "sessions"
    SKIPPED_KEYS = "skipped_keys"
    SEEN_BASE_KEYS = "seen_base_keys"
    OUTBOX = "outbox"
    INBOX = "inbox"
    DEDUPE = "dedupe"
    VERIFICATION = "verification"
    EVENTS = "events"
    META = "meta"


def _check_tables() -> None:
    for table in Table:
        name = table.value
        if not (0 < len(name) <= _MAX_TABLE_NAME and name.isascii() and "\x00" not in name):
            raise RuntimeError(
                f"table name {name!r} is not short NUL-free ASCII"
            )  # pragma: no cover


_check_tables()

Record: TypeAlias = tuple[bytes, bytes]
"""``(primary key, value)`` as :meth:`Transaction.scan` returns them."""

LookupPart: TypeAlias = str | bytes | int
"""One part of a lookup key: a user id, a device id, any bytes."""


class Transaction(Protocol):
    """One atomic unit of reads and writes; obtained from :meth:`Store.transaction`.

    Reads see the transaction's own writes. Every method raises
    :class:`~client_sdk.errors.UsageError` for an argument out of range or once the
    transaction has ended, and :class:`~client_sdk.errors.StoreCorrupt` for a record
    that fails authentication.
    """

    async def get(self, table: Table, key: bytes) -> bytes | None:
        """The value at ``(table, key)``, or ``None`` when there is none.

        Raises:
            UsageError: a bad argument, or the transaction has ended.
            StoreCorrupt: the record fails authentication.
        """
        ...

    async def put(self, table: Table, key: bytes, value: bytes) -> None:
        """Insert or replace the value at ``(table, key)``.

        Raises:
            UsageError: a bad argument, or the transaction has ended.
        """
        ...

    async def delete(self, table: Table, key: bytes) -> bool:
        """Remove the record at ``(table, key)``; whether there was one.

        Raises:
            UsageError: a bad argument, or the transaction has ended.
        """
        ...

    async def delete_prefix(self, table: Table, prefix: bytes) -> int:
        """Remove every record of ``table`` whose key starts with ``prefix`` (which
        must not be empty); how many.

        Raises:
            UsageError: a bad argument (an empty prefix), or the transaction has ended.
        """
        ...

    async def scan(
        self, table: Table, prefix: bytes = b"", limit: int | None = None
    ) -> list[Record]:
        """The records of ``table`` whose key starts with ``prefix``, in ascending
        bytewise key order, at most ``limit`` of them (``None``: all).

        Raises:
            UsageError: a bad argument, or the transaction has ended.
            StoreCorrupt: a record fails authentication.
        """
        ...

    async def count(self, table: Table, prefix: bytes = b"") -> int:
        """How many records of ``table`` have a key starting with ``prefix``.

        Raises:
            UsageError: a bad argument, or the transaction has ended.
        """
        ...


class Store(Protocol):
    """The SDK's local store (DESIGN 6): serialized, atomic transactions over
    encrypted records, and keyed hashes for peer lookup keys."""

    @property
    def origin(self) -> str:
        """The relay origin this store belongs to."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """``async with store.transaction() as tx:``: waits until no other transaction
        runs, then commits atomically (and durably, for a file) when the block exits
        normally, or rolls back every change when it raises (the exception then
        propagates).

        Raises:
            StoreClosed: the store was closed.
            UsageError: this task already runs a transaction on this store (it would
                wait for itself forever).
            StoreError: the commit failed (nothing was committed).
        """
        ...

    def lookup_key(self, *parts: LookupPart) -> bytes:
        """A 32-byte keyed BLAKE2b hash of ``parts`` under this store's lookup key:
        stable for the life of the store, unlinkable to the parts without the key.

        Raises:
            UsageError: no parts, or a part of another type or out of range.
        """
        ...

    async def aclose(self) -> None:
        """Wait for a running transaction to finish, then close; idempotent."""
        ...

    async def __aenter__(self) -> Store:
        """``async with store:`` closes the store on exit."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the store (:meth:`aclose`)."""
        ...


# --- argument checks shared by the implementations -------------------------------------


def check_table(table: object) -> Table:
    """Return ``table`` if it is a :class:`Table`.

    Raises:
        UsageError: it is not.
    """
    if not isinstance(table, Table):
        raise UsageError(f"table must be a Table, got {type(table).__name__}")
    return table


def check_key(key: object, what: str = "key") -> bytes:
    """Return ``key`` as bytes if it is 1..MAX_KEY_SIZE bytes.

    Raises:
        UsageError: wrong type or length.
    """
    if not isinstance(key, bytes | bytearray | memoryview):
        raise UsageError(f"{what} must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if not 0 < len(key) <= MAX_KEY_SIZE:
        raise UsageError(f"{what} must be 1..{MAX_KEY_SIZE} bytes, got {len(key)}")
    return key


def check_prefix(prefix: object, *, allow_empty: bool = True) -> bytes:
    """Return ``prefix`` as bytes (at most MAX_KEY_SIZE, empty only if allowed).

    Raises:
        UsageError: wrong type or length.
    """
    if not isinstance(prefix, bytes | bytearray | memoryview):
        raise UsageError(f"prefix must be bytes, got {type(prefix).__name__}")
    prefix = bytes(prefix)
    if len(prefix) > MAX_KEY_SIZE or (not prefix and not allow_empty):
        raise UsageError(f"prefix must be {0 if allow_empty else 1}..{MAX_KEY_SIZE} bytes")
    return prefix


def check_value(value: object) -> bytes:
    """Return ``value`` as bytes if it is at most MAX_VALUE_SIZE bytes.

    Raises:
        UsageError: wrong type or too long.
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise UsageError(f"value must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if len(value) > MAX_VALUE_SIZE:
        raise UsageError(f"value must be at most {MAX_VALUE_SIZE} bytes, got {len(value)}")
    return value


def check_limit(limit: object) -> int | None:
    """Return ``limit`` if it is ``None`` or a non-negative int.

    Raises:
        UsageError: anything else.
    """
    if limit is None:
        return None
    if type(limit) is not int or limit < 0:
        raise UsageError("limit must be None or a non-negative int")
    return limit


def check_origin(origin: object) -> str:
    """Return ``origin`` if it is a non-empty str of at most MAX_ORIGIN_LENGTH characters.

    Raises:
        UsageError: anything else.
    """
    if not isinstance(origin, str) or not 0 < len(origin) <= MAX_ORIGIN_LENGTH:
        raise UsageError(f"origin must be a str of 1..{MAX_ORIGIN_LENGTH} characters")
    return origin


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``, or ``None``
    when there is none (an empty prefix, or one of only 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))
