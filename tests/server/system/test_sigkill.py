"""The relay killed with SIGKILL mid-stream and restarted on the same database: every
message the sender was told was accepted is delivered (0 acknowledged messages lost),
on a SQLite file and on the real PostgreSQL (issue 3)."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from e2ee.relay_frames import Accepted, CaughtUp, Deliver, Send
from tests.server.relay_client import DeviceConnection
from tests.server.relay_process import Starter
from tests.server.system.databases import Database
from tests.server.system.flows import ACK_BATCH, PIPELINE_WINDOW, WAIT, drain

SEED = 0x5161
STREAM = 5_000
"""Messages the sender would send; the relay is killed long before the end."""
KILL_AFTER = 400
"""Acceptances before the kill."""


@pytest.mark.asyncio
async def test_sigkill_mid_stream_loses_no_accepted_message(
    database: Database, start_relay: Starter
) -> None:
    relay = await start_relay(database.url)
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    rng = random.Random(SEED)
    frames = [
        Send(rng.randbytes(16), ((bob.user_id, ((1001, b"kill-%05d-" % i + rng.randbytes(8)),)),))
        for i in range(STREAM)
    ]
    body_of = {f.client_msg_id: f.addressed[0][1][0][1] for f in frames}

    sender = await client.connect(alice)
    await sender.expect(CaughtUp)
    receiver = await client.connect(bob)  # reads live and acknowledges while it can
    accepted: set[bytes] = set()
    seen_before: list[bytes] = []
    sent = 0
    room = asyncio.Semaphore(PIPELINE_WINDOW)
    enough = asyncio.Event()

    async def write() -> None:
        nonlocal sent
        for frame in frames:
            await room.acquire()
            await sender.send(frame)
            sent += 1

    async def read() -> None:
        while True:
            frame = await sender.recv(WAIT)
            if isinstance(frame, Accepted):
                accepted.add(frame.client_msg_id)
                room.release()
                if len(accepted) >= KILL_AFTER:
                    enough.set()

    async def receive(conn: DeviceConnection) -> None:
        pending: list[int] = []
        while True:
            frame = await conn.recv(WAIT)
            if isinstance(frame, Deliver):
                seen_before.append(frame.ciphertext)
                pending.append(frame.seq)
                if len(pending) >= ACK_BATCH // 4:
                    await conn.ack(pending)
                    pending = []

    tasks = [asyncio.create_task(c) for c in (write(), read(), receive(receiver))]
    try:
        async with asyncio.timeout(WAIT):
            await enough.wait()
        in_flight = sent - len(accepted)
        assert in_flight > 0, "nothing in flight at the kill"
        await relay.kill()
        # The clients see their connections end (abruptly: no close frame).
        for conn in (sender, receiver):
            async with asyncio.timeout(WAIT):
                await conn.ws.wait_closed()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    acknowledged = len(accepted)

    await relay.start()  # the same database, a new process
    client = relay.client()
    receiver = await client.connect(bob)
    drained = await drain(receiver)
    after = [d.ciphertext for d in drained.delivered]
    assert len(after) == len(set(after)), "a message delivered twice after the restart"
    delivered = set(seen_before) | set(after)
    lost = [mid for mid in accepted if body_of[mid] not in delivered]
    assert lost == [], f"{len(lost)} acknowledged messages lost"
    assert delivered <= set(body_of.values())
    assert await database.queue_rows(bob.user_id) == 0
    if database.sqlite_path is not None:
        assert await database.scalar("PRAGMA integrity_check") == "ok"
    print(
        f"[{database.kind}] killed with {in_flight} sends in flight after {acknowledged} "
        f"acceptances; delivered {len(delivered)} ({len(seen_before)} before the kill, "
        f"{len(after)} after the restart), 0 of {acknowledged} acknowledged lost"
    )
    await receiver.close()
