"""SqliteStore beyond the contract: encryption format, tampering, keys and
passphrases, the origin pin, the in-process lock, threading (DESIGN 6)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import stat
import threading
import unicodedata
from pathlib import Path

import nacl.bindings  # an independent reference for the record format
import pytest

from client_sdk.errors import (
    OriginMismatch,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    UnsupportedStoreVersion,
    UsageError,
    WeakParameters,
    WrongKey,
    WrongPassphrase,
)
from client_sdk.store import (
    KDF_CEILING,
    KDF_FLOOR,
    LOCK_SUFFIX,
    KdfParams,
    SqliteStore,
    Table,
)
from client_sdk.store import header as header_module
from client_sdk.store.lock import FileLock
from e2ee import cbor
from e2ee.primitives import argon2id
from tests.client_sdk.store.helpers import (
    LOW_KDF,
    ORIGIN,
    new_key,
    open_keyed,
    open_pass,
    raw,
    raw_rows,
)

pytestmark = pytest.mark.asyncio


def read_header(path: Path) -> dict[int, cbor.Value]:
    conn = raw(path)
    (value,) = conn.execute("SELECT value FROM header").fetchone()
    conn.close()
    decoded = cbor.decode(value)
    assert isinstance(decoded, dict)
    return decoded


def write_header(path: Path, fields: dict[int, cbor.Value]) -> None:
    conn = raw(path)
    conn.execute("UPDATE header SET value = ?", (cbor.encode(fields),))
    conn.close()


def assert_unlocked(path: Path) -> None:
    """A failed open released the lock it took."""
    FileLock.acquire(str(path) + LOCK_SUFFIX, str(path)).release()


def set_raw(path: Path, table: str, key: bytes, value: object) -> None:
    conn = raw(path)
    conn.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (table, key, value))
    conn.close()


async def populated(path: Path, key: bytes) -> None:
    async with await open_keyed(path, key) as store, store.transaction() as tx:
        await tx.put(Table.SESSIONS, b"k1", b"session one")
        await tx.put(Table.SESSIONS, b"k2", b"session two")
        await tx.put(Table.INBOX, b"k1", b"a message")


# --- persistence and format --------------------------------------------------------------


async def test_commits_persist_and_lookup_keys_are_stable(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    async with await open_keyed(path, key) as store:
        lookup = store.lookup_key("alice", 1)
        async with store.transaction() as tx:
            await tx.put(Table.PEER_DEVICE_LISTS, lookup, b"list")
    async with await open_keyed(path, key) as store:
        assert store.lookup_key("alice", 1) == lookup
        async with store.transaction() as tx:
            assert await tx.get(Table.PEER_DEVICE_LISTS, lookup) == b"list"


async def test_lookup_keys_are_separate_per_store_and_from_the_root(tmp_path: Path) -> None:
    key = new_key()
    async with (
        await open_keyed(tmp_path / "a.db", key) as a,
        await open_keyed(tmp_path / "b.db", key) as b,
    ):
        assert a.lookup_key("alice") != b.lookup_key("alice")
        assert a.lookup_key("alice") != hashlib.blake2b(b"salice", key=key).digest()[:32]


async def test_record_format_matches_the_documentation(tmp_path: Path) -> None:
    """Decrypt a row with nacl and hashlib from docs/sdk-store.md alone."""
    path, key = tmp_path / "s.db", new_key()
    async with await open_keyed(path, key) as store:
        lookup = store.lookup_key("alice@example", 7)
        async with store.transaction() as tx:
            await tx.put(Table.SESSIONS, lookup, b"the state")
    store_id = read_header(path)[5]
    assert isinstance(store_id, bytes)

    def subkey(context: bytes) -> bytes:
        data = b"e2ee/v1/store\x00" + context + b"\x00" + store_id
        return hashlib.blake2b(data, key=key, digest_size=32).digest()

    def part(tag: bytes, data: bytes) -> bytes:
        return tag + len(data).to_bytes(4, "big") + data

    expected_lookup = hashlib.blake2b(
        part(b"s", b"alice@example") + part(b"i", (7).to_bytes(8, "big")),
        key=subkey(b"lookup"),
        digest_size=32,
    ).digest()
    assert lookup == expected_lookup
    sealed = raw_rows(path)[("sessions", lookup)]
    ad = b"e2ee/v1/store\x00record\x00" + part(b"", b"sessions") + part(b"", lookup)
    plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        sealed[24:], ad, sealed[:24], subkey(b"record")
    )
    assert plain == b"the state"


async def test_each_write_uses_a_fresh_nonce(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await open_keyed(path, new_key()) as store:
        seen = set()
        for _ in range(3):
            async with store.transaction() as tx:
                await tx.put(Table.SESSIONS, b"k", b"same value")
            seen.add(raw_rows(path)[("sessions", b"k")])
        assert len(seen) == 3


# --- tampering -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "tamper",
    [
        "copy-to-other-key",
        "move-to-other-table",
        "swap",
        "flip-bit",
        "truncate",
        "text",
        "other-store",
    ],
)
async def test_tampered_rows_are_detected(tmp_path: Path, tamper: str) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    rows = raw_rows(path)
    one, two = rows[("sessions", b"k1")], rows[("sessions", b"k2")]
    table, victim = "sessions", b"k2"
    if tamper == "copy-to-other-key":
        set_raw(path, "sessions", b"k2", one)
    elif tamper == "move-to-other-table":
        table = "inbox"
        set_raw(path, "inbox", b"k1", one)
        victim = b"k1"
    elif tamper == "swap":
        set_raw(path, "sessions", b"k1", two)
        set_raw(path, "sessions", b"k2", one)
    elif tamper == "flip-bit":
        set_raw(path, "sessions", b"k2", two[:30] + bytes([two[30] ^ 1]) + two[31:])
    elif tamper == "truncate":
        set_raw(path, "sessions", b"k2", two[:39])
    elif tamper == "text":
        set_raw(path, "sessions", b"k2", "not a blob")
    else:  # a row of another store opened with the same raw key
        other = tmp_path / "other.db"
        await populated(other, key)
        set_raw(path, "sessions", b"k2", raw_rows(other)[("sessions", b"k2")])
    async with await open_keyed(path, key) as store, store.transaction() as tx:
        with pytest.raises(StoreCorrupt) as caught:
            await tx.get(Table(table), victim)
        assert caught.value.table == table
        with pytest.raises(StoreCorrupt):
            await tx.scan(Table(table))
        assert await tx.count(Table(table)) >= 1  # counting reads no value


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        (7, "flip", StoreCorrupt),  # the sealed origin
        (5, b"\x01" * 16, StoreCorrupt),  # the store id
        (6, "flip", WrongKey),  # the verifier: indistinguishable from a wrong key
        (0, 0, StoreCorrupt),
        (1, 1, StoreCorrupt),  # "Argon2id" without a salt
        (4, b"salt", StoreCorrupt),  # a raw-key header with a salt
    ],
)
async def test_edited_header_fields_are_detected(
    tmp_path: Path, field: int, value: object, error: type[Exception]
) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    fields = read_header(path)
    if value == "flip":
        sealed = fields[field]
        assert isinstance(sealed, bytes)
        value = sealed[:-1] + bytes([sealed[-1] ^ 1])
    fields[field] = value  # type: ignore[assignment]
    write_header(path, fields)
    with pytest.raises(error):
        await open_keyed(path, key)
    assert_unlocked(path)


async def test_a_newer_schema_version_is_refused_before_anything_else(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    write_header(path, {0: 2, 99: "a future layout"})
    with pytest.raises(UnsupportedStoreVersion) as caught:
        await open_keyed(path, key)
    assert (caught.value.version, caught.value.supported) == (2, 1)


@pytest.mark.parametrize(
    "damage",
    [
        "garbage-file",
        "foreign-database",
        "no-header-row",
        "no-records-table",
        "extra-table",
        "header-not-cbor",
    ],
)
async def test_files_that_are_not_stores_are_refused(tmp_path: Path, damage: str) -> None:
    path, key = tmp_path / "s.db", new_key()
    if damage == "garbage-file":
        path.write_bytes(os.urandom(8192))
    elif damage == "foreign-database":
        conn = raw(path)
        conn.execute("CREATE TABLE contacts (name TEXT)")
        conn.close()
    else:
        await populated(path, key)
        conn = raw(path)
        conn.execute(
            {
                "no-header-row": "DELETE FROM header",
                "no-records-table": "DROP TABLE records",
                "extra-table": "CREATE TABLE extra (x)",
                "header-not-cbor": "UPDATE header SET value = x'ff00'",
            }[damage]
        )
        conn.close()
    with pytest.raises(StoreCorrupt):
        await open_keyed(path, key)
    assert_unlocked(path)


# --- keys and passphrases -------------------------------------------------------------


async def test_wrong_key_and_wrong_passphrase(tmp_path: Path) -> None:
    keyed, protected = tmp_path / "k.db", tmp_path / "p.db"
    key = new_key()
    await (await open_keyed(keyed, key)).aclose()
    await (await open_pass(protected, "correct horse")).aclose()
    with pytest.raises(WrongKey) as wrong_key:
        await open_keyed(keyed, new_key())
    assert not isinstance(wrong_key.value, WrongPassphrase)
    with pytest.raises(WrongPassphrase) as wrong_pass:
        await open_pass(protected, "correct horsf")
    assert "horse" not in str(wrong_pass.value) and "horsf" not in str(wrong_pass.value)
    with pytest.raises(UsageError):
        await open_pass(keyed, "correct horse")
    with pytest.raises(UsageError):
        await open_keyed(protected, key)
    # after the failures, the right secrets open (no lock left behind)
    await (await open_keyed(keyed, key)).aclose()
    await (await open_pass(protected, "correct horse")).aclose()


async def test_passphrases_are_nfc_normalized(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    composed = unicodedata.normalize("NFC", "pässwörd")
    decomposed = unicodedata.normalize("NFD", "pässwörd")
    assert composed != decomposed
    await (await open_pass(path, composed)).aclose()
    await (await open_pass(path, decomposed)).aclose()
    await (await open_pass(path, composed.encode())).aclose()


async def test_parameters_below_the_real_floor_are_refused(tmp_path: Path) -> None:
    """A header lowered below ``KDF_FLOOR`` (an attacker wanting faster guesses) is
    refused by a store opened with the real floor. (The one test at the real Argon2id
    cost is the Client-level one in tests/client_sdk/test_store_integrity.py.)"""
    path = tmp_path / "p.db"
    created = KdfParams(opslimit=2, memlimit=64 * 1024)
    await (await open_pass(path, "pw", kdf=created, unsafe_kdf_floor=created)).aclose()
    fields = read_header(path)
    write_header(path, {**fields, 3: 8 * 1024})
    with pytest.raises(WeakParameters) as caught:
        await SqliteStore.open(path, origin=ORIGIN, passphrase="pw")
    assert isinstance(caught.value, StoreCorrupt)
    assert (caught.value.memlimit, caught.value.floor_memlimit) == (8 * 1024, KDF_FLOOR.memlimit)


async def test_lowered_argon2id_parameters_under_a_test_floor(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    created = KdfParams(opslimit=2, memlimit=64 * 1024)
    await (await open_pass(path, "pw", kdf=created, unsafe_kdf_floor=created)).aclose()
    fields = read_header(path)
    for lowered in ({2: 1}, {3: 32 * 1024}):
        write_header(path, {**fields, **lowered})
        with pytest.raises(WeakParameters):
            await open_pass(path, "pw", kdf=created, unsafe_kdf_floor=created)
        # within a lower floor the derived key differs: a wrong passphrase, not weakness
        with pytest.raises(WrongPassphrase):
            await open_pass(path, "pw", unsafe_kdf_floor=LOW_KDF)
    write_header(path, {**fields, 3: KDF_CEILING.memlimit * 2})  # a denial of service
    with pytest.raises(StoreCorrupt):
        await open_pass(path, "pw", kdf=created, unsafe_kdf_floor=created)
    write_header(path, fields)
    await (await open_pass(path, "pw", kdf=created, unsafe_kdf_floor=created)).aclose()


async def test_argon2id_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = argon2id

    def recording(*args: object, **kwargs: object) -> bytes:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(header_module, "argon2id", recording)
    await (await open_pass(tmp_path / "p.db", "pw")).aclose()
    await (await open_pass(tmp_path / "p.db", "pw")).aclose()
    assert len(threads) == 2
    assert all(name != threading.current_thread().name for name in threads)
    assert all(name.startswith("e2ee-store") for name in threads)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"key": b"k" * 32, "passphrase": "pw"},
        {"key": b"short"},
        {"key": "k" * 32},
        {"passphrase": ""},
        {"passphrase": 42},
        {"passphrase": "pw", "kdf": KdfParams(1, 8 * 1024)},  # below the default floor
        {"passphrase": "pw", "kdf": KdfParams(99, 64 * 1024 * 1024)},  # above the ceiling
        {"passphrase": "pw", "unsafe_kdf_floor": KdfParams(0, 1024)},
        {"key": b"k" * 32, "origin": ""},
        {"key": b"k" * 32, "origin": b"wss://x"},
    ],
)
async def test_bad_open_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    kwargs.setdefault("origin", ORIGIN)
    with pytest.raises(UsageError):
        await SqliteStore.open(tmp_path / "s.db", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "s.db").exists()


# --- origin pin ---------------------------------------------------------------------------


async def test_the_store_is_pinned_to_its_origin(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    with pytest.raises(OriginMismatch) as caught:
        await open_keyed(path, key, origin="wss://other.test")
    assert (caught.value.stored, caught.value.requested) == (ORIGIN, "wss://other.test")
    async with await open_keyed(path, key, origin="wss://other.test", migrate_origin=True) as s:
        assert s.origin == "wss://other.test"
        async with s.transaction() as tx:
            assert await tx.get(Table.SESSIONS, b"k1") == b"session one"
    with pytest.raises(OriginMismatch):
        await open_keyed(path, key)
    async with await open_keyed(path, key, origin="wss://other.test", migrate_origin=True) as s:
        assert s.origin == "wss://other.test"


# --- the lock, files, reprs ----------------------------------------------------------


async def test_a_second_open_in_the_same_process_is_locked_out(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    first = await open_keyed(path, key)
    with pytest.raises(StoreLocked) as caught:
        await open_keyed(path, key)
    assert caught.value.path == str(path)
    with pytest.raises(StoreLocked):  # the lock is taken before the key is checked
        await open_keyed(path, new_key())
    await first.aclose()
    await (await open_keyed(path, key)).aclose()


async def test_files_are_private_and_reprs_show_the_path_only(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    store = await open_keyed(path, key)
    async with store.transaction() as tx:
        await tx.put(Table.META, b"k", b"v")
    for suffix in ("", "-wal", "-shm", LOCK_SUFFIX):
        name = Path(str(path) + suffix)
        assert stat.S_IMODE(name.stat().st_mode) == 0o600, name
    assert repr(store) == f"SqliteStore(path={str(path)!r})"
    assert key.hex() not in repr(store._keys) and "RecordKeys(store_id=" in repr(store._keys)
    assert store.path == str(path)
    await store.aclose()


async def test_statements_run_on_the_loop_and_commits_on_the_worker(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    store = await open_keyed(tmp_path / "s.db", new_key())
    store._conn.set_trace_callback(
        lambda sql: seen.append((sql.split()[0], threading.current_thread().name))
    )
    async with store.transaction() as tx:
        await tx.put(Table.META, b"k", b"v")
        await tx.get(Table.META, b"k")
    store._conn.set_trace_callback(None)
    loop_thread = threading.current_thread().name
    assert [verb for verb, _ in seen] == ["BEGIN", "INSERT", "SELECT", "COMMIT"]
    assert all(thread == loop_thread for verb, thread in seen if verb != "COMMIT")
    assert seen[-1][1].startswith("e2ee-store")
    await store.aclose()


async def test_a_commit_interrupted_by_cancellation_still_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, key = tmp_path / "s.db", new_key()
    store = await open_keyed(path, key)
    committing, release = threading.Event(), threading.Event()
    real_commit = SqliteStore._commit_sync

    def slow_commit(self: SqliteStore) -> None:
        committing.set()
        release.wait(10)
        real_commit(self)

    monkeypatch.setattr(SqliteStore, "_commit_sync", slow_commit)

    async def writer() -> None:
        async with store.transaction() as tx:
            await tx.put(Table.OUTBOX, b"m", b"ciphertexts")

    task = asyncio.create_task(writer())
    await asyncio.to_thread(committing.wait, 10)
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # still waiting for the commit on the worker
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    monkeypatch.undo()
    async with store.transaction() as tx:  # the lock was released, the write committed
        assert await tx.get(Table.OUTBOX, b"m") == b"ciphertexts"
    await store.aclose()


# --- database failures --------------------------------------------------------------


async def test_a_failing_write_is_a_store_error_and_rolls_back(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    conn = raw(path)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.key = x'626164' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.close()
    async with await open_keyed(path, key) as store:
        with pytest.raises(StoreError) as caught:
            async with store.transaction() as tx:
                await tx.put(Table.META, b"good", b"1")
                await tx.put(Table.META, b"bad", b"2")
        assert not isinstance(caught.value, StoreCorrupt)
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        async with store.transaction() as tx:
            assert await tx.get(Table.META, b"good") is None


async def test_damaged_pages_are_store_corrupt(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    async with await open_keyed(path, key) as store, store.transaction() as tx:
        for i in range(200):
            await tx.put(Table.INBOX, b"%04d" % i, os.urandom(200))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[4 * page : 6 * page] = os.urandom(2 * page)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        async with await open_keyed(path, key) as store, store.transaction() as tx:
            await tx.scan(Table.INBOX)
            await tx.count(Table.INBOX)


async def test_a_writer_that_ignores_the_lock_file_gets_no_wait_but_an_error(
    tmp_path: Path,
) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    async with await open_keyed(path, key) as store:
        intruder = raw(path)
        intruder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError):
            async with store.transaction():
                pass
        intruder.execute("ROLLBACK")
        intruder.close()
        async with store.transaction() as tx:
            assert await tx.get(Table.SESSIONS, b"k1") == b"session one"


async def test_a_failed_origin_migration_leaves_the_old_origin(tmp_path: Path) -> None:
    path, key = tmp_path / "s.db", new_key()
    await populated(path, key)
    conn = raw(path)
    conn.execute(
        "CREATE TRIGGER frozen BEFORE INSERT ON header BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    conn.close()
    with pytest.raises(StoreError):
        await open_keyed(path, key, origin="wss://other.test", migrate_origin=True)
    assert_unlocked(path)
    async with await open_keyed(path, key) as store:
        assert store.origin == ORIGIN


async def test_an_open_cancelled_during_argon2id_leaves_the_store_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    await (await open_pass(path, "pw")).aclose()
    deriving, release = threading.Event(), threading.Event()

    def slow(*args: object, **kwargs: object) -> bytes:
        deriving.set()
        release.wait(10)
        return argon2id(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(header_module, "argon2id", slow)
    task = asyncio.create_task(open_pass(path, "pw"))
    await asyncio.to_thread(deriving.wait, 10)
    task.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # waits for the worker instead of abandoning the connection
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    monkeypatch.undo()

    async def reopen() -> None:  # the cleanup runs on the abandoned worker: poll, bounded
        for _ in range(200):
            try:
                await (await open_pass(path, "pw")).aclose()
            except StoreLocked:
                await asyncio.sleep(0.01)
            else:
                return
        raise AssertionError("the lock was never released")

    await reopen()
