"""The hot path on PostgreSQL (accept, fetch, ack, depth, device lookup) as fixed SQL
on raw asyncpg connections (``docs/storage.md``: the wiring and its figures).

Through SQLAlchemy Core and ``AsyncConnection.run_sync`` a send cost BEGIN, five
statements and COMMIT, one round trip each, plus the greenlet hop and the compiler;
the relay's process was CPU-bound on that. Here every operation is ONE statement in
autocommit mode (its own transaction: one round trip, and the commit, with
``synchronous_commit`` on, has flushed the WAL before the answer arrives):

* accept: ``SELECT * FROM relay_accept(...)``, the PL/pgSQL function of migration
  ``0002`` (idempotency check, device-set check, locking the target devices in
  sorted order, quota check, sequence numbers, queue rows and the idempotency record);
* ack: one ``DELETE ... RETURNING`` with the ``queued`` counter update in a CTE;
* fetch, depth, the device lookup: one ``SELECT``.

They implement exactly :mod:`server.storage.sql_ops`'s ``accept``, ``fetch``, ``ack``,
``depth`` and ``get_device`` against the same Alembic-made schema; the contract suite
runs them on PostgreSQL. asyncpg prepares each statement once per connection and
caches it. The connections are a small pool of their own (:class:`HotPool`), with the
same session settings as the SQLAlchemy engine's (``synchronous_commit`` on,
``enable_seqscan`` off, the application name, the statement timeout).

**Group commit.** Accepts and acks do not run one statement per call: a single writer
task per relay process queues them and runs everything queued as one pipelined
``fetchmany`` (one Bind/Execute per call, one Sync: one implicit transaction, one
commit, one round trip), one batch after the other. Under load a batch holds many
sends, so PostgreSQL commits (and the relay pays a round trip) once per batch rather
than once per message, and calls are accepted in the order they were queued
(:attr:`PgHot.accepts_in_order`). A batch that fails as a whole on a server error (a
lost race, a constraint) is rolled back by PostgreSQL and its calls are run again one
by one, so one bad call fails alone; a connection lost mid-batch fails every call of
it with :class:`~server.storage.base.StorageUnavailable` (as for a single statement,
the commit may or may not have happened: a send retried with its id answers the
original acceptance).

Errors as in :class:`server.storage.sql.PostgresRunner`: a lost race (serialization
failure, deadlock, a unique violation from a concurrent insert of the same key) runs
the statement again, at most :data:`~server.storage.sql.PG_ATTEMPTS` times; any other
driver failure is :class:`~server.storage.base.StorageUnavailable`, whose message
names the error's type and the server's one-line reason, never a parameter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import asyncpg  # asyncpg ships no type information

from .base import (
    Acceptance,
    AcceptOutcome,
    DeviceMismatch,
    DeviceRecord,
    IdempotencyConflict,
    MismatchedDevices,
    QueuedMessage,
    QueueFull,
    StorageUnavailable,
    UnknownAccount,
)
from .memory import check_addressed

__all__ = ["ACCEPT_OUTCOMES", "MAX_BATCH", "HotPool", "PgHot"]

log = logging.getLogger(__name__)

ACCEPT_OUTCOMES = {
    1: "accepted",
    2: "duplicate",
    3: "conflict",
    4: "unknown account",
    5: "mismatch",
    6: "queue full",
}
"""``relay_accept``'s status codes (``o_status``)."""

_ACCEPT = "SELECT * FROM relay_accept($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_ACCEPT_BATCH = (
    "SELECT $12::integer AS i, r.* FROM relay_accept($1, $2, $3, $4, $5, $6, $7, $8, $9,"
    " $10, $11) r"
)
"""``_ACCEPT`` with the call's index in its batch first (``fetchmany`` flattens rows)."""
_FETCH = (
    "SELECT seq, sender_user, sender_device, accepted_at_ms, ciphertext FROM message_queue"
    " WHERE user_id = $1 AND device_id = $2 AND seq > $3 AND expires_at_ms > $4"
    " ORDER BY seq LIMIT $5"
)
_ACK_CTES = (
    "WITH gone AS ("
    " DELETE FROM message_queue"
    " WHERE user_id = $1 AND device_id = $2 AND seq = ANY($3::bigint[]) RETURNING seq"
    "), n AS (SELECT count(*) AS n FROM gone),"
    " uncount AS ("
    " UPDATE devices SET queued = queued - n.n FROM n"
    " WHERE user_id = $1 AND device_id = $2 AND n.n > 0"
    ")"
)
_ACK = _ACK_CTES + " SELECT n FROM n"  # noqa: S608 - constants only
"""Delete the acknowledged entries and uncount them in one statement (the ``devices``
row is locked after the queue rows, as the purge does)."""
_ACK_BATCH = _ACK_CTES + " SELECT $4::integer AS i, n FROM n"  # noqa: S608 - constants only
"""``_ACK`` with the call's index in its batch first."""
MAX_BATCH: Final = 256
"""Calls in one group commit at most (the rest wait for the next)."""
_DEPTH = "SELECT queued FROM devices WHERE user_id = $1 AND device_id = $2"
_DEVICE = "SELECT signing_pk, x25519_ik, pq FROM devices WHERE user_id = $1 AND device_id = $2"

HOT_STATEMENTS = {"fetch": _FETCH, "ack": _ACK, "depth": _DEPTH, "device": _DEVICE}
"""The hot path's plain statements, by name (the plan test explains them)."""

_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.UniqueViolationError,
)
"""Lost races: the statement may simply run again (a re-run of a send whose
idempotency record a concurrent send inserted first finds that record)."""
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # e.g. a query on a connection whose server process was terminated while it was
    # idle ("cannot switch to state ...; another operation is in progress")
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class _Connection(Protocol):
    """The part of ``asyncpg.Connection`` this module uses."""

    async def fetch(self, query: str, *args: object) -> list[Any]: ...

    async def fetchmany(self, query: str, args: list[tuple[Any, ...]]) -> list[Any]: ...

    async def close(self, *, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

    def is_closed(self) -> bool: ...

    def is_in_transaction(self) -> bool: ...


class HotPool:
    """At most ``size`` asyncpg connections, opened on demand and reused.

    Cheaper than ``asyncpg.Pool`` on this path: taking an idle connection does not
    suspend, returning one runs no reset query (every statement here is its own
    transaction, and nothing changes session state), and only a caller that must
    wait for a connection pays for a timeout. A connection that failed (or whose
    statement was interrupted) is closed, not reused.
    """

    def __init__(self, connect_kwargs: dict[str, Any], size: int, timeout_s: float) -> None:
        self._kwargs = connect_kwargs
        self._free = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self._timeout_s = timeout_s
        self._closing = False

    async def acquire(self) -> _Connection:
        """An idle connection, or a new one if fewer than ``size`` are open.

        Raises:
            StorageUnavailable: the pool is closed, or no connection within the timeout.
            OSError: connecting failed.
            asyncpg.PostgresError: the server refused the connection.
        """
        if self._closing:
            raise StorageUnavailable("the storage is closed")
        if self._free.locked():
            try:
                async with asyncio.timeout(self._timeout_s):  # no extra task, unlike wait_for
                    await self._free.acquire()
            except TimeoutError:
                raise StorageUnavailable("no PostgreSQL connection free in time") from None
        else:
            await self._free.acquire()  # does not suspend
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
            opened: _Connection = await asyncpg.connect(**self._kwargs)
            return opened
        except BaseException:
            self._free.release()
            raise

    def release(self, conn: _Connection, *, reusable: bool) -> None:
        """Give ``conn`` back; closed at once unless ``reusable`` and healthy."""
        if reusable and not self._closing and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append(conn)
        else:
            conn.terminate()
        self._free.release()

    async def aclose(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        self._closing = True
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.close(timeout=self._timeout_s)
            except _DRIVER_ERRORS:
                conn.terminate()


def _fail(calls: list[_Call], error: StorageUnavailable) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(error)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    """The typed error for a driver failure: the type and the first line of the
    message (a server message; ``DETAIL`` lines, which may quote a row, are dropped;
    asyncpg's client-side encoding errors quote the value, so they show only the type).
    """
    if isinstance(exc, asyncpg.PostgresError | OSError | TimeoutError):
        text = str(exc)
        reason = text.splitlines()[0] if text else ""
        return StorageUnavailable(f"{type(exc).__name__}: {reason}")
    return StorageUnavailable(type(exc).__name__)


@dataclass(slots=True)
class _Call:
    """One queued accept or ack: its statement (single and batched form), arguments
    and the caller's future (its rows)."""

    single: str
    batched: str
    args: tuple[Any, ...]
    future: asyncio.Future[list[Any]]


class PgHot:
    """The hot operations on PostgreSQL over a :class:`HotPool`; accepts and acks by
    group commit (module docstring)."""

    def __init__(self, pool: HotPool, attempts: int) -> None:
        self._pool = pool
        self._attempts = attempts
        self._queue: list[_Call] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def accepts_in_order(self) -> bool:
        """``True``: one writer runs the queued accepts in order, batch after batch."""
        return True

    async def _write(self, single: str, batched: str, *args: Any) -> list[Any]:
        """Queue one call for the next group commit; its rows once committed.

        Raises:
            StorageUnavailable: the database failed (or the storage is closing).
        """
        if self._closing:
            raise StorageUnavailable("the storage is closed")
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._writer = loop.create_task(self._write_loop(), name="e2ee-pg-writer")
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append(_Call(single, batched, args, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            while self._queue:
                batch = [c for c in self._queue[:MAX_BATCH] if not c.future.cancelled()]
                del self._queue[:MAX_BATCH]
                if batch:
                    await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[_Call]) -> None:
        """Run ``batch`` (accepts first, then acks, each kind one pipelined
        ``fetchmany``: one transaction) and answer every caller; never raises."""
        try:
            for kind in (_ACCEPT_BATCH, _ACK_BATCH):
                calls = [c for c in batch if c.batched == kind]
                if calls:
                    await self._commit_kind(kind, calls)
        except Exception as exc:  # a bug: never leave a caller waiting forever
            log.exception("PostgreSQL writer failed")
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(StorageUnavailable(type(exc).__name__))

    async def _commit_kind(self, kind: str, calls: list[_Call]) -> None:
        try:
            conn = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            _fail(calls, _unavailable(exc))
            return
        except StorageUnavailable as exc:
            _fail(calls, exc)
            return
        reusable = False
        rows: list[Any] | None = None
        try:
            rows = await conn.fetchmany(kind, [(*c.args, i) for i, c in enumerate(calls)])
            reusable = True
        except asyncpg.PostgresError as exc:
            if conn.is_closed():  # the server ended the session (terminated, shut down)
                _fail(calls, _unavailable(exc))
                return
            reusable = True  # rolled back as a whole: run the calls one by one below
        except _DRIVER_ERRORS as exc:
            _fail(calls, _unavailable(exc))
            return
        finally:
            self._pool.release(conn, reusable=reusable)
        if rows is not None:
            answers: list[list[Any]] = [[] for _ in calls]
            for row in rows:
                answers[row[0]].append(tuple(row)[1:])
            for call, answer in zip(calls, answers, strict=True):
                if not call.future.done():
                    call.future.set_result(answer)
            return
        for call in calls:  # one by one, in order: a bad call fails alone
            try:
                answer = await self._fetch(call.single, *call.args)
            except StorageUnavailable as exc:
                if not call.future.done():
                    call.future.set_exception(exc)
            else:
                if not call.future.done():
                    call.future.set_result(answer)

    async def _fetch(self, query: str, *args: object) -> list[Any]:
        """Run one statement (its own transaction), re-running it after a lost race.

        Raises:
            StorageUnavailable: the database failed, or the race was lost every time.
        """
        last: BaseException | None = None
        for _ in range(self._attempts):
            try:
                conn = await self._pool.acquire()
            except _DRIVER_ERRORS as exc:
                raise _unavailable(exc) from None
            reusable = False
            try:
                rows = await conn.fetch(query, *args)
                reusable = True
                return rows
            except _RETRY_ERRORS as exc:
                reusable = True  # a server error: the connection is fine
                last = exc
            except asyncpg.PostgresError as exc:
                reusable = True
                raise _unavailable(exc) from None
            except _DRIVER_ERRORS as exc:
                raise _unavailable(exc) from None
            finally:
                self._pool.release(conn, reusable=reusable)
        assert last is not None
        raise StorageUnavailable(
            f"gave up after {self._attempts} attempts: {_unavailable(last)}"
        ) from None

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
        """:func:`server.storage.sql_ops.accept` as one call of ``relay_accept``.

        Raises:
            IdempotencyConflict: the id was accepted before with another digest.
            UnknownAccount: an addressed user does not exist.
            QueueFull: an addressed device's queue is at ``queue_quota``.
            ValueError: a user or device addressed twice.
            StorageUnavailable: the database failed; nothing was stored (or, if the
                connection was lost during the commit, perhaps it was: a retry with
                the same id answers the original acceptance).
        """
        check_addressed(addressed)
        tu: list[str] = []
        td: list[int] = []
        tct: list[bytes] = []
        for user_id, devs in addressed:
            for device_id, ciphertext in devs:
                tu.append(user_id)
                td.append(device_id)
                tct.append(ciphertext)
        rows = await self._write(
            _ACCEPT,
            _ACCEPT_BATCH,
            sender_user,
            sender_device,
            client_msg_id,
            digest,
            now_ms,
            expires_at_ms,
            queue_quota,
            [u for u, _ in addressed],
            tu,
            td,
            tct,
        )
        status = rows[0][0] if rows else 0
        if status == 1:
            return Acceptance(
                accepted_at_ms=now_ms,
                deliveries=tuple((r[1], r[2], r[3]) for r in rows if r[1] is not None),
                duplicate=False,
            )
        if status == 2:
            return Acceptance(accepted_at_ms=rows[0][3], deliveries=(), duplicate=True)
        if status == 3:
            raise IdempotencyConflict(client_msg_id.hex())
        if status == 4:
            raise UnknownAccount(rows[0][1])
        if status == 5:
            return DeviceMismatch(
                tuple(MismatchedDevices(r[1], tuple(r[4]), tuple(r[5])) for r in rows)
            )
        if status == 6:
            raise QueueFull(rows[0][1], rows[0][2])
        raise StorageUnavailable(f"relay_accept answered an unknown status {status!r}")

    async def fetch(
        self, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
    ) -> list[QueuedMessage]:
        """:func:`server.storage.sql_ops.fetch` in one statement.

        Raises:
            StorageUnavailable: the database failed.
        """
        if limit <= 0:
            return []
        rows = await self._fetch(_FETCH, user_id, device_id, after_seq, now_ms, limit)
        return [QueuedMessage(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def ack(self, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
        """:func:`server.storage.sql_ops.ack` in one statement.

        Raises:
            StorageUnavailable: the database failed; nothing was deleted.
        """
        unique = sorted(set(seqs))
        if not unique:
            return 0
        rows = await self._write(_ACK, _ACK_BATCH, user_id, device_id, unique)
        gone: int = rows[0][0]
        return gone

    async def depth(self, user_id: str, device_id: int) -> int:
        """:func:`server.storage.sql_ops.depth` in one statement.

        Raises:
            StorageUnavailable: the database failed.
        """
        rows = await self._fetch(_DEPTH, user_id, device_id)
        n: int = rows[0][0] if rows else 0
        return n

    async def get_device(self, user_id: str, device_id: int) -> DeviceRecord | None:
        """:func:`server.storage.sql_ops.get_device` in one statement.

        Raises:
            StorageUnavailable: the database failed.
        """
        rows = await self._fetch(_DEVICE, user_id, device_id)
        if not rows:
            return None
        signing_pk, x25519_ik, pq = rows[0]
        return DeviceRecord(user_id, device_id, signing_pk, x25519_ik, bool(pq))

    async def aclose(self) -> None:
        """Finish the queued accepts and acks, then close the pool's connections."""
        self._closing = True
        if self._writer is not None:
            self._wake.set()
            await self._writer
        await self._pool.aclose()
