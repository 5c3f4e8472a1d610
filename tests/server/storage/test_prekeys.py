"""Contract: the key directory (every implementation)."""

from __future__ import annotations

import asyncio

import pytest

from server.storage.base import PreKeyIdReused, PreKeyStatus, Storage, UnknownDevice

from .helpers import make, prekey

pytestmark = pytest.mark.asyncio


async def test_claim_takes_lowest_ids_and_counts(storage: Storage) -> None:
    await make(storage, "bob", [1])
    await storage.prekeys.upload(
        "bob",
        1,
        prekey(1, b"spk"),
        [prekey(12), prekey(11)],
        [prekey(21, b"kem")],
        prekey(30, b"lr"),
    )
    assert await storage.prekeys.status("bob", 1) == PreKeyStatus(
        prekey(1, b"spk").encoded, prekey(30, b"lr").encoded, 2, 1
    )
    first = await storage.prekeys.claim("bob", 1)
    assert first is not None
    assert first.signed_prekey == prekey(1, b"spk").encoded
    assert first.one_time == prekey(11).encoded
    assert (first.kem, first.kem_is_last_resort) == (prekey(21, b"kem").encoded, False)
    assert (first.one_time_left, first.kem_left) == (1, 0)

    second = await storage.prekeys.claim("bob", 1)
    assert second is not None
    assert second.one_time == prekey(12).encoded
    assert (second.kem, second.kem_is_last_resort) == (prekey(30, b"lr").encoded, True)

    third = await storage.prekeys.claim("bob", 1)
    assert third is not None
    assert third.one_time is None  # no EC one-time prekey left: none is served
    assert (third.kem, third.kem_is_last_resort) == (prekey(30, b"lr").encoded, True)
    assert (third.one_time_left, third.kem_left) == (0, 0)


async def test_no_signed_prekey_or_unknown_device_claims_nothing(storage: Storage) -> None:
    await make(storage, "bob", [1])
    await storage.prekeys.upload("bob", 1, None, [prekey(2)], [prekey(3)], None)
    assert await storage.prekeys.claim("bob", 1) is None
    assert await storage.prekeys.claim("bob", 5) is None
    assert await storage.prekeys.claim("nobody", 1) is None
    assert await storage.prekeys.status("nobody", 1) == PreKeyStatus(None, None, 0, 0)
    # Nothing was taken by the refused claims.
    assert await storage.prekeys.status("bob", 1) == PreKeyStatus(None, None, 1, 1)


async def test_without_last_resort_kem_is_none(storage: Storage) -> None:
    await make(storage, "bob", [1])
    await storage.prekeys.upload("bob", 1, prekey(1), [], [], None)
    bundle = await storage.prekeys.claim("bob", 1)
    assert bundle is not None
    assert (bundle.one_time, bundle.kem, bundle.kem_is_last_resort) == (None, None, False)


async def test_signed_and_last_resort_are_replaced(storage: Storage) -> None:
    await make(storage, "bob", [1])
    await storage.prekeys.upload("bob", 1, prekey(1), [], [], prekey(2))
    await storage.prekeys.upload("bob", 1, prekey(3), [], [], None)
    await storage.prekeys.upload("bob", 1, None, [], [], prekey(4))
    status = await storage.prekeys.status("bob", 1)
    assert (status.signed_prekey, status.last_resort) == (prekey(3).encoded, prekey(4).encoded)


async def test_upload_to_unknown_device_is_refused(storage: Storage) -> None:
    await make(storage, "bob", [1])
    with pytest.raises(UnknownDevice) as info:
        await storage.prekeys.upload("bob", 2, prekey(1), [], [], None)
    assert (info.value.user_id, info.value.device_id) == ("bob", 2)
    with pytest.raises(UnknownDevice):
        await storage.prekeys.upload("nobody", 1, prekey(1), [], [], None)


@pytest.mark.parametrize(
    "upload",
    [
        # (signed, one_time, kem, last_resort) ids; 5 was used before (any kind).
        (None, [6, 5], [], None),
        (None, [], [5], None),
        (5, [], [], None),
        (None, [], [], 5),
        (None, [7, 8], [7], None),  # twice in one upload
        (7, [7], [], None),
    ],
)
async def test_prekey_id_reuse_is_refused_all_or_nothing(
    storage: Storage, upload: tuple[int | None, list[int], list[int], int | None]
) -> None:
    await make(storage, "bob", [1])
    await storage.prekeys.upload("bob", 1, prekey(1), [prekey(5)], [], prekey(2))
    assert await storage.prekeys.claim("bob", 1) is not None  # 5 is gone, still used
    before = await storage.prekeys.status("bob", 1)
    signed, one_time, kem, last = upload
    with pytest.raises(PreKeyIdReused) as info:
        await storage.prekeys.upload(
            "bob",
            1,
            None if signed is None else prekey(signed, b"new"),
            [prekey(i, b"new") for i in one_time],
            [prekey(i, b"new") for i in kem],
            None if last is None else prekey(last, b"new"),
        )
    assert info.value.prekey_id in {5, 7}
    assert await storage.prekeys.status("bob", 1) == before
    # The fresh ids of the refused upload were not recorded as used either.
    await storage.prekeys.upload("bob", 1, None, [prekey(6), prekey(8)], [], None)


async def test_prekey_ids_are_per_device(storage: Storage) -> None:
    await make(storage, "bob", [1, 2])
    await storage.prekeys.upload("bob", 1, prekey(1), [prekey(2)], [], None)
    await storage.prekeys.upload("bob", 2, prekey(1), [prekey(2)], [], None)
    assert (await storage.prekeys.status("bob", 2)).one_time_left == 1


async def test_concurrent_claims_never_share_a_prekey(storage: Storage) -> None:
    await make(storage, "bob", [1])
    await storage.prekeys.upload(
        "bob",
        1,
        prekey(1),
        [prekey(100 + i) for i in range(20)],
        [prekey(200 + i) for i in range(20)],
        prekey(2),
    )
    bundles = await asyncio.gather(*(storage.prekeys.claim("bob", 1) for _ in range(30)))
    ec = [b.one_time for b in bundles if b is not None and b.one_time is not None]
    kem = [b.kem for b in bundles if b is not None and not b.kem_is_last_resort]
    assert len(ec) == len(set(ec)) == 20
    assert len(kem) == len(set(kem)) == 20
    assert sum(b is not None and b.kem_is_last_resort for b in bundles) == 10
    assert await storage.prekeys.status("bob", 1) == PreKeyStatus(
        prekey(1).encoded, prekey(2).encoded, 0, 0
    )
