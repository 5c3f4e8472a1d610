"""Sends and deliveries over a real relay (uvicorn, real WebSockets) on every storage:
offline queue in order then CaughtUp, unacknowledged come back, acknowledged never,
mismatch, idempotent resend, live delivery, delivery window."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from e2ee.relay_frames import (
    Accepted,
    CaughtUp,
    Deliver,
    Error,
    ErrorCode,
    KeyCheck,
    KeyStatus,
    Mismatch,
)
from server import ws
from server.limits import DELIVERY_WINDOW
from server.storage.base import StorageUnavailable
from tests.server.pg import pg_url
from tests.server.relay_client import (
    WAIT,
    DeviceConnection,
    RelayClient,
    RunningRelay,
    TestAccount,
)
from tests.server.relay_fixtures import memory_relay, relay

__all__ = ["memory_relay", "pg_url", "relay"]


def msg_id() -> bytes:
    return secrets.token_bytes(16)


async def _queue_depth_becomes(
    relay: RunningRelay, user_id: str, device_id: int, depth: int
) -> None:
    """Poll the relay's storage until the device's queue holds ``depth`` messages."""
    async with asyncio.timeout(WAIT):
        while await relay.ctx.storage.messages.depth(user_id, device_id) != depth:
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_offline_queue_in_order_then_caught_up_and_ack_semantics(relay: RunningRelay) -> None:
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    for i in range(5):
        await a.send_message(msg_id(), [(bob.user_id, [(1001, f"m{i}".encode())])])
        await a.expect(Accepted)

    b = await client.connect(bob)
    caught, delivered = await b.recv_until(CaughtUp)
    assert isinstance(caught, CaughtUp)
    texts = [f.ciphertext for f in delivered if isinstance(f, Deliver)]
    assert texts == [f"m{i}".encode() for i in range(5)]
    seqs = [f.seq for f in delivered if isinstance(f, Deliver)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert all(f.sender_user == alice.user_id and f.sender_device == 1001 for f in delivered)
    # Acknowledge the first two only, then reconnect. An ack has no answer: wait
    # (bounded) until the relay applied it, which also shows that an ack sent just
    # before the socket closes is not lost.
    await b.ack(seqs[:2])
    await b.close()
    await _queue_depth_becomes(relay, bob.user_id, 1001, 3)

    b = await client.connect(bob)
    _, again = await b.recv_until(CaughtUp)
    assert [f.seq for f in again if isinstance(f, Deliver)] == seqs[2:]
    await b.ack(seqs[2:])
    await b.close()
    await _queue_depth_becomes(relay, bob.user_id, 1001, 0)

    b = await client.connect(bob)
    _, none = await b.recv_until(CaughtUp)
    assert none == []
    # Live: a message sent now arrives without reconnecting.
    await a.send_message(msg_id(), [(bob.user_id, [(1001, b"live")])])
    await a.expect(Accepted)
    live = await b.expect(Deliver)
    assert live.ciphertext == b"live" and live.seq > seqs[-1]
    await b.close()
    await a.close()


@pytest.mark.asyncio
async def test_mismatch_on_missing_and_extra_devices(relay: RunningRelay) -> None:
    client = relay.client()
    alice = await client.create_account(devices=2)
    bob = await client.create_account(devices=2)
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    mid = msg_id()
    # Bob's 1002 missing, an unknown 7 extra; Alice's own 1002 missing.
    await a.send_message(mid, [(bob.user_id, [(1001, b"x"), (7, b"y")])])
    mismatch = await a.expect(Mismatch)
    assert mismatch.client_msg_id == mid
    assert len(mismatch.users) == 1
    (user,) = mismatch.users
    assert (user.user_id, user.missing, user.extra) == (bob.user_id, (1002,), (7,))
    # Addressing the sending device itself is extra.
    await a.send_message(
        msg_id(),
        [
            (bob.user_id, [(1001, b"x"), (1002, b"x")]),
            (alice.user_id, [(1001, b"x"), (1002, b"x")]),
        ],
    )
    mismatch = await a.expect(Mismatch)
    assert [(u.user_id, u.extra) for u in mismatch.users] == [(alice.user_id, (1001,))]
    # Nothing was stored.
    b = await client.connect(bob)
    _, before = await b.recv_until(CaughtUp)
    assert before == []
    await b.close()
    await a.close()


@pytest.mark.asyncio
async def test_idempotent_resend_and_conflict(relay: RunningRelay) -> None:
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    mid = msg_id()
    addressed = [(bob.user_id, [(1001, b"once")])]
    await a.send_message(mid, addressed)
    first = await a.expect(Accepted)
    await a.close()
    # A retry after reconnecting (as after a drop between commit and answer).
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    await a.send_message(mid, addressed)
    second = await a.expect(Accepted)
    assert second == first
    # Same id, other content.
    await a.send_message(mid, [(bob.user_id, [(1001, b"other")])])
    error = await a.expect(Error)
    assert error.code is ErrorCode.IDEMPOTENCY_CONFLICT and error.client_msg_id == mid
    # One copy delivered; after the recipient acknowledged it, a retry stores nothing.
    b = await client.connect(bob)
    _, delivered = await b.recv_until(CaughtUp)
    assert [f.ciphertext for f in delivered if isinstance(f, Deliver)] == [b"once"]
    await b.ack([delivered[0].seq])  # type: ignore[union-attr]
    await a.send_message(mid, addressed)
    assert await a.expect(Accepted) == first
    await b.close()
    b = await client.connect(bob)
    _, after = await b.recv_until(CaughtUp)
    assert after == []
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_send_to_unknown_user_and_oversized_ciphertext(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    alice = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    mid = msg_id()
    await a.send_message(mid, [("nobody-here", [(1, b"x")])])
    error = await a.expect(Error)
    assert error.code is ErrorCode.UNKNOWN_USER and error.client_msg_id == mid
    await a.close()


@pytest.mark.asyncio
async def test_delivery_window_holds_back_until_acks(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    total = DELIVERY_WINDOW + 10
    for i in range(total):
        await a.send_message(msg_id(), [(bob.user_id, [(1001, i.to_bytes(2, "big"))])])
        await a.expect(Accepted)
    b = await client.connect(bob)
    first = [await b.expect(Deliver) for _ in range(DELIVERY_WINDOW)]
    # The window is full: a request's answer comes next, not another delivery (without
    # the window the rest would have been queued long before it).
    await b.send(KeyCheck(b.next_req()))
    await b.expect(KeyStatus)
    # Acknowledging opens the window for the rest, then CaughtUp.
    await b.ack([f.seq for f in first])
    _, rest = await b.recv_until(CaughtUp)
    got = [int.from_bytes(f.ciphertext, "big") for f in first + rest if isinstance(f, Deliver)]
    assert got == list(range(total))
    await a.close()
    await b.close()


# --- live hand-over and background acknowledgements -------------------------------------


@pytest.mark.asyncio
async def test_live_messages_are_handed_over_without_reading_them_back(
    relay: RunningRelay,
) -> None:
    """A recipient waiting, caught up, gets each message accepted on this node straight
    from the send (no fetch per message), in order; with its window full the rest are
    read from the queue as before, in the same order."""
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    b = await client.connect(bob)
    await a.expect(CaughtUp)
    await b.expect(CaughtUp)
    messages = relay.ctx.storage.messages
    fetches = 0
    original = messages.fetch

    async def counting_fetch(*args: object, **kwargs: object) -> object:
        nonlocal fetches
        fetches += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    messages.fetch = counting_fetch  # type: ignore[assignment,method-assign]
    try:
        for i in range(20):
            await a.send_message(msg_id(), [(bob.user_id, [(1001, b"live%d" % i)])])
            await a.expect(Accepted)
            got = await b.expect(Deliver)
            assert got.ciphertext == b"live%d" % i
            await b.ack([got.seq])
        assert fetches == 0
        # A full window: the hand-over declines and the queue is read instead.
        total = DELIVERY_WINDOW + 5
        for i in range(total):
            await a.send_message(msg_id(), [(bob.user_id, [(1001, i.to_bytes(2, "big"))])])
            await a.expect(Accepted)
        first = [await b.expect(Deliver) for _ in range(DELIVERY_WINDOW)]
        await b.ack([f.seq for f in first])
        rest = [await b.expect(Deliver) for _ in range(5)]
        got_all = [int.from_bytes(f.ciphertext, "big") for f in first + rest]
        assert got_all == list(range(total))
        seqs = [f.seq for f in first + rest]
        assert seqs == sorted(seqs) and len(set(seqs)) == total
        assert fetches >= 1
    finally:
        messages.fetch = original  # type: ignore[method-assign]
    await a.close()
    await b.close()


async def _queued_for_bob(
    relay: RunningRelay, n: int
) -> tuple[RelayClient, DeviceConnection, DeviceConnection, TestAccount, list[int]]:
    """Alice sends ``n`` messages to Bob's device 1001 (each accepted); Bob connects
    and reads them up to ``CaughtUp``: the client, both connections, Bob's account and
    the delivered sequence numbers."""
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    for i in range(n):
        await a.send_message(msg_id(), [(bob.user_id, [(1001, b"m%d" % i)])])
        await a.expect(Accepted)
    b = await client.connect(bob)
    _, delivered = await b.recv_until(CaughtUp)
    return client, a, b, bob, [f.seq for f in delivered if isinstance(f, Deliver)]


class _GatedAck:
    """Wraps the store's ``ack``: records each call's sequences and holds every call
    until :attr:`gate` is set."""

    def __init__(self, relay: RunningRelay) -> None:
        self.messages = relay.ctx.storage.messages
        self.original = self.messages.ack
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def ack(self, user_id: str, device_id: int, seqs: list[int]) -> int:
        self.calls.append(sorted(seqs))
        self.entered.set()
        await self.gate.wait()
        return await self.original(user_id, device_id, seqs)

    def __enter__(self) -> _GatedAck:
        self.messages.ack = self.ack  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.messages.ack = self.original  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_acks_are_deleted_together_and_a_later_request_waits_for_them(
    memory_relay: RunningRelay,
) -> None:
    _, a, b, bob, seqs = await _queued_for_bob(memory_relay, 6)
    with _GatedAck(memory_relay) as gated:
        await b.ack(seqs[:1])
        async with asyncio.timeout(WAIT):
            await gated.entered.wait()
        # While the first deletion is held, two more Acks arrive: one deletion later.
        await b.ack(seqs[1:3])
        await b.ack(seqs[3:])
        await b.send(KeyCheck(b.next_req()))
        # The KeyCheck is answered only after the deletions before it committed.
        with pytest.raises(TimeoutError):
            await b.recv(0.3)
        gated.gate.set()
        await b.expect(KeyStatus)
        assert gated.calls == [seqs[:1], seqs[1:]]
    assert await memory_relay.ctx.storage.messages.depth(bob.user_id, 1001) == 0
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_a_new_connection_reads_its_backlog_after_the_old_ones_acks(
    memory_relay: RunningRelay,
) -> None:
    client, a, b, bob, seqs = await _queued_for_bob(memory_relay, 3)
    with _GatedAck(memory_relay) as gated:
        await b.ack(seqs)
        async with asyncio.timeout(WAIT):
            await gated.entered.wait()
        b2 = await client.connect(bob)  # takes over while the deletion is held
        with pytest.raises(TimeoutError):
            await b2.recv(0.3)
        gated.gate.set()
        _, again = await b2.recv_until(CaughtUp)
        assert [f for f in again if isinstance(f, Deliver)] == []
    await a.close()
    await b2.close()


@pytest.mark.asyncio
async def test_a_failed_ack_deletion_is_retried_then_given_up(
    memory_relay: RunningRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "_STORAGE_RETRY_SECONDS", 0.01)
    client, a, b, bob, seqs = await _queued_for_bob(memory_relay, 2)
    messages = memory_relay.ctx.storage.messages
    original = messages.ack
    failures = {"left": 2, "calls": 0}

    async def flaky_ack(user_id: str, device_id: int, seqs: list[int]) -> int:
        failures["calls"] += 1
        if failures["left"] > 0:
            failures["left"] -= 1
            raise StorageUnavailable("down")
        return await original(user_id, device_id, seqs)

    messages.ack = flaky_ack  # type: ignore[method-assign,assignment]
    try:
        # Two failures, then the retry deletes the first.
        await b.ack(seqs[:1])
        await _queue_depth_becomes(memory_relay, bob.user_id, 1001, 1)
        assert failures["calls"] == 3
        # Failing for good: given up after five attempts; the message stays queued and
        # comes back on the next connection (at least once).
        failures["left"] = 10**6
        await b.ack(seqs[1:])
        await b.send(KeyCheck(b.next_req()))
        await b.expect(KeyStatus)
        assert failures["calls"] == 3 + 5
        assert await messages.depth(bob.user_id, 1001) == 1
    finally:
        messages.ack = original  # type: ignore[method-assign]
    await b.close()
    b = await client.connect(bob)
    _, again = await b.recv_until(CaughtUp)
    assert [f.seq for f in again if isinstance(f, Deliver)] == seqs[1:]
    await a.close()
    await b.close()


# --- sends in flight ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_store_takes_sends_in_flight(relay: RunningRelay) -> None:
    """Several sends of one connection are stored at once where the store accepts them
    in the order they were started: in memory, and by one group-commit writer on SQLite
    and on PostgreSQL."""
    assert relay.ctx.storage.messages.accepts_in_order is True


@pytest.mark.asyncio
async def test_sends_in_flight_are_answered_and_delivered_in_order(relay: RunningRelay) -> None:
    """100 sends written without waiting, a refused one among them: the answers come
    in the order of the sends (the refusal in its place), the deliveries in the same
    order, and a request after them is answered after all of them."""
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    b = await client.connect(bob)
    await a.expect(CaughtUp)
    await b.expect(CaughtUp)
    ids = [msg_id() for _ in range(100)]
    refused = 37
    for i, mid in enumerate(ids):
        device = 999 if i == refused else 1001  # bob has no device 999: a mismatch
        await a.send_message(mid, [(bob.user_id, [(device, b"p%d" % i)])])
    await a.send(KeyCheck(a.next_req()))
    answers = [await a.recv() for _ in range(len(ids) + 1)]
    assert [type(f) for f in answers[:-1]] == [
        Mismatch if i == refused else Accepted for i in range(len(ids))
    ]
    assert [f.client_msg_id for f in answers[:-1]] == ids  # type: ignore[union-attr]
    assert isinstance(answers[-1], KeyStatus)
    delivered = [await b.expect(Deliver) for _ in range(len(ids) - 1)]
    assert [f.ciphertext for f in delivered] == [
        b"p%d" % i for i in range(len(ids)) if i != refused
    ]
    seqs = [f.seq for f in delivered]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_sends_in_flight_when_the_socket_closes_are_stored_once(
    relay: RunningRelay,
) -> None:
    """A client writes 60 sends and drops the socket at once: after reconnecting and
    sending them all again with the same ids, each is accepted and delivered once."""
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    ids = [msg_id() for _ in range(60)]
    for i, mid in enumerate(ids):
        await a.send_message(mid, [(bob.user_id, [(1001, b"c%d" % i)])])
    await a.ws.close()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    for i, mid in enumerate(ids):
        await a.send_message(mid, [(bob.user_id, [(1001, b"c%d" % i)])])
    answers = [await a.expect(Accepted) for _ in ids]
    assert [f.client_msg_id for f in answers] == ids
    b = await client.connect(bob)
    _, delivered = await b.recv_until(CaughtUp)
    texts = [f.ciphertext for f in delivered if isinstance(f, Deliver)]
    assert sorted(texts) == sorted(b"c%d" % i for i in range(60))
    assert len(texts) == 60
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_the_reader_goes_on_while_a_send_is_stored_and_answers_wait_their_turn(
    memory_relay: RunningRelay,
) -> None:
    """The first send's storage is held: the relay still reads and starts the next
    four (up to ``SENDS_IN_FLIGHT``), which finish first, yet no answer is written
    before the first one's, and then all five in order."""
    client = memory_relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    messages = memory_relay.ctx.storage.messages
    original = messages.accept
    gate = asyncio.Event()
    calls = 0

    async def gated_accept(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        return await original(*args)  # type: ignore[arg-type]

    messages.accept = gated_accept  # type: ignore[method-assign,assignment]
    try:
        ids = [msg_id() for _ in range(5)]
        for mid in ids:
            await a.send_message(mid, [(bob.user_id, [(1001, mid)])])
        async with asyncio.timeout(WAIT):
            while calls < len(ids):
                await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await a.recv(0.3)
        gate.set()
        answers = [await a.expect(Accepted) for _ in ids]
        assert [f.client_msg_id for f in answers] == ids
    finally:
        messages.accept = original  # type: ignore[method-assign]
    await a.close()


@pytest.mark.asyncio
async def test_a_bug_while_deleting_acks_leaves_them_queued_and_the_connection_up(
    memory_relay: RunningRelay,
) -> None:
    _, a, b, bob, seqs = await _queued_for_bob(memory_relay, 2)
    messages = memory_relay.ctx.storage.messages
    original = messages.ack

    async def broken_ack(user_id: str, device_id: int, seqs: list[int]) -> int:
        raise RuntimeError("a bug")

    messages.ack = broken_ack  # type: ignore[method-assign,assignment]
    try:
        await b.ack(seqs)
        await b.send(KeyCheck(b.next_req()))
        await b.expect(KeyStatus)  # the connection still answers
    finally:
        messages.ack = original  # type: ignore[method-assign]
    assert await messages.depth(bob.user_id, 1001) == 2
    await b.ack(seqs)  # the next Ack deletes them
    await b.send(KeyCheck(b.next_req()))
    await b.expect(KeyStatus)
    assert await messages.depth(bob.user_id, 1001) == 0
    await a.close()
    await b.close()
