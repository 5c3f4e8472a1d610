"""A client in its own process, for the crash tests (``test_crash.py``): it runs the
commands its parent writes on stdin and can SIGKILL itself at a chosen point.

``python crash_child.py RELAY_URL ORIGIN STORE KEY_HEX CIPHERTEXT_LOG``

One JSON command per stdin line, answered by JSON lines on stdout (the last one of
each command holds ``"ok"``); it never waits on a clock, only on its parent:

``{"op": "register", "user": U}``
    register the device (``{"ok": true, "device": id}``).
``{"op": "arm", "point": P}``
    the next time the client reaches point ``P`` the process SIGKILLs itself
    (``os.kill(os.getpid(), SIGKILL)``: no ``finally``, no flush, no close):

    * ``commit-outbox``: the store is about to commit a transaction that writes the
      outbox (after the message was encrypted and the sessions advanced, before the
      commit): *between encrypt and commit*;
    * ``send``: ``RelayConnection.send`` is called with the committed frame, before
      it is written: *between commit and send*;
    * ``accepted``: the relay answered ``Accepted``, before the outbox entry is
      deleted;
    * ``commit-inbox``: the store is about to commit a transaction that writes the
      inbox (the message decrypted, before the commit);
    * ``ack``: ``RelayConnection.ack`` is called, after the decrypt transaction
      committed: *between decrypt-commit and acknowledgement*;
    * ``done``: ``Message.done`` is called, after the message was yielded to the
      app: *between yield and done()*.
``{"op": "send", "to": U, "body": B}``
    ``send`` (``{"ok": true, "id": hex}`` once the relay accepted it).
``{"op": "take", "count": N}``
    the next ``N`` messages of ``messages()``: ``{"yielded": ...}`` when the loop
    yields one, ``{"done": ...}`` once ``done()`` returned, then ``{"ok": true}``.
``{"op": "connect"}``
    connect (which resends the outbox): ``{"ok": true, "pending": n}`` after.
``{"op": "status"}``
    ``{"ok": true, "pending": n, "inbox": n, "sessions": [sessions per record],
    "events": [[kind, user, device], ...]}`` (the events are consumed).
``{"op": "quit"}``
    close the client and exit 0.

Every ciphertext the client hands to ``RelayConnection.send`` is appended to
``CIPHERTEXT_LOG`` before it can reach the socket, one line each: sender user,
recipient user, recipient device, the header's ratchet key (hex), its counter ``N``
and the SHA-256 of the AEAD ciphertext, written straight to the file (``O_APPEND``,
no user-space buffer), so a line survives the SIGKILL that follows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from client_sdk.client import Client, Message
from client_sdk.events import SecurityEvent
from client_sdk.store import SqliteStore, Table
from client_sdk.store.sqlite import _SqliteTransaction
from client_sdk.transport import RelayConnection
from e2ee.envelope import EnvelopeType, MessageEnvelope, PreKeyEnvelope, envelope_type
from e2ee.relay_frames import Accepted, Mismatch
from e2ee.session import SessionRecord

POINTS = frozenset({"commit-outbox", "send", "accepted", "commit-inbox", "ack", "done"})
TAKE_SECONDS = 30.0
"""Bound on one ``take`` (the parent bounds every command too)."""

_armed: set[str] = set()
_writes: set[Table] = set()
"""Tables the running store transaction wrote (transactions are serialized)."""


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def reach(point: str) -> None:
    """SIGKILL this process if ``point`` is armed."""
    if point in _armed:
        os.kill(os.getpid(), signal.SIGKILL)


def message_envelope(ciphertext: bytes) -> MessageEnvelope:
    if envelope_type(ciphertext) is EnvelopeType.PREKEY:
        return PreKeyEnvelope.from_bytes(ciphertext).message
    return MessageEnvelope.from_bytes(ciphertext)


def instrument(sender: list[str], log_fd: int) -> None:
    """Install the recording and the kill points (module-level patches: this process
    runs one client)."""
    original_send = RelayConnection.send
    original_ack = RelayConnection.ack
    original_done = Message.done
    original_put = _SqliteTransaction._do_put
    original_commit = SqliteStore._commit
    original_rollback = SqliteStore._rollback

    async def send(
        self: RelayConnection,
        client_msg_id: bytes,
        addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
    ) -> Accepted | Mismatch:
        lines = []
        for user, devices in addressed:
            for device, ciphertext in devices:
                envelope = message_envelope(ciphertext)
                digest = hashlib.sha256(envelope.ciphertext).hexdigest()
                lines.append(
                    f"{sender[0]} {user} {device} {envelope.ratchet_pk.hex()} "
                    f"{envelope.n} {digest}\n"
                )
        os.write(log_fd, "".join(lines).encode())
        reach("send")
        result = await original_send(self, client_msg_id, addressed)
        if isinstance(result, Accepted):
            reach("accepted")
        return result

    async def ack(self: RelayConnection, seqs: Any) -> None:
        reach("ack")
        await original_ack(self, seqs)

    async def done(self: Message) -> None:
        reach("done")
        await original_done(self)

    def do_put(self: _SqliteTransaction, table: Table, key: bytes, value: bytes) -> None:
        _writes.add(table)
        original_put(self, table, key, value)

    async def commit(self: SqliteStore, tx: _SqliteTransaction) -> None:
        if Table.OUTBOX in _writes:
            reach("commit-outbox")
        if Table.INBOX in _writes:
            reach("commit-inbox")
        _writes.clear()
        await original_commit(self, tx)

    def rollback(self: SqliteStore, tx: _SqliteTransaction) -> None:
        _writes.clear()
        original_rollback(self, tx)

    patches: dict[tuple[object, str], Callable[..., Awaitable[Any] | None]] = {
        (RelayConnection, "send"): send,
        (RelayConnection, "ack"): ack,
        (Message, "done"): done,
        (_SqliteTransaction, "_do_put"): do_put,
        (SqliteStore, "_commit"): commit,
        (SqliteStore, "_rollback"): rollback,
    }
    for (owner, name), replacement in patches.items():
        setattr(owner, name, replacement)


async def status(client: Client) -> dict[str, Any]:
    async with client._store.transaction() as tx:
        pending = await tx.count(Table.OUTBOX)
        inbox = await tx.count(Table.INBOX)
        sessions = [
            len(SessionRecord.from_bytes(v).sessions) for _, v in await tx.scan(Table.SESSIONS)
        ]
    events: list[SecurityEvent] = [item.event async for item in client.events(wait=False)]
    described = [[type(e).__name__, dataclasses.asdict(e)] for e in events]
    return {"pending": pending, "inbox": inbox, "sessions": sessions, "events": described}


async def take(client: Client, count: int) -> None:
    if count == 0:
        return
    seen = 0
    async with asyncio.timeout(TAKE_SECONDS):
        async for message in client.messages():
            fields = {
                "id": message.client_msg_id.hex(),
                "from": message.sender_user,
                "body": message.body if isinstance(message.body, str) else message.body.hex(),
            }
            say(yielded=fields)
            await message.done()
            say(done=fields)
            seen += 1
            if seen == count:
                break


async def main(url: str, origin: str, store: str, key: bytes, log_path: str) -> None:
    sender = ["?"]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    instrument(sender, log_fd)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with Client.open(url, store=store, key=key, origin=origin) as client:
        if client.is_registered:
            sender[0] = client.user_id
        say(ok=True, registered=client.is_registered)
        while line := await reader.readline():
            command = cast(dict[str, Any], json.loads(line))
            op = command["op"]
            if op == "register":
                await client.register(command["user"])
                sender[0] = client.user_id
                say(ok=True, device=client.device_id)
            elif op == "arm":
                if command["point"] not in POINTS:
                    raise ValueError(f"unknown kill point {command['point']!r}")
                _armed.add(command["point"])
                say(ok=True)
            elif op == "send":
                msg_id = await client.send(command["to"], command["body"])
                say(ok=True, id=msg_id.hex())
            elif op == "take":
                await take(client, int(command["count"]))
                say(ok=True)
            elif op == "connect":
                await client.connect()
                say(ok=True, pending=await client.pending_outbox())
            elif op == "status":
                say(ok=True, **await status(client))
            elif op == "quit":
                break
            else:
                raise ValueError(f"unknown command {op!r}")
    os.close(log_fd)


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], sys.argv[2], sys.argv[3], bytes.fromhex(sys.argv[4]), sys.argv[5])
    )
