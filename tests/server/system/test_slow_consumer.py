"""A recipient that authenticates and then stops reading while 10 MB is addressed to it
(200 messages of 50 KB), over a relay process on a SQLite file (issue 3):

* the relay closes it with ``OVERFLOW`` within 5 s of the moment it stopped reading
  (a correctness bound, not a benchmark). The 10 MB is addressed to it from that
  moment on; the relay decides ``OVERFLOW_SECONDS`` (a blocked write) or
  ``ACK_STALL_SECONDS`` (a full delivery window) after the client stopped taking
  data, so those limits must leave room under the bound;
* the relay's memory stays bounded: its resident set (``VmRSS``), sampled throughout,
  grows by far less than holding the 10 MB would take;
* nothing is lost: reconnecting and reading yields all 200 messages.

How long the relay took is read from its ``/metrics`` (the overflow refusal counter),
polled from a separate HTTP connection: the client is not reading, so it cannot see
the close frame until it reads again. It then reads what was buffered and must find
the ``OVERFLOW`` close code at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time

import httpx
import pytest

from e2ee.relay_frames import Accepted, CaughtUp, CloseCode, Send
from server.limits import ACK_STALL_SECONDS, OVERFLOW_SECONDS
from tests.server.relay_process import RelayProcess, Starter
from tests.server.system.databases import Database
from tests.server.system.flows import WAIT, drain, send_pipelined

MESSAGES = 200
SIZE = 50 * 1024
TOTAL = MESSAGES * SIZE
"""10 MB (200 x 50 KB) addressed to the stalled recipient."""
CLOSE_WITHIN = 5.0
"""The issue's bound on the OVERFLOW close, from the moment the client stops reading."""
RSS_GROWTH_LIMIT = TOTAL // 2
"""The relay's resident set may grow by at most half of what it is sent: buffering the
10 MB (let alone its copies: frame, decoded ciphertext, storage rows) would exceed it."""
_OVERFLOW = re.compile(r'^relay_refusals_total\{reason="overflow"\} (\S+)$', re.MULTILINE)


async def _overflows(relay: RelayProcess) -> float:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        text = (await http.get(f"http://127.0.0.1:{relay.port}/metrics")).text
    match = _OVERFLOW.search(text)
    return 0.0 if match is None else float(match.group(1))


@pytest.mark.asyncio
async def test_stalled_recipient_is_closed_with_overflow_and_loses_nothing(
    sqlite_database: Database, start_relay: Starter
) -> None:
    relay = await start_relay(sqlite_database.url)
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()

    def frames(to: str) -> list[Send]:
        return [
            Send(
                secrets.token_bytes(16),
                ((to, ((1001, b"%04d" % i + secrets.token_bytes(SIZE - 4)),)),),
            )
            for i in range(MESSAGES)
        ]

    sender = await client.connect(alice)
    await sender.expect(CaughtUp)
    baseline = relay.rss_kib()
    peak = baseline

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, relay.rss_kib())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        # Bob authenticates, sees his (empty) backlog end, and stops reading.
        to_bob = frames(bob.user_id)
        bodies = {f.addressed[0][1][0][1] for f in to_bob}
        stalled = await client.connect(bob)
        await stalled.expect(CaughtUp)
        started = time.monotonic()
        answers = await send_pipelined(sender, to_bob)
        addressed = time.monotonic()
        assert all(isinstance(a, Accepted) for a in answers)
        deadline = started + CLOSE_WITHIN + 2.0  # poll a little past the bound
        while await _overflows(relay) < 1:
            assert time.monotonic() < deadline, "no OVERFLOW close within the bound"
            await asyncio.sleep(0.02)
        decided = time.monotonic()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    growth = (peak - baseline) * 1024

    # Bob reads again: what was buffered, then the OVERFLOW close frame.
    code = await stalled.closed(WAIT)
    closed = time.monotonic()
    # Nothing lost: a new connection gets every message.
    again = await client.connect(bob)
    drained = await drain(again)
    got = {d.ciphertext for d in drained.delivered}
    await again.close()
    await sender.close()

    print(
        f"OVERFLOW decided {decided - started:.2f} s after the client stopped reading "
        f"({decided - addressed:.2f} s after the 10 MB was addressed, which took "
        f"{addressed - started:.2f} s; relay limits "
        f"{OVERFLOW_SECONDS} s write / {ACK_STALL_SECONDS} s ack stall); close frame read "
        f"{closed - decided:.2f} s later; relay VmRSS baseline {baseline} KiB, peak "
        f"{peak} KiB, growth {growth / 1024:.0f} KiB (limit {RSS_GROWTH_LIMIT // 1024} KiB)"
    )
    assert code == CloseCode.OVERFLOW
    assert growth <= RSS_GROWTH_LIMIT
    assert got == bodies
    assert await sqlite_database.queue_rows(bob.user_id) == 0
    assert decided - started <= CLOSE_WITHIN, (
        f"OVERFLOW {decided - started:.2f} s after the client stopped reading (relay limits "
        f"OVERFLOW_SECONDS={OVERFLOW_SECONDS}, ACK_STALL_SECONDS={ACK_STALL_SECONDS})"
    )
