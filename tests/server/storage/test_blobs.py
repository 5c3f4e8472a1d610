"""Contract: blobs (every implementation)."""

from __future__ import annotations

import pytest

from server.storage.base import (
    MAX_BLOB_CHUNK,
    BlobExists,
    BlobQuotaExceeded,
    BlobRecord,
    Storage,
    UnknownBlob,
)

from .helpers import T0

pytestmark = pytest.mark.asyncio

BLOB = bytes(range(16))
QUOTA = 3 * MAX_BLOB_CHUNK


async def collect(storage: Storage, blob_id: bytes) -> list[bytes]:
    return [c async for c in storage.blobs.chunks(blob_id)]


async def test_upload_and_stream(storage: Storage) -> None:
    b = storage.blobs
    await b.begin(BLOB, "alice", 1, T0, T0 + 100, QUOTA)
    chunks = [b"\x01" * MAX_BLOB_CHUNK, b"\x02" * 10, b""]
    for i, chunk in enumerate(chunks):
        await b.append(BLOB, i, chunk, QUOTA)
    assert await b.get(BLOB, T0) is None  # not complete yet
    with pytest.raises(UnknownBlob):
        await collect(storage, BLOB)
    record = BlobRecord(BLOB, "alice", 1, MAX_BLOB_CHUNK + 10, 3, T0, T0 + 100)
    assert await b.complete(BLOB) == record
    assert await b.get(BLOB, T0 + 99) == record
    assert await b.get(BLOB, T0 + 100) is None  # expired
    assert await collect(storage, BLOB) == chunks
    with pytest.raises(UnknownBlob):
        await b.complete(BLOB)
    with pytest.raises(UnknownBlob):
        await b.append(BLOB, 3, b"late", QUOTA)


async def test_refusals(storage: Storage) -> None:
    b = storage.blobs
    await b.begin(BLOB, "alice", 1, T0, T0 + 100, QUOTA)
    with pytest.raises(BlobExists):
        await b.begin(BLOB, "bob", 1, T0, T0 + 100, QUOTA)
    with pytest.raises(UnknownBlob):
        await b.append(b"nope", 0, b"x", QUOTA)
    with pytest.raises(UnknownBlob):
        await b.complete(b"nope")
    with pytest.raises(ValueError, match="order"):
        await b.append(BLOB, 1, b"x", QUOTA)
    with pytest.raises(ValueError, match="exceeds"):
        await b.append(BLOB, 0, b"x" * (MAX_BLOB_CHUNK + 1), QUOTA)
    assert await b.get(b"nope", T0) is None
    with pytest.raises(UnknownBlob):
        await collect(storage, b"nope")


async def test_quota_per_device(storage: Storage) -> None:
    b = storage.blobs
    quota = 100
    await b.begin(b"a", "alice", 1, T0, T0 + 100, quota)
    await b.append(b"a", 0, b"x" * 60, quota)
    await b.begin(b"b", "alice", 1, T0, T0 + 100, quota)
    with pytest.raises(BlobQuotaExceeded):
        await b.append(b"b", 0, b"y" * 41, quota)
    await b.append(b"b", 0, b"y" * 40, quota)  # the refused chunk was not stored
    with pytest.raises(BlobQuotaExceeded):
        await b.begin(b"c", "alice", 1, T0, T0 + 100, quota)
    await b.begin(b"c", "alice", 2, T0, T0 + 100, quota)  # another device's quota
    await b.complete(b"b")
    assert (await b.get(b"b", T0)) == BlobRecord(b"b", "alice", 1, 40, 1, T0, T0 + 100)
    assert await b.delete(b"a")
    assert not await b.delete(b"a")
    await b.begin(b"d", "alice", 1, T0, T0 + 100, quota)


async def test_delete_mid_stream_is_an_error(storage: Storage) -> None:
    b = storage.blobs
    await b.begin(BLOB, "alice", 1, T0, T0 + 100, QUOTA)
    await b.append(BLOB, 0, b"one", QUOTA)
    await b.append(BLOB, 1, b"two", QUOTA)
    await b.complete(BLOB)
    stream = b.chunks(BLOB)
    assert await anext(stream) == b"one"
    assert await b.delete(BLOB)
    with pytest.raises(UnknownBlob):
        await anext(stream)


async def test_purge_expired(storage: Storage) -> None:
    b = storage.blobs
    for i in range(3):
        await b.begin(b"old%d" % i, "alice", 1, T0, T0 + 10, QUOTA)
        await b.append(b"old%d" % i, 0, b"data", QUOTA)
    await b.complete(b"old0")  # complete or abandoned, both go
    await b.begin(b"live", "alice", 1, T0, T0 + 100, QUOTA)
    assert await b.purge_expired(T0 + 10, 2) == 2
    assert await b.purge_expired(T0 + 10, 10) == 1
    assert await b.purge_expired(T0 + 10, 10) == 0
    await b.complete(b"live")
    assert await b.get(b"live", T0 + 10) is not None
    await b.begin(b"old0", "alice", 1, T0, T0 + 100, QUOTA)  # the id is free again
