"""Fixtures shared by the tests of ``client_sdk.testing`` that put a real relay behind a
:class:`~client_sdk.testing.proxy.FaultProxy` (a test module's own fixture of the same
name takes precedence)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from client_sdk.testing.proxy import FaultProxy
from tests.server.relay_client import RunningRelay, relay_settings, running_relay


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    """A real relay (uvicorn in this event loop, on 127.0.0.1) on a SQLite file."""
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


@pytest_asyncio.fixture
async def proxy(relay: RunningRelay) -> AsyncIterator[FaultProxy]:
    """A :class:`FaultProxy` in front of ``relay`` (seeded), stopped at teardown."""
    async with FaultProxy(relay.port, seed=5) as running:
        yield running
