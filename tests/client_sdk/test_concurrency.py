"""Concurrency on one device (issue 4 "What the tests must show"; DESIGN 6: one lock
per peer device address covering session creation, so concurrent sends and receives
never fork a ratchet): real relay (uvicorn on 127.0.0.1, a SQLite file), real
WebSockets, real encrypted SQLite stores.

* 1,000 sends from Alice to Bob and 1,000 from Bob to Alice, all started at once
  (``asyncio.gather``) on two devices without a session yet, while both receive:
  every message arrives exactly once, each side received exactly what the other
  sent, no message key (ratchet key, counter) was used for two messages, nothing was
  undecryptable, and each side claimed one prekey bundle (not one per send). A send
  whose connection the relay closes (for overflow: the receivers wait behind the
  sends for the peer lock) raises only ``MessageQueued``; ``connect()`` resends it.
* One pre-key message processed twice at the same moment creates one session, one
  inbox entry and no security event (the second is a redelivery, not a replay).
* The relay closing a connection under the outbox resend that runs when it opens
  does not fail the ``send`` that opened it (its message is committed and delivered);
  a resend cut off with an older connection goes on the current one; a send whose
  connection ends after its commit and cannot be reopened raises ``MessageQueued``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from client_sdk._client.records import OutboxRecord
from client_sdk.client import Client
from client_sdk.errors import ConnectionFailed, MessageQueued, RateLimited, TransportError
from client_sdk.events import ReplayDropped
from client_sdk.store import Table
from client_sdk.transport import Delivery, RelayConnection
from e2ee.envelope import EnvelopeType, MessageEnvelope, PreKeyEnvelope, envelope_type
from e2ee.relay_frames import Accepted, CloseCode, ErrorCode, Mismatch
from e2ee.session import SessionRecord
from server.notify import device_key
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

PAIRS = 1_000
WAIT = 120.0
"""Bound for the whole exchange (it takes far less; the bound only stops a hang)."""


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


@contextlib.asynccontextmanager
async def _pair(relay: RunningRelay, tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    url = f"ws://127.0.0.1:{relay.port}"
    async with (
        Client.open(
            url, store=tmp_path / "alice.db", key=secrets.token_bytes(32), origin=ORIGIN
        ) as alice,
        Client.open(
            url, store=tmp_path / "bob.db", key=secrets.token_bytes(32), origin=ORIGIN
        ) as bob,
    ):
        await alice.register(f"alice-{secrets.token_hex(4)}")
        await bob.register(f"bob-{secrets.token_hex(4)}")
        yield alice, bob


def _message_key(ciphertext: bytes) -> tuple[bytes, int]:
    """The (ratchet key, counter) naming the message key a ciphertext used."""
    if envelope_type(ciphertext) is EnvelopeType.PREKEY:
        envelope = PreKeyEnvelope.from_bytes(ciphertext).message
    else:
        envelope = MessageEnvelope.from_bytes(ciphertext)
    return envelope.ratchet_pk, envelope.n


async def _receive(client: Client, count: int, into: list[str]) -> None:
    async for message in client.messages():
        assert isinstance(message.body, str)
        into.append(message.body)
        if len(into) == count:
            await message.done()
            return


async def _events(client: Client) -> list[Any]:
    return [item.event async for item in client.events(wait=False)]


@pytest.mark.asyncio
async def test_a_thousand_concurrent_sends_and_receives_on_one_device(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys: dict[str, dict[tuple[bytes, int], set[bytes]]] = {}
    original = RelayConnection.send

    async def record(
        self: RelayConnection,
        client_msg_id: bytes,
        addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
    ) -> Accepted | Mismatch:
        for user, devices in addressed:
            for _, ciphertext in devices:
                digest = hashlib.sha256(ciphertext).digest()
                keys.setdefault(user, {}).setdefault(_message_key(ciphertext), set()).add(digest)
        return await original(self, client_msg_id, addressed)

    monkeypatch.setattr(RelayConnection, "send", record)
    async with _pair(relay, tmp_path) as (alice, bob):
        to_bob = [f"a->b {i}" for i in range(PAIRS)]
        to_alice = [f"b->a {i}" for i in range(PAIRS)]
        at_alice: list[str] = []
        at_bob: list[str] = []
        async with asyncio.timeout(WAIT):
            receivers = [
                asyncio.ensure_future(_receive(alice, PAIRS, at_alice)),
                asyncio.ensure_future(_receive(bob, PAIRS, at_bob)),
            ]
            results = await asyncio.gather(
                *(alice.send(bob.user_id, body) for body in to_bob),
                *(bob.send(alice.user_id, body) for body in to_alice),
                return_exceptions=True,
            )
            # A send may lose its connection (the relay closes a connection whose
            # deliveries wait too long for their acknowledgements while a thousand
            # sends hold the peer lock): it raises MessageQueued and, as documented,
            # the message stays in the outbox and is resent on the next connection.
            # Never another TransportError (that would mean nothing was committed):
            # the connection's end cuts off other messages' resends too, and those
            # are not the failure of the send that opened the connection.
            failed = [r for r in results if isinstance(r, BaseException)]
            assert all(isinstance(r, MessageQueued) for r in failed), failed[:3]
            for client in (alice, bob):
                await client.connect()
            await asyncio.gather(*receivers)
        ids = [r for r in results if isinstance(r, bytes)]
        assert len(set(ids)) == len(ids) == 2 * PAIRS - len(failed)
        # every message received exactly once, each side's set exactly what was sent
        assert Counter(at_bob) == Counter(to_bob)
        assert Counter(at_alice) == Counter(to_alice)
        # every message was one ciphertext under its own message key (a resend after a
        # lost connection is the same bytes): no counter was used twice
        for user in (alice.user_id, bob.user_id):
            assert len(keys[user]) == PAIRS
            assert all(len(digests) == 1 for digests in keys[user].values())
        assert await alice.pending_outbox() == await bob.pending_outbox() == 0
        # one bundle claimed per direction: the first send to a device creates the
        # session under its lock and every concurrent send uses it
        for client in (alice, bob):
            status = await relay.ctx.storage.prekeys.status(client.user_id, client.device_id)
            assert (status.one_time_left, status.kem_left) == (99, 99)
        for client in (alice, bob):
            async with client._store.transaction() as tx:
                assert await tx.count(Table.INBOX) == 0
            undecryptable = [
                e for e in await _events(client) if type(e).__name__ != "ReplayDropped"
            ]
            assert undecryptable == []


@pytest.mark.asyncio
async def test_one_prekey_message_processed_twice_at_once_makes_one_session(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _pair(relay, tmp_path) as (alice, bob):
        await alice.send(bob.user_id, "the first message")
        conn = await bob._connection()
        delivery = None
        async with asyncio.timeout(WAIT):
            async for event in conn.events():
                if isinstance(event, Delivery):
                    delivery = event
                    break
        assert delivery is not None
        assert envelope_type(delivery.ciphertext) is EnvelopeType.PREKEY
        acks: list[int] = []

        async def ack(self: RelayConnection, seqs: Any) -> None:
            acks.extend(seqs)

        monkeypatch.setattr(RelayConnection, "ack", ack)
        await asyncio.gather(bob._receive(conn, delivery), bob._receive(conn, delivery))
        assert acks == [delivery.seq, delivery.seq]
        async with bob._store.transaction() as tx:
            sessions = await tx.scan(Table.SESSIONS)
            inbox = await tx.count(Table.INBOX)
        assert len(sessions) == 1
        assert len(SessionRecord.from_bytes(sessions[0][1]).sessions) == 1
        assert inbox == 1
        # the second is a redelivery of a sequence number processed: no event
        assert await _events(bob) == []
        # the same message queued again under a new sequence number is a replay
        await bob._receive(conn, dataclasses.replace(delivery, seq=delivery.seq + 1000))
        assert await _events(bob) == [ReplayDropped(alice.user_id, alice.device_id)]
        assert acks == [delivery.seq, delivery.seq, delivery.seq + 1000]
        async with bob._store.transaction() as tx:
            assert await tx.count(Table.INBOX) == 1
        # a relay delivering it under a huge number first does not make the numbers
        # below it (never processed) pass for redeliveries: still replays
        for seq in (2**62, delivery.seq + 1, delivery.seq + 1000):
            await bob._receive(conn, dataclasses.replace(delivery, seq=seq))
        replay = ReplayDropped(alice.user_id, alice.device_id)
        # the one above, then 2**62 and seq + 1; seq + 1000 again is a redelivery
        assert await _events(bob) == [replay, replay, replay]
        async with bob._store.transaction() as tx:
            assert await tx.count(Table.INBOX) == 1


STEP = 10.0
"""Bound for one step of the tests below (each takes a fraction of a second)."""


async def _relay_closes(
    relay: RunningRelay, client: Client, conn: RelayConnection, code: CloseCode
) -> None:
    """The relay closes ``client``'s connection ``conn`` (as it does for an overflow, a
    restart): returns once the client saw the close."""
    relay.ctx.hub.close_device(device_key(client.user_id, client.device_id), code, code.name)
    async with asyncio.timeout(STEP):
        await conn.wait_closed()


async def _queue(alice: Client, bob: Client, body: str, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Commit a message from Alice to Bob to Alice's outbox without the relay accepting
    it (it answers with a rate limit): the message's id."""

    async def rate_limited(self: RelayConnection, client_msg_id: bytes, addressed: Any) -> None:
        raise RateLimited(ErrorCode.RATE_LIMITED, "too many sends")

    with monkeypatch.context() as patch:
        patch.setattr(RelayConnection, "send", rate_limited)
        with pytest.raises(MessageQueued) as queued:
            await alice.send(bob.user_id, body)
    assert await alice.pending_outbox() == 1
    return queued.value.client_msg_id


async def _received(client: Client, count: int) -> list[str]:
    into: list[str] = []
    async with asyncio.timeout(STEP):
        await _receive(client, count, into)
    return sorted(into)


@pytest.mark.asyncio
async def test_a_send_is_not_failed_by_the_resend_its_new_connection_runs(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send that opens a connection runs the resend of the outbox in its own task;
    the relay closes the connection for overflow under that resend. The send still
    commits and delivers its own message (it raised the close error before its commit,
    so its message was never sent), and the message cut off goes on the next
    connection."""
    async with _pair(relay, tmp_path) as (alice, bob):
        await alice.send(bob.user_id, "first")  # the device lists and the session exist
        queued = await _queue(alice, bob, "queued", monkeypatch)
        await _relay_closes(relay, alice, await alice._connection(), CloseCode.GOING_AWAY)
        original = RelayConnection.send
        cut_off: list[bytes] = []

        async def overflow_under_the_resend(
            self: RelayConnection,
            client_msg_id: bytes,
            addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
        ) -> Accepted | Mismatch:
            if client_msg_id == queued and not cut_off:
                cut_off.append(client_msg_id)
                await _relay_closes(relay, alice, self, CloseCode.OVERFLOW)
            return await original(self, client_msg_id, addressed)

        monkeypatch.setattr(RelayConnection, "send", overflow_under_the_resend)
        await alice.send(bob.user_id, "second")
        assert cut_off == [queued]
        assert await alice.pending_outbox() == 0
        assert await _received(bob, 3) == ["first", "queued", "second"]


@pytest.mark.asyncio
async def test_a_resend_cut_off_with_an_older_connection_goes_on_the_current_one(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resend on a new connection that finds the entry still being sent on the
    connection just closed waits for that attempt and, when it fails with its
    connection, sends the entry on the new connection (it used to stop with the old
    connection's error and leave the entry in the outbox on an open connection)."""
    async with _pair(relay, tmp_path) as (alice, bob):
        await alice.send(bob.user_id, "first")
        await _queue(alice, bob, "queued", monkeypatch)
        old = await alice._connection()
        original_send = RelayConnection.send
        original_deliver = Client._deliver
        held, release, waiting = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def held_on_old(
            self: RelayConnection,
            client_msg_id: bytes,
            addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
        ) -> Accepted | Mismatch:
            if self is old:
                held.set()
                await release.wait()
            return await original_send(self, client_msg_id, addressed)

        async def deliver(
            self: Client, conn: RelayConnection, key: bytes, record: OutboxRecord
        ) -> None:
            if conn is not old:
                waiting.set()  # set before the entry's in-flight attempt is awaited
            await original_deliver(self, conn, key, record)

        monkeypatch.setattr(RelayConnection, "send", held_on_old)
        monkeypatch.setattr(Client, "_deliver", deliver)
        resend = asyncio.ensure_future(alice.connect())  # resends the outbox on `old`
        async with asyncio.timeout(STEP):
            await held.wait()
        await _relay_closes(relay, alice, old, CloseCode.GOING_AWAY)
        fresh = asyncio.ensure_future(alice._connection())  # a new one; its resend waits
        async with asyncio.timeout(STEP):
            await waiting.wait()
        release.set()
        async with asyncio.timeout(STEP):
            with pytest.raises(TransportError):  # connect() on `old`: cut off with it
                await resend
            new = await fresh
        assert new is not old
        assert new.is_open
        assert await alice.pending_outbox() == 0
        assert await _received(bob, 2) == ["first", "queued"]


@pytest.mark.asyncio
async def test_a_send_whose_connection_ends_after_its_commit_raises_message_queued(
    relay: RunningRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection ends between the commit and the first attempt, and no new one
    can be opened: ``MessageQueued`` (never an error that says nothing was committed,
    which would make the app send the message a second time); ``connect()`` sends it."""
    async with _pair(relay, tmp_path) as (alice, bob):
        claim = RelayConnection.claim_bundle
        connect = RelayConnection.connect
        reachable = True

        async def claim_then_lose(self: RelayConnection, user_id: str, device_id: int) -> bytes:
            nonlocal reachable
            bundle = await claim(self, user_id, device_id)
            reachable = False
            await _relay_closes(relay, alice, self, CloseCode.GOING_AWAY)
            return bundle

        async def connect_if_reachable(*args: Any, **kwargs: Any) -> RelayConnection:
            if not reachable:
                raise ConnectionFailed("could not connect to the relay: OSError")
            return await connect(*args, **kwargs)

        monkeypatch.setattr(RelayConnection, "claim_bundle", claim_then_lose)
        monkeypatch.setattr(RelayConnection, "connect", staticmethod(connect_if_reachable))
        with pytest.raises(MessageQueued):
            await alice.send(bob.user_id, "committed")
        assert await alice.pending_outbox() == 1
        reachable = True
        await alice.connect()
        assert await alice.pending_outbox() == 0
        assert await _received(bob, 1) == ["committed"]
