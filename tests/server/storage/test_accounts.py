"""Contract: accounts and device lists (every implementation)."""

from __future__ import annotations

import dataclasses

import pytest

from server.storage.base import (
    AccountExists,
    DeviceIdReused,
    Storage,
    UnknownAccount,
    UnknownBlob,
    VersionConflict,
)

from .helpers import QUOTA, T0, TTL_MS, account, device, make, prekey

pytestmark = pytest.mark.asyncio


async def test_create_and_read_back(storage: Storage) -> None:
    record = await make(storage, "alice", [7, 3, 2**32 - 1])
    assert await storage.accounts.get_account("alice") == record
    assert await storage.accounts.get_device("alice", 3) == device("alice", 3)
    assert await storage.accounts.get_device("alice", 2**32 - 1) == device("alice", 2**32 - 1)


async def test_unknown_account_and_device_are_none(storage: Storage) -> None:
    await make(storage, "alice", [1])
    assert await storage.accounts.get_account("bob") is None
    assert await storage.accounts.get_device("bob", 1) is None
    assert await storage.accounts.get_device("alice", 2) is None


async def test_taken_user_id_is_refused_and_unchanged(storage: Storage) -> None:
    first = await make(storage, "alice", [1])
    with pytest.raises(AccountExists):
        await storage.accounts.create_account(account("alice", [5], version=9), T0)
    assert await storage.accounts.get_account("alice") == first
    assert await storage.accounts.get_device("alice", 5) is None


async def test_inconsistent_record_is_a_caller_bug(storage: Storage) -> None:
    twice = dataclasses.replace(account("alice", [1]), devices=(device("alice", 1),) * 2)
    with pytest.raises(ValueError, match="repeats"):
        await storage.accounts.create_account(twice, T0)
    other = dataclasses.replace(account("alice", [1]), devices=(device("bob", 1),))
    with pytest.raises(ValueError, match="another user"):
        await storage.accounts.create_account(other, T0)
    assert await storage.accounts.get_account("alice") is None


async def test_replace_adds_and_keeps_devices(storage: Storage) -> None:
    await make(storage, "alice", [1])
    await storage.messages.accept(
        "bob", 1, b"m", b"d", [("alice", [(1, b"c")])], T0, T0 + TTL_MS, QUOTA
    )
    new = account("alice", [2, 1], version=2)
    assert await storage.accounts.replace_device_list(new, 1, T0) == ()
    assert await storage.accounts.get_account("alice") == new
    assert await storage.accounts.get_device("alice", 2) == device("alice", 2)
    assert await storage.messages.depth("alice", 1) == 1  # a kept device keeps its queue


async def test_replace_checks_the_version_and_changes_nothing(storage: Storage) -> None:
    first = await make(storage, "alice", [1, 2])
    with pytest.raises(VersionConflict):
        await storage.accounts.replace_device_list(account("alice", [1], version=3), 2, T0)
    assert await storage.accounts.get_account("alice") == first
    with pytest.raises(UnknownAccount) as info:
        await storage.accounts.replace_device_list(account("carol", [1], version=2), 1, T0)
    assert info.value.user_id == "carol"


async def test_removed_device_loses_its_data_and_its_id(storage: Storage) -> None:
    await make(storage, "alice", [1, 2])
    await make(storage, "bob", [9])
    await storage.prekeys.upload("alice", 2, prekey(1), [prekey(2)], [prekey(3)], prekey(4))
    await storage.messages.accept(
        "bob", 9, b"m", b"d", [("alice", [(1, b"c1"), (2, b"c2")])], T0, T0 + TTL_MS, QUOTA
    )
    await storage.blobs.begin(b"in-progress-blob", "alice", 2, T0, T0 + TTL_MS, 10**6)
    await storage.blobs.begin(b"complete-blob---", "alice", 2, T0, T0 + TTL_MS, 10**6)
    await storage.blobs.append(b"complete-blob---", 0, b"data", 10**6)
    await storage.blobs.complete(b"complete-blob---")

    removed = await storage.accounts.replace_device_list(account("alice", [1], version=2), 1, T0)

    assert removed == (2,)
    assert await storage.accounts.get_device("alice", 2) is None
    assert await storage.messages.depth("alice", 2) == 0
    assert await storage.messages.fetch("alice", 2, 0, 10, T0) == []
    assert await storage.messages.depth("alice", 1) == 1
    assert await storage.prekeys.claim("alice", 2) is None
    status = await storage.prekeys.status("alice", 2)
    assert (status.signed_prekey, status.one_time_left, status.kem_left) == (None, 0, 0)
    with pytest.raises(UnknownBlob):
        await storage.blobs.append(b"in-progress-blob", 0, b"x", 10**6)
    assert await storage.blobs.get(b"complete-blob---", T0) is not None

    before = await storage.accounts.get_account("alice")
    with pytest.raises(DeviceIdReused) as info:
        await storage.accounts.replace_device_list(account("alice", [1, 3, 2], version=3), 2, T0)
    assert info.value.device_id == 2
    assert await storage.accounts.get_account("alice") == before
    assert await storage.accounts.get_device("alice", 3) is None
    # Another account may use the same id: ids are per account.
    await make(storage, "carol", [2])


async def test_removing_every_device_and_chaining_versions(storage: Storage) -> None:
    await make(storage, "alice", [1, 2, 3])
    assert await storage.accounts.replace_device_list(account("alice", [], version=2), 1, T0) == (
        1,
        2,
        3,
    )
    assert await storage.accounts.replace_device_list(account("alice", [4], version=3), 2, T0) == ()
    got = await storage.accounts.get_account("alice")
    assert got is not None
    assert got.list_version == 3
    assert [d.device_id for d in got.devices] == [4]
