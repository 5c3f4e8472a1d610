"""Blobs and HTTP device authentication over a real uvicorn on 127.0.0.1 (issue 3).

The relay runs in this process (``blob_client.running_relay``) on in-memory storage
and on a SQLite file, so the tests reach its storage (through a spy recording what
the endpoints did) and its clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from e2ee.relay_frames import ErrorCode
from server import api_blobs
from server.blob_auth import HEADER_NONCE, HEADER_SIGNATURE, b64url_encode
from server.settings import RateLimit
from server.storage import open_storage
from server.storage.base import MAX_BLOB_CHUNK, Storage
from tests.server.blob_client import (
    ORIGIN,
    Relay,
    auth_headers,
    error_of,
    fetch_nonce,
    running_relay,
    signed,
)

MiB = 1024 * 1024


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every chunk boundary."""
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * 4096  # 128 KiB
    out = (block * (size // len(block) + 1))[:size]
    return out


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` cut into uneven pieces (a chunked upload)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def agen(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each blob test on in-memory storage and on a SQLite file."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'relay.db'}"
    opened = await open_storage(url)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest_asyncio.fixture
async def relay(storage: Storage) -> AsyncIterator[Relay]:
    async with running_relay(storage=storage) as running:
        await running.add_user("alice", devices=2, seed=1)
        await running.add_user("bob", seed=2)
        yield running


async def upload(
    relay: Relay, client: httpx.AsyncClient, content: object, *, user: str = "alice", index: int = 0
) -> httpx.Response:
    headers = await signed(client, relay.users[user], index)
    return await client.put("/v1/blobs", content=content, headers=headers)  # type: ignore[arg-type]


async def download(
    relay: Relay, client: httpx.AsyncClient, blob_id: str, *, user: str = "bob"
) -> httpx.Response:
    headers = await signed(client, relay.users[user])
    return await client.get(f"/v1/blobs/{blob_id}", headers=headers)


async def nothing_left(relay: Relay) -> None:
    """Every blob the relay began was deleted again and is gone from storage."""
    begun = relay.blobs.begun
    assert begun, "the upload never reached storage (the check would be vacuous)"
    await relay.wait_for(
        lambda: {b for b, _ in relay.blobs.deleted} >= set(begun), "the partial blob's deletion"
    )
    for blob_id in begun:
        assert not await relay.blobs.inner.delete(blob_id)


# --- authentication ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_good_headers_authenticate_and_the_nonce_is_single_use(relay: Relay) -> None:
    async with relay.client() as client:
        alice = relay.users["alice"].devices[0].device
        nonce = await fetch_nonce(client)
        headers = auth_headers(alice.signing, "alice", alice.device_id, nonce)
        first = await client.put("/v1/blobs", content=b"hello", headers=headers)
        assert first.status_code == 201, first.text
        replayed = await client.put("/v1/blobs", content=b"again", headers=headers)
        assert replayed.status_code == 401
        assert error_of(replayed) == "auth_failed"
        assert replayed.json()["code"] == ErrorCode.AUTH_FAILED
    assert len(relay.blobs.begun) == 1  # the replay stored nothing


@pytest.mark.asyncio
async def test_wrong_origin_is_refused_without_burning_the_nonce(relay: Relay) -> None:
    async with relay.client() as client:
        alice = relay.users["alice"].devices[0].device
        nonce = await fetch_nonce(client)
        for origin in ("wss://evil.test", ORIGIN + "/", ORIGIN.replace("wss:", "https:")):
            wrong = auth_headers(alice.signing, "alice", alice.device_id, nonce, origin=origin)
            response = await client.put("/v1/blobs", content=b"x", headers=wrong)
            assert response.status_code == 401
            assert error_of(response) == "auth_failed"
        # a statement naming an SPKI hash the relay does not bind is refused too
        pinned = auth_headers(alice.signing, "alice", alice.device_id, nonce, spki_sha256=bytes(32))
        assert (await client.put("/v1/blobs", content=b"x", headers=pinned)).status_code == 401
        assert relay.blobs.begun == []
        good = auth_headers(alice.signing, "alice", alice.device_id, nonce)
        assert (await client.put("/v1/blobs", content=b"x", headers=good)).status_code == 201


@pytest.mark.asyncio
async def test_spki_binding_to_accepted_hashes() -> None:
    """With TLS ending at a proxy, the statement must name one of the accepted SPKI
    hashes (the same binding as the WebSocket authentication)."""
    accepted = [hashlib.sha256(b"proxy key one").digest(), hashlib.sha256(b"two").digest()]
    async with running_relay(
        spki_binding="accepted", spki_accepted=tuple(h.hex() for h in accepted)
    ) as relay:
        user = await relay.add_user("alice")
        device = user.devices[0].device
        async with relay.client() as client:
            for spki, status in [(None, 401), (bytes(32), 401), (accepted[1], 201)]:
                nonce = await fetch_nonce(client)
                headers = auth_headers(
                    device.signing, "alice", device.device_id, nonce, spki_sha256=spki
                )
                response = await client.put("/v1/blobs", content=b"x", headers=headers)
                assert response.status_code == status, spki


@pytest.mark.asyncio
async def test_unknown_device_and_foreign_key_are_refused(relay: Relay) -> None:
    async with relay.client() as client:
        alice = relay.users["alice"].devices[0].device
        bob = relay.users["bob"].devices[0].device
        cases = [
            ("alice", 4242, alice.signing),  # not in alice's list
            ("carol", alice.device_id, alice.signing),  # no such account
            ("alice", alice.device_id, bob.signing),  # bob's key claiming alice's device
        ]
        for user_id, device_id, key in cases:
            nonce = await fetch_nonce(client)
            headers = auth_headers(key, user_id, device_id, nonce)
            response = await client.put("/v1/blobs", content=b"x", headers=headers)
            assert response.status_code == 401, (user_id, device_id)
            assert error_of(response) == "auth_failed"
    assert relay.blobs.begun == []


@pytest.mark.asyncio
async def test_missing_or_malformed_headers_are_typed_refusals(relay: Relay) -> None:
    async with relay.client() as client:
        alice = relay.users["alice"].devices[0].device
        nonce = await fetch_nonce(client)
        good = auth_headers(alice.signing, "alice", alice.device_id, nonce)
        missing = dict(good)
        del missing[HEADER_SIGNATURE]
        response = await client.put("/v1/blobs", content=b"x", headers=missing)
        assert (response.status_code, error_of(response)) == (401, "not_authenticated")
        malformed = [
            {HEADER_NONCE: b64url_encode(nonce) + "="},  # padded
            {HEADER_NONCE: b64url_encode(nonce)[:-1]},  # short
            {HEADER_NONCE: "+" + b64url_encode(nonce)[1:]},  # standard alphabet
            {HEADER_SIGNATURE: "!" * 86},
            {"E2EE-Device": "+1000"},
            {"E2EE-Device": "99999999999"},
            {"E2EE-User": "Alice"},
        ]
        for change in malformed:
            response = await client.put("/v1/blobs", content=b"x", headers={**good, **change})
            assert response.status_code in (400, 401), change
            if response.status_code == 400:
                assert error_of(response) == "malformed", change
        # none of this consumed the nonce or stored anything
        assert (await client.put("/v1/blobs", content=b"x", headers=good)).status_code == 201
    assert len(relay.blobs.begun) == 1


@pytest.mark.asyncio
async def test_expired_nonce_is_refused(relay: Relay) -> None:
    async with relay.client() as client:
        alice = relay.users["alice"].devices[0].device
        nonce = await fetch_nonce(client)
        relay.clock.advance(30_000)
        headers = auth_headers(alice.signing, "alice", alice.device_id, nonce)
        response = await client.put("/v1/blobs", content=b"x", headers=headers)
        assert (response.status_code, error_of(response)) == (401, "auth_failed")


# --- round trip -------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [3 * MiB + 17, 2 * MiB, 1])
async def test_round_trip_across_chunk_boundaries(relay: Relay, size: int) -> None:
    data = pattern(size, seed=size)
    async with relay.client() as client:
        # uneven pieces, streamed with chunked transfer encoding
        response = await upload(relay, client, agen(pieces(data, 100_003)))
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["size"] == size
        assert (
            body["expires_at_ms"] == relay.clock() + relay.ctx.settings.message_ttl_seconds * 1000
        )
        assert len(body["id"]) == 22  # 16 bytes, base64url without padding
        lengths = [n for _, _, n in relay.blobs.appended]
        full, rest = divmod(size, MAX_BLOB_CHUNK)
        assert lengths == [MAX_BLOB_CHUNK] * full + ([rest] if rest else [])
        got = await download(relay, client, body["id"])
        assert got.status_code == 200
        assert got.headers["content-length"] == str(size)
        assert got.content == data


@pytest.mark.asyncio
async def test_ids_are_random_and_unknown_ids_are_404(relay: Relay) -> None:
    async with relay.client() as client:
        ids = {(await upload(relay, client, b"same bytes")).json()["id"] for _ in range(3)}
        assert len(ids) == 3
        unknown = b64url_encode(bytes(16))
        response = await download(relay, client, unknown)
        assert response.status_code == 404
        for bad in ("short", b64url_encode(bytes(17)), b64url_encode(bytes(16)) + "=="):
            response = await download(relay, client, bad)
            assert (response.status_code, error_of(response)) == (400, "malformed"), bad
        # a download needs authentication too
        blob_id = next(iter(ids))
        assert (await client.get(f"/v1/blobs/{blob_id}")).status_code == 401


@pytest.mark.asyncio
async def test_expired_blob_is_404(relay: Relay) -> None:
    async with relay.client() as client:
        blob_id = (await upload(relay, client, b"short-lived")).json()["id"]
        relay.clock.advance(relay.ctx.settings.message_ttl_seconds * 1000)
        assert (await download(relay, client, blob_id)).status_code == 404


@pytest.mark.asyncio
async def test_only_the_owner_deletes(relay: Relay) -> None:
    async with relay.client() as client:
        blob_id = (await upload(relay, client, b"mine")).json()["id"]
        for user, index in (("bob", 0), ("alice", 1)):  # another user; another own device
            headers = await signed(client, relay.users[user], index)
            response = await client.delete(f"/v1/blobs/{blob_id}", headers=headers)
            assert response.status_code == 404
        assert (await download(relay, client, blob_id)).content == b"mine"
        headers = await signed(client, relay.users["alice"])
        assert (await client.delete(f"/v1/blobs/{blob_id}", headers=headers)).status_code == 204
        assert (await download(relay, client, blob_id)).status_code == 404


@pytest.mark.asyncio
async def test_blob_vanishing_mid_download_breaks_the_transfer(relay: Relay) -> None:
    """A download whose blob goes mid-stream ends short of its Content-Length: the
    client sees a broken transfer, never a silently short blob."""
    data = pattern(3 * MiB)
    async with relay.client() as client:
        blob_id = (await upload(relay, client, data)).json()["id"]
        relay.blobs.vanish_after = 1
        headers = await signed(client, relay.users["bob"])
        received = 0
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", f"/v1/blobs/{blob_id}", headers=headers) as stream:
                assert stream.headers["content-length"] == str(len(data))
                async for part in stream.aiter_raw():
                    received += len(part)
        assert received == MAX_BLOB_CHUNK
    relay.blobs.vanish_after = None
    async with relay.client() as client:  # the relay is fine afterwards
        assert (await download(relay, client, blob_id)).status_code == 404
        assert (await upload(relay, client, b"next")).status_code == 201


# --- limits -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_declared_length_above_the_maximum_is_refused_before_storage(relay: Relay) -> None:
    """A Content-Length above the maximum is refused before a byte is stored: the
    request is sent by hand, headers only."""
    async with relay.client() as client:
        headers = await signed(client, relay.users["alice"])
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            (
                "PUT /v1/blobs HTTP/1.1\r\nHost: relay.test\r\n"
                f"Content-Length: {api_blobs.MAX_BLOB_SIZE + 1}\r\n{head}\r\n"
            ).encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=10)
        assert status.startswith(b"HTTP/1.1 413"), status
    finally:
        writer.close()
        await writer.wait_closed()
    assert relay.blobs.begun == []


@pytest.mark.asyncio
async def test_streamed_blob_above_the_maximum_is_refused_and_deleted(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_blobs, "MAX_BLOB_SIZE", 2 * MiB + 5)
    async with relay.client() as client:
        data = pattern(2 * MiB + 6)
        response = await upload(relay, client, agen(pieces(data, 65_536)))
        assert response.status_code == 413
        assert error_of(response) == "too_large"
        await nothing_left(relay)
        exact = await upload(relay, client, agen(pieces(data[:-1], 65_536)))
        assert exact.status_code == 201


@pytest.mark.asyncio
async def test_quota_is_enforced_while_streaming_and_nothing_is_left(tmp_path: Path) -> None:
    async with running_relay(blob_quota_bytes=3 * MiB) as relay:
        await relay.add_user("alice")
        async with relay.client() as client:
            assert (await upload(relay, client, pattern(2 * MiB))).status_code == 201
            refused = await upload(relay, client, agen(pieces(pattern(2 * MiB, 1), 65_536)))
            assert refused.status_code == 413
            assert error_of(refused) == "too_large"
            partial = relay.blobs.begun[1]
            await relay.wait_for(lambda: (partial, True) in relay.blobs.deleted, "deletion")
            assert not await relay.blobs.inner.delete(partial)
            # the refused upload holds nothing: exactly the rest of the quota still fits
            assert (await upload(relay, client, pattern(MiB))).status_code == 201
            full = await upload(relay, client, b"one byte more")
            assert full.status_code == 413


@pytest.mark.asyncio
async def test_upload_aborted_mid_stream_leaves_nothing(relay: Relay) -> None:
    async with relay.client() as client:
        headers = await signed(client, relay.users["alice"])
    _reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        (
            f"PUT /v1/blobs HTTP/1.1\r\nHost: relay.test\r\nContent-Length: {5 * MiB}\r\n{head}\r\n"
        ).encode()
    )
    writer.write(pattern(MiB + MiB // 2))
    await writer.drain()
    await relay.wait_for(lambda: len(relay.blobs.appended) >= 1, "the first chunk stored")
    writer.close()
    await writer.wait_closed()
    await nothing_left(relay)
    assert relay.blobs.deleted == [(relay.blobs.begun[0], True)]
    async with relay.client() as client:  # the relay is fine afterwards
        assert (await upload(relay, client, b"next")).status_code == 201


@pytest.mark.asyncio
async def test_nonces_and_blob_requests_are_rate_limited() -> None:
    tiny = RateLimit(per_second=0.001, burst=3)
    async with running_relay(rate_auth_ip=tiny) as relay, relay.client() as client:
        for _ in range(3):
            await fetch_nonce(client)
        response = await client.post("/v1/auth/nonce")
        assert (response.status_code, error_of(response)) == (429, "rate_limited")
        assert response.headers["retry-after"] == "1"
    async with running_relay(rate_http=tiny) as relay:
        await relay.add_user("alice")
        async with relay.client() as client:
            for _ in range(3):
                assert (await upload(relay, client, b"x")).status_code == 201
            response = await upload(relay, client, b"x")
            assert (response.status_code, error_of(response)) == (429, "rate_limited")
        assert len(relay.blobs.begun) == 3


# --- memory stays bounded ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_large_upload_and_download_keep_memory_bounded(tmp_path: Path) -> None:
    """20 MiB up and down through a relay on a SQLite file (whose pages live outside
    Python's allocator): the traced peak of relay and client together stays a small
    fraction of the blob."""
    size = 20 * MiB
    piece = pattern(64 * 1024, seed=7)
    expected = hashlib.sha256()
    for _ in range(size // len(piece)):
        expected.update(piece)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    storage = await open_storage(f"sqlite:///{tmp_path / 'relay.db'}")
    try:
        async with running_relay(storage=storage) as relay:
            await relay.add_user("alice")
            async with relay.client() as client:
                await upload(relay, client, b"warm up")  # first-use allocations
                tracemalloc.start()
                try:
                    baseline = tracemalloc.get_traced_memory()[0]
                    response = await upload(relay, client, body())
                    upload_peak = tracemalloc.get_traced_memory()[1] - baseline
                    assert response.status_code == 201, response.text
                    assert response.json()["size"] == size
                    tracemalloc.reset_peak()
                    baseline = tracemalloc.get_traced_memory()[0]
                    got = hashlib.sha256()
                    headers = await signed(client, relay.users["alice"])
                    path = f"/v1/blobs/{response.json()['id']}"
                    async with client.stream("GET", path, headers=headers) as stream:
                        assert stream.status_code == 200
                        assert stream.headers["content-length"] == str(size)
                        async for part in stream.aiter_raw():
                            got.update(part)
                    download_peak = tracemalloc.get_traced_memory()[1] - baseline
                finally:
                    tracemalloc.stop()
                assert got.digest() == expected.digest()
    finally:
        await storage.aclose()
    assert upload_peak < 6 * MiB, upload_peak
    assert download_peak < 6 * MiB, download_peak
