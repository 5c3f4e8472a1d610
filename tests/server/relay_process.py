"""A relay running as a separate process (``python -m e2ee serve``), for the system tests.

The harness itself lives in :mod:`client_sdk.testing.relay` (apps use it too); this
module adds what only the tests need: :meth:`RelayProcess.client` (a
:class:`~tests.server.relay_client.RelayClient` of the running relay) and
:meth:`RelayProcess.healthz` (the full ``/healthz`` response, through httpx). The
relay's origin is :data:`~tests.server.relay_client.ORIGIN`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from client_sdk.testing import relay as _harness
from client_sdk.testing.relay import (
    GENEROUS_RATES,
    RATE_FIELDS,
    RelayProcessError,
    free_port,
)
from tests.server.relay_client import ORIGIN, RelayClient

__all__ = [
    "GENEROUS_RATES",
    "RATE_FIELDS",
    "RelayProcess",
    "RelayProcessError",
    "Starter",
    "free_port",
    "relay_processes",
]

assert ORIGIN == _harness.DEFAULT_ORIGIN, "the harness's default origin is the tests' ORIGIN"


class RelayProcess(_harness.RelayProcess):
    """:class:`client_sdk.testing.relay.RelayProcess` with the tests' client."""

    def client(self) -> RelayClient:
        """A client of the running relay."""
        return RelayClient(self.port)

    async def healthz(self) -> httpx.Response:
        """``GET /healthz`` of the running relay."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.get(f"http://127.0.0.1:{self.port}/healthz")


Starter = Callable[..., Coroutine[Any, Any, RelayProcess]]


def relay_processes(workdir: Path) -> contextlib.AbstractAsyncContextManager[Starter]:
    """Yield ``start(database_url, **options) -> RelayProcess`` (started and healthy);
    every process started through it is killed at the end if still running."""
    return _harness.relay_processes(workdir, RelayProcess)
