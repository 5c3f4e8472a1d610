"""The relay's HTTP endpoints the SDK uses: registration (``POST /v1/register/nonce``,
``POST /v1/register``), the client configuration (``GET /v1/config``) and the
device-link mailbox (``PUT /v1/link/{id}/{slot}``, ``POST /v1/link/{id}/{slot}/take``).

A deliberately small HTTP/1.1 client on :mod:`asyncio` streams and :mod:`ssl` (one
request per connection, ``Connection: close``, bounded headers and bodies) keeps the
SDK's dependencies to ``websockets``; the same SPKI pin as the WebSocket can be
checked on the TLS handshake. Refusals are the relay's JSON error bodies
(``{"error", "code", "reason"}``), typed through :mod:`client_sdk.transport.refusals`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import ssl as ssl_module
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from e2ee import cbor
from e2ee.device_list import SignedDeviceList
from e2ee.errors import E2EEError
from e2ee.keys import SigningKeyPair
from e2ee.primitives import spki_sha256
from e2ee.relay_frames import ErrorCode, RegisterRequest, sign_register

from ..errors import (
    ConnectionFailed,
    MalformedResponse,
    PinMismatch,
    RelayRefused,
    RequestTimeout,
    UsageError,
    UserIdTaken,
)
from .refusals import refusal

__all__ = [
    "HTTP_TIMEOUT",
    "MAX_HEADER_BYTES",
    "MAX_RESPONSE_BODY",
    "Registered",
    "RelayConfig",
    "fetch_config",
    "put_link_slot",
    "register",
    "take_link_slot",
]

logger = logging.getLogger(__name__)

HTTP_TIMEOUT: Final = 30.0
"""Seconds for one HTTP exchange, connection included."""
MAX_HEADER_BYTES: Final = 16 * 1024
"""The relay's answers carry a handful of short headers."""
MAX_RESPONSE_BODY: Final = 64 * 1024
"""The largest answer used here (the configuration, a few hundred bytes) with room."""
_CBOR: Final = "application/cbor"
_NONCE_SIZE: Final = 32

_STATUS_CODES: Final[dict[int, ErrorCode]] = {
    401: ErrorCode.AUTH_FAILED,
    403: ErrorCode.AUTH_FAILED,
    404: ErrorCode.INVALID,
    413: ErrorCode.TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    500: ErrorCode.UNAVAILABLE,
    503: ErrorCode.UNAVAILABLE,
}
"""The error code for an error answer without a readable JSON body."""


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _split(url: str) -> tuple[bool, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("the relay's HTTP URL must be http:// or https:// with a host")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise UsageError("the relay's HTTP URL has an invalid port") from None
    return tls, parts.hostname, port, parts.path.rstrip("/")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    if len(raw) > MAX_HEADER_BYTES:
        raise MalformedResponse("HTTP headers too large")
    lines = raw.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise MalformedResponse("not an HTTP/1.x answer")
    if not status_line[1].isdigit() or len(status_line[1]) != 3:
        raise MalformedResponse("bad HTTP status")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MalformedResponse("bad HTTP header line")
        headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                length = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise MalformedResponse("bad chunk size") from None
            if length < 0 or size + length > MAX_RESPONSE_BODY:
                raise MalformedResponse("HTTP body too large")
            if length == 0:
                return b"".join(parts)
            parts.append(await reader.readexactly(length))
            size += length
            if await reader.readexactly(2) != b"\r\n":
                raise MalformedResponse("bad chunk terminator")
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or int(declared) > MAX_RESPONSE_BODY:
            raise MalformedResponse("bad or too large Content-Length")
        return await reader.readexactly(int(declared))
    body = await reader.read(MAX_RESPONSE_BODY + 1)
    while len(body) <= MAX_RESPONSE_BODY:
        more = await reader.read(MAX_RESPONSE_BODY + 1 - len(body))
        if not more:
            return body
        body += more
    raise MalformedResponse("HTTP body too large")


async def _exchange(
    url: str,
    method: str,
    path: str,
    body: bytes | None,
    *,
    ssl: ssl_module.SSLContext | None,
    spki_pin: bytes | None,
    timeout: float,
) -> _Response:
    tls, host, port, base = _split(url)
    if spki_pin is not None and (not tls or len(spki_pin) != 32):
        raise UsageError("an SPKI pin needs an https:// URL and is 32 bytes (SHA-256)")
    context = (ssl or ssl_module.create_default_context()) if tls else None
    head = [
        f"{method} {base}{path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Connection: close",
        f"Accept: {_CBOR}, application/json",
    ]
    if body is not None:
        head += [f"Content-Type: {_CBOR}", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, limit=MAX_HEADER_BYTES + 1
            )
            if tls and spki_pin is not None:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                seen = spki_sha256(der) if der else b""
                if not hmac.compare_digest(seen, spki_pin):
                    raise PinMismatch(expected=spki_pin, seen=seen)
            writer.write(request)
            await writer.drain()
            status, headers = await _read_head(reader)
            return _Response(status, headers, await _read_body(reader, headers))
    except TimeoutError:
        raise RequestTimeout(f"{method} {path}", timeout) from None
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


def _refusal(response: _Response) -> RelayRefused:
    code: int = _STATUS_CODES.get(response.status, ErrorCode.INVALID)
    reason = f"HTTP {response.status}"
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        value = json.loads(response.body)
        if isinstance(value, dict):
            if type(value.get("code")) is int:
                code = value["code"]
            if isinstance(value.get("reason"), str):
                reason = value["reason"][:200]
    return refusal(code, reason, http_status=response.status)


def _cbor_map(response: _Response, what: str) -> dict[int, cbor.Value]:
    try:
        value = cbor.decode(response.body, max_size=MAX_RESPONSE_BODY)
    except E2EEError:
        raise MalformedResponse(f"{what}: not CBOR") from None
    if not isinstance(value, dict):
        raise MalformedResponse(f"{what}: expected a CBOR map")
    return value


# --- the configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """What ``GET /v1/config`` says clients must respect (unknown keys are ignored, so a
    newer relay may add some)."""

    protocol_versions: tuple[int, ...]
    origin: str
    spki_binding: str
    max_frame: int
    max_acks_per_frame: int
    max_addressed_users: int
    max_prekeys_per_upload: int
    message_ttl_ms: int
    max_share_link_ttl_ms: int
    max_share_size: int
    queue_quota: int
    blob_quota_bytes: int
    max_blob_size: int
    blob_chunk_size: int
    link_max_blob: int
    link_ttl_ms: int
    prekeys_low: int
    nonce_ttl_ms: int
    delivery_window: int
    registration_token_required: bool

    @classmethod
    def from_json(cls, value: Any) -> RelayConfig:
        """Parse the configuration document.

        Raises:
            MalformedResponse: not an object, or a field missing or of the wrong type.
        """
        if not isinstance(value, dict):
            raise MalformedResponse("config: expected a JSON object")
        versions = value.get("protocol_versions")
        if not isinstance(versions, list) or not all(type(v) is int for v in versions):
            raise MalformedResponse("config: protocol_versions must be a list of integers")
        fields: dict[str, Any] = {"protocol_versions": tuple(versions)}
        for name in ("origin", "spki_binding"):
            if not isinstance(value.get(name), str):
                raise MalformedResponse(f"config: {name} must be a string")
            fields[name] = value[name]
        if type(value.get("registration_token_required")) is not bool:
            raise MalformedResponse("config: registration_token_required must be a boolean")
        fields["registration_token_required"] = value["registration_token_required"]
        for name in cls.__dataclass_fields__:
            if name in fields:
                continue
            item = value.get(name)
            if type(item) is not int or item < 0:
                raise MalformedResponse(f"config: {name} must be a non-negative integer")
            fields[name] = item
        return cls(**fields)


async def fetch_config(
    http_url: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> RelayConfig:
    """``GET /v1/config`` of the relay at ``http_url`` (``http://host:port``).

    Raises:
        RelayRefused: (typed by code) an error answer.
        MalformedResponse: the answer does not parse.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as :func:`register`.
    """
    response = await _exchange(
        http_url, "GET", "/v1/config", None, ssl=ssl, spki_pin=spki_pin, timeout=timeout
    )
    if response.status != 200:
        raise _refusal(response)
    try:
        value = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponse("config: not JSON") from None
    return RelayConfig.from_json(value)


# --- registration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered:
    """The relay created the account with its first device."""

    user_id: str
    device_id: int


async def register(
    http_url: str,
    *,
    signed_list: SignedDeviceList,
    master: SigningKeyPair,
    device_signing: SigningKeyPair,
    registration_token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> Registered:
    """Register an account (DESIGN 4.2, 5): fetch a nonce, sign the ``register``
    statement with the master key and the first device's signing key, and post the
    first signed device list (version 1, one device: user id and device id come from
    it).

    Raises:
        UserIdTaken: the user id is registered already.
        AuthFailed: a wrong or missing registration token, or the nonce expired.
        RateLimited, TooLarge, RelayUnavailable, RelayRefused: other refusals.
        MalformedResponse: an answer that does not parse.
        PinMismatch: the HTTPS certificate's key is not the pinned one.
        ConnectionFailed: the relay could not be reached.
        RequestTimeout: no answer within ``timeout`` (per request).
        UsageError: a bad URL or pin, or a list without exactly one device.
    """
    statement = signed_list.statement
    if len(statement.devices) != 1:
        raise UsageError("registration takes a device list with exactly one device")
    user_id, device_id = statement.user_id, statement.devices[0].device_id
    answer = await _exchange(
        http_url, "POST", "/v1/register/nonce", b"", ssl=ssl, spki_pin=spki_pin, timeout=timeout
    )
    if answer.status != 200:
        raise _refusal(answer)
    nonce = _cbor_map(answer, "register nonce").get(0)
    if not isinstance(nonce, bytes) or len(nonce) != _NONCE_SIZE:
        raise MalformedResponse("register nonce: expected 32 bytes at key 0")
    body = RegisterRequest(
        signed_list.to_bytes(),
        nonce,
        sign_register(master, user_id, device_id, nonce),
        sign_register(device_signing, user_id, device_id, nonce),
        registration_token,
    ).to_bytes()
    response = await _exchange(
        http_url, "POST", "/v1/register", body, ssl=ssl, spki_pin=spki_pin, timeout=timeout
    )
    if response.status != 201:
        error = _refusal(response)
        if response.status == 409 and error.code == ErrorCode.INVALID:
            raise UserIdTaken(error.code, error.reason, http_status=409)
        raise error
    created = _cbor_map(response, "register")
    if created.get(0) != user_id or created.get(1) != device_id:
        raise MalformedResponse("register: the relay named another account")
    logger.info("registered device %d", device_id)
    return Registered(user_id, device_id)


# --- the device-link mailbox ------------------------------------------------------------


def _link_path(mailbox_id: bytes, slot: int) -> str:
    if len(mailbox_id) != 16 or slot not in (0, 1):
        raise UsageError("a link mailbox id is 16 bytes and its slots are 0 and 1")
    encoded = base64.urlsafe_b64encode(mailbox_id).rstrip(b"=").decode("ascii")
    return f"/v1/link/{encoded}/{slot}"


async def put_link_slot(
    http_url: str,
    mailbox_id: bytes,
    slot: int,
    sealed: bytes,
    *,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> int:
    """``PUT /v1/link/{id}/{slot}`` (``docs/blobs-and-links.md``): write one slot of a
    device-link mailbox with a sealed blob; return when the relay drops it (ms).

    Raises:
        RelayRefused: (typed by code) an error answer; ``http_status`` 409 when the slot
            was written before.
        MalformedResponse: the answer does not parse.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as :func:`register`
            (``UsageError`` also for a bad id or slot, or an empty blob).
    """
    if not sealed:
        raise UsageError("a link mailbox blob is not empty")
    path = _link_path(mailbox_id, slot)
    response = await _exchange(
        http_url, "PUT", path, sealed, ssl=ssl, spki_pin=spki_pin, timeout=timeout
    )
    if response.status != 201:
        raise _refusal(response)
    try:
        value = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponse("link put: not JSON") from None
    expires = value.get("expires_at_ms") if isinstance(value, dict) else None
    if type(expires) is not int or expires < 0:
        raise MalformedResponse("link put: expires_at_ms must be a non-negative integer")
    return expires


async def take_link_slot(
    http_url: str,
    mailbox_id: bytes,
    slot: int,
    *,
    ssl: ssl_module.SSLContext | None = None,
    spki_pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> bytes | None:
    """``POST /v1/link/{id}/{slot}/take``: the slot's sealed blob, which the relay
    deletes as it returns it; ``None`` when the slot is empty, taken or expired (404).

    Raises:
        RelayRefused: (typed by code) another error answer (``RateLimited`` on 429).
        MalformedResponse: an empty answer, or one above ``MAX_RESPONSE_BODY``.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as :func:`put_link_slot`.
    """
    path = _link_path(mailbox_id, slot) + "/take"
    response = await _exchange(
        http_url, "POST", path, b"", ssl=ssl, spki_pin=spki_pin, timeout=timeout
    )
    if response.status == 404:
        return None
    if response.status != 200:
        raise _refusal(response)
    if not response.body:
        raise MalformedResponse("link take: an empty blob")
    return response.body
