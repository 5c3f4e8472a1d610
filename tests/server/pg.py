"""The real PostgreSQL for the tests that need it (CONVENTIONS 14).

Each test session gets its own randomly named database, ``e2ee_test_<random>``,
created on first use on the PostgreSQL the development machines and CI run
(127.0.0.1:5432, user ``postgres``; ``E2EE_TEST_PG_URL`` overrides the maintenance
connection) and dropped at the end of the session. When the server is unreachable
the test skips with the reason, under the same policy as :mod:`tests.services`
(``E2EE_REQUIRE_SERVICES=1`` turns that skip into a failure).

Use::

    from tests.server.pg import pg_url  # the session fixture, used by name

    async def test_x(pg_url: str) -> None:  # migrated to the newest schema
        storage = await open_storage(pg_url)

and :func:`truncate_all` to start a test from empty tables, or
:func:`scratch_database` for a database of one's own (e.g. to test migrations).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.storage.migrate import upgrade_database
from server.storage.schema import metadata

__all__ = [
    "DEFAULT_PG_URL",
    "PG_URL_ENV",
    "create_database",
    "drop_database",
    "pg_admin_url",
    "pg_url",
    "scratch_database",
    "truncate_all",
]

PG_URL_ENV = "E2EE_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
"""The maintenance connection: any database of the server, used to create and drop
the tests' own databases (loopback only)."""
T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
"""How long to wait for the server before skipping."""


def pg_admin_url() -> str:
    """The maintenance connection's URL (``postgresql://``, as asyncpg takes it)."""
    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


def _url_for(database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the test server."""
    url = make_url(pg_admin_url()).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def _admin() -> asyncpg.Connection:
    dsn = make_url(pg_admin_url()).set(drivername="postgresql")
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn.render_as_string(hide_password=False), timeout=CONNECT_TIMEOUT_S
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {dsn!r}: {exc}")
    return conn


async def create_database(prefix: str = "e2ee_test_") -> tuple[str, str]:
    """Create an empty database with a random name; returns (name, SQLAlchemy URL).

    Skips the test when the server is unreachable.
    """
    name = f"{prefix}{secrets.token_hex(6)}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, _url_for(name)


async def drop_database(name: str) -> None:
    """Drop a database made by :func:`create_database` (closing its sessions)."""
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh, empty database for one test (dropped afterwards); yields its URL."""
    name, url = await create_database()
    try:
        yield url
    finally:
        await drop_database(name)


def _run(coro: Coroutine[object, object, T]) -> T:
    """Run ``coro`` on a loop of its own in a worker thread (a session fixture may be
    first requested from inside an async test's running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """This session's PostgreSQL database, migrated to the newest schema; its URL."""
    name, url = _run(create_database())
    try:
        upgrade_database(url)
        yield url
    finally:
        _run(drop_database(name))


async def truncate_all(url: str) -> None:
    """Empty every table of the relay's schema in ``url``'s database (``DELETE``, much
    faster than ``TRUNCATE`` on the few rows a test leaves)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute(
            "; ".join(f"DELETE FROM {t.name}" for t in reversed(metadata.sorted_tables))
        )
    finally:
        await conn.close()
