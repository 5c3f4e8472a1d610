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
from typing import cast

from sqlalchemy import Connection

from .base import (
    Acceptance,
    AcceptOutcome,
    IdempotencyConflict,
    QueuedMessage,
    QueueFull,
)
from .memory import check_addressed, device_mismatch

__all__ = ["accept", "ack", "fetch"]

_IDEMPOTENCY = (
    "SELECT digest, accepted_at_ms FROM idempotency"
    " WHERE sender_user = ? AND sender_device = ? AND client_msg_id = ?"
)
_NEXT_SEQ = (
    "UPDATE devices SET next_seq = next_seq + 1, queued = queued + 1"
    " WHERE user_id = ? AND device_id = ? RETURNING next_seq, queued"
)
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
def _addressed_sql(n: int) -> str:
    return (
        "SELECT a.user_id, d.device_id FROM accounts a"  # noqa: S608
        " LEFT JOIN devices d ON d.user_id = a.user_id"
        f" WHERE a.user_id IN ({_in_list(n)})"
    )


@cache
def _ack_sql(n: int) -> str:
    return (
        "DELETE FROM message_queue WHERE user_id = ? AND device_id = ?"  # noqa: S608
        f" AND seq IN ({_in_list(n)})"
    )


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
    """:func:`server.storage.sql_ops.accept` in raw SQL.

    Raises:
        IdempotencyConflict: the id was accepted before with another digest.
        UnknownAccount: an addressed user does not exist.
        QueueFull: an addressed device's queue is at ``queue_quota``.
        ValueError: a user or device addressed twice.
    """
    check_addressed(addressed)
    db = _db(conn)
    previous = db.execute(_IDEMPOTENCY, (sender_user, sender_device, client_msg_id)).fetchone()
    if previous is not None:
        if previous[0] != digest:
            raise IdempotencyConflict(client_msg_id.hex())
        return Acceptance(accepted_at_ms=previous[1], deliveries=(), duplicate=True)
    users = [u for u, _ in addressed]
    current: dict[str, set[int]] = {}
    for u, d in db.execute(_addressed_sql(len(users)), users):
        devices = current.setdefault(u, set())
        if d is not None:
            devices.add(d)
    mismatch = device_mismatch(addressed, current, sender_user, sender_device)
    if mismatch is not None:
        return mismatch
    targets = [(u, d) for u, devs in addressed for d, _ in devs]
    seqs: dict[tuple[str, int], int] = {}
    depths: dict[tuple[str, int], int] = {}
    for u, d in sorted(targets):
        next_seq, depths[(u, d)] = db.execute(_NEXT_SEQ, (u, d)).fetchone()
        seqs[(u, d)] = next_seq - 1
    for target in targets:
        if depths[target] > queue_quota:
            raise QueueFull(*target)
    db.executemany(
        _ENQUEUE,
        [
            (u, d, seqs[(u, d)], sender_user, sender_device, now_ms, expires_at_ms, ct)
            for u, devs in addressed
            for d, ct in devs
        ],
    )
    db.execute(_RECORD, (sender_user, sender_device, client_msg_id, digest, now_ms))
    return Acceptance(
        accepted_at_ms=now_ms,
        deliveries=tuple((u, d, seqs[(u, d)]) for u, d in targets),
        duplicate=False,
    )


def fetch(
    conn: Connection, user_id: str, device_id: int, after_seq: int, limit: int, now_ms: int
) -> list[QueuedMessage]:
    """:func:`server.storage.sql_ops.fetch` in raw SQL."""
    if limit <= 0:
        return []
    rows = _db(conn).execute(_FETCH, (user_id, device_id, after_seq, now_ms, limit))
    return [QueuedMessage(*r) for r in rows]


def ack(conn: Connection, user_id: str, device_id: int, seqs: Sequence[int]) -> int:
    """:func:`server.storage.sql_ops.ack` in raw SQL."""
    unique = sorted(set(seqs))
    if not unique:
        return 0
    db = _db(conn)
    gone: int = db.execute(_ack_sql(len(unique)), (user_id, device_id, *unique)).rowcount
    if gone:
        db.execute(_UNCOUNT, (gone, user_id, device_id))
    return gone
