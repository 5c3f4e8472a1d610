"""Safety numbers, verification and identity changes (issue 4 "API", DESIGN 4.2),
end to end: a real relay (uvicorn on 127.0.0.1, a SQLite database file), real
WebSockets, real encrypted SQLite stores. A malicious relay is played by writing into
the relay's own storage (``replace_device_list``), or, for a replay of an old list,
by answering ``get_device_list`` with the old bytes."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from client_sdk._client import records
from client_sdk._client.identity import VerificationState
from client_sdk._client.records import IdentityRecord, VerificationRecord
from client_sdk.client import Client, Message
from client_sdk.errors import (
    IdentityChangeBlocked,
    IdentityError,
    SafetyNumberMismatch,
    StoreCorrupt,
    UsageError,
)
from client_sdk.events import (
    DeviceListEquivocation,
    DeviceListStale,
    IdentityChanged,
    SecurityEvent,
)
from client_sdk.store import Table
from client_sdk.transport import Delivery, DeviceIdentity, RelayConnection
from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.keys import SigningKeyPair
from e2ee.limits import DAY_MS
from e2ee.payload import Payload
from e2ee.safety_numbers import SafetyNumber
from e2ee.session import decrypt
from server.storage.base import AccountRecord as RelayAccount
from server.storage.base import DeviceRecord
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 20.0
"""Bound for anything a test waits for."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


class Harness:
    """Opens clients on one relay, each with its own store file, raw key and clock
    (real time plus an offset the test moves)."""

    def __init__(self, relay: RunningRelay, tmp_path: Path) -> None:
        self.relay = relay
        self.url = f"ws://127.0.0.1:{relay.port}"
        self.tmp_path = tmp_path
        self.keys: dict[str, bytes] = {}
        self.offsets: dict[str, int] = {}

    def clock(self, name: str) -> Callable[[], int]:
        return lambda: now_ms() + self.offsets.get(name, 0)

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


async def _events(client: Client) -> list[SecurityEvent]:
    """Every recorded event (consumed)."""
    return [item.event async for item in client.events(wait=False)]


async def _identity(client: Client, user_id: str) -> IdentityRecord:
    async with client._store.transaction() as tx:
        return await IdentityRecord.load(
            tx, client._store.lookup_key(user_id, records.IDENTITY_PART)
        )


async def _session_exists(client: Client, user_id: str, device_id: int) -> bool:
    async with client._store.transaction() as tx:
        key = client._store.lookup_key(user_id, device_id)
        return await tx.get(Table.SESSIONS, key) is not None


@dataclass
class FakeDevice:
    """A device the relay made up: its keys, prekeys and an open connection."""

    master: SigningKeyPair
    device: OurDevice
    prekeys: OurPreKeys
    signed: SignedDeviceList
    conn: RelayConnection

    async def next_delivery(self) -> Delivery:
        async with asyncio.timeout(WAIT):
            async for event in self.conn.events():
                if isinstance(event, Delivery):
                    await self.conn.ack([event.seq])
                    return event
        raise AssertionError("the connection ended")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def reconnected(self, url: str) -> AsyncIterator[None]:
        """Connect this device again (its queued messages are delivered)."""
        identity = DeviceIdentity(self.device.user_id, self.device.device_id, self.device.signing)
        async with await RelayConnection.connect(
            url + "/v1/ws", origin=ORIGIN, identity=identity
        ) as conn:
            self.conn = conn
            yield

    async def read(self, sender: Client) -> str | bytes:
        """The next message, decrypted as the sender's session with this device."""
        delivery = await self.next_delivery()
        assert delivery.sender_user == sender.user_id
        listed = await sender._stored_list(sender.user_id)
        assert listed is not None
        peer = listed.statement.peer(delivery.sender_device)
        assert peer is not None
        result = decrypt(self.device, self.prekeys, None, peer, delivery.ciphertext, now_ms())
        body = Payload.from_bytes(result.plaintext, from_own_device=False).body
        assert isinstance(body, str | bytes)
        return body


async def _relay_account(relay: RunningRelay, user_id: str) -> RelayAccount:
    account = await relay.ctx.storage.accounts.get_account(user_id)
    assert account is not None
    return account


async def _serve_list(
    relay: RunningRelay, signed: SignedDeviceList, devices: tuple[DeviceRecord, ...]
) -> None:
    """Make the relay serve ``signed`` for its user (whatever it chains to)."""
    user_id = signed.statement.user_id
    current = await _relay_account(relay, user_id)
    record = RelayAccount(
        user_id=user_id,
        master_pk=signed.statement.master_pk,
        list_version=current.list_version + 1,
        signed_list=signed.to_bytes(),
        list_digest=signed.digest,
        devices=devices,
    )
    await relay.ctx.storage.accounts.replace_device_list(record, current.list_version, now_ms())


def _records(signed: SignedDeviceList) -> tuple[DeviceRecord, ...]:
    user_id = signed.statement.user_id
    return tuple(
        DeviceRecord(user_id, d.device_id, d.signing_pk, d.x25519_ik, d.pq)
        for d in signed.statement.devices
    )


@contextlib.asynccontextmanager
async def _substituted(harness: Harness, user_id: str, device_id: int) -> AsyncIterator[FakeDevice]:
    """The relay replaces ``user_id``'s identity: a fresh master key, a v1 list with one
    new device (the old one is removed), the new device's prekeys uploaded."""
    master = SigningKeyPair.generate()
    now = now_ms()
    device = OurDevice.generate(user_id, device_id, master.public_key, now_ms=now)
    signed = SignedDeviceList.sign(
        DeviceList(user_id, master.public_key, 1, now, None, (device.entry(),)), master
    )
    await _serve_list(harness.relay, signed, _records(signed))
    prekeys = OurPreKeys()
    identity = DeviceIdentity(user_id, device_id, device.signing)
    async with await RelayConnection.connect(
        harness.url + "/v1/ws", origin=ORIGIN, identity=identity
    ) as conn:
        await conn.upload_prekeys(
            signed_prekey=prekeys.rotate_signed_prekey(device, now),
            one_time=prekeys.one_time_batch(device, now, count=5),
            kem=prekeys.one_time_batch(device, now, kem=True, count=5),
            last_resort=prekeys.rotate_last_resort(device, now),
        )
        yield FakeDevice(master, device, prekeys, signed, conn)


class SendSpy:
    """Records every Send the clients make: ``(addressed device ids of user, result)``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, user_id: str) -> None:
        self.attempts: list[tuple[list[int], str]] = []
        original = RelayConnection.send
        spy = self

        async def send(self: RelayConnection, msg_id: bytes, addressed: Any) -> Any:
            result = await original(self, msg_id, addressed)
            ids = [d for u, devices in addressed if u == user_id for d, _ in devices]
            spy.attempts.append((ids, type(result).__name__))
            return result

        monkeypatch.setattr(RelayConnection, "send", send)

    def take(self) -> list[tuple[list[int], str]]:
        attempts, self.attempts = self.attempts, []
        return attempts


async def _refresh(client: Client, user_id: str) -> SignedDeviceList:
    return await client._device_list(await client._connection(), user_id, refresh=True)


# --- safety numbers and verification -------------------------------------------------------


@pytest.mark.asyncio
async def test_safety_numbers_match_and_verify(harness: Harness) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        # each side fetches the other's list (none stored yet) and computes the number
        theirs = await alice.safety_number(bob_id)
        ours = await bob.safety_number(alice_id)
        assert len(theirs.digits) == 60 and theirs.digits.isdigit()
        assert theirs.digits == ours.digits
        assert theirs.display() == " ".join(ours.digits[i : i + 5] for i in range(0, 60, 5))
        assert theirs.pending is False and ours.pending is False
        assert theirs.qr_payload != ours.qr_payload
        assert await alice.verification_state(bob_id) is VerificationState.UNVERIFIED
        # bob sends before alice verified him: the message says so
        await bob.send(alice_id, "before")
        (before,) = await _take(alice, 1)
        assert before.verification is VerificationState.UNVERIFIED

        # wrong inputs: each a mismatch that records nothing
        alice_number = SafetyNumber.compute(
            alice_id, alice._ready()[0].master_pk, bob_id, bob._ready()[0].master_pk
        )
        halves = cbor.decode(ours.qr_payload)  # bob's: {1: bob's half, 2: alice's half}
        assert isinstance(halves, dict)
        swapped = cbor.encode({0: 1, 1: halves[2], 2: halves[1]})
        assert swapped == theirs.qr_payload
        wrong_digits = ("0" if ours.digits[0] != "0" else "1") + ours.digits[1:]
        for bad in (
            alice_number.qr_payload(),  # alice's own payload: the halves swapped
            swapped,
            cbor.encode({0: 1, 1: halves[1], 2: halves[1]}),  # duplicated halves
            cbor.encode({0: 1, 1: halves[2], 2: halves[2]}),
            b"\xff not cbor",
            cbor.encode({0: 2, 1: halves[1], 2: halves[2]}),  # another version
            wrong_digits,
            ours.digits[:30],
            "",
        ):
            with pytest.raises(SafetyNumberMismatch) as caught:
                await alice.verify(bob_id, bad)
            assert caught.value.user_id == bob_id
            assert not await alice.is_verified(bob_id)
        async with alice._store.transaction() as tx:
            assert await tx.get(Table.VERIFICATION, alice._store.lookup_key(bob_id)) is None
        with pytest.raises(UsageError):
            await alice.verify(bob_id, 12345)  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            await alice.safety_number(alice_id)
        with pytest.raises(UsageError):
            await alice.verify("not a user id!", ours.digits)

        # bob's QR payload verifies on alice's side, alice's digits on bob's side
        assert await alice.verify(bob_id, ours.qr_payload) is True
        assert await bob.verify(alice_id, " ".join(theirs.display().split(" "))) is True
        assert await alice.is_verified(bob_id) and await bob.is_verified(alice_id)
        assert await alice.verification_state(alice_id) is VerificationState.VERIFIED
        async with alice._store.transaction() as tx:
            data = await tx.get(Table.VERIFICATION, alice._store.lookup_key(bob_id))
        assert data is not None
        record = VerificationRecord.from_bytes(data)
        assert record.master_pk == bob._ready()[0].master_pk
        assert abs(record.verified_at_ms - now_ms()) < 60_000
        # the verification state travels with received messages
        await bob.send(alice_id, "after")
        (after,) = await _take(alice, 1)
        assert (after.body, after.verification) == ("after", VerificationState.VERIFIED)
        assert await _events(alice) == [] and await _events(bob) == []


def test_records_round_trip_and_refuse_corruption() -> None:
    verification = VerificationRecord(b"\x01" * 32, 1_700_000_000_000)
    assert VerificationRecord.from_bytes(verification.to_bytes()) == verification
    ident = IdentityRecord(b"list", (b"\x02" * 32,), (b"\x03" * 32,), (b"\x04" * 32,), None, 7)
    assert IdentityRecord.from_bytes(ident.to_bytes()) == ident
    assert IdentityRecord.from_bytes(IdentityRecord().to_bytes()) == IdentityRecord()
    assert records.remember((b"a", b"b"), b"b") == (b"a", b"b")
    assert records.remember((b"a", b"b"), b"c", 2) == (b"b", b"c")
    for bad in (
        b"",
        cbor.encode({0: 2, 1: b"\x01" * 32, 2: 1}),  # unknown version
        cbor.encode({0: 1, 1: b"\x01" * 31, 2: 1}),  # short key
        cbor.encode({0: 1, 1: b"\x01" * 32}),  # missing field
    ):
        with pytest.raises(StoreCorrupt):
            VerificationRecord.from_bytes(bad)
    good = cbor.decode(ident.to_bytes())
    assert isinstance(good, dict)
    corruptions: list[tuple[int, cbor.Value]] = [
        (1, 5),  # pending not bytes
        (2, [b"short"]),  # a retired key of the wrong size
        (3, "x"),  # not a list
        (5, b"\x00"),  # a digest of the wrong size
        (6, -1),  # a negative time
    ]
    for key, value in corruptions:
        with pytest.raises(StoreCorrupt):
            IdentityRecord.from_bytes(cbor.encode({**good, key: value}))


# --- identity changes ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_verified_contact_substituted_blocks_sending_until_accepted(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        old_device = bob.device_id
        old_list = await alice._device_list(await alice._connection(), bob_id)
        old_number = await alice.safety_number(bob_id)
        assert await alice.verify(bob_id, (await bob.safety_number(alice_id)).qr_payload)
        await alice.send(bob_id, "while verified")
        (first,) = await _take(bob, 1)
        assert first.body == "while verified"
        new_id = old_device ^ 1
        async with _substituted(harness, bob_id, new_id) as fake:
            spy = SendSpy(monkeypatch, bob_id)
            with pytest.raises(IdentityChangeBlocked) as caught:
                await alice.send(bob_id, "blocked 1")
            assert caught.value.user_id == bob_id
            # one attempt with the old device, refused by the relay (Mismatch stores
            # nothing); nothing was encrypted for the new key
            assert spy.take() == [([old_device], "Mismatch")]
            assert not await _session_exists(alice, bob_id, new_id)
            assert await alice.pending_outbox() == 1  # kept until the change is accepted
            # now blocked before anything is committed
            with pytest.raises(IdentityChangeBlocked):
                await alice.send(bob_id, "blocked 2")
            assert spy.take() == []
            assert await alice.pending_outbox() == 1
            assert await relay.ctx.storage.messages.depth(bob_id, new_id) == 0
            assert await alice.verification_state(bob_id) is VerificationState.CHANGE_PENDING
            assert not await alice.is_verified(bob_id)
            # refreshing again (the relay keeps serving the new key) reports nothing new
            with pytest.raises(IdentityChangeBlocked):
                await _refresh(alice, bob_id)
            assert await _events(alice) == [IdentityChanged(bob_id, verified=True)]
            # the pinned list is still the old one; the offered one is pending
            stored = await alice._stored_list(bob_id)
            assert stored is not None and stored.to_bytes() == old_list.to_bytes()
            assert (await _identity(alice, bob_id)).pending == fake.signed.to_bytes()
            # the safety number shown is the new key's
            pending_number = await alice.safety_number(bob_id)
            assert pending_number.pending and pending_number.digits != old_number.digits

            # accepting works from the stored offer, without the relay
            assert await alice.accept_identity_change(bob_id) is True
            assert await alice.accept_identity_change(bob_id) is False  # nothing left
            assert await alice.verification_state(bob_id) is VerificationState.UNVERIFIED
            assert not await _session_exists(alice, bob_id, old_device)
            stored = await alice._stored_list(bob_id)
            assert stored is not None and stored.to_bytes() == fake.signed.to_bytes()
            await alice.send(bob_id, "to the new key")
            assert spy.take() == [([new_id], "Accepted")]
            assert await fake.read(alice) == "to the new key"
            assert await _events(alice) == []
            # the relay cannot roll the change back by serving the old list again
            old_bytes = old_list.to_bytes()

            async def replay(self: RelayConnection, user_id: str) -> bytes:
                return old_bytes

            monkeypatch.setattr(RelayConnection, "get_device_list", replay)
            with pytest.raises(IdentityError) as rolled:
                await _refresh(alice, bob_id)
            assert rolled.value.reason == "MasterKeyRetired"
            monkeypatch.undo()
            stored = await alice._stored_list(bob_id)
            assert stored is not None and stored.to_bytes() == fake.signed.to_bytes()
            assert await _events(alice) == []
    # the message the blocked send left in the outbox goes to the new device on the
    # next connection, once the change is accepted
    async with harness.open("alice") as alice, fake.reconnected(harness.url):
        await alice.connect()
        assert await alice.pending_outbox() == 0
        assert await fake.read(alice) == "blocked 1"


@pytest.mark.asyncio
async def test_unverified_contact_substituted_is_repinned(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        old_device = bob.device_id
        await alice.send(bob_id, "hello old bob")
        (first,) = await _take(bob, 1)
        assert first.body == "hello old bob"
        old_list = await alice._stored_list(bob_id)
        assert old_list is not None
        assert await _session_exists(alice, bob_id, old_device)
        new_id = old_device ^ 1
        async with _substituted(harness, bob_id, new_id) as fake:
            spy = SendSpy(monkeypatch, bob_id)
            await alice.send(bob_id, "to whoever bob is now")
            # the old device's ciphertext was refused (Mismatch); the new key was pinned
            # and the message encrypted for its device only
            assert spy.take() == [([old_device], "Mismatch"), ([new_id], "Accepted")]
            assert await _events(alice) == [IdentityChanged(bob_id, verified=False)]
            assert not await _session_exists(alice, bob_id, old_device)
            assert await _session_exists(alice, bob_id, new_id)
            assert await fake.read(alice) == "to whoever bob is now"
            ident = await _identity(alice, bob_id)
            assert ident.pending is None
            assert ident.retired == (old_list.statement.master_pk,)
            assert ident.reported == (fake.master.public_key,)
            await alice.send(bob_id, "again")
            assert spy.take() == [([new_id], "Accepted")]
            assert await fake.read(alice) == "again"
            # refreshing again: the same key, no new event
            await _refresh(alice, bob_id)
            assert await alice.verification_state(bob_id) is VerificationState.UNVERIFIED
            # the relay serving the old list again is refused, without an event, and
            # the new pin stays
            old_bytes = old_list.to_bytes()

            async def replay(self: RelayConnection, user_id: str) -> bytes:
                return old_bytes

            monkeypatch.setattr(RelayConnection, "get_device_list", replay)
            with pytest.raises(IdentityError) as rolled:
                await _refresh(alice, bob_id)
            assert rolled.value.reason == "MasterKeyRetired"
            monkeypatch.undo()
            stored = await alice._stored_list(bob_id)
            assert stored is not None and stored.to_bytes() == fake.signed.to_bytes()
            assert await _events(alice) == []
        # the old device got nothing after the substitution (the relay dropped its
        # queue with the device; alice never addressed it again after the Mismatch)
        assert await relay.ctx.storage.messages.depth(bob_id, old_device) == 0


@pytest.mark.asyncio
async def test_verifying_the_new_number_accepts_the_change(
    harness: Harness, relay: RunningRelay
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        assert await alice.verify(bob_id, (await bob.safety_number(alice_id)).digits)
        async with _substituted(harness, bob_id, bob.device_id ^ 1) as fake:
            with pytest.raises(IdentityChangeBlocked):
                await _refresh(alice, bob_id)
            # the old number no longer verifies: the pending key's is what counts
            with pytest.raises(SafetyNumberMismatch):
                await alice.verify(bob_id, (await bob.safety_number(alice_id)).digits)
            assert await alice.verification_state(bob_id) is VerificationState.CHANGE_PENDING
            new_number = SafetyNumber.compute(
                bob_id, fake.master.public_key, alice_id, alice._ready()[0].master_pk
            )
            assert await alice.verify(bob_id, new_number.qr_payload()) is True
            assert await alice.is_verified(bob_id)
            stored = await alice._stored_list(bob_id)
            assert stored is not None and stored.to_bytes() == fake.signed.to_bytes()
            await alice.send(bob_id, "verified new bob")
            assert await fake.read(alice) == "verified new bob"
            assert await _events(alice) == [IdentityChanged(bob_id, verified=True)]


# --- equivocation and staleness ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_equivocation_is_refused_and_reported_once(
    harness: Harness, relay: RunningRelay
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        await alice.send(bob_id, "one")
        seen = await alice._stored_list(bob_id)
        assert seen is not None and seen.statement.version == 1
        # the relay serves another version 1 of bob's list, signed by bob's own master
        # key (a relay holding an old fork), with one more device
        master = bob._master
        assert master is not None
        extra = OurDevice.generate(bob_id, bob.device_id ^ 1, master.public_key, now_ms=now_ms())
        fork = SignedDeviceList.sign(
            DeviceList(
                bob_id,
                master.public_key,
                1,
                now_ms(),
                None,
                tuple(sorted((*seen.statement.devices, extra.entry()), key=lambda d: d.device_id)),
            ),
            master,
        )
        assert fork.statement.version == seen.statement.version
        assert fork.to_bytes() != seen.to_bytes()
        await _serve_list(relay, fork, _records(fork))
        for body in ("two", "three"):
            with pytest.raises(IdentityError) as caught:
                await alice.send(bob_id, body)
            assert caught.value.reason == "Equivocation"
        assert await _events(alice) == [DeviceListEquivocation(bob_id, 1)]
        stored = await alice._stored_list(bob_id)
        assert stored is not None and stored.to_bytes() == seen.to_bytes()
        # a different fork is another occurrence
        fork2 = SignedDeviceList.sign(
            DeviceList(bob_id, master.public_key, 1, now_ms() + 1, None, fork.statement.devices),
            master,
        )
        await _serve_list(relay, fork2, _records(fork2))
        with pytest.raises(IdentityError):
            await _refresh(alice, bob_id)
        assert await _events(alice) == [DeviceListEquivocation(bob_id, 1)]


@pytest.mark.asyncio
async def test_stale_list_is_reported_once(harness: Harness, relay: RunningRelay) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        await alice.send(bob_id, "fresh")
        bob_list = await alice._stored_list(bob_id)
        own_list = await alice._stored_list(alice_id)
        assert bob_list is not None and own_list is not None
        assert await _events(alice) == []
        harness.offsets["alice"] = 31 * DAY_MS
        spy_lists: list[str] = []
        original = RelayConnection.get_device_list

        async def counting(self: RelayConnection, user_id: str) -> bytes:
            spy_lists.append(user_id)
            return await original(self, user_id)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RelayConnection, "get_device_list", counting)
            await alice.send(bob_id, "a month later")
            # both lists were past re-signing: fetched again, still the same, stale
            assert spy_lists == [bob_id, alice_id]
            assert sorted(await _events(alice), key=repr) == sorted(
                [
                    DeviceListStale(bob_id, bob_list.statement.issued_at_ms),
                    DeviceListStale(alice_id, own_list.statement.issued_at_ms),
                ],
                key=repr,
            )
            await alice.send(bob_id, "right after")  # within the hour: not fetched
            assert spy_lists == [bob_id, alice_id]
            harness.offsets["alice"] += 2 * 60 * 60 * 1000
            await alice.send(bob_id, "two hours later")  # fetched again, same lists
            assert spy_lists == [bob_id, alice_id, bob_id, alice_id]
            await _refresh(alice, bob_id)
        assert await _events(alice) == []  # each stale list reported once
        got = await _take(bob, 4)
        assert [m.body for m in got] == ["fresh", "a month later", "right after", "two hours later"]
        assert {m.verification for m in got} == {VerificationState.UNVERIFIED}


@pytest.mark.asyncio
async def test_events_are_not_repeated_for_accepted_equal_lists(
    harness: Harness, relay: RunningRelay
) -> None:
    """Refreshing an unchanged fresh list records nothing; a Mismatch that is a real
    device change still does its usual work (no identity events)."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        for _ in range(3):
            await _refresh(alice, bob_id)
        assert await _events(alice) == []
        ident = await _identity(alice, bob_id)
        assert ident.reported == () and ident.retired == () and ident.equivocations == ()
        assert ident.stale_reported is None and ident.checked_at_ms > 0
