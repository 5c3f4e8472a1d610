"""Driver failures become StorageUnavailable, the failed operation changed nothing, and
nothing committed before is lost (SQLite: a lock held by another process; PostgreSQL:
the session killed mid-transaction, and an unreachable server)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.storage import open_storage, sql
from server.storage.base import Acceptance, Storage, StorageUnavailable
from tests.server.pg import pg_url, truncate_all

from .helpers import QUOTA, T0, TTL_MS, digest, make

__all__ = ["pg_url"]

pytestmark = pytest.mark.asyncio

SECRET_LOOKING = b"ciphertext-that-must-not-reach-an-error-message"
POLL_S = 0.02
POLL_LIMIT = 250  # 5 s


def leaks(exc: BaseException) -> bool:
    """Whether the error or anything it was raised from shows the ciphertext."""
    shown = SECRET_LOOKING.decode()[:24]
    while True:
        if shown in str(exc) or shown in repr(exc):
            return True
        if exc.__cause__ is None:
            return False
        exc = exc.__cause__


async def send(storage: Storage, msg_id: bytes) -> object:
    return await storage.messages.accept(
        "alice",
        1,
        msg_id,
        digest(msg_id),
        [("bob", [(10, SECRET_LOOKING + msg_id)]), ("alice", [])],
        T0,
        T0 + TTL_MS,
        QUOTA,
    )


async def test_leak_check_can_fail() -> None:
    cause = RuntimeError(f"[parameters: {SECRET_LOOKING!r}]")
    wrapped = StorageUnavailable("database is locked")
    wrapped.__cause__ = cause
    assert leaks(wrapped)
    assert not leaks(StorageUnavailable("database is locked"))


async def test_sqlite_locked_by_another_process(
    tmp_path: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "relay.db"
    shutil.copyfile(sqlite_template, path)
    storage = await open_storage(f"sqlite:///{path}")
    try:
        await make(storage, "alice", [1])
        await make(storage, "bob", [10])
        for i in range(3):
            assert isinstance(await send(storage, b"ok%d" % i), Acceptance)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            outcomes = await asyncio.gather(
                send(storage, b"late1"), send(storage, b"late2"), return_exceptions=True
            )
            assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes
            assert not any(isinstance(o, BaseException) and leaks(o) for o in outcomes)
            assert [m.seq for m in await storage.messages.fetch("bob", 10, 0, 10, T0)] == [1, 2, 3]
        finally:
            other.execute("ROLLBACK")
            other.close()
        # Nothing of the failed batch was stored: the retries are fresh acceptances.
        for msg_id in (b"late1", b"late2"):
            again = await send(storage, msg_id)
            assert isinstance(again, Acceptance)
            assert not again.duplicate
        assert await storage.messages.depth("bob", 10) == 5
    finally:
        await storage.aclose()
    # Everything acknowledged is in the file, read by an independent connection.
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT count(*) FROM message_queue").fetchone() == (5,)
    finally:
        check.close()


async def _admin(url: str) -> asyncpg.Connection:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    return conn


async def test_postgres_session_killed_mid_transaction(pg_url: str) -> None:
    await truncate_all(pg_url)
    storage = await open_storage(pg_url)
    admin = await _admin(pg_url)
    try:
        await make(storage, "alice", [1])
        await make(storage, "bob", [10])
        assert isinstance(await send(storage, b"ok"), Acceptance)
        blocker = await _admin(pg_url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(
                "SELECT 1 FROM devices WHERE user_id = 'bob' AND device_id = 10 FOR UPDATE"
            )
            pending = asyncio.create_task(send(storage, b"doomed"))
            pid = None
            for _ in range(POLL_LIMIT):  # the send now waits for the row lock
                pid = await admin.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
                    " AND datname = current_database() AND wait_event_type = 'Lock'",
                    sql.PG_APPLICATION_NAME,
                )
                if pid is not None:
                    break
                await asyncio.sleep(POLL_S)
            assert pid is not None, "the send never waited for the lock"
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(StorageUnavailable) as info:
                await pending
            assert not leaks(info.value)
            await tx.rollback()
        finally:
            await blocker.close()
        # The committed message is there; the killed one is not (its retry is fresh).
        assert [m.ciphertext for m in await storage.messages.fetch("bob", 10, 0, 10, T0)] == [
            SECRET_LOOKING + b"ok"
        ]
        again = await send(storage, b"doomed")
        assert isinstance(again, Acceptance)
        assert not again.duplicate
        assert await admin.fetchval("SELECT count(*) FROM message_queue") == 2
    finally:
        await admin.close()
        await storage.aclose()


async def test_unreachable_postgres_is_unavailable() -> None:
    with pytest.raises(StorageUnavailable):
        await open_storage("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
