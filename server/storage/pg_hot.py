"""The hot path on PostgreSQL (accept, fetch, ack, depth, device lookup) as fixed SQL
on raw asyncpg connections (``docs/storage.md``: the wiring and its figures).

Through SQLAlchemy Core and ``AsyncConnection.run_sync`` a send cost BEGIN, five
statements and COMMIT, one round trip each, plus the greenlet hop and the compiler;
the relay's process was CPU-bound on that. Here a read is ONE statement in autocommit
mode (its own transaction: one round trip), and accepts and acks go through a group
commit (below; with ``synchronous_commit`` on, the commit has flushed the WAL before
any caller is answered). The statements:

* accept: ``SELECT * FROM relay_accept(...)``, the PL/pgSQL function of migration
  ``0002`` (idempotency check, device-set check, locking the target devices in
  sorted order, quota check, sequence numbers, queue rows and the idempotency record),
  when a group of sends (below) had to be run again call by call;
* ack: one ``DELETE ... RETURNING`` with the ``queued`` counter update in a CTE,
  when a batch (below) had to be run again call by call;
* fetch, depth, the device lookup: one ``SELECT``.

They implement exactly :mod:`server.storage.sql_ops`'s ``accept``, ``fetch``, ``ack``,
``depth`` and ``get_device`` against the same Alembic-made schema; the contract suite
runs them on PostgreSQL. asyncpg prepares each statement once per connection and
caches it. The connections are a small pool of their own (:class:`HotPool`), with the
same session settings as the SQLAlchemy engine's (``synchronous_commit`` on,
``enable_seqscan`` off, the application name, the statement timeout).

**Group commit.** Accepts and acks do not run one statement per call: a single writer
task per relay process queues them and runs everything queued (at most
:data:`MAX_BATCH` calls) as one transaction, one batch after the other: BEGIN; one
statement reads the addressed users' devices with their counters, locking them and the
acknowledging users' device rows at once in the one order every multi-device locker
uses (so two nodes' batches never deadlock), and the idempotency records of the
group's ids; the checks of each send run in memory, in order
(:class:`~server.storage.grouped.AcceptGroup`); one statement writes the queue rows,
the records, deletes the batch's acknowledged entries and sets every touched device's
counters from arrays; COMMIT. Four round trips and one commit per batch with sends
(one, the write statement alone, with acks only), and a few set-based statements
instead of about six inside ``relay_accept`` per send (PostgreSQL's own CPU was most
of a send's cost). The acks of a batch apply after its sends, as run one by one in
that order (an entry the batch itself inserts is deleted in memory: the write
statement's parts see one snapshot).
Under load a batch holds many sends, and calls are accepted in the order they were
queued (:attr:`PgHot.accepts_in_order`). A batch that fails as a whole on a server
error (a lost race, a deadlock with another node, a constraint) is rolled back and
its calls are run again one by one (``relay_accept`` and the single ack statement, in
arrival order), so one bad call fails alone; a connection lost mid-batch fails every
call of it with :class:`~server.storage.base.StorageUnavailable` (as for a single
statement, the commit may or may not have happened: a send retried with its id
answers the original acceptance).

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
from .grouped import AcceptGroup
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
_GROUP_READ = (
    "WITH d AS MATERIALIZED ("
    " SELECT user_id, device_id, next_seq, queued FROM devices"
    " WHERE user_id = ANY($1::text[])"
    ' ORDER BY user_id COLLATE "C", device_id FOR UPDATE'
    ")"
    " SELECT 0::smallint AS k, a.user_id AS u, d.device_id::bigint AS dv,"
    " d.next_seq::bigint AS n, d.queued::bigint AS q, NULL::bytea AS id, NULL::bytea AS dg"
    " FROM accounts a LEFT JOIN d ON d.user_id = a.user_id WHERE a.user_id = ANY($1::text[])"
    " UNION ALL"
    " SELECT 1::smallint, i.sender_user, i.sender_device::bigint, i.accepted_at_ms::bigint,"
    " NULL::bigint, i.client_msg_id, i.digest"
    " FROM unnest($2::text[], $3::bigint[], $4::bytea[]) AS k(u, dv, id)"
    " JOIN idempotency i ON i.sender_user = k.u AND i.sender_device = k.dv"
    " AND i.client_msg_id = k.id"
)
"""What a group of sends needs, in one statement: the addressed users' accounts and
devices with their counters (``k = 0``; a user without devices has one row with
``NULL``s, an unknown user none), every device row locked in the one order every
multi-device locker uses (byte order of the user id, then the device id), so no device
goes and no counter moves until the group commits; and the idempotency records of the
group's ids (``k = 1``: ``n`` is the record's ``accepted_at_ms``)."""
_GROUP_WRITE = (
    "WITH q AS ("
    " INSERT INTO message_queue (user_id, device_id, seq, sender_user, sender_device,"
    " accepted_at_ms, expires_at_ms, ciphertext)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],"
    " $6::bigint[], $7::bigint[], $8::bytea[])"
    "), r AS ("
    " INSERT INTO idempotency (sender_user, sender_device, client_msg_id, digest,"
    " accepted_at_ms)"
    " SELECT * FROM unnest($9::text[], $10::bigint[], $11::bytea[], $12::bytea[],"
    " $13::bigint[])"
    "), gone AS ("
    " DELETE FROM message_queue m WHERE m.ctid = ANY (ARRAY("
    " SELECT e.ctid FROM unnest($18::text[], $19::bigint[], $20::bigint[]) AS a(u, dv, s)"
    " CROSS JOIN LATERAL ("
    " SELECT ctid FROM message_queue WHERE user_id = a.u AND device_id = a.dv AND seq = a.s"
    " LIMIT 1"
    " ) AS e"
    " ))"
    " RETURNING m.user_id, m.device_id, m.seq"
    "), counted AS ("
    " UPDATE devices d"
    " SET next_seq = coalesce(c.n, d.next_seq), queued = coalesce(c.q, d.queued) - c.gone"
    " FROM ("
    " SELECT u, dv, max(n) AS n, max(q) AS q, sum(k) AS gone FROM ("
    " SELECT u, dv, n, q, 0 AS k"
    " FROM unnest($14::text[], $15::bigint[], $16::bigint[], $17::bigint[]) AS s(u, dv, n, q)"
    " UNION ALL SELECT user_id, device_id, NULL, NULL, 1 FROM gone"
    " ) AS x GROUP BY u, dv"
    " ) AS c"
    " WHERE d.user_id = c.u AND d.device_id = c.dv"
    ")"
    " SELECT user_id, device_id::bigint, seq::bigint FROM gone"
)
"""What a batch writes, in one statement: the group's queue rows and idempotency
records, the deletion of the batch's acknowledged entries, and the counters of every
device it touched (a device the group sent to gets its new ``next_seq`` and ``queued``,
any device less what the acks deleted there), each device reached by one index probe
(joined on computed keys, PostgreSQL scanned them all or compared every pair). Returns
the deleted entries. Its parts see one snapshot, so an ack of an entry the same batch
inserts is applied in memory (:func:`_claim_acks`)."""
_FETCH = (
    "SELECT seq, sender_user, sender_device, accepted_at_ms, ciphertext FROM message_queue"
    " WHERE user_id = $1 AND device_id = $2 AND seq > $3 AND expires_at_ms > $4"
    " ORDER BY seq LIMIT $5"
)
_ACK = (
    "WITH gone AS ("
    " DELETE FROM message_queue"
    " WHERE user_id = $1 AND device_id = $2 AND seq = ANY($3::bigint[]) RETURNING seq"
    "), n AS (SELECT count(*) AS n FROM gone),"
    " uncount AS ("
    " UPDATE devices SET queued = queued - n.n FROM n"
    " WHERE user_id = $1 AND device_id = $2 AND n.n > 0"
    ")"
    " SELECT n FROM n"
)
"""Delete one ack's entries and uncount them in one statement (the ``devices`` row is
locked after the queue rows, as the purge does), when a batch runs call by call."""
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

    async def close(self, *, timeout: float | None = None) -> None: ...

    def terminate(self) -> None: ...

    def is_closed(self) -> bool: ...

    def is_in_transaction(self) -> bool: ...

    def transaction(self) -> Any: ...


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
    """One queued accept or ack: its arguments and the caller's future (the call's
    outcome: an :data:`~server.storage.base.AcceptOutcome`, or the count an ack
    deleted)."""

    accept: bool
    args: tuple[Any, ...]
    """An accept's :meth:`PgHot.accept` arguments; an ack's ``_ACK`` parameters."""
    future: asyncio.Future[Any]


def _answer(call: _Call, ok: bool, value: Any) -> None:
    if not call.future.done():
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)


async def _write_batch(
    conn: _Connection, sends: list[tuple[Any, ...]], acks: list[tuple[Any, ...]]
) -> tuple[list[tuple[bool, Any]], list[int]]:
    """The sends (each :meth:`PgHot.accept`'s arguments) and acks (each ``_ACK``'s
    parameters) of one batch on ``conn``: with sends, in its open transaction, one
    statement reads (and locks) what they need and the checks run in memory in order
    (:class:`~server.storage.grouped.AcceptGroup`); then one statement writes the sends
    and deletes the acknowledged entries (with acks only, that statement is the whole
    batch, its own transaction). Returns ``(True, outcome)`` or ``(False, typed
    refusal)`` per send, and how many entries each ack deleted.

    Raises:
        asyncpg.PostgresError: the database refused (the caller rolls back and runs
            the calls one by one).
    """
    group = AcceptGroup()
    outcomes: list[tuple[bool, Any]] = []
    if sends:
        # The acknowledging users' devices are locked too, with the rest in the one
        # order: a batch takes every device lock it needs at once (two nodes' batches,
        # each acknowledging a device the other sends to, deadlocked otherwise).
        addressed = [u for call in sends for u, _ in call[4]]
        users = list(dict.fromkeys(addressed + [ack[0] for ack in acks]))
        keys = list(dict.fromkeys((call[0], call[1], call[2]) for call in sends))
        rows = await conn.fetch(
            _GROUP_READ, users, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
        )
        for kind, user, device, n, q, msg_id, digest in rows:
            if kind == 0:
                devices = group.current.setdefault(user, set())
                if device is not None:
                    devices.add(device)
                    group.counters[(user, device)] = [n, q]
            else:
                group.records[(user, device, msg_id)] = (digest, n)
        for call in sends:
            try:
                outcomes.append((True, group.accept(*call)))
            except (IdempotencyConflict, UnknownAccount, QueueFull) as exc:
                outcomes.append((False, exc))
    counts, owners = _claim_acks(group, acks)
    if group.recorded or owners:  # a send to no device is recorded too
        counters = [(u, d, n, q) for (u, d), (n, q) in group.changed.items()]
        columns = [
            column
            for rows, width in (
                (group.rows, 8),
                (group.recorded, 5),
                (counters, 4),
                (list(owners), 3),
            )
            for column in _columns(rows, width)
        ]
        for user, device, seq in await conn.fetch(_GROUP_WRITE, *columns):
            counts[owners[(user, device, seq)]] += 1
    return outcomes, counts


def _claim_acks(
    group: AcceptGroup, acks: list[tuple[Any, ...]]
) -> tuple[list[int], dict[tuple[str, int, int], int]]:
    """Each acknowledged entry of a batch's acks, for the first ack that names it (a
    later one finds it gone, as run one by one). An entry the batch's own sends insert
    is dropped from ``group`` here (the write statement's deletion would not see it)
    and counted at once. Returns the counts so far per ack and the entries left for the
    write statement to delete, each with the index of its ack."""
    counts = [0] * len(acks)
    owners: dict[tuple[str, int, int], int] = {}
    inserted = {(row[0], row[1], row[2]) for row in group.rows}
    dropped: set[tuple[str, int, int]] = set()
    for i, (user, device, seqs) in enumerate(acks):
        for seq in seqs:
            key = (user, device, seq)
            if key in owners or key in dropped:
                continue
            if key in inserted:
                dropped.add(key)
                group.counters[(user, device)][1] -= 1
                counts[i] += 1
            else:
                owners[key] = i
    if dropped:
        group.rows = [row for row in group.rows if (row[0], row[1], row[2]) not in dropped]
    return counts, owners


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """``rows`` (each ``width`` values) as ``width`` arrays, one per column (empty
    arrays when there is no row: a send to no device writes only its record)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _accept_params(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``relay_accept``'s parameters for one send (:meth:`PgHot.accept`'s arguments)."""
    sender_user, sender_device, client_msg_id, digest, addressed = args[:5]
    now_ms, expires_at_ms, queue_quota = args[5:]
    tu: list[str] = []
    td: list[int] = []
    tct: list[bytes] = []
    for user_id, devs in addressed:
        for device_id, ciphertext in devs:
            tu.append(user_id)
            td.append(device_id)
            tct.append(ciphertext)
    return (
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


def _accept_outcome(rows: list[Any], args: tuple[Any, ...]) -> AcceptOutcome:
    """The outcome of one ``relay_accept`` call from its rows.

    Raises:
        IdempotencyConflict, UnknownAccount, QueueFull: the send was refused.
        StorageUnavailable: an unknown status.
    """
    client_msg_id, now_ms = args[2], args[5]
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

    async def _write(self, accept: bool, *args: Any) -> Any:
        """Queue one call for the next group commit; its outcome once committed.

        Raises:
            StorageUnavailable: the database failed (or the storage is closing).
            IdempotencyConflict, UnknownAccount, QueueFull: an accept refused.
        """
        if self._closing:
            raise StorageUnavailable("the storage is closed")
        loop = asyncio.get_running_loop()
        if self._writer is None:
            self._writer = loop.create_task(self._write_loop(), name="e2ee-pg-writer")
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Call(accept, args, future))
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
        """Run ``batch`` as one transaction (its sends as one group, then its acks, in
        one write statement: :func:`_write_batch`) and answer every caller; never
        raises."""
        try:
            await self._commit_batch(batch)
        except Exception as exc:  # a bug: never leave a caller waiting forever
            log.exception("PostgreSQL writer failed")
            _fail(batch, StorageUnavailable(type(exc).__name__))

    async def _commit_batch(self, batch: list[_Call]) -> None:
        accepts = [c for c in batch if c.accept]
        acks = [c for c in batch if not c.accept]
        try:
            conn = await self._pool.acquire()
        except _DRIVER_ERRORS as exc:
            _fail(batch, _unavailable(exc))
            return
        except StorageUnavailable as exc:
            _fail(batch, exc)
            return
        reusable = committed = False
        outcomes: list[tuple[bool, Any]] = []
        counts: list[int] = []
        try:
            if accepts:
                async with conn.transaction():
                    outcomes, counts = await _write_batch(
                        conn, [c.args for c in accepts], [c.args for c in acks]
                    )
            else:  # one statement: a transaction of its own
                outcomes, counts = await _write_batch(conn, [], [c.args for c in acks])
            reusable = committed = True
        except asyncpg.PostgresError as exc:
            if conn.is_closed():  # the server ended the session (terminated, shut down)
                _fail(batch, _unavailable(exc))
                return
            reusable = True  # rolled back as a whole: run the calls one by one below
        except _DRIVER_ERRORS as exc:
            _fail(batch, _unavailable(exc))
            return
        finally:
            self._pool.release(conn, reusable=reusable)
        if committed:
            for call, (ok, value) in zip(accepts, outcomes, strict=True):
                _answer(call, ok, value)
            for call, count in zip(acks, counts, strict=True):
                _answer(call, True, count)
            return
        for call in batch:  # one by one, in order: a bad call fails alone
            try:
                if call.accept:
                    value = _accept_outcome(
                        await self._fetch(_ACCEPT, *_accept_params(call.args)), call.args
                    )
                else:
                    value = (await self._fetch(_ACK, *call.args))[0][0]
            except (StorageUnavailable, IdempotencyConflict, UnknownAccount, QueueFull) as exc:
                _answer(call, False, exc)
            else:
                _answer(call, True, value)

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
        """:func:`server.storage.sql_ops.accept`, in the writer's next group (or, when
        that group was rolled back, as one call of ``relay_accept``).

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
        outcome: AcceptOutcome = await self._write(
            True,
            sender_user,
            sender_device,
            client_msg_id,
            digest,
            addressed,
            now_ms,
            expires_at_ms,
            queue_quota,
        )
        return outcome

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
        gone: int = await self._write(False, user_id, device_id, unique)
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
