"""Our device and its private prekeys: generation, use, lifetimes, serialization."""

from __future__ import annotations

import pytest

from e2ee import cbor
from e2ee.device import OurDevice, OurPreKeys, PreKeyUse
from e2ee.errors import CorruptState, InvalidArgument
from e2ee.keys import DHKeyPair, KEMKeyPair, SigningKeyPair
from e2ee.limits import DAY_MS, MAX_SEEN_BASE_KEYS
from e2ee.prekeys import PreKeyKind

from .helpers import NOW, make_device, seeded_rng


def _device(pq: bool = True) -> OurDevice:
    return OurDevice.generate(
        "gina", 5, SigningKeyPair.generate().public_key, pq=pq, now_ms=NOW, rng=seeded_rng(3)
    )


def test_device_round_trip_and_repr() -> None:
    device = _device()
    again = OurDevice.from_bytes(device.to_bytes())
    assert again.to_bytes() == device.to_bytes()
    assert again.entry() == device.entry()
    assert again.as_peer().entry == device.entry()
    text = repr(device)
    assert "gina.5" in text
    assert device.signing.seed().hex() not in text
    assert device.identity.private_bytes().hex() not in text


def test_device_refuses_bad_input() -> None:
    with pytest.raises(InvalidArgument):
        OurDevice.generate("gina", 2**32, bytes(32))
    with pytest.raises(CorruptState):
        OurDevice.from_bytes(b"\x00")
    value = cbor.decode(_device().to_bytes())
    assert isinstance(value, dict)
    value[0] = 2
    with pytest.raises(CorruptState):
        OurDevice.from_bytes(cbor.encode(value))


def test_prekey_ids_are_never_reused_and_signatures_verify() -> None:
    device = _device()
    prekeys = OurPreKeys()
    spk = prekeys.rotate_signed_prekey(device, NOW)
    batch = prekeys.one_time_batch(device, NOW, count=10)
    kem = prekeys.one_time_batch(device, NOW, kem=True, count=3)
    last = prekeys.rotate_last_resort(device, NOW)
    ids = [
        spk.prekey_id,
        *(p.prekey_id for p in batch),
        *(p.prekey_id for p in kem),
        last.prekey_id,
    ]
    assert ids == sorted(set(ids))
    for published in [spk, *batch, *kem, last]:
        published.verify(device.user_id, device.device_id, device.signing.public_key)
    assert prekeys.count(PreKeyKind.ONE_TIME) == 10
    assert prekeys.publishes_kem
    with pytest.raises(InvalidArgument):
        prekeys.one_time_batch(device, NOW, count=0)
    with pytest.raises(InvalidArgument):
        prekeys.one_time_batch(device, NOW, count=101)
    restored = OurPreKeys.from_bytes(prekeys.to_bytes())
    assert restored.to_bytes() == prekeys.to_bytes()
    assert restored.next_id == prekeys.next_id
    assert "OurPreKeys(" in repr(restored)


def test_lookups_and_commit_use() -> None:
    built = make_device("gina", 9, SigningKeyPair.generate().public_key, seeded_rng(4))
    prekeys = built.prekeys
    opk_id = built.one_time[0].prekey_id
    kem_id = built.kem_one_time[0].prekey_id
    assert isinstance(prekeys.one_time_prekey(opk_id), DHKeyPair)
    found = prekeys.kem_prekey(kem_id)
    assert found is not None and found[1] is True and isinstance(found[0], KEMKeyPair)
    assert built.last_resort is not None
    last = prekeys.kem_prekey(built.last_resort.prekey_id)
    assert last is not None and last[1] is False
    assert prekeys.kem_prekey(99_999) is None
    assert prekeys.signed_prekey(99_999) is None
    prekeys.commit_use(PreKeyUse(built.signed_prekey.prekey_id, opk_id, kem_id, True, b"E" * 32))
    assert prekeys.one_time_prekey(opk_id) is None
    assert prekeys.kem_prekey(kem_id) is None
    assert prekeys.seen_base_key_count == 0
    spk_id = built.signed_prekey.prekey_id
    prekeys.commit_use(PreKeyUse(spk_id, None, None, False, b"B" * 32))
    assert prekeys.base_key_seen(spk_id, None, b"B" * 32)
    assert not prekeys.base_key_seen(spk_id, 7, b"B" * 32)
    prekeys.commit_use(PreKeyUse(spk_id, None, built.last_resort.prekey_id, False, b"C" * 32))
    assert prekeys.base_key_seen(spk_id, built.last_resort.prekey_id, b"C" * 32)
    assert prekeys.kem_prekey(built.last_resort.prekey_id) is not None  # last resort stays
    assert prekeys.seen_base_key_count == 2 and not prekeys.needs_rotation
    restored = OurPreKeys.from_bytes(prekeys.to_bytes())
    assert restored.base_key_seen(spk_id, None, b"B" * 32)


def test_ledger_past_its_limit_asks_for_rotation() -> None:
    prekeys = OurPreKeys()
    prekeys.seen_base_keys[(1, -1)] = {i.to_bytes(32, "big") for i in range(MAX_SEEN_BASE_KEYS)}
    assert not prekeys.needs_rotation
    prekeys.commit_use(PreKeyUse(1, None, None, False, b"\xff" * 32))
    assert prekeys.needs_rotation


def test_lifetimes() -> None:
    device = _device()
    prekeys = OurPreKeys()
    old_spk = prekeys.rotate_signed_prekey(device, NOW)
    old_lr = prekeys.rotate_last_resort(device, NOW)
    old_batch = prekeys.one_time_batch(device, NOW, count=2)
    prekeys.commit_use(PreKeyUse(old_spk.prekey_id, None, None, False, b"A" * 32))
    rotated = NOW + 7 * DAY_MS
    new_spk = prekeys.rotate_signed_prekey(device, rotated)
    prekeys.rotate_last_resort(device, rotated)
    # Superseded keys survive max(35 days, TTL + 5 days) after rotation.
    prekeys.expire(rotated + 35 * DAY_MS, relay_message_ttl_ms=14 * DAY_MS)
    assert prekeys.signed_prekey(old_spk.prekey_id) is not None
    assert prekeys.kem_prekey(old_lr.prekey_id) is not None
    prekeys.expire(rotated + 35 * DAY_MS + 1, relay_message_ttl_ms=14 * DAY_MS)
    assert prekeys.signed_prekey(old_spk.prekey_id) is None
    assert prekeys.kem_prekey(old_lr.prekey_id) is None
    assert prekeys.signed_prekey(new_spk.prekey_id) is not None
    assert prekeys.seen_base_key_count == 0  # evicted with its signed prekey
    # One-time prekeys: 90 days, and only once a newer batch exists.
    later = NOW + 91 * DAY_MS
    prekeys.expire(later)
    assert prekeys.one_time_prekey(old_batch[0].prekey_id) is not None
    prekeys.one_time_batch(device, later, count=1)
    prekeys.expire(later)
    assert prekeys.one_time_prekey(old_batch[0].prekey_id) is None
    assert prekeys.count(PreKeyKind.ONE_TIME) == 1
    assert prekeys.count(PreKeyKind.KEM) == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.__setitem__(0, 9),
        lambda m: m.__setitem__(4, [[9, 1, b"x", 0, None]]),
        lambda m: m.__setitem__(4, [[2, "id", bytes(32), 0, None]]),
        lambda m: m.__setitem__(4, [[2, 1, bytes(5), 0, None]]),
        lambda m: m.__setitem__(5, [["a", 1, []]]),
        lambda m: m.__setitem__(5, [[1, 1]]),
        lambda m: m.__setitem__(4, [*m[4], *m[4]]),
    ],
)
def test_prekey_state_corruption_is_typed(mutate) -> None:  # type: ignore[no-untyped-def]
    prekeys = OurPreKeys()
    prekeys.rotate_signed_prekey(_device(), NOW)
    value = cbor.decode(prekeys.to_bytes())
    assert isinstance(value, dict)
    mutate(value)
    with pytest.raises(CorruptState):
        OurPreKeys.from_bytes(cbor.encode(value))


def test_exhausted_prekey_ids_and_mismatched_kinds_are_refused() -> None:
    device = _device()
    prekeys = OurPreKeys()
    prekeys.next_id = 2**32
    with pytest.raises(InvalidArgument):
        prekeys.rotate_signed_prekey(device, NOW)
    # State whose kinds do not match their keys (only reachable by tampering).
    prekeys = OurPreKeys()
    spk = prekeys.rotate_signed_prekey(device, NOW)
    kem = prekeys.one_time_batch(device, NOW, kem=True, count=1)[0]
    held = prekeys._held
    held[PreKeyKind.SIGNED][spk.prekey_id], held[PreKeyKind.KEM][kem.prekey_id] = (
        held[PreKeyKind.KEM][kem.prekey_id],
        held[PreKeyKind.SIGNED][spk.prekey_id],
    )
    with pytest.raises(CorruptState):
        prekeys.signed_prekey(spk.prekey_id)
    with pytest.raises(CorruptState):
        prekeys.kem_prekey(kem.prekey_id)
