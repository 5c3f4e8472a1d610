"""Encrypted attachments (issue 6): ``send_attachment`` / ``download_attachment`` end to
end through a real relay (uvicorn on 127.0.0.1 in this process, a SQLite database
file), real WebSockets and HTTP, real encrypted SQLite stores.

* round trips: a small and an empty file to a user with two devices, the sender's
  other device getting the ``sync_sent`` copy; a 50 MiB file with the ``tracemalloc``
  peak of the whole process (the SDK's upload and download *and* the relay's handling
  of both, which run in this process) at most 16 MiB for each direction;
* tampering: the blob in the relay's storage truncated at every chunk boundary,
  chunks reordered, chunks appended, and a pointer with a wrong digest or key: each
  ``AttachmentCorrupt``, the destination untouched and no temporary file left; a
  deleted blob is ``BlobNotFound``;
* the relay's SQLite files hold only ciphertext (canary scan, the canary inside the
  attachment's plaintext, the scanner proven first);
* idempotency with ``client_msg_id``, and no blob left behind by a failed send.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import secrets
import sqlite3
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from client_sdk._client.sending import SendingMixin
from client_sdk.client import Client, Message
from client_sdk.errors import (
    AttachmentCorrupt,
    AttachmentFileError,
    AuthFailed,
    BlobNotFound,
    ConnectionFailed,
    PinMismatch,
    TooLarge,
    TransportError,
    UnknownUser,
    UsageError,
)
from client_sdk.testing.canary import CanaryScanner, make_canaries, prove_detects
from client_sdk.transport.blob_http import put_blob
from e2ee.attachment import (
    ATTACHMENT_CHUNK_SIZE,
    ATTACHMENT_CIPHERTEXT_CHUNK_SIZE,
    ATTACHMENT_HEADER_SIZE,
    AttachmentPointer,
    attachment_blob_size,
)
from e2ee.attachment import AttachmentCorrupt as CoreAttachmentCorrupt
from e2ee.payload import AttachmentRef, PayloadType
from e2ee.primitives import spki_sha256
from server.api_blobs import MAX_BLOB_SIZE
from server.storage.base import MAX_BLOB_CHUNK
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay
from tests.server.test_relay_tls import _self_signed

WAIT = 60.0
"""Bound for anything a test waits for."""
MEMORY_BOUND = 16 * 1024 * 1024
BIG_SIZE = 50 * 1024 * 1024
SUFFIXES = ("", "-wal", "-shm")


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


class Harness:
    """Opens clients on one relay, each with its own store file and raw key."""

    def __init__(self, relay: RunningRelay, tmp_path: Path) -> None:
        self.relay = relay
        self.url = f"ws://127.0.0.1:{relay.port}"
        self.tmp_path = tmp_path
        self.keys: dict[str, bytes] = {}

    def open(
        self, name: str, *, link_code: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        return Client.open(
            self.url,
            store=self.tmp_path / f"{name}.db",
            key=key,
            origin=ORIGIN,
            link_code=link_code,
            link_timeout=WAIT,
        )

    async def registered(self, stack: contextlib.AsyncExitStack, name: str) -> Client:
        client = await stack.enter_async_context(self.open(name))
        await client.register(f"{name}-{secrets.token_hex(4)}")
        return client

    async def linked(self, stack: contextlib.AsyncExitStack, primary: Client, name: str) -> Client:
        """A new device of ``primary``'s account, through the real link flow."""
        offer = await primary.link_device()
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        try:
            client = await stack.enter_async_context(self.open(name, link_code=offer.code))
            await asyncio.wait_for(completing, WAIT)
        finally:
            completing.cancel()
        assert client.user_id == primary.user_id
        return client


@pytest.fixture
def harness(relay: RunningRelay, tmp_path: Path) -> Harness:
    return Harness(relay, tmp_path)


async def _take(client: Client, count: int) -> list[Message]:
    """The next ``count`` messages (each marked done by the loop)."""
    got: list[Message] = []
    async with asyncio.timeout(WAIT):
        async for message in client.messages():
            got.append(message)
            if len(got) == count:
                await message.done()
                break
    return got


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.digest()


def _write_random(path: Path, size: int) -> bytes:
    """A file of ``size`` random bytes written 1 MiB at a time; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as file:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            file.write(block)
            left -= len(block)
    return digest.digest()


def _relay_files(relay_db: Path) -> list[tuple[str, bytes]]:
    return [
        (f"relay{suffix or '-main'}", Path(f"{relay_db}{suffix}").read_bytes())
        for suffix in SUFFIXES
        if Path(f"{relay_db}{suffix}").exists()
    ]


def _blob_count(relay_db: Path) -> int:
    conn = sqlite3.connect(relay_db)
    try:
        (count,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
        return int(count)
    finally:
        conn.close()


async def _stored_blob(relay: RunningRelay, blob_id: bytes) -> bytes:
    blobs = relay.ctx.storage.blobs
    return b"".join([chunk async for chunk in blobs.chunks(blob_id)])


async def _replace_blob(relay: RunningRelay, blob_id: bytes, data: bytes) -> None:
    """Put ``data`` in the relay's storage under ``blob_id`` (same owner and expiry), as
    a relay or someone with its database could."""
    blobs = relay.ctx.storage.blobs
    record = await blobs.get(blob_id, relay.ctx.now_ms())
    assert record is not None
    await blobs.delete(blob_id)
    await blobs.begin(
        blob_id,
        record.owner_user,
        record.owner_device,
        record.created_at_ms,
        record.expires_at_ms,
        1 << 40,
    )
    for index, start in enumerate(range(0, len(data), MAX_BLOB_CHUNK)):
        await blobs.append(blob_id, index, data[start : start + MAX_BLOB_CHUNK], 1 << 40)
    await blobs.complete(blob_id)


@pytest.mark.asyncio
async def test_round_trip_to_two_devices_with_sync_copy_and_only_ciphertext_at_the_relay(
    harness: Harness, relay: RunningRelay, tmp_path: Path
) -> None:
    canary, planted = make_canaries(2, tag="attachment-")
    scanner = CanaryScanner([canary, planted])
    prove_detects(scanner, planted)
    # Two chunks and a bit; the canary at the start, across the first chunk boundary,
    # and at the end.
    noise = os.urandom(2 * ATTACHMENT_CHUNK_SIZE + 1000)
    boundary = ATTACHMENT_CHUNK_SIZE - len(canary) // 2
    plaintext = (
        canary + noise[: boundary - len(canary)] + canary + noise[boundary + len(canary) :] + canary
    )
    source = tmp_path / "photo.jpg"
    source.write_bytes(plaintext)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        alice = await harness.registered(stack, "alice")
        bob = await harness.registered(stack, "bob")
        bob2 = await harness.linked(stack, bob, "bob2")
        alice2 = await harness.linked(stack, alice, "alice2")
        ids = [
            await alice.send_attachment(bob.user_id, source),
            await alice.send_attachment(bob.user_id, empty),
        ]
        assert await alice.pending_outbox() == 0
        for name, device in (("bob", bob), ("bob2", bob2), ("alice2", alice2)):
            got = await _take(device, 2)
            assert [m.client_msg_id for m in got] == ids
            assert all(m.sender_user == alice.user_id for m in got)
            assert all(m.sent_to == (bob.user_id if device is alice2 else None) for m in got)
            assert all(m.body == b"" and m.attachment is not None for m in got)
            first, second = [
                await device.download_attachment(m, out / f"{name}-{i}") for i, m in enumerate(got)
            ]
            assert first.read_bytes() == plaintext, name
            assert second.read_bytes() == b"", name
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f"{n}-{i}" for n in ("bob", "bob2", "alice2") for i in range(2)
        )
        pointer = got[0].attachment
        assert pointer is not None
        assert pointer.plaintext_size == len(plaintext)
        assert pointer.size == attachment_blob_size(len(plaintext))
        assert pointer.key.hex() not in repr(pointer) and pointer.key.hex() not in repr(got[0])
        # The blob lives for the relay's message TTL.
        record = await relay.ctx.storage.blobs.get(pointer.blob_id, relay.ctx.now_ms())
        assert record is not None
        ttl_ms = relay.ctx.settings.message_ttl_seconds * 1000
        assert record.expires_at_ms - record.created_at_ms == ttl_ms
        # The relay's files hold the blob (so the scan can see it) but only as ciphertext.
        blob = await _stored_blob(relay, pointer.blob_id)
        assert hashlib.sha256(blob).digest() == pointer.digest
        files = _relay_files(tmp_path / "relay.db")
        assert any(blob[:64] in data for _, data in files)
        hits = [h for h in scanner.scan_all(files) if h.canary == canary]
        assert hits == [], hits
    files = _relay_files(tmp_path / "relay.db")  # after the clients closed
    assert [h for h in scanner.scan_all(files) if h.canary == canary] == []


@pytest.mark.asyncio
async def test_50_mib_round_trip_memory_is_bounded_in_the_sdk_and_the_relay(
    harness: Harness, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    expected = _write_random(source, BIG_SIZE)
    dest = tmp_path / "big.out"
    async with contextlib.AsyncExitStack() as stack:
        alice = await harness.registered(stack, "alice")
        bob = await harness.registered(stack, "bob")
        await alice.send(bob.user_id, "sessions first")  # the handshake is not measured
        (hello,) = await _take(bob, 1)
        assert hello.body == "sessions first"
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            msg_id = await alice.send_attachment(bob.user_id, source)
            _, upload_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            (message,) = await _take(bob, 1)
            await bob.download_attachment(message, dest)
            _, download_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert message.client_msg_id == msg_id
    assert _sha256_file(dest) == expected
    peaks = f"upload {upload_peak / 2**20:.1f} MiB, download {download_peak / 2**20:.1f} MiB"
    assert upload_peak <= MEMORY_BOUND and download_peak <= MEMORY_BOUND, peaks
    # The measurement sees the relay: it holds a whole storage row (1 MiB) at a time,
    # which the SDK never does (64 KiB chunks, reads of at most 256 KiB).
    assert upload_peak >= MAX_BLOB_CHUNK and download_peak >= MAX_BLOB_CHUNK, peaks


@pytest.mark.asyncio
async def test_tampered_blobs_are_refused_and_leave_nothing(
    harness: Harness, relay: RunningRelay, tmp_path: Path
) -> None:
    plaintext = os.urandom(3 * ATTACHMENT_CHUNK_SIZE + 1000)  # 3 full chunks + a short final
    source = tmp_path / "doc.pdf"
    source.write_bytes(plaintext)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "doc.pdf"
    async with contextlib.AsyncExitStack() as stack:
        alice = await harness.registered(stack, "alice")
        bob = await harness.registered(stack, "bob")
        await alice.send_attachment(bob.user_id, source)
        (message,) = await _take(bob, 1)
        pointer = message.attachment
        assert pointer is not None
        original = await _stored_blob(relay, pointer.blob_id)
        h, c = ATTACHMENT_HEADER_SIZE, ATTACHMENT_CIPHERTEXT_CHUNK_SIZE
        header, chunks = original[:h], [original[h + i * c : h + (i + 1) * c] for i in range(4)]
        assert len(chunks[3]) == 1000 + 17 and b"".join([header, *chunks]) == original

        cases: dict[str, bytes] = {
            f"truncated at {cut}": original[:cut] for cut in (0, 10, h, h + c, h + 2 * c, h + 3 * c)
        }
        cases["truncated inside the final chunk"] = original[:-1]
        cases["chunks 1 and 2 swapped"] = header + chunks[1] + chunks[0] + chunks[2] + chunks[3]
        cases["final chunk moved up"] = header + chunks[0] + chunks[1] + chunks[3] + chunks[2]
        cases["final chunk appended again"] = original + chunks[3]
        cases["a full chunk appended"] = original + chunks[0]
        cases["one byte appended"] = original + b"\x00"
        cases["a chunk modified"] = original[:100] + bytes([original[100] ^ 1]) + original[101:]

        async def refused(target: Message | AttachmentPointer, what: str) -> None:
            dest.write_bytes(b"previous content")
            with pytest.raises(AttachmentCorrupt) as caught:
                await bob.download_attachment(target, dest)
            assert isinstance(caught.value.__cause__, CoreAttachmentCorrupt), what
            assert dest.read_bytes() == b"previous content", what
            assert [p.name for p in out.iterdir()] == ["doc.pdf"], what

        for what, data in cases.items():
            await _replace_blob(relay, pointer.blob_id, data)
            await refused(message, what)
        await _replace_blob(relay, pointer.blob_id, original)
        flipped = bytes([pointer.digest[0] ^ 1]) + pointer.digest[1:]
        await refused(
            AttachmentPointer(pointer.blob_id, pointer.key, flipped, pointer.size), "digest"
        )
        await refused(
            AttachmentPointer(pointer.blob_id, os.urandom(32), pointer.digest, pointer.size), "key"
        )
        # The untampered blob still downloads (the refusals were about the tampering).
        assert await bob.download_attachment(message, dest) == dest
        assert dest.read_bytes() == plaintext
        assert [p.name for p in out.iterdir()] == ["doc.pdf"]
        # A blob the relay no longer holds.
        await relay.ctx.storage.blobs.delete(pointer.blob_id)
        dest.write_bytes(b"previous content")
        with pytest.raises(BlobNotFound):
            await bob.download_attachment(message, dest)
        assert dest.read_bytes() == b"previous content"
        assert [p.name for p in out.iterdir()] == ["doc.pdf"]
        with pytest.raises(AttachmentFileError):  # no such directory: nothing downloaded
            await bob.download_attachment(message, out / "missing" / "doc.pdf")


@pytest.mark.asyncio
async def test_idempotent_sends_and_no_blob_left_by_failures(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay_db = tmp_path / "relay.db"
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(1000))
    async with contextlib.AsyncExitStack() as stack:
        alice = await harness.registered(stack, "alice")
        bob = await harness.registered(stack, "bob")
        carol = await harness.registered(stack, "carol")
        msg_id = secrets.token_bytes(16)
        assert await alice.send_attachment(bob.user_id, source, client_msg_id=msg_id) == msg_id
        assert _blob_count(relay_db) == 1
        # Again with the same id (an app retrying after a crash): nothing new.
        assert await alice.send_attachment(bob.user_id, source, client_msg_id=msg_id) == msg_id
        assert _blob_count(relay_db) == 1
        with pytest.raises(UsageError):  # the id names a message to another user
            await alice.send_attachment(carol.user_id, source, client_msg_id=msg_id)
        text_id = await alice.send(bob.user_id, "text")
        with pytest.raises(UsageError):  # the id names a text message
            await alice.send_attachment(bob.user_id, source, client_msg_id=text_id)
        (got, text) = await _take(bob, 2)
        assert got.client_msg_id == msg_id and got.attachment is not None
        assert text.body == "text"
        # Refused before anything is uploaded.
        with pytest.raises(UnknownUser):
            await alice.send_attachment(f"nobody-{secrets.token_hex(4)}", source)
        with pytest.raises(UsageError):
            await alice.send_attachment(bob.user_id, tmp_path)  # a directory
        with pytest.raises(AttachmentFileError):
            await alice.send_attachment(bob.user_id, tmp_path / "missing.bin")
        assert _blob_count(relay_db) == 1

        # A send that fails before its commit deletes the blob it uploaded.
        async def failing(
            self: SendingMixin, user_id: str, kind: PayloadType, body: object, cid: bytes | None
        ) -> bytes:
            assert kind is PayloadType.ATTACHMENT and isinstance(body, AttachmentRef)
            assert _blob_count(relay_db) == 2  # uploaded
            raise ConnectionFailed("the relay went away")

        monkeypatch.setattr(SendingMixin, "_send_body", failing)
        with pytest.raises(TransportError):
            await alice.send_attachment(bob.user_id, source)
        assert _blob_count(relay_db) == 1


class _Source:
    """An upload body of ``size`` random bytes in 64 KiB pieces that counts the pieces
    taken from it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = 0

    async def pieces(self) -> AsyncIterator[bytes]:
        for start in range(0, self.size, ATTACHMENT_CHUNK_SIZE):
            self.taken += 1
            yield os.urandom(min(ATTACHMENT_CHUNK_SIZE, self.size - start))


@pytest.mark.asyncio
async def test_refused_uploads_stop_and_leave_no_blob(tmp_path: Path) -> None:
    quota = 3 * MAX_BLOB_CHUNK // 2
    relay_db = tmp_path / "relay.db"
    settings = relay_settings(
        tmp_path, database_url=f"sqlite:///{relay_db}", blob_quota_bytes=quota
    )
    async with running_relay(settings) as relay, contextlib.AsyncExitStack() as stack:
        alice = await Harness(relay, tmp_path).registered(stack, "alice")
        endpoint = alice._blob_endpoint()
        # Refusals that come before the body (Expect: 100-continue): nothing is sent.
        for what, target, length, error in (
            (
                "another origin",
                dataclasses.replace(endpoint, origin="wss://other.test"),
                10,
                AuthFailed,
            ),
            ("above the maximum", endpoint, MAX_BLOB_SIZE + 1, TooLarge),
        ):
            source = _Source(length)
            with pytest.raises(error):
                await put_blob(target, source.pieces(), length)
            assert source.taken == 0, what
        # The quota, refused mid-upload: the upload stops and the relay keeps nothing.
        size = 32 * MAX_BLOB_CHUNK
        source = _Source(size)
        with pytest.raises(TooLarge):
            await put_blob(endpoint, source.pieces(), size)
        assert 0 < source.taken < size // ATTACHMENT_CHUNK_SIZE
        assert _blob_count(relay_db) == 0
        # Within the quota.
        source = _Source(MAX_BLOB_CHUNK + 5)
        stored = await put_blob(endpoint, source.pieces(), MAX_BLOB_CHUNK + 5)
        assert stored.size == MAX_BLOB_CHUNK + 5 and _blob_count(relay_db) == 1


@pytest.mark.asyncio
async def test_over_tls_the_statement_names_the_relays_key_and_the_pin_is_checked(
    tmp_path: Path,
) -> None:
    cert, key, der = _self_signed(tmp_path, "relay")
    _, _, other_der = _self_signed(tmp_path, "other")
    context = ssl.create_default_context(cafile=str(cert))
    pin = spki_sha256(der)
    settings = relay_settings(
        tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}", tls_cert=cert, tls_key=key
    )
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(ATTACHMENT_CHUNK_SIZE + 1))
    async with running_relay(settings) as relay, contextlib.AsyncExitStack() as stack:

        def open_client(name: str, spki: bytes) -> contextlib.AbstractAsyncContextManager[Client]:
            return Client.open(
                f"wss://127.0.0.1:{relay.port}",
                store=tmp_path / f"{name}.db",
                key=bytes(32),
                pin=spki,
                ssl=context,
                origin=ORIGIN,
            )

        alice = await stack.enter_async_context(open_client("alice", pin))
        bob = await stack.enter_async_context(open_client("bob", pin))
        await alice.register(f"alice-{secrets.token_hex(4)}")
        await bob.register(f"bob-{secrets.token_hex(4)}")
        await alice.send_attachment(bob.user_id, source)
        (message,) = await _take(bob, 1)
        dest = await bob.download_attachment(message, tmp_path / "a.out")
        assert dest.read_bytes() == source.read_bytes()
        # A wrong pin: refused on the handshake, before any statement is signed.
        endpoint = dataclasses.replace(bob._blob_endpoint(), spki_pin=spki_sha256(other_der))
        with pytest.raises(PinMismatch):
            await put_blob(endpoint, _Source(10).pieces(), 10)
