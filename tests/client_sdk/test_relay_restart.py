"""A relay SIGKILLed and restarted mid-conversation (issue 4 "What the tests must show"):
the relay is a separate process (``e2ee serve`` on a SQLite file), the two clients run
in this process with their encrypted stores and keep going on their own (the receive
loop reconnects with backoff, ``send`` reconnects under a committed message, the outbox
is flushed on every connection); nothing is lost and nothing is shown twice."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from client_sdk.client import Client, Message
from client_sdk.errors import MessageQueued, TransportError
from tests.server.relay_client import ORIGIN
from tests.server.relay_process import relay_processes

WAIT = 60.0
"""Bound for anything the test waits for (a relay restart included)."""
BEFORE, DURING, AFTER = 15, 10, 15
"""Messages each way before the kill, while the relay is down, after the restart."""


async def _send_all(client: Client, to: str, bodies: list[str], unsent: list[str]) -> None:
    """Send each body in order, as an app does: ``MessageQueued`` means committed (it
    goes on the next connection: never send it again); any other transport error means
    nothing was committed, so the body (and every later one, to keep the order) is left
    in ``unsent`` for the app to send again."""
    for i, body in enumerate(bodies):
        try:
            await client.send(to, body)
        except MessageQueued:
            continue
        except TransportError:
            unsent.extend(bodies[i:])
            return


@pytest.mark.asyncio
async def test_relay_sigkill_mid_conversation_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    async with relay_processes(tmp_path) as start:
        relay = await start(f"sqlite:///{tmp_path / 'relay.db'}")
        url = f"ws://127.0.0.1:{relay.port}"
        keys = {name: secrets.token_bytes(32) for name in ("alice", "bob")}
        alice_id, bob_id = f"alice-{secrets.token_hex(4)}", f"bob-{secrets.token_hex(4)}"
        got: dict[str, list[Message]] = {"alice": [], "bob": []}
        async with (
            Client.open(url, store=tmp_path / "a.db", key=keys["alice"], origin=ORIGIN) as alice,
            Client.open(url, store=tmp_path / "b.db", key=keys["bob"], origin=ORIGIN) as bob,
        ):
            await alice.register(alice_id)
            await bob.register(bob_id)

            async def receive(name: str, client: Client) -> None:
                async for message in client.messages():
                    got[name].append(message)

            loops = [
                asyncio.create_task(receive("alice", alice)),
                asyncio.create_task(receive("bob", bob)),
            ]
            to_bob = [f"a->b {i}" for i in range(BEFORE + DURING + AFTER)]
            to_alice = [f"b->a {i}" for i in range(BEFORE + DURING + AFTER)]
            try:
                unsent: dict[str, list[str]] = {"alice": [], "bob": []}
                await _send_all(alice, bob_id, to_bob[:BEFORE], unsent["alice"])
                await _send_all(bob, alice_id, to_alice[:BEFORE], unsent["bob"])
                assert unsent == {"alice": [], "bob": []}
                port = relay.port
                await relay.kill()
                # with the relay down: refused before anything is committed
                await _send_all(alice, bob_id, to_bob[BEFORE : BEFORE + DURING], unsent["alice"])
                await _send_all(bob, alice_id, to_alice[BEFORE : BEFORE + DURING], unsent["bob"])
                assert len(unsent["alice"]) == len(unsent["bob"]) == DURING
                async with asyncio.timeout(WAIT):
                    while not await relay.start_on(port):
                        await asyncio.sleep(0.1)
                for name, client, to, rest in (
                    ("alice", alice, bob_id, to_bob[BEFORE + DURING :]),
                    ("bob", bob, alice_id, to_alice[BEFORE + DURING :]),
                ):
                    again, unsent[name] = unsent[name], []
                    await _send_all(client, to, again + rest, unsent[name])
                    assert unsent[name] == []
                async with asyncio.timeout(WAIT):
                    while len(got["bob"]) < len(to_bob) or len(got["alice"]) < len(to_alice):
                        await asyncio.sleep(0.02)
                # a second kill and restart with nothing in flight: nothing comes again
                await relay.restart(same_port=True)
                await alice.send(bob_id, "last")
                async with asyncio.timeout(WAIT):
                    while len(got["bob"]) < len(to_bob) + 1:
                        await asyncio.sleep(0.02)
            finally:
                for loop in loops:
                    loop.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
            assert await alice.pending_outbox() == 0 and await bob.pending_outbox() == 0
        # every message exactly once, in the order each side sent them
        assert [m.body for m in got["bob"]] == [*to_bob, "last"]
        assert [m.body for m in got["alice"]] == to_alice
        assert len({m.client_msg_id for m in got["bob"]}) == len(to_bob) + 1
