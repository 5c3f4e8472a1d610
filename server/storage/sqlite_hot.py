"""The hot path (accept, fetch, ack) on SQLite as precompiled SQL on the raw driver.

``bench/storage_ops.py`` measured SQLAlchemy Core's per-statement cost on SQLite at
several times the statement itself (``docs/storage.md`` has the figures), and a send
runs about ten statements; so on SQLite these three operations skip the SQL
compiler and run fixed SQL strings on the ``sqlite3`` connection under the
SQLAlchemy :class:`~sqlalchemy.engine.Connection` (inside the same transaction and
SAVEPOINT the runner opened). They implement exactly :mod:`server.storage.sql_ops`'s
``accept``, ``fetch`` and ``ack`` (the contract suite runs them on SQLite; the Core
versions run on PostgreSQL), against the same Alembic-made schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import cache
from typing import Any, Final, cast

from sqlalchemy import Connection

from .base import (
    AcceptOutcome,
    QueuedMessage,
)
from .grouped import AcceptGroup
from .memory import check_addressed

__all__ = ["GROUPED", "accept", "accept_many", "ack", "ack_many", "fetch"]

_UNCOUNT = "UPDATE devices SET queued = queued - ? WHERE user_id = ? AND device_id = ?"
_ENQUEUE = (
    "INSERT INTO message_queue (user_id, device_id, seq, sender_user, sender_device,"
    " accepted_at_ms, expires_at_ms, ciphertext) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_RECORD = (
    "INSERT INTO idempotency (sender_user, sender_device, client_msg_id, digest,"
    " accepted_at_ms) VALUES (?, ?, ?, ?, ?)"
)
_FETCH = (
    "SELECT seq, sender_user, sender_device, accepted_at_ms, ciphertext FROM message_queue"
    " WHERE user_id = ? AND device_id = ? AND seq > ? AND expires_at_ms > ?"
    " ORDER BY seq LIMIT ?"
)


@cache
def _in_list(n: int) -> str:
    return ", ".join("?" * n)


@cache
def _ack_sql(n: int) -> str:
    return (
        "DELETE FROM message_queue WHERE user_id = ? AND device_id = ?"  # noqa: S608
        f" AND seq IN ({_in_list(n)})"
    )


@cache
def _idempotency_many_sql(n: int) -> str:
    values = ", ".join(["(?, ?, ?)"] * n)
    return (
        "SELECT i.sender_user, i.sender_device, i.client_msg_id, i.digest,"  # noqa: S608
        f" i.accepted_at_ms FROM (VALUES {values}) AS v JOIN idempotency i"
        " ON i.sender_user = v.column1 AND i.sender_device = v.column2"
        " AND i.client_msg_id = v.column3"
    )


@cache
def _devices_many_sql(n: int) -> str:
    return (
        "SELECT a.user_id, d.device_id, d.next_seq, d.queued FROM accounts a"  # noqa: S608
        " LEFT JOIN devices d ON d.user_id = a.user_id"
        f" WHERE a.user_id IN ({_in_list(n)})"
    )


_SET_COUNTERS = "UPDATE devices SET next_seq = ?, queued = ? WHERE user_id = ? AND device_id = ?"
_CHUNK: Final = 256
"""Keys per statement of the grouped lookups (3 parameters each, far below SQLite's
limit of 32,766)."""


def _padded(keys: list[Any]) -> list[Any]:
    """``keys`` (not empty) padded with its last key to the next power of two, so the
    grouped statements take a few shapes (the driver caches 128 prepared statements);
    a repeated key changes no answer."""
    size = 1 << (len(keys) - 1).bit_length()
    return keys + [keys[-1]] * (size - len(keys))


def _chunks(keys: list[Any]) -> list[list[Any]]:
    return [_padded(keys[i : i + _CHUNK]) for i in range(0, len(keys), _CHUNK)]


def _db(conn: Connection) -> sqlite3.Connection:
    return cast(sqlite3.Connection, conn.connection.driver_connection)


def accept(
    conn: Connection,
    sender_user: str,
    sender_device: int,
    client_msg_id: bytes,
    digest: bytes,
    addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
    now_ms: int,
    expires_at_ms: int,
    queue_quota: int,
) -> AcceptOutcome:
    """:func:`server.storage.sql_ops.accept` in raw SQL: :func:`accept_many` with one
    call (the writer runs every send through the grouped form).

    Raises:
        IdempotencyConflict: the id was accepted before with another digest.
        UnknownAccount: an addressed user does not exist.
        QueueFull: an addressed device's queue is at ``queue_quota``.
        ValueError: a user or device addressed twice.
    """
    args = (sender_user, sender_device, client_msg_id, digest, addressed)
    ((ok, value),) = accept_many(conn, [(*args, now_ms, expires_at_ms, queue_quota)])
    if not ok:
        raise value
    outcome: AcceptOutcome = value
    return outcome


def fetch(
    conn: Connection, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
) -> list[QueuedMessage]:
    """:func:`server.storage.sql_ops.fetch` in raw SQL."""
    if limit <= 0:
        return []
    rows = _db(conn).execute(_FETCH, (user_id, device_id, after_seq, now_ms, limit))
    return [QueuedMessage(*r) for r in rows]


def ack(conn: Connection, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
    """:func:`server.storage.sql_ops.ack` in raw SQL: :func:`ack_many` with one call."""
    ((_, gone),) = ack_many(conn, [(user_id, device_id, seqs)])
    count: int = gone
    return count


_Call = tuple[Any, ...]
"""One call's arguments, without the connection."""
_Outcome = tuple[bool, Any]
"""``(True, result)`` or ``(False, exception)``: what the call returned or raised."""


def accept_many(conn: Connection, calls: Sequence[_Call]) -> list[_Outcome]:
    """:func:`accept` for each of ``calls`` (its arguments after ``conn``), with the
    outcomes (and the database afterwards) of running them one after the other, in
    a few statements for the whole group: one lookup of the idempotency records, one
    of the addressed users' devices and counters, then the queue rows, the records
    and the counters written with ``executemany``.

    A refused call (a typed error, a device mismatch, a duplicate) writes nothing.

    Raises:
        sqlite3.Error: the database failed (the caller rolls the group back).
    """
    db = _db(conn)
    outcomes: list[_Outcome | None] = [None] * len(calls)
    valid: list[int] = []
    for i, call in enumerate(calls):
        try:
            check_addressed(call[4])
        except ValueError as exc:
            outcomes[i] = (False, exc)
        else:
            valid.append(i)
    if not valid:
        return cast(list[_Outcome], outcomes)
    group = AcceptGroup()
    keys = list(dict.fromkeys((calls[i][0], calls[i][1], calls[i][2]) for i in valid))
    for chunk in _chunks(keys):
        params = [p for key in chunk for p in key]
        for user, device, msg_id, digest, at in db.execute(
            _idempotency_many_sql(len(chunk)), params
        ):
            group.records[(user, device, msg_id)] = (digest, at)
    users = list(dict.fromkeys(u for i in valid for u, _ in calls[i][4]))
    for chunk in _chunks(users):
        for u, d, next_seq, queued in db.execute(_devices_many_sql(len(chunk)), chunk):
            devices = group.current.setdefault(u, set())
            if d is not None:
                devices.add(d)
                group.counters[(u, d)] = [next_seq, queued]
    for i in valid:
        try:
            outcomes[i] = (True, group.accept(*calls[i]))
        except Exception as exc:  # a typed refusal of this call only
            outcomes[i] = (False, exc)
    if group.recorded:  # a send to no device is recorded too
        db.executemany(_ENQUEUE, group.rows)
        db.executemany(_RECORD, group.recorded)
        db.executemany(_SET_COUNTERS, [(n, q, u, d) for (u, d), (n, q) in group.changed.items()])
    return cast(list[_Outcome], outcomes)


def ack_many(conn: Connection, calls: Sequence[_Call]) -> list[_Outcome]:
    """:func:`ack` for each of ``calls`` (``(user_id, device_id, seqs)``), with the
    outcomes of running them one after the other: one ``DELETE`` per call, the queue
    depths written together.

    Raises:
        sqlite3.Error: the database failed (the caller rolls the group back).
    """
    db = _db(conn)
    outcomes: list[_Outcome] = []
    gone_by_device: dict[tuple[str, int], int] = {}
    for user_id, device_id, seqs in calls:
        unique = sorted(set(seqs))
        gone = 0
        if unique:
            gone = db.execute(_ack_sql(len(unique)), (user_id, device_id, *unique)).rowcount
        if gone:
            target = (user_id, device_id)
            gone_by_device[target] = gone_by_device.get(target, 0) + gone
        outcomes.append((True, gone))
    if gone_by_device:
        db.executemany(_UNCOUNT, [(n, u, d) for (u, d), n in gone_by_device.items()])
    return outcomes


GROUPED: Final[dict[Any, Any]] = {accept: accept_many, ack: ack_many}
"""The operations the SQLite writer runs as one group per run of them in a batch, with
their grouped form (in this order: a group's sends, then its acknowledgements)."""
