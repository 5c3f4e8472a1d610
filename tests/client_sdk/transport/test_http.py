"""The small HTTP/1.1 client against fake servers: chunked bodies, error bodies,
garbage and oversized answers give typed errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from client_sdk.errors import (
    ConnectionFailed,
    MalformedResponse,
    RelayRefused,
    RelayUnavailable,
    RequestTimeout,
    UsageError,
)
from client_sdk.transport import fetch_config
from client_sdk.transport.http import MAX_RESPONSE_BODY
from e2ee.relay_frames import ErrorCode

CONFIG = {
    "protocol_versions": [1],
    "origin": "wss://relay.test",
    "spki_binding": "none",
    "max_frame": 1,
    "max_acks_per_frame": 1,
    "max_addressed_users": 2,
    "max_prekeys_per_upload": 100,
    "message_ttl_ms": 1,
    "max_share_link_ttl_ms": 1,
    "max_share_size": 1,
    "queue_quota": 1,
    "blob_quota_bytes": 1,
    "max_blob_size": 1,
    "blob_chunk_size": 1,
    "link_max_blob": 1,
    "link_ttl_ms": 1,
    "prekeys_low": 25,
    "nonce_ttl_ms": 1,
    "delivery_window": 1,
    "registration_token_required": False,
    "a_future_key": "ignored",
}


class FakeServer:
    def __init__(self) -> None:
        self.answer = b""
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if self.answer:
            writer.write(self.answer)
            await writer.drain()
            writer.close()
        else:  # never answer: wait until the client gives up and closes
            await reader.read()
            writer.close()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeServer]:
    state = FakeServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state
        server.close()


def _answer(status: str, body: bytes, headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.asyncio
async def test_config_plain_and_chunked(fake: FakeServer) -> None:
    url = f"http://127.0.0.1:{fake.port}"
    body = json.dumps(CONFIG).encode()
    fake.answer = _answer("200 OK", body)
    config = await fetch_config(url)
    assert config.prekeys_low == 25 and config.protocol_versions == (1,)
    half = len(body) // 2
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:])
    )
    fake.answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    assert await fetch_config(url) == config


@pytest.mark.asyncio
async def test_refusals_and_garbage_are_typed(fake: FakeServer) -> None:
    url = f"http://127.0.0.1:{fake.port}"
    error = {"error": "unavailable", "code": int(ErrorCode.UNAVAILABLE), "reason": "db"}
    fake.answer = _answer("503 Service Unavailable", json.dumps(error).encode())
    with pytest.raises(RelayUnavailable) as info:
        await fetch_config(url)
    assert info.value.http_status == 503
    fake.answer = _answer("418 Teapot", b"not json")
    with pytest.raises(RelayRefused):
        await fetch_config(url)
    for answer in (
        b"garbage\r\n\r\n",
        _answer("200 OK", b"[1, 2]"),
        _answer("200 OK", json.dumps({**CONFIG, "queue_quota": "many"}).encode()),
        _answer("200 OK", b"x" * (MAX_RESPONSE_BODY + 1)),
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    ):
        fake.answer = answer
        with pytest.raises(MalformedResponse):
            await fetch_config(url)


@pytest.mark.asyncio
async def test_timeouts_unreachable_and_bad_urls(fake: FakeServer) -> None:
    fake.answer = b""
    with pytest.raises(RequestTimeout):
        await fetch_config(f"http://127.0.0.1:{fake.port}", timeout=0.2)
    with pytest.raises(UsageError):
        await fetch_config("ftp://127.0.0.1/")
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(ConnectionFailed):
        await fetch_config(f"http://127.0.0.1:{port}")
