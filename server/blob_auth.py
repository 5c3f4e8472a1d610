"""Device authentication of single HTTP requests (DESIGN 5): blob uploads and downloads.

No bearer tokens or stored secrets. A device first asks ``POST /v1/auth/nonce`` for a
fresh 32-byte nonce (single use, valid 30 s, kept in the database through
:class:`~server.storage.base.NonceStore`, so any relay node sharing the database
accepts it), then sends its request with four headers:

``E2EE-User``
    its user id;
``E2EE-Device``
    its device id, in decimal;
``E2EE-Nonce``
    the nonce, base64url without padding;
``E2EE-Signature``
    base64url of its ``e2ee/v1/relay-auth`` signature (:func:`e2ee.auth.sign_relay_auth`)
    over ``{origin, user_id, device_id, nonce, spki_sha256}``, exactly the statement
    of the WebSocket authentication: ``origin`` is the URL the client was configured
    with and ``spki_sha256`` follows the relay's binding mode (``spki_binding``:
    the relay certificate's SPKI hash, one of the accepted proxy hashes, or null).

The relay checks, in order: the headers are well formed; the device is in its
account's accepted device list; the signature verifies for this relay's origin; and
only then consumes the nonce (a failed attempt never burns a nonce). The nonce is
bound to no request content: TLS protects the request itself, the signature only
proves which device sent it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from e2ee import cbor
from e2ee.auth import verify_relay_auth
from e2ee.errors import BadSignature, DecodeError, InvalidArgument
from e2ee.identifiers import DEVICE_ID_MAX, check_user_id

from . import limits
from .context import RelayContext
from .errors import AuthFailed, NotAuthenticated
from .http import CBORResponse

__all__ = [
    "HEADER_DEVICE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_USER",
    "HTTP_AUTH_PURPOSE",
    "AuthenticatedDevice",
    "authenticate",
    "b64url_decode",
    "b64url_encode",
    "issue_nonce",
    "routes",
]

HTTP_AUTH_PURPOSE: Final = "http-auth"
"""Nonce purpose of HTTP request authentication (never accepted for registration)."""
HEADER_USER: Final = "E2EE-User"
HEADER_DEVICE: Final = "E2EE-Device"
HEADER_NONCE: Final = "E2EE-Nonce"
HEADER_SIGNATURE: Final = "E2EE-Signature"

_SIGNATURE_SIZE: Final = 64
_DEVICE_ID: Final = re.compile(r"(0|[1-9][0-9]{0,9})", re.ASCII)
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class AuthenticatedDevice:
    """The device a request proved it comes from."""

    user_id: str
    device_id: int

    @property
    def key(self) -> str:
        """Its rate-limit key."""
        return f"{self.user_id}.{self.device_id}"


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 section 5), as ids and nonces travel in URLs
    and headers."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, size: int, what: str) -> bytes:
    """Decode base64url without padding into exactly ``size`` bytes, refusing any other
    spelling of the same bytes (padding, other alphabets, non-zero trailing bits).

    Raises:
        DecodeError: not the canonical encoding of ``size`` bytes.
    """
    if len(text) != (size * 4 + 2) // 3 or _B64URL.fullmatch(text) is None:
        raise DecodeError(f"{what} must be {size} bytes in base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DecodeError(f"{what} is not base64url") from None
    if len(raw) != size or b64url_encode(raw) != text:
        raise DecodeError(f"{what} is not canonical base64url")
    return raw


async def issue_nonce(ctx: RelayContext) -> bytes:
    """A fresh HTTP-auth nonce, recorded for :data:`~server.limits.NONCE_TTL_MS`.

    Raises:
        StorageUnavailable: storage failed.
    """
    nonce = ctx.rng(limits.NONCE_SIZE)
    await ctx.storage.nonces.issue(nonce, HTTP_AUTH_PURPOSE, ctx.now_ms() + limits.NONCE_TTL_MS)
    return nonce


def _header(request: Request, name: str) -> str:
    value = request.headers.get(name)
    if value is None:
        raise NotAuthenticated(f"missing {name} header")
    return value


async def authenticate(ctx: RelayContext, request: Request) -> AuthenticatedDevice:
    """Check a request's authentication headers and consume its nonce (DESIGN 5).

    Every attempt costs one token of the per-IP authentication limiter, before any
    work.

    Raises:
        RateLimited: too many authentication attempts from this client IP.
        NotAuthenticated: a header is missing.
        DecodeError: a header is malformed.
        AuthFailed: unknown or removed device, a signature that does not verify for
            this relay's origin and binding, or a nonce unknown, expired or used.
        StorageUnavailable: storage failed (the nonce is then left unconsumed).
    """
    ctx.limiters.auth_ip.check(ctx.client_ip(request.client))
    user_text = _header(request, HEADER_USER)
    device_text = _header(request, HEADER_DEVICE)
    nonce_text = _header(request, HEADER_NONCE)
    signature_text = _header(request, HEADER_SIGNATURE)
    user_id = check_user_id(user_text)
    if _DEVICE_ID.fullmatch(device_text) is None or int(device_text) > DEVICE_ID_MAX:
        raise DecodeError(f"{HEADER_DEVICE} must be an unsigned 32-bit decimal integer")
    device_id = int(device_text)
    nonce = b64url_decode(nonce_text, limits.NONCE_SIZE, HEADER_NONCE)
    signature = b64url_decode(signature_text, _SIGNATURE_SIZE, HEADER_SIGNATURE)

    device = await ctx.storage.accounts.get_device(user_id, device_id)
    if device is None:
        raise AuthFailed("unknown or removed device")
    if not _verifies(ctx, device.signing_pk, signature, user_id, device_id, nonce):
        raise AuthFailed("relay-auth signature does not verify for this relay")
    if not await ctx.storage.nonces.consume(nonce, HTTP_AUTH_PURPOSE, ctx.now_ms()):
        raise AuthFailed("nonce unknown, expired or already used")
    return AuthenticatedDevice(user_id, device_id)


def _verifies(
    ctx: RelayContext,
    signing_pk: bytes,
    signature: bytes,
    user_id: str,
    device_id: int,
    nonce: bytes,
) -> bool:
    """Whether ``signature`` is the device's relay-auth statement for this relay's
    origin and one of the SPKI hashes its binding mode accepts (``ctx.auth_spki``, as
    the WebSocket authentication checks it)."""
    for spki in ctx.auth_spki:
        try:
            verify_relay_auth(
                signing_pk,
                signature,
                origin=ctx.settings.effective_origin,
                user_id=user_id,
                device_id=device_id,
                nonce=nonce,
                spki_sha256=spki,
            )
        except (BadSignature, InvalidArgument):
            continue
        return True
    return False


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``POST /v1/auth/nonce``."""

    async def auth_nonce(request: Request) -> Response:
        """
        summary: Issue an HTTP authentication nonce (32 bytes, single use, valid 30 s).
        description: >-
          Answers CBOR {0 nonce, 1 lifetime in ms}. A request then authenticates with
          the headers E2EE-User, E2EE-Device, E2EE-Nonce and E2EE-Signature (see
          docs/blobs-and-links.md). Rate limited per client IP.
        responses:
          200:
            description: the nonce (application/cbor)
          429:
            description: rate limited
        """
        ctx.limiters.auth_ip.check(ctx.client_ip(request.client))
        nonce = await issue_nonce(ctx)
        return CBORResponse(cbor.encode({0: nonce, 1: limits.NONCE_TTL_MS}))

    return [Route("/v1/auth/nonce", auth_nonce, methods=["POST"])]
