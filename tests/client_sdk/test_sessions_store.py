"""Session records with skipped message keys as rows of their own
(``client_sdk/_client/sessions.py``), on the in-memory store and real core sessions."""

from __future__ import annotations

import secrets

import pytest

from client_sdk._client import sessions
from client_sdk.errors import StoreCorrupt, UsageError
from client_sdk.store import MemoryStore, Table
from e2ee import cbor
from e2ee.errors import MessageKeyUnavailable
from e2ee.session import SessionRecord, decrypt, start_session
from tests.e2ee.helpers import NOW, TestUser, make_user

LOOKUP = b"L" * 32


class Conversation:
    """Alice sends; Bob's record goes through the store after every decrypt."""

    def __init__(self) -> None:
        self.alice: TestUser = make_user("alice", seed=70)
        self.bob: TestUser = make_user("bob", seed=71)
        self.a = start_session(
            self.alice.devices[0].device, self.bob.peer(), self.bob.devices[0].bundle(), None, NOW
        )
        self.store = MemoryStore(origin="wss://relay.test", key=secrets.token_bytes(32))

    async def deliver(self, envelope: bytes) -> bytes:
        b = self.bob.devices[0]
        async with self.store.transaction() as tx:
            loaded = await sessions.load(tx, LOOKUP, skipped=True)
            result = decrypt(b.device, b.prekeys, loaded.record, self.alice.peer(), envelope, NOW)
            result.commit_prekeys(b.prekeys)
            await loaded.save(tx, result.record)
        return result.plaintext

    async def rows(self) -> int:
        async with self.store.transaction() as tx:
            return await tx.count(Table.SKIPPED_KEYS)

    async def blob(self) -> SessionRecord:
        async with self.store.transaction() as tx:
            data = await tx.get(Table.SESSIONS, LOOKUP)
        assert data is not None
        return SessionRecord.from_bytes(data)


@pytest.mark.asyncio
async def test_skipped_keys_live_in_rows_and_survive_reloads() -> None:
    conv = Conversation()
    sent = [conv.a.encrypt(f"m{i}".encode(), NOW) for i in range(10)]
    assert await conv.deliver(sent[0]) == b"m0"
    assert await conv.deliver(sent[9]) == b"m9"  # skips m1..m8
    assert await conv.rows() == 8
    assert all(not s.ratchet.skipped for s in (await conv.blob()).sessions)
    # each late message is found through its row, which is then deleted
    for i in (5, 1, 8):
        assert await conv.deliver(sent[i]) == f"m{i}".encode()
    assert await conv.rows() == 5
    # a used key is gone for good: the same counter with other bytes is unavailable
    with pytest.raises(MessageKeyUnavailable):
        tampered = bytearray(sent[5])
        tampered[-1] ^= 1
        await conv.deliver(bytes(tampered))
    assert await conv.rows() == 5  # the failed decrypt changed nothing
    for i in (2, 3, 4, 6, 7):
        assert await conv.deliver(sent[i]) == f"m{i}".encode()
    assert await conv.rows() == 0


@pytest.mark.asyncio
async def test_order_of_eviction_survives_a_reload() -> None:
    conv = Conversation()
    sent = [conv.a.encrypt(f"m{i}".encode(), NOW) for i in range(6)]
    await conv.deliver(sent[0])
    await conv.deliver(sent[3])  # skipped m1, m2 (positions 0, 1)
    await conv.deliver(sent[5])  # skipped m4 (position 2)
    async with conv.store.transaction() as tx:
        loaded = await sessions.load(tx, LOOKUP, skipped=True)
    assert loaded.record is not None
    order = list(loaded.record.active.ratchet.skipped) if loaded.record.active else []
    assert [n for _, n in order] == [1, 2, 4]


@pytest.mark.asyncio
async def test_a_record_loaded_without_skipped_keys_keeps_them() -> None:
    conv = Conversation()
    sent = [conv.a.encrypt(b"x", NOW) for _ in range(4)]
    await conv.deliver(sent[0])
    await conv.deliver(sent[3])
    assert await conv.rows() == 2
    async with conv.store.transaction() as tx:  # a send path: no skipped keys needed
        loaded = await sessions.load(tx, LOOKUP, skipped=False)
        assert loaded.record is not None
        await loaded.save(tx, loaded.record)
    assert await conv.rows() == 2
    assert await conv.deliver(sent[1]) == b"x"
    # a decrypt on a record loaded without its skipped keys cannot be saved
    async with conv.store.transaction() as tx:
        loaded = await sessions.load(tx, LOOKUP, skipped=False)
        assert loaded.record is not None and loaded.record.active is not None
        loaded.record.active.ratchet.skipped[(b"k" * 32, 1)] = (b"m" * 32, NOW)
        with pytest.raises(UsageError):
            await loaded.save(tx, loaded.record)


@pytest.mark.asyncio
async def test_inline_skipped_keys_of_an_older_record_move_to_rows() -> None:
    conv = Conversation()
    sent = [conv.a.encrypt(b"y", NOW) for _ in range(3)]
    b = conv.bob.devices[0]
    first = decrypt(b.device, b.prekeys, None, conv.alice.peer(), sent[0], NOW)
    first.commit_prekeys(b.prekeys)
    after = decrypt(b.device, b.prekeys, first.record, conv.alice.peer(), sent[2], NOW)
    async with conv.store.transaction() as tx:  # as the SDK stored it before rows
        await tx.put(Table.SESSIONS, LOOKUP, after.record.to_bytes())
    async with conv.store.transaction() as tx:
        loaded = await sessions.load(tx, LOOKUP, skipped=False)
        assert loaded.with_skipped  # upgraded: the inline key is kept
        assert loaded.record is not None
        await loaded.save(tx, loaded.record)
    assert await conv.rows() == 1
    assert await conv.deliver(sent[1]) == b"y"
    assert await conv.rows() == 0


@pytest.mark.asyncio
async def test_rows_of_an_evicted_or_deleted_session_go() -> None:
    conv = Conversation()
    sent = [conv.a.encrypt(b"z", NOW) for _ in range(3)]
    await conv.deliver(sent[0])
    await conv.deliver(sent[2])
    assert await conv.rows() == 1
    async with conv.store.transaction() as tx:
        loaded = await sessions.load(tx, LOOKUP, skipped=False)
        assert loaded.record is not None
        loaded.record.sessions.clear()  # as if evicted by newer sessions
        await loaded.save(tx, loaded.record)
    assert await conv.rows() == 0
    async with conv.store.transaction() as tx:
        await sessions.delete_all(tx, LOOKUP)
        assert await tx.get(Table.SESSIONS, LOOKUP) is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "key_suffix, value",
    [
        (b"short", cbor.encode({0: 1, 1: b"m" * 32, 2: NOW, 3: 0})),
        (b"B" * 32 + b"R" * 32 + b"\x00\x00\x00\x01", b"not cbor"),
        (b"B" * 32 + b"R" * 32 + b"\x00\x00\x00\x01", cbor.encode({0: 9, 1: b"m", 2: 1, 3: 0})),
        # a well-formed row naming a session the record does not hold
        (b"B" * 32 + b"R" * 32 + b"\x00\x00\x00\x01", cbor.encode({0: 1, 1: b"m", 2: 1, 3: 0})),
    ],
)
async def test_corrupt_rows_are_refused(key_suffix: bytes, value: bytes) -> None:
    conv = Conversation()
    await conv.deliver(conv.a.encrypt(b"v", NOW))
    async with conv.store.transaction() as tx:
        await tx.put(Table.SKIPPED_KEYS, LOOKUP + key_suffix, value)
    async with conv.store.transaction() as tx:
        with pytest.raises(StoreCorrupt):
            await sessions.load(tx, LOOKUP, skipped=True)
