"""Bad input against a relay process (issue 3): malformed CBOR, unknown frame types,
frames of ``MAX_FRAME`` and ``MAX_FRAME`` + 1 bytes, floods beyond the rate limits.
Each gets a typed ``Error`` frame (or HTTP error) or the documented close code, and
afterwards the process is still alive and healthy: ``/healthz`` and ``/readyz``
answer, and a fresh client authenticates and exchanges a message.

The relay runs as a separate process (with low rate limits, so the floods are short)
to show the process itself survives; the in-process tests of the relay cover the
same refusals in more detail.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from e2ee import cbor
from e2ee.relay_frames import (
    Accepted,
    Ack,
    CaughtUp,
    CloseCode,
    Deliver,
    Error,
    ErrorCode,
    KeyCheck,
    RelayFrame,
    Send,
)
from server.limits import MAX_FRAME, MAX_MALFORMED_FRAMES
from tests.server.relay_client import DeviceConnection, RelayClient, TestAccount
from tests.server.relay_process import GENEROUS_RATES, Starter
from tests.server.system.databases import Database
from tests.server.system.flows import WAIT, barrier

SEND_BURST = 10
FRAME_BURST = 200
AUTH_DEVICE_BURST = 5
REGISTRATION_BURST = 12
RATES = {
    **GENEROUS_RATES,
    "rate_send": (0.5, SEND_BURST),
    "rate_frames": (10.0, FRAME_BURST),
    "rate_auth_device": (0.1, AUTH_DEVICE_BURST),
    "rate_registration": (0.1, REGISTRATION_BURST),
}
"""Low limits (refilling slowly), so a flood needs few frames; every other limit is
generous."""


def _send(to: TestAccount, ciphertext: bytes) -> Send:
    return Send(secrets.token_bytes(16), ((to.user_id, ((1001, ciphertext),)),))


def _send_of_size(to: TestAccount, size: int) -> Send:
    """A well-formed Send whose encoding is exactly ``size`` bytes."""
    probe = _send(to, bytes(size // 2))
    frame = _send(to, bytes(size // 2 + size - len(probe.to_bytes())))
    assert len(frame.to_bytes()) == size
    return frame


async def _error(conn: DeviceConnection) -> Error:
    """The next Error frame (skipping CaughtUp and deliveries)."""
    while True:
        frame = await conn.recv(WAIT)
        if isinstance(frame, Error):
            return frame
        assert isinstance(frame, CaughtUp | Deliver), f"unexpected {frame!r}"


async def _answer(conn: DeviceConnection) -> RelayFrame:
    while True:
        frame = await conn.recv(WAIT)
        if not isinstance(frame, CaughtUp | Deliver):
            return frame


@pytest.mark.asyncio
async def test_bad_input_gets_typed_refusals_and_relay_stays_healthy(
    sqlite_database: Database, start_relay: Starter
) -> None:
    relay = await start_relay(sqlite_database.url, rates=RATES)
    client: RelayClient = relay.client()
    alice, bob, carol, dave, erin = [await client.create_account() for _ in range(5)]

    # --- before authentication ---------------------------------------------------------
    conn = await client.open(alice)
    await conn.send_raw(b"\xff\x00 not cbor")
    assert (await _error(conn)).code is ErrorCode.MALFORMED
    await conn.send(KeyCheck(1))
    assert (await _error(conn)).code is ErrorCode.NOT_AUTHENTICATED
    await conn.authenticate()

    # --- malformed CBOR and unknown frame types (typed errors, connection kept) ----------
    bad_frames: list[tuple[bytes | str, ErrorCode]] = [
        (b"\xa1\x00", ErrorCode.MALFORMED),  # truncated map
        (b"\x00", ErrorCode.MALFORMED),  # not a map
        (cbor.encode({1: 2}), ErrorCode.MALFORMED),  # no frame type
        (b"\xa2\x00\x02\x00\x02", ErrorCode.MALFORMED),  # duplicate key
        (cbor.encode({0: 2, 1: b"short", 2: []}), ErrorCode.MALFORMED),  # bad Send
        (cbor.encode({0: 99}), ErrorCode.UNKNOWN_FRAME),
        (cbor.encode({0: 68, 1: 1}), ErrorCode.UNKNOWN_FRAME),  # a relay-to-client type
        ("a text frame", ErrorCode.MALFORMED),
    ]
    for data, code in bad_frames:
        await conn.ws.send(data)
        error = await _error(conn)
        assert error.code is code, (data, error)

    # --- a frame of exactly MAX_FRAME bytes is read; its ciphertext is too large ---------
    big = _send_of_size(bob, MAX_FRAME)
    await conn.send(big)
    error = await _error(conn)
    assert error.code is ErrorCode.TOO_LARGE and error.client_msg_id == big.client_msg_id
    await conn.send_raw(bytes(MAX_FRAME))  # MAX_FRAME bytes of garbage: malformed
    assert (await _error(conn)).code is ErrorCode.MALFORMED
    # The connection still works.
    ok = _send(bob, b"after the big frames")
    await conn.send(ok)
    assert isinstance(await _answer(conn), Accepted)

    # --- a frame of MAX_FRAME + 1 bytes closes with 1009 --------------------------------
    await conn.send(_send_of_size(bob, MAX_FRAME + 1))
    assert await conn.closed(WAIT) == CloseCode.TOO_BIG

    # --- too many malformed frames close with POLICY_VIOLATION ---------------------------
    conn = await client.connect(alice)
    for _ in range(MAX_MALFORMED_FRAMES):
        await conn.send_raw(b"\xff")
        assert (await _error(conn)).code is ErrorCode.MALFORMED
    await conn.send_raw(b"\xff")
    assert await conn.closed(WAIT) == CloseCode.POLICY_VIOLATION

    # --- floods -----------------------------------------------------------------------
    # Sends beyond the per-device rate (Bob has sent nothing yet): typed RATE_LIMITED
    # errors, connection kept.
    conn = await client.connect(bob)
    for i in range(SEND_BURST + 5):
        await conn.send(_send(alice, b"flood %d" % i))
    answers = [await _answer(conn) for _ in range(SEND_BURST + 5)]
    accepted = [a for a in answers if isinstance(a, Accepted)]
    limited = [a for a in answers if isinstance(a, Error) and a.code is ErrorCode.RATE_LIMITED]
    assert len(accepted) + len(limited) == len(answers)
    assert SEND_BURST <= len(accepted) < len(answers) and limited
    await barrier(conn)  # still open
    await conn.close()

    # Frames beyond the per-connection rate: closed with RATE_LIMITED.
    conn = await client.connect(alice)
    for _ in range(FRAME_BURST * 2):
        await conn.send(Ack((2**40,)))  # acknowledges nothing; no answer
    assert await conn.closed(WAIT) == CloseCode.RATE_LIMITED

    # Authentication attempts beyond the per-device rate: refused and closed.
    codes: list[int | None] = []
    for _ in range(AUTH_DEVICE_BURST + 2):
        conn = await client.open(carol)
        await conn.send(conn.auth_frame())
        answer = await conn.recv(WAIT)
        if isinstance(answer, Error):
            assert answer.code is ErrorCode.RATE_LIMITED
            codes.append(await conn.closed(WAIT))
        else:
            await conn.close()
    assert codes and set(codes) == {CloseCode.RATE_LIMITED}

    # Registrations beyond the per-IP rate (garbage bodies: typed 400s, then 429s).
    statuses: list[int] = []
    async with client.http() as http:
        for _ in range(REGISTRATION_BURST + 5):
            response = await http.post(
                "/v1/register",
                content=b"\xff garbage",
                headers={"content-type": "application/cbor"},
            )
            statuses.append(response.status_code)
            body = response.json()
            assert body["code"] in (ErrorCode.MALFORMED, ErrorCode.RATE_LIMITED), body
    assert 400 in statuses and statuses[-1] == 429

    # --- the relay is healthy afterwards -------------------------------------------------
    assert relay.running
    assert (await relay.healthz()).status_code == 200
    async with httpx.AsyncClient(timeout=WAIT) as http:
        assert (await http.get(f"http://127.0.0.1:{relay.port}/readyz")).status_code == 200
    d = await client.connect(dave)
    e = await client.connect(erin)
    await e.expect(CaughtUp)
    message = _send(erin, b"still working")
    await d.send(message)
    assert isinstance(await _answer(d), Accepted)
    delivered = await e.expect(Deliver)
    assert delivered.ciphertext == b"still working" and delivered.sender_user == dave.user_id
    await d.close()
    await e.close()
    log = relay.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
