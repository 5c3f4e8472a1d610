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
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from client_sdk.testing.relay import (
    PG_CONNECT_SECONDS,
    PostgresUnavailable,
    create_postgres_database,
    drop_postgres_database,
)
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

CONNECT_TIMEOUT_S = PG_CONNECT_SECONDS
"""How long to wait for the server before skipping."""


def pg_admin_url() -> str:
    """The maintenance connection's URL (``postgresql://``, as asyncpg takes it)."""
    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


async def create_database(prefix: str = "e2ee_test_") -> tuple[str, str]:
    """Create an empty database with a random name; returns (name, SQLAlchemy URL)
    (:func:`client_sdk.testing.relay.create_postgres_database`).

    Skips the test when the server is unreachable.
    """
    try:
        return await create_postgres_database(pg_admin_url(), prefix=prefix)
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


async def drop_database(name: str) -> None:
    """Drop a database made by :func:`create_database` (closing its sessions)."""
    try:
        await drop_postgres_database(name, pg_admin_url())
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


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
