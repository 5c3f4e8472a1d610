"""A store remembers its relay origin and refuses another unless told to migrate
(issue 4 "API"), through ``Client.open``."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from client_sdk.client import Client
from client_sdk.errors import OriginMismatch, UsageError
from client_sdk.store import MemoryStore

OTHER = "wss://moved.relay.test"


@pytest.mark.asyncio
async def test_a_store_refuses_another_origin_unless_migrated(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", secrets.token_bytes(32)
    url = "ws://127.0.0.1:9"  # never contacted: opening a store needs no relay
    async with Client.open(url, store=path, key=key, origin="wss://first.relay.test") as c:
        assert not c.is_registered
    with pytest.raises(OriginMismatch):
        async with Client.open(url, store=path, key=key, origin=OTHER):
            pass  # pragma: no cover - open raises
    async with Client.open(url, store=path, key=key, origin=OTHER, migrate_origin=True) as c:
        assert c._store.origin == OTHER
    async with Client.open(url, store=path, key=key, origin=OTHER) as c:  # moved for good
        assert c._store.origin == OTHER
    with pytest.raises(UsageError):
        async with Client.open(
            url, store=MemoryStore(origin=OTHER), origin=OTHER, migrate_origin=True
        ):
            pass  # pragma: no cover - open raises
