"""Memory per idle connection: the relay's authenticated sockets against bare
Starlette sockets (issue 3: at most 2x).

For each server, in a fresh process: a few warm-up connections are opened and closed
(first-use imports and caches), the resident set size (``VmRSS``) is read, then
``N`` sockets are opened and left idle (the relay's are authenticated and caught up;
the bare ones are accepted by a Starlette WebSocket endpoint waiting in
``receive()``), the RSS is read again once it is stable, and the difference divided
by ``N`` is the memory per connection. The relay's accounts are registered through
its normal HTTP path first (with the bench's own generous registration and
authentication rate limits), so the baseline already holds whatever registration
left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from .accounts import BenchAccount, make_accounts, open_device, register_accounts
from .forwarder import WS_PATH
from .loadgen import WsClient, connect
from .servers import HOST, ServerProcess

__all__ = ["IdleResult", "measure_idle_sockets"]

WARMUP_SOCKETS: Final = 20
"""Opened and closed before the baseline, so first-use costs are not per-connection."""
OPEN_CONCURRENCY: Final = 200
"""Handshakes in flight at once while opening the sockets."""
SETTLE_S: Final = 1.0
"""Pause before each RSS reading; readings repeat until two agree within 1 %."""
MAX_SETTLE_READS: Final = 10


@dataclass
class IdleResult:
    """One server's memory per idle connection."""

    kind: str
    sockets: int
    rss_before_kib: int
    rss_after_kib: int
    open_seconds: float
    register_seconds: float | None

    @property
    def per_connection_kib(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.sockets


async def _stable_rss(server: ServerProcess) -> int:
    previous = server.rss_kib()
    for _ in range(MAX_SETTLE_READS):
        await asyncio.sleep(SETTLE_S)
        current = server.rss_kib()
        if abs(current - previous) <= 0.01 * previous:
            return current
        previous = current
    return previous


async def _open_all(
    count: int, opener: Callable[[int], Awaitable[WsClient]], progress: bool
) -> list[WsClient]:
    clients: list[WsClient] = []
    semaphore = asyncio.Semaphore(OPEN_CONCURRENCY)
    step = max(1, count // 10)

    async def one(i: int) -> None:
        async with semaphore:
            clients.append(await opener(i))
            if progress and len(clients) % step == 0:
                print(f"    open {len(clients):,}/{count:,}", flush=True)

    try:
        async with asyncio.TaskGroup() as group:
            for i in range(count):
                group.create_task(one(i))
    except BaseException:
        _close_all(clients)
        raise
    return clients


def _close_all(clients: list[WsClient]) -> None:
    for client in clients:
        client.close()


async def measure_idle_sockets(
    server: ServerProcess,
    sockets: int,
    *,
    origin: str | None,
    progress: bool = False,
    account_prefix: str = "idle",
) -> IdleResult:
    """Open ``sockets`` idle connections to ``server`` (bare when ``origin`` is None,
    else the relay, authenticating against ``origin``) and measure its RSS growth.

    Raises:
        RegistrationError: the relay refused a registration or an authentication.
        LoadError: a connection failed.
        ServerError: the server died.
    """
    register_seconds: float | None = None
    accounts: list[BenchAccount] = []
    if origin is None:

        async def opener(i: int) -> WsClient:
            return await connect(HOST, server.port, f"{WS_PATH}?pair=idle{i}&role=idle")

    else:
        relay_origin = origin
        accounts = make_accounts(account_prefix, sockets, seed=sockets)
        if progress:
            print(f"    registering {sockets:,} accounts", flush=True)
        register_seconds = await register_accounts(server.port, accounts, progress=progress)

        async def opener(i: int) -> WsClient:
            return await open_device(server.port, accounts[i], relay_origin)

    warm = await _open_all(min(WARMUP_SOCKETS, sockets), opener, progress=False)
    _close_all(warm)
    await asyncio.gather(*(c.closed for c in warm))
    before = await _stable_rss(server)
    start = time.perf_counter()
    clients = await _open_all(sockets, opener, progress)
    open_seconds = time.perf_counter() - start
    try:
        after = await _stable_rss(server)
        closed = [c for c in clients if c.closed.done()]
        if closed:
            raise RuntimeError(f"{len(closed)} idle sockets were closed by the server")
    finally:
        _close_all(clients)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 30)
    return IdleResult(server.kind, sockets, before, after, open_seconds, register_seconds)
