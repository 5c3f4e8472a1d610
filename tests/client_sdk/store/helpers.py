"""Shared helpers of the store tests: cheap Argon2id parameters (through the explicit
test-only floor), opening stores, and raw access to a store file."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any, Final

from client_sdk.store import KdfParams, SqliteStore

LOW_KDF: Final = KdfParams(opslimit=1, memlimit=8 * 1024)
"""libsodium's minimum: Argon2id in about 0.1 ms. Only with ``unsafe_kdf_floor``."""
ORIGIN: Final = "wss://relay.test:8443"


def new_key() -> bytes:
    return secrets.token_bytes(32)


async def open_keyed(path: Path, key: bytes, **kwargs: Any) -> SqliteStore:
    """A raw-key store at ``path`` for :data:`ORIGIN` (unless overridden)."""
    kwargs.setdefault("origin", ORIGIN)
    return await SqliteStore.open(path, key=key, **kwargs)


async def open_pass(path: Path, passphrase: str | bytes, **kwargs: Any) -> SqliteStore:
    """A passphrase store at cheap Argon2id parameters (test-only floor)."""
    kwargs.setdefault("origin", ORIGIN)
    kwargs.setdefault("kdf", LOW_KDF)
    kwargs.setdefault("unsafe_kdf_floor", LOW_KDF)
    return await SqliteStore.open(path, passphrase=passphrase, **kwargs)


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to a (closed) store file: the attacker's view."""
    return sqlite3.connect(path, isolation_level=None)


def raw_rows(path: Path) -> dict[tuple[str, bytes], bytes]:
    with raw(path) as conn:
        rows = conn.execute("SELECT tbl, key, value FROM records").fetchall()
    conn.close()
    return {(tbl, key): value for tbl, key, value in rows}
