"""HTTP helpers shared by the relay's endpoint modules: bounded body reading, CBOR
responses, and the error responses of the one refusal table (:mod:`server.errors`).

An error response is JSON ``{"error": "<code name>", "code": <ErrorCode>,
"reason": "..."}`` with the table's HTTP status.
"""

from __future__ import annotations

import logging
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .context import RelayContext
from .errors import TooLarge, refusal_for

__all__ = ["CBOR_MEDIA_TYPE", "CBORResponse", "error_response", "read_body"]

CBOR_MEDIA_TYPE: Final = "application/cbor"

logger = logging.getLogger(__name__)


class CBORResponse(Response):
    """A response whose body is already-encoded canonical CBOR."""

    media_type = CBOR_MEDIA_TYPE


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """Read the request body, refusing it as soon as it passes ``limit`` bytes (never
    buffering more than ``limit`` plus one chunk).

    Raises:
        TooLarge: the declared or actual length is above ``limit``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(what, limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(what, limit)
        parts.append(chunk)
    return b"".join(parts)


def error_response(ctx: RelayContext, exc: BaseException) -> Response:
    """The HTTP answer for a refusal (counted in ``/metrics``)."""
    refusal = refusal_for(exc)
    ctx.metrics.refused(refusal.reason)
    if refusal.http_status >= 500:
        logger.warning("request failed: %s", type(exc).__name__, exc_info=exc)
        reason = "the relay could not complete the request"
    else:
        reason = str(exc)[:200] or refusal.reason
    headers = {"Retry-After": "1"} if refusal.http_status in (429, 503) else None
    return JSONResponse(
        {"error": refusal.reason, "code": int(refusal.code), "reason": reason},
        status_code=refusal.http_status,
        headers=headers,
    )
