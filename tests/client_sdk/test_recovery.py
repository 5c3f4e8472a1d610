"""Recovery (issue 4 "Recovery", docs/sdk.md "Recovery"): retry requests, resends on a
new session, the retry-request rules, missing messages and ``reset_session``, through a
real relay (uvicorn on 127.0.0.1, a SQLite database file), real WebSockets and real
encrypted SQLite stores; clocks are injected."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from client_sdk._client.records import (
    PeerRecoveryRecord,
    ResendJobRecord,
    ResetRecord,
    RetryJobRecord,
    SentCopyRecord,
    SentMessageRecord,
)
from client_sdk._client.recovery import UNKNOWN_MSG_ID, RecoveryMixin, failed_header
from client_sdk.client import Client
from client_sdk.errors import NoPreKeys, SessionResetTooSoon, StoreCorrupt, UsageError
from client_sdk.events import (
    MessagesMissing,
    ReplayDropped,
    RetryRequestDropped,
    SecurityEvent,
    Undecryptable,
    decode_event,
)
from client_sdk.store import Table
from client_sdk.transport import Delivery, DeviceIdentity, RelayConnection
from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.envelope import EnvelopeType, MessageEnvelope, envelope_type
from e2ee.keys import DHKeyPair
from e2ee.payload import DeviceListNotice, Payload, PayloadType, RetryRequest
from e2ee.relay_frames import Accepted, ErrorCode
from e2ee.session import SessionRecord, decrypt
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 30.0
"""Bound for anything a test waits for."""
HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """Real time plus an offset a test moves (milliseconds)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.offset_ms


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


class Harness:
    """Opens clients on one relay, each with its own store file, raw key and clock."""

    def __init__(self, relay: RunningRelay, tmp_path: Path) -> None:
        self.relay = relay
        self.url = f"ws://127.0.0.1:{relay.port}"
        self.tmp_path = tmp_path
        self.keys: dict[str, bytes] = {}
        self.clocks: dict[str, Clock] = {}

    def clock(self, name: str) -> Clock:
        return self.clocks.setdefault(name, Clock())

    def open(self, name: str) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        return Client.open(
            self.url,
            store=self.tmp_path / f"{name}.db",
            key=key,
            origin=ORIGIN,
            clock=self.clock(name),
        )


@pytest.fixture
def harness(relay: RunningRelay, tmp_path: Path) -> Harness:
    return Harness(relay, tmp_path)


def _uid(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (bounded by ``WAIT``) until it holds."""
    try:
        async with asyncio.timeout(WAIT):
            while not await check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Pump:
    """A client's ``messages()`` loop in the background, recording what it yields."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.got: list[tuple[str, str | bytes, bytes]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.client.messages():
            self.got.append((message.sender_user, message.body, message.client_msg_id))

    def bodies(self) -> list[str | bytes]:
        return [body for _, body, _ in self.got]

    async def wait(self, count: int) -> None:
        async def enough() -> bool:
            if self.task.done():
                self.task.result()  # re-raise what ended the loop
            return len(self.got) >= count

        await _until(enough, f"{count} messages")

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Frames:
    """Every ``Send`` the clients hand to the relay, with the connection it went on;
    ``corrupt`` flips the last byte of the next ciphertext to that device."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[RelayConnection, Any]] = []
        self.corrupt: tuple[str, int] | None = None
        self.suppress: tuple[str, int] | None = None
        """Answer the next send to that device ``Accepted`` without sending it."""
        self.held: list[tuple[bytes, Any]] = []
        """The frames answered without sending (``release`` sends them)."""
        original = self.original = RelayConnection.send
        frames = self

        async def spy(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
            addressed = [(u, list(devices)) for u, devices in addressed]
            for target, action in ((frames.corrupt, "corrupt"), (frames.suppress, "suppress")):
                if target is None:
                    continue
                for user, devices in addressed:
                    for i, (device, ct) in enumerate(devices):
                        if (user, device) != target:
                            continue
                        if action == "suppress":
                            frames.suppress = None
                            frames.held.append((msg_id, addressed))
                            return Accepted(msg_id, now_ms())
                        devices[i] = (device, ct[:-1] + bytes([ct[-1] ^ 0x01]))
                        frames.corrupt = None
            frames.sent.append((self, addressed))
            return await original(self, msg_id, addressed)

        monkeypatch.setattr(RelayConnection, "send", spy)

    async def release(self, client: Client) -> None:
        """Send the held frames now, on ``client``'s connection."""
        conn = await client._connection()
        held, self.held = self.held, []
        for msg_id, addressed in held:
            assert isinstance(await self.original(conn, msg_id, addressed), Accepted)

    def armed(self) -> bool:
        """Whether a corruption or a suppression waits for its frame."""
        return self.corrupt is not None or self.suppress is not None

    def by(self, client: Client) -> list[Any]:
        return [addressed for conn, addressed in self.sent if conn is client._conn]

    def ciphertext(self, client: Client, user: str, device: int, index: int = -1) -> bytes:
        """The ciphertext ``client`` sent to that device in its ``index``-th frame."""
        found: list[bytes] = [
            ct
            for addressed in self.by(client)
            for u, devices in addressed
            if u == user
            for d, ct in devices
            if d == device
        ]
        return found[index]


async def _events(client: Client) -> list[SecurityEvent]:
    """The client's stored events, oldest first, without consuming them."""
    async with client._store.transaction() as tx:
        return [decode_event(value) for _, value in await tx.scan(Table.EVENTS)]


async def _sessions_with(client: Client, user_id: str, device_id: int) -> int:
    async with client._store.transaction() as tx:
        data = await tx.get(Table.SESSIONS, client._store.lookup_key(user_id, device_id))
    return 0 if data is None else len(SessionRecord.from_bytes(data).sessions)


async def _prekeys_left(relay: RunningRelay, user_id: str, device_id: int) -> tuple[int, int]:
    status = await relay.ctx.storage.prekeys.status(user_id, device_id)
    return status.one_time_left, status.kem_left


async def _registered(harness: Harness, *names: str) -> list[str]:
    ids = [_uid(name) for name in names]
    for name, user_id in zip(names, ids, strict=True):
        async with harness.open(name) as client:
            await client.register(user_id)
    return ids


async def _exchange(alice: Client, bob: Client, alice_pump: Pump, bob_pump: Pump, tag: str) -> None:
    """One message each way (sessions established both ways)."""
    seen_bob, seen_alice = len(bob_pump.got), len(alice_pump.got)
    await alice.send(bob.user_id, f"{tag} to bob")
    await bob_pump.wait(seen_bob + 1)
    await bob.send(alice.user_id, f"{tag} to alice")
    await alice_pump.wait(seen_alice + 1)
    assert bob_pump.bodies()[-1] == f"{tag} to bob"
    assert alice_pump.bodies()[-1] == f"{tag} to alice"


def _users(frames: Sequence[Any]) -> list[list[str]]:
    return [[user for user, _ in addressed] for addressed in frames]


# --- 1. a corrupted ciphertext -------------------------------------------------------------


@pytest.mark.asyncio
async def test_corrupted_ciphertext_is_resent_once_on_a_new_session(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        alice_pump, bob_pump = Pump(alice), Pump(bob)
        try:
            await _exchange(alice, bob, alice_pump, bob_pump, "first")
            assert await _sessions_with(alice, bob_id, bob.device_id) == 1
            assert await _sessions_with(bob, alice_id, alice.device_id) == 1
            keys_before = await _prekeys_left(relay, bob_id, bob.device_id)
            sent_before = len(frames.sent)

            frames.corrupt = (bob_id, bob.device_id)
            lost_id = await alice.send(bob_id, "corrupted on the way")
            assert not frames.armed()  # the byte was flipped
            await bob_pump.wait(2)
            assert bob_pump.got[-1] == (alice_id, "corrupted on the way", lost_id)

            later = frames.sent[sent_before:]
            by_bob = [a for c, a in later if c is bob._conn]
            by_alice = [a for c, a in later if c is alice._conn]
            # exactly one retry request (to alice only), then exactly one resend (to bob
            # only: a pre-key message, so a new session)
            assert _users(by_bob) == [[alice_id]]
            assert _users(by_alice) == [[bob_id, alice_id], [bob_id]]
            ((_, ((device, resent),)),) = by_alice[1]
            assert device == bob.device_id
            assert envelope_type(resent) is EnvelopeType.PREKEY
            assert await _sessions_with(alice, bob_id, bob.device_id) == 2
            assert await _sessions_with(bob, alice_id, alice.device_id) == 2
            one_time, kem = keys_before
            assert await _prekeys_left(relay, bob_id, bob.device_id) == (one_time - 1, kem - 1)

            # the conversation continues both ways, and nothing is shown twice
            await _exchange(alice, bob, alice_pump, bob_pump, "after")
            assert bob_pump.bodies() == ["first to bob", "corrupted on the way", "after to bob"]
            assert alice_pump.bodies() == ["first to alice", "after to alice"]
            assert await _events(bob) == [
                Undecryptable(alice_id, alice.device_id, "DecryptionError")
            ]
            assert await _events(alice) == []
        finally:
            await alice_pump.stop()
            await bob_pump.stop()


@pytest.mark.asyncio
async def test_a_queued_retry_request_survives_a_restart(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry request is committed with the failure: a process that stops before
    sending it sends it on its next connection."""
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    async with harness.open("alice") as alice:
        alice_pump = Pump(alice)
        try:
            async with harness.open("bob") as bob:
                bob_pump = Pump(bob)
                try:
                    await _exchange(alice, bob, alice_pump, bob_pump, "first")
                    original = RecoveryMixin._flush_recovery

                    async def crashed(self: RecoveryMixin, conn: RelayConnection) -> None:
                        return None  # the process "dies" before sending

                    monkeypatch.setattr(RecoveryMixin, "_flush_recovery", crashed)
                    frames.corrupt = (bob_id, bob.device_id)
                    sent_before = len(frames.sent)
                    await alice.send(bob_id, "lost")

                    async def reported() -> bool:
                        return len(await _events(bob)) == 1

                    await _until(reported, "the undecryptable message")
                    async with bob._store.transaction() as tx:
                        assert await tx.count(Table.META, b"rv/q/") == 1  # queued
                    monkeypatch.setattr(RecoveryMixin, "_flush_recovery", original)
                    assert [c for c, _ in frames.sent[sent_before:]] == [alice._conn]
                finally:
                    await bob_pump.stop()
            async with harness.open("bob") as bob:
                bob_pump = Pump(bob)  # connects: the queued request goes out
                try:
                    await bob_pump.wait(1)
                    assert bob_pump.got[0][:2] == (alice_id, "lost")
                    assert await _sessions_with(bob, alice_id, alice.device_id) == 2
                    async with bob._store.transaction() as tx:
                        assert await tx.count(Table.META, b"rv/q/") == 0
                finally:
                    await bob_pump.stop()
            assert await _events(alice) == []
        finally:
            await alice_pump.stop()


# --- 2. garbage ------------------------------------------------------------------------------


def _garbage(count: int) -> list[bytes]:
    """Half random bytes, half well-formed message envelopes with random ratchet keys,
    counters and ciphertexts (their headers parse, so each could ask for a retry)."""
    out: list[bytes] = []
    for i in range(count):
        if i % 2:
            out.append(secrets.token_bytes(40 + secrets.randbelow(400)))
            continue
        size = 16 + secrets.randbelow(300)
        counter = secrets.randbelow(1500) if i % 4 else secrets.randbelow(2**32)
        prefix = MessageEnvelope.encode_prefix(
            DHKeyPair.generate().public_key, secrets.randbelow(50), counter, size - 16
        )
        out.append(prefix + secrets.token_bytes(size))
    return out


@pytest.mark.asyncio
async def test_garbage_from_a_peer_makes_at_most_one_request_and_no_session(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    async with harness.open("bob") as bob:
        bob_pump = Pump(bob)
        try:
            async with harness.open("alice") as alice:
                alice_pump = Pump(alice)
                try:
                    await _exchange(alice, bob, alice_pump, bob_pump, "first")
                finally:
                    await alice_pump.stop()
                alice_device = alice._device
                assert alice_device is not None
            keys = {
                who: await _prekeys_left(relay, user, dev)
                for who, user, dev in (
                    ("alice", alice_id, alice_device.device_id),
                    ("bob", bob_id, bob.device_id),
                )
            }
            sent_before = len(frames.sent)
            identity = DeviceIdentity(alice_id, alice_device.device_id, alice_device.signing)
            async with await RelayConnection.connect(
                harness.url + "/v1/ws", origin=ORIGIN, identity=identity
            ) as raw:
                for blob in _garbage(100):
                    result = await raw.send(
                        secrets.token_bytes(16), [(bob_id, [(bob.device_id, blob)])]
                    )
                    assert isinstance(result, Accepted)

            async def all_reported() -> bool:
                return len(await _events(bob)) >= 100

            await _until(all_reported, "100 undecryptable messages")
            events = await _events(bob)
            reasons = {e.reason for e in events if isinstance(e, Undecryptable)}
            assert len(events) == 100
            assert all(
                isinstance(e, Undecryptable)
                and (e.user_id, e.device_id) == (alice_id, alice_device.device_id)
                for e in events
            )
            assert reasons <= {
                "UnsupportedVersion",
                "DecodeError",
                "DecryptionError",
                "TooManySkippedMessages",
                "InvalidKey",
            }
            # one retry request, to alice only (the first well-formed envelope); none
            # for the 99 others within the hour
            by_bob = [a for c, a in frames.sent[sent_before:] if c is bob._conn]
            assert _users(by_bob) == [[alice_id]]

            async with harness.open("alice") as alice:
                alice_pump = Pump(alice)
                try:

                    async def dropped() -> bool:
                        return bool(await _events(alice))

                    await _until(dropped, "alice's answer to the retry request")
                    assert await _events(alice) == [
                        RetryRequestDropped(bob_id, bob.device_id, "unknown")
                    ]
                    await _exchange(alice, bob, alice_pump, bob_pump, "after")
                    assert bob_pump.bodies() == ["first to bob", "after to bob"]
                    assert alice_pump.bodies()[-1] == "after to alice"
                    # no new session on either side, no bundle claimed
                    assert await _sessions_with(alice, bob_id, bob.device_id) == 1
                    assert await _sessions_with(bob, alice_id, alice.device_id) == 1
                    assert await _prekeys_left(relay, bob_id, bob.device_id) == keys["bob"]
                    assert await _prekeys_left(relay, alice_id, alice.device_id) == keys["alice"]
                    by_bob = [a for c, a in frames.sent[sent_before:] if c is bob._conn]
                    assert _users(by_bob) == [[alice_id], [alice_id, bob_id]]  # + the reply
                finally:
                    await alice_pump.stop()
        finally:
            await bob_pump.stop()


@pytest.mark.asyncio
async def test_garbage_without_a_session_makes_one_session_for_one_request(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob has no session with alice: the garbage cannot name a message, but its headers
    parse, so bob asks once, which needs one session (one claimed bundle of alice)."""
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    async with harness.open("alice") as alice:
        alice_device = alice._device
        assert alice_device is not None
    keys = await _prekeys_left(relay, alice_id, alice_device.device_id)
    identity = DeviceIdentity(alice_id, alice_device.device_id, alice_device.signing)
    async with harness.open("bob") as bob:
        async with await RelayConnection.connect(
            harness.url + "/v1/ws", origin=ORIGIN, identity=identity
        ) as raw:
            for blob in _garbage(100):
                result = await raw.send(
                    secrets.token_bytes(16), [(bob_id, [(bob.device_id, blob)])]
                )
                assert isinstance(result, Accepted)
        bob_pump = Pump(bob)
        try:

            async def all_reported() -> bool:
                return len(await _events(bob)) >= 100

            await _until(all_reported, "100 undecryptable messages")
            assert len(await _events(bob)) == 100
            assert _users(frames.by(bob)) == [[alice_id]]
            assert await _sessions_with(bob, alice_id, alice_device.device_id) == 1
            one_time, kem = keys
            assert await _prekeys_left(relay, alice_id, alice_device.device_id) == (
                one_time - 1,
                kem - 1,
            )
        finally:
            await bob_pump.stop()
        bob_device = bob.device_id
    async with harness.open("alice") as alice:
        alice_pump = Pump(alice)
        try:

            async def dropped() -> bool:
                return bool(await _events(alice))

            await _until(dropped, "alice's answer to the retry request")
            assert await _events(alice) == [RetryRequestDropped(bob_id, bob_device, "unknown")]
            assert alice_pump.got == []
        finally:
            await alice_pump.stop()


# --- 3. the rules of the sender ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_retry_request_rules(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    alice_id, bob_id, carol_id = await _registered(harness, "alice", "bob", "carol")
    frames = Frames(monkeypatch)
    alice_clock = harness.clock("alice")
    async with (
        harness.open("alice") as alice,
        harness.open("bob") as bob,
        harness.open("carol") as carol,
    ):
        pumps = [Pump(alice), Pump(bob), Pump(carol)]
        alice_pump, bob_pump, _ = pumps
        try:
            first_id = await alice.send(bob_id, "first")
            await bob_pump.wait(1)
            pk, n = failed_header(frames.ciphertext(alice, bob_id, bob.device_id)) or (b"", 0)
            assert len(pk) == 32

            async def request(
                client: Client, ratchet_pk: bytes, counter: int, msg_id: bytes = UNKNOWN_MSG_ID
            ) -> None:
                conn = await client._connection()
                body = RetryRequest(msg_id, alice.device_id, ratchet_pk, counter)
                await client._send_retry_request(conn, alice_id, body)

            async def answered(count: int) -> list[SecurityEvent]:
                async def enough() -> bool:
                    return len(await _events(alice)) >= count

                await _until(enough, f"{count} events at alice")
                return await _events(alice)

            # a ciphertext made for bob's device, asked for by carol's
            await request(carol, pk, n)
            assert await answered(1) == [
                RetryRequestDropped(carol_id, carol.device_id, "not_addressed")
            ]
            # a (ratchet key, counter) alice never sent
            await request(bob, DHKeyPair.generate().public_key, 7)
            assert (await answered(2))[1:] == [
                RetryRequestDropped(bob_id, bob.device_id, "unknown")
            ]
            # a client message id that is not the one of that ciphertext
            await request(bob, pk, n, secrets.token_bytes(16))
            assert (await answered(3))[2:] == [
                RetryRequestDropped(bob_id, bob.device_id, "unknown")
            ]
            # honoured: resent on a new session (bob had it already: a replay for him)
            resends = len(frames.by(alice))
            await request(bob, pk, n, first_id)

            async def replayed() -> bool:
                return ReplayDropped(alice_id, alice.device_id) in await _events(bob)

            await _until(replayed, "the resend at bob")
            assert _users(frames.by(alice)[resends:]) == [[bob_id]]
            assert await _sessions_with(alice, bob_id, bob.device_id) == 2
            assert len(await _events(alice)) == 3
            # the same message again
            await request(bob, pk, n)
            assert (await answered(4))[3:] == [
                RetryRequestDropped(bob_id, bob.device_id, "already_resent")
            ]
            # the resent copy (new ratchet key and counter) names the same message
            pk2, n2 = failed_header(frames.ciphertext(alice, bob_id, bob.device_id)) or (b"", 0)
            await request(bob, pk2, n2)
            assert (await answered(5))[4:] == [
                RetryRequestDropped(bob_id, bob.device_id, "already_resent")
            ]
            # another message within the hour of the new session
            await alice.send(bob_id, "second")
            await bob_pump.wait(2)
            pk3, n3 = failed_header(frames.ciphertext(alice, bob_id, bob.device_id)) or (b"", 0)
            await request(bob, pk3, n3)
            assert (await answered(6))[5:] == [
                RetryRequestDropped(bob_id, bob.device_id, "session_limit")
            ]
            # and once it is more than 24 hours old
            alice_clock.offset_ms += 24 * HOUR_MS + 1
            await request(bob, pk3, n3)
            assert (await answered(7))[6:] == [
                RetryRequestDropped(bob_id, bob.device_id, "too_old")
            ]
            assert await _sessions_with(alice, bob_id, bob.device_id) == 2
            assert bob_pump.bodies() == ["first", "second"]
            assert alice_pump.got == []
        finally:
            for pump in pumps:
                await pump.stop()


@pytest.mark.asyncio
async def test_sent_messages_are_forgotten_after_24_hours(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    clock = harness.clock("alice")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        old_id = await alice.send(bob_id, "old")
        header = failed_header(frames.ciphertext(alice, bob_id, bob.device_id))
        assert header is not None

        async def remembered() -> int:
            async with alice._store.transaction() as tx:
                return await tx.count(Table.META, b"rv/")

        assert await remembered() == 3  # the message, its age entry, one copy
        clock.offset_ms += 24 * HOUR_MS - 60_000  # not 24 h yet: kept
        await alice.send(bob_id, "new")
        assert await remembered() == 6
        clock.offset_ms += 11 * 60_000  # the purge runs at most every 10 minutes
        await alice.send(bob_id, "newer")
        assert await remembered() == 6  # "old" went, "newer" came
        async with alice._store.transaction() as tx:
            assert await tx.get(Table.META, alice._copy_key(*header)) is None
            assert await tx.get(Table.META, b"rv/m/" + old_id) is None


# --- 4. reset_session --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reset_session(harness: Harness, relay: RunningRelay) -> None:
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    clock = harness.clock("alice")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        alice_pump, bob_pump = Pump(alice), Pump(bob)
        try:
            await _exchange(alice, bob, alice_pump, bob_pump, "first")
            one_time, kem = await _prekeys_left(relay, bob_id, bob.device_id)
            assert await alice.reset_session(bob_id) == (bob.device_id,)
            assert await _sessions_with(alice, bob_id, bob.device_id) == 1  # at the next send
            await _exchange(alice, bob, alice_pump, bob_pump, "after the reset")
            assert await _prekeys_left(relay, bob_id, bob.device_id) == (one_time - 1, kem - 1)
            assert await _sessions_with(alice, bob_id, bob.device_id) == 2
            assert await _sessions_with(bob, alice_id, alice.device_id) == 2

            with pytest.raises(SessionResetTooSoon) as refused:
                await alice.reset_session(bob_id, bob.device_id)
            assert (refused.value.user_id, refused.value.device_id) == (bob_id, bob.device_id)
            assert 0 < refused.value.retry_after_ms <= HOUR_MS
            # nothing changed: the next message uses the current session
            await _exchange(alice, bob, alice_pump, bob_pump, "not reset")
            assert await _prekeys_left(relay, bob_id, bob.device_id) == (one_time - 1, kem - 1)
            assert await _sessions_with(alice, bob_id, bob.device_id) == 2

            assert await alice.reset_session(bob_id, force=True) == (bob.device_id,)
            await _exchange(alice, bob, alice_pump, bob_pump, "forced")
            assert await _sessions_with(alice, bob_id, bob.device_id) == 3
            clock.offset_ms += HOUR_MS
            assert await alice.reset_session(bob_id, bob.device_id) == (bob.device_id,)
            await _exchange(alice, bob, alice_pump, bob_pump, "an hour later")
            assert await _sessions_with(alice, bob_id, bob.device_id) == 4
            assert await _prekeys_left(relay, bob_id, bob.device_id) == (one_time - 3, kem - 3)

            bad_calls: list[tuple[str, int | None]] = [
                (_uid("nobody"), None),  # no list stored
                (bob_id, bob.device_id ^ 1),  # not listed
                ("not a user id", None),
                (bob_id, -1),
                (alice_id, None),  # no other own device
            ]
            for user, device in bad_calls:
                with pytest.raises(UsageError):
                    await alice.reset_session(user, device)
            assert bob_pump.bodies() == [
                "first to bob",
                "after the reset to bob",
                "not reset to bob",
                "forced to bob",
                "an hour later to bob",
            ]
            assert await _events(alice) == [] and await _events(bob) == []
        finally:
            await alice_pump.stop()
            await bob_pump.stop()


# --- messages missing ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_gap_not_filled_in_24_hours_is_reported_and_requested(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    bob_clock = harness.clock("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        alice_pump, bob_pump = Pump(alice), Pump(bob)
        try:
            await _exchange(alice, bob, alice_pump, bob_pump, "first")
            frames.suppress = (bob_id, bob.device_id)  # "accepted", never delivered
            lost_id = await alice.send(bob_id, "lost")
            assert not frames.armed()
            await alice.send(bob_id, "after the gap")
            await bob_pump.wait(2)
            bob_clock.offset_ms += 23 * HOUR_MS
            await alice.send(bob_id, "23 hours later")
            await bob_pump.wait(3)
            assert await _events(bob) == []  # not 24 hours yet
            bob_clock.offset_ms += HOUR_MS + 60_000  # the check runs at most hourly
            await alice.send(bob_id, "a day later")
            await bob_pump.wait(5)
            assert bob_pump.got[-1] == (alice_id, "lost", lost_id)  # resent
            assert bob_pump.bodies()[:-1] == [
                "first to bob",
                "after the gap",
                "23 hours later",
                "a day later",
            ]
            assert await _events(bob) == [MessagesMissing(alice_id, alice.device_id, 1)]
            assert await _sessions_with(bob, alice_id, alice.device_id) == 2
            # reported once: later checks find nothing new
            bob_clock.offset_ms += 2 * HOUR_MS
            await _exchange(alice, bob, alice_pump, bob_pump, "later")
            assert await _events(bob) == [MessagesMissing(alice_id, alice.device_id, 1)]
            assert await _events(alice) == []
        finally:
            await alice_pump.stop()
            await bob_pump.stop()


@pytest.mark.asyncio
async def test_a_reset_whose_bundle_is_refused_waits_for_the_next_message(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, bob_id = await _registered(harness, "alice", "bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        alice_pump, bob_pump = Pump(alice), Pump(bob)
        try:
            await _exchange(alice, bob, alice_pump, bob_pump, "first")
            await alice.reset_session(bob_id)
            original = RelayConnection.claim_bundle
            claims: list[tuple[str, int]] = []

            async def refused(self: RelayConnection, user_id: str, device_id: int) -> bytes:
                claims.append((user_id, device_id))
                raise NoPreKeys(ErrorCode.NO_PREKEYS, "no prekeys")

            monkeypatch.setattr(RelayConnection, "claim_bundle", refused)
            await alice.send(bob_id, "on the current session")
            monkeypatch.setattr(RelayConnection, "claim_bundle", original)
            assert claims == [(bob_id, bob.device_id)]
            await bob_pump.wait(2)
            assert await _sessions_with(alice, bob_id, bob.device_id) == 1
            await alice.send(bob_id, "on a new session")
            await bob_pump.wait(3)
            assert await _sessions_with(alice, bob_id, bob.device_id) == 2
            assert bob_pump.bodies() == [
                "first to bob",
                "on the current session",
                "on a new session",
            ]
        finally:
            await alice_pump.stop()
            await bob_pump.stop()


@pytest.mark.asyncio
async def test_a_late_message_fills_the_gap_from_its_skipped_key(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message delivered after a later one decrypts with its skipped key (stored as a
    row of its own) within the 24 hours: no retry request, nothing reported."""
    _, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        alice_pump, bob_pump = Pump(alice), Pump(bob)
        try:
            await _exchange(alice, bob, alice_pump, bob_pump, "first")
            frames.suppress = (bob_id, bob.device_id)
            await alice.send(bob_id, "late")
            await alice.send(bob_id, "early")
            await bob_pump.wait(2)
            async with bob._store.transaction() as tx:
                assert await tx.count(Table.SKIPPED_KEYS) == 1
            harness.clock("bob").offset_ms += 23 * HOUR_MS
            await frames.release(alice)
            await bob_pump.wait(3)
            assert bob_pump.bodies() == ["first to bob", "early", "late"]
            async with bob._store.transaction() as tx:
                assert await tx.count(Table.SKIPPED_KEYS) == 0
            await _exchange(alice, bob, alice_pump, bob_pump, "after")
            assert await _events(bob) == [] and await _events(alice) == []
            assert [c for c, _ in frames.sent if c is bob._conn] == [bob._conn] * 2
        finally:
            await alice_pump.stop()
            await bob_pump.stop()


def test_recovery_records_round_trip_and_refuse_corruption() -> None:
    msg_id, key = secrets.token_bytes(16), secrets.token_bytes(32)
    copy_key = b"rv/c/" + key
    samples: list[Any] = [
        SentMessageRecord(msg_id, 5, "bob", b"p" * 160, b"o" * 160, (copy_key,), (key,)),
        SentCopyRecord(msg_id, "bob", 7),
        PeerRecoveryRecord(1, None, (key + b"\x00\x00\x00\x01",), 3),
        PeerRecoveryRecord(),
        ResetRecord(9),
        RetryJobRecord("bob", 7, key, 12, UNKNOWN_MSG_ID),
        ResendJobRecord(msg_id, "bob", 7),
    ]
    for record in samples:
        assert type(record).from_bytes(record.to_bytes()) == record
        for bad in (b"", b"\xa0", record.to_bytes()[:-1], cbor.encode({0: 2})):
            with pytest.raises(StoreCorrupt):
                type(record).from_bytes(bad)
    wrong_size = SentMessageRecord(msg_id, 5, "bob", b"", b"", (b"short",))
    with pytest.raises(StoreCorrupt):
        SentMessageRecord.from_bytes(wrong_size.to_bytes())
    state = PeerRecoveryRecord()
    for i in range(100):
        state = state.requesting(key + i.to_bytes(4, "big"), i)
    assert len(state.requested) == 64 and state.last_request_ms == 99
    assert PeerRecoveryRecord.from_bytes(state.to_bytes()) == state


@pytest.mark.asyncio
async def test_a_resend_gives_the_users_other_devices_only_a_notice(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob has two devices (the second added by hand, on a raw connection): alice's
    resend for bob's first device addresses both (the relay wants every device), and
    the second decrypts a device list notice naming alice's list version, not the
    message."""
    alice_id, bob_id = await _registered(harness, "alice", "bob")
    frames = Frames(monkeypatch)
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        alice_pump, bob_pump = Pump(alice), Pump(bob)
        try:
            await _exchange(alice, bob, alice_pump, bob_pump, "first")
            master = bob._master
            own = await bob._stored_list(bob_id)
            assert master is not None and own is not None
            second = OurDevice.generate(
                bob_id, bob.device_id ^ 1, master.public_key, now_ms=now_ms()
            )
            prekeys = OurPreKeys()
            v2 = own.successor(
                master,
                tuple(sorted((*own.statement.devices, second.entry()), key=lambda d: d.device_id)),
                now_ms(),
            )
            await (await bob._connection()).put_device_list(v2.to_bytes())
            identity = DeviceIdentity(bob_id, second.device_id, second.signing)
            async with await RelayConnection.connect(
                harness.url + "/v1/ws", origin=ORIGIN, identity=identity
            ) as second_conn:
                now = now_ms()
                await second_conn.upload_prekeys(
                    signed_prekey=prekeys.rotate_signed_prekey(second, now),
                    one_time=prekeys.one_time_batch(second, now, count=5),
                    kem=prekeys.one_time_batch(second, now, kem=True, count=5),
                    last_resort=prekeys.rotate_last_resort(second, now),
                )
                await alice.send(bob_id, "to both")  # a mismatch, then both devices
                frames.corrupt = (bob_id, bob.device_id)
                await alice.send(bob_id, "corrupted for the first")
                await bob_pump.wait(3)
                assert bob_pump.bodies()[1:] == ["to both", "corrupted for the first"]
                alice_list = await bob._stored_list(alice_id)
                assert alice_list is not None
                sender = alice_list.statement.peer(alice.device_id)
                record: SessionRecord | None = None
                payloads: list[Payload] = []
                async with asyncio.timeout(WAIT):
                    async for event in second_conn.events():
                        if not isinstance(event, Delivery):
                            continue
                        result = decrypt(
                            second, prekeys, record, sender, event.ciphertext, now_ms()
                        )
                        result.commit_prekeys(prekeys)
                        record = result.record
                        payloads.append(Payload.from_bytes(result.plaintext, from_own_device=False))
                        await second_conn.ack([event.seq])
                        if len(payloads) == 3:
                            break
                assert [p.body for p in payloads[:2]] == ["to both", "corrupted for the first"]
                notice = payloads[2]
                assert notice.type is PayloadType.DEVICE_LIST_NOTICE
                assert notice.body == DeviceListNotice(1)  # alice's list version
                assert notice.client_msg_id != bob_pump.got[-1][2]
            resend = frames.by(alice)[-1]
            assert [(u, sorted(d for d, _ in devices)) for u, devices in resend] == [
                (bob_id, sorted((bob.device_id, second.device_id)))
            ]
            assert await _events(bob) == [
                Undecryptable(alice_id, alice.device_id, "DecryptionError")
            ]
        finally:
            await alice_pump.stop()
            await bob_pump.stop()
