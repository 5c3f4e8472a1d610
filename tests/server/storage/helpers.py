"""Records for the storage tests (the store never parses keys, so any bytes do)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from server.storage.base import AccountRecord, DeviceRecord, Storage, StoredPreKey

T0 = 1_700_000_000_000
"""A fixed "now" in milliseconds."""
DAY_MS = 24 * 3600 * 1000
TTL_MS = 30 * DAY_MS
QUOTA = 1000


def device(user: str, device_id: int) -> DeviceRecord:
    """A device with keys derived from its ids."""
    seed = f"{user}.{device_id}".encode()
    return DeviceRecord(
        user_id=user,
        device_id=device_id,
        signing_pk=hashlib.sha256(b"sig" + seed).digest(),
        x25519_ik=hashlib.sha256(b"ik" + seed).digest(),
        pq=device_id % 2 == 0,
    )


def account(user: str, device_ids: Sequence[int], version: int = 1) -> AccountRecord:
    """An account at ``version`` holding these devices, in this order."""
    signed = f"list:{user}:{version}:{list(device_ids)}".encode()
    return AccountRecord(
        user_id=user,
        master_pk=hashlib.sha256(b"master" + user.encode()).digest(),
        list_version=version,
        signed_list=signed,
        list_digest=hashlib.sha256(signed).digest(),
        devices=tuple(device(user, d) for d in device_ids),
    )


def prekey(prekey_id: int, tag: bytes = b"pk") -> StoredPreKey:
    """A stored prekey whose bytes name its id."""
    return StoredPreKey(prekey_id, tag + prekey_id.to_bytes(4, "big"))


async def make(storage: Storage, user: str, device_ids: Sequence[int]) -> AccountRecord:
    """Create and return an account."""
    record = account(user, device_ids)
    await storage.accounts.create_account(record, T0)
    return record


def digest(body: bytes) -> bytes:
    """The digest a relay would compute over a send."""
    return hashlib.sha256(body).digest()
