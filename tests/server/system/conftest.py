"""Fixtures of the system tests: a fresh database per test (:mod:`.databases`) and a
starter of relay processes that are all stopped at the end of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.server.relay_process import Starter, relay_processes
from tests.server.system.databases import DB_KINDS, Database, make_database


@pytest_asyncio.fixture(params=DB_KINDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh SQLite file, then a fresh PostgreSQL database."""
    async for db in make_database(request.param, tmp_path):
        yield db


@pytest_asyncio.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh SQLite file (for the tests whose subject is not storage)."""
    async for db in make_database("sqlite", tmp_path):
        yield db


@pytest_asyncio.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[Starter]:
    """``await start_relay(database_url, **options)``: a healthy ``e2ee serve`` process
    (:class:`tests.server.relay_process.RelayProcess`); all are killed at the end."""
    async with relay_processes(tmp_path / "relays") as start:
        yield start
