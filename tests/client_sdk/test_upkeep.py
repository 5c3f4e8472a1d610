"""Key upkeep without the app's help (issue 4 "Upkeep", DESIGN 4.2-4.4), end to end: a
real relay (uvicorn on 127.0.0.1, a SQLite database file), real WebSockets, real
encrypted SQLite stores, clocks injected into the clients. A relay serving keys that are
not the device's is played by writing into the relay's own storage."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from client_sdk._client import records, sessions
from client_sdk._client.upkeep import UpkeepRecord
from client_sdk.client import Client, Message
from client_sdk.errors import ConnectedElsewhere, ConnectionFailed
from client_sdk.events import (
    ConnectedElsewhereEvent,
    IdentityChanged,
    KeyCheckMismatch,
    NoOneTimePreKey,
    SecurityEvent,
    Undecryptable,
    decode_event,
)
from client_sdk.store import Table
from client_sdk.transport import DeviceIdentity, RelayConnection
from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.keys import SigningKeyPair
from e2ee.limits import DAY_MS, MAX_SEEN_BASE_KEYS, SIGNED_PREKEY_ROTATION_MS
from e2ee.prekeys import PreKeyBundle, PreKeyKind, SignedPublicPreKey
from server.storage.base import AccountRecord as RelayAccount
from server.storage.base import DeviceRecord, StoredPreKey
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 20.0
"""Bound for anything a test waits for."""
RETENTION_MS = 35 * DAY_MS
"""How long a superseded signed prekey is kept with the relay's default 30-day TTL."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """A clock a test sets (milliseconds)."""

    def __init__(self, start: int) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


class Harness:
    """Opens clients on one relay, each with its own store file, raw key and clock."""

    def __init__(self, relay: RunningRelay, tmp_path: Path) -> None:
        self.url = f"ws://127.0.0.1:{relay.port}"
        self.tmp_path = tmp_path
        self.keys: dict[str, bytes] = {}
        self.clocks: dict[str, Callable[[], int]] = {}

    def open(
        self, name: str, clock: Callable[[], int] | None = None
    ) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        if clock is not None:
            self.clocks[name] = clock
        return Client.open(
            self.url,
            store=self.tmp_path / f"{name}.db",
            key=key,
            origin=ORIGIN,
            clock=self.clocks.get(name, now_ms),
        )

    async def raw(self, client: Client) -> RelayConnection:
        """A connection authenticated as ``client``'s device (outside the client)."""
        device = client._device
        assert device is not None
        identity = DeviceIdentity(device.user_id, device.device_id, device.signing)
        return await RelayConnection.connect(self.url + "/v1/ws", origin=ORIGIN, identity=identity)


@pytest.fixture
def harness(relay: RunningRelay, tmp_path: Path) -> Harness:
    return Harness(relay, tmp_path)


def _uid(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``condition`` until it holds (bounded by ``WAIT``)."""
    async with asyncio.timeout(WAIT):
        while not await condition():
            await asyncio.sleep(0.01)


async def _take(client: Client, count: int) -> list[Message]:
    """The next ``count`` messages (each marked done)."""
    got: list[Message] = []
    async with asyncio.timeout(WAIT):
        async for message in client.messages():
            got.append(message)
            if len(got) == count:
                await message.done()
                break
    return got


@contextlib.asynccontextmanager
async def _receiving(client: Client) -> AsyncIterator[list[Message]]:
    """Run ``client``'s ``messages()`` loop in a task; the list fills as it yields.
    An error of the loop is raised when the block ends."""
    got: list[Message] = []

    async def loop() -> None:
        async for message in client.messages():
            got.append(message)

    task = asyncio.create_task(loop())
    try:
        yield got
    finally:
        if task.done():
            task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _connected(client: Client) -> RelayConnection:
    """Wait until ``client`` holds an open connection whose first upkeep pass ran."""

    async def ready() -> bool:
        conn = client._conn
        return (
            conn is not None
            and conn.is_open
            and client._upkeep_at_ms is not None
            and not client._upkeep_lock.locked()
        )

    await _until(ready)
    conn = client._conn
    assert conn is not None
    return conn


async def _counts(relay: RunningRelay, client: Client) -> tuple[int, int]:
    status = await relay.ctx.storage.prekeys.status(client.user_id, client.device_id)
    return status.one_time_left, status.kem_left


async def _served(relay: RunningRelay, client: Client) -> tuple[SignedPublicPreKey, ...]:
    """The signed and last-resort prekeys the relay serves for ``client``'s device."""
    status = await relay.ctx.storage.prekeys.status(client.user_id, client.device_id)
    assert status.signed_prekey is not None and status.last_resort is not None
    return (
        SignedPublicPreKey.from_value(cbor.decode(status.signed_prekey), PreKeyKind.SIGNED),
        SignedPublicPreKey.from_value(cbor.decode(status.last_resort), PreKeyKind.KEM_LAST_RESORT),
    )


async def _prekeys(client: Client) -> OurPreKeys:
    async with client._store.transaction() as tx:
        return await client._prekeys(tx)


async def _peek_events(client: Client) -> list[SecurityEvent]:
    """The stored events, without consuming them."""
    async with client._store.transaction() as tx:
        rows = await tx.scan(Table.EVENTS)
    return [decode_event(value) for _, value in rows]


async def _events(client: Client) -> list[SecurityEvent]:
    """The stored events, consumed."""
    return [item.event async for item in client.events(wait=False)]


def _check_ours(served: SignedPublicPreKey, client: Client, prekeys: OurPreKeys) -> None:
    """``served`` is the client's current prekey of its kind, signed by its device."""
    device = client._device
    assert device is not None
    served.verify(device.user_id, device.device_id, device.signing.public_key)
    if served.kind is PreKeyKind.SIGNED:
        assert served.prekey_id == prekeys.current_signed
        private = prekeys.signed_prekey(served.prekey_id)
        assert private is not None and private.public_key == served.public_key
    else:
        assert served.prekey_id == prekeys.current_last_resort
        held = prekeys.kem_prekey(served.prekey_id)
        assert held is not None and held[0].public_key == served.public_key and not held[1]


# --- refill ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_claims_trigger_a_refill_to_full_batches(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """80 claims leave 20 of each kind: the relay pushes ``prekeys_low``, bob uploads
    80 + 80 prekeys whose private halves were committed first, under ids never used
    before, and the relay holds 100 of each again."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        next_id_before = (await _prekeys(bob)).next_id
        uploads: list[tuple[list[int], list[int]]] = []
        gate = asyncio.Event()
        gate.set()
        original_upload = RelayConnection.upload_prekeys
        original_check = RelayConnection.key_check

        async def upload_spy(self: RelayConnection, **kwargs: Any) -> None:
            if self is bob._conn:
                one_time = [p.prekey_id for p in kwargs["one_time"]]
                kem = [p.prekey_id for p in kwargs["kem"]]
                held = await _prekeys(bob)  # committed before the upload leaves
                assert all(held.one_time_prekey(i) is not None for i in one_time)
                assert all(held.kem_prekey(i) is not None for i in kem)
                uploads.append((one_time, kem))
            await original_upload(self, **kwargs)

        async def gated_check(self: RelayConnection) -> Any:
            if self is bob._conn:
                await gate.wait()
            return await original_check(self)

        monkeypatch.setattr(RelayConnection, "upload_prekeys", upload_spy)
        monkeypatch.setattr(RelayConnection, "key_check", gated_check)
        conn = await alice._connection()
        claimed: list[PreKeyBundle] = []
        async with _receiving(bob):
            await _connected(bob)
            assert await _counts(relay, bob) == (100, 100) and uploads == []
            # bob's passes wait until all 80 claims are done, so the counts they read
            # are final and the refill restores exactly 100 of each
            gate.clear()
            for _ in range(80):
                claimed.append(
                    PreKeyBundle.from_bytes(await conn.claim_bundle(bob_id, bob.device_id))
                )
            assert await _counts(relay, bob) == (20, 20)
            gate.set()

            async def refilled() -> bool:
                return await _counts(relay, bob) == (100, 100)

            await _until(refilled)
            # and again: the second refill takes fresh ids too
            gate.clear()
            for _ in range(80):
                claimed.append(
                    PreKeyBundle.from_bytes(await conn.claim_bundle(bob_id, bob.device_id))
                )
            gate.set()
            await _until(refilled)
        assert [(len(one_time), len(kem)) for one_time, kem in uploads] == [(80, 80), (80, 80)]
        uploaded = [i for one_time, kem in uploads for i in (*one_time, *kem)]
        assert len(set(uploaded)) == len(uploaded)
        assert min(uploaded) >= next_id_before  # from the persisted counter: never reused
        one_time_ids = [b.one_time_prekey.prekey_id for b in claimed if b.one_time_prekey]
        kem_ids = [b.kem_prekey.prekey_id for b in claimed if b.kem_prekey]
        assert len(one_time_ids) == len(kem_ids) == 160  # never ran dry
        assert all(b.kem_prekey and b.kem_prekey.kind is PreKeyKind.KEM for b in claimed)
        assert len(set(one_time_ids) | set(kem_ids)) == 320  # no id served twice
        assert set(one_time_ids[:80]) | set(kem_ids[:80]) <= set(range(1, next_id_before))
        assert await _events(bob) == []


@pytest.mark.asyncio
async def test_refill_at_connect_after_claims_while_offline(
    harness: Harness, relay: RunningRelay
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        conn = await alice._connection()
        for _ in range(90):
            await conn.claim_bundle(bob_id, bob.device_id)
        assert await _counts(relay, bob) == (10, 10)
        await bob.connect()  # nobody was connected to hear prekeys_low
        assert await _counts(relay, bob) == (100, 100)
        # above the threshold nothing is uploaded: 76 left stay 76
        for _ in range(24):
            await conn.claim_bundle(bob_id, bob.device_id)
    async with harness.open("bob") as bob:
        await bob.connect()
        assert await _counts(relay, bob) == (76, 76)


# --- signed prekey rotation and retention ------------------------------------------------


@pytest.mark.asyncio
async def test_signed_prekey_rotates_weekly_and_old_one_decrypts_until_retention_ends(
    harness: Harness, relay: RunningRelay
) -> None:
    """Carol, dave and erin each send bob a pre-key message against his first signed
    prekey while he is offline. Seven days later bob rotates at connect and still
    decrypts carol's; on the last millisecond of the retention (35 days after the
    rotation) dave's still decrypts; one millisecond later the old key is gone and
    erin's is refused (``Undecryptable``, ``UnknownPreKey``)."""
    start = now_ms()
    clock = Clock(start)
    bob_id = _uid("bob")
    senders = {name: _uid(name) for name in ("carol", "dave", "erin")}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(harness.open(name)) for name in senders}
        async with harness.open("bob", clock) as bob:
            await bob.register(bob_id)
            for name, client in clients.items():
                await client.register(senders[name])
            for name, client in clients.items():
                await client.send(bob_id, f"from {name}")
            first, _ = await _served(relay, bob)
            assert first.created_at_ms == start
            bob_device = bob.device_id

        rotation_at = start + SIGNED_PREKEY_ROTATION_MS
        clock.ms = rotation_at - 1
        async with harness.open("bob") as bob:
            await bob.connect()  # one millisecond early: no rotation
            assert (await _served(relay, bob))[0] == first
        clock.ms = rotation_at
        async with harness.open("bob") as bob:
            await bob.connect()
            second, _ = await _served(relay, bob)
            prekeys = await _prekeys(bob)
            _check_ours(second, bob, prekeys)
            assert second.prekey_id > first.prekey_id and second.created_at_ms == rotation_at
            assert prekeys.signed_prekey(first.prekey_id) is not None  # superseded, kept
            (late,) = await _take(bob, 1)
            assert (late.body, late.sender_user) == ("from carol", senders["carol"])

        clock.ms = rotation_at + RETENTION_MS  # the last moment of the retention
        async with harness.open("bob") as bob:
            await bob.connect()
            third, _ = await _served(relay, bob)
            assert third.prekey_id > second.prekey_id  # the second one was due too
            assert (await _prekeys(bob)).signed_prekey(first.prekey_id) is not None
            (later,) = await _take(bob, 1)
            assert (later.body, later.sender_user) == ("from dave", senders["dave"])

        clock.ms = rotation_at + RETENTION_MS + 1
        async with harness.open("bob") as bob:
            await bob.connect()
            prekeys = await _prekeys(bob)
            assert prekeys.signed_prekey(first.prekey_id) is None
            assert prekeys.signed_prekey(second.prekey_id) is not None
            assert (await _served(relay, bob))[0] == third  # nothing due: no rotation
            erin = clients["erin"]

            async def refused() -> bool:
                return Undecryptable(senders["erin"], erin.device_id, "UnknownPreKey") in (
                    await _peek_events(bob)
                )

            async with _receiving(bob) as got:
                await _until(refused)

                async def acked() -> bool:
                    return await relay.ctx.storage.messages.depth(bob_id, bob_device) == 0

                await _until(acked)
            assert got == []
            undecryptable = [e for e in await _events(bob) if isinstance(e, Undecryptable)]
            assert undecryptable == [
                Undecryptable(senders["erin"], erin.device_id, "UnknownPreKey")
            ]


@pytest.mark.asyncio
async def test_rotation_checked_hourly_in_the_messages_loop(
    harness: Harness, relay: RunningRelay
) -> None:
    """A connection that stays open rotates within the hour the key falls due: the
    loop runs a pass when it next reads the relay, at most once per hour of clock."""
    start = now_ms()
    clock = Clock(start)
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob", clock) as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        first, _ = await _served(relay, bob)
        checks: list[int] = []
        original = RelayConnection.key_check

        async def counting(self: RelayConnection) -> Any:
            if self is bob._conn:
                checks.append(clock.ms)
            return await original(self)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RelayConnection, "key_check", counting)
            async with _receiving(bob) as got:
                await _connected(bob)
                assert checks == [start]
                # The pass runs when the loop next reads the relay: the step that
                # fetches message n ran its hook once message n is yielded.
                late = start + SIGNED_PREKEY_ROTATION_MS - 1
                clock.ms = late
                await alice.send(bob_id, "one")
                await _until(lambda: _length_is(got, 1))
                await alice.send(bob_id, "two")
                await _until(lambda: _length_is(got, 2))
                assert checks == [start, late]  # a pass, one millisecond before due
                clock.ms = late + 3_599_999  # within the hour: not even a check
                await alice.send(bob_id, "three")
                await _until(lambda: _length_is(got, 3))
                assert checks == [start, late]
                clock.ms = late + 3_600_000  # an hour after the last pass: due
                await alice.send(bob_id, "four")
                await _until(lambda: _length_is(got, 4))

                async def rotated() -> bool:
                    return (await _served(relay, bob))[0].prekey_id != first.prekey_id

                await _until(rotated)
                assert checks == [start, late, late + 3_600_000]
            assert [m.body for m in got] == ["one", "two", "three", "four"]
        second, _ = await _served(relay, bob)
        _check_ours(second, bob, await _prekeys(bob))


async def _length_is(items: list[Message], count: int) -> bool:
    return len(items) == count


# --- last-resort KEM prekey ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_last_resort_prekey_replaced_after_use(harness: Harness, relay: RunningRelay) -> None:
    """Alice claims every one-time prekey of bob's while he is offline; her session then
    uses his last-resort KEM prekey. When bob decrypts it he refills, replaces the
    last-resort key (a new id at the relay) and keeps the used one for the session's
    later pre-key messages."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        conn = await alice._connection()
        for _ in range(100):
            await conn.claim_bundle(bob_id, bob.device_id)
        assert await _counts(relay, bob) == (0, 0)
        _, used = await _served(relay, bob)
        next_id_before = (await _prekeys(bob)).next_id
        await alice.send(bob_id, "through the last resort")
        assert await _events(alice) == [NoOneTimePreKey(bob_id, bob.device_id)]
        (message,) = await _take(bob, 1)
        assert message.body == "through the last resort"
        assert await _counts(relay, bob) == (100, 100)  # refilled at connect

        async def replaced() -> bool:
            return (await _served(relay, bob))[1].prekey_id != used.prekey_id

        await _until(replaced)
        _, fresh = await _served(relay, bob)
        prekeys = await _prekeys(bob)
        _check_ours(fresh, bob, prekeys)
        assert fresh.prekey_id >= next_id_before
        assert prekeys.kem_prekey(used.prekey_id) is not None  # superseded, kept
        async with bob._store.transaction() as tx:
            stored = await tx.get(Table.PREKEYS, records.UPKEEP)
        assert stored is not None
        record = UpkeepRecord.from_bytes(stored)
        assert record.last_resort == fresh and not record.last_resort_pending
        assert record.last_resort_used is None
        assert await _events(bob) == [NoOneTimePreKey(alice_id, alice.device_id)]
        # alice's next message is still a pre-key message naming the used key: it
        # decrypts, and replaces nothing more
        await alice.send(bob_id, "again")
        (again,) = await _take(bob, 1)
        assert again.body == "again"
        assert (await _served(relay, bob))[1] == fresh


@pytest.mark.asyncio
async def test_full_base_key_ledger_rotates_signed_and_last_resort(
    harness: Harness, relay: RunningRelay
) -> None:
    """Past ``MAX_SEEN_BASE_KEYS`` base keys under the current signed prekey, both the
    signed prekey and the last-resort KEM prekey rotate (DESIGN 4.3); the ledger of the
    superseded key stays until that key expires and triggers nothing more."""
    bob_id = _uid("bob")
    async with harness.open("bob") as bob:
        await bob.register(bob_id)
        spk, last_resort = await _served(relay, bob)
        async with bob._store.transaction() as tx:
            prekeys = await bob._prekeys(tx)
            prekeys.seen_base_keys[(spk.prekey_id, last_resort.prekey_id)] = {
                secrets.token_bytes(32) for _ in range(MAX_SEEN_BASE_KEYS + 1)
            }
            await tx.put(Table.PREKEYS, records.PREKEYS, prekeys.to_bytes())
        await bob.connect()
        new_spk, new_last_resort = await _served(relay, bob)
        prekeys = await _prekeys(bob)
        assert new_spk.prekey_id != spk.prekey_id
        assert new_last_resort.prekey_id != last_resort.prekey_id
        _check_ours(new_spk, bob, prekeys)
        _check_ours(new_last_resort, bob, prekeys)
        assert prekeys.needs_rotation  # the old ledger is still there ...
    async with harness.open("bob") as bob:
        await bob.connect()
        assert await _served(relay, bob) == (new_spk, new_last_resort)  # ... and idle
        assert await _events(bob) == []


# --- the key-consistency check -------------------------------------------------------------


def _foreign_prekeys(bob: Client) -> tuple[SignedPublicPreKey, SignedPublicPreKey]:
    """A signed prekey bob's device signed but never held (id unused), and a
    last-resort prekey signed by a device key that is not bob's."""
    device = bob._device
    assert device is not None
    now = now_ms()
    foreign = OurPreKeys()
    foreign.next_id = 4_000_000_000
    spk = foreign.rotate_signed_prekey(device, now)
    impostor = OurDevice.generate(device.user_id, device.device_id, device.master_pk)
    last_resort = foreign.rotate_last_resort(impostor, now)
    return spk, last_resort


def _stored_prekey(prekey: SignedPublicPreKey) -> StoredPreKey:
    return StoredPreKey(prekey.prekey_id, cbor.encode(prekey.to_value()))


@pytest.mark.asyncio
async def test_key_check_replaces_keys_the_relay_serves_wrongly(
    harness: Harness, relay: RunningRelay
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        before = await _served(relay, bob)
        await bob.connect()
        assert await _events(bob) == []  # consistent: nothing to report
        bob_device = bob.device_id
        spk, last_resort = _foreign_prekeys(bob)
    await relay.ctx.storage.prekeys.upload(
        bob_id, bob_device, _stored_prekey(spk), [], [], _stored_prekey(last_resort)
    )
    async with harness.open("bob") as bob:
        await bob.connect()
        assert await _events(bob) == [
            KeyCheckMismatch("signed_prekey"),
            KeyCheckMismatch("last_resort"),
        ]
        served = await _served(relay, bob)
        prekeys = await _prekeys(bob)
        for new, old, planted in zip(served, before, (spk, last_resort), strict=True):
            _check_ours(new, bob, prekeys)
            assert new.prekey_id not in (old.prekey_id, planted.prekey_id)
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await bob.connect()
        assert await _events(bob) == []  # fixed: the next check finds nothing
        assert await _served(relay, bob) == served
        await alice.send(bob_id, "on the fresh keys")
        (message,) = await _take(bob, 1)
        assert message.body == "on the fresh keys"


@pytest.mark.asyncio
async def test_key_check_reuploads_an_unconfirmed_rotation_without_an_event(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops between committing a rotation and the relay's answer: the
    next connect uploads the same key again; that is no mismatch."""
    start = now_ms()
    clock = Clock(start)
    bob_id = _uid("bob")
    async with harness.open("bob", clock) as bob:
        await bob.register(bob_id)
        first, _ = await _served(relay, bob)
        original = RelayConnection.upload_prekeys

        async def lost(self: RelayConnection, **kwargs: Any) -> None:
            raise ConnectionFailed("simulated loss before the upload")

        monkeypatch.setattr(RelayConnection, "upload_prekeys", lost)
        clock.ms = start + SIGNED_PREKEY_ROTATION_MS
        await bob.connect()  # the pass fails quietly; the connection is usable
        monkeypatch.setattr(RelayConnection, "upload_prekeys", original)
        prekeys = await _prekeys(bob)
        assert prekeys.current_signed != first.prekey_id
        assert (await _served(relay, bob))[0] == first
        rotated = prekeys.current_signed
    async with harness.open("bob") as bob:
        await bob.connect()
        served, _ = await _served(relay, bob)
        assert served.prekey_id == rotated
        _check_ours(served, bob, await _prekeys(bob))
        assert await _events(bob) == []


@pytest.mark.asyncio
async def test_key_check_unconfirmed_upload_the_relay_saw_is_a_mismatch(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay stored a rotation but its answer was lost, and it then serves another
    key: uploading the same id again is refused as reused, so it is reported and
    replaced by a fresh key."""
    start = now_ms()
    clock = Clock(start)
    bob_id = _uid("bob")
    async with harness.open("bob", clock) as bob:
        await bob.register(bob_id)
        original = RelayConnection.upload_prekeys

        async def answer_lost(self: RelayConnection, **kwargs: Any) -> None:
            await original(self, **kwargs)
            raise ConnectionFailed("simulated loss of the answer")

        monkeypatch.setattr(RelayConnection, "upload_prekeys", answer_lost)
        clock.ms = start + SIGNED_PREKEY_ROTATION_MS
        await bob.connect()
        monkeypatch.setattr(RelayConnection, "upload_prekeys", original)
        stored, _ = await _served(relay, bob)
        assert stored.prekey_id == (await _prekeys(bob)).current_signed
        planted, _ = _foreign_prekeys(bob)
        bob_device = bob.device_id
    await relay.ctx.storage.prekeys.upload(
        bob_id, bob_device, _stored_prekey(planted), [], [], None
    )
    async with harness.open("bob") as bob:
        await bob.connect()
        assert await _events(bob) == [KeyCheckMismatch("signed_prekey")]
        served, _ = await _served(relay, bob)
        _check_ours(served, bob, await _prekeys(bob))
        assert served.prekey_id not in (stored.prekey_id, planted.prekey_id)
        assert await _counts(relay, bob) == (100, 100)


@pytest.mark.asyncio
async def test_key_check_reports_a_device_list_the_account_never_signed(
    harness: Harness, relay: RunningRelay
) -> None:
    bob_id = _uid("bob")
    async with harness.open("bob") as bob:
        await bob.register(bob_id)
        own = await bob._stored_list(bob_id)
        assert own is not None
        bob_device = bob.device_id
    # the relay serves bob's account under a master key that is not his
    master = SigningKeyPair.generate()
    statement = own.statement
    forged = SignedDeviceList.sign(
        DeviceList(bob_id, master.public_key, 2, now_ms(), own.digest, statement.devices), master
    )
    current = await relay.ctx.storage.accounts.get_account(bob_id)
    assert current is not None
    await relay.ctx.storage.accounts.replace_device_list(
        RelayAccount(
            user_id=bob_id,
            master_pk=master.public_key,
            list_version=2,
            signed_list=forged.to_bytes(),
            list_digest=forged.digest,
            devices=tuple(
                DeviceRecord(bob_id, d.device_id, d.signing_pk, d.x25519_ik, d.pq)
                for d in statement.devices
            ),
        ),
        current.list_version,
        now_ms(),
    )
    async with harness.open("bob") as bob:
        await bob.connect()
        events = await _events(bob)
        assert KeyCheckMismatch("device_list") in events
        assert [e for e in events if isinstance(e, KeyCheckMismatch)] == [
            KeyCheckMismatch("device_list")
        ]
        assert any(isinstance(e, IdentityChanged) and e.user_id == bob_id for e in events)
        assert await bob._stored_list(bob_id) == own  # the forged list was not accepted
        assert bob.device_id == bob_device


# --- connected elsewhere --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_connected_elsewhere_reports_and_reconnects(
    harness: Harness, relay: RunningRelay
) -> None:
    """Another connection authenticates as bob's device while his ``messages()`` loop
    runs: the relay closes bob's; the loop records ``ConnectedElsewhereEvent`` (it will
    reconnect), reconnects (which closes the other one) and still receives."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice") as alice, harness.open("bob") as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        async with _receiving(bob) as got:
            first = await _connected(bob)
            other = await harness.raw(bob)

            async def reconnected() -> bool:
                conn = bob._conn
                return conn is not None and conn is not first and conn.is_open

            await _until(reconnected)
            assert not first.is_open
            assert isinstance(await first.wait_closed(), ConnectedElsewhere)
            assert isinstance(await other.wait_closed(), ConnectedElsewhere)
            await alice.send(bob_id, "after the takeover")
            await _until(lambda: _length_is(got, 1))
            assert got[0].body == "after the takeover"
        assert await _events(bob) == [ConnectedElsewhereEvent(reconnecting=True)]


@pytest.mark.asyncio
async def test_old_skipped_keys_and_dedupe_records_expire(harness: Harness) -> None:
    clock = Clock(now_ms())
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with harness.open("alice", clock) as alice, harness.open("bob", clock) as bob:
        await alice.register(alice_id)
        await bob.register(bob_id)
        for body in ("one", "two", "three"):
            await alice.send(bob_id, body)
        original = bob._receive
        seen: list[int] = []

        async def miss_the_second(conn: RelayConnection, delivery: Any) -> None:
            seen.append(delivery.seq)
            if len(seen) == 2:  # acknowledged, never decrypted: its key stays skipped
                await conn.ack([delivery.seq])
                return
            await original(conn, delivery)

        bob._receive = miss_the_second  # type: ignore[method-assign]
        assert [m.body for m in await _take(bob, 2)] == ["one", "three"]
        lookup = bob._store.lookup_key(alice_id, alice.device_id)

        async def state() -> tuple[int, int]:
            async with bob._store.transaction() as tx:
                loaded = await sessions.load(tx, lookup, skipped=True)
                assert loaded.record is not None
                skipped = sum(len(s.ratchet.skipped) for s in loaded.record.sessions)
                return skipped, await tx.count(Table.DEDUPE)

        assert await state() == (1, 2)
        clock.ms += 30 * DAY_MS  # exactly 30 days: still kept
        await bob._expire_local_state()
        assert await state() == (1, 2)
        clock.ms += 1 * DAY_MS  # the skipped key is over 30 days old; dedupe outlives it
        await bob._expire_local_state()
        assert await state() == (0, 2)
        clock.ms += 65 * DAY_MS  # past any relay TTL this client keeps (90 + 5 days)
        await bob._expire_local_state()
        assert await state() == (0, 0)
        # the session itself is active and kept: the conversation goes on
        await alice.send(bob_id, "four")
        assert [m.body for m in await _take(bob, 1)] == ["four"]
