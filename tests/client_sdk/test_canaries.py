"""No plaintext reaches the relay's files or logs or the clients' store files (issue 4
"What the tests must show"; CONVENTIONS 13): 1,000 distinct canaries are sent as
message bodies between two SDK clients through a real relay process (``e2ee serve``
on 127.0.0.1, a SQLite database, DEBUG logging), then every canary is looked for
(raw, hex, base64 at each alignment: :mod:`tests.server.canary`) in

* the relay's SQLite files (main, ``-wal``, ``-shm``): while 500 of the canaries are
  queued for an offline recipient, after the run, and after the relay stopped;
* the relay's log (its whole stdout and stderr, at DEBUG);
* both clients' store files (main, ``-wal``, ``-shm``) while open and after closing;
* everything the test process logged at DEBUG (the SDK, websockets, ...).

A scan that finds nothing proves nothing unless it could have found something: the
scanner first finds a canary planted in random bytes in every form, then one planted
through SQLite in a copy of the relay's database files and of a client's store files,
and one appended to a copy of the relay's log; and the relay's files are shown to hold
the real data (the queued ciphertexts are found in them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from client_sdk.client import Client
from client_sdk.transport import RelayConnection
from e2ee.relay_frames import Accepted, Mismatch
from tests.server.canary import CanaryScanner, Hit, make_canaries, prove_detects
from tests.server.relay_client import ORIGIN
from tests.server.relay_process import relay_processes

CANARIES = 1_000
BATCH = 100
"""Sends started at once (one ``asyncio.gather``)."""
WAIT = 120.0
SUFFIXES = ("", "-wal", "-shm")


def _files(path: Path, label: str) -> list[tuple[str, bytes]]:
    """A SQLite database's main, -wal and -shm files as they are now."""
    out = []
    for suffix in SUFFIXES:
        file = Path(f"{path}{suffix}")
        if file.exists():
            out.append((f"{label}{suffix or '-main'}", file.read_bytes()))
    return out


def _planted_copy(path: Path, workdir: Path, canary: bytes) -> list[tuple[str, bytes]]:
    """The files of a copy of the database at ``path`` with ``canary`` inserted
    through SQLite (raw and base64), read while the copy's WAL is not checkpointed."""
    workdir.mkdir(exist_ok=True)
    copy = workdir / path.name
    for suffix in SUFFIXES:
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    conn = sqlite3.connect(copy)
    try:
        conn.execute("CREATE TABLE canary_probe (b BLOB, t TEXT)")
        conn.execute("INSERT INTO canary_probe VALUES (?, ?)", (canary, base64.b64encode(canary)))
        conn.commit()
        return _files(copy, f"planted-{path.name}")
    finally:
        conn.close()


async def _send_all(client: Client, to: str, bodies: Sequence[bytes]) -> None:
    for start in range(0, len(bodies), BATCH):
        batch = bodies[start : start + BATCH]
        await asyncio.gather(*(client.send(to, body.decode()) for body in batch))


async def _receive(client: Client, count: int, into: list[str]) -> None:
    async for message in client.messages():
        assert isinstance(message.body, str)
        into.append(message.body)
        if len(into) == count:
            await message.done()
            return


@pytest.mark.asyncio
async def test_no_canary_reaches_the_relay_or_the_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = make_canaries(CANARIES)
    planted = make_canaries(4, tag="planted-")
    scanner = CanaryScanner([*canaries, *planted])
    prove_detects(scanner, planted[0])
    real = set(canaries)
    hits: list[Hit] = []

    def scan(sources: list[tuple[str, bytes]]) -> None:
        hits.extend(h for h in scanner.scan_all(sources) if h.canary in real)

    ciphertexts: list[bytes] = []
    original = RelayConnection.send

    async def record(
        self: RelayConnection,
        client_msg_id: bytes,
        addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]],
    ) -> Accepted | Mismatch:
        ciphertexts.extend(ct for _, devices in addressed for _, ct in devices)
        return await original(self, client_msg_id, addressed)

    monkeypatch.setattr(RelayConnection, "send", record)
    relay_db = tmp_path / "relay.db"
    stores = {name: tmp_path / f"{name}.db" for name in ("alice", "bob")}
    keys = {name: secrets.token_bytes(32) for name in stores}
    to_bob, to_alice = canaries[: CANARIES // 2], canaries[CANARIES // 2 :]
    at_bob: list[str] = []
    at_alice: list[str] = []

    async with relay_processes(tmp_path / "relays") as start:
        relay = await start(f"sqlite:///{relay_db}", log_level="debug")
        url = f"ws://127.0.0.1:{relay.port}"

        def open_client(name: str) -> contextlib.AbstractAsyncContextManager[Client]:
            return Client.open(url, store=stores[name], key=keys[name], origin=ORIGIN)

        async with open_client("bob") as bob:
            await bob.register(f"bob-{secrets.token_hex(4)}")
            bob_id = bob.user_id
        async with open_client("alice") as alice:
            await alice.register(f"alice-{secrets.token_hex(4)}")
            alice_id = alice.user_id
            async with asyncio.timeout(WAIT):
                await _send_all(alice, bob_id, to_bob)
            # bob is offline: all 500 ciphertexts are queued in the relay's files
            queued = _files(relay_db, "queued-relay")
            joined = b"".join(data for _, data in queued)
            sample = [ciphertexts[0], ciphertexts[len(ciphertexts) // 2], ciphertexts[-1]]
            assert all(ct in joined for ct in sample), "the queue is not in the relay's files"
            scan(queued)
            async with open_client("bob") as bob, asyncio.timeout(WAIT):
                receiving = asyncio.ensure_future(_receive(alice, len(to_alice), at_alice))
                await _receive(bob, len(to_bob), at_bob)
                await _send_all(bob, alice_id, to_alice)
                await receiving
                scan(_files(stores["alice"], "open-alice") + _files(stores["bob"], "open-bob"))
        assert sorted(at_bob) == sorted(c.decode() for c in to_bob)  # a batch has no order
        assert sorted(at_alice) == sorted(c.decode() for c in to_alice)
        scan(_files(relay_db, "relay"))

        # the scanner finds a canary planted in copies of each kind of source
        workdir = tmp_path / "planted"
        for path, canary in ((relay_db, planted[1]), (stores["bob"], planted[2])):
            found = scanner.scan_all(_planted_copy(path, workdir, canary))
            assert {h.canary for h in found} == {canary}, path.name
        log_copy = relay.log_bytes() + b"GET /v1/" + planted[3].hex().encode() + b"\n"
        assert {h.canary for h in scanner.scan(log_copy, "planted-log")} == {planted[3]}

        await relay.terminate()
        scan(_files(relay_db, "stopped-relay"))
        relay_log = relay.log_bytes()
        assert b"Uvicorn running" in relay_log  # the log is the relay's own output
        scan([("relay-log", relay_log)])
    scan(_files(stores["alice"], "closed-alice") + _files(stores["bob"], "closed-bob"))
    scan([("test-process-log", caplog.text.encode())])
    scanned = scanner.scanned
    for source in ("queued-relay-wal", "relay-log", "test-process-log", "open-bob-wal"):
        assert scanned[source] > 64 * 1024, source  # each source held the run's data
    assert scanned["closed-alice-main"] > 64 * 1024 and scanned["closed-bob-main"] > 64 * 1024
    assert hits == [], f"{len(hits)} canary hits, first: {hits[:3]}"
