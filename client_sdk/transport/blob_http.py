"""The relay's blob endpoints, streamed (``docs/blobs-and-links.md``, "Blobs"):
``PUT /v1/blobs``, ``GET /v1/blobs/{id}`` and ``DELETE /v1/blobs/{id}``, each
authenticated as one device (``E2EE-User``, ``E2EE-Device``, ``E2EE-Nonce``,
``E2EE-Signature``: the WebSocket's ``e2ee/v1/relay-auth`` statement over a fresh
nonce from ``POST /v1/auth/nonce``).

Bodies are never held whole: an upload is written piece by piece as its source yields
them (with ``Content-Length`` announced up front and ``Expect: 100-continue``, so a
refusal costs no body bytes), and a download is handed out piece by piece as it
arrives. The HTTP/1.1 client is the SDK's own (:mod:`client_sdk.transport.http`: one
request per connection, ``Connection: close``, the same SPKI pin as the WebSocket),
with one difference: for the body of a transfer, ``timeout`` bounds each step (a
connection, a write draining, a read) rather than the whole exchange, so a large blob
on a slow link is not cut off while it makes progress.

The statement signed for a request names the SPKI hash seen on the TLS handshake of
the connection that carries it (``None`` without TLS), exactly as the WebSocket's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Final

from e2ee.auth import sign_relay_auth
from e2ee.errors import E2EEError
from e2ee.primitives import spki_sha256

from ..errors import (
    BlobNotFound,
    ConnectionFailed,
    MalformedResponse,
    PinMismatch,
    RelayRefused,
    RequestTimeout,
    UsageError,
)
from .http import HTTP_TIMEOUT, _cbor_map, _exchange, _read_body, _read_head, _refusal, _Response
from .http import _split as _split_url
from .protocol import DeviceIdentity

__all__ = [
    "BLOB_ID_SIZE",
    "BLOB_READ_SIZE",
    "BlobDownload",
    "BlobEndpoint",
    "StoredBlob",
    "delete_blob",
    "fetch_auth_nonce",
    "open_blob",
    "put_blob",
]

logger = logging.getLogger(__name__)

BLOB_ID_SIZE: Final = 16
"""The relay's blob ids (it picks them: 16 random bytes)."""
BLOB_READ_SIZE: Final = 256 * 1024
"""Largest piece a download hands out (and the connection's read buffer bound)."""
CONTINUE_WAIT: Final = 1.0
"""Seconds an upload waits for ``100 Continue`` before sending its body anyway (RFC
9110 10.1.1: a server or proxy may not answer it)."""
_NONCE_SIZE: Final = 32
_SPKI_PIN_SIZE: Final = 32
_OCTET_STREAM: Final = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class BlobEndpoint:
    """Where and as whom blob requests go: the relay's HTTP base URL
    (``https://host:port``), the origin the authentication statement names (the one
    the client was configured with), the device, and the TLS settings and pin.
    ``timeout`` bounds each step of a request (see the module documentation)."""

    http_url: str
    origin: str
    identity: DeviceIdentity
    ssl: ssl_module.SSLContext | None = field(default=None, repr=False)
    spki_pin: bytes | None = None
    timeout: float = HTTP_TIMEOUT


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """The relay's answer to an upload: the id it picked, the size it stored and when
    the blob expires (ms since the epoch: the upload time plus the message TTL)."""

    blob_id: bytes
    size: int
    expires_at_ms: int

    def __repr__(self) -> str:
        return f"StoredBlob(blob_id={self.blob_id.hex()}, size={self.size})"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _blob_path(blob_id: bytes) -> str:
    if not isinstance(blob_id, bytes) or not 1 <= len(blob_id) <= 64:
        raise UsageError("a blob id is 1..64 bytes")
    return f"/v1/blobs/{_b64url(blob_id)}"


@contextlib.contextmanager
def _mapped(operation: str, timeout: float) -> Iterator[None]:
    """Translate the network's exceptions inside the block into the SDK's."""
    try:
        yield
    except TimeoutError:
        raise RequestTimeout(operation, timeout) from None
    except (asyncio.LimitOverrunError, UnicodeError) as exc:
        raise MalformedResponse(f"{operation}: an HTTP answer that does not parse") from exc
    except asyncio.IncompleteReadError as exc:
        raise ConnectionFailed(f"{operation}: the connection ended mid-answer") from exc
    except E2EEError as exc:
        raise ConnectionFailed("the relay's certificate does not decode") from exc
    except (OSError, ssl_module.SSLError) as exc:
        raise ConnectionFailed(f"{operation} failed: {type(exc).__name__}") from exc


class _Connection:
    """One HTTP/1.1 connection to the relay carrying one authenticated request."""

    def __init__(
        self,
        endpoint: BlobEndpoint,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        base: str,
        host: str,
        port: int,
        spki: bytes | None,
    ) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.base = base
        self.host = host
        self.port = port
        self.spki = spki

    @classmethod
    async def open(cls, endpoint: BlobEndpoint, operation: str) -> _Connection:
        """Connect (TLS for https://), checking the SPKI pin on the handshake.

        Raises:
            PinMismatch, ConnectionFailed, RequestTimeout, UsageError.
        """
        tls, host, port, base = _split_url(endpoint.http_url)
        pin = endpoint.spki_pin
        if pin is not None and (not tls or len(pin) != _SPKI_PIN_SIZE):
            raise UsageError("an SPKI pin needs an https:// URL and is 32 bytes (SHA-256)")
        context = (endpoint.ssl or ssl_module.create_default_context()) if tls else None
        with _mapped(operation, endpoint.timeout):
            async with asyncio.timeout(endpoint.timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=BLOB_READ_SIZE
                )
            spki: bytes | None = None
            try:
                if tls:
                    ssl_object = writer.get_extra_info("ssl_object")
                    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                    if not der:
                        raise ConnectionFailed("the relay presented no certificate")
                    spki = spki_sha256(der)
                    if pin is not None and not hmac.compare_digest(spki, pin):
                        raise PinMismatch(expected=pin, seen=spki)
            except BaseException:
                writer.close()
                raise
        return cls(endpoint, reader, writer, base, host, port, spki)

    def head(self, method: str, path: str, nonce: bytes, extra: list[str]) -> bytes:
        """The request head, with the device's authentication headers."""
        endpoint = self.endpoint
        identity = endpoint.identity
        signature = sign_relay_auth(
            identity.signing,
            origin=endpoint.origin,
            user_id=identity.user_id,
            device_id=identity.device_id,
            nonce=nonce,
            spki_sha256=self.spki,
        )
        lines = [
            f"{method} {self.base}{path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Connection: close",
            f"Accept: application/json, {_OCTET_STREAM}",
            f"E2EE-User: {identity.user_id}",
            f"E2EE-Device: {identity.device_id}",
            f"E2EE-Nonce: {_b64url(nonce)}",
            f"E2EE-Signature: {_b64url(signature)}",
            *extra,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def write(self, data: bytes) -> None:
        """Write and wait until the transport's buffer drained (bounded)."""
        self.writer.write(data)
        async with asyncio.timeout(self.endpoint.timeout):
            await self.writer.drain()

    async def answer_head(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the next answer (bounded)."""
        async with asyncio.timeout(self.endpoint.timeout):
            return await _read_head(self.reader)

    async def small_body(self, status: int, headers: dict[str, str]) -> _Response:
        """A short answer's body (JSON; bounded by the HTTP client's limit)."""
        async with asyncio.timeout(self.endpoint.timeout):
            return _Response(status, headers, await _read_body(self.reader, headers))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def _refused(response: _Response) -> RelayRefused:
    error = _refusal(response)
    if response.status == 404:
        return BlobNotFound(error.code, error.reason, http_status=404)
    return error


async def fetch_auth_nonce(endpoint: BlobEndpoint) -> bytes:
    """``POST /v1/auth/nonce``: a fresh single-use nonce (valid 30 s) for one request.

    Raises:
        RelayRefused: (typed by code) an error answer, ``RateLimited`` on 429.
        MalformedResponse: the answer does not parse.
        PinMismatch, ConnectionFailed, RequestTimeout, UsageError: as the other calls.
    """
    response = await _exchange(
        endpoint.http_url,
        "POST",
        "/v1/auth/nonce",
        b"",
        ssl=endpoint.ssl,
        spki_pin=endpoint.spki_pin,
        timeout=endpoint.timeout,
    )
    if response.status != 200:
        raise _refusal(response)
    nonce = _cbor_map(response, "auth nonce").get(0)
    if not isinstance(nonce, bytes) or len(nonce) != _NONCE_SIZE:
        raise MalformedResponse("auth nonce: expected 32 bytes at key 0")
    return nonce


async def put_blob(endpoint: BlobEndpoint, body: AsyncIterable[bytes], length: int) -> StoredBlob:
    """``PUT /v1/blobs``: upload ``length`` bytes, written as ``body`` yields them
    (never gathered). The relay picks the id; the blob expires with its message TTL.

    The head goes first with ``Expect: 100-continue``: a refusal (authentication, a
    ``Content-Length`` above the relay's maximum) is answered before any body byte is
    sent. While the body is written the answer is awaited too, so a refusal mid-upload
    (the device's quota) stops the upload and is reported as such even when the relay
    resets the connection. An exception from ``body`` closes the connection
    mid-upload, which makes the relay delete the partial blob, and propagates
    unchanged.

    Raises:
        TooLarge: above the relay's maximum blob size or the device's byte quota.
        AuthFailed, RateLimited, RelayRefused: other refusals (typed by code).
        MalformedResponse: the answer does not parse, names another size, or came
            before the whole body was sent without refusing it.
        PinMismatch, ConnectionFailed, RequestTimeout: the connection failed.
        UsageError: ``length`` is not positive, ``body`` yields more or fewer bytes
            than ``length``, a bad URL or pin.
    """
    if type(length) is not int or length <= 0:
        raise UsageError("a blob has at least one byte")
    nonce = await fetch_auth_nonce(endpoint)
    operation = "PUT /v1/blobs"
    conn = await _Connection.open(endpoint, operation)
    answer: asyncio.Task[tuple[int, dict[str, str]]] | None = None
    try:
        extra = [
            f"Content-Type: {_OCTET_STREAM}",
            f"Content-Length: {length}",
            "Expect: 100-continue",
        ]
        with _mapped(operation, endpoint.timeout):
            await conn.write(conn.head("PUT", "/v1/blobs", nonce, extra))
            early = await _await_continue(conn)
            if early is not None:
                raise _refused(await _body_or_status(conn, *early))
        answer = asyncio.create_task(_final_head(conn.reader))
        sent = await _write_body(conn, body, length, answer, operation)
        with _mapped(operation, endpoint.timeout):
            async with asyncio.timeout(endpoint.timeout):
                status, headers = await asyncio.shield(answer)
            response = await _body_or_status(conn, status, headers)
        if response.status == 201 and sent != length:
            raise MalformedResponse("blob upload: answered before the body was sent")
    finally:
        if answer is not None and not answer.done():
            answer.cancel()
        if answer is not None:
            with contextlib.suppress(BaseException):
                await answer  # retrieved: no "exception never retrieved" warning
        await conn.close()
    if response.status != 201:
        raise _refused(response)
    stored = _stored(response)
    if stored.size != length:
        raise MalformedResponse("blob upload: the relay stored another size")
    logger.info("blob uploaded (%d bytes)", length)
    return stored


async def _write_body(
    conn: _Connection,
    body: AsyncIterable[bytes],
    length: int,
    answer: asyncio.Task[tuple[int, dict[str, str]]],
    operation: str,
) -> int:
    """Write ``body`` until it ends or the relay answers (or resets the connection,
    which is taken as its answer coming); the bytes written."""
    sent = 0
    pieces = aiter(body)
    try:
        async for piece in pieces:
            if answer.done():
                break
            sent += len(piece)
            if sent > length:
                raise UsageError("the blob's source yields more bytes than its length")
            with _mapped(operation, conn.endpoint.timeout):
                try:
                    await conn.write(piece)
                except ConnectionError:
                    break  # the relay answered and closed (or it failed: the answer says)
        else:
            if sent != length:
                raise UsageError("the blob's source yields fewer bytes than its length")
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()
    return sent


async def _final_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers of the final answer, skipping a late ``100 Continue``."""
    status, headers = await _read_head(reader)
    while status == 100:
        status, headers = await _read_head(reader)
    return status, headers


async def _body_or_status(conn: _Connection, status: int, headers: dict[str, str]) -> _Response:
    """The answer with its body; for a refusal whose body cannot be read (the relay
    reset the connection after its head), the status alone (the error is typed from
    it)."""
    try:
        return await conn.small_body(status, headers)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        if status < 300:
            raise
        return _Response(status, headers, b"")


async def _await_continue(conn: _Connection) -> tuple[int, dict[str, str]] | None:
    """After the head of an upload: ``None`` to send the body (``100 Continue``, or
    no answer within :data:`CONTINUE_WAIT`), or the final answer's status and headers
    (a refusal before the body)."""
    try:
        async with asyncio.timeout(CONTINUE_WAIT):
            status, headers = await _read_head(conn.reader)
    except TimeoutError:
        return None  # readuntil keeps what arrived in the buffer: read again later
    if status == 100:
        return None
    return status, headers


def _stored(response: _Response) -> StoredBlob:
    try:
        value = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedResponse("blob upload: not JSON") from None
    if not isinstance(value, dict):
        raise MalformedResponse("blob upload: expected a JSON object")
    text, size, expires = value.get("id"), value.get("size"), value.get("expires_at_ms")
    if type(size) is not int or type(expires) is not int or size < 0 or expires < 0:
        raise MalformedResponse("blob upload: size and expires_at_ms are non-negative integers")
    if not isinstance(text, str) or len(text) != 22 or not text.isascii():
        raise MalformedResponse("blob upload: id is 16 bytes in base64url")
    try:
        blob_id = base64.urlsafe_b64decode(text + "==")
    except ValueError:
        raise MalformedResponse("blob upload: id is not base64url") from None
    if len(blob_id) != BLOB_ID_SIZE or _b64url(blob_id) != text:
        raise MalformedResponse("blob upload: id is not canonical base64url of 16 bytes")
    return StoredBlob(blob_id, size, expires)


class BlobDownload:
    """A blob being downloaded: ``length`` (its ``Content-Length``), and ``async for
    piece in download`` the bytes as they arrive, in pieces of at most
    :data:`BLOB_READ_SIZE` (never more than that is buffered)."""

    def __init__(self, conn: _Connection, length: int, operation: str) -> None:
        self._conn = conn
        self.length = length
        self._operation = operation
        self._remaining = length

    def __aiter__(self) -> BlobDownload:
        return self

    async def __anext__(self) -> bytes:
        """The next piece.

        Raises:
            StopAsyncIteration: all ``length`` bytes were handed out.
            ConnectionFailed: the connection ended short of ``length`` (the relay cuts a
                download whose blob was deleted meanwhile).
            RequestTimeout: nothing arrived within the timeout.
        """
        if self._remaining == 0:
            raise StopAsyncIteration
        timeout = self._conn.endpoint.timeout
        with _mapped(self._operation, timeout):
            async with asyncio.timeout(timeout):
                piece = await self._conn.reader.read(min(BLOB_READ_SIZE, self._remaining))
        if not piece:
            raise ConnectionFailed(f"{self._operation}: the download ended short of its length")
        self._remaining -= len(piece)
        return piece


@contextlib.asynccontextmanager
async def open_blob(endpoint: BlobEndpoint, blob_id: bytes) -> AsyncIterator[BlobDownload]:
    """``GET /v1/blobs/{id}``: ``async with open_blob(endpoint, blob_id) as download:``
    then ``async for piece in download``. The connection closes when the block ends.

    Raises:
        BlobNotFound: unknown, expired or deleted (404).
        AuthFailed, RateLimited, RelayRefused: other refusals (typed by code).
        MalformedResponse: an answer without a usable ``Content-Length``.
        PinMismatch, ConnectionFailed, RequestTimeout: the connection failed (also
            while iterating).
        UsageError: a bad blob id, URL or pin.
    """
    path = _blob_path(blob_id)
    operation = "GET /v1/blobs"
    nonce = await fetch_auth_nonce(endpoint)
    conn = await _Connection.open(endpoint, operation)
    try:
        with _mapped(operation, endpoint.timeout):
            await conn.write(conn.head("GET", path, nonce, []))
            status, headers = await conn.answer_head()
            if status != 200:
                raise _refused(await conn.small_body(status, headers))
        declared = headers.get("content-length", "")
        if headers.get("transfer-encoding") or not declared.isascii() or not declared.isdigit():
            raise MalformedResponse("blob download: no Content-Length")
        yield BlobDownload(conn, int(declared), operation)
    finally:
        await conn.close()


async def delete_blob(endpoint: BlobEndpoint, blob_id: bytes) -> bool:
    """``DELETE /v1/blobs/{id}`` (the uploading device only): whether it was deleted
    (``False``: unknown, expired, already deleted or another device's).

    Raises:
        AuthFailed, RateLimited, RelayRefused: other refusals (typed by code).
        MalformedResponse, PinMismatch, ConnectionFailed, RequestTimeout, UsageError.
    """
    path = _blob_path(blob_id)
    operation = "DELETE /v1/blobs"
    nonce = await fetch_auth_nonce(endpoint)
    conn = await _Connection.open(endpoint, operation)
    try:
        with _mapped(operation, endpoint.timeout):
            await conn.write(conn.head("DELETE", path, nonce, []))
            status, headers = await conn.answer_head()
            response = await conn.small_body(status, headers)
    finally:
        await conn.close()
    if response.status == 204:
        return True
    if response.status == 404:
        return False
    raise _refused(response)
