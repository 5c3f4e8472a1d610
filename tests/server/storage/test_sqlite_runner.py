"""The SQLite wiring: durability settings, group commit with one SAVEPOINT per
operation (a refused operation never aborts its batch), acknowledged = committed."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event
from sqlalchemy.dialects import sqlite as sqlite_dialect

from server.storage import sql_ops
from server.storage import sqlite_hot as hot
from server.storage.base import (
    Acceptance,
    PreKeyIdReused,
    QueueFull,
    StorageUnavailable,
    UnknownAccount,
)
from server.storage.sql import SQLITE_BUSY_TIMEOUT_MS, SqliteRunner, SqlStorage, sqlite_engine

from .helpers import T0, TTL_MS, digest, make, prekey

pytestmark = pytest.mark.asyncio


@dataclass
class Opened:
    storage: SqlStorage
    path: Path
    commits: list[int]


@pytest_asyncio.fixture
async def opened(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Opened]:
    path = tmp_path / "relay.db"
    shutil.copyfile(sqlite_template, path)
    engine = sqlite_engine(f"sqlite+pysqlite:///{path}")
    commits: list[int] = []

    @event.listens_for(engine, "commit")
    def _count(_conn: Any) -> None:
        commits.append(1)

    storage = SqlStorage(SqliteRunner(engine), dialect="sqlite")
    try:
        yield Opened(storage, path, commits)
    finally:
        await storage.aclose()


def committed_rows(path: Path, table: str) -> int:
    """Rows of ``table`` as an independent connection sees them."""
    db = sqlite3.connect(path)
    try:
        (n,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)
    finally:
        db.close()


async def test_durability_settings(opened: Opened) -> None:
    await opened.storage.ping()
    runner_conn = opened.storage._runner._conn  # type: ignore[attr-defined]
    pragma = runner_conn.exec_driver_sql
    assert pragma("PRAGMA journal_mode").scalar() == "wal"
    assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
    assert pragma("PRAGMA foreign_keys").scalar() == 1
    assert pragma("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
    runner_conn.rollback()


async def test_acknowledged_means_committed(opened: Opened) -> None:
    s = opened.storage
    await make(s, "alice", [1])
    await make(s, "bob", [10])
    for i in range(5):
        await s.messages.accept(
            "alice",
            1,
            b"m%d" % i,
            digest(b"%d" % i),
            [("bob", [(10, b"c")]), ("alice", [])],
            T0,
            T0 + TTL_MS,
            100,
        )
        assert committed_rows(opened.path, "message_queue") == i + 1


async def test_group_commit_isolates_refusals(opened: Opened) -> None:
    s = opened.storage
    await make(s, "alice", [1])
    await make(s, "bob", [10])
    await s.prekeys.upload("bob", 10, prekey(1), [prekey(2)], [], None)

    def to_bob(i: int, quota: int = 100) -> Any:
        return s.messages.accept(
            "alice",
            1,
            b"g%d" % i,
            digest(b"%d" % i),
            [("bob", [(10, b"c%d" % i)]), ("alice", [])],
            T0,
            T0 + TTL_MS,
            quota,
        )

    before = len(opened.commits)
    outcomes = await asyncio.gather(
        to_bob(1),
        s.messages.accept("alice", 1, b"x", b"d", [("carol", [])], T0, T0 + TTL_MS, 100),
        to_bob(2),
        s.prekeys.upload("bob", 10, None, [prekey(3), prekey(2)], [], None),  # 2 reused
        to_bob(3, quota=2),  # the queue holds 2 by now
        to_bob(4),
        return_exceptions=True,
    )
    assert len(opened.commits) - before == 1  # one batch, one commit
    assert isinstance(outcomes[0], Acceptance)
    assert isinstance(outcomes[1], UnknownAccount)
    assert isinstance(outcomes[2], Acceptance)
    assert isinstance(outcomes[3], PreKeyIdReused)
    assert isinstance(outcomes[4], QueueFull)
    assert isinstance(outcomes[5], Acceptance)
    queue = await s.messages.fetch("bob", 10, 0, 10, T0)
    assert [m.ciphertext for m in queue] == [b"c1", b"c2", b"c4"]
    assert [m.seq for m in queue] == [1, 2, 3]  # the refused send took no number
    assert (await s.prekeys.status("bob", 10)).one_time_left == 1  # prekey 3 not stored
    assert committed_rows(opened.path, "message_queue") == 3


async def test_many_writers_share_commits(opened: Opened) -> None:
    s = opened.storage
    await make(s, "alice", [1])
    await make(s, "bob", [10])
    before = len(opened.commits)
    results = await asyncio.gather(
        *(
            s.messages.accept(
                "alice",
                1,
                b"w%d" % i,
                digest(b"%d" % i),
                [("bob", [(10, b"")]), ("alice", [])],
                T0,
                T0 + TTL_MS,
                1000,
            )
            for i in range(200)
        )
    )
    assert all(isinstance(r, Acceptance) for r in results)
    assert len(opened.commits) - before < 20
    assert committed_rows(opened.path, "message_queue") == 200


async def test_close_commits_queued_writes_then_refuses(opened: Opened) -> None:
    s = opened.storage
    await make(s, "alice", [1])
    pending = [
        asyncio.ensure_future(s.nonces.issue(b"n%d" % i, "register", T0 + 10)) for i in range(5)
    ]
    await asyncio.sleep(0)  # the writes are queued; the writer has not run yet
    assert committed_rows(opened.path, "nonces") == 0
    await s.aclose()
    await asyncio.gather(*pending)
    assert committed_rows(opened.path, "nonces") == 5
    with pytest.raises(StorageUnavailable):
        await s.nonces.issue(b"late", "register", T0 + 10)
    with pytest.raises(StorageUnavailable):
        await s.ping()


def _plans(path: Path) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of every hot statement as SQLite runs it."""
    statements: dict[str, tuple[str, int]] = {
        "accept: idempotency records": (hot._idempotency_many_sql(4), 12),
        "accept: addressed devices and counters": (hot._devices_many_sql(2), 2),
        "accept: counters": (hot._SET_COUNTERS, 4),
        "fetch": (hot._FETCH, 5),
        "ack": (hot._ack_sql(3), 5),
        "ack: uncount": (hot._UNCOUNT, 3),
    }
    for name, stmt in [
        ("claim", sql_ops._TAKE_ONE_TIME),
        ("claim: counts", sql_ops._COUNTS),
        ("depth", sql_ops._DEPTH),
        ("purge: expired", sql_ops._EXPIRED_QUEUE),
        ("purge: delete", sql_ops._DELETE_QUEUED),
        ("purge: old records", sql_ops._OLD_RECORDS),
    ]:
        compiled = stmt.compile(dialect=sqlite_dialect.dialect())
        statements[name] = (str(compiled), len(compiled.positiontup or []))
    db = sqlite3.connect(path)
    try:
        return {
            name: [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, [0] * n)]
            for name, (sql, n) in statements.items()
        }
    finally:
        db.close()


_VALUES_SCANS = re.compile(r"SCAN (v|\d+ CONSTANT ROWS)$")
"""Scans of the ``VALUES`` list a grouped lookup joins (its keys), not of a table."""


async def test_hot_statements_search_indexes(opened: Opened) -> None:
    for name, plan in _plans(opened.path).items():
        assert plan, name
        scans = [s for s in plan if s.startswith("SCAN") and not _VALUES_SCANS.match(s)]
        assert not scans, f"{name}: {plan}"
        assert any(step.startswith("SEARCH") for step in plan), f"{name}: {plan}"
