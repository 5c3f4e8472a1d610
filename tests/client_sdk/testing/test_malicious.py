"""The malicious-relay hooks (``client_sdk/testing/malicious.py``): real SDK clients
talking to a real relay (uvicorn in process, a SQLite file) through a
:class:`FaultProxy` whose hooks play the attacker. Each test asserts the exact event or
error the SDK gives the app, and that nothing wrong was accepted (nothing encrypted for
a relay's key, nothing shown twice, the stored device list unchanged). Clocks are
injected (real time plus an offset a test moves)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client_sdk._client import records
from client_sdk._client.records import PeerRecoveryRecord
from client_sdk.client import Client, Message
from client_sdk.errors import IdentityError, UsageError
from client_sdk.events import (
    DeviceListEquivocation,
    DeviceListStale,
    MessagesMissing,
    ReplayDropped,
    RetryRequestDropped,
    SecurityEvent,
    Undecryptable,
)
from client_sdk.store import Table
from client_sdk.testing.malicious import (
    INVENTED_SEQ_BASE,
    AddDeviceToList,
    Drop,
    ForgeRetryRequest,
    Reflect,
    Reorder,
    Replay,
    ReplayRetryRequest,
    ServeEquivocatingList,
    ServeStaleList,
    StripKemPreKey,
    SubstituteBundleKeys,
    Tamper,
)
from client_sdk.testing.proxy import FaultProxy, FrameHook, ProxiedConnection
from e2ee.device import OurDevice
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.identifiers import DEVICE_ID_MAX
from e2ee.limits import DAY_MS
from e2ee.relay_frames import Ack, ClientFrame, Deliver, RelayFrame, Send
from e2ee.session import SessionRecord
from tests.server.relay_client import ORIGIN, RunningRelay

WAIT = 20.0
"""Bound for anything a test waits for."""
POLL = 0.01
HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """Real time plus an offset a test moves, strictly increasing (two sends never share
    a ``sender_ts_ms``)."""

    def __init__(self) -> None:
        self.offset_ms = 0
        self._last = 0

    def __call__(self) -> int:
        self._last = max(now_ms() + self.offset_ms, self._last + 1)
        return self._last


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (bounded by :data:`WAIT`) until it holds."""
    try:
        async with asyncio.timeout(WAIT):
            while not await condition():
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Peer:
    """One registered client with its ``messages()`` loop running in the background."""

    client: Client
    clock: Clock
    got: list[Message] = field(default_factory=list)
    events: list[SecurityEvent] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def device_id(self) -> int:
        return self.client.device_id

    async def _loop(self) -> None:
        async for message in self.client.messages():
            self.got.append(message)

    def bodies(self) -> list[str | bytes]:
        return [m.body for m in self.got]

    async def until(self, count: int) -> None:
        """Wait until ``count`` messages were shown."""

        async def enough() -> bool:
            if self.task is not None and self.task.done():
                self.task.result()
                raise AssertionError("the messages() loop ended")
            return len(self.got) >= count

        await _until(enough, f"{count} messages at {self.user_id}")

    async def take_events(self) -> list[SecurityEvent]:
        """Every event so far (new ones are consumed from the client into
        :attr:`events`)."""
        self.events += [item.event async for item in self.client.events(wait=False)]
        return self.events

    async def wait_events(self, count: int) -> list[SecurityEvent]:
        async def enough() -> bool:
            return len(await self.take_events()) >= count

        await _until(enough, f"{count} events at {self.user_id}")
        return self.events


@dataclass
class Pair:
    alice: Peer
    bob: Peer


@contextlib.asynccontextmanager
async def _pair(proxy: FaultProxy, tmp_path: Path) -> AsyncIterator[Pair]:
    """Alice and Bob, registered through ``proxy``, each with its ``messages()`` loop."""
    clocks = Clock(), Clock()
    async with contextlib.AsyncExitStack() as stack:
        peers = []
        for name, clock in zip(("alice", "bob"), clocks, strict=True):
            client = await stack.enter_async_context(
                Client.open(
                    proxy.url,
                    store=tmp_path / f"{name}.db",
                    key=secrets.token_bytes(32),
                    origin=ORIGIN,
                    clock=clock,
                )
            )
            await client.register(f"{name}-{secrets.token_hex(4)}")
            peers.append(Peer(client, clock))
        for peer in peers:
            peer.task = asyncio.create_task(peer._loop())
        try:
            yield Pair(*peers)
        finally:
            for peer in peers:
                assert peer.task is not None
                peer.task.cancel()
            await asyncio.gather(*(p.task for p in peers if p.task), return_exceptions=True)


class Recorder(FrameHook):
    """Records the frames as the endpoints see them (add it after the attacker)."""

    def __init__(self) -> None:
        self.from_clients: list[tuple[str | None, int | None, ClientFrame]] = []
        self.to_clients: list[tuple[str | None, int | None, RelayFrame]] = []

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        self.to_clients.append((conn.user_id, conn.device_id, frame))
        return None

    async def to_relay(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        self.from_clients.append((conn.user_id, conn.device_id, frame))
        return None

    def sends(self, user_id: str, *, only_to: str | None = None) -> list[Send]:
        """``user_id``'s ``Send`` frames (those addressing ``only_to`` alone, if given:
        retry requests and resends)."""
        return [
            f
            for u, _, f in self.from_clients
            if u == user_id
            and isinstance(f, Send)
            and (only_to is None or [a for a, _ in f.addressed] == [only_to])
        ]

    def acks(self, user_id: str) -> list[int]:
        """The sequence numbers ``user_id`` acknowledged to the relay."""
        return [
            s
            for u, _, f in self.from_clients
            if u == user_id and isinstance(f, Ack)
            for s in f.seqs
        ]

    def deliveries(self, user_id: str) -> list[Deliver]:
        return [f for u, _, f in self.to_clients if u == user_id and isinstance(f, Deliver)]


async def _sessions_with(client: Client, user_id: str, device_id: int) -> int:
    async with client._store.transaction() as tx:
        data = await tx.get(Table.SESSIONS, client._store.lookup_key(user_id, device_id))
    return 0 if data is None else len(SessionRecord.from_bytes(data).sessions)


async def _retry_requests_to(client: Client, user_id: str, device_id: int) -> int:
    """How many retry requests ``client`` queued for that device (sent or not)."""
    key = records.PEER_RECOVERY_PREFIX + client._store.lookup_key(user_id, device_id)
    async with client._store.transaction() as tx:
        state = await PeerRecoveryRecord.load(tx, key)
        queued = await tx.count(Table.META, records.RETRY_JOB_PREFIX)
    return max(len(state.requested), queued)


async def _drained(relay: RunningRelay, peer: Peer) -> None:
    """Wait until the relay holds nothing for ``peer`` (the acknowledgements arrived)."""

    async def empty() -> bool:
        return await relay.ctx.storage.messages.depth(peer.user_id, peer.device_id) == 0

    await _until(empty, f"the relay's queue of {peer.user_id} to empty")


async def _count(client: Client, table: Table) -> int:
    async with client._store.transaction() as tx:
        return await tx.count(table)


async def _stored_list(client: Client, user_id: str) -> SignedDeviceList | None:
    return await client._stored_list(user_id)


async def _list_version(relay: RunningRelay, user_id: str) -> int:
    account = await relay.ctx.storage.accounts.get_account(user_id)
    assert account is not None
    return account.list_version


# --- bundles -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_substituted_bundle_keys_are_refused_before_anything_is_encrypted(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook, recorder = SubstituteBundleKeys(bob.user_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        for body in ("to the relay's keys", "again"):
            with pytest.raises(IdentityError) as caught:
                await alice.client.send(bob.user_id, body)
            assert (caught.value.user_id, caught.value.reason) == (bob.user_id, "BadSignature")
        assert hook.substituted == 2
        # nothing encrypted, committed or sent for the substituted keys
        assert await _sessions_with(alice.client, bob.user_id, bob.device_id) == 0
        assert await alice.client.pending_outbox() == 0
        assert recorder.sends(alice.user_id) == []
        assert await relay.ctx.storage.messages.depth(bob.user_id, bob.device_id) == 0
        assert await alice.take_events() == []
        # the real bundle works
        proxy.remove_hook(hook)
        await alice.client.send(bob.user_id, "to bob's keys")
        await bob.until(1)
        assert bob.bodies() == ["to bob's keys"]
        assert await alice.take_events() == [] and await bob.take_events() == []
    with pytest.raises(UsageError):
        SubstituteBundleKeys("Not A User")


@pytest.mark.asyncio
async def test_a_bundle_without_its_kem_prekey_is_a_refused_downgrade(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook, recorder = StripKemPreKey(bob.user_id, bob.device_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        with pytest.raises(IdentityError) as caught:
            await alice.client.send(bob.user_id, "classical only")
        assert (caught.value.user_id, caught.value.reason) == (bob.user_id, "DowngradeError")
        assert hook.stripped == 1
        assert await _sessions_with(alice.client, bob.user_id, bob.device_id) == 0
        assert await alice.client.pending_outbox() == 0
        assert recorder.sends(alice.user_id) == []
        assert await relay.ctx.storage.messages.depth(bob.user_id, bob.device_id) == 0
        proxy.remove_hook(hook)
        await alice.client.send(bob.user_id, "post-quantum")
        await bob.until(1)
        assert bob.bodies() == ["post-quantum"]
        assert await alice.take_events() == [] and await bob.take_events() == []


# --- device lists -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_device_added_by_the_relay_breaks_the_signature(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook, recorder = AddDeviceToList(bob.user_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        # the first list of bob: refused, nothing stored
        with pytest.raises(IdentityError) as caught:
            await alice.client.send(bob.user_id, "first")
        assert (caught.value.user_id, caught.value.reason) == (bob.user_id, "BadSignature")
        assert hook.added == [bob.device_id + 1 if bob.device_id < DEVICE_ID_MAX else 0]
        assert await _stored_list(alice.client, bob.user_id) is None
        proxy.remove_hook(hook)
        await alice.client.send(bob.user_id, "hello")
        stored = await _stored_list(alice.client, bob.user_id)
        assert stored is not None
        assert [d.device_id for d in stored.statement.devices] == [bob.device_id]
        # a week later the list is checked again: the forged one changes nothing
        proxy.add_hook(hook)
        alice.clock.offset_ms += 7 * DAY_MS + HOUR_MS
        with pytest.raises(IdentityError) as caught:
            await alice.client.send(bob.user_id, "a week later")
        assert caught.value.reason == "BadSignature"
        assert len(hook.added) == 2
        after = await _stored_list(alice.client, bob.user_id)
        assert after is not None and after.to_bytes() == stored.to_bytes()
        await bob.until(1)
        assert bob.bodies() == ["hello"]
        addressed = [
            d for f in recorder.sends(alice.user_id) for u, ds in f.addressed for d, _ in ds
        ]
        assert addressed == [bob.device_id]  # "hello", to bob's only device
        assert await alice.take_events() == []


async def _resigned(proxy: FaultProxy, relay: RunningRelay, bob: Peer) -> None:
    """Bob's clock moves 8 days; his next connection re-signs his list (version 2)."""
    bob.clock.offset_ms += 8 * DAY_MS
    assert await proxy.drop_connections(bob.user_id) == 1

    async def resigned() -> bool:
        return await _list_version(relay, bob.user_id) == 2

    await _until(resigned, "bob's re-signed list")


@pytest.mark.asyncio
async def test_an_older_list_after_a_newer_one_is_a_refused_rollback(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook = ServeStaleList(bob.user_id)
        proxy.add_hook(hook)
        await alice.client.send(bob.user_id, "one")  # version 1, served as it is
        await _resigned(proxy, relay, bob)
        # a week later alice checks the list: version 2 passes once
        alice.clock.offset_ms += 7 * DAY_MS + HOUR_MS
        await alice.client.send(bob.user_id, "two")
        newer = await _stored_list(alice.client, bob.user_id)
        assert newer is not None and newer.statement.version == 2
        assert hook.versions == [1, 2] and hook.rolled_back == 0
        # once version 2 is due for a check, the relay serves version 1 again
        alice.clock.offset_ms += 8 * DAY_MS
        with pytest.raises(IdentityError) as caught:
            await alice.client.send(bob.user_id, "three")
        assert (caught.value.user_id, caught.value.reason) == (bob.user_id, "DeviceListRollback")
        assert hook.rolled_back == 1
        stored = await _stored_list(alice.client, bob.user_id)
        assert stored is not None and stored.to_bytes() == newer.to_bytes()
        await bob.until(2)
        assert bob.bodies() == ["one", "two"]
        assert await alice.take_events() == []


@pytest.mark.asyncio
async def test_a_frozen_list_is_reported_stale_after_30_days(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook = ServeStaleList(bob.user_id, reveal_newer=False)
        proxy.add_hook(hook)
        await alice.client.send(bob.user_id, "one")
        first = await _stored_list(alice.client, bob.user_id)
        assert first is not None
        await _resigned(proxy, relay, bob)
        # a month later: alice reconnects (re-signing her own list) and checks bob's,
        # which the relay keeps at version 1
        alice.clock.offset_ms += 31 * DAY_MS
        assert await proxy.drop_connections(alice.user_id) == 1

        async def reconnected() -> bool:
            return await _list_version(relay, alice.user_id) == 2

        await _until(reconnected, "alice's re-signed own list")
        await alice.client.send(bob.user_id, "a month later")  # sending goes on
        assert hook.rolled_back == 1
        assert await alice.take_events() == [
            DeviceListStale(bob.user_id, first.statement.issued_at_ms)
        ]
        stored = await _stored_list(alice.client, bob.user_id)
        assert stored is not None and stored.to_bytes() == first.to_bytes()
        # an honest relay serves version 2 (re-signed 23 days ago by alice's clock)
        proxy.remove_hook(hook)
        alice.clock.offset_ms += 2 * HOUR_MS
        await alice.client.send(bob.user_id, "honest")
        stored = await _stored_list(alice.client, bob.user_id)
        assert stored is not None and stored.statement.version == 2
        await bob.until(3)
        assert bob.bodies() == ["one", "a month later", "honest"]
        assert await alice.take_events() == [
            DeviceListStale(bob.user_id, first.statement.issued_at_ms)
        ]


@pytest.mark.asyncio
async def test_a_fork_of_the_list_is_reported_and_refused(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        await alice.client.send(bob.user_id, "one")
        seen = await _stored_list(alice.client, bob.user_id)
        assert seen is not None and seen.statement.version == 1
        # another version 1 of bob's list, signed by bob's own master key, with a device
        # the relay holds
        master = bob.client._master
        assert master is not None
        extra = OurDevice.generate(
            bob.user_id, bob.device_id ^ 1, master.public_key, now_ms=now_ms()
        )
        fork = SignedDeviceList.sign(
            DeviceList(
                bob.user_id,
                master.public_key,
                1,
                now_ms(),
                None,
                tuple(sorted((*seen.statement.devices, extra.entry()), key=lambda d: d.device_id)),
            ),
            master,
        )
        hook, recorder = ServeEquivocatingList(fork.to_bytes()), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        alice.clock.offset_ms += 7 * DAY_MS + HOUR_MS  # the list is checked again
        with pytest.raises(IdentityError) as caught:
            await alice.client.send(bob.user_id, "two")
        assert (caught.value.user_id, caught.value.reason) == (bob.user_id, "Equivocation")
        assert await alice.take_events() == [DeviceListEquivocation(bob.user_id, 1)]
        stored = await _stored_list(alice.client, bob.user_id)
        assert stored is not None and stored.to_bytes() == seen.to_bytes()
        # within the hour the verified list is used: the fork's device gets nothing
        await alice.client.send(bob.user_id, "three")
        (send,) = recorder.sends(alice.user_id)
        assert [d for u, ds in send.addressed if u == bob.user_id for d, _ in ds] == [bob.device_id]
        # checked again: refused again, reported once per fork
        alice.clock.offset_ms += 2 * HOUR_MS
        with pytest.raises(IdentityError):
            await alice.client.send(bob.user_id, "four")
        assert hook.served == 2
        assert await alice.take_events() == [DeviceListEquivocation(bob.user_id, 1)]
        await bob.until(2)
        assert bob.bodies() == ["one", "three"]
    with pytest.raises(UsageError):
        ServeEquivocatingList(b"not a list")


# --- deliveries -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reordered_deliveries_each_decrypt_once(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        await alice.client.send(bob.user_id, "hello")
        await bob.until(1)
        hook = Reorder(bob.user_id, bob.device_id, 4)
        proxy.add_hook(hook)
        sent = [f"m{i}" for i in range(4)]
        for body in sent:
            await alice.client.send(bob.user_id, body)
        await bob.until(5)
        assert hook.released == 1
        late = bob.got[1:]
        assert [m.body for m in late] == sent[::-1]
        # what the app can see of it: both timestamps go backwards
        relay_ts = [m.relay_ts_ms for m in late]
        sender_ts = [m.sender_ts_ms for m in late]
        assert relay_ts == sorted(relay_ts, reverse=True)
        assert sender_ts == sorted(sender_ts, reverse=True) and len(set(sender_ts)) == 4
        assert [m.body for m in sorted(late, key=lambda m: m.sender_ts_ms)] == sent
        # every skipped key was used; nothing reported, nothing left at the relay
        assert await _count(bob.client, Table.SKIPPED_KEYS) == 0
        assert await bob.take_events() == []
        await _drained(relay, bob)  # every delivery acknowledged
        await alice.client.send(bob.user_id, "after")
        await bob.until(6)
        assert bob.bodies() == ["hello", *sent[::-1], "after"]
    with pytest.raises(UsageError):
        Reorder("bob", 1, 0)


@pytest.mark.asyncio
async def test_a_replay_under_a_new_sequence_number_is_reported_once(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        honest, recorder = Replay(bob.user_id, bob.device_id, same_seq=True), Recorder()
        proxy.add_hook(honest)
        proxy.add_hook(recorder)
        await alice.client.send(bob.user_id, "one")
        await bob.until(1)

        async def acked_twice() -> bool:
            return len(recorder.acks(bob.user_id)) == 2

        # a redelivery under the same sequence number (a lost ack): silently dropped
        await _until(acked_twice, "bob's two acknowledgements")
        (seq,) = honest.replayed
        assert recorder.acks(bob.user_id) == [seq, seq]
        assert await bob.take_events() == []
        proxy.remove_hook(honest)
        replay = Replay(bob.user_id, bob.device_id)
        proxy.add_hook(replay)
        proxy.remove_hook(recorder)
        proxy.add_hook(recorder)  # after the replay hook: sees what reaches the relay
        await alice.client.send(bob.user_id, "two")
        assert await bob.wait_events(1) == [ReplayDropped(alice.user_id, alice.device_id)]
        assert bob.bodies() == ["one", "two"]
        invented = [d.seq for d in recorder.deliveries(bob.user_id) if d.seq >= INVENTED_SEQ_BASE]
        assert len(invented) == 1 and replay.injected == 1

        async def swallowed() -> bool:
            return replay.acks_swallowed == 1

        await _until(swallowed, "the acknowledgement of the replay")
        assert all(s < INVENTED_SEQ_BASE for s in recorder.acks(bob.user_id))
        await alice.client.send(bob.user_id, "three")
        await bob.until(3)
        assert bob.bodies() == ["one", "two", "three"]
        assert await bob.take_events() == [ReplayDropped(alice.user_id, alice.device_id)]
        await _drained(relay, bob)  # every delivery acknowledged


@pytest.mark.asyncio
async def test_a_deleted_message_is_missed_after_a_day_and_recovered(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        await alice.client.send(bob.user_id, "first")
        await bob.until(1)
        hook, recorder = Drop(bob.user_id, bob.device_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        lost_id = await alice.client.send(bob.user_id, "lost")

        async def deleted() -> bool:
            depth = await relay.ctx.storage.messages.depth(bob.user_id, bob.device_id)
            return len(hook.dropped) == 1 and depth == 0

        await _until(deleted, "the relay to delete the dropped message")
        await alice.client.send(bob.user_id, "after the gap")
        await bob.until(2)
        assert await bob.take_events() == []  # a gap, not reported yet
        assert await _count(bob.client, Table.SKIPPED_KEYS) == 1
        # a day later (by bob's clock) the next message runs the check
        bob.clock.offset_ms += 24 * HOUR_MS + 60_000
        await alice.client.send(bob.user_id, "a day later")
        await bob.until(4)
        assert bob.bodies() == ["first", "after the gap", "a day later", "lost"]
        assert bob.got[-1].client_msg_id == lost_id
        assert await bob.take_events() == [MessagesMissing(alice.user_id, alice.device_id, 1)]
        # one retry request (to alice alone), one resend on a new session
        assert len(recorder.sends(bob.user_id, only_to=alice.user_id)) == 1
        assert len(recorder.sends(alice.user_id, only_to=bob.user_id)) == 1
        assert await _sessions_with(bob.client, alice.user_id, alice.device_id) == 2
        assert await alice.take_events() == []


@pytest.mark.asyncio
async def test_a_tampered_message_is_reported_and_resent_once(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        await alice.client.send(bob.user_id, "first")
        await bob.until(1)
        hook, recorder = Tamper(bob.user_id, bob.device_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        msg_id = await alice.client.send(bob.user_id, "tampered")
        await bob.until(2)
        assert bob.bodies() == ["first", "tampered"] and bob.got[-1].client_msg_id == msg_id
        assert len(hook.tampered) == 1
        assert await bob.take_events() == [
            Undecryptable(alice.user_id, alice.device_id, "DecryptionError")
        ]
        assert len(recorder.sends(bob.user_id, only_to=alice.user_id)) == 1
        assert len(recorder.sends(alice.user_id, only_to=bob.user_id)) == 1
        assert await _sessions_with(bob.client, alice.user_id, alice.device_id) == 2
        assert await alice.take_events() == []


@pytest.mark.asyncio
async def test_a_reflected_message_is_reported_without_a_retry_request(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook, recorder = Reflect(alice.user_id, count=2), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        # the first message (a pre-key message: alice's own base key), then one after
        # bob's reply (alice's own ratchet key)
        await alice.client.send(bob.user_id, "hello")
        undecryptable = Undecryptable(bob.user_id, bob.device_id, "ReflectedMessage")
        assert await alice.wait_events(1) == [undecryptable]
        await bob.until(1)
        await bob.client.send(alice.user_id, "hi")
        await alice.until(1)
        await alice.client.send(bob.user_id, "again")
        assert await alice.wait_events(2) == [undecryptable, undecryptable]
        await bob.until(2)
        assert hook.reflected == [(bob.user_id, bob.device_id)] * 2

        async def swallowed() -> bool:
            return hook.acks_swallowed == 2

        await _until(swallowed, "alice's acknowledgements of the reflections")
        # nothing shown; no retry request queued or sent; the conversation goes on
        await alice.client.send(bob.user_id, "last")
        await bob.until(3)
        assert bob.bodies() == ["hello", "again", "last"]
        assert alice.bodies() == ["hi"]
        assert recorder.sends(alice.user_id, only_to=bob.user_id) == []
        assert await _retry_requests_to(alice.client, bob.user_id, bob.device_id) == 0
        assert await _sessions_with(bob.client, alice.user_id, alice.device_id) == 1
        assert await alice.take_events() == [undecryptable, undecryptable]
        assert await bob.take_events() == []


# --- retry requests ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_replayed_retry_request_resends_nothing(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        await alice.client.send(bob.user_id, "first")
        await bob.until(1)
        tamper, hook = (
            Tamper(bob.user_id, bob.device_id),
            ReplayRetryRequest(bob.user_id, alice.user_id),
        )
        recorder = Recorder()
        for h in (tamper, hook, recorder):
            proxy.add_hook(h)
        await alice.client.send(bob.user_id, "tampered")  # bob asks for it, alice resends
        await bob.until(2)
        assert [(c.sender_device, c.device_id) for c in hook.captured] == [
            (bob.device_id, alice.device_id)
        ]
        assert len(recorder.sends(alice.user_id, only_to=bob.user_id)) == 1
        assert await hook.replay(proxy) == 1
        assert await alice.wait_events(1) == [ReplayDropped(bob.user_id, bob.device_id)]
        # no second resend: the conversation goes on with nothing more from alice
        await alice.client.send(bob.user_id, "after")
        await bob.until(3)
        assert bob.bodies() == ["first", "tampered", "after"]
        assert len(recorder.sends(alice.user_id, only_to=bob.user_id)) == 1
        assert await _sessions_with(alice.client, bob.user_id, bob.device_id) == 2
        assert await alice.take_events() == [ReplayDropped(bob.user_id, bob.device_id)]
        assert await bob.take_events() == [
            Undecryptable(alice.user_id, alice.device_id, "DecryptionError")
        ]
    with pytest.raises(UsageError):
        ReplayRetryRequest("bob", "bob")


@pytest.mark.asyncio
async def test_a_forged_retry_request_is_undecryptable_and_resends_nothing(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook, recorder = ForgeRetryRequest(bob.user_id, alice.user_id), Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        await alice.client.send(bob.user_id, "hello")
        await bob.until(1)
        await bob.client.send(alice.user_id, "hi")
        await alice.until(1)
        assert await hook.forge(proxy) == 1
        assert await alice.wait_events(1) == [
            Undecryptable(bob.user_id, bob.device_id, "DecryptionError")
        ]
        # alice asks bob for the message it seems to be; bob never sent it
        assert await bob.wait_events(1) == [
            RetryRequestDropped(alice.user_id, alice.device_id, "unknown")
        ]
        assert len(recorder.sends(alice.user_id, only_to=bob.user_id)) == 1
        assert recorder.sends(bob.user_id, only_to=alice.user_id) == []
        await bob.client.send(alice.user_id, "still here")
        await alice.until(2)
        assert alice.bodies() == ["hi", "still here"]
        assert await _sessions_with(alice.client, bob.user_id, bob.device_id) == 1
        assert await _sessions_with(bob.client, alice.user_id, alice.device_id) == 1
        assert hook.acks_swallowed == 1


@pytest.mark.asyncio
async def test_a_forgery_reusing_a_real_header_makes_one_resend_and_shows_nothing_twice(
    proxy: FaultProxy, relay: RunningRelay, tmp_path: Path
) -> None:
    async with _pair(proxy, tmp_path) as p:
        alice, bob = p.alice, p.bob
        hook = ForgeRetryRequest(bob.user_id, alice.user_id, reuse_counter=True)
        recorder = Recorder()
        proxy.add_hook(hook)
        proxy.add_hook(recorder)
        await alice.client.send(bob.user_id, "hello")
        await bob.until(1)
        await bob.client.send(alice.user_id, "hi")
        await alice.until(1)
        assert await hook.forge(proxy) == 1
        assert await alice.wait_events(1) == [
            Undecryptable(bob.user_id, bob.device_id, "MessageKeyUnavailable")
        ]

        async def resent() -> bool:
            return len(recorder.sends(bob.user_id, only_to=alice.user_id)) == 1

        await _until(resent, "bob's resend")
        await bob.client.send(alice.user_id, "still here")
        await alice.until(2)
        assert alice.bodies() == ["hi", "still here"]
        assert await _sessions_with(alice.client, bob.user_id, bob.device_id) == 2
        # the resend is a message alice has, under a sequence number she never
        # processed (the forgery's invented number above it does not hide that)
        assert await alice.take_events() == [
            Undecryptable(bob.user_id, bob.device_id, "MessageKeyUnavailable"),
            ReplayDropped(bob.user_id, bob.device_id),
        ]
        assert await bob.take_events() == []
