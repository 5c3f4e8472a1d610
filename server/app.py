"""The relay's Starlette app factory (issue 3): :func:`create_app`.

The app is composed of endpoint modules, each exporting
``routes(ctx: RelayContext) -> list[BaseRoute]`` (:data:`ROUTE_FACTORIES`). Its
lifespan opens storage (``settings.database_url``; ``memory://`` for tests) and the
notifier (Redis when ``redis_url`` is set, else in-process), runs the expiry purge,
and on shutdown closes every socket with ``GOING_AWAY`` before closing storage and
notifier. Storage or a notifier passed to :func:`create_app` are used as given and
left open (their owner closes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from e2ee.errors import E2EEError
from e2ee.primitives import spki_sha256
from e2ee.relay_frames import CloseCode

from . import api_accounts, api_blobs, api_links, api_ops, api_share, limits, ws
from .context import RelayContext, system_now_ms
from .errors import ConfigError, RelayError
from .http import error_response
from .hub import Hub
from .metrics import RelayMetrics
from .notify import MemoryNotifier, Notifier, RedisNotifier
from .ratelimit import RateLimiters
from .settings import RelaySettings
from .storage import open_storage
from .storage.base import Storage, StorageError

__all__ = [
    "MEMORY_URL",
    "ROUTE_FACTORIES",
    "RoutesFactory",
    "auth_spki_for",
    "create_app",
    "open_storage_for",
]

logger = logging.getLogger(__name__)

MEMORY_URL: Final = "memory://"
"""``database_url`` of an in-memory relay (tests; nothing survives a restart)."""

RoutesFactory = Callable[[RelayContext], list[BaseRoute]]

ROUTE_FACTORIES: Final[Sequence[RoutesFactory]] = (
    api_ops.routes,
    api_accounts.routes,
    ws.routes,
    # --- endpoint modules of other parts go here ---
    api_blobs.routes,
    api_links.routes,
    api_share.routes,
)
"""Every endpoint module of the relay, in routing order."""


async def open_storage_for(settings: RelaySettings) -> Storage:
    """Open the storage ``settings`` name (:func:`server.storage.open_storage`): a new
    SQLite file is created and migrated; an existing database must be at the schema
    this relay knows (``e2ee db upgrade`` otherwise).

    Raises:
        ConfigError: the URL names no storage this relay provides.
        StorageError: the database cannot be opened (``SchemaTooNew`` and
            ``SchemaOutdated`` among them).
    """
    if settings.uses_default_database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return await open_storage(settings.effective_database_url)
    except ValueError as exc:
        raise ConfigError(f"database_url: {exc}") from None


def auth_spki_for(settings: RelaySettings) -> tuple[bytes | None, ...]:
    """The SPKI hashes an auth statement may name under ``settings.spki_binding``.

    Raises:
        ConfigError: the certificate cannot be read.
    """
    mode = settings.effective_spki_binding
    if mode == "off":
        return (None,)
    if mode == "accepted":
        return settings.accepted_spki_hashes()
    if settings.tls_cert is None:  # the settings validator refuses this already
        raise ConfigError("spki_binding 'relay' needs tls_cert")
    try:
        pem = settings.tls_cert.read_text(encoding="ascii")
        return (spki_sha256(ssl.PEM_cert_to_DER_cert(pem)),)
    except (OSError, ValueError, E2EEError) as exc:
        raise ConfigError(f"cannot read the certificate {settings.tls_cert}: {exc}") from None


class _Purgeable(Protocol):
    """A store the expiry purge visits."""

    async def purge_expired(self, now_ms: int, limit: int) -> int: ...


async def _purge_once(ctx: RelayContext) -> int:
    """One round of the expiry purge over every store, in bounded batches (share links
    before blobs: a share's purge takes its blob along)."""
    storage = ctx.storage
    total = 0
    stores: tuple[_Purgeable, ...] = (
        storage.messages,
        storage.nonces,
        storage.links,
        storage.shares,
        storage.blobs,
    )
    for store in stores:
        for _ in range(100):  # at most 100 batches per store per round
            removed = await store.purge_expired(ctx.now_ms(), limits.PURGE_BATCH)
            total += removed
            if removed < limits.PURGE_BATCH:
                break
    return total


async def _purge_forever(ctx: RelayContext) -> None:
    while True:
        await asyncio.sleep(ctx.settings.purge_interval_seconds)
        try:
            ctx.metrics.purged.inc(await _purge_once(ctx))
        except StorageError:
            logger.warning("expiry purge failed; retrying next round", exc_info=True)


def create_app(
    settings: RelaySettings,
    *,
    storage: Storage | None = None,
    notifier: Notifier | None = None,
    clock: Callable[[], int] | None = None,
) -> Starlette:
    """The relay app for ``settings``.

    ``storage`` and ``notifier``, when given, are used as they are (and not closed on
    shutdown); ``clock`` replaces the wall clock (milliseconds).
    """
    ctx = RelayContext(
        settings=settings,
        hub=Hub(),
        limiters=RateLimiters.from_settings(settings),
        metrics=RelayMetrics(),
        now_ms=clock or system_now_ms,
        auth_spki=auth_spki_for(settings),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            opened_storage = storage
            if opened_storage is None:
                opened_storage = await open_storage_for(settings)
                stack.push_async_callback(opened_storage.aclose)
            opened_notifier = notifier
            if opened_notifier is None:
                opened_notifier = await _open_notifier(ctx, stack)
            ctx.attach(opened_storage, opened_notifier)
            stack.callback(ctx.detach)
            purge = asyncio.create_task(_purge_forever(ctx), name="e2ee-relay-purge")

            async def stop_purge() -> None:
                purge.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purge

            stack.push_async_callback(stop_purge)
            try:
                yield
            finally:
                await ctx.hub.close_all(
                    CloseCode.GOING_AWAY, "relay shutting down", limits.SHUTDOWN_CLOSE_SECONDS
                )

    async def relay_error(request: Request, exc: Exception) -> Response:
        return error_response(ctx, exc)

    routes: list[BaseRoute] = []
    for factory in ROUTE_FACTORIES:
        routes.extend(factory(ctx))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            RelayError: relay_error,
            StorageError: relay_error,
            E2EEError: relay_error,
        },
    )
    app.state.ctx = ctx
    return app


async def _open_notifier(ctx: RelayContext, stack: contextlib.AsyncExitStack) -> Notifier:
    url = ctx.settings.redis_url
    if url is None:
        memory = MemoryNotifier()
        stack.push_async_callback(memory.aclose)
        return memory
    client = aioredis.Redis.from_url(url)
    stack.push_async_callback(client.aclose)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise ConfigError(f"Redis is not reachable: {type(exc).__name__}") from None
    redis_notifier = RedisNotifier(client, ctx.settings.redis_prefix)
    await redis_notifier.start()
    stack.push_async_callback(redis_notifier.aclose)
    ctx.redis = client
    stack.callback(setattr, ctx, "redis", None)
    return redis_notifier
