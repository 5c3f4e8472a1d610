"""The SDK's Client end to end (issue 4 "API"): real relay (uvicorn on 127.0.0.1, a
SQLite database file), real WebSockets, real encrypted SQLite stores."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from client_sdk._client.records import InboxRecord
from client_sdk._client.sending import SEND_RECONNECTS
from client_sdk.client import Client, Message
from client_sdk.errors import (
    ConnectionFailed,
    Disconnected,
    MessageQueued,
    StoreCorrupt,
    UsageError,
)
from client_sdk.store import Table
from client_sdk.transport import Delivery, DeviceIdentity, RelayConnection
from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.payload import Payload
from e2ee.session import decrypt
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 20.0
"""Bound for anything a test waits for."""


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


class Harness:
    """Opens clients on one relay, each with its own store file and raw key."""

    def __init__(self, relay: RunningRelay, tmp_path: Path) -> None:
        self.url = f"ws://127.0.0.1:{relay.port}"
        self.tmp_path = tmp_path
        self.keys: dict[str, bytes] = {}

    def open(self, name: str) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        return Client.open(self.url, store=self.tmp_path / f"{name}.db", key=key, origin=ORIGIN)


@pytest.fixture
def harness(relay: RunningRelay, tmp_path: Path) -> Harness:
    return Harness(relay, tmp_path)


def NOW_MS() -> int:
    return time.time_ns() // 1_000_000


def _uid(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


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


async def _prekeys_left(relay: RunningRelay, user_id: str, device_id: int) -> tuple[int, int]:
    status = await relay.ctx.storage.prekeys.status(user_id, device_id)
    return status.one_time_left, status.kem_left


async def _sessions(client: Client) -> int:
    async with client._store.transaction() as tx:
        return await tx.count(Table.SESSIONS)


@pytest.mark.asyncio
async def test_conversation_both_ways_and_restore(harness: Harness, relay: RunningRelay) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        registered = [alice.is_registered]
        await alice.register(alice_id)
        await bob.register(bob_id)
        registered.append(alice.is_registered)
        assert registered == [False, True] and alice.user_id == alice_id
        keys = await _prekeys_left(relay, bob_id, bob.device_id)
        assert keys == (100, 100)
        bodies: list[str | bytes] = ["hello bob", b"\x00\x01binary", "third"]
        ids = [await alice.send(bob_id, body) for body in bodies]
        assert await alice.pending_outbox() == 0
        got = await _take(bob, 3)
        assert [m.body for m in got] == bodies
        assert [m.client_msg_id for m in got] == ids
        assert {(m.sender_user, m.sender_device) for m in got} == {(alice_id, alice.device_id)}
        assert all(m.sent_to is None and m.sender_ts_ms > 0 for m in got)
        seqs = [m.relay_seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] > 0
        # bob replies on the session alice started
        await bob.send(alice_id, "hi alice")
        (reply,) = await _take(alice, 1)
        assert (reply.body, reply.sender_user, reply.sender_device) == (
            "hi alice",
            bob_id,
            bob.device_id,
        )
        bob_device = bob.device_id
    keys_after = await _prekeys_left(relay, bob_id, bob_device)
    assert keys_after == (99, 99)  # alice claimed one of each: one session only
    # reopening restores the identity and the sessions (no new bundle is claimed)
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        assert bob.is_registered and (bob.user_id, bob.device_id) == (bob_id, bob_device)
        with pytest.raises(UsageError):
            await bob.register(bob_id)
        sessions = await _sessions(bob)
        await alice.send(bob_id, "after the restart")
        (again,) = await _take(bob, 1)
        assert again.body == "after the restart"
        assert await _sessions(bob) == sessions
    assert await _prekeys_left(relay, bob_id, bob_device) == (99, 99)


@pytest.mark.asyncio
async def test_not_done_messages_come_back_after_reopen(harness: Harness) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        for body in ("one", "two"):
            await alice.send(bob_id, body)
        async with asyncio.timeout(WAIT):
            async for message in bob.messages():
                assert message.body == "one"
                break  # leaving the loop: "one" is not done
    async with harness.open("bob") as bob:
        got = await _take(bob, 2)
        assert [m.body for m in got] == ["one", "two"]
    async with harness.open("bob") as bob, bob._store.transaction() as tx:
        assert await tx.count(Table.INBOX) == 0


@pytest.mark.asyncio
async def test_crash_between_outbox_commit_and_send(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        await bob.connect()
        original = RelayConnection.send
        frames: list[Any] = []

        async def crash(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
            frames.append(addressed)
            raise ConnectionFailed("simulated crash after the outbox commit")

        monkeypatch.setattr(RelayConnection, "send", crash)
        with pytest.raises(MessageQueued) as queued:
            await alice.send(bob_id, "survives the crash")
        assert isinstance(queued.value.__cause__, ConnectionFailed)
        assert await alice.pending_outbox() == 1
        monkeypatch.setattr(RelayConnection, "send", original)
    sent: list[Any] = []

    async def spy(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
        sent.append(addressed)
        return await original(self, msg_id, addressed)

    monkeypatch.setattr(RelayConnection, "send", spy)
    async with harness.open("alice") as alice:
        await alice.connect()  # resends the stored frame
        assert await alice.pending_outbox() == 0
        # send tried 1 + SEND_RECONNECTS times, then the reopened client once: always
        # the same ciphertext bytes, never a re-encryption
        assert len(frames) == 1 + SEND_RECONNECTS
        assert sent == frames[:1] and all(f == frames[0] for f in frames)
        await alice.send(bob_id, "next")
    async with harness.open("bob") as bob:
        # the relay holds exactly the two messages: the resend was stored once
        assert await relay.ctx.storage.messages.depth(bob_id, bob.device_id) == 2
        got = await _take(bob, 2)
        assert [m.body for m in got] == ["survives the crash", "next"]
        await _until_acked(relay, bob_id, bob.device_id)


async def _until_acked(relay: RunningRelay, user_id: str, device_id: int) -> None:
    """Poll (bounded) until the relay holds nothing more for the device."""
    async with asyncio.timeout(WAIT):
        while await relay.ctx.storage.messages.depth(user_id, device_id):
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_relay_database_never_holds_plaintext(
    harness: Harness, relay: RunningRelay, tmp_path: Path
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    canaries = [f"canary-{secrets.token_hex(8)}" for _ in range(3)]
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        for canary in canaries:
            await alice.send(bob_id, canary)
        await bob.connect()
        # while queued on the relay
        files = [p for p in tmp_path.iterdir() if p.name.startswith("relay.db")]
        assert files
        blob = b"".join(p.read_bytes() for p in files)
        assert alice_id.encode() in blob  # the scanner finds what is there
        for canary in canaries:
            assert canary.encode() not in blob
        got = await _take(bob, 3)
        assert [m.body for m in got] == canaries


@pytest.mark.asyncio
async def test_mismatch_readdresses_only_the_new_device(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob gains a second device after alice cached his list: the relay answers
    Mismatch; alice refreshes the list, keeps the ciphertext bytes for bob's first
    device, encrypts only for the new one, and both devices decrypt the message."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        await alice.send(bob_id, "first")
        (first,) = await _take(bob, 1)
        assert first.body == "first"
        # bob adds a device by hand (linking is not built yet): list v2 signed by his
        # master key, the new device's prekeys uploaded on its own connection
        master = bob._master
        assert master is not None
        own = await bob._stored_list(bob_id)
        assert own is not None
        second = OurDevice.generate(bob_id, bob.device_id ^ 1, master.public_key, now_ms=NOW_MS())
        second_prekeys = OurPreKeys()
        v2 = own.successor(
            master,
            tuple(sorted((*own.statement.devices, second.entry()), key=lambda d: d.device_id)),
            NOW_MS(),
        )
        conn = await bob._connection()
        await conn.put_device_list(v2.to_bytes())
        identity = DeviceIdentity(bob_id, second.device_id, second.signing)
        async with await RelayConnection.connect(
            harness.url + "/v1/ws", origin=ORIGIN, identity=identity
        ) as second_conn:
            now = NOW_MS()
            await second_conn.upload_prekeys(
                signed_prekey=second_prekeys.rotate_signed_prekey(second, now),
                one_time=second_prekeys.one_time_batch(second, now, count=5),
                kem=second_prekeys.one_time_batch(second, now, kem=True, count=5),
                last_resort=second_prekeys.rotate_last_resort(second, now),
            )
            original = RelayConnection.send
            attempts: list[Any] = []

            async def spy(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
                result = await original(self, msg_id, addressed)
                attempts.append((addressed, result))
                return result

            monkeypatch.setattr(RelayConnection, "send", spy)
            await alice.send(bob_id, "to both devices")
            monkeypatch.setattr(RelayConnection, "send", original)
            assert [type(r).__name__ for _, r in attempts] == ["Mismatch", "Accepted"]
            before, after = (dict(dict(a)[bob_id]) for a, _ in attempts)
            assert set(before) == {bob.device_id}
            assert set(after) == {bob.device_id, second.device_id}
            assert after[bob.device_id] == before[bob.device_id]  # same bytes, not re-encrypted
            (message,) = await _take(bob, 1)
            assert message.body == "to both devices"
            delivery = None
            async with asyncio.timeout(WAIT):
                async for event in second_conn.events():
                    if isinstance(event, Delivery):
                        delivery = event
                        break
            assert delivery is not None
            alice_list = await bob._stored_list(alice_id)
            assert alice_list is not None
            sender = alice_list.statement.peer(alice.device_id)
            result = decrypt(second, second_prekeys, None, sender, delivery.ciphertext, NOW_MS())
            payload = Payload.from_bytes(result.plaintext, from_own_device=False)
            assert payload.body == "to both devices"
            assert payload.client_msg_id == message.client_msg_id


@pytest.mark.asyncio
async def test_redelivery_after_commit_without_ack_is_not_shown_twice(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        await alice.send(bob_id, "once")
        original = RelayConnection.ack
        skipped: list[int] = []

        async def lost_ack(self: RelayConnection, seqs: Any) -> None:
            skipped.extend(seqs)  # the process "dies" before the ack leaves

        monkeypatch.setattr(RelayConnection, "ack", lost_ack)
        (got,) = await _take(bob, 1)
        assert got.body == "once" and skipped
        monkeypatch.setattr(RelayConnection, "ack", original)
        bob_device = bob.device_id
    assert await relay.ctx.storage.messages.depth(bob_id, bob_device) == 1
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.send(bob_id, "twice?")
        (next_message,) = await _take(bob, 1)
        assert next_message.body == "twice?"  # the redelivered "once" was dropped
        await _until_acked(relay, bob_id, bob_device)
        # a redelivery under a sequence number bob processed: no security event
        assert [item async for item in bob.events(wait=False)] == []


@pytest.mark.asyncio
async def test_a_second_delivery_of_one_outbox_entry_waits_for_the_first(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        await alice.connect()
        original = RelayConnection.send
        reached, release = asyncio.Event(), asyncio.Event()
        frames: list[bytes] = []

        async def gated(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
            frames.append(msg_id)
            reached.set()
            await release.wait()
            return await original(self, msg_id, addressed)

        monkeypatch.setattr(RelayConnection, "send", gated)
        sending = asyncio.create_task(alice.send(bob_id, "once"))
        await asyncio.wait_for(reached.wait(), WAIT)
        flushing = asyncio.create_task(alice.connect())  # flushes the same outbox entry
        await asyncio.sleep(0)
        for _ in range(20):  # the flush waits for the delivery in flight...
            await asyncio.sleep(0.005)
            assert not flushing.done() and not sending.done()
        release.set()
        msg_id = await asyncio.wait_for(sending, WAIT)
        await asyncio.wait_for(flushing, WAIT)
        assert frames == [msg_id]  # ...and never sends it a second time
        assert await alice.pending_outbox() == 0
        assert [m.body for m in await _take(bob, 1)] == ["once"]


@pytest.mark.asyncio
async def test_send_reconnects_when_the_connection_fails_under_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        original = RelayConnection.send
        failures: list[int] = []

        async def lost_once(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
            if not failures:
                failures.append(1)
                await self.close()
                raise Disconnected(1006, "lost under a send")
            return await original(self, msg_id, addressed)

        monkeypatch.setattr(RelayConnection, "send", lost_once)
        msg_id = await asyncio.wait_for(alice.send(bob_id, "despite the drop"), WAIT)
        assert failures == [1] and await alice.pending_outbox() == 0
        (got,) = await _take(bob, 1)
        assert (got.body, got.client_msg_id) == ("despite the drop", msg_id)


@pytest.mark.asyncio
async def test_an_app_chosen_message_id_makes_send_idempotent(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``send(..., client_msg_id=...)``: the app stores the id before sending; calling
    again with it (after a crash or an error) never makes a second message."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        first = secrets.token_bytes(16)
        assert await alice.send(bob_id, "once", client_msg_id=first) == first
        # accepted already: answered from memory, nothing sent again
        sends: list[bytes] = []
        original = RelayConnection.send

        async def counting(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
            sends.append(msg_id)
            return await original(self, msg_id, addressed)

        monkeypatch.setattr(RelayConnection, "send", counting)
        assert await alice.send(bob_id, "once", client_msg_id=first) == first
        assert sends == []
        # the same id for another body or another user is the app's mistake
        with pytest.raises(UsageError, match="another message"):
            await alice.send(bob_id, "twice", client_msg_id=first)
        with pytest.raises(UsageError, match="another message"):
            await alice.send(alice_id, "once", client_msg_id=first)
        for bad in (b"short", bytes(16), "x" * 16):
            with pytest.raises(UsageError):
                await alice.send(bob_id, "once", client_msg_id=bad)  # type: ignore[arg-type]
        # committed, then the relay could not be reached: the retry with the same id
        # delivers the committed message (the outbox entry), not a new one
        second = secrets.token_bytes(16)
        deliver = type(alice)._deliver_reconnecting

        async def unreachable(self: Client, conn: Any, key: bytes, record: Any) -> None:
            raise ConnectionFailed("the relay is down")

        monkeypatch.setattr(type(alice), "_deliver_reconnecting", unreachable)
        with pytest.raises(MessageQueued) as queued:
            await alice.send(bob_id, "after a crash", client_msg_id=second)
        assert queued.value.client_msg_id == second
        assert await alice.pending_outbox() == 1
        monkeypatch.setattr(type(alice), "_deliver_reconnecting", deliver)
        assert await alice.send(bob_id, "after a crash", client_msg_id=second) == second
        assert await alice.pending_outbox() == 0
        assert sends == [second]
        got = await _take(bob, 2)
        assert [(m.body, m.client_msg_id) for m in got] == [
            ("once", first),
            ("after a crash", second),
        ]
        # two concurrent calls with one id: one commits, the other rolls back and
        # answers with the committed message
        third = secrets.token_bytes(16)
        both = await asyncio.gather(
            alice.send(bob_id, "at once", client_msg_id=third),
            alice.send(bob_id, "at once", client_msg_id=third),
        )
        assert both == [third, third]
        assert sends == [second, third]
        # without an id the SDK picks a fresh random one each time
        a, b = await alice.send(bob_id, "x"), await alice.send(bob_id, "x")
        assert a != b and len(a) == 16
        got = await _take(bob, 3)
        assert [(m.body, m.client_msg_id) for m in got] == [("at once", third), ("x", a), ("x", b)]


def test_an_inbox_record_of_an_older_version_has_no_relay_sequence() -> None:
    record = InboxRecord("alice", 7, b"payload", 1_700_000_000_000, 42)
    assert InboxRecord.from_bytes(record.to_bytes()) == record
    older = cbor.encode({0: 1, 1: "alice", 2: 7, 3: b"payload", 4: 1_700_000_000_000})
    assert InboxRecord.from_bytes(older).relay_seq == 0
    with pytest.raises(StoreCorrupt):
        InboxRecord.from_bytes(cbor.encode({0: 1, 1: "alice", 2: 7, 3: b"p", 4: 1, 5: -1}))
