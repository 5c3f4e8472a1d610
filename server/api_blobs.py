"""Blobs over HTTP (issue 3 "Blobs"; DESIGN 5): attachments and, later, share links.

* ``PUT /v1/blobs`` (device-authenticated, :mod:`server.blob_auth`): the body is
  streamed with ``request.stream()`` (never read whole), cut into rows of at most
  1 MiB (:data:`~server.storage.base.MAX_BLOB_CHUNK`) and stored as it arrives. The
  relay picks the id: 16 random bytes (128 bits), answered in base64url with the size
  and the expiry (creation + the message TTL) as JSON ``{id, size, expires_at_ms}``.
  The maximum blob size (:data:`MAX_BLOB_SIZE`) and the device's byte quota
  (``blob_quota_bytes``) are enforced while streaming; on any refusal, failure or
  client disconnect the partial blob is deleted before the request ends.
* ``GET /v1/blobs/{id}`` (device-authenticated): the blob's bytes, streamed one
  storage query per chunk with ``Content-Length``, so the relay holds at most about
  one chunk per download. ``404`` when unknown, incomplete or expired. A blob
  deleted mid-download ends the response short of its ``Content-Length`` (the
  client sees a broken transfer, never a silently short blob).
* ``DELETE /v1/blobs/{id}`` (device-authenticated): by the device that uploaded it;
  any other device gets ``404`` (as for an unknown id).

Ids are capabilities among registered devices: any authenticated device that knows
an id can download it (the content is end-to-end encrypted by the uploader). Every
request is rate limited per device after authentication, which itself is rate limited
per client IP. Errors are JSON from the one refusal table (:mod:`server.errors`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from . import blob_auth
from .blob_auth import AuthenticatedDevice, authenticate, b64url_decode, b64url_encode
from .context import RelayContext
from .errors import InvalidRequest, NotFound, TooLarge
from .ratelimit import RateLimiter
from .storage.base import MAX_BLOB_CHUNK, BlobRecord, StorageError

__all__ = ["BLOB_ID_SIZE", "MAX_BLOB_SIZE", "routes", "store_blob"]

logger = logging.getLogger(__name__)

BLOB_ID_SIZE: Final = 16
"""Blob ids are 16 random bytes chosen by the relay (128 bits: unguessable, so an id
is a capability, and collisions never happen in practice)."""
MAX_BLOB_SIZE: Final = 100 * 1024 * 1024
"""Largest single blob (100 MiB): a large video attachment; bigger files are split by
the client. Checked against ``Content-Length`` first and again while streaming."""
_DEVICE_LIMITER: Final = "blob requests per device"
_OCTET_STREAM: Final = "application/octet-stream"


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isascii() or not declared.isdigit():
        raise InvalidRequest("Content-Length is not a decimal number")
    return int(declared)


async def store_blob(
    ctx: RelayContext, request: Request, owner: AuthenticatedDevice, blob_id: bytes
) -> BlobRecord:
    """Stream the request body into a new blob ``blob_id`` of ``owner`` and complete it;
    returns its record. On any exception (refusal, storage failure, client disconnect,
    cancellation) the partial blob is deleted before the exception propagates.

    Raises:
        TooLarge: the blob passes :data:`MAX_BLOB_SIZE`.
        InvalidRequest: the body is empty.
        BlobQuotaExceeded: the owner's byte quota would be exceeded.
        BlobExists: the id is taken (never in practice: ids are random).
        ClientDisconnect: the client went away mid-upload.
        StorageUnavailable: storage failed.
    """
    blobs = ctx.storage.blobs
    quota = ctx.settings.blob_quota_bytes
    now = ctx.now_ms()
    expires_at_ms = now + ctx.settings.message_ttl_seconds * 1000
    await blobs.begin(blob_id, owner.user_id, owner.device_id, now, expires_at_ms, quota)
    try:
        size = 0
        index = 0
        pending = bytearray()
        async for piece in request.stream():
            size += len(piece)
            if size > MAX_BLOB_SIZE:
                raise TooLarge("blob", MAX_BLOB_SIZE)
            pending += piece
            while len(pending) >= MAX_BLOB_CHUNK:
                with memoryview(pending) as view:
                    chunk = bytes(view[:MAX_BLOB_CHUNK])
                del pending[:MAX_BLOB_CHUNK]
                await blobs.append(blob_id, index, chunk, quota)
                index += 1
                del chunk  # not held while the next piece is awaited
        if size == 0:
            raise InvalidRequest("empty blob")
        if pending:
            await blobs.append(blob_id, index, bytes(pending), quota)
        return await blobs.complete(blob_id)
    except BaseException:
        await _discard(ctx, blob_id)
        raise


async def _discard(ctx: RelayContext, blob_id: bytes) -> None:
    """Delete a partial blob; a storage failure here is logged, and the expiry purge
    removes the upload later (abandoned uploads expire like complete blobs)."""
    try:
        await ctx.storage.blobs.delete(blob_id)
    except StorageError:
        logger.warning("could not delete a partial blob; the expiry purge will", exc_info=True)


async def _chunks(ctx: RelayContext, blob_id: bytes) -> AsyncIterator[bytes]:
    """The blob's chunks, one storage query each. Storage raising mid-stream (the blob
    deleted, the database failing) propagates, so the server cuts the response short
    of its ``Content-Length``."""
    stream = ctx.storage.blobs.chunks(blob_id)
    try:
        async for chunk in stream:
            yield chunk
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(StorageError):
                await aclose()


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``POST /v1/auth/nonce``, ``PUT /v1/blobs``, ``GET`` and ``DELETE /v1/blobs/{id}``."""

    def device_limiter() -> RateLimiter:
        return ctx.limiters.named(_DEVICE_LIMITER, ctx.settings.rate_http)

    async def authorised(request: Request) -> AuthenticatedDevice:
        device = await authenticate(ctx, request)
        device_limiter().check(device.key)
        return device

    async def put_blob(request: Request) -> Response:
        """
        summary: Upload a blob (device-authenticated, streamed).
        description: >-
          The body is the blob's bytes (application/octet-stream), at most 100 MiB,
          within the device's byte quota. The relay picks the id. Answers JSON
          {id (base64url of 16 bytes), size, expires_at_ms}.
        responses:
          201:
            description: stored
          400:
            description: malformed authentication headers or an empty body
          401:
            description: authentication missing or refused
          413:
            description: above the maximum blob size or the device's quota
          429:
            description: rate limited
        """
        owner = await authorised(request)
        declared = _declared_length(request)
        if declared is not None and declared > MAX_BLOB_SIZE:
            raise TooLarge("blob", MAX_BLOB_SIZE)
        blob_id = ctx.rng(BLOB_ID_SIZE)
        try:
            record = await store_blob(ctx, request, owner, blob_id)
        except ClientDisconnect:
            logger.debug("blob upload abandoned by the client; partial blob deleted")
            return Response(status_code=400)  # nobody reads it: the client is gone
        return JSONResponse(
            {
                "id": b64url_encode(blob_id),
                "size": record.size,
                "expires_at_ms": record.expires_at_ms,
            },
            status_code=201,
        )

    async def get_blob(request: Request) -> Response:
        """
        summary: Download a blob (device-authenticated, streamed).
        responses:
          200:
            description: the blob's bytes (application/octet-stream) with Content-Length
          400:
            description: malformed id or authentication headers
          401:
            description: authentication missing or refused
          404:
            description: unknown, incomplete or expired blob
          429:
            description: rate limited
        """
        await authorised(request)
        blob_id = b64url_decode(request.path_params["blob_id"], BLOB_ID_SIZE, "blob id")
        record = await ctx.storage.blobs.get(blob_id, ctx.now_ms())
        if record is None:
            raise NotFound("no such blob")
        return StreamingResponse(
            _chunks(ctx, blob_id),
            media_type=_OCTET_STREAM,
            headers={"Content-Length": str(record.size)},
        )

    async def delete_blob(request: Request) -> Response:
        """
        summary: Delete a blob (by the device that uploaded it).
        responses:
          204:
            description: deleted
          400:
            description: malformed id or authentication headers
          401:
            description: authentication missing or refused
          404:
            description: unknown or expired blob, or not this device's
          429:
            description: rate limited
        """
        device = await authorised(request)
        blob_id = b64url_decode(request.path_params["blob_id"], BLOB_ID_SIZE, "blob id")
        record = await ctx.storage.blobs.get(blob_id, ctx.now_ms())
        if record is None or (record.owner_user, record.owner_device) != (
            device.user_id,
            device.device_id,
        ):
            raise NotFound("no such blob")
        await ctx.storage.blobs.delete(blob_id)
        return Response(status_code=204)

    return [
        *blob_auth.routes(ctx),
        Route("/v1/blobs", put_blob, methods=["PUT"]),
        Route("/v1/blobs/{blob_id}", get_blob, methods=["GET"]),
        Route("/v1/blobs/{blob_id}", delete_blob, methods=["DELETE"]),
    ]
