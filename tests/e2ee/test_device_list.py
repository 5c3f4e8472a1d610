"""Signed device lists: encoding, signing and the acceptance rules (DESIGN 4.2)."""

from __future__ import annotations

import dataclasses

import pytest

from e2ee import cbor
from e2ee.device_list import (
    DeviceEntry,
    DeviceList,
    MasterKeyChanged,
    SignedDeviceList,
    check_device_list,
)
from e2ee.errors import BadSignature, DecodeError, InvalidArgument, UntrustedIdentity
from e2ee.keys import SigningKeyPair
from e2ee.limits import DEVICE_LIST_RESIGN_MS, DEVICE_LIST_STALE_MS

from .helpers import NOW, make_user


def test_round_trip_and_signature_check() -> None:
    user = make_user("dave", devices=3, seed=21)
    encoded = user.device_list.to_bytes()
    decoded = SignedDeviceList.from_bytes(encoded)
    assert decoded.statement == user.device_list.statement
    assert decoded.to_bytes() == encoded
    assert decoded.digest == user.device_list.digest
    peer = decoded.statement.peer(user.devices[1].device.device_id)
    assert peer is not None and peer.device_id == user.devices[1].device.device_id
    assert decoded.statement.peer(1) is None
    tampered = bytearray(encoded)
    tampered[-1] ^= 1
    with pytest.raises(BadSignature):
        SignedDeviceList.from_bytes(bytes(tampered))


def test_sign_refuses_a_foreign_master_key() -> None:
    user = make_user("dave", seed=22)
    with pytest.raises(InvalidArgument):
        SignedDeviceList.sign(user.device_list.statement, SigningKeyPair.generate())


def test_statement_invariants() -> None:
    user = make_user("dave", devices=2, seed=23)
    s = user.device_list.statement
    with pytest.raises(DecodeError):
        dataclasses.replace(s, devices=tuple(reversed(s.devices)))
    with pytest.raises(DecodeError):
        dataclasses.replace(s, devices=(s.devices[0], s.devices[0]))
    with pytest.raises(DecodeError):
        dataclasses.replace(s, prev_hash=bytes(32))  # version 1 has none
    with pytest.raises(DecodeError):
        dataclasses.replace(s, version=2)  # later versions need one
    many = tuple(dataclasses.replace(s.devices[0], device_id=i) for i in range(101))
    with pytest.raises(DecodeError):
        dataclasses.replace(s, devices=many)


def test_acceptance_first_sight_unchanged_and_growth() -> None:
    user = make_user("erin", devices=2, seed=24)
    v1 = user.device_list
    first = check_device_list(v1, user_id="erin", pinned_master_pk=None, last_seen=None, now_ms=NOW)
    assert first.changed and not first.stale and first.added == v1.statement.devices
    same = check_device_list(v1, user_id="erin", pinned_master_pk=None, last_seen=v1, now_ms=NOW)
    assert not same.changed and same.added == () and same.removed == ()
    removed = v1.statement.devices[1]
    v2 = v1.successor(user.master, (v1.statement.devices[0],), NOW + 5)
    check = check_device_list(
        v2, user_id="erin", pinned_master_pk=user.master.public_key, last_seen=v1, now_ms=NOW
    )
    assert check.changed and check.removed == (removed,) and check.added == ()
    # A jump of several versions cannot be chained, but is accepted.
    v3 = v2.successor(user.master, v1.statement.devices, NOW + 6)
    v4 = v3.successor(user.master, v1.statement.devices, NOW + 7)
    jump = check_device_list(v4, user_id="erin", pinned_master_pk=None, last_seen=v2, now_ms=NOW)
    assert jump.added == (removed,)


def test_primary_re_signs_weekly() -> None:
    user = make_user("erin", seed=28)
    assert not user.device_list.needs_resign(NOW + DEVICE_LIST_RESIGN_MS - 1)
    assert user.device_list.needs_resign(NOW + DEVICE_LIST_RESIGN_MS)
    again = user.device_list.successor(
        user.master, user.device_list.statement.devices, NOW + DEVICE_LIST_RESIGN_MS
    )
    assert not again.needs_resign(NOW + DEVICE_LIST_RESIGN_MS)


def test_wrong_user_and_master_key_change() -> None:
    user = make_user("erin", seed=25)
    with pytest.raises(UntrustedIdentity):
        check_device_list(
            user.device_list, user_id="frank", pinned_master_pk=None, last_seen=None, now_ms=NOW
        )
    with pytest.raises(MasterKeyChanged):
        check_device_list(
            user.device_list,
            user_id="erin",
            pinned_master_pk=SigningKeyPair.generate().public_key,
            last_seen=None,
            now_ms=NOW,
        )


def test_staleness_is_reported_not_refused() -> None:
    user = make_user("erin", seed=26)
    fresh = check_device_list(
        user.device_list,
        user_id="erin",
        pinned_master_pk=None,
        last_seen=None,
        now_ms=NOW + DEVICE_LIST_STALE_MS,
    )
    assert not fresh.stale
    stale = check_device_list(
        user.device_list,
        user_id="erin",
        pinned_master_pk=None,
        last_seen=user.device_list,
        now_ms=NOW + DEVICE_LIST_STALE_MS + 1,
    )
    assert stale.stale


def test_entry_decoding_refuses_bad_fields() -> None:
    user = make_user("erin", seed=27)
    entry = user.device_list.statement.devices[0].to_value()
    assert isinstance(entry, dict)
    assert DeviceEntry.from_value(entry) == user.device_list.statement.devices[0]
    for key, bad in [(0, -1), (1, b"short"), (2, bytes(32)), (3, 1), (4, "now")]:
        broken = dict(entry)
        broken[key] = bad
        with pytest.raises(DecodeError):
            DeviceEntry.from_value(broken)
    with pytest.raises(DecodeError):
        DeviceList.from_value({**user.device_list.statement.to_value(), 9: 1})  # type: ignore[dict-item]
    with pytest.raises(DecodeError):
        SignedDeviceList.from_bytes(cbor.encode({0: 1, 1: bytes(64)}))
