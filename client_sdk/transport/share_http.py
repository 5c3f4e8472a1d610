"""The relay's share-link endpoints (``docs/blobs-and-links.md``, "Share links"):
``PUT /v1/share/{id}`` (device-authenticated), ``POST /v1/share/{id}/open`` (anyone
holding the download proof) and the two limits of ``GET /v1/config`` share links obey.

Same small HTTP/1.1 client as :mod:`client_sdk.transport.http` (one request per
connection, bounded answers, the optional SPKI pin checked on the TLS handshake), with
request headers and a body of ``application/octet-stream``.

**Device authentication** of the upload (``server/blob_auth.py``, DESIGN 5): a fresh
nonce from ``POST /v1/auth/nonce`` (single use, 30 s), then the request carries
``E2EE-User``, ``E2EE-Device``, ``E2EE-Nonce`` and ``E2EE-Signature``: the device's
``e2ee/v1/relay-auth`` signature over ``{origin, user_id, device_id, nonce,
spki_sha256}``, the statement of the WebSocket authentication, with the SPKI hash of
the certificate the upload's own TLS handshake presented (``null`` without TLS). The
signature is made after that handshake, so it names the relay actually reached.

Nothing here ever logs or puts in an error a link key, a proof, a blob or data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import re
import ssl as ssl_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from e2ee import cbor
from e2ee.auth import sign_relay_auth
from e2ee.errors import E2EEError
from e2ee.primitives import spki_sha256
from e2ee.relay_frames import ErrorCode

from ..errors import (
    ConnectionFailed,
    MalformedResponse,
    PinMismatch,
    RelayRefused,
    RequestTimeout,
    ShareLinkNotFound,
    ShareLinkUploadFailed,
    ShareLinkWrongCode,
    UsageError,
)
from .http import HTTP_TIMEOUT, MAX_HEADER_BYTES, MAX_RESPONSE_BODY, _read_body, _read_head
from .protocol import DeviceIdentity
from .refusals import refusal

__all__ = [
    "DEFAULT_MAX_SHARE_SIZE",
    "DEFAULT_MAX_SHARE_TTL_MS",
    "DEFAULT_SHARE_LIMITS",
    "HEADER_EXPIRES_AT",
    "HEADER_MAX_VIEWS",
    "HEADER_PROOF_HASH",
    "ShareLimits",
    "auth_headers",
    "fetch_auth_nonce",
    "fetch_share_limits",
    "open_share_blob",
    "put_share",
]

logger = logging.getLogger(__name__)

HEADER_PROOF_HASH: Final = "X-E2EE-Proof-Hash"
"""Upload header: hex SHA-256 of the 32-byte download proof."""
HEADER_EXPIRES_AT: Final = "X-E2EE-Expires-At"
"""Upload header: the link's expiry, ms since the epoch, in decimal."""
HEADER_MAX_VIEWS: Final = "X-E2EE-Max-Views"
"""Upload header: the view limit (1..1000), absent for none."""
DEFAULT_MAX_SHARE_TTL_MS: Final = 300_000
"""The protocol's default longest share-link lifetime (DESIGN 4.7: 5 minutes), assumed
until a relay advertised its own."""
DEFAULT_MAX_SHARE_SIZE: Final = 64 * 1024
"""The relay's default largest share blob, assumed until a relay advertised its own."""

_HEADER_USER: Final = "E2EE-User"
_HEADER_DEVICE: Final = "E2EE-Device"
_HEADER_NONCE: Final = "E2EE-Nonce"
_HEADER_SIGNATURE: Final = "E2EE-Signature"
_OCTET_STREAM: Final = "application/octet-stream"
_NONCE_SIZE: Final = 32
_SHARE_ID_SIZE: Final = 16
_PROOF_SIZE: Final = 32
_LABEL: Final = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
_TRANSIENT: Final = frozenset({401, 408, 429})
"""4xx answers to an upload that may succeed later (a nonce or authentication problem,
a timeout, a rate limit); every other 4xx refuses the upload for good."""

_STATUS_CODES: Final[dict[int, ErrorCode]] = {
    401: ErrorCode.AUTH_FAILED,
    403: ErrorCode.AUTH_FAILED,
    413: ErrorCode.TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    500: ErrorCode.UNAVAILABLE,
    502: ErrorCode.UNAVAILABLE,
    503: ErrorCode.UNAVAILABLE,
    504: ErrorCode.UNAVAILABLE,
}
"""The error code of an error answer without a readable JSON body."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An error answer's JSON body (``{"error": label, "code": int, "reason": text}``),
    what of it is readable."""

    label: str | None
    error: RelayRefused


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _split(url: str) -> tuple[bool, str, int, str]:
    """``(tls, host, port, Host header)`` of an ``http[s]://host[:port]`` base URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("the relay's HTTP URL must be http:// or https:// with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UsageError("the relay's HTTP URL is scheme://host[:port] alone")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise UsageError("the relay's HTTP URL has an invalid port") from None
    host = parts.hostname
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return tls, host, port, host_header


async def _exchange(
    url: str,
    method: str,
    path: str,
    body: bytes | None,
    *,
    operation: str,
    headers: Callable[[bytes | None], Mapping[str, str]] | None = None,
    ssl: ssl_module.SSLContext | None,
    spki_pin: bytes | None,
    timeout: float,
) -> _Answer:
    """One HTTP/1.1 request on its own connection (``operation`` names it in a timeout
    error, without ids). ``headers``, when given, is called
    with the SPKI hash the TLS handshake presented (``None`` without TLS), after the pin
    was checked and before anything is sent."""
    tls, host, port, host_header = _split(url)
    if spki_pin is not None and (not tls or len(spki_pin) != 32):
        raise UsageError("an SPKI pin needs an https:// URL and is 32 bytes (SHA-256)")
    context = (ssl or ssl_module.create_default_context()) if tls else None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, limit=MAX_HEADER_BYTES + 1
            )
            seen: bytes | None = None
            if tls:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                seen = spki_sha256(der) if der else None
                if spki_pin is not None and not hmac.compare_digest(seen or b"", spki_pin):
                    raise PinMismatch(expected=spki_pin, seen=seen or b"")
            head = [
                f"{method} {path} HTTP/1.1",
                f"Host: {host_header}",
                "Connection: close",
                f"Accept: {_OCTET_STREAM}, application/json, application/cbor",
            ]
            if headers is not None:
                head += [f"{name}: {value}" for name, value in headers(seen).items()]
            if body is not None:
                head += [f"Content-Type: {_OCTET_STREAM}", f"Content-Length: {len(body)}"]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
            await writer.drain()
            status, answer_headers = await _read_head(reader)
            return _Answer(status, await _read_body(reader, answer_headers))
    except TimeoutError:
        raise RequestTimeout(operation, timeout) from None
    except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, UnicodeError) as exc:
        raise MalformedResponse(
            f"truncated or oversized HTTP answer ({type(exc).__name__})"
        ) from None
    except E2EEError as exc:
        raise ConnectionFailed("the relay's certificate does not decode") from exc
    except (OSError, ssl_module.SSLError) as exc:
        raise ConnectionFailed(f"HTTP request to the relay failed: {type(exc).__name__}") from exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _refusal(answer: _Answer) -> _Refusal:
    """The label and typed error of an error answer (``RateLimited`` on 429, ...)."""
    code: int = _STATUS_CODES.get(answer.status, ErrorCode.INVALID)
    reason = f"HTTP {answer.status}"
    label: str | None = None
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        value = json.loads(answer.body)
        if isinstance(value, dict):
            if type(value.get("code")) is int:
                code = value["code"]
            if isinstance(value.get("reason"), str):
                reason = value["reason"][:200]
            error = value.get("error")
            if isinstance(error, str) and _LABEL.fullmatch(error):
                label = error
    return _Refusal(label, refusal(code, reason, http_status=answer.status))


def _json_object(answer: _Answer, what: str) -> dict[str, object]:
    try:
        value = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponse(f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise MalformedResponse(f"{what}: expected a JSON object")
    return value


# --- limits --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareLimits:
    """What a relay allows a share link (``GET /v1/config``)."""

    max_ttl_ms: int
    """``max_share_link_ttl_ms``: the longest lifetime, from the upload's time."""
    max_size: int
    """``max_share_size``: the largest blob, in bytes."""


DEFAULT_SHARE_LIMITS: Final = ShareLimits(DEFAULT_MAX_SHARE_TTL_MS, DEFAULT_MAX_SHARE_SIZE)
"""What a client assumes before any relay advertised its limits."""


async def fetch_share_limits(
    http_url: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> ShareLimits:
    """``max_share_link_ttl_ms`` and ``max_share_size`` from ``GET /v1/config``. A relay
    that does not advertise ``max_share_size`` (older) gets the default.

    Raises:
        RelayRefused: (typed by code) an error answer.
        MalformedResponse: the answer does not parse, or the TTL is missing or not a
            positive integer.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as
            :func:`client_sdk.transport.fetch_config`.
    """
    answer = await _exchange(
        http_url,
        "GET",
        "/v1/config",
        None,
        operation="GET /v1/config",
        ssl=ssl,
        spki_pin=spki_pin,
        timeout=timeout,
    )
    if answer.status != 200:
        raise _refusal(answer).error
    value = _json_object(answer, "config")
    ttl = value.get("max_share_link_ttl_ms")
    size = value.get("max_share_size", DEFAULT_MAX_SHARE_SIZE)
    if type(ttl) is not int or ttl <= 0:
        raise MalformedResponse("config: max_share_link_ttl_ms must be a positive integer")
    if type(size) is not int or size <= 0:
        raise MalformedResponse("config: max_share_size must be a positive integer")
    return ShareLimits(ttl, size)


# --- authentication ------------------------------------------------------------------


async def fetch_auth_nonce(
    http_url: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> bytes:
    """A fresh HTTP-authentication nonce (``POST /v1/auth/nonce``: CBOR ``{0: nonce,
    1: lifetime ms}``; single use, valid 30 s).

    Raises:
        RelayRefused: (typed by code) an error answer (``RateLimited`` on 429).
        MalformedResponse: the answer is not a 32-byte nonce in CBOR.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as
            :func:`fetch_share_limits`.
    """
    answer = await _exchange(
        http_url,
        "POST",
        "/v1/auth/nonce",
        b"",
        operation="POST /v1/auth/nonce",
        ssl=ssl,
        spki_pin=spki_pin,
        timeout=timeout,
    )
    if answer.status != 200:
        raise _refusal(answer).error
    try:
        value = cbor.decode(answer.body, max_size=MAX_RESPONSE_BODY)
    except E2EEError:
        raise MalformedResponse("auth nonce: not CBOR") from None
    nonce = value.get(0) if isinstance(value, dict) else None
    if not isinstance(nonce, bytes) or len(nonce) != _NONCE_SIZE:
        raise MalformedResponse("auth nonce: expected 32 bytes at key 0")
    return nonce


def auth_headers(
    identity: DeviceIdentity, *, origin: str, nonce: bytes, spki: bytes | None
) -> dict[str, str]:
    """The four authentication headers of one request (module documentation): the
    device's relay-auth signature over ``origin`` (the URL the client was configured
    with, never one the relay named), its ids, ``nonce`` and ``spki``."""
    signature = sign_relay_auth(
        identity.signing,
        origin=origin,
        user_id=identity.user_id,
        device_id=identity.device_id,
        nonce=nonce,
        spki_sha256=spki,
    )
    return {
        _HEADER_USER: identity.user_id,
        _HEADER_DEVICE: str(identity.device_id),
        _HEADER_NONCE: _b64url(nonce),
        _HEADER_SIGNATURE: _b64url(signature),
    }


# --- upload and open -----------------------------------------------------------------


def _share_path(share_id: bytes) -> str:
    if len(share_id) != _SHARE_ID_SIZE:
        raise UsageError("a share id is 16 bytes")
    return f"/v1/share/{_b64url(share_id)}"


async def put_share(
    http_url: str,
    *,
    origin: str,
    identity: DeviceIdentity,
    share_id: bytes,
    blob: bytes,
    proof_hash: bytes,
    expires_at_ms: int,
    max_views: int | None,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> int:
    """Upload a share blob (``PUT /v1/share/{id}``, device-authenticated); the expiry
    the relay stored (ms).

    Raises:
        ShareLinkUploadFailed: the relay refused the upload for good (any 4xx but 401,
            408 and 429; ``reason`` is its label: ``ttl_too_long``, ``expired``,
            ``too_large``, ``exists``, ``bad_request``, ...).
        RelayRefused: (typed by code) a refusal that may pass (``AuthFailed``,
            ``RateLimited``, ``RelayUnavailable``), here or when asking for the nonce.
        MalformedResponse: an answer that does not parse or names another link.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as
            :func:`fetch_share_limits` (``UsageError`` also for a bad id or proof hash).
    """
    path = _share_path(share_id)
    if len(proof_hash) != _PROOF_SIZE:
        raise UsageError("a proof hash is 32 bytes (SHA-256)")
    if not blob:
        raise UsageError("a share blob is not empty")
    nonce = await fetch_auth_nonce(http_url, ssl=ssl, spki_pin=spki_pin, timeout=timeout)
    fields = {HEADER_PROOF_HASH: proof_hash.hex(), HEADER_EXPIRES_AT: str(expires_at_ms)}
    if max_views is not None:
        fields[HEADER_MAX_VIEWS] = str(max_views)

    def headers(spki: bytes | None) -> dict[str, str]:
        return auth_headers(identity, origin=origin, nonce=nonce, spki=spki) | fields

    answer = await _exchange(
        http_url,
        "PUT",
        path,
        blob,
        operation="PUT /v1/share",
        headers=headers,
        ssl=ssl,
        spki_pin=spki_pin,
        timeout=timeout,
    )
    if answer.status != 201:
        refused = _refusal(answer)
        if 400 <= answer.status < 500 and answer.status not in _TRANSIENT:
            failed = ShareLinkUploadFailed(
                _b64url(share_id), refused.label or f"http_{answer.status}", answer.status
            )
            raise failed from refused.error
        raise refused.error
    value = _json_object(answer, "share upload")
    stored = value.get("expires_at_ms")
    if value.get("id") != _b64url(share_id) or type(stored) is not int or stored < 0:
        raise MalformedResponse("share upload: the answer names another link or no expiry")
    return stored


async def open_share_blob(
    base_url: str,
    share_id: bytes,
    proof: bytes,
    *,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> bytes:
    """``POST /v1/share/{id}/open`` with the download proof: the blob (unauthenticated;
    the relay counts a view, or a wrong proof).

    Raises:
        ShareLinkWrongCode: ``403 wrong_proof``.
        ShareLinkNotFound: ``404`` (unknown, expired, used up or deleted).
        RelayRefused: (typed by code) another error answer (``RateLimited`` on 429).
        MalformedResponse: an answer above ``MAX_RESPONSE_BODY``, or truncated.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as
            :func:`fetch_share_limits` (``UsageError`` also for a bad id or proof).
    """
    path = _share_path(share_id) + "/open"
    if len(proof) != _PROOF_SIZE:
        raise UsageError("a download proof is 32 bytes")
    answer = await _exchange(
        base_url,
        "POST",
        path,
        proof,
        operation="POST /v1/share/open",
        ssl=ssl,
        spki_pin=spki_pin,
        timeout=timeout,
    )
    if answer.status == 200:
        return answer.body
    refused = _refusal(answer)
    if answer.status == 404:
        raise ShareLinkNotFound("no such share link at the relay (expired, used up or deleted)")
    if answer.status == 403 and refused.label == "wrong_proof":
        raise ShareLinkWrongCode(
            "the relay refused the download proof: a wrong or missing auth code"
        )
    raise refused.error
