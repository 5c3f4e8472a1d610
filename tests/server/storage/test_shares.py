"""Contract: share links (every implementation), their ciphertext on the blob storage;
and on PostgreSQL, concurrent opens from two engines count views and wrong proofs
exactly."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from server.storage import open_storage
from server.storage.base import (
    MAX_BLOB_CHUNK,
    BlobExists,
    BlobQuotaExceeded,
    ShareExists,
    ShareOpened,
    ShareRecord,
    ShareWrongProof,
    Storage,
)
from tests.server.pg import truncate_all

from .helpers import T0

pytestmark = pytest.mark.asyncio

SHARE = b"S" * 16
BLOB = b"B" * 16
RIGHT = hashlib.sha256(b"the right proof").digest()
WRONG = hashlib.sha256(b"a wrong proof").digest()
DATA = b"ciphertext of a share link"
TTL = 300_000
QUOTA = 4 * MAX_BLOB_CHUNK
LIMIT = 5


async def create(
    storage: Storage,
    share_id: bytes = SHARE,
    blob_id: bytes = BLOB,
    *,
    data: bytes = DATA,
    now: int = T0,
    ttl: int = TTL,
    max_views: int | None = None,
    owner: tuple[str, int] = ("alice", 1),
    quota: int = QUOTA,
) -> ShareRecord:
    return await storage.shares.create(
        share_id, blob_id, *owner, RIGHT, data, now, now + ttl, max_views, quota
    )


async def blob_bytes(storage: Storage, blob_id: bytes) -> list[bytes]:
    return [c async for c in storage.blobs.chunks(blob_id)]


async def blob_gone(storage: Storage, blob_id: bytes) -> bool:
    """Whether the blob is gone (whatever its expiry), without changing anything."""
    return await storage.blobs.get(blob_id, 0) is None and not await storage.blobs.delete(blob_id)


async def test_create_get_and_open_with_the_right_proof(storage: Storage) -> None:
    record = await create(storage)
    assert record == ShareRecord(SHARE, BLOB, "alice", 1, len(DATA), T0, T0 + TTL, None, 0, 0)
    assert await storage.shares.get(SHARE, T0) == record
    # the ciphertext is a complete blob of the blob storage, counted in the quota
    blob = await storage.blobs.get(BLOB, T0)
    assert blob is not None
    assert (blob.owner_user, blob.owner_device, blob.size) == ("alice", 1, len(DATA))
    assert blob.expires_at_ms == T0 + TTL
    assert await blob_bytes(storage, BLOB) == [DATA]
    for view in (1, 2, 3):
        opened = await storage.shares.open(SHARE, RIGHT, T0 + view, LIMIT)
        assert isinstance(opened, ShareOpened)
        assert opened.data == DATA and not opened.deleted
        assert opened.record.views == view
    assert (await storage.shares.get(SHARE, T0)) == ShareRecord(
        SHARE, BLOB, "alice", 1, len(DATA), T0, T0 + TTL, None, 3, 0
    )
    assert DATA not in repr(opened).encode()
    assert await storage.shares.open(b"unknown", RIGHT, T0, LIMIT) is None


async def test_a_share_above_one_chunk_is_stored_as_chunk_rows(storage: Storage) -> None:
    data = bytes(range(256)) * (MAX_BLOB_CHUNK // 256) + b"tail"
    await create(storage, data=data)
    assert await blob_bytes(storage, BLOB) == [data[:MAX_BLOB_CHUNK], b"tail"]
    opened = await storage.shares.open(SHARE, RIGHT, T0, LIMIT)
    assert isinstance(opened, ShareOpened) and opened.data == data


async def test_create_refusals_store_nothing(storage: Storage) -> None:
    await create(storage)
    with pytest.raises(ShareExists):
        await create(storage, blob_id=b"other blob", owner=("bob", 1))
    assert await blob_gone(storage, b"other blob")
    with pytest.raises(BlobExists):
        await create(storage, b"other share")
    assert await storage.shares.get(b"other share", T0) is None
    # the quota counts every blob of the owner device, shares included
    with pytest.raises(BlobQuotaExceeded):
        await create(storage, b"big", b"big blob", quota=len(DATA) + 9, data=b"0123456789")
    assert await storage.shares.get(b"big", T0) is None
    assert await blob_gone(storage, b"big blob")
    await create(storage, b"fits", b"fits blob", quota=len(DATA) + 10, data=b"0123456789")
    for bad in (
        {"proof_hash": RIGHT[:31]},
        {"data": b""},
        {"max_views": 0},
    ):
        args: dict[str, object] = {
            "share_id": b"bad",
            "blob_id": b"bad blob",
            "owner_user": "alice",
            "owner_device": 1,
            "proof_hash": RIGHT,
            "data": DATA,
            "now_ms": T0,
            "expires_at_ms": T0 + TTL,
            "max_views": None,
            "quota_bytes": QUOTA,
        }
        args.update(bad)
        with pytest.raises(ValueError):
            await storage.shares.create(**args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await storage.shares.open(SHARE, RIGHT[:16], T0, LIMIT)
    with pytest.raises(ValueError):
        await storage.shares.open(SHARE, RIGHT, T0, 0)


async def test_an_expired_share_is_gone_on_every_read_and_its_id_free(storage: Storage) -> None:
    await create(storage)
    end = T0 + TTL
    assert await storage.shares.get(SHARE, end - 1) is not None
    assert await storage.shares.get(SHARE, end) is None
    assert await storage.shares.open(SHARE, RIGHT, end, LIMIT) is None
    assert await storage.shares.open(SHARE, WRONG, end, LIMIT) is None  # not counted
    assert not await storage.shares.delete(SHARE, "alice", 1, end)  # expired: not "deleted"
    assert await blob_gone(storage, BLOB)  # but cleaned up
    await create(storage)
    # an expired share's id is free again: the old share and its blob are replaced
    record = await create(storage, blob_id=b"new blob", now=end + TTL, data=b"new")
    assert record.created_at_ms == end + TTL
    assert await blob_gone(storage, BLOB)
    opened = await storage.shares.open(SHARE, RIGHT, end + TTL, LIMIT)
    assert isinstance(opened, ShareOpened) and opened.data == b"new"


async def test_the_fifth_wrong_proof_deletes_the_share(storage: Storage) -> None:
    await create(storage)
    for count in range(1, LIMIT):
        assert await storage.shares.open(SHARE, WRONG, T0, LIMIT) == ShareWrongProof(count, False)
    opened = await storage.shares.open(SHARE, RIGHT, T0, LIMIT)  # the right one still works
    assert isinstance(opened, ShareOpened) and opened.record.wrong_proofs == LIMIT - 1
    assert await storage.shares.open(SHARE, WRONG, T0, LIMIT) == ShareWrongProof(LIMIT, True)
    assert await storage.shares.open(SHARE, RIGHT, T0, LIMIT) is None
    assert await storage.shares.get(SHARE, T0) is None
    assert await blob_gone(storage, BLOB)


async def test_the_view_that_reaches_the_limit_deletes_the_share(storage: Storage) -> None:
    await create(storage, max_views=2)
    first = await storage.shares.open(SHARE, RIGHT, T0, LIMIT)
    assert isinstance(first, ShareOpened) and not first.deleted
    assert first.record.views == 1 and first.record.max_views == 2
    last = await storage.shares.open(SHARE, RIGHT, T0, LIMIT)
    assert isinstance(last, ShareOpened) and last.deleted and last.data == DATA
    assert last.record.views == 2
    assert await storage.shares.open(SHARE, RIGHT, T0, LIMIT) is None
    assert await storage.shares.open(SHARE, WRONG, T0, LIMIT) is None
    assert await blob_gone(storage, BLOB)


async def test_concurrent_opens_of_a_one_view_share_serve_it_once(storage: Storage) -> None:
    await create(storage, max_views=1)
    outcomes = await asyncio.gather(
        *(storage.shares.open(SHARE, RIGHT, T0, LIMIT) for _ in range(10))
    )
    assert [type(o) for o in outcomes].count(ShareOpened) == 1
    assert outcomes.count(None) == 9


async def test_only_the_uploader_deletes(storage: Storage) -> None:
    await create(storage)
    assert not await storage.shares.delete(SHARE, "alice", 2, T0)
    assert not await storage.shares.delete(SHARE, "bob", 1, T0)
    assert await storage.shares.get(SHARE, T0) is not None
    assert await storage.shares.delete(SHARE, "alice", 1, T0)
    assert await storage.shares.get(SHARE, T0) is None
    assert await blob_gone(storage, BLOB)
    assert not await storage.shares.delete(SHARE, "alice", 1, T0)


async def test_purge_in_batches_takes_the_blobs_along(storage: Storage) -> None:
    for i in range(3):
        await create(storage, b"old%d" % i, b"old blob%d" % i, ttl=10)
    await create(storage, b"live", b"live blob", ttl=100)
    assert await storage.shares.purge_expired(T0 + 10, 2) == 2
    assert await storage.shares.purge_expired(T0 + 10, 10) == 1
    assert await storage.shares.purge_expired(T0 + 10, 10) == 0
    assert await storage.shares.purge_expired(T0 + 10, 0) == 0
    for i in range(3):
        assert await storage.shares.get(b"old%d" % i, T0) is None
        assert await blob_gone(storage, b"old blob%d" % i)
    assert await storage.shares.get(b"live", T0 + 10) is not None
    assert await storage.blobs.purge_expired(T0 + 10, 10) == 0  # nothing left behind


async def test_a_share_lives_only_as_long_as_its_blob(storage: Storage) -> None:
    """The blob purge (or a blob delete) takes the share with it: no share ever points
    to missing bytes."""
    await create(storage, ttl=10)
    await create(storage, b"second", b"second blob")
    assert await storage.blobs.purge_expired(T0 + 10, 10) == 1
    assert await storage.shares.get(SHARE, T0) is None
    assert await storage.shares.open(SHARE, RIGHT, T0, LIMIT) is None
    assert await storage.blobs.delete(b"second blob")
    assert await storage.shares.get(b"second", T0) is None
    assert await storage.shares.purge_expired(T0 + TTL, 10) == 0


# --- PostgreSQL: two engines ------------------------------------------------------------

CONCURRENT = 40


async def test_postgres_concurrent_opens_from_two_engines(pg_url: str) -> None:
    await truncate_all(pg_url)
    first = await open_storage(pg_url, pool_size=10)
    second = await open_storage(pg_url, pool_size=10)
    try:
        await create(first, max_views=1)
        outcomes = await asyncio.gather(
            *(
                (first if i % 2 else second).shares.open(SHARE, RIGHT, T0, LIMIT)
                for i in range(CONCURRENT)
            )
        )
        opened = [o for o in outcomes if isinstance(o, ShareOpened)]
        assert len(opened) == 1 and opened[0].deleted and opened[0].data == DATA
        assert outcomes.count(None) == CONCURRENT - 1
        assert await blob_gone(second, BLOB)

        await create(second, b"guessed", b"guessed blob", max_views=100)
        wrongs = await asyncio.gather(
            *(
                (first if i % 2 else second).shares.open(b"guessed", WRONG, T0, LIMIT)
                for i in range(CONCURRENT)
            )
        )
        counted = sorted(w.wrong_proofs for w in wrongs if isinstance(w, ShareWrongProof))
        assert counted == list(range(1, LIMIT + 1))  # each counted once, none lost
        assert [w.deleted for w in wrongs if isinstance(w, ShareWrongProof)].count(True) == 1
        assert wrongs.count(None) == CONCURRENT - LIMIT
        assert await blob_gone(first, b"guessed blob")

        await create(first, b"views", b"views blob", max_views=7)
        views = await asyncio.gather(
            *(
                (first if i % 2 else second).shares.open(b"views", RIGHT, T0, LIMIT)
                for i in range(CONCURRENT)
            )
        )
        served = sorted(v.record.views for v in views if isinstance(v, ShareOpened))
        assert served == list(range(1, 8))
        assert views.count(None) == CONCURRENT - 7
    finally:
        await first.aclose()
        await second.aclose()
