"""The offline queue across a graceful relay restart (SIGTERM), over a relay process on
a SQLite file and on the real PostgreSQL, notifying through the real Redis (issue 3):
every socket is closed with ``GOING_AWAY``; after the restart the queued messages
arrive in order, then ``CaughtUp``; unacknowledged ones come back, acknowledged ones
never do; live delivery works again."""

from __future__ import annotations

import asyncio
import secrets
import signal

import pytest

from e2ee.relay_frames import Accepted, CaughtUp, CloseCode, Deliver, Send
from tests.server.relay_process import Starter
from tests.server.system.databases import Database
from tests.server.system.flows import WAIT, barrier, drain, send_pipelined
from tests.services import RUN_PREFIX, connect_redis, redis_url

QUEUED = 200
"""Messages queued while the recipient is offline (within one delivery window, so the
recipient can read them all before acknowledging any)."""
ACKED_BEFORE = 80
"""Of those, acknowledged before the restart."""


@pytest.mark.asyncio
async def test_offline_queue_survives_graceful_restart(
    database: Database, start_relay: Starter
) -> None:
    redis = await connect_redis()  # skips when Redis is unreachable
    await redis.aclose()
    prefix = f"{RUN_PREFIX}restart-{secrets.token_hex(4)}:"
    relay = await start_relay(database.url, redis_url=redis_url(), redis_prefix=prefix)
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    bodies = [b"queued-%04d-" % i + secrets.token_bytes(8) for i in range(QUEUED)]

    # Bob offline: everything is queued.
    sender = await client.connect(alice)
    frames = [Send(secrets.token_bytes(16), ((bob.user_id, ((1001, b),)),)) for b in bodies]
    answers = await send_pipelined(sender, frames)
    assert all(isinstance(a, Accepted) for a in answers)
    assert await database.queue_rows(bob.user_id) == QUEUED

    # Bob reads the backlog in order, then CaughtUp; he acknowledges the first part
    # only (the barrier confirms the relay has handled the Ack).
    receiver = await client.connect(bob)
    drained = await drain(receiver, ack=False)
    assert drained.caught_up
    assert [d.ciphertext for d in drained.delivered] == bodies
    seqs = [d.seq for d in drained.delivered]
    assert seqs == sorted(seqs)
    await receiver.ack(seqs[:ACKED_BEFORE])
    await barrier(receiver)
    assert await database.queue_rows(bob.user_id) == QUEUED - ACKED_BEFORE

    # Graceful shutdown: both sockets are closed with GOING_AWAY, the lifespan ends
    # (uvicorn then re-raises the SIGTERM it caught, so the process ends by it).
    stopping = asyncio.create_task(relay.terminate())
    codes = [await conn.closed(WAIT) for conn in (sender, receiver)]
    assert await stopping in (0, -signal.SIGTERM)
    assert codes == [CloseCode.GOING_AWAY, CloseCode.GOING_AWAY]
    assert "Application shutdown complete" in relay.log_text()

    # Restarted on the same database: the unacknowledged rest, in order, then CaughtUp.
    await relay.start()
    client = relay.client()
    receiver = await client.connect(bob)
    _, before = await receiver.recv_until(CaughtUp, WAIT)
    again = [f for f in before if isinstance(f, Deliver)]
    assert len(again) == len(before)
    assert [d.ciphertext for d in again] == bodies[ACKED_BEFORE:]
    assert [d.seq for d in again] == seqs[ACKED_BEFORE:]
    await receiver.ack([d.seq for d in again])
    await barrier(receiver)
    await receiver.close()

    # Acknowledged ones never come back.
    receiver = await client.connect(bob)
    _, none = await receiver.recv_until(CaughtUp, WAIT)
    assert none == []
    assert await database.queue_rows(bob.user_id) == 0
    # Live delivery (through the new process's Redis subscriptions).
    sender = await client.connect(alice)
    (answer,) = await send_pipelined(
        sender, [Send(secrets.token_bytes(16), ((bob.user_id, ((1001, b"live"),)),))]
    )
    assert isinstance(answer, Accepted)
    assert (await receiver.expect(Deliver)).ciphertext == b"live"
    await sender.close()
    await receiver.close()
