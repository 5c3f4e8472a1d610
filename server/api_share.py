"""Share links over HTTP (issue 6; DESIGN 4.7; ``docs/blobs-and-links.md``).

A client makes a share link offline: a random 16-byte id, a link key that never
leaves the clients (it travels after ``#`` in the link), and a ciphertext bound to
the id, the expiry and the view limit. The relay stores that ciphertext with the
SHA-256 of the download proof and serves it only to a request carrying the proof; it
never sees a key or a plaintext.

* ``PUT /v1/share/{id}`` (device-authenticated like ``PUT /v1/blobs``,
  :mod:`server.blob_auth`): headers ``X-E2EE-Proof-Hash`` (64 hex characters),
  ``X-E2EE-Expires-At`` (ms since the epoch, within ``max_share_link_ttl_seconds``
  of now) and optionally ``X-E2EE-Max-Views`` (1 to
  :data:`~server.limits.SHARE_MAX_VIEWS`). The body (at most
  ``max_share_size_bytes``) is streamed with that cap and held until it is complete,
  so a refused upload stores nothing; then the share is stored in one transaction
  (its ciphertext as a blob of the blob storage). Answers ``201`` JSON
  ``{id, expires_at_ms}``.
* ``POST /v1/share/{id}/open``: body the 32-byte proof (unauthenticated: link
  holders are not users; rate limited per client IP). ``200`` with the ciphertext
  when SHA-256 of the proof matches the stored hash (constant-time compare) and the
  share has not expired; the view is counted atomically and the view that reaches
  the limit deletes the share. A wrong proof is ``403 wrong_proof``, counted; the
  :data:`~server.limits.SHARE_MAX_WRONG_PROOFS`-th deletes the share. Unknown,
  expired, deleted and used-up shares are one answer: ``404 not_found``.
* ``GET /s/{id}``: the link's own path, what a chat app's link preview fetches: a
  tiny static page saying to open the link in the app. It never reads storage, so it
  never returns the ciphertext, never counts a view and answers ``200`` for any id.
* ``DELETE /v1/share/{id}``: the uploading device (authenticated); ``204``, or
  ``404`` for anyone else or an unknown or expired share.

Errors are JSON from the one refusal table (:mod:`server.errors`), with the labels
the share-link API pins: ``bad_request``, ``ttl_too_long``, ``expired``, ``exists``,
``too_large``, ``wrong_proof``, ``not_found``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Final

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from e2ee.errors import DecodeError

from . import limits
from .api_blobs import BLOB_ID_SIZE
from .blob_auth import AuthenticatedDevice, authenticate, b64url_decode, b64url_encode
from .context import RelayContext
from .errors import (
    ShareBadRequest,
    ShareExpired,
    ShareNotFound,
    ShareTTLTooLong,
    TooLarge,
    WrongProof,
)
from .http import read_body
from .ratelimit import RateLimiter
from .storage.base import ShareWrongProof

__all__ = [
    "HEADER_EXPIRES_AT",
    "HEADER_MAX_VIEWS",
    "HEADER_PROOF_HASH",
    "PREVIEW_PAGE",
    "SHARE_ID_SIZE",
    "SHARE_PROOF_SIZE",
    "parse_share_id",
    "routes",
]

logger = logging.getLogger(__name__)

SHARE_ID_SIZE: Final = 16
"""Share ids are 16 random bytes chosen by the client (DESIGN 4.7)."""
SHARE_PROOF_SIZE: Final = 32
"""A download proof is a 32-byte BLAKE2b-256 MAC (DESIGN 4.7)."""
HEADER_PROOF_HASH: Final = "X-E2EE-Proof-Hash"
HEADER_EXPIRES_AT: Final = "X-E2EE-Expires-At"
HEADER_MAX_VIEWS: Final = "X-E2EE-Max-Views"

_DEVICE_LIMITER: Final = "share requests per device"
_OCTET_STREAM: Final = "application/octet-stream"
_HEX_SHA256: Final = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_DECIMAL: Final = re.compile(r"(0|[1-9][0-9]{0,17})", re.ASCII)
"""A non-negative decimal of at most 18 digits (fits a signed 64-bit column)."""
_NO_STORE: Final = {"Cache-Control": "no-store"}

PREVIEW_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>Encrypted share link</title>
</head>
<body>
<h1>Encrypted share link</h1>
<p>This link holds end-to-end encrypted data. Open it in the app it was shared from;
the key is in the link itself and is never sent to this server.</p>
</body>
</html>
"""
"""What ``GET /s/{id}`` serves, the same for every id (nothing about the share)."""
_PREVIEW_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}


def parse_share_id(text: str) -> bytes:
    """The share id of a path: base64url without padding of 16 bytes.

    Raises:
        ShareBadRequest: any other text.
    """
    try:
        return b64url_decode(text, SHARE_ID_SIZE, "share id")
    except DecodeError as exc:
        raise ShareBadRequest(str(exc)) from None


def _decimal(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    if _DECIMAL.fullmatch(value) is None:
        raise ShareBadRequest(f"{name} must be a decimal number")
    return int(value)


def _upload_headers(headers: Mapping[str, str]) -> tuple[bytes, int, int | None]:
    """The proof hash, expiry and view limit of an upload.

    Raises:
        ShareBadRequest: a header is missing or malformed.
    """
    proof_hash = headers.get(HEADER_PROOF_HASH)
    if proof_hash is None or _HEX_SHA256.fullmatch(proof_hash) is None:
        raise ShareBadRequest(f"{HEADER_PROOF_HASH} must be 64 hex characters (a SHA-256)")
    expires_at_ms = _decimal(headers, HEADER_EXPIRES_AT)
    if expires_at_ms is None:
        raise ShareBadRequest(f"missing {HEADER_EXPIRES_AT} header")
    max_views = _decimal(headers, HEADER_MAX_VIEWS)
    if max_views is not None and not 1 <= max_views <= limits.SHARE_MAX_VIEWS:
        raise ShareBadRequest(f"{HEADER_MAX_VIEWS} must be 1 to {limits.SHARE_MAX_VIEWS}")
    return bytes.fromhex(proof_hash), expires_at_ms, max_views


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``PUT``, ``DELETE /v1/share/{id}``, ``POST /v1/share/{id}/open``, ``GET /s/{id}``."""

    def device_limiter() -> RateLimiter:
        return ctx.limiters.named(_DEVICE_LIMITER, ctx.settings.rate_http)

    async def authorised(request: Request) -> AuthenticatedDevice:
        device = await authenticate(ctx, request)
        device_limiter().check(device.key)
        return device

    async def put_share(request: Request) -> Response:
        """
        summary: Upload a share link's ciphertext (device-authenticated).
        description: >-
          Headers X-E2EE-Proof-Hash (hex SHA-256 of the download proof),
          X-E2EE-Expires-At (ms since the epoch, at most max_share_link_ttl from now),
          optional X-E2EE-Max-Views (1 to 1000). Body the ciphertext, at most
          max_share_size bytes. Answers JSON {id, expires_at_ms}.
        responses:
          201:
            description: stored
          400:
            description: >-
              bad_request (id, headers, empty body), ttl_too_long, expired, or
              malformed authentication headers
          401:
            description: authentication missing or refused
          409:
            description: exists (an unexpired share has this id)
          413:
            description: too_large (above max_share_size or the device's blob quota)
          429:
            description: rate limited
        """
        owner = await authorised(request)
        share_id = parse_share_id(request.path_params["share_id"])
        proof_hash, expires_at_ms, max_views = _upload_headers(request.headers)
        now = ctx.now_ms()
        if expires_at_ms <= now:
            raise ShareExpired("the share link's expiry has passed")
        ttl_ms = ctx.settings.max_share_link_ttl_seconds * 1000
        if expires_at_ms - now > ttl_ms:
            raise ShareTTLTooLong(f"a share link lives at most {ttl_ms} ms")
        try:
            data = await read_body(request, ctx.settings.max_share_size_bytes, "share link")
        except ClientDisconnect:
            logger.debug("share upload abandoned by the client; nothing stored")
            return Response(status_code=400)  # nobody reads it: the client is gone
        if not data:
            raise ShareBadRequest("empty share link")
        record = await ctx.storage.shares.create(
            share_id,
            ctx.rng(BLOB_ID_SIZE),
            owner.user_id,
            owner.device_id,
            proof_hash,
            data,
            now,
            expires_at_ms,
            max_views,
            ctx.settings.blob_quota_bytes,
        )
        ctx.metrics.shares_stored.inc()
        return JSONResponse(
            {"id": b64url_encode(share_id), "expires_at_ms": record.expires_at_ms},
            status_code=201,
        )

    async def open_share(request: Request) -> Response:
        """
        summary: Open a share link with its download proof.
        description: >-
          Body the 32-byte download proof (no authentication; rate limited per client
          IP). Counts a view; the view that reaches the limit deletes the share.
        responses:
          200:
            description: the ciphertext (application/octet-stream)
          400:
            description: bad_request (id, or a body that is not 32 bytes)
          403:
            description: wrong_proof (counted; the 5th deletes the share)
          404:
            description: not_found (unknown, expired, deleted or used up)
          429:
            description: rate limited
        """
        ctx.limiters.http.check(ctx.client_ip(request.client))
        share_id = parse_share_id(request.path_params["share_id"])
        try:
            proof = await read_body(request, SHARE_PROOF_SIZE, "share proof")
        except TooLarge:
            raise ShareBadRequest(f"the body must be the {SHARE_PROOF_SIZE}-byte proof") from None
        if len(proof) != SHARE_PROOF_SIZE:
            raise ShareBadRequest(f"the body must be the {SHARE_PROOF_SIZE}-byte proof")
        outcome = await ctx.storage.shares.open(
            share_id,
            hashlib.sha256(proof).digest(),
            ctx.now_ms(),
            limits.SHARE_MAX_WRONG_PROOFS,
        )
        if outcome is None:
            raise ShareNotFound("no such share link")
        if isinstance(outcome, ShareWrongProof):
            if outcome.deleted:
                ctx.metrics.shares_burned.inc()
                raise WrongProof("wrong proof; the share link is deleted")
            raise WrongProof("wrong proof")
        ctx.metrics.share_views.inc()
        return Response(outcome.data, media_type=_OCTET_STREAM, headers=_NO_STORE)

    async def delete_share(request: Request) -> Response:
        """
        summary: Delete a share link (by the device that uploaded it).
        responses:
          204:
            description: deleted
          400:
            description: bad_request (id) or malformed authentication headers
          401:
            description: authentication missing or refused
          404:
            description: not_found (unknown or expired, or not this device's)
          429:
            description: rate limited
        """
        device = await authorised(request)
        share_id = parse_share_id(request.path_params["share_id"])
        deleted = await ctx.storage.shares.delete(
            share_id, device.user_id, device.device_id, ctx.now_ms()
        )
        if not deleted:
            raise ShareNotFound("no such share link")
        return Response(status_code=204)

    async def preview(request: Request) -> Response:
        """
        summary: The share link's own page (link previews); never the ciphertext.
        description: >-
          A static page saying to open the link in the app, the same for every id
          (known, unknown or malformed). Reads nothing and counts no view.
        responses:
          200:
            description: an HTML page
        """
        return HTMLResponse(PREVIEW_PAGE, headers=_PREVIEW_HEADERS)

    return [
        Route("/v1/share/{share_id}", put_share, methods=["PUT"]),
        Route("/v1/share/{share_id}", delete_share, methods=["DELETE"]),
        Route("/v1/share/{share_id}/open", open_share, methods=["POST"]),
        Route("/s/{share_id}", preview, methods=["GET"]),
    ]
