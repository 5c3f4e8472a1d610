"""The databases of the system tests: a fresh one per test (a SQLite file, or a new
randomly named PostgreSQL database dropped afterwards) with direct read access to
count rows beside the relay."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncpg
from sqlalchemy.engine import make_url

from server.storage.migrate import upgrade_database
from tests.server.pg import create_database, drop_database

__all__ = ["DB_KINDS", "Database", "DbKind", "make_database"]

DbKind = Literal["sqlite", "postgresql"]
DB_KINDS: tuple[DbKind, ...] = ("sqlite", "postgresql")


@dataclass
class Database:
    """One test's relay database and direct read access to it (to count rows)."""

    kind: DbKind
    url: str
    """The storage URL given to the relay."""
    sqlite_path: Path | None = None
    pg_name: str | None = None

    async def scalar(self, sql: str, *args: Any) -> Any:
        """The first column of the first row of ``sql`` (``?`` placeholders)."""
        if self.sqlite_path is not None:
            return await asyncio.to_thread(self._sqlite_scalar, sql, args)
        index = 0

        def numbered(part: str) -> str:
            nonlocal index
            index += 1
            return f"${index}{part}"

        head, *rest = sql.split("?")
        pg_sql = head + "".join(numbered(part) for part in rest)
        dsn = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval(pg_sql, *args)
        finally:
            await conn.close()

    def _sqlite_scalar(self, sql: str, args: tuple[Any, ...]) -> Any:
        # A read-only connection beside the relay's (WAL: readers never block it).
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute(sql, args).fetchone()
            return None if row is None else row[0]
        finally:
            conn.close()

    async def queue_rows(self, user_id: str) -> int:
        """Queue entries of every device of ``user_id``."""
        count: int = await self.scalar(
            "SELECT count(*) FROM message_queue WHERE user_id = ?", user_id
        )
        return count

    async def idempotency_rows(self, sender_user: str) -> int:
        """Idempotency records (accepted sends) of ``sender_user``."""
        count: int = await self.scalar(
            "SELECT count(*) FROM idempotency WHERE sender_user = ?", sender_user
        )
        return count

    async def accepted(self, sender_user: str, client_msg_id: bytes) -> bool:
        """Whether a send of ``sender_user`` with ``client_msg_id`` is committed."""
        count = await self.scalar(
            "SELECT count(*) FROM idempotency WHERE sender_user = ? AND client_msg_id = ?",
            sender_user,
            client_msg_id,
        )
        return bool(count)


async def make_database(kind: DbKind, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh database of ``kind`` (PostgreSQL: migrated, dropped afterwards; SQLite:
    a file the relay creates and migrates itself)."""
    if kind == "sqlite":
        path = tmp_path / "db" / "relay.db"
        path.parent.mkdir()
        yield Database("sqlite", f"sqlite:///{path}", sqlite_path=path)
        return
    name, url = await create_database("e2ee_systest_")
    try:
        await asyncio.to_thread(upgrade_database, url)
        yield Database("postgresql", url, pg_name=name)
    finally:
        await drop_database(name)
