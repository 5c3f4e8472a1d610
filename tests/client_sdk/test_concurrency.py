"""Concurrency on one device (issue 4 "What the tests must show"; DESIGN 6: one lock
per peer device address covering session creation, so concurrent sends and receives
never fork a ratchet): real relay (uvicorn on 127.0.0.1, a SQLite file), real
WebSockets, real encrypted SQLite stores.

* 1,000 sends from Alice to Bob and 1,000 from Bob to Alice, all started at once
  (``asyncio.gather``) on two devices without a session yet, while both receive:
  every message arrives exactly once, each side received exactly what the other
  sent, no message key (ratchet key, counter) was used for two messages, nothing was
  undecryptable, and each side claimed one prekey bundle (not one per send).
* One pre-key message processed twice at the same moment creates one session, one
  inbox entry and one ``ReplayDropped`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from client_sdk.client import Client
from client_sdk.errors import TransportError
from client_sdk.events import ReplayDropped
from client_sdk.store import Table
from client_sdk.transport import Delivery, RelayConnection
from e2ee.envelope import EnvelopeType, MessageEnvelope, PreKeyEnvelope, envelope_type
from e2ee.relay_frames import Accepted, Mismatch
from e2ee.session import SessionRecord
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
            # sends hold the store): it raises a TransportError and, as documented,
            # the message stays in the outbox and is resent on the next connection.
            failed = [r for r in results if isinstance(r, BaseException)]
            assert all(isinstance(r, TransportError) for r in failed), failed[:3]
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
        assert await _events(bob) == [ReplayDropped(alice.user_id, alice.device_id)]
