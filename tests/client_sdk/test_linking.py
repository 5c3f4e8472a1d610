"""Devices (issue 4 "API"): linking through the relay's real link mailbox, removal, and
delivery to every device of both users. A real relay (uvicorn on 127.0.0.1, a SQLite
database file), real WebSockets and HTTP, real encrypted SQLite stores."""

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

from client_sdk._client import linking, records
from client_sdk._client.linking import LinkingMixin
from client_sdk._client.registration import RegistrationMixin
from client_sdk.client import Client, Message
from client_sdk.errors import (
    BadLinkCode,
    ConnectionFailed,
    DeviceRemoved,
    LinkRejected,
    LinkTimeout,
    UsageError,
)
from client_sdk.events import DeviceAdded, DeviceRemovedEvent, SecurityEvent, decode_event
from client_sdk.store import Table
from client_sdk.transport.http import put_link_slot
from e2ee.link import LinkCode
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 20.0
"""Bound for anything a test waits for."""
DAY_MS = 24 * 60 * 60 * 1000


def NOW_MS() -> int:
    return time.time_ns() // 1_000_000


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

    def open(
        self,
        name: str,
        *,
        link_code: str | bytes | None = None,
        link_timeout: float = WAIT,
        clock: Callable[[], int] = NOW_MS,
    ) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        return Client.open(
            self.url,
            store=self.tmp_path / f"{name}.db",
            key=key,
            origin=ORIGIN,
            link_code=link_code,
            link_timeout=link_timeout,
            clock=clock,
        )


@pytest.fixture
def harness(relay: RunningRelay, tmp_path: Path) -> Harness:
    return Harness(relay, tmp_path)


def _uid(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}"


async def _link(
    stack: contextlib.AsyncExitStack,
    harness: Harness,
    primary: Client,
    name: str,
    *,
    qr: bool = False,
) -> Client:
    """Link a new device ``name`` to ``primary``'s account through the real flow: the
    primary's ``complete`` runs while the new device's ``open`` waits for the answer."""
    offer = await primary.link_device()
    completing = asyncio.create_task(offer.complete(timeout=WAIT))
    try:
        code: str | bytes = offer.qr_payload if qr else offer.code
        client = await stack.enter_async_context(harness.open(name, link_code=code))
        device_id = await asyncio.wait_for(completing, WAIT)
    finally:
        completing.cancel()
    assert client.is_registered and not client.is_primary
    assert (client.user_id, client.device_id) == (primary.user_id, device_id)
    return client


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
    return [item.event async for item in client.events(wait=False)]


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT):
        while not await condition():
            await asyncio.sleep(0.01)


Seen = tuple[bytes, str, int, str | bytes, str | None]


def _seen(messages: list[Message]) -> list[Seen]:
    return [(m.client_msg_id, m.sender_user, m.sender_device, m.body, m.sent_to) for m in messages]


@pytest.mark.asyncio
async def test_two_and_three_devices_every_message_everywhere_once_then_removal(
    harness: Harness, relay: RunningRelay
) -> None:
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with contextlib.AsyncExitStack() as stack:
        a1 = await stack.enter_async_context(harness.open("a1"))
        b1 = await stack.enter_async_context(harness.open("b1"))
        await a1.register(alice_id)
        await b1.register(bob_id)
        assert a1.is_primary and b1.is_primary
        a2 = await _link(stack, harness, a1, "a2")
        b2 = await _link(stack, harness, b1, "b2")
        b3 = await _link(stack, harness, b1, "b3", qr=True)
        assert await a1.own_devices() == tuple(sorted((a1.device_id, a2.device_id)))
        assert await b1.own_devices() == tuple(sorted((b1.device_id, b2.device_id, b3.device_id)))
        assert (await relay.ctx.storage.accounts.get_account(bob_id)).list_version == 3  # type: ignore[union-attr]
        alice, bob = [a1, a2], [b1, b2, b3]
        everyone = alice + bob

        # every device sends one message to the other user
        sent: dict[int, tuple[bytes, str, int, str]] = {}
        for index, client in enumerate(everyone):
            to = bob_id if client in alice else alice_id
            body = f"from {client.user_id}.{client.device_id}"
            sent[index] = (await client.send(to, body), client.user_id, client.device_id, body)
        got = await asyncio.gather(*(_take(c, 4) for c in everyone))
        for index, client in enumerate(everyone):
            expected: set[Seen] = set()
            for sender_index, (msg_id, user, device, body) in sent.items():
                if sender_index == index:
                    continue
                if user == client.user_id:  # our own other device's copy
                    to = bob_id if user == alice_id else alice_id
                    expected.add((msg_id, user, device, body, to))
                else:
                    expected.add((msg_id, user, device, body, None))
            seen = _seen(got[index])
            assert len(seen) == 4 and set(seen) == expected, client

        # nothing else was queued for anyone: the next message each device sees is a
        # marker sent after the round (the relay delivers in order)
        marker_a = await b1.send(alice_id, "marker to alice")
        marker_b = await a1.send(bob_id, "marker to bob")
        markers = await asyncio.gather(*(_take(c, 1) for c in everyone))
        for client, (message,) in zip(everyone, markers, strict=True):
            if client is b1:
                assert (message.client_msg_id, message.sent_to) == (marker_b, None)
            elif client is a1:
                assert (message.client_msg_id, message.sent_to) == (marker_a, None)
            elif client in alice:
                assert message.client_msg_id in (marker_a, marker_b)
        # a2 and b2, b3 got two markers each (one direct, one copy): take the second
        rest = await asyncio.gather(*(_take(c, 1) for c in (a2, b2, b3)))
        for client, first, (second,) in zip(
            (a2, b2, b3), (markers[1], markers[3], markers[4]), rest, strict=True
        ):
            ids = {first[0].client_msg_id, second.client_msg_id}
            assert ids == {marker_a, marker_b}, client

        # own-account changes are reported: on the primaries when they linked, on a
        # secondary when it learned of a later device (notice or mismatch), once
        assert DeviceAdded(alice_id, a2.device_id) in await _events(a1)
        b1_events = await _events(b1)
        assert DeviceAdded(bob_id, b2.device_id) in b1_events
        assert DeviceAdded(bob_id, b3.device_id) in b1_events
        assert (await _events(b2)).count(DeviceAdded(bob_id, b3.device_id)) == 1

        # alice's primary removes a2 while a2 is reading
        removed = a2.device_id
        a2_conn = a2._conn
        assert a2_conn is not None and a2_conn.is_open
        reading = asyncio.create_task(_take(a2, 1))

        async def a2_reading() -> bool:
            return a2._receive_lock.locked()  # held while a step waits for an event

        await _until(a2_reading)
        await a1.remove_device(removed)
        with pytest.raises(DeviceRemoved):
            await asyncio.wait_for(reading, WAIT)
        assert isinstance(await a2_conn.wait_closed(), DeviceRemoved)
        assert await a1.own_devices() == (a1.device_id,)
        assert DeviceRemovedEvent(alice_id, removed) in await _events(a1)

        # messages sent afterwards reach only the remaining devices
        after = {c.device_id: await c.send(alice_id, f"after from {c.device_id}") for c in bob}
        after_a1 = await a1.send(bob_id, "after from alice")
        (a1_got, b1_got, b2_got, b3_got) = await asyncio.gather(
            _take(a1, 3), _take(b1, 3), _take(b2, 3), _take(b3, 3)
        )
        assert {m.client_msg_id for m in a1_got} == set(after.values())
        for client, got_after in ((b1, b1_got), (b2, b2_got), (b3, b3_got)):
            copies = {v for k, v in after.items() if k != client.device_id}
            assert {m.client_msg_id for m in got_after} == copies | {after_a1}, client
            # each bob device refreshed alice's list on its send and reports the removal
            assert DeviceRemovedEvent(alice_id, removed) in await _events(client)
        assert await relay.ctx.storage.messages.depth(alice_id, removed) == 0
        account = await relay.ctx.storage.accounts.get_account(alice_id)
        assert account is not None and account.list_version == 3
        assert [d.device_id for d in account.devices] == [a1.device_id]


async def _tamper_slot(
    relay: RunningRelay, monkeypatch: pytest.MonkeyPatch, slot: int
) -> list[int]:
    """Make the relay return the ``slot`` blob of every mailbox with one bit flipped (a
    relay modifying what it stores); returns the list of tampered slots served."""
    links = relay.ctx.storage.links
    original = links.take
    served: list[int] = []

    async def take(link_id: bytes, which: int, now_ms: int) -> bytes | None:
        blob = await original(link_id, which, now_ms)
        if blob is not None and which == slot:
            served.append(which)
            blob = blob[:-1] + bytes([blob[-1] ^ 1])
        return blob

    monkeypatch.setattr(links, "take", take)
    return served


async def _unchanged(relay: RunningRelay, primary: Client) -> None:
    account = await relay.ctx.storage.accounts.get_account(primary.user_id)
    assert account is not None and account.list_version == 1
    assert await primary.own_devices() == (primary.device_id,)
    assert not [e for e in await _events(primary) if isinstance(e, DeviceAdded)]


@pytest.mark.asyncio
async def test_wrong_code_fails_typed_and_leaves_the_list(
    harness: Harness, relay: RunningRelay
) -> None:
    async with harness.open("a1") as a1:
        await a1.register(_uid("alice"))
        offer = await a1.link_device()
        real = LinkCode.parse(offer.qr_payload)
        wrong = LinkCode(real.mailbox_id, secrets.token_bytes(32))  # same mailbox
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        with pytest.raises(LinkRejected):
            async with harness.open("new", link_code=wrong.text):
                pass  # pragma: no cover - open raises
        with pytest.raises(LinkRejected):
            await asyncio.wait_for(completing, WAIT)
        await _unchanged(relay, a1)
        with pytest.raises(UsageError, match="used"):
            await offer.complete(timeout=WAIT)
    async with harness.open("new") as new:
        assert not new.is_registered


@pytest.mark.asyncio
async def test_tampered_request_fails_typed_and_leaves_the_list(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness.open("a1") as a1:
        await a1.register(_uid("alice"))
        served = await _tamper_slot(relay, monkeypatch, 0)
        offer = await a1.link_device()
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        with pytest.raises(LinkRejected, match="refused"):
            async with harness.open("new", link_code=offer.code):
                pass  # pragma: no cover - open raises
        with pytest.raises(LinkRejected):
            await asyncio.wait_for(completing, WAIT)
        assert served == [0]
        await _unchanged(relay, a1)


@pytest.mark.asyncio
async def test_tampered_answer_is_refused_by_the_new_device(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness.open("a1") as a1:
        await a1.register(_uid("alice"))
        served = await _tamper_slot(relay, monkeypatch, 1)
        offer = await a1.link_device()
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        with pytest.raises(LinkRejected, match="did not open"):
            async with harness.open("new", link_code=offer.code):
                pass  # pragma: no cover - open raises
        # the primary did its part (it cannot know the answer was modified)
        new_id = await asyncio.wait_for(completing, WAIT)
        assert served == [1] and new_id in await a1.own_devices()
    async with harness.open("new") as new, new._store.transaction() as tx:
        # nothing half-registered: no account, no pending link left behind
        assert not new.is_registered
        assert await tx.count(Table.OWN_DEVICE) == 0 and await tx.count(Table.META) == 0


@pytest.mark.asyncio
async def test_bad_codes_are_typed_and_store_nothing(harness: Harness) -> None:
    code = LinkCode.generate().text
    mistyped = code[:7] + ("A" if code[7] != "A" else "B") + code[8:]
    for bad in ("", "hello", mistyped, b"\x00\x01", code[:-2]):
        with pytest.raises(BadLinkCode):
            async with harness.open("new", link_code=bad):
                pass  # pragma: no cover - open raises
    async with harness.open("new") as new, new._store.transaction() as tx:
        assert not new.is_registered and await tx.count(Table.META) == 0


@pytest.mark.asyncio
async def test_timeouts_are_resumable(harness: Harness, relay: RunningRelay) -> None:
    """The new device gives up waiting (as after a crash while waiting) and resumes
    with the same code; the primary's ``complete`` times out and is called again."""
    async with harness.open("a1") as a1:
        await a1.register(_uid("alice"))
        offer = await a1.link_device()
        with pytest.raises(LinkTimeout):
            await offer.complete(timeout=0.3)  # nobody wrote yet
        with pytest.raises(LinkTimeout):
            async with harness.open("new", link_code=offer.code, link_timeout=0.3):
                pass  # pragma: no cover - open raises
        async with harness.open("new") as pending:
            assert not pending.is_registered and pending.link_pending
            with pytest.raises(UsageError, match="linking"):
                await pending.register(_uid("other"))
            assert pending.link_pending  # the refused register changed nothing
        # the request is in the mailbox; the primary takes it now
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        async with harness.open("new", link_code=offer.code) as new:
            new_id = await asyncio.wait_for(completing, WAIT)
            assert new.is_registered and new.device_id == new_id
            assert await a1.own_devices() == tuple(sorted((a1.device_id, new_id)))
            await a1.send(a1.user_id, "note to self")
            (message,) = await _take(new, 1)
            assert (message.body, message.sender_device) == ("note to self", a1.device_id)
        # reopening with the same code only finishes what may be left
        async with harness.open("new", link_code=offer.code) as again:
            assert again.is_registered and again.device_id == new_id
        async with harness.open("new") as plain:
            assert plain.is_registered and plain.device_id == new_id
            assert not plain.link_pending and not plain.is_primary
        # the code is spent: another new store using it is refused at once
        with pytest.raises(LinkRejected, match="used already"):
            async with harness.open("other", link_code=offer.code):
                pass  # pragma: no cover - open raises
        async with harness.open("other") as other:
            assert not other.is_registered and not other.link_pending


@pytest.mark.asyncio
async def test_only_the_primary_manages_devices(harness: Harness) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a1 = await stack.enter_async_context(harness.open("a1"))
        await a1.register(_uid("alice"))
        a2 = await _link(stack, harness, a1, "a2")
        with pytest.raises(UsageError):
            await a2.link_device()
        with pytest.raises(UsageError):
            await a2.remove_device(a1.device_id)
        with pytest.raises(UsageError):
            await a1.remove_device(a1.device_id)
        with pytest.raises(UsageError):
            await a1.remove_device(a2.device_id ^ 0xFFFF)
        assert repr(await a1.link_device()) == "LinkOffer(spent=False)"
    # a store that holds a device refuses a link code (and stays as it was)
    for name in ("a1", "a2"):
        with pytest.raises(UsageError, match="holds a device"):
            async with harness.open(name, link_code=LinkCode.generate().text):
                pass  # pragma: no cover - open raises
        async with harness.open(name) as reopened:
            assert reopened.is_registered


@pytest.mark.asyncio
async def test_contacts_and_notices_reach_a_linked_device(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new device receives the primary's contacts (their pinned lists) with the
    link; a removal's notice makes a secondary refresh its own list at once."""
    alice_id, bob_id = _uid("alice"), _uid("bob")
    async with contextlib.AsyncExitStack() as stack:
        a1 = await stack.enter_async_context(harness.open("a1"))
        b1 = await stack.enter_async_context(harness.open("b1"))
        await a1.register(alice_id)
        await b1.register(bob_id)
        await a1.send(bob_id, "hi")  # a1 pins bob's list
        a2 = await _link(stack, harness, a1, "a2")
        handed = await a2._stored_list(bob_id)
        pinned = await a1._stored_list(bob_id)
        assert handed is not None and pinned is not None
        assert handed.to_bytes() == pinned.to_bytes()
        a3 = await _link(stack, harness, a1, "a3")
        # a2 learns of a3 from a3's notice (read in its messages loop)
        calls: list[Any] = []
        original = type(a2)._device_list

        async def spy(self: Client, conn: Any, user_id: str, *, refresh: bool = False) -> Any:
            calls.append((self.device_id, user_id, refresh))
            return await original(self, conn, user_id, refresh=refresh)

        monkeypatch.setattr(type(a2), "_device_list", spy)
        await a1.send(bob_id, "after a3")  # a2 gets a sync copy: its loop runs
        (copy,) = await _take(a2, 1)
        assert copy.sent_to == bob_id
        await _until(lambda: _has(a2, DeviceAdded(alice_id, a3.device_id)))
        calls.clear()
        await a1.remove_device(a3.device_id)
        await a1.send(bob_id, "after removal")
        (copy,) = await _take(a2, 1)
        assert copy.body == "after removal"
        await _until(lambda: _has(a2, DeviceRemovedEvent(alice_id, a3.device_id)))
        # fetched because of the notice (a2 sent nothing and a1 was known to it)
        assert calls.count((a2.device_id, alice_id, True)) == 1
        assert await a2.own_devices() == tuple(sorted((a1.device_id, a2.device_id)))


async def _has(client: Client, event: SecurityEvent) -> bool:
    async with client._store.transaction() as tx:
        rows = await tx.scan(Table.EVENTS)
    return event in [decode_event(value) for _, value in rows]


@pytest.mark.asyncio
async def test_primary_crash_after_publishing_is_settled_on_reconnect(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary "crashes" after the relay accepted list v2 but before it stored it:
    on its next connection it finds the pending list on the relay, adopts it, and
    delivers the waiting new device's answer."""
    async with contextlib.AsyncExitStack() as stack:
        a1 = await stack.enter_async_context(harness.open("a1"))
        await a1.register(_uid("alice"))
        original = LinkingMixin._adopt_own_list

        async def crash(self: LinkingMixin, *args: Any) -> None:
            raise ConnectionFailed("simulated crash after the relay accepted the list")

        monkeypatch.setattr(LinkingMixin, "_adopt_own_list", crash)
        offer = await a1.link_device()
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        opening = asyncio.create_task(
            stack.enter_async_context(harness.open("new", link_code=offer.code))
        )
        with pytest.raises(ConnectionFailed):
            await asyncio.wait_for(completing, WAIT)
        account = await relay.ctx.storage.accounts.get_account(a1.user_id)
        assert account is not None and account.list_version == 2
        assert await a1.own_devices() == (a1.device_id,)  # not stored yet
        await a1.aclose()
        monkeypatch.setattr(LinkingMixin, "_adopt_own_list", original)
        a1 = await stack.enter_async_context(harness.open("a1"))
        await a1.connect()  # settles: adopts v2 and delivers the answer
        new = await asyncio.wait_for(opening, WAIT)
        assert new.is_registered
        assert await a1.own_devices() == tuple(sorted((a1.device_id, new.device_id)))
        assert DeviceAdded(a1.user_id, new.device_id) in await _events(a1)
        async with a1._store.transaction() as tx:
            assert await tx.get(Table.META, records.OWN_LIST_PENDING) is None


@pytest.mark.asyncio
async def test_new_device_crash_before_its_prekeys_is_finished_on_open(
    harness: Harness, relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with harness.open("a1") as a1:
        await a1.register(_uid("alice"))
        original = RegistrationMixin._upload_initial_prekeys

        async def crash(self: RegistrationMixin) -> None:
            raise ConnectionFailed("simulated crash before the prekey upload")

        monkeypatch.setattr(RegistrationMixin, "_upload_initial_prekeys", crash)
        offer = await a1.link_device()
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        with pytest.raises(ConnectionFailed):
            async with harness.open("new", link_code=offer.code):
                pass  # pragma: no cover - open raises
        new_id = await asyncio.wait_for(completing, WAIT)
        monkeypatch.setattr(RegistrationMixin, "_upload_initial_prekeys", original)
        status = await relay.ctx.storage.prekeys.status(a1.user_id, new_id)
        assert status.one_time_left == 0
        async with harness.open("new") as new:  # no code needed to finish
            assert new.is_registered and new.device_id == new_id
        status = await relay.ctx.storage.prekeys.status(a1.user_id, new_id)
        assert (status.one_time_left, status.kem_left) == (100, 100)


@pytest.mark.asyncio
async def test_primary_resigns_its_list_weekly(harness: Harness, relay: RunningRelay) -> None:
    now = [NOW_MS()]
    async with harness.open("a1", clock=lambda: now[0]) as a1:
        await a1.register(_uid("alice"))
        user, devices = a1.user_id, await a1.own_devices()
    now[0] += 6 * DAY_MS
    async with harness.open("a1", clock=lambda: now[0]) as a1:
        await a1.connect()
        account = await relay.ctx.storage.accounts.get_account(user)
        assert account is not None and account.list_version == 1
    now[0] += DAY_MS + 1
    async with harness.open("a1", clock=lambda: now[0]) as a1:
        await a1.connect()
        account = await relay.ctx.storage.accounts.get_account(user)
        assert account is not None and account.list_version == 2
        own = await a1._stored_list(user)
        assert own is not None and own.statement.issued_at_ms == now[0]
        assert await a1.own_devices() == devices
        assert not [e for e in await _events(a1) if isinstance(e, DeviceAdded | DeviceRemovedEvent)]


@pytest.mark.asyncio
async def test_crash_after_the_request_reached_the_mailbox_resumes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request reaches the relay but the new device "dies" before committing that
    it did: opened again with the same code, its second put is refused (the slot was
    written) and it goes on waiting with the keys it sent the first time."""
    original = put_link_slot
    puts: list[int] = []

    async def put_then_crash(*args: Any, **kwargs: Any) -> int:
        await original(*args, **kwargs)
        puts.append(args[2])
        raise ConnectionFailed("simulated crash after the put")

    async with harness.open("a1") as a1:
        await a1.register(_uid("alice"))
        offer = await a1.link_device()
        monkeypatch.setattr(linking, "put_link_slot", put_then_crash)
        with pytest.raises(ConnectionFailed):
            async with harness.open("new", link_code=offer.code):
                pass  # pragma: no cover - open raises
        monkeypatch.setattr(linking, "put_link_slot", original)
        assert puts == [0]
        completing = asyncio.create_task(offer.complete(timeout=WAIT))
        async with harness.open("new", link_code=offer.code) as new:
            assert new.device_id == await asyncio.wait_for(completing, WAIT)
            assert new.is_registered
