"""Unit checks of the store's parts that the end-to-end tests reach only through
valid inputs: key derivation, header decoding, the lock object, errors."""

from __future__ import annotations

import pytest

from client_sdk.errors import (
    OriginMismatch,
    StoreCorrupt,
    StoreLocked,
    UnsupportedStoreVersion,
    UsageError,
    WeakParameters,
    WrongKey,
)
from client_sdk.store import MemoryStore, Table
from client_sdk.store.base import prefix_end
from client_sdk.store.crypto import RecordKeys, derive_subkey, store_ad
from client_sdk.store.header import KdfKind, StoreHeader, derive_root
from client_sdk.store.lock import FileLock
from e2ee.primitives import default_rng
from tests.client_sdk.store.helpers import ORIGIN


def test_subkeys_are_separated_by_context_and_store() -> None:
    root = bytes(range(32))
    keys = {
        derive_subkey(root, b"header"),
        derive_subkey(root, b"record", b"\x01" * 16),
        derive_subkey(root, b"lookup", b"\x01" * 16),
        derive_subkey(root, b"record", b"\x02" * 16),
        derive_subkey(bytes(32), b"record", b"\x01" * 16),
    }
    assert len(keys) == 5 and root not in keys


def test_associated_data_fields_cannot_shift() -> None:
    assert store_ad(b"record", b"ab", b"c") != store_ad(b"record", b"a", b"bc")
    assert store_ad(b"record", b"ab", b"c").startswith(b"e2ee/v1/store\x00record\x00")


def test_record_keys_bind_table_and_key() -> None:
    keys = RecordKeys(bytes(32), bytes(16))
    sealed = keys.seal(Table.SESSIONS, b"k", b"value", default_rng)
    assert keys.open(Table.SESSIONS, b"k", sealed) == b"value"
    for table, key in ((Table.INBOX, b"k"), (Table.SESSIONS, b"j")):
        with pytest.raises(StoreCorrupt):
            keys.open(table, key, sealed)
    with pytest.raises(StoreCorrupt):
        keys.open(Table.SESSIONS, b"k", "text")
    assert repr(keys) == f"RecordKeys(store_id={bytes(16).hex()})"
    for root, store_id in ((bytes(31), bytes(16)), (bytes(32), bytes(15))):
        with pytest.raises(UsageError):
            RecordKeys(root, store_id)


def test_prefix_end() -> None:
    assert prefix_end(b"") is None
    assert prefix_end(b"\xff\xff") is None
    assert prefix_end(b"a") == b"b"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\x00\xff\xff") == b"a\x01"


def test_header_decoding_refuses_non_bytes_and_raw_keys_of_the_wrong_size() -> None:
    with pytest.raises(StoreCorrupt):
        StoreHeader.from_bytes(None)
    header = StoreHeader(1, KdfKind.RAW_KEY, 0, 0, b"", bytes(16), b"", b"")
    with pytest.raises(UsageError):
        derive_root(header, b"short")


def test_memory_store_key_argument() -> None:
    key = bytes(range(32))
    with pytest.raises(UsageError):
        MemoryStore(origin=ORIGIN, key=b"short")
    with pytest.raises(UsageError):
        MemoryStore(origin="")
    a, b = MemoryStore(origin=ORIGIN, key=key), MemoryStore(origin=ORIGIN, key=key)
    assert a.lookup_key("x") != b.lookup_key("x")  # a random store id per store
    assert repr(a) == "MemoryStore()"


def test_file_lock_repr_and_release(tmp_path: str) -> None:
    path = f"{tmp_path}/s.db"
    lock = FileLock.acquire(path + ".lock", path)
    assert repr(lock) == f"FileLock(path={path + '.lock'!r}, held=True)"
    with pytest.raises(StoreLocked):
        FileLock.acquire(path + ".lock", path)
    lock.release()
    lock.release()
    assert "held=False" in repr(lock)
    FileLock.acquire(path + ".lock", path).release()


def test_errors_carry_structure_and_no_secret() -> None:
    weak = WeakParameters(opslimit=1, memlimit=2, floor_opslimit=3, floor_memlimit=4)
    assert isinstance(weak, StoreCorrupt) and weak.table is None
    mismatch = OriginMismatch(stored="wss://a", requested="wss://b")
    assert "wss://a" in str(mismatch) and mismatch.requested == "wss://b"
    version = UnsupportedStoreVersion(version=9, supported=1)
    assert (version.version, version.supported) == (9, 1)
    assert issubclass(WrongKey, Exception)
