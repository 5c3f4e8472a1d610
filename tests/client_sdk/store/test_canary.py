"""No user id, relay origin, passphrase, key or plaintext reaches a store's files in
any form (DESIGN 6; CONVENTIONS 13): a canary scan of the main, -wal and -shm files,
while the store is open and after it closed, after the scanner first finds a
planted canary in random bytes and in a real SQLite WAL file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from client_sdk.store import Table
from client_sdk.store.crypto import (
    CONTEXT_HEADER,
    CONTEXT_LOOKUP,
    CONTEXT_RECORD,
    derive_subkey,
)
from e2ee import cbor
from e2ee.primitives import argon2id
from tests.client_sdk.store.helpers import LOW_KDF, open_pass, raw
from tests.server.canary import CanaryScanner, Hit, make_canaries, prove_detects

pytestmark = pytest.mark.asyncio

SUFFIXES = ("", "-wal", "-shm")


def scan_files(scanner: CanaryScanner, path: Path) -> tuple[list[Hit], dict[str, int]]:
    hits: list[Hit] = []
    sizes: dict[str, int] = {}
    for suffix in SUFFIXES:
        file = Path(str(path) + suffix)
        if file.exists():
            data = file.read_bytes()
            sizes[suffix or "main"] = len(data)
            hits += scanner.scan(data, file.name)
    return hits, sizes


async def test_store_files_hold_no_identifier_key_or_plaintext(tmp_path: Path) -> None:
    canaries = make_canaries(60, "store")
    passphrase, origin_canary, users, plaintexts = (
        canaries[0],
        canaries[1],
        canaries[2:12],
        canaries[12:],
    )
    path = tmp_path / "store.db"
    store = await open_pass(path, passphrase, origin="wss://" + origin_canary.decode())

    conn = raw(path)
    (header,) = conn.execute("SELECT value FROM header").fetchone()
    conn.close()
    fields = cbor.decode(header)
    assert isinstance(fields, dict) and isinstance(fields[4], bytes)
    assert isinstance(fields[5], bytes)
    root = argon2id(
        passphrase, salt=fields[4], opslimit=LOW_KDF.opslimit, memlimit=LOW_KDF.memlimit
    )
    secrets_ = [
        root,
        derive_subkey(root, CONTEXT_HEADER),
        derive_subkey(root, CONTEXT_RECORD, fields[5]),
        derive_subkey(root, CONTEXT_LOOKUP, fields[5]),
    ]
    scanner = CanaryScanner([*canaries, *secrets_])

    # The scanner must be able to fail: a planted canary is found in random bytes...
    prove_detects(scanner, canaries[7])
    # ...and in the files of a real SQLite database in WAL mode.
    control = tmp_path / "control.db"
    control_conn = sqlite3.connect(control, isolation_level=None)
    control_conn.execute("PRAGMA journal_mode = WAL")
    control_conn.execute("CREATE TABLE t (v BLOB)")
    control_conn.execute("INSERT INTO t VALUES (?)", (b"padding " + canaries[7],))
    planted, _ = scan_files(scanner, control)
    control_conn.close()
    assert {hit.canary for hit in planted} == {canaries[7]}
    assert any(hit.source.endswith("-wal") for hit in planted)

    for round_ in range(2):
        async with store.transaction() as tx:
            for i, user in enumerate(users):
                for device in (1, 2):
                    key = store.lookup_key(user.decode(), device)
                    value = plaintexts[(i * 2 + device + round_) % len(plaintexts)]
                    await tx.put(Table.SESSIONS, key, b"session of " + user + b": " + value)
                    await tx.put(Table.PEER_DEVICE_LISTS, key[:16], user + value)
            for j, text in enumerate(plaintexts):
                await tx.put(Table.INBOX, b"%04d" % j, text + b" " + text.hex().encode())
        async with store.transaction() as tx:
            await tx.delete_prefix(Table.INBOX, b"00")
            await tx.delete(Table.SESSIONS, store.lookup_key(users[0].decode(), 1))

    hits, sizes = scan_files(scanner, path)
    assert sizes.get("-wal", 0) > 0 and "-shm" in sizes  # the open store's WAL was scanned
    assert hits == []
    await store.aclose()
    hits, sizes = scan_files(scanner, path)
    assert sizes["main"] > 32 * 1024  # the records were checkpointed into the main file
    assert hits == []
