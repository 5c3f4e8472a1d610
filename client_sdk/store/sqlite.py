"""The SDK's store in one SQLite file, every value encrypted (DESIGN 6).

Layout (schema version 1)::

    header  (id INTEGER PRIMARY KEY CHECK (id = 1), value BLOB NOT NULL)  -- header.py
    records (tbl TEXT, key BLOB, value BLOB, PRIMARY KEY (tbl, key)) WITHOUT ROWID

``tbl`` is the :class:`~client_sdk.store.Table` name, ``key`` the primary key as
given (peer identifiers only as lookup hashes), ``value`` the sealed record
(crypto.py). The file runs in WAL mode with ``synchronous=FULL`` (a commit is on
disk when it returns), ``secure_delete`` (deleted records are overwritten in the
main file) and is created with mode 0600.

Threading (measured; see docs/sdk-store.md): statements inside a transaction run on
the event loop (each is a page-cache operation of microseconds), while everything
that waits on the disk - opening (with Argon2id), each ``COMMIT`` (the fsync and any
WAL checkpoint) and closing - runs on one dedicated worker thread, so the app's loop
never stalls on an fsync. Transactions are serialized by an ``asyncio.Lock``, so the
connection is never used by both threads at once; a commit interrupted by
cancellation still finishes before the lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar, cast

from e2ee.primitives import (
    ARGON2ID_MEMLIMIT_MIN,
    ARGON2ID_OPSLIMIT_MIN,
    ARGON2ID_SALT_SIZE,
    Rng,
    default_rng,
)

from ..errors import OriginMismatch, StoreCorrupt, StoreError, UsageError
from ._txn import StoreCore, TransactionBase
from .base import LookupPart, Record, Table, check_origin, prefix_end
from .crypto import ROOT_KEY_SIZE, STORE_ID_SIZE, RecordKeys
from .header import (
    DEFAULT_KDF,
    KDF_CEILING,
    KDF_FLOOR,
    SCHEMA_VERSION,
    KdfKind,
    KdfParams,
    StoreHeader,
    check_kdf,
    derive_root,
)
from .lock import FileLock

__all__ = ["LOCK_SUFFIX", "SqliteStore"]

LOCK_SUFFIX: Final = ".lock"
"""The lock file is the store's path with this suffix added."""
_FILE_MODE: Final = 0o600
_JOURNAL_SIZE_LIMIT: Final = 4 * 1024 * 1024
"""Truncate the WAL back to this size after a checkpoint (old frames hold old
ciphertexts; keep the file from growing without bound)."""
_PRAGMAS: Final = (
    "PRAGMA synchronous = FULL",
    "PRAGMA secure_delete = ON",
    "PRAGMA trusted_schema = OFF",
    "PRAGMA cell_size_check = ON",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA fullfsync = ON",  # macOS: F_FULLFSYNC; ignored elsewhere
    "PRAGMA checkpoint_fullfsync = ON",
    f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}",
)
_SCHEMA: Final = (
    "CREATE TABLE header (id INTEGER PRIMARY KEY CHECK (id = 1), value BLOB NOT NULL)",
    "CREATE TABLE records (tbl TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, "
    "PRIMARY KEY (tbl, key)) WITHOUT ROWID",
)
_TABLES: Final = frozenset({"header", "records"})
_SQLITE_CORRUPT: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB

_T = TypeVar("_T")


def _store_error(exc: sqlite3.Error, doing: str) -> StoreError:
    """A typed error for a database failure (the cause is chained by the caller)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in _SQLITE_CORRUPT:
        return StoreCorrupt(f"the store file is damaged or not a store ({doing})")
    return StoreError(f"the store's database failed while {doing}: {type(exc).__name__}")


def _normalize_secret(passphrase: str | bytes | None, key: bytes | None) -> tuple[KdfKind, bytes]:
    if (passphrase is None) == (key is None):
        raise UsageError("open a store with exactly one of passphrase= or key=")
    if key is not None:
        if not isinstance(key, bytes) or len(key) != ROOT_KEY_SIZE:
            raise UsageError(f"a store key must be {ROOT_KEY_SIZE} bytes")
        return KdfKind.RAW_KEY, key
    if isinstance(passphrase, str):
        # NFC, so the same passphrase typed on two keyboards gives the same bytes.
        passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    if not isinstance(passphrase, bytes) or not passphrase:
        raise UsageError("a store passphrase must be a non-empty str or bytes")
    return KdfKind.ARGON2ID, passphrase


class _SqliteTransaction(TransactionBase):
    __slots__ = ("_conn", "_keys", "_rng")

    def __init__(self, conn: sqlite3.Connection, keys: RecordKeys, rng: Rng) -> None:
        super().__init__()
        self._conn = conn
        self._keys = keys
        self._rng = rng

    def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            rows: list[tuple[object, ...]] = self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _store_error(exc, "reading") from exc
        return rows

    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        try:
            return self._conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise _store_error(exc, "writing") from exc

    def _do_get(self, table: Table, key: bytes) -> bytes | None:
        rows = self._rows("SELECT value FROM records WHERE tbl = ? AND key = ?", (table, key))
        return self._keys.open(table, key, rows[0][0]) if rows else None

    def _do_put(self, table: Table, key: bytes, value: bytes) -> None:
        sealed = self._keys.seal(table, key, value, self._rng)
        self._write(
            "INSERT OR REPLACE INTO records (tbl, key, value) VALUES (?, ?, ?)",
            (table, key, sealed),
        )

    def _do_delete(self, table: Table, key: bytes) -> bool:
        return self._write("DELETE FROM records WHERE tbl = ? AND key = ?", (table, key)) > 0

    @staticmethod
    def _range(table: Table, prefix: bytes) -> tuple[str, tuple[object, ...]]:
        end = prefix_end(prefix)
        if end is None:
            return "tbl = ? AND key >= ?", (table, prefix)
        return "tbl = ? AND key >= ? AND key < ?", (table, prefix, end)

    def _do_delete_prefix(self, table: Table, prefix: bytes) -> int:
        where, params = self._range(table, prefix)
        return self._write(f"DELETE FROM records WHERE {where}", params)  # noqa: S608 - fixed SQL

    def _do_scan(self, table: Table, prefix: bytes, limit: int | None) -> list[Record]:
        where, params = self._range(table, prefix)
        rows = self._rows(
            f"SELECT key, value FROM records WHERE {where} ORDER BY key LIMIT ?",  # noqa: S608
            (*params, -1 if limit is None else limit),
        )
        records: list[Record] = []
        for key, sealed in rows:
            # the range compares with BLOBs, which only BLOB keys satisfy
            records.append((cast(bytes, key), self._keys.open(table, cast(bytes, key), sealed)))
        return records

    def _do_count(self, table: Table, prefix: bytes) -> int:
        where, params = self._range(table, prefix)
        rows = self._rows(f"SELECT count(*) FROM records WHERE {where}", params)  # noqa: S608
        return cast(int, rows[0][0])  # count(*) is an integer


def _configure(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":  # pragma: no cover - only on filesystems without shared memory
        raise StoreError(f"the store needs SQLite's WAL mode; the file gave {mode!r}")
    for pragma in _PRAGMAS:
        conn.execute(pragma)


def _read_header(conn: sqlite3.Connection) -> StoreHeader | None:
    """The header, or ``None`` for an empty database (a new store)."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "header" not in tables:
        raise StoreCorrupt("the file is a SQLite database but not a store")
    rows = conn.execute("SELECT value FROM header WHERE id = 1").fetchall()
    if not rows:
        raise StoreCorrupt("the store header is missing")
    header = StoreHeader.from_bytes(rows[0][0])
    # Schema version 1 is the only one so far. A later version adds its migration
    # here: run in one transaction after the header unlocks (see docs/sdk-store.md).
    if tables != _TABLES:
        raise StoreCorrupt("the store's tables are not those of its schema version")
    return header


def _write_header(conn: sqlite3.Connection, header: StoreHeader, *, create: bool) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if create:
            for statement in _SCHEMA:
                conn.execute(statement)
        conn.execute(
            "INSERT OR REPLACE INTO header (id, value) VALUES (1, ?)", (header.to_bytes(),)
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteStore(StoreCore[_SqliteTransaction]):
    """An encrypted store in a SQLite file (see the module docstring); open it with
    :meth:`open`."""

    __slots__ = ("_conn", "_executor", "_file_lock", "_keys", "_origin", "_path", "_rng")

    def __init__(
        self,
        *,
        path: str,
        conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        file_lock: FileLock,
        keys: RecordKeys,
        origin: str,
        rng: Rng,
    ) -> None:
        """Internal: use :meth:`open`."""
        super().__init__()
        self._path = path
        self._conn = conn
        self._executor = executor
        self._file_lock = file_lock
        self._keys = keys
        self._origin = origin
        self._rng = rng

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        origin: str,
        passphrase: str | bytes | None = None,
        key: bytes | None = None,
        migrate_origin: bool = False,
        kdf: KdfParams = DEFAULT_KDF,
        unsafe_kdf_floor: KdfParams | None = None,
        rng: Rng = default_rng,
    ) -> SqliteStore:
        """Open the store at ``path``, creating it if the file is absent or empty.

        Give exactly one of ``passphrase`` (a str is NFC-normalized and UTF-8 encoded;
        the root key is Argon2id over it with ``kdf`` for a new store, with the
        header's parameters for an existing one, on the worker thread) or ``key`` (32
        random bytes the app keeps, e.g. in the platform keystore). A new store
        remembers ``origin``; an existing one must have been created for it, unless
        ``migrate_origin`` is set, which moves it to ``origin``.

        ``unsafe_kdf_floor`` lowers the Argon2id floor (:data:`KDF_FLOOR`); it exists
        for tests and must never be set in an application.

        Raises:
            UsageError: bad arguments (both or neither secret, a key not 32 bytes, an
                empty passphrase, ``kdf`` below the floor or above the ceiling).
            StoreLocked: the store is open in another process or object.
            WrongPassphrase: the passphrase does not open the store.
            WrongKey: the key does not open the store.
            WeakParameters: the header's Argon2id parameters are below the floor.
            StoreCorrupt: the file is not a store or its header fails authentication.
            UnsupportedStoreVersion: the store was written by a newer SDK.
            OriginMismatch: the store belongs to another relay origin.
            StoreError: the database cannot be opened (I/O).
        """
        origin = check_origin(origin)
        kind, secret = _normalize_secret(passphrase, key)
        floor = KDF_FLOOR if unsafe_kdf_floor is None else unsafe_kdf_floor
        if floor.opslimit < ARGON2ID_OPSLIMIT_MIN or floor.memlimit < ARGON2ID_MEMLIMIT_MIN:
            raise UsageError("the Argon2id floor is below libsodium's minimum")
        if kind is KdfKind.ARGON2ID and not (kdf.at_least(floor) and KDF_CEILING.at_least(kdf)):
            raise UsageError("Argon2id parameters outside the floor and ceiling")
        path = os.fspath(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2ee-store")
        try:
            opened, cancelled = await _finish_despite_cancel(
                asyncio.get_running_loop().run_in_executor(
                    executor,
                    lambda: _open_sync(path, kind, secret, origin, migrate_origin, kdf, floor, rng),
                )
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        conn, file_lock, keys, stored_origin = opened
        if cancelled:  # opened after all: close again (on the worker) and release the lock
            executor.submit(_close_quietly, conn, file_lock)
            executor.shutdown(wait=False)
            raise asyncio.CancelledError
        return cls(
            path=path,
            conn=conn,
            executor=executor,
            file_lock=file_lock,
            keys=keys,
            origin=stored_origin,
            rng=rng,
        )

    @property
    def path(self) -> str:
        """The store file."""
        return self._path

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

    def _begin(self) -> _SqliteTransaction:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _store_error(exc, "beginning a transaction") from exc
        return _SqliteTransaction(self._conn, self._keys, self._rng)

    def _commit_sync(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise _store_error(exc, "committing") from exc

    async def _commit(self, tx: _SqliteTransaction) -> None:
        await self._on_worker(self._commit_sync)

    def _rollback(self, tx: _SqliteTransaction) -> None:
        # A rollback in WAL mode discards pages in memory: no disk wait. It cannot
        # fail short of an I/O error, after which SQLite has rolled back itself.
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    async def _on_worker(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the worker thread and wait for it even if cancelled (the
        connection must not be used again before it returns); a cancellation is
        re-raised once it has."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        result, cancelled = await _finish_despite_cancel(future)
        if cancelled:
            raise asyncio.CancelledError
        return result

    async def aclose(self) -> None:
        """Wait for a running transaction, close the database (on the worker thread:
        closing checkpoints the WAL) and release the lock; idempotent.

        Raises:
            StoreError: closing the database failed (the lock is released anyway).
        """
        async with self._tx_lock:
            if self._closed:
                return
            self._closed = True
            try:
                await self._on_worker(self._close_sync)
            finally:
                self._executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error as exc:  # pragma: no cover - close fails only on I/O errors
            raise _store_error(exc, "closing") from exc
        finally:
            self._file_lock.release()

    async def __aenter__(self) -> SqliteStore:
        """``async with store:`` closes the store on exit."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the store."""
        await self.aclose()

    def __repr__(self) -> str:
        return f"SqliteStore(path={self._path!r})"


async def _finish_despite_cancel(future: asyncio.Future[_T]) -> tuple[_T, bool]:
    """Wait for ``future`` (work on the worker thread) to finish even if the waiting
    task is cancelled meanwhile: its result, and whether a cancellation arrived.

    Raises:
        Exception: whatever the work raised.
    """
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), cancelled
        except asyncio.CancelledError:
            if future.cancelled():  # pragma: no cover - the shielded future is never cancelled
                raise
            cancelled = True


def _close_quietly(conn: sqlite3.Connection, file_lock: FileLock) -> None:
    try:
        conn.close()
    finally:
        file_lock.release()


def _open_sync(
    path: str,
    kind: KdfKind,
    secret: bytes,
    origin: str,
    migrate_origin: bool,
    kdf: KdfParams,
    floor: KdfParams,
    rng: Rng,
) -> tuple[sqlite3.Connection, FileLock, RecordKeys, str]:
    """Lock, open or create, and unlock the store (blocking: on the worker thread)."""
    file_lock = FileLock.acquire(path + LOCK_SUFFIX, path)
    try:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        try:
            # timeout=0: no busy-waiting. Only a process that ignores the lock file can
            # hold SQLite's write lock, and the loop must not wait on it.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.Error as exc:  # pragma: no cover - a directory, no permission
            raise _store_error(exc, "opening") from exc
        try:
            keys, stored_origin = _unlock_or_create(
                conn, kind, secret, origin, migrate_origin, kdf, floor, rng
            )
        except BaseException:
            conn.close()
            raise
    except BaseException:
        file_lock.release()
        raise
    return conn, file_lock, keys, stored_origin


def _unlock_or_create(
    conn: sqlite3.Connection,
    kind: KdfKind,
    secret: bytes,
    origin: str,
    migrate_origin: bool,
    kdf: KdfParams,
    floor: KdfParams,
    rng: Rng,
) -> tuple[RecordKeys, str]:
    try:
        _configure(conn)
        header = _read_header(conn)
        if header is None:
            store_id = rng(STORE_ID_SIZE)
            params = kdf if kind is KdfKind.ARGON2ID else None
            salt = rng(ARGON2ID_SALT_SIZE) if params else b""
            ops, mem = (params.opslimit, params.memlimit) if params else (0, 0)
            root = derive_root(
                StoreHeader(SCHEMA_VERSION, kind, ops, mem, salt, store_id, b"", b""), secret
            )
            header = StoreHeader.create(
                root, kdf=kind, params=params, salt=salt, store_id=store_id, origin=origin, rng=rng
            )
            _write_header(conn, header, create=True)
            return RecordKeys(root, store_id), origin
        if header.kdf is not kind:
            expects = "a passphrase" if header.kdf is KdfKind.ARGON2ID else "a raw key"
            raise UsageError(f"this store is opened with {expects}")
        check_kdf(header, floor)
        root = derive_root(header, secret)
        stored_origin = header.unlock(root)
        if stored_origin != origin:
            if not migrate_origin:
                raise OriginMismatch(stored=stored_origin, requested=origin)
            _write_header(conn, header.with_origin(root, origin, rng), create=False)
            stored_origin = origin
        return RecordKeys(root, header.store_id), stored_origin
    except sqlite3.Error as exc:
        raise _store_error(exc, "opening") from exc
