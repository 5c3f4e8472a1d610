"""SQL storage on SQLite or PostgreSQL (``docs/storage.md``: the wiring and its figures).

Every operation is one synchronous function of :mod:`server.storage.sql_ops`; a
*runner* decides where it runs:

* :class:`SqliteRunner`: one synchronous pysqlite connection (WAL,
  ``synchronous=FULL``) used on the event loop. Writes are queued and a writer task
  runs whatever is queued as ONE transaction, with a SAVEPOINT per operation so a
  refused operation does not abort the others, commits (fsync), then answers every
  caller: group commit. Reads run on the same connection between batches.
* :class:`PostgresRunner`: an asyncpg :class:`~sqlalchemy.ext.asyncio.AsyncEngine`;
  each operation is its own transaction through ``AsyncConnection.run_sync``,
  retried when it lost a race (unique violation, serialization failure, deadlock).
  The per-message operations (accept, fetch, ack; depth and the device lookup too)
  skip it: :mod:`server.storage.pg_hot` runs each as one autocommit statement on a
  raw asyncpg connection of its own pool (:attr:`PostgresRunner.hot`).

Driver failures become :class:`~server.storage.base.StorageUnavailable` after the
transaction was rolled back; a caller that got it may retry (sends are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from . import sql_ops as ops
from . import sqlite_hot as hot
from .base import (
    AcceptOutcome,
    AccountRecord,
    BlobRecord,
    ClaimedBundle,
    DeviceRecord,
    PreKeyStatus,
    QueuedMessage,
    ShareOpenOutcome,
    ShareRecord,
    StorageUnavailable,
    StoredPreKey,
)
from .pg_hot import HotPool, PgHot

__all__ = [
    "PG_POOL_SIZE",
    "SQLITE_BUSY_TIMEOUT_MS",
    "PostgresRunner",
    "SqlStorage",
    "SqliteRunner",
    "hot_connect_args",
    "postgres_engine",
    "sqlite_engine",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long SQLite waits for a lock held by another process (a backup, ``e2ee db
upgrade``) before the operation fails as unavailable."""
PG_APPLICATION_NAME = "e2ee-relay"
"""How the relay's PostgreSQL sessions name themselves (``pg_stat_activity``)."""
PG_POOL_SIZE = 10
"""PostgreSQL connections per relay process: enough for concurrent sends and claims
to overlap, few enough for several nodes to share one server."""
PG_MAX_OVERFLOW = 10
"""Extra PostgreSQL connections allowed under a burst."""
PG_POOL_TIMEOUT_S = 10.0
"""How long an operation waits for a pooled connection before it is unavailable."""
PG_COMMAND_TIMEOUT_S = 30.0
"""How long one PostgreSQL statement may run before the operation is unavailable."""
PG_ATTEMPTS = 5
"""How often an operation that lost a race is run again before it is unavailable."""
_PG_SERVER_SETTINGS = {
    "application_name": PG_APPLICATION_NAME,
    # An acknowledged write is on disk (the server default, made explicit so a server
    # configured otherwise cannot weaken it).
    "synchronous_commit": "on",
    # Every query of the relay has an index path; a nearly empty, churned queue table
    # analysed as empty must not turn them into sequential scans over its dead rows
    # (docs/storage.md: the plans).
    "enable_seqscan": "off",
}
"""Session settings of every PostgreSQL connection (the engine's and the hot path's)."""
_SQLALCHEMY_ONLY_ARGS = ("prepared_statement_cache_size", "prepared_statement_name_func")
"""Connection arguments SQLAlchemy's asyncpg dialect takes for itself."""
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})
"""Serialization failure and deadlock: the transaction may simply run again."""


class Runner(Protocol):
    """Runs one operation of :mod:`server.storage.sql_ops` as (part of) a transaction."""

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a read-only operation.

        Raises:
            StorageUnavailable: the database failed.
        """
        ...

    async def read_one(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a read-only operation of one statement (no transaction needed).

        Raises:
            StorageUnavailable: the database failed.
        """
        ...

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run an operation that changes the database; returns after its commit.

        Raises:
            StorageUnavailable: the database failed; nothing was changed.
        """
        ...

    async def aclose(self) -> None:
        """Finish queued writes and close every connection."""
        ...


# --- SQLite ----------------------------------------------------------------------------


def sqlite_engine(url: str, *, echo: bool = False) -> Engine:
    """A pysqlite engine whose connections use WAL, ``synchronous=FULL`` (an
    acknowledged write survives a power cut), foreign keys and a busy timeout, and
    whose transactions SQLAlchemy begins itself (so SAVEPOINTs work).

    Raises:
        sqlalchemy.exc.ArgumentError: a malformed URL.
    """
    engine = create_engine(url, echo=echo, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy, not the driver, emits BEGIN
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            dbapi_conn.execute(f"PRAGMA {pragma}").close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


@dataclass(slots=True)
class _Pending:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]


def _groups(item: _Pending) -> bool:
    """Whether the writer runs ``item`` in a group (:func:`_run_grouped`)."""
    return item.fn in hot.GROUPED and not item.kwargs


def _run_grouped(
    conn: Connection, items: list[_Pending], outcomes: list[tuple[_Pending, bool, Any]]
) -> None:
    """Run consecutive hot operations of a batch as one group per kind
    (:data:`server.storage.sqlite_hot.GROUPED`: sends, then acknowledgements, each in
    arrival order): a few statements for the group instead of about seven per send.
    A typed refusal answers its call only; a database error propagates (the whole
    batch rolls back, as for a single operation).

    The acknowledgements of the group run after its sends whatever their arrival:
    none of these calls has been answered, so they are concurrent, and this is one of
    the orders they could have run in one by one (it differs from arrival order only
    for a send refused as ``QueueFull`` at the quota's very edge).
    """
    for fn, many in hot.GROUPED.items():
        group = [item for item in items if item.fn is fn]
        if group:
            results = many(conn, [item.args for item in group])
            outcomes.extend(
                (item, ok, value) for item, (ok, value) in zip(group, results, strict=True)
            )


class SqliteRunner:
    """Two pysqlite connections: reads on the event loop; writes by a group-commit
    writer task that runs each batch on the event loop and its COMMIT on a thread.

    The COMMIT waits for the disk (``synchronous=FULL``: an fsync of the WAL, more at
    a checkpoint). Run on the event loop, that wait blocked every connection of the
    relay once per batch; on the thread the loop keeps serving meanwhile (the driver
    releases the GIL while SQLite works), and the writes arriving during a commit
    form the next batch. WAL lets the reading connection read at the same time: every
    read sees exactly the committed batches (never one being committed), so nothing
    is read, or delivered, before it is durable.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn = engine.connect()
        """The writer's connection (batches on the loop, their COMMIT on the thread,
        never both at once)."""
        self._reader = engine.connect()
        """The connection of :meth:`read`, used on the event loop."""
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._error = StorageUnavailable("the database failed")
        """The last batch failure (see :meth:`_run`)."""
        self._thread = ThreadPoolExecutor(  # the COMMITs, one at a time
            max_workers=1, thread_name_prefix="e2ee-sqlite-writer"
        )
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn`` on the reading connection (on the event loop).

        ``fn`` sees one committed state: raw SQL (:mod:`server.storage.sqlite_hot`)
        runs one statement in autocommit (a statement reads one snapshot); SQLAlchemy
        begins a transaction for Core statements (one snapshot for all of them in WAL
        mode), ended at once.

        Raises:
            StorageUnavailable: the database failed.
        """
        self._check_open()
        conn = self._reader
        try:
            try:
                return fn(conn, *args, **kwargs)
            finally:
                if conn.in_transaction():
                    conn.rollback()  # read only: nothing to commit
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise _unavailable(exc) from exc

    read_one = read

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Queue ``fn`` for the next group commit and wait for that commit.

        ``fn`` runs on the event loop inside the batch's transaction (one SAVEPOINT).

        Raises:
            StorageUnavailable: the batch could not be committed; nothing was changed.
        """
        self._check_open()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(fn, args, kwargs, future))
        self._wake.set()
        return await future

    def _check_open(self) -> None:
        if self._closing:
            raise StorageUnavailable("the storage is closed")

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                try:
                    outcomes = self._run(batch)
                    if outcomes is not None:
                        try:
                            await loop.run_in_executor(self._thread, self._conn.commit)
                        except (SQLAlchemyError, sqlite3.Error) as exc:
                            outcomes = self._failed(batch, exc)
                    else:
                        outcomes = self._failed(batch, None)
                except Exception as exc:  # a bug: never leave a caller waiting forever
                    log.exception("SQLite writer failed")
                    self._error = StorageUnavailable(type(exc).__name__)
                    outcomes = self._failed(batch, None)
                for item, ok, value in outcomes:
                    if item.future.done():
                        continue  # the caller is gone
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)
            if self._closing and not self._pending:
                return

    def _failed(
        self, batch: list[_Pending], exc: BaseException | None
    ) -> list[tuple[_Pending, bool, Any]]:
        """Roll the batch back; every caller gets :class:`StorageUnavailable`."""
        error = self._error
        if exc is not None:
            log.warning("SQLite batch of %d operations rolled back: %s", len(batch), exc)
            error = _unavailable(exc)
        with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
            if self._conn.in_transaction():
                self._conn.rollback()
        return [(item, False, error) for item in batch]

    def _run(self, batch: list[_Pending]) -> list[tuple[_Pending, bool, Any]] | None:
        """Run ``batch`` in one transaction, one SAVEPOINT per operation, on the event
        loop, and leave it to commit; return each caller's answer, or ``None`` when
        the database failed (the whole batch is to roll back; the error is kept in
        ``_error``).

        The SAVEPOINTs are issued on the driver connection: through SQLAlchemy's
        ``begin_nested`` they cost about ten times more (``docs/storage.md``). Runs of
        consecutive hot operations (sends, acknowledgements) run as groups instead
        (:func:`_run_grouped`).
        """
        outcomes: list[tuple[_Pending, bool, Any]] = []
        conn = self._conn
        # The callers still waiting (the others are gone and never saw an answer).
        live = [item for item in batch if not item.future.cancelled()]
        try:
            conn.begin()
            db = cast(sqlite3.Connection, conn.connection.driver_connection)
            start = 0
            while start < len(live):
                end = start
                while end < len(live) and _groups(live[end]):
                    end += 1
                if end > start:
                    _run_grouped(conn, live[start:end], outcomes)
                    start = end
                    continue
                item = live[start]
                start += 1
                db.execute("SAVEPOINT op")
                try:
                    result = item.fn(conn, *item.args, **item.kwargs)
                except IntegrityError as exc:  # a bug, not an outage: this op only
                    db.execute("ROLLBACK TO op")
                    outcomes.append((item, False, _unavailable(exc)))
                except (SQLAlchemyError, sqlite3.Error):
                    raise  # the whole batch rolls back
                except Exception as exc:  # a typed refusal (or a caller bug)
                    db.execute("ROLLBACK TO op")
                    outcomes.append((item, False, exc))
                else:
                    outcomes.append((item, True, result))
                db.execute("RELEASE op")
        except (SQLAlchemyError, sqlite3.Error) as exc:
            log.warning("SQLite batch of %d operations rolled back: %s", len(batch), exc)
            self._error = _unavailable(exc)
            return None
        return outcomes

    async def aclose(self) -> None:
        """Commit what is queued, stop the writer, close the connections."""
        if not self._closing:
            self._closing = True
            self._wake.set()
            await self._writer
            self._thread.shutdown(wait=True)
            self._reader.close()
            self._conn.close()
            self._engine.dispose()


# --- PostgreSQL ------------------------------------------------------------------------


def postgres_engine(url: str, *, echo: bool = False, pool_size: int = PG_POOL_SIZE) -> AsyncEngine:
    """An asyncpg engine (``synchronous_commit`` on: an acknowledged write is on disk).

    Raises:
        sqlalchemy.exc.ArgumentError: a malformed URL.
    """
    return create_async_engine(
        url,
        echo=echo,
        hide_parameters=True,  # errors and logs never carry ciphertexts or keys
        pool_size=pool_size,
        max_overflow=PG_MAX_OVERFLOW,
        pool_timeout=PG_POOL_TIMEOUT_S,
        connect_args={
            "command_timeout": PG_COMMAND_TIMEOUT_S,
            "server_settings": dict(_PG_SERVER_SETTINGS),
        },
    )


def hot_connect_args(engine: AsyncEngine) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for the engine's database, with the engine's
    session settings and statement timeout (for :mod:`server.storage.pg_hot`)."""
    _, params = engine.dialect.create_connect_args(engine.url)
    kwargs = {k: v for k, v in params.items() if k not in _SQLALCHEMY_ONLY_ARGS}
    kwargs["command_timeout"] = PG_COMMAND_TIMEOUT_S
    kwargs["server_settings"] = dict(_PG_SERVER_SETTINGS)
    return kwargs


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ops.RetryOperation | IntegrityError):
        return True
    if isinstance(exc, DBAPIError) and not exc.connection_invalidated:
        orig = exc.orig
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return code in _RETRY_SQLSTATES
    return False


class PostgresRunner:
    """One transaction per operation on an asyncpg engine; the hot path
    (:attr:`hot`) on raw asyncpg connections of a pool of its own, as large as the
    engine's pool (connections are opened on demand)."""

    def __init__(self, engine: AsyncEngine, *, hot_pool_size: int | None = None) -> None:
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        if hot_pool_size is None:
            pool = engine.pool
            hot_pool_size = pool.size() if isinstance(pool, QueuePool) else PG_POOL_SIZE
        size = hot_pool_size
        self.hot = PgHot(
            HotPool(hot_connect_args(engine), size, PG_POOL_TIMEOUT_S), attempts=PG_ATTEMPTS
        )
        """The per-message operations as single raw statements."""

    async def _run(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        last: BaseException | None = None
        for _ in range(PG_ATTEMPTS):
            try:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(fn, *args, **kwargs)
            except (ops.RetryOperation, SQLAlchemyError, OSError, TimeoutError) as exc:
                if not _retryable(exc):
                    raise _unavailable(exc) from exc
                last = exc
        raise StorageUnavailable(f"gave up after {PG_ATTEMPTS} attempts: {last}")

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn`` in its own transaction.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._run(fn, *args, **kwargs)

    async def read_one(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a one-statement ``fn`` in autocommit mode (one round trip, no BEGIN/COMMIT).

        Raises:
            StorageUnavailable: the database failed.
        """
        try:
            async with self._autocommit.connect() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from exc

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn`` in its own transaction and commit it.

        Raises:
            StorageUnavailable: the database failed; the transaction was rolled back.
        """
        return await self._run(fn, *args, **kwargs)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.hot.aclose()
        await self._engine.dispose()


def _unavailable(exc: BaseException) -> StorageUnavailable:
    """The typed error for a driver failure (its message names no data, only the cause)."""
    return StorageUnavailable(
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )


# --- the stores ------------------------------------------------------------------------


class SqlAccountStore:
    """:class:`~server.storage.base.AccountStore` over a :class:`Runner` (the device
    lookup through ``pg_hot`` when given)."""

    def __init__(self, runner: Runner, *, pg_hot: PgHot | None = None) -> None:
        self._r = runner
        self._pg = pg_hot

    async def create_account(self, account: AccountRecord, now_ms: int) -> None:
        """See :meth:`server.storage.base.AccountStore.create_account`.

        Raises:
            AccountExists: the user id is taken.
            StorageUnavailable: the database failed.
        """
        await self._r.write(ops.create_account, account, now_ms)

    async def get_account(self, user_id: str) -> AccountRecord | None:
        """See :meth:`server.storage.base.AccountStore.get_account`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.read(ops.get_account, user_id)

    async def get_device(self, user_id: str, device_id: int) -> DeviceRecord | None:
        """See :meth:`server.storage.base.AccountStore.get_device`.

        Raises:
            StorageUnavailable: the database failed.
        """
        if self._pg is not None:
            return await self._pg.get_device(user_id, device_id)
        return await self._r.read_one(ops.get_device, user_id, device_id)

    async def replace_device_list(
        self, account: AccountRecord, expected_version: int, now_ms: int
    ) -> tuple[int, ...]:
        """See :meth:`server.storage.base.AccountStore.replace_device_list`.

        Raises:
            UnknownAccount: no such account.
            VersionConflict: the stored version is not ``expected_version``.
            DeviceIdReused: the new list re-adds a removed device id.
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.replace_device_list, account, expected_version, now_ms)


class SqlPreKeyStore:
    """:class:`~server.storage.base.PreKeyStore` over a :class:`Runner`."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    async def upload(
        self,
        user_id: str,
        device_id: int,
        signed_prekey: StoredPreKey | None,
        one_time: Sequence[StoredPreKey],
        kem: Sequence[StoredPreKey],
        last_resort: StoredPreKey | None,
    ) -> None:
        """See :meth:`server.storage.base.PreKeyStore.upload`.

        Raises:
            UnknownDevice: the device is not in the account's current list.
            PreKeyIdReused: an id this device used before (or twice in this upload).
            StorageUnavailable: the database failed.
        """
        await self._r.write(
            ops.upload_prekeys, user_id, device_id, signed_prekey, one_time, kem, last_resort
        )

    async def claim(self, user_id: str, device_id: int) -> ClaimedBundle | None:
        """See :meth:`server.storage.base.PreKeyStore.claim`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.claim, user_id, device_id)

    async def status(self, user_id: str, device_id: int) -> PreKeyStatus:
        """See :meth:`server.storage.base.PreKeyStore.status`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.read(ops.prekey_status, user_id, device_id)


class SqlMessageStore:
    """:class:`~server.storage.base.MessageStore` over a :class:`Runner`; with
    ``sqlite_hot`` the hot operations run :mod:`server.storage.sqlite_hot`'s raw SQL,
    with ``pg_hot`` they (and ``depth``) run :mod:`server.storage.pg_hot`'s."""

    def __init__(
        self, runner: Runner, *, sqlite_hot: bool = False, pg_hot: PgHot | None = None
    ) -> None:
        self._r = runner
        self._pg = pg_hot
        self._in_order = (
            pg_hot.accepts_in_order if pg_hot is not None else isinstance(runner, SqliteRunner)
        )
        self._accept = hot.accept if sqlite_hot else ops.accept
        self._fetch = hot.fetch if sqlite_hot else ops.fetch
        self._ack = hot.ack if sqlite_hot else ops.ack

    @property
    def accepts_in_order(self) -> bool:
        """``True`` on SQLite and on PostgreSQL's hot path: one writer runs the queued
        accepts in order (group commit)."""
        return self._in_order

    async def accept(
        self,
        sender_user: str,
        sender_device: int,
        client_msg_id: bytes,
        digest: bytes,
        addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
        now_ms: int,
        expires_at_ms: int,
        queue_quota: int,
    ) -> AcceptOutcome:
        """See :meth:`server.storage.base.MessageStore.accept`.

        Raises:
            IdempotencyConflict: the id was accepted before with another digest.
            UnknownAccount: an addressed user does not exist.
            QueueFull: an addressed device's queue is at ``queue_quota``.
            StorageUnavailable: the database failed; nothing was stored.
        """
        if self._pg is not None:
            return await self._pg.accept(
                sender_user,
                sender_device,
                client_msg_id,
                digest,
                addressed,
                now_ms,
                expires_at_ms,
                queue_quota,
            )
        return await self._r.write(
            self._accept,
            sender_user,
            sender_device,
            client_msg_id,
            digest,
            addressed,
            now_ms,
            expires_at_ms,
            queue_quota,
        )

    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
    ) -> list[QueuedMessage]:
        """See :meth:`server.storage.base.MessageStore.fetch`.

        Raises:
            StorageUnavailable: the database failed.
        """
        if self._pg is not None:
            return await self._pg.fetch(user_id, device_id, after_seq, limit, now_ms)
        return await self._r.read_one(self._fetch, user_id, device_id, after_seq, limit, now_ms)

    async def ack(self, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
        """See :meth:`server.storage.base.MessageStore.ack`.

        Raises:
            StorageUnavailable: the database failed.
        """
        if self._pg is not None:
            return await self._pg.ack(user_id, device_id, seqs)
        return await self._r.write(self._ack, user_id, device_id, seqs)

    async def depth(self, user_id: str, device_id: int) -> int:
        """See :meth:`server.storage.base.MessageStore.depth`.

        Raises:
            StorageUnavailable: the database failed.
        """
        if self._pg is not None:
            return await self._pg.depth(user_id, device_id)
        return await self._r.read_one(ops.depth, user_id, device_id)

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.MessageStore.purge_expired`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.purge_messages, now_ms, limit)


class SqlBlobStore:
    """:class:`~server.storage.base.BlobStore` over a :class:`Runner`."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    async def begin(
        self,
        blob_id: bytes,
        owner_user: str,
        owner_device: int,
        now_ms: int,
        expires_at_ms: int,
        quota_bytes: int,
    ) -> None:
        """See :meth:`server.storage.base.BlobStore.begin`.

        Raises:
            BlobExists: the id is taken.
            BlobQuotaExceeded: the owner already holds ``quota_bytes`` or more.
            StorageUnavailable: the database failed.
        """
        await self._r.write(
            ops.blob_begin, blob_id, owner_user, owner_device, now_ms, expires_at_ms, quota_bytes
        )

    async def append(self, blob_id: bytes, index: int, chunk: bytes, quota_bytes: int) -> None:
        """See :meth:`server.storage.base.BlobStore.append`.

        Raises:
            UnknownBlob: no upload in progress with this id.
            BlobQuotaExceeded: the owner would exceed ``quota_bytes``.
            StorageUnavailable: the database failed.
        """
        await self._r.write(ops.blob_append, blob_id, index, chunk, quota_bytes)

    async def complete(self, blob_id: bytes) -> BlobRecord:
        """See :meth:`server.storage.base.BlobStore.complete`.

        Raises:
            UnknownBlob: no upload in progress with this id.
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.blob_complete, blob_id)

    async def get(self, blob_id: bytes, now_ms: int) -> BlobRecord | None:
        """See :meth:`server.storage.base.BlobStore.get`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.read_one(ops.blob_get, blob_id, now_ms)

    async def chunks(self, blob_id: bytes) -> AsyncIterator[bytes]:
        """See :meth:`server.storage.base.BlobStore.chunks` (one query per chunk).

        Raises:
            UnknownBlob: no complete blob with this id, or it went mid-stream.
            StorageUnavailable: the database failed.
        """
        count = await self._r.read_one(ops.blob_chunk_count, blob_id)
        for index in range(count):
            yield await self._r.read_one(ops.blob_chunk, blob_id, index)

    async def delete(self, blob_id: bytes) -> bool:
        """See :meth:`server.storage.base.BlobStore.delete`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.blob_delete, blob_id)

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.BlobStore.purge_expired`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.purge_blobs, now_ms, limit)


class SqlLinkStore:
    """:class:`~server.storage.base.LinkStore` over a :class:`Runner`."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    async def put(
        self, link_id: bytes, slot: int, blob: bytes, now_ms: int, expires_at_ms: int
    ) -> None:
        """See :meth:`server.storage.base.LinkStore.put`.

        Raises:
            LinkMailboxFull: the slot was written before and has not expired.
            StorageUnavailable: the database failed.
        """
        await self._r.write(ops.link_put, link_id, slot, blob, now_ms, expires_at_ms)

    async def take(self, link_id: bytes, slot: int, now_ms: int) -> bytes | None:
        """See :meth:`server.storage.base.LinkStore.take`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.link_take, link_id, slot, now_ms)

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.LinkStore.purge_expired`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.purge_links, now_ms, limit)


class SqlShareStore:
    """:class:`~server.storage.base.ShareStore` over a :class:`Runner` (its blobs through
    the blob operations of :mod:`server.storage.sql_ops`, in the same transaction)."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    async def create(
        self,
        share_id: bytes,
        blob_id: bytes,
        owner_user: str,
        owner_device: int,
        proof_hash: bytes,
        data: bytes,
        now_ms: int,
        expires_at_ms: int,
        max_views: int | None,
        quota_bytes: int,
    ) -> ShareRecord:
        """See :meth:`server.storage.base.ShareStore.create`.

        Raises:
            ShareExists: an unexpired share with this id exists.
            BlobExists: the blob id is taken.
            BlobQuotaExceeded: the owner's blobs would exceed ``quota_bytes``.
            ValueError: a malformed proof hash, empty ``data`` or ``max_views`` < 1.
            StorageUnavailable: the database failed; nothing was stored.
        """
        return await self._r.write(
            ops.share_create,
            share_id,
            blob_id,
            owner_user,
            owner_device,
            proof_hash,
            data,
            now_ms,
            expires_at_ms,
            max_views,
            quota_bytes,
        )

    async def get(self, share_id: bytes, now_ms: int) -> ShareRecord | None:
        """See :meth:`server.storage.base.ShareStore.get`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.read_one(ops.share_get, share_id, now_ms)

    async def open(
        self, share_id: bytes, proof_hash: bytes, now_ms: int, max_wrong_proofs: int
    ) -> ShareOpenOutcome:
        """See :meth:`server.storage.base.ShareStore.open` (one write transaction).

        Raises:
            ValueError: a malformed proof hash or ``max_wrong_proofs`` < 1.
            StorageUnavailable: the database failed; nothing was counted.
        """
        return await self._r.write(ops.share_open, share_id, proof_hash, now_ms, max_wrong_proofs)

    async def delete(
        self, share_id: bytes, owner_user: str, owner_device: int, now_ms: int
    ) -> bool:
        """See :meth:`server.storage.base.ShareStore.delete`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.share_delete, share_id, owner_user, owner_device, now_ms)

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.ShareStore.purge_expired`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.purge_shares, now_ms, limit)


class SqlNonceStore:
    """:class:`~server.storage.base.NonceStore` over a :class:`Runner`."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    async def issue(self, nonce: bytes, purpose: str, expires_at_ms: int) -> None:
        """See :meth:`server.storage.base.NonceStore.issue`.

        Raises:
            StorageUnavailable: the database failed.
        """
        await self._r.write(ops.nonce_issue, nonce, purpose, expires_at_ms)

    async def consume(self, nonce: bytes, purpose: str, now_ms: int) -> bool:
        """See :meth:`server.storage.base.NonceStore.consume`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.nonce_consume, nonce, purpose, now_ms)

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        """See :meth:`server.storage.base.NonceStore.purge_expired`.

        Raises:
            StorageUnavailable: the database failed.
        """
        return await self._r.write(ops.purge_nonces, now_ms, limit)


class SqlStorage:
    """:class:`~server.storage.base.Storage` over one database (use
    :func:`server.storage.open_storage`, which checks the schema first)."""

    def __init__(self, runner: Runner, *, dialect: str, hot: bool = True) -> None:
        """``hot=False`` runs the hot operations as SQLAlchemy Core too (to measure
        the difference, ``bench/storage_ops.py``; and to keep the Core versions tested).
        """
        self._runner = runner
        self.dialect = dialect
        """``sqlite`` or ``postgresql``."""
        pg_hot = runner.hot if hot and isinstance(runner, PostgresRunner) else None
        self._accounts = SqlAccountStore(runner, pg_hot=pg_hot)
        self._prekeys = SqlPreKeyStore(runner)
        self._messages = SqlMessageStore(
            runner, sqlite_hot=hot and dialect == "sqlite", pg_hot=pg_hot
        )
        self._blobs = SqlBlobStore(runner)
        self._links = SqlLinkStore(runner)
        self._nonces = SqlNonceStore(runner)
        self._shares = SqlShareStore(runner)

    def __repr__(self) -> str:
        return f"SqlStorage(dialect={self.dialect!r})"

    @property
    def accounts(self) -> SqlAccountStore:
        """Accounts and device lists."""
        return self._accounts

    @property
    def prekeys(self) -> SqlPreKeyStore:
        """The key directory."""
        return self._prekeys

    @property
    def messages(self) -> SqlMessageStore:
        """Queues and idempotency records."""
        return self._messages

    @property
    def blobs(self) -> SqlBlobStore:
        """Blobs."""
        return self._blobs

    @property
    def links(self) -> SqlLinkStore:
        """The link mailbox."""
        return self._links

    @property
    def nonces(self) -> SqlNonceStore:
        """Single-use nonces."""
        return self._nonces

    @property
    def shares(self) -> SqlShareStore:
        """Share links."""
        return self._shares

    async def read_setting(self, fn: Callable[[Connection], str]) -> str:
        """Run ``fn`` (a read of a server setting) on a reading connection.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        return await self._runner.read_one(fn)

    async def ping(self) -> None:
        """A trivial round trip.

        Raises:
            StorageUnavailable: the database does not answer.
        """
        await self._runner.read_one(ops.ping)

    async def aclose(self) -> None:
        """Commit queued writes and release every connection."""
        await self._runner.aclose()
