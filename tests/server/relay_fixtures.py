"""Fixtures that run a real relay (uvicorn on 127.0.0.1) for the relay's tests.

``relay`` runs over every storage (in memory, a SQLite file, the real PostgreSQL);
``memory_relay`` only in memory, for the tests whose subject is not storage.
Import the fixtures by name into a test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.server.relay_client import RunningRelay, relay_settings, running_relay

__all__ = ["STORAGES", "memory_relay", "relay", "relay_for"]

STORAGES = ("memory", "sqlite", "postgresql")


def database_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """The storage URL of ``kind`` for one test."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def relay_for(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=database_url(request, kind, tmp_path))
    async with running_relay(settings) as running:
        yield running


@pytest_asyncio.fixture(params=STORAGES)
async def relay(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningRelay]:
    """A relay over each storage in turn."""
    async for running in relay_for(request, request.param, tmp_path):
        yield running


@pytest_asyncio.fixture
async def memory_relay(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RunningRelay]:
    """A relay in memory."""
    async for running in relay_for(request, "memory", tmp_path):
        yield running
