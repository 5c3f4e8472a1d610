"""Contract: queues and idempotency records (every implementation)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from server.storage.base import (
    IDEMPOTENCY_TTL_MS,
    Acceptance,
    DeviceMismatch,
    IdempotencyConflict,
    MismatchedDevices,
    QueuedMessage,
    QueueFull,
    Storage,
    UnknownAccount,
)

from .helpers import QUOTA, T0, TTL_MS, digest, make

pytestmark = pytest.mark.asyncio


async def send(
    storage: Storage,
    msg_id: bytes,
    addressed: list[tuple[str, list[tuple[int, bytes]]]],
    *,
    sender: tuple[str, int] = ("alice", 1),
    now: int = T0,
    ttl: int = TTL_MS,
    quota: int = QUOTA,
    body: bytes | None = None,
) -> object:
    """Accept one send from ``sender`` (digest over ``body``, default the message id)."""
    return await storage.messages.accept(
        sender[0],
        sender[1],
        msg_id,
        digest(msg_id if body is None else body),
        addressed,
        now,
        now + ttl,
        quota,
    )


@pytest_asyncio.fixture
async def people(storage: Storage) -> Storage:
    await make(storage, "alice", [1, 2])
    await make(storage, "bob", [10, 11])
    return storage


async def test_queue_order_and_sequence_numbers(people: Storage) -> None:
    s = people
    first = await send(s, b"m1", [("bob", [(10, b"a"), (11, b"b")]), ("alice", [(2, b"c")])])
    assert first == Acceptance(T0, (("bob", 10, 1), ("bob", 11, 1), ("alice", 2, 1)), False)
    for i in range(2, 6):
        got = await send(
            s,
            b"m%d" % i,
            [("bob", [(10, b"x%d" % i), (11, b"y")]), ("alice", [(2, b"z")])],
            now=T0 + i,
        )
        assert isinstance(got, Acceptance)
        assert got.deliveries[0] == ("bob", 10, i)
    queue = await s.messages.fetch("bob", 10, 0, 100, T0)
    assert [m.seq for m in queue] == [1, 2, 3, 4, 5]
    assert queue[0] == QueuedMessage(1, "alice", 1, T0, b"a")
    assert [m.ciphertext for m in queue[1:]] == [b"x2", b"x3", b"x4", b"x5"]
    assert [m.seq for m in await s.messages.fetch("bob", 10, 2, 2, T0)] == [3, 4]
    assert await s.messages.fetch("bob", 10, 5, 100, T0) == []
    assert await s.messages.fetch("bob", 10, 0, 0, T0) == []
    assert await s.messages.depth("bob", 10) == 5
    assert await s.messages.depth("nobody", 1) == 0
    assert await s.messages.fetch("nobody", 1, 0, 10, T0) == []


async def test_ack_deletes_and_sequence_numbers_are_never_reused(people: Storage) -> None:
    s = people
    for i in range(1, 4):
        await send(s, b"m%d" % i, [("bob", [(10, b"%d" % i), (11, b"")]), ("alice", [(2, b"")])])
    assert await s.messages.ack("bob", 10, [1, 3, 99]) == 2
    assert await s.messages.ack("bob", 10, [1]) == 0
    assert await s.messages.ack("bob", 10, []) == 0
    assert await s.messages.ack("bob", 77, [2]) == 0
    assert [m.seq for m in await s.messages.fetch("bob", 10, 0, 10, T0)] == [2]
    assert await s.messages.depth("bob", 11) == 3  # another device's queue is its own
    assert await s.messages.ack("bob", 10, [2]) == 1
    await send(s, b"m4", [("bob", [(10, b"4"), (11, b"")]), ("alice", [(2, b"")])])
    assert [m.seq for m in await s.messages.fetch("bob", 10, 0, 10, T0)] == [4]


async def test_expired_messages_are_not_fetched(people: Storage) -> None:
    s = people
    await send(s, b"short", [("bob", [(10, b"s"), (11, b"")]), ("alice", [(2, b"")])], ttl=10)
    await send(s, b"long", [("bob", [(10, b"l"), (11, b"")]), ("alice", [(2, b"")])], ttl=100)
    assert [m.ciphertext for m in await s.messages.fetch("bob", 10, 0, 10, T0 + 9)] == [b"s", b"l"]
    assert [m.ciphertext for m in await s.messages.fetch("bob", 10, 0, 10, T0 + 10)] == [b"l"]
    assert await s.messages.fetch("bob", 10, 0, 10, T0 + 100) == []


async def test_same_id_same_digest_is_the_original_acceptance(people: Storage) -> None:
    s = people
    to = [("bob", [(10, b"a"), (11, b"b")]), ("alice", [(2, b"c")])]
    await send(s, b"id", to)
    again = await send(s, b"id", to, now=T0 + 5000)
    assert again == Acceptance(T0, (), True)
    assert await s.messages.depth("bob", 10) == 1
    # Even after the recipient acknowledged it, and even if the devices changed since.
    await s.messages.ack("bob", 10, [1])
    assert await send(s, b"id", [("bob", [(10, b"a")])], now=T0 + 9000) == Acceptance(T0, (), True)
    assert await s.messages.depth("bob", 10) == 0


async def test_same_id_other_digest_is_a_conflict(people: Storage) -> None:
    s = people
    to = [("bob", [(10, b"a"), (11, b"b")]), ("alice", [(2, b"c")])]
    await send(s, b"id", to)
    with pytest.raises(IdempotencyConflict):
        await send(s, b"id", to, body=b"something else")
    assert await s.messages.depth("bob", 10) == 1
    # The id is the sender device's own: another device may use the same id.
    other = await send(
        s, b"id", [("bob", [(10, b"a"), (11, b"b")]), ("alice", [(1, b"")])], sender=("alice", 2)
    )
    assert isinstance(other, Acceptance)
    assert not other.duplicate


async def test_device_mismatch_stores_nothing(people: Storage) -> None:
    s = people
    got = await send(s, b"id", [("bob", [(10, b"a"), (12, b"b")]), ("alice", [(1, b""), (2, b"")])])
    assert got == DeviceMismatch(
        (MismatchedDevices("bob", (11,), (12,)), MismatchedDevices("alice", (), (1,)))
    )
    assert await s.messages.depth("bob", 10) == 0
    assert await s.messages.depth("alice", 2) == 0
    # Not recorded: the corrected send with the same id is accepted afresh.
    fixed = await send(s, b"id", [("bob", [(10, b"a"), (11, b"b")]), ("alice", [(2, b"")])])
    assert isinstance(fixed, Acceptance)
    assert not fixed.duplicate


async def test_missing_user_of_own_devices_is_a_mismatch(people: Storage) -> None:
    got = await send(people, b"id", [("bob", [(10, b"a"), (11, b"b")]), ("alice", [])])
    assert got == DeviceMismatch((MismatchedDevices("alice", (2,), ()),))


async def test_unknown_user_stores_nothing(people: Storage) -> None:
    s = people
    with pytest.raises(UnknownAccount) as info:
        await send(s, b"id", [("bob", [(10, b"a"), (11, b"b")]), ("carol", [(1, b"")])])
    assert info.value.user_id == "carol"
    assert await s.messages.depth("bob", 10) == 0


async def test_full_queue_refuses_the_whole_send(people: Storage) -> None:
    s = people
    await send(s, b"m1", [("bob", [(10, b""), (11, b"")]), ("alice", [(2, b"")])], quota=2)
    await send(s, b"m2", [("bob", [(10, b""), (11, b"")]), ("alice", [(2, b"")])], quota=2)
    await s.messages.ack("bob", 11, [1, 2])
    await s.messages.ack("alice", 2, [1, 2])
    with pytest.raises(QueueFull) as info:
        await send(s, b"m3", [("bob", [(11, b""), (10, b"")]), ("alice", [(2, b"")])], quota=2)
    assert (info.value.user_id, info.value.device_id) == ("bob", 10)
    assert await s.messages.depth("bob", 11) == 0  # the other queues are untouched
    assert await s.messages.depth("alice", 2) == 0
    await s.messages.ack("bob", 10, [1])
    got = await send(s, b"m3", [("bob", [(11, b""), (10, b"")]), ("alice", [(2, b"")])], quota=2)
    assert isinstance(got, Acceptance)
    assert got.deliveries == (("bob", 11, 3), ("bob", 10, 3), ("alice", 2, 3))


async def test_repeated_user_or_device_is_a_caller_bug(people: Storage) -> None:
    with pytest.raises(ValueError, match="user"):
        await send(people, b"id", [("bob", [(10, b"")]), ("bob", [(11, b"")])])
    with pytest.raises(ValueError, match="device"):
        await send(people, b"id", [("bob", [(10, b""), (10, b"")])])


async def test_purge_expired_and_old_idempotency_records(people: Storage) -> None:
    s = people
    for i in range(3):
        await send(
            s, b"old%d" % i, [("bob", [(10, b""), (11, b"")]), ("alice", [(2, b"")])], ttl=10
        )
    await send(s, b"new", [("bob", [(10, b""), (11, b"")]), ("alice", [(2, b"")])], ttl=TTL_MS)
    # 9 expired queue entries, no idempotency record old enough yet.
    assert await s.messages.purge_expired(T0 + 10, 4) == 4
    assert await s.messages.purge_expired(T0 + 10, 100) == 5
    assert await s.messages.purge_expired(T0 + 10, 100) == 0
    assert await s.messages.depth("bob", 10) == 1
    # A week on: the records of all 4 sends go (the live message stays queued).
    week = T0 + IDEMPOTENCY_TTL_MS
    assert await s.messages.purge_expired(week, 3) == 3
    assert await s.messages.purge_expired(week, 100) == 1
    assert await s.messages.depth("bob", 10) == 1
    again = await send(
        s, b"old0", [("bob", [(10, b""), (11, b"")]), ("alice", [(2, b"")])], now=week
    )
    assert isinstance(again, Acceptance)
    assert not again.duplicate


async def test_concurrent_sends_get_distinct_increasing_numbers(people: Storage) -> None:
    s = people
    results = await asyncio.gather(
        *(
            send(s, b"c%d" % i, [("bob", [(10, b"%d" % i), (11, b"")]), ("alice", [(2, b"")])])
            for i in range(40)
        )
    )
    seqs = sorted(r.deliveries[0][2] for r in results if isinstance(r, Acceptance))
    assert seqs == list(range(1, 41))
    queue = await s.messages.fetch("bob", 10, 0, 100, T0)
    assert [m.seq for m in queue] == seqs
    by_seq = {r.deliveries[0][2]: i for i, r in enumerate(results) if isinstance(r, Acceptance)}
    assert all(m.ciphertext == b"%d" % by_seq[m.seq] for m in queue)


async def test_sends_started_in_order_are_accepted_in_that_order(people: Storage) -> None:
    """``accepts_in_order``: sends started one after the other without awaiting (as a
    connection with several in flight does) are numbered in that order, also across
    group commits (300 calls: more than one PostgreSQL batch of ``MAX_BATCH``), and an
    ack queued among them is applied."""
    s = people
    assert s.messages.accepts_in_order
    tasks = [
        asyncio.create_task(
            send(s, b"o%d" % i, [("bob", [(10, b"%d" % i), (11, b"")]), ("alice", [(2, b"")])])
        )
        for i in range(300)
    ]
    acked = asyncio.create_task(s.messages.ack("bob", 11, [1, 2, 3]))
    results = await asyncio.gather(*tasks)
    assert [r.deliveries[0][2] for r in results if isinstance(r, Acceptance)] == list(range(1, 301))
    assert await acked == 3
    assert await s.messages.depth("bob", 11) == 297
    queue = await s.messages.fetch("bob", 10, 0, 300, T0)
    assert [m.ciphertext for m in queue] == [b"%d" % i for i in range(300)]


async def test_concurrent_calls_answer_as_if_run_one_by_one(people: Storage) -> None:
    """Calls issued together (one group commit; on SQLite one grouped statement set for
    the sends and one for the acks) get the answers of running them one by one: a
    repeated id in the same batch is a duplicate of the first (with its time) or a
    conflict, refusals of any kind write nothing and do not disturb the others, the
    quota counts the sends before it, and acks delete what is there once."""
    s = people
    both_bob = [(10, b"b10"), (11, b"b11")]
    calls = [
        send(s, b"m1", [("bob", both_bob), ("alice", [(2, b"a2")])], now=T0),
        send(s, b"m1", [("bob", both_bob), ("alice", [(2, b"a2")])], now=T0 + 5),
        send(s, b"m1", [("bob", both_bob)], body=b"other", now=T0 + 6),
        send(s, b"m2", [("bob", [(10, b"x")]), ("alice", [(2, b"")])]),
        send(s, b"m3", [("carol", [(1, b"x")])]),
        send(s, b"m4", [("bob", [(10, b"x"), (10, b"y")]), ("alice", [(2, b"")])]),
        send(s, b"m5", [("bob", [(10, b"c10"), (11, b"c11")]), ("alice", [(2, b"c2")])]),
        send(s, b"m6", [("bob", both_bob), ("alice", [(2, b"")])], quota=2),
        s.messages.ack("bob", 11, [1]),
        s.messages.ack("bob", 11, [1, 2]),
        s.messages.ack("alice", 2, []),
    ]
    got = await asyncio.gather(*calls, return_exceptions=True)
    assert got[0] == Acceptance(T0, (("bob", 10, 1), ("bob", 11, 1), ("alice", 2, 1)), False)
    assert got[1] == Acceptance(T0, (), True)
    assert isinstance(got[2], IdempotencyConflict)
    assert got[3] == DeviceMismatch((MismatchedDevices("bob", (11,), ()),))
    assert isinstance(got[4], UnknownAccount)
    assert isinstance(got[5], ValueError)
    assert got[6] == Acceptance(T0, (("bob", 10, 2), ("bob", 11, 2), ("alice", 2, 2)), False)
    assert isinstance(got[7], QueueFull)
    assert got[8:] == [1, 1, 0]
    queue = await s.messages.fetch("bob", 10, 0, 10, T0)
    assert [(m.seq, m.ciphertext) for m in queue] == [(1, b"b10"), (2, b"c10")]
    assert await s.messages.fetch("bob", 11, 0, 10, T0) == []
    assert [await s.messages.depth(u, d) for u, d in (("bob", 10), ("bob", 11), ("alice", 2))] == [
        2,
        0,
        2,
    ]
    # The counters went on from where the batch left them.
    later = await send(s, b"m7", [("bob", both_bob), ("alice", [(2, b"")])])
    assert later == Acceptance(T0, (("bob", 10, 3), ("bob", 11, 3), ("alice", 2, 3)), False)


async def test_acks_issued_together_delete_each_entry_once(people: Storage) -> None:
    """Acks issued together (one batch, with no send in it) for entries stored before:
    the first ack naming an entry deletes and uncounts it, a later one in the same batch
    finds it gone, as run one by one; a device only acknowledged to is uncounted too."""
    s = people
    for i in range(3):
        await send(s, b"k%d" % i, [("bob", [(10, b"x"), (11, b"y")]), ("alice", [(2, b"z")])])
    got = await asyncio.gather(
        s.messages.ack("bob", 10, [1, 2]),
        s.messages.ack("bob", 10, [2, 3]),
        s.messages.ack("bob", 11, [3]),
        s.messages.ack("bob", 11, [3, 9]),
        s.messages.ack("alice", 2, [2]),
    )
    assert got == [2, 1, 1, 0, 1]
    depths = [await s.messages.depth(u, d) for u, d in (("bob", 10), ("bob", 11), ("alice", 2))]
    assert depths == [0, 2, 2]
    assert [m.seq for m in await s.messages.fetch("bob", 11, 0, 10, T0)] == [1, 2]
    assert [m.seq for m in await s.messages.fetch("alice", 2, 0, 10, T0)] == [1, 3]


async def test_a_send_to_no_device_is_recorded(storage: Storage) -> None:
    """A send whose addressed users have no device to receive it (a one-device user
    writing only to their own account) is accepted with no delivery, and its id is
    recorded all the same: alone, and among other sends of one batch."""
    s = storage
    await make(s, "solo", [1])
    await make(s, "pair", [1, 2])
    first = await send(s, b"n1", [("solo", [])], sender=("solo", 1))
    assert first == Acceptance(T0, (), False)
    together = await asyncio.gather(
        send(s, b"n2", [("solo", [])], sender=("solo", 1)),
        send(s, b"p1", [("pair", [(2, b"x")])], sender=("pair", 1)),
        send(s, b"n2", [("solo", [])], sender=("solo", 1), body=b"other"),
        return_exceptions=True,
    )
    assert together[0] == Acceptance(T0, (), False)
    assert together[1] == Acceptance(T0, (("pair", 2, 1),), False)
    assert isinstance(together[2], IdempotencyConflict)
    with pytest.raises(IdempotencyConflict):
        await send(s, b"n1", [("solo", [])], sender=("solo", 1), body=b"other")
    assert await send(s, b"n2", [("solo", [])], sender=("solo", 1)) == Acceptance(T0, (), True)
