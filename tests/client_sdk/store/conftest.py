"""The ``store`` fixture: every contract test runs on each implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from client_sdk.store import MemoryStore, Store
from tests.client_sdk.store.helpers import ORIGIN, new_key, open_keyed

IMPLEMENTATIONS = ["memory", "sqlite"]


@pytest_asyncio.fixture(params=IMPLEMENTATIONS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store of each implementation (SQLite: a real file)."""
    opened: Store
    if request.param == "memory":
        opened = MemoryStore(origin=ORIGIN)
    else:
        opened = await open_keyed(tmp_path / "store.db", new_key())
    try:
        yield opened
    finally:
        await opened.aclose()
