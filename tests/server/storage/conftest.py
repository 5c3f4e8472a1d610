"""Fixtures of the storage contract suite: one ``storage`` per implementation.

Every contract test runs on memory, on a SQLite file of its own (a copy of a file
migrated once per session) and on this session's PostgreSQL database (emptied before
each test).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from server.storage import open_storage
from server.storage.base import Storage
from server.storage.migrate import upgrade_database
from tests.server.pg import pg_url, truncate_all

__all__ = ["pg_url"]  # the fixture, used by name

BACKENDS = ["memory", "sqlite", "postgresql"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A SQLite file migrated to the newest schema, copied by each test."""
    path = tmp_path_factory.mktemp("template") / "relay.db"
    upgrade_database(f"sqlite:///{path}")
    yield path


async def open_backend(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Storage:
    """A fresh, empty storage of ``kind``."""
    if kind == "memory":
        return await open_storage("memory://")
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "relay.db"
        await asyncio.to_thread(shutil.copyfile, template, path)
        return await open_storage(f"sqlite:///{path}")
    url: str = request.getfixturevalue("pg_url")
    await truncate_all(url)
    return await open_storage(url)


@pytest_asyncio.fixture(params=BACKENDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """An empty storage of each implementation."""
    opened = await open_backend(request, request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def sql_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """An empty SQL storage (SQLite file or PostgreSQL)."""
    opened = await open_backend(request, request.param, tmp_path)
    try:
        yield opened
    finally:
        await opened.aclose()
