"""The device-link mailbox over HTTP (issue 3 "Devices"; DESIGN 4.2 linking).

A new device has no account yet, so the mailbox is unauthenticated; what passes
through it is sealed by the two devices (the relay sees only ciphertext). The new
device picks the mailbox id (16 random bytes, base64url in the path) and shows it to
the primary (QR code); each side then writes one sealed blob and takes the other's:

* ``PUT /v1/link/{id}/{slot}``: write the slot (``0``: from the new device, ``1``:
  from the primary), at most :data:`~server.limits.LINK_MAX_BLOB` bytes (streamed with
  that cap; ``413`` beyond), kept :data:`~server.limits.LINK_TTL_SECONDS`. Each slot
  is written once (``409`` after, even once taken), so a mailbox holds at most
  :data:`~server.limits.LINK_SLOTS` blobs.
* ``POST /v1/link/{id}/{slot}/take``: return the slot's blob and delete it (each blob
  is read once); ``404`` when empty, taken or expired. ``take`` is a POST because it
  changes state (a link preview or a cache never consumes it).

Both are rate limited per client IP (``rate_http``). Malformed ids or slots are
refused with ``400`` before anything is read or stored.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import limits
from .blob_auth import b64url_decode
from .context import RelayContext
from .errors import InvalidRequest, NotFound
from .http import read_body

__all__ = ["LINK_ID_SIZE", "parse_link_address", "routes"]

LINK_ID_SIZE: Final = 16
"""Link mailbox ids are 16 random bytes chosen by the new device (unguessable: the id
is the only thing that lets a party write or take a slot)."""
_SLOTS: Final = {str(slot): slot for slot in range(limits.LINK_SLOTS)}
_OCTET_STREAM: Final = "application/octet-stream"


def parse_link_address(link_id: str, slot: str) -> tuple[bytes, int]:
    """The mailbox id and slot of a path.

    Raises:
        DecodeError: the id is not base64url of 16 bytes.
        InvalidRequest: the slot is not ``0`` or ``1``.
    """
    raw = b64url_decode(link_id, LINK_ID_SIZE, "link id")
    number = _SLOTS.get(slot)
    if number is None:
        raise InvalidRequest("link slot must be 0 or 1")
    return raw, number


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``PUT /v1/link/{id}/{slot}`` and ``POST /v1/link/{id}/{slot}/take``."""

    async def put_slot(request: Request) -> Response:
        """
        summary: Write one slot of a device-link mailbox (once).
        description: >-
          Body: the sealed blob (application/octet-stream, 1 byte to 64 KiB). Slot 0
          is written by the new device, slot 1 by the primary. The mailbox expires
          10 minutes after the write. Answers JSON {expires_at_ms}. Rate limited per
          client IP.
        responses:
          201:
            description: stored
          400:
            description: malformed id or slot, or an empty body
          409:
            description: the slot was written before
          413:
            description: body above 64 KiB
          429:
            description: rate limited
        """
        ctx.limiters.http.check(ctx.client_ip(request.client))
        link_id, slot = parse_link_address(
            request.path_params["link_id"], request.path_params["slot"]
        )
        blob = await read_body(request, limits.LINK_MAX_BLOB, "link mailbox blob")
        if not blob:
            raise InvalidRequest("empty link mailbox blob")
        now = ctx.now_ms()
        expires_at_ms = now + limits.LINK_TTL_SECONDS * 1000
        await ctx.storage.links.put(link_id, slot, blob, now, expires_at_ms)
        return JSONResponse({"expires_at_ms": expires_at_ms}, status_code=201)

    async def take_slot(request: Request) -> Response:
        """
        summary: Take (read and delete) one slot of a device-link mailbox.
        responses:
          200:
            description: the sealed blob (application/octet-stream)
          400:
            description: malformed id or slot
          404:
            description: empty, already taken or expired
          429:
            description: rate limited
        """
        ctx.limiters.http.check(ctx.client_ip(request.client))
        link_id, slot = parse_link_address(
            request.path_params["link_id"], request.path_params["slot"]
        )
        blob = await ctx.storage.links.take(link_id, slot, ctx.now_ms())
        if blob is None:
            raise NotFound("link mailbox slot is empty, taken or expired")
        return Response(blob, media_type=_OCTET_STREAM, headers={"Cache-Control": "no-store"})

    return [
        Route("/v1/link/{link_id}/{slot}", put_slot, methods=["PUT"]),
        Route("/v1/link/{link_id}/{slot}/take", take_slot, methods=["POST"]),
    ]
