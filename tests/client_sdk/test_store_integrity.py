"""The store's integrity seen through the Client (issue 4 "What the tests must show";
DESIGN 6), on stores a Client created and used against a real relay (uvicorn on
127.0.0.1): a wrong passphrase is a clear error; two swapped rows, a row moved to
another key and an edited header are each detected, and nothing is sent or changed
because of them (restoring the bytes gives back a working client).

The store itself is tested on synthetic rows in ``tests/client_sdk/store/``
(``test_sqlite.py``: ``test_tampered_rows_are_detected``,
``test_edited_header_fields_are_detected``, ``test_wrong_key_and_wrong_passphrase``);
these tests check what an app sees: ``Client.open``, ``send`` and ``messages()``
refuse with ``StoreCorrupt`` or ``WrongKey`` instead of running on tampered state.

``test_wrong_passphrase_at_the_default_argon2id_parameters`` is the Client-level test
that opens a store with a passphrase at the default Argon2id cost (``Client.open``
always creates passphrase stores at ``DEFAULT_KDF``); every other test uses raw keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from client_sdk.client import Client
from client_sdk.errors import StoreCorrupt, UsageError, WrongKey, WrongPassphrase
from client_sdk.store import DEFAULT_KDF, Table
from e2ee import cbor
from tests.server.relay_client import ORIGIN, RunningRelay, relay_settings, running_relay

WAIT = 20.0


@pytest_asyncio.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RunningRelay]:
    settings = relay_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(settings) as running:
        yield running


class Stores:
    """Raw-key clients on one relay, one store file each."""

    def __init__(self, relay: RunningRelay, tmp_path: Path) -> None:
        self.relay = relay
        self.url = f"ws://127.0.0.1:{relay.port}"
        self.tmp_path = tmp_path
        self.keys: dict[str, bytes] = {}
        self.users: dict[str, str] = {}

    def path(self, name: str) -> Path:
        return self.tmp_path / f"{name}.db"

    def open(self, name: str) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        return Client.open(self.url, store=self.path(name), key=key, origin=ORIGIN)

    async def register(self, name: str) -> str:
        self.users[name] = f"{name}-{secrets.token_hex(4)}"
        async with self.open(name) as client:
            await client.register(self.users[name])
        return self.users[name]


@pytest.fixture
def stores(relay: RunningRelay, tmp_path: Path) -> Stores:
    return Stores(relay, tmp_path)


async def _take(client: Client, count: int) -> list[str | bytes]:
    got: list[str | bytes] = []
    async with asyncio.timeout(WAIT):
        async for message in client.messages():
            got.append(message.body)
            if len(got) == count:
                await message.done()
                break
    return got


async def _queued(stores: Stores, name: str) -> int:
    async with stores.open(name) as client:
        user_id, device_id = client.user_id, client.device_id
    return await stores.relay.ctx.storage.messages.depth(user_id, device_id)


# --- raw access to a closed store file: the attacker's view ----------------------------


def _rows(path: Path, table: Table) -> dict[bytes, bytes]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        found = conn.execute("SELECT key, value FROM records WHERE tbl = ?", (table.value,))
        return {bytes(k): bytes(v) for k, v in found.fetchall()}
    finally:
        conn.close()


def _set_rows(path: Path, table: Table, rows: dict[bytes, bytes], *, delete: bool = False) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if delete:
            conn.execute("DELETE FROM records WHERE tbl = ?", (table.value,))
        for key, value in rows.items():
            conn.execute(
                "INSERT OR REPLACE INTO records (tbl, key, value) VALUES (?, ?, ?)",
                (table.value, key, value),
            )
    finally:
        conn.close()


def _header(path: Path) -> bytes:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (value,) = conn.execute("SELECT value FROM header WHERE id = 1").fetchone()
        return bytes(value)
    finally:
        conn.close()


def _set_header(path: Path, value: bytes) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("UPDATE header SET value = ? WHERE id = 1", (value,))
    finally:
        conn.close()


# --- passphrases and keys ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_wrong_passphrase_at_the_default_argon2id_parameters(stores: Stores) -> None:
    bob_id = await stores.register("bob")
    path = stores.path("alice")
    good, bad = "correct horse battery staple", "correct horse battery stapler"
    alice_id = f"alice-{secrets.token_hex(4)}"
    async with Client.open(stores.url, store=path, passphrase=good, origin=ORIGIN) as alice:
        await alice.register(alice_id)
        device_id = alice.device_id
        await alice.send(bob_id, "before")
    fields = cbor.decode(_header(path))
    assert isinstance(fields, dict)
    assert (fields[1], fields[2], fields[3]) == (1, DEFAULT_KDF.opslimit, DEFAULT_KDF.memlimit)
    with pytest.raises(WrongPassphrase) as caught:
        async with Client.open(stores.url, store=path, passphrase=bad, origin=ORIGIN):
            pass  # pragma: no cover - the open fails
    message = str(caught.value)
    assert "passphrase" in message  # says what is wrong...
    assert "horse" not in message and "staple" not in message  # ...never the secret
    with pytest.raises(UsageError):  # a key for a passphrase store: a clear misuse
        async with Client.open(stores.url, store=path, key=bytes(32), origin=ORIGIN):
            pass  # pragma: no cover - the open fails
    # the failures changed nothing and left no lock behind
    async with Client.open(stores.url, store=path, passphrase=good, origin=ORIGIN) as alice:
        assert (alice.user_id, alice.device_id) == (alice_id, device_id)
        await alice.send(bob_id, "after")
    async with stores.open("bob") as bob:
        assert await _take(bob, 2) == ["before", "after"]


@pytest.mark.asyncio
async def test_wrong_raw_key(stores: Stores) -> None:
    await stores.register("alice")
    with pytest.raises(WrongKey) as caught:
        async with Client.open(
            stores.url, store=stores.path("alice"), key=secrets.token_bytes(32), origin=ORIGIN
        ):
            pass  # pragma: no cover - the open fails
    assert not isinstance(caught.value, WrongPassphrase)
    async with stores.open("alice") as alice:
        assert alice.is_registered


# --- tampered rows ------------------------------------------------------------------------


async def _two_sessions(stores: Stores) -> tuple[str, str, str]:
    """alice with a session with bob and one with carol (each got one message)."""
    alice_id = await stores.register("alice")
    bob_id = await stores.register("bob")
    carol_id = await stores.register("carol")
    async with stores.open("alice") as alice:
        await alice.send(bob_id, "to bob")
        await alice.send(carol_id, "to carol")
    for name, body in (("bob", "to bob"), ("carol", "to carol")):
        async with stores.open(name) as client:
            assert await _take(client, 1) == [body]
    return alice_id, bob_id, carol_id


@pytest.mark.asyncio
async def test_swapped_own_device_rows_stop_the_client_opening(stores: Stores) -> None:
    await stores.register("alice")
    path = stores.path("alice")
    original = _rows(path, Table.OWN_DEVICE)
    swapped = {b"device": original[b"master"], b"master": original[b"device"]}
    _set_rows(path, Table.OWN_DEVICE, swapped)
    with pytest.raises(StoreCorrupt) as caught:
        async with stores.open("alice"):
            pass  # pragma: no cover - the open fails
    assert caught.value.table == Table.OWN_DEVICE.value
    _set_rows(path, Table.OWN_DEVICE, original)
    async with stores.open("alice") as alice:
        assert alice.is_registered


@pytest.mark.asyncio
async def test_swapped_session_rows_stop_sending(stores: Stores) -> None:
    _, bob_id, carol_id = await _two_sessions(stores)
    path = stores.path("alice")
    original = _rows(path, Table.SESSIONS)
    assert len(original) == 2
    (k1, v1), (k2, v2) = original.items()
    _set_rows(path, Table.SESSIONS, {k1: v2, k2: v1})
    async with stores.open("alice") as alice:
        for user in (bob_id, carol_id):
            with pytest.raises(StoreCorrupt) as caught:
                await alice.send(user, "over a swapped session")
            assert caught.value.table == Table.SESSIONS.value
        assert await alice.pending_outbox() == 0
    assert _rows(path, Table.SESSIONS) == {k1: v2, k2: v1}  # nothing was written over them
    assert await _queued(stores, "bob") == await _queued(stores, "carol") == 0
    _set_rows(path, Table.SESSIONS, original)
    async with stores.open("alice") as alice:
        await alice.send(bob_id, "after the repair")
    async with stores.open("bob") as bob:
        assert await _take(bob, 1) == ["after the repair"]


@pytest.mark.asyncio
async def test_a_session_row_moved_to_another_key_is_detected(stores: Stores) -> None:
    _, bob_id, carol_id = await _two_sessions(stores)
    path = stores.path("alice")
    original = _rows(path, Table.SESSIONS)
    async with stores.open("alice") as alice:
        bob_key = alice._store.lookup_key(bob_id, await _device_of(stores, "bob"))
        carol_key = alice._store.lookup_key(carol_id, await _device_of(stores, "carol"))
    assert set(original) == {bob_key, carol_key}
    # bob's session moved under carol's key (carol's own session is gone)
    _set_rows(path, Table.SESSIONS, {bob_key: original[bob_key], carol_key: original[bob_key]})
    async with stores.open("alice") as alice:
        with pytest.raises(StoreCorrupt):
            await alice.send(carol_id, "over bob's session")
        await alice.send(bob_id, "bob's own session still works")
    assert await _queued(stores, "carol") == 0
    async with stores.open("bob") as bob:
        assert await _take(bob, 1) == ["bob's own session still works"]


async def _device_of(stores: Stores, name: str) -> int:
    async with stores.open(name) as client:
        return client.device_id


@pytest.mark.asyncio
async def test_an_inbox_row_moved_to_another_key_is_detected(stores: Stores) -> None:
    await stores.register("alice")
    bob_id = await stores.register("bob")
    async with stores.open("alice") as alice:
        await alice.send(bob_id, "one")
    async with stores.open("bob") as bob, asyncio.timeout(WAIT):
        async for message in bob.messages():
            assert message.body == "one"
            break  # not done: it stays in the inbox
    path = stores.path("bob")
    original = _rows(path, Table.INBOX)
    ((key, value),) = original.items()
    moved = (int.from_bytes(key, "big") + 1).to_bytes(len(key), "big")
    _set_rows(path, Table.INBOX, {moved: value}, delete=True)
    async with stores.open("bob") as bob:
        with pytest.raises(StoreCorrupt) as caught:
            await _take(bob, 1)
        assert caught.value.table == Table.INBOX.value
    _set_rows(path, Table.INBOX, original, delete=True)
    async with stores.open("bob") as bob:
        assert await _take(bob, 1) == ["one"]


# --- the header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "error"),
    [
        (7, StoreCorrupt),  # the sealed origin
        (5, StoreCorrupt),  # the store id
        (6, WrongKey),  # the key verifier: indistinguishable from a wrong key
    ],
)
@pytest.mark.asyncio
async def test_an_edited_header_is_detected(
    stores: Stores, field: int, error: type[Exception]
) -> None:
    await stores.register("alice")
    path = stores.path("alice")
    original = _header(path)
    fields = cbor.decode(original)
    assert isinstance(fields, dict)
    value = fields[field]
    assert isinstance(value, bytes)
    fields[field] = value[:-1] + bytes([value[-1] ^ 1])
    _set_header(path, cbor.encode(fields))
    with pytest.raises(error):
        async with stores.open("alice"):
            pass  # pragma: no cover - the open fails
    _set_header(path, original)
    async with stores.open("alice") as alice:
        assert alice.is_registered
