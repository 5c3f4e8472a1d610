"""The device-link mailbox over a real uvicorn on 127.0.0.1 (issue 3 "Devices")."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from server import limits
from server.blob_auth import b64url_decode, b64url_encode
from server.settings import RateLimit
from server.storage import open_storage
from server.storage.base import Storage
from tests.server.blob_client import Relay, error_of, running_relay

TTL_MS = limits.LINK_TTL_SECONDS * 1000


def new_link() -> str:
    return b64url_encode(secrets.token_bytes(16))


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def relay(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Relay]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'relay.db'}"
    storage: Storage = await open_storage(url)
    try:
        async with running_relay(storage=storage) as running:
            yield running
    finally:
        await storage.aclose()


async def put(client: httpx.AsyncClient, link: str, slot: object, body: object) -> httpx.Response:
    return await client.put(f"/v1/link/{link}/{slot}", content=body)  # type: ignore[arg-type]


async def take(client: httpx.AsyncClient, link: str, slot: object) -> httpx.Response:
    return await client.post(f"/v1/link/{link}/{slot}/take")


@pytest.mark.asyncio
async def test_each_slot_is_written_once_and_read_once(relay: Relay) -> None:
    link = new_link()
    async with relay.client() as client:
        assert (await take(client, link, 0)).status_code == 404  # empty
        first = await put(client, link, 0, b"sealed by the new device")
        assert first.status_code == 201
        assert first.json() == {"expires_at_ms": relay.clock() + TTL_MS}
        again = await put(client, link, 0, b"overwrite attempt")
        assert (again.status_code, error_of(again)) == (409, "invalid")
        assert (await put(client, link, 1, b"sealed by the primary")).status_code == 201

        got = await take(client, link, 0)
        assert got.status_code == 200
        assert got.content == b"sealed by the new device"
        assert got.headers["content-type"] == "application/octet-stream"
        assert (await take(client, link, 0)).status_code == 404  # read once
        assert (await put(client, link, 0, b"rewrite")).status_code == 409  # written once
        assert (await take(client, link, 1)).content == b"sealed by the primary"
        assert (await take(client, link, 1)).status_code == 404
        # another mailbox is independent
        other = new_link()
        assert (await take(client, other, 0)).status_code == 404
        assert (await put(client, other, 0, b"x")).status_code == 201


@pytest.mark.asyncio
async def test_slots_expire_after_ten_minutes(relay: Relay) -> None:
    link = new_link()
    async with relay.client() as client:
        assert (await put(client, link, 0, b"zero")).status_code == 201
        assert (await put(client, link, 1, b"one")).status_code == 201
        relay.clock.advance(TTL_MS - 1)
        assert (await take(client, link, 0)).content == b"zero"
        relay.clock.advance(1)
        expired = await take(client, link, 1)
        assert (expired.status_code, error_of(expired)) == (404, "invalid")


@pytest.mark.asyncio
async def test_blobs_are_capped_at_64_kib(relay: Relay) -> None:
    async with relay.client() as client:
        link = new_link()
        exact = secrets.token_bytes(limits.LINK_MAX_BLOB)
        assert (await put(client, link, 0, exact)).status_code == 201
        assert (await take(client, link, 0)).content == exact

        over = new_link()
        big = secrets.token_bytes(limits.LINK_MAX_BLOB + 1)
        declared = await put(client, over, 0, big)
        assert (declared.status_code, error_of(declared)) == (413, "too_large")

        async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: the cap while reading
            for start in range(0, len(big), 10_000):
                yield big[start : start + 10_000]

        chunked = await put(client, over, 1, streamed())
        assert (chunked.status_code, error_of(chunked)) == (413, "too_large")
        empty = await put(client, over, 0, b"")
        assert (empty.status_code, error_of(empty)) == (400, "invalid")
        assert (await take(client, over, 0)).status_code == 404
        assert (await take(client, over, 1)).status_code == 404
        # refused writes did not use up the slots
        assert (await put(client, over, 0, b"fits")).status_code == 201


@pytest.mark.asyncio
async def test_bad_ids_and_slots_are_refused_and_change_nothing(relay: Relay) -> None:
    link = new_link()
    async with relay.client() as client:
        for bad_link, slot in [
            (b64url_encode(secrets.token_bytes(15)), 0),
            (b64url_encode(secrets.token_bytes(17)), 0),
            (link + "=", 0),
            (link.replace(link[0], "+", 1), 0),
            (link, 2),  # at most two slots per mailbox
            (link, "01"),
            (link, "-1"),
            (link, "x"),
        ]:
            for response in (
                await put(client, bad_link, slot, b"data"),
                await take(client, bad_link, slot),
            ):
                assert response.status_code == 400, (bad_link, slot)
                assert error_of(response) in {"malformed", "invalid"}
        assert (await take(client, link, 0)).status_code == 404
        assert (await put(client, link, 0, b"ok")).status_code == 201
        assert (await client.get(f"/v1/link/{link}/0")).status_code == 405  # never a GET


@pytest.mark.asyncio
async def test_puts_and_takes_are_rate_limited_per_ip() -> None:
    async with running_relay(rate_http=RateLimit(per_second=0.001, burst=4)) as relay:
        link = new_link()
        async with relay.client() as client:
            assert (await put(client, link, 0, b"a")).status_code == 201
            assert (await put(client, link, 1, b"b")).status_code == 201
            assert (await take(client, link, 0)).status_code == 200
            assert (await take(client, new_link(), 0)).status_code == 404
            limited_put = await put(client, link, 1, b"c")
            assert (limited_put.status_code, error_of(limited_put)) == (429, "rate_limited")
            limited_take = await take(client, link, 1)
            assert (limited_take.status_code, error_of(limited_take)) == (429, "rate_limited")
        # the refused take did not consume the slot
        raw = b64url_decode(link, 16, "link id")
        assert await relay.storage.links.take(raw, 1, relay.clock()) == b"b"
