"""Operational HTTP endpoints: health, readiness, metrics, OpenAPI and the client
configuration (``/v1/config``)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

from e2ee.relay_frames import (
    MAX_ACKS_PER_FRAME,
    MAX_ADDRESSED_USERS,
    MAX_PREKEYS_PER_UPLOAD,
    RELAY_PROTOCOL_VERSIONS,
)

from . import api_blobs, limits
from .context import RelayContext
from .metrics import CONTENT_TYPE_LATEST
from .storage.base import StorageError

__all__ = ["client_config", "routes"]

_SCHEMAS = SchemaGenerator(
    {
        "openapi": "3.0.0",
        "info": {"title": "e2ee relay", "version": "1"},
    }
)


def client_config(ctx: RelayContext) -> dict[str, Any]:
    """What clients must respect, as ``GET /v1/config`` serves it."""
    s = ctx.settings
    return {
        "protocol_versions": list(RELAY_PROTOCOL_VERSIONS),
        "origin": s.effective_origin,
        "spki_binding": s.effective_spki_binding,
        "max_frame": limits.MAX_FRAME,
        "max_acks_per_frame": MAX_ACKS_PER_FRAME,
        "max_addressed_users": MAX_ADDRESSED_USERS,
        "max_prekeys_per_upload": MAX_PREKEYS_PER_UPLOAD,
        "message_ttl_ms": s.message_ttl_seconds * 1000,
        "max_share_link_ttl_ms": s.max_share_link_ttl_seconds * 1000,
        "max_share_size": s.max_share_size_bytes,
        "queue_quota": s.queue_quota,
        "blob_quota_bytes": s.blob_quota_bytes,
        "max_blob_size": api_blobs.MAX_BLOB_SIZE,
        "blob_chunk_size": limits.BLOB_CHUNK_SIZE,
        "link_max_blob": limits.LINK_MAX_BLOB,
        "link_ttl_ms": limits.LINK_TTL_SECONDS * 1000,
        "prekeys_low": limits.PREKEYS_LOW,
        "nonce_ttl_ms": limits.NONCE_TTL_MS,
        "delivery_window": limits.DELIVERY_WINDOW,
        "registration_token_required": s.registration_token is not None,
    }


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, ``/v1/config``."""

    async def healthz(request: Request) -> Response:
        """
        summary: Liveness (the process answers).
        responses:
          200:
            description: alive
        """
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """
        summary: Readiness (the database and, when configured, Redis answer).
        responses:
          200:
            description: ready
          503:
            description: a dependency does not answer
        """
        checks: dict[str, str] = {}
        ready = ctx.started
        if ready:
            try:
                await ctx.storage.ping()
                checks["database"] = "ok"
            except StorageError:
                checks["database"] = "unavailable"
                ready = False
            if ctx.redis is not None:
                try:
                    await ctx.redis.ping()
                    checks["redis"] = "ok"
                except (RedisError, OSError):
                    checks["redis"] = "unavailable"
                    ready = False
        else:
            checks["relay"] = "starting"
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(request: Request) -> Response:
        """
        summary: Prometheus metrics (text exposition format).
        responses:
          200:
            description: metrics
        """
        ctx.metrics.connections.set(len(ctx.hub))
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def config(request: Request) -> Response:
        """
        summary: What clients must respect (limits, TTLs, protocol versions).
        responses:
          200:
            description: the client configuration (JSON)
        """
        return JSONResponse(client_config(ctx))

    async def openapi(request: Request) -> Response:
        """
        summary: This API's OpenAPI description.
        responses:
          200:
            description: OpenAPI 3 (JSON)
        """
        return JSONResponse(_SCHEMAS.get_schema(routes=list(request.app.routes)))

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/config", config, methods=["GET"]),
    ]
