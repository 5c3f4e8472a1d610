"""1,000 messages, each sent 1 to 5 times with the same client message id, over a relay
process on a SQLite file and on the real PostgreSQL: exactly 1,000 stored, 1,000
delivered, each once (issue 3, "What the tests must show").

Among the retries: ones on the same connection (pipelined, interleaved with other
messages), ones after the connection dropped between commit and acknowledgement
(the sender closes its socket right after sending, before reading ``Accepted``; the
test confirms in the database that the send was committed, then reconnects and
resends), and ones after the recipient already acknowledged the message.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from e2ee.relay_frames import Accepted, CaughtUp, Deliver, Send
from tests.server.relay_client import TestAccount
from tests.server.relay_process import Starter
from tests.server.system.databases import Database
from tests.server.system.flows import Answer, barrier, drain, eventually, send_pipelined

SEED = 0x1DE3
"""The plan's seed (ids, bodies, copies, which retries are special, the order)."""
MESSAGES = 1_000
DROPPED = 10
"""Messages whose first send is followed by a dropped connection."""
AFTER_ACK = 50
"""Messages with one retry after the recipient acknowledged them."""
SENDERS = 4
"""Sending accounts (message i is sent by sender i mod 4), so commits overlap."""


@pytest.mark.asyncio
async def test_each_message_stored_and_delivered_once(
    database: Database, start_relay: Starter
) -> None:
    relay = await start_relay(database.url)
    client = relay.client()
    senders: list[TestAccount] = [await client.create_account() for _ in range(SENDERS)]
    bob: TestAccount = await client.create_account()

    rng = random.Random(SEED)
    ids = [rng.randbytes(16) for _ in range(MESSAGES)]
    bodies = [b"idem-%04d-" % i + rng.randbytes(16) for i in range(MESSAGES)]
    assert len(set(ids)) == MESSAGES
    copies = [rng.randint(1, 5) for _ in range(MESSAGES)]
    special = rng.sample([i for i in range(MESSAGES) if copies[i] >= 2], DROPPED + AFTER_ACK)
    dropped, after_ack = special[:DROPPED], set(special[DROPPED:])

    def sender_of(i: int) -> TestAccount:
        return senders[i % SENDERS]

    def frame(i: int) -> Send:
        return Send(ids[i], ((bob.user_id, ((1001, bodies[i]),)),))

    first: dict[int, Accepted] = {}
    order: dict[str, list[int]] = {a.user_id: [] for a in senders}
    """Per sender, its messages in the order the relay first accepted them."""

    def record(i: int, answer: Answer) -> None:
        assert isinstance(answer, Accepted), f"expected Accepted, got {answer!r}"
        if i in first:
            assert answer == first[i], "a retry got another acceptance than the original"
        else:
            first[i] = answer
            order[sender_of(i).user_id].append(i)

    async def stored() -> tuple[int, int]:
        idem = [await database.idempotency_rows(a.user_id) for a in senders]
        return await database.queue_rows(bob.user_id), sum(idem)

    # 1. Drops between commit and acknowledgement: once the relay has nothing else to
    # write to us, send and close the socket before reading Accepted; see the commit
    # in the database; reconnect and resend.
    for i in dropped:
        conn = await client.connect(sender_of(i))
        await conn.expect(CaughtUp)
        await conn.send(frame(i))
        conn.ws.transport.close()
        user_id, msg_id = sender_of(i).user_id, ids[i]
        await eventually(lambda: database.accepted(user_id, msg_id), "commit")  # noqa: B023
        conn = await client.connect(sender_of(i))
        (answer,) = await send_pipelined(conn, [frame(i)])
        record(i, answer)
        await conn.close()

    # 2. Every other copy, shuffled (retries interleave with other messages) and
    # pipelined, the senders concurrently; the after-ack messages keep one copy for 4.
    plan: list[int] = []
    for i in range(MESSAGES):
        plan += [i] * (copies[i] - (2 if i in dropped else 0) - (1 if i in after_ack else 0))
    rng.shuffle(plan)
    conns = [await client.connect(a) for a in senders]

    async def send_all(indices: list[int]) -> None:
        async def one(k: int) -> None:
            mine = [i for i in indices if i % SENDERS == k]
            answers = await send_pipelined(conns[k], [frame(i) for i in mine])
            for i, answer in zip(mine, answers, strict=True):
                record(i, answer)

        await asyncio.gather(*(one(k) for k in range(SENDERS)))

    await send_all(plan)
    assert len(first) == MESSAGES
    # Exactly 1,000 stored: one queue entry and one idempotency record per message.
    assert await stored() == (MESSAGES, MESSAGES)

    # 3. The recipient reads everything once, in acceptance order, and acknowledges.
    receiver = await client.connect(bob)
    drained = await drain(receiver)
    got = [d.ciphertext for d in drained.delivered]
    assert len(got) == MESSAGES and set(got) == set(bodies)
    seqs = [d.seq for d in drained.delivered]
    assert seqs == sorted(seqs) and len(set(seqs)) == MESSAGES
    for account in senders:
        theirs = [d.ciphertext for d in drained.delivered if d.sender_user == account.user_id]
        assert theirs == [bodies[i] for i in order[account.user_id]]
    assert await database.queue_rows(bob.user_id) == 0

    # 4. Retries after the recipient acknowledged: the original acceptance, nothing
    # stored. A new message afterwards is the next delivery (a duplicate stored by a
    # retry would have come first: the queue is FIFO).
    await send_all(sorted(after_ack))
    sentinel = Send(rng.randbytes(16), ((bob.user_id, ((1001, b"sentinel"),)),))
    (answer,) = await send_pipelined(conns[0], [sentinel])
    assert isinstance(answer, Accepted)
    nxt = await receiver.expect(Deliver)
    assert nxt.ciphertext == b"sentinel"
    assert await stored() == (1, MESSAGES + 1)
    await receiver.ack([nxt.seq])
    await barrier(receiver)
    assert await database.queue_rows(bob.user_id) == 0

    print(f"[{database.kind}] {sum(copies) + 1} sends of {MESSAGES + 1} messages: stored once each")
    for conn in [*conns, receiver]:
        await conn.close()
    assert relay.running
