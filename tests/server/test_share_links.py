"""Share links over a real uvicorn on 127.0.0.1 (issue 6; DESIGN 4.7), on a SQLite file
and on the real PostgreSQL.

The relay runs in this process (``blob_client.running_relay``) with an injected
clock, so the tests reach its storage and move its time.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from server import limits
from server.api_share import HEADER_EXPIRES_AT, HEADER_MAX_VIEWS, HEADER_PROOF_HASH, PREVIEW_PAGE
from server.blob_auth import b64url_encode
from server.settings import RateLimit
from server.storage import open_storage
from server.storage.base import ShareRecord, Storage
from tests.server.blob_client import Relay, error_of, running_relay, signed
from tests.server.pg import pg_url, truncate_all

__all__ = ["pg_url"]  # the fixture, used by name

TTL_MS = limits.MAX_SHARE_LINK_TTL_SECONDS * 1000
MAX_SIZE = limits.MAX_SHARE_SIZE_BYTES
WAIT = 10.0


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each test on a SQLite file and on this session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'relay.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        await truncate_all(url)
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


class Link:
    """What a client keeps of one share link: the id and the proof (the relay gets
    only the proof's hash at upload, the proof itself at open)."""

    def __init__(self) -> None:
        self.raw = secrets.token_bytes(16)
        self.id = b64url_encode(self.raw)
        self.proof = secrets.token_bytes(32)
        self.proof_hash = hashlib.sha256(self.proof).hexdigest()


async def put(
    relay: Relay,
    client: httpx.AsyncClient,
    link: Link,
    body: object = b"share ciphertext",
    *,
    expires_at: int | None = None,
    max_views: int | None = None,
    user: str = "alice",
    index: int = 0,
    drop: tuple[str, ...] = (),
    **extra: str,
) -> httpx.Response:
    headers = await signed(client, relay.users[user], index)
    headers[HEADER_PROOF_HASH] = link.proof_hash
    headers[HEADER_EXPIRES_AT] = str(relay.clock() + TTL_MS if expires_at is None else expires_at)
    if max_views is not None:
        headers[HEADER_MAX_VIEWS] = str(max_views)
    headers.update(extra)
    for name in drop:
        del headers[name]
    return await client.put(f"/v1/share/{link.id}", content=body, headers=headers)  # type: ignore[arg-type]


async def open_link(
    client: httpx.AsyncClient, link: Link, proof: bytes | None = None
) -> httpx.Response:
    return await client.post(
        f"/v1/share/{link.id}/open", content=link.proof if proof is None else proof
    )


async def record(relay: Relay, link: Link, now: int | None = None) -> ShareRecord | None:
    return await relay.storage.shares.get(link.raw, relay.clock() if now is None else now)


async def no_blob_stored(relay: Relay) -> bool:
    """Whether the relay's storage holds no blob at all (the purge of everything, far in
    the future, finds nothing)."""
    return await relay.storage.blobs.purge_expired(2**62, 1000) == 0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds, up to :data:`WAIT` seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def agen(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# --- upload and open --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_upload_then_open_with_the_right_proof(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        config = (await client.get("/v1/config")).json()
        assert config["max_share_size"] == MAX_SIZE
        assert config["max_share_link_ttl_ms"] == TTL_MS
        stored = await put(relay, client, link, b"the ciphertext")
        assert stored.status_code == 201, stored.text
        assert stored.json() == {"id": link.id, "expires_at_ms": relay.clock() + TTL_MS}
        for view in (1, 2):
            opened = await open_link(client, link)
            assert opened.status_code == 200
            assert opened.content == b"the ciphertext"
            assert opened.headers["content-type"] == "application/octet-stream"
            assert opened.headers["cache-control"] == "no-store"
            current = await record(relay, link)
            assert current is not None and current.views == view
        metrics = (await client.get("/metrics")).text
    assert "relay_share_links_stored_total 1.0" in metrics
    assert "relay_share_link_views_total 2.0" in metrics


@pytest.mark.asyncio
async def test_an_id_is_taken_until_it_expires(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        assert (await put(relay, client, link)).status_code == 201
        for user in ("alice", "bob"):
            again = await put(relay, client, link, b"another", user=user)
            assert (again.status_code, error_of(again)) == (409, "exists")
        opened = await open_link(client, link)
        assert opened.content == b"share ciphertext"  # the first upload stands


# --- wrong proofs -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wrong_proofs_are_typed_and_the_fifth_deletes_the_blob(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        assert (await put(relay, client, link)).status_code == 201
        share = await record(relay, link)
        assert share is not None
        for _ in range(limits.SHARE_MAX_WRONG_PROOFS - 1):
            wrong = await open_link(client, link, secrets.token_bytes(32))
            assert (wrong.status_code, error_of(wrong)) == (403, "wrong_proof")
        assert (await open_link(client, link)).status_code == 200  # still there
        current = await record(relay, link)
        assert current is not None and current.wrong_proofs == limits.SHARE_MAX_WRONG_PROOFS - 1
        fifth = await open_link(client, link, secrets.token_bytes(32))
        assert (fifth.status_code, error_of(fifth)) == (403, "wrong_proof")
        gone = await open_link(client, link)
        assert (gone.status_code, error_of(gone)) == (404, "not_found")
        metrics = (await client.get("/metrics")).text
    assert await relay.storage.shares.get(link.raw, share.created_at_ms) is None
    assert await relay.storage.blobs.get(share.blob_id, share.created_at_ms) is None
    assert await no_blob_stored(relay)
    assert "relay_share_links_burned_total 1.0" in metrics
    assert 'relay_refusals_total{reason="wrong_proof"} 5.0' in metrics


@pytest.mark.asyncio
async def test_malformed_proofs_and_ids_are_bad_requests_and_not_counted(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        assert (await put(relay, client, link)).status_code == 201
        for proof in (b"", link.proof[:31], link.proof + b"x", link.proof * 3):
            response = await open_link(client, link, proof)
            assert (response.status_code, error_of(response)) == (400, "bad_request")
        for bad_id in ("short", link.id + "A", link.id[:-1] + "=", "!" * 22):
            response = await client.post(f"/v1/share/{bad_id}/open", content=link.proof)
            assert (response.status_code, error_of(response)) == (400, "bad_request"), bad_id
        unknown = await open_link(client, Link())
        assert (unknown.status_code, error_of(unknown)) == (404, "not_found")
        current = await record(relay, link)
        assert current is not None and (current.views, current.wrong_proofs) == (0, 0)
        assert (await open_link(client, link)).status_code == 200


# --- view limit and link previews -------------------------------------------------------


@pytest.mark.asyncio
async def test_the_view_limit(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        assert (await put(relay, client, link, max_views=2)).status_code == 201
        share = await record(relay, link)
        assert share is not None and share.max_views == 2
        assert (await open_link(client, link)).status_code == 200
        assert (await open_link(client, link)).status_code == 200
        used_up = await open_link(client, link)
        assert (used_up.status_code, error_of(used_up)) == (404, "not_found")
    assert await relay.storage.blobs.get(share.blob_id, share.created_at_ms) is None


@pytest.mark.asyncio
async def test_the_link_path_never_returns_the_blob_nor_counts_a_view(relay: Relay) -> None:
    link = Link()
    ciphertext = b"CIPHERTEXT-" + secrets.token_bytes(32)
    async with relay.client() as client:
        assert (await put(relay, client, link, ciphertext, max_views=1)).status_code == 201
        pages = [await client.get(f"/s/{link.id}") for _ in range(5)]
        pages.append(await client.head(f"/s/{link.id}"))
        for other in (Link().id, "not-an-id", "A" * 200):  # no oracle: the same page
            pages.append(await client.get(f"/s/{other}"))
        for page in pages:
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-store"
            assert b"CIPHERTEXT" not in page.content
        assert {p.text for p in pages if p.request.method == "GET"} == {PREVIEW_PAGE}
        assert link.id not in pages[0].text
        current = await record(relay, link)
        assert current is not None and current.views == 0
        opened = await open_link(client, link)  # the one view is still there
        assert (opened.status_code, opened.content) == (200, ciphertext)
        assert (await client.get(f"/s/{link.id}")).status_code == 200  # also once used up


# --- expiry -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_expiry_at_five_minutes_with_the_injected_clock(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        start = relay.clock()
        assert (await put(relay, client, link, expires_at=start + TTL_MS)).status_code == 201
        relay.clock.advance(TTL_MS - 1)
        assert (await open_link(client, link)).status_code == 200
        relay.clock.advance(1)
        expired = await open_link(client, link)
        assert (expired.status_code, error_of(expired)) == (404, "not_found")
        wrong = await open_link(client, link, secrets.token_bytes(32))
        assert wrong.status_code == 404  # an expired share counts nothing either
        # not purged yet: the row is still stored, and refused all the same
        share = await record(relay, link, start)
        assert share is not None and share.wrong_proofs == 0
        delete = await client.delete(
            f"/v1/share/{link.id}", headers=await signed(client, relay.users["alice"])
        )
        assert (delete.status_code, error_of(delete)) == (404, "not_found")
        # an expired id may be uploaded again
        assert (await put(relay, client, link, b"new")).status_code == 201
        assert (await open_link(client, link)).content == b"new"


@pytest.mark.asyncio
async def test_too_long_and_already_expired_uploads_are_refused(relay: Relay) -> None:
    async with relay.client() as client:
        now = relay.clock()
        for expires_at, error in (
            (now + TTL_MS + 1, "ttl_too_long"),
            (now + 10 * TTL_MS, "ttl_too_long"),
            (now, "expired"),
            (now - 1, "expired"),
            (0, "expired"),
        ):
            link = Link()
            refused = await put(relay, client, link, expires_at=expires_at)
            assert (refused.status_code, error_of(refused)) == (400, error), expires_at
            assert await record(relay, link) is None
        assert (await put(relay, client, Link(), expires_at=now + 1)).status_code == 201


@pytest.mark.asyncio
async def test_the_maximum_ttl_is_the_operators(storage: Storage) -> None:
    async with running_relay(storage=storage, max_share_link_ttl_seconds=60) as relay:
        await relay.add_user("alice")
        async with relay.client() as client:
            now = relay.clock()
            config = (await client.get("/v1/config")).json()
            assert config["max_share_link_ttl_ms"] == 60_000
            long = await put(relay, client, Link(), expires_at=now + 60_001)
            assert (long.status_code, error_of(long)) == (400, "ttl_too_long")
            assert (await put(relay, client, Link(), expires_at=now + 60_000)).status_code == 201


# --- malformed uploads and sizes --------------------------------------------------------


@pytest.mark.asyncio
async def test_malformed_uploads_are_bad_requests_and_store_nothing(relay: Relay) -> None:
    async with relay.client() as client:
        cases: list[dict[str, Any]] = [
            {"drop": (HEADER_PROOF_HASH,)},
            {HEADER_PROOF_HASH: "ab" * 31},
            {HEADER_PROOF_HASH: "zz" * 32},
            {HEADER_PROOF_HASH: "ab" * 33},
            {"drop": (HEADER_EXPIRES_AT,)},
            {HEADER_EXPIRES_AT: "soon"},
            {HEADER_EXPIRES_AT: "-5"},
            {HEADER_EXPIRES_AT: "1" * 30},
            {"max_views": 0},
            {"max_views": limits.SHARE_MAX_VIEWS + 1},
            {HEADER_MAX_VIEWS: "many"},
            {"body": b""},
        ]
        for case in cases:
            link = Link()
            refused = await put(relay, client, link, **case)
            assert (refused.status_code, error_of(refused)) == (400, "bad_request"), case
            assert await record(relay, link) is None
        headers = await signed(client, relay.users["alice"])
        bad_id = await client.put("/v1/share/nope", content=b"x", headers=headers)
        assert (bad_id.status_code, error_of(bad_id)) == (400, "bad_request")
        unauthenticated = await client.put(f"/v1/share/{Link().id}", content=b"x")
        assert unauthenticated.status_code == 401
        assert await no_blob_stored(relay)
        ok = await put(relay, client, Link(), max_views=limits.SHARE_MAX_VIEWS)
        assert ok.status_code == 201


@pytest.mark.asyncio
async def test_too_large_is_refused_while_streaming_and_stores_nothing(relay: Relay) -> None:
    async with relay.client() as client:
        declared = Link()
        refused = await put(relay, client, declared, b"x" * (MAX_SIZE + 1))
        assert (refused.status_code, error_of(refused)) == (413, "too_large")
        streamed = Link()
        body = secrets.token_bytes(4 * MAX_SIZE)
        refused = await put(relay, client, streamed, agen(pieces(body, 4096)))
        assert (refused.status_code, error_of(refused)) == (413, "too_large")
        assert "content-length" not in refused.request.headers  # chunked: seen while streaming
        for link in (declared, streamed):
            assert await record(relay, link) is None
        assert await no_blob_stored(relay)
        exact = Link()
        stored = await put(relay, client, exact, agen(pieces(body[:MAX_SIZE], 4096)))
        assert stored.status_code == 201
        assert (await open_link(client, exact)).content == body[:MAX_SIZE]


@pytest.mark.asyncio
async def test_the_blob_quota_counts_shares(storage: Storage) -> None:
    async with running_relay(storage=storage, blob_quota_bytes=100) as relay:
        await relay.add_user("alice")
        async with relay.client() as client:
            assert (await put(relay, client, Link(), b"x" * 60)).status_code == 201
            full = await put(relay, client, Link(), b"y" * 41)
            assert (full.status_code, error_of(full)) == (413, "too_large")
            assert (await put(relay, client, Link(), b"y" * 40)).status_code == 201


# --- delete and purge -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_only_the_uploader_deletes(relay: Relay) -> None:
    link = Link()
    async with relay.client() as client:
        assert (await put(relay, client, link)).status_code == 201
        path = f"/v1/share/{link.id}"
        assert (await client.delete(path)).status_code == 401
        for user, index in (("alice", 1), ("bob", 0)):  # the uploader's other device too
            other = await client.delete(
                path, headers=await signed(client, relay.users[user], index)
            )
            assert (other.status_code, error_of(other)) == (404, "not_found")
        assert (await open_link(client, link)).status_code == 200
        deleted = await client.delete(path, headers=await signed(client, relay.users["alice"]))
        assert deleted.status_code == 204
        assert (await open_link(client, link)).status_code == 404
        again = await client.delete(path, headers=await signed(client, relay.users["alice"]))
        assert (again.status_code, error_of(again)) == (404, "not_found")
    assert await no_blob_stored(relay)


@pytest.mark.asyncio
async def test_the_purge_deletes_expired_shares_and_their_blobs(storage: Storage) -> None:
    async with running_relay(storage=storage, purge_interval_seconds=0.02) as relay:
        await relay.add_user("alice")
        short, long = Link(), Link()
        async with relay.client() as client:
            now = relay.clock()
            assert (await put(relay, client, short, expires_at=now + 1000)).status_code == 201
            assert (await put(relay, client, long)).status_code == 201
        first = await record(relay, short, now)
        assert first is not None
        relay.clock.advance(1000)

        async def purged() -> bool:
            return await relay.storage.shares.get(short.raw, now) is None

        await eventually(purged, "the purge of the expired share")
        assert await relay.storage.blobs.get(first.blob_id, now) is None
        assert await record(relay, long) is not None  # the live one stays


# --- rate limits and several relay nodes ------------------------------------------------


@pytest.mark.asyncio
async def test_opens_are_rate_limited_per_ip(storage: Storage) -> None:
    async with running_relay(
        storage=storage, rate_http=RateLimit(per_second=0.001, burst=3)
    ) as relay:
        await relay.add_user("alice")
        link = Link()
        async with relay.client() as client:
            assert (await put(relay, client, link)).status_code == 201
            for _ in range(3):
                assert (await open_link(client, link, secrets.token_bytes(32))).status_code == 403
            limited = await open_link(client, link)
            assert (limited.status_code, error_of(limited)) == (429, "rate_limited")
        current = await record(relay, link)
        assert current is not None and (current.views, current.wrong_proofs) == (0, 3)


@pytest.mark.asyncio
async def test_two_relay_nodes_serve_a_one_view_link_once(pg_url: str) -> None:
    """Two relays, each with its own engine, on one PostgreSQL database: concurrent
    opens through both serve a one-view link exactly once."""
    await truncate_all(pg_url)
    first = await open_storage(pg_url)
    second = await open_storage(pg_url)
    try:
        async with (
            running_relay(storage=first) as node_a,
            running_relay(storage=second) as node_b,
        ):
            await node_a.add_user("alice")
            link = Link()
            async with node_a.client() as a, node_b.client() as b:
                assert (await put(node_a, a, link, b"once", max_views=1)).status_code == 201
                answers = await asyncio.gather(
                    *(open_link(a if i % 2 else b, link) for i in range(20))
                )
            assert sorted(r.status_code for r in answers) == [200] + [404] * 19
            assert [r.content for r in answers if r.status_code == 200] == [b"once"]
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.asyncio
async def test_the_relay_stores_the_proof_hash_never_the_proof(tmp_path: Path) -> None:
    """The SQLite files hold the ciphertext and SHA-256 of the proof, never the proof
    (it passes through the relay only at open)."""
    path = tmp_path / "relay.db"
    storage = await open_storage(f"sqlite:///{path}")
    try:
        async with running_relay(storage=storage) as relay:
            await relay.add_user("alice")
            link = Link()
            async with relay.client() as client:
                assert (await put(relay, client, link, b"CANARY-CIPHERTEXT")).status_code == 201
                assert (await open_link(client, link)).status_code == 200
    finally:
        await storage.aclose()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("relay.db*"))
    assert b"CANARY-CIPHERTEXT" in stored  # the scan would see it
    assert bytes.fromhex(link.proof_hash) in stored
    assert link.proof not in stored
