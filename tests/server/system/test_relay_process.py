"""The relay-process harness itself: a port collision is retried, a relay that cannot
start is reported with its log, and a stopped relay's process is gone."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from client_sdk.testing import relay as relay_harness
from tests.server.relay_process import RelayProcess, RelayProcessError, Starter
from tests.server.system.databases import Database


@pytest.mark.asyncio
async def test_port_collision_is_retried(
    sqlite_database: Database, start_relay: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        real = relay_harness.free_port
        monkeypatch.setattr(relay_harness, "free_port", lambda: next(ports, None) or real())
        relay = await start_relay(sqlite_database.url)
    assert relay.port != busy and relay.starts == 2
    assert "address already in use" in relay.logs[0].read_text().lower()
    assert (await relay.healthz()).status_code == 200
    assert await relay.kill() == -signal.SIGKILL
    assert not relay.running


@pytest.mark.asyncio
async def test_a_relay_that_cannot_start_is_reported(tmp_path: Path) -> None:
    relay = RelayProcess("mysql://nowhere/db", tmp_path)
    with pytest.raises(RelayProcessError, match="unsupported storage URL"):
        await relay.start()
    assert not relay.running
