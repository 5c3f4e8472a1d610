"""Bad input against a real relay: malformed CBOR, unknown frame types, text frames,
frames of exactly MAX_FRAME and MAX_FRAME + 1 bytes, floods beyond the rate limits.
Every case gets a typed error or close code, and the relay stays healthy."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from e2ee import cbor
from e2ee.relay_frames import (
    MAX_RELAY_FRAME,
    Accepted,
    CaughtUp,
    CloseCode,
    DeviceListResult,
    Error,
    ErrorCode,
    GetDeviceList,
    Send,
)
from server import limits
from server.session import MAX_CIPHERTEXT
from server.settings import RateLimit
from tests.server.relay_client import RunningRelay, relay_settings, running_relay
from tests.server.relay_fixtures import memory_relay

__all__ = ["memory_relay"]


def frame_of_size(size: int, user_id: str) -> bytes:
    """A Send frame of exactly ``size`` bytes (padding its ciphertext)."""
    msg_id = secrets.token_bytes(16)
    pad = size - len(Send(msg_id, ((user_id, ((1001, b""),)),)).to_bytes())
    for _ in range(4):  # the length header of the ciphertext grows with it
        frame = Send(msg_id, ((user_id, ((1001, b"\x00" * pad),)),)).to_bytes()
        pad += size - len(frame)
    frame = Send(msg_id, ((user_id, ((1001, b"\x00" * pad),)),)).to_bytes()
    assert len(frame) == size
    return frame


@pytest.mark.asyncio
async def test_malformed_and_unknown_frames(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = await client.create_account()
    conn = await client.connect(account)
    await conn.expect(CaughtUp)
    await conn.send_raw(b"\xff\xfe not cbor")
    assert (await conn.expect(Error)).code is ErrorCode.MALFORMED
    await conn.send_raw(cbor.encode({0: 42}))
    assert (await conn.expect(Error)).code is ErrorCode.UNKNOWN_FRAME
    await conn.send_raw(cbor.encode({0: 64, 1: [1], 2: b"\x00" * 32, 3: 1}))  # a relay frame
    assert (await conn.expect(Error)).code is ErrorCode.UNKNOWN_FRAME
    await conn.send_raw(cbor.encode({0: 2, 1: b"short"}))
    assert (await conn.expect(Error)).code is ErrorCode.MALFORMED
    await conn.ws.send("a text frame")
    assert (await conn.expect(Error)).code is ErrorCode.MALFORMED
    # The connection still works.
    await conn.send(GetDeviceList(1, account.user_id))
    await conn.expect(DeviceListResult)
    await conn.close()


@pytest.mark.asyncio
async def test_repeated_malformed_frames_close(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = await client.create_account()
    conn = await client.connect(account)
    for _ in range(limits.MAX_MALFORMED_FRAMES + 1):
        await conn.send_raw(b"\xff")
    assert await conn.closed() == CloseCode.POLICY_VIOLATION
    assert (await client.get_healthz()).status_code == 200


@pytest.mark.asyncio
async def test_frame_of_max_size_gets_an_answer(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    sender = await client.create_account()
    recipient = await client.create_account()
    conn = await client.connect(sender)
    await conn.expect(CaughtUp)
    frame = frame_of_size(MAX_RELAY_FRAME, recipient.user_id)
    await conn.send_raw(frame)
    error = await conn.expect(Error)  # a typed answer: its ciphertext is above the limit
    assert error.code is ErrorCode.TOO_LARGE
    # A ciphertext just inside the limit is accepted.
    await conn.send_message(
        secrets.token_bytes(16), [(recipient.user_id, [(1001, b"\x00" * MAX_CIPHERTEXT)])]
    )
    await conn.expect(Accepted)
    await conn.close()


@pytest.mark.asyncio
async def test_frame_above_max_size_closed_1009(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    sender = await client.create_account()
    conn = await client.connect(sender)
    await conn.expect(CaughtUp)
    await conn.send_raw(frame_of_size(MAX_RELAY_FRAME + 1, sender.user_id))
    assert await conn.closed() == CloseCode.TOO_BIG
    assert (await client.get_healthz()).status_code == 200
    # The relay still serves others.
    again = await client.connect(sender)
    await again.expect(CaughtUp)
    await again.close()


@pytest.mark.asyncio
async def test_flood_beyond_rate_limits(tmp_path: Path) -> None:
    settings = relay_settings(
        tmp_path,
        rate_send=RateLimit(per_second=0.001, burst=3),
        rate_frames=RateLimit(per_second=0.001, burst=20),
    )
    async with running_relay(settings) as running:
        client = running.client()
        sender = await client.create_account()
        recipient = await client.create_account()
        conn = await client.connect(sender)
        await conn.expect(CaughtUp)
        answers = []
        for _ in range(5):
            await conn.send_message(secrets.token_bytes(16), [(recipient.user_id, [(1001, b"x")])])
            answers.append(await conn.recv())
        assert [type(a).__name__ for a in answers] == ["Accepted"] * 3 + ["Error"] * 2
        assert all(a.code is ErrorCode.RATE_LIMITED for a in answers[3:])  # type: ignore[union-attr]
        # Frames of any kind beyond the per-connection limit: closed.
        for _ in range(20):
            await conn.send(GetDeviceList(1, sender.user_id))
        assert await conn.closed() == CloseCode.RATE_LIMITED
        assert (await client.get_healthz()).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'relay_refusals_total{reason="rate_limited"}' in metrics
