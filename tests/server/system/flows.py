"""Client-side flows the system tests share: pipelined sends, draining a queue with
acknowledgements, a request/answer barrier, and bounded polls (never a blind sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from e2ee.relay_frames import (
    Accepted,
    CaughtUp,
    Deliver,
    Error,
    KeyCheck,
    KeyStatus,
    Mismatch,
    RelayFrame,
    Send,
)
from tests.server.relay_client import DeviceConnection

__all__ = [
    "ACK_BATCH",
    "ACK_BYTES",
    "PIPELINE_WINDOW",
    "Answer",
    "Drained",
    "barrier",
    "drain",
    "eventually",
    "send_pipelined",
]

PIPELINE_WINDOW = 32
"""Sends in flight on one connection (below the relay's bound on queued answers)."""
ACK_BATCH = 100
"""Deliveries acknowledged per Ack frame (below the relay's delivery window)."""
ACK_BYTES = 1024 * 1024
"""...or fewer, once their ciphertexts reach this (below the window's byte bound)."""
WAIT = 30.0
"""Upper bound of any single wait of these flows."""

Answer = Accepted | Mismatch | Error


def _answer_of(frame: RelayFrame) -> Answer | None:
    if isinstance(frame, Accepted | Mismatch):
        return frame
    if isinstance(frame, Error) and frame.client_msg_id is not None:
        return frame
    return None


async def send_pipelined(
    conn: DeviceConnection,
    frames: Sequence[Send],
    window: int = PIPELINE_WINDOW,
    on_answer: Callable[[int, Answer], None] | None = None,
) -> list[Answer]:
    """Send ``frames`` with at most ``window`` unanswered, and return the answers in
    order (the relay handles one connection's frames in order, so the i-th answer is
    the i-th send's: checked by client message id). Frames that are not answers
    (``CaughtUp``, deliveries) are skipped. ``on_answer(i, answer)`` is called as each
    answer arrives.

    Raises:
        ConnectionClosed: the relay closed the connection (the answers so far are lost
            to the caller unless ``on_answer`` recorded them).
    """
    answers: list[Answer] = []
    room = asyncio.Semaphore(window)

    async def read() -> None:
        while len(answers) < len(frames):
            answer = _answer_of(await conn.recv(WAIT))
            if answer is None:
                continue
            expected = frames[len(answers)].client_msg_id
            assert answer.client_msg_id == expected, "answers out of order"
            answers.append(answer)
            room.release()
            if on_answer is not None:
                on_answer(len(answers) - 1, answer)

    async def write() -> None:
        for frame in frames:
            await room.acquire()
            await conn.send(frame)

    async with asyncio.TaskGroup() as group:
        group.create_task(read())
        group.create_task(write())
    return answers


@dataclass
class Drained:
    """What :func:`drain` read."""

    delivered: list[Deliver] = field(default_factory=list)
    other: list[RelayFrame] = field(default_factory=list)
    caught_up: bool = False


async def drain(
    conn: DeviceConnection, *, ack: bool = True, until_caught_up: bool = True
) -> Drained:
    """Read deliveries until ``CaughtUp`` (acknowledging in batches of
    :data:`ACK_BATCH` or :data:`ACK_BYTES` when ``ack``; the last batch is acknowledged after ``CaughtUp``
    and confirmed by a :func:`barrier`, so the queue is empty when this returns)."""
    out = Drained()
    pending: list[int] = []
    pending_bytes = 0
    while True:
        frame = await conn.recv(WAIT)
        if isinstance(frame, Deliver):
            out.delivered.append(frame)
            pending.append(frame.seq)
            pending_bytes += len(frame.ciphertext)
            if ack and (len(pending) >= ACK_BATCH or pending_bytes >= ACK_BYTES):
                await conn.ack(pending)
                pending, pending_bytes = [], 0
        elif isinstance(frame, CaughtUp):
            out.caught_up = True
            if until_caught_up:
                break
        else:
            out.other.append(frame)
    if ack and pending:
        await conn.ack(pending)
    if ack:
        late = await barrier(conn)
        assert not any(isinstance(f, Deliver) for f in late), "deliveries after CaughtUp"
    return out


async def barrier(conn: DeviceConnection) -> list[RelayFrame]:
    """Send a ``KeyCheck`` and read until its ``KeyStatus``: every frame sent before
    it (an Ack among them) has been handled by the relay. Returns the frames read
    before the answer."""
    req = conn.next_req()
    await conn.send(KeyCheck(req))
    before: list[RelayFrame] = []
    while True:
        frame = await conn.recv(WAIT)
        if isinstance(frame, KeyStatus) and frame.req == req:
            return before
        before.append(frame)


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> float:
    """Poll ``condition`` until it holds (bounded); the seconds it took.

    Raises:
        AssertionError: it did not hold within ``timeout`` seconds.
    """
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
