"""Key directory and device lists over a real relay: uploads verified, reused ids
refused, bundles served and validated, prekeys_low pushed, key check, device-list
rollback refused, a removed device cut off."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.prekeys import PreKeyBundle, PreKeyKind, validate_bundle
from e2ee.relay_frames import (
    Accepted,
    BundleResult,
    CaughtUp,
    CloseCode,
    Deliver,
    Error,
    ErrorCode,
    KeyCheck,
    KeyStatus,
    Mismatch,
    Ok,
    PreKeysLow,
    PutDeviceList,
    UploadPreKeys,
)
from server import limits
from tests.server.pg import pg_url
from tests.server.relay_client import NOW, RunningRelay
from tests.server.relay_fixtures import memory_relay, relay

__all__ = ["memory_relay", "pg_url", "relay"]


@pytest.mark.asyncio
async def test_upload_claim_and_key_check(relay: RunningRelay) -> None:
    client = relay.client()
    bob = await client.create_account()
    alice = await client.create_account()
    b = await client.connect(bob)
    await b.expect(CaughtUp)
    upload = b.prekey_upload(one_time=3, kem=2)
    await b.send(upload)
    assert (await b.expect(Ok)).req == upload.req

    a = await client.connect(alice)
    await a.expect(CaughtUp)
    req = await a.claim(bob.user_id, 1001)
    result = await a.expect(BundleResult)
    assert result.req == req
    bundle = PreKeyBundle.from_bytes(result.bundle)
    peer = bob.device_list.statement.peer(1001)
    assert peer is not None
    validate_bundle(bundle, peer, NOW)
    assert bundle.signed_prekey == upload.signed_prekey
    assert bundle.one_time_prekey == upload.one_time[0]
    assert bundle.kem_prekey == upload.kem[0]

    await b.send(KeyCheck(9))
    status = await b.recv_until(KeyStatus)
    key_status = status[0]
    assert key_status.req == 9
    assert key_status.signed_prekey == upload.signed_prekey
    assert key_status.last_resort == upload.last_resort
    assert (key_status.one_time_left, key_status.kem_left) == (2, 1)
    assert key_status.device_list_digest == bob.device_list.digest
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_bad_upload_signature_refused_nothing_stored(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    bob = await client.create_account()
    b = await client.connect(bob)
    await b.expect(CaughtUp)
    good = b.prekey_upload(one_time=2, kem=1)
    forged_otk = dataclasses.replace(good.one_time[1], signature=secrets.token_bytes(64))
    bad = UploadPreKeys(
        good.req, good.signed_prekey, (good.one_time[0], forged_otk), good.kem, good.last_resort
    )
    await b.send(bad)
    error = await b.expect(Error)
    assert error.code is ErrorCode.BAD_SIGNATURE and error.req == good.req
    # A prekey signed under another label (a one-time key presented as the signed one).
    relabelled = dataclasses.replace(good.one_time[0], kind=PreKeyKind.SIGNED)
    await b.send(UploadPreKeys(b.next_req(), relabelled, (), (), None))
    assert (await b.expect(Error)).code is ErrorCode.BAD_SIGNATURE
    status = await memory_relay.ctx.storage.prekeys.status(bob.user_id, 1001)
    assert status.signed_prekey is None and status.one_time_left == 0
    await b.send(KeyCheck(3))
    key_status = await b.expect(KeyStatus)
    assert key_status.signed_prekey is None
    # Claims for a device without a signed prekey: NO_PREKEYS.
    await b.claim(bob.user_id, 1001)
    assert (await b.expect(Error)).code is ErrorCode.NO_PREKEYS
    await b.close()


@pytest.mark.asyncio
async def test_reused_prekey_id_refused(relay: RunningRelay) -> None:
    client = relay.client()
    bob = await client.create_account()
    b = await client.connect(bob)
    await b.expect(CaughtUp)
    upload = b.prekey_upload(one_time=2, kem=0)
    await b.send(upload)
    await b.expect(Ok)
    again = UploadPreKeys(b.next_req(), None, upload.one_time[:1], (), None)
    await b.send(again)
    error = await b.expect(Error)
    assert error.code is ErrorCode.PREKEY_ID_REUSED and error.req == again.req
    await b.close()


@pytest.mark.asyncio
async def test_prekeys_low_pushed_to_target(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    bob = await client.create_account()
    alice = await client.create_account()
    b = await client.connect(bob)
    await b.expect(CaughtUp)
    await b.send(b.prekey_upload(one_time=limits.PREKEYS_LOW + 1, kem=limits.PREKEYS_LOW + 5))
    await b.expect(Ok)
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    await a.claim(bob.user_id, 1001)  # leaves PREKEYS_LOW one-time: not below
    await a.expect(BundleResult)
    await b.send(KeyCheck(1))
    assert isinstance(await b.recv(), KeyStatus)  # no push came before the answer
    await a.claim(bob.user_id, 1001)  # leaves PREKEYS_LOW - 1: below
    await a.expect(BundleResult)
    low = await b.expect(PreKeysLow)
    assert (low.one_time_left, low.kem_left) == (limits.PREKEYS_LOW - 1, limits.PREKEYS_LOW + 3)
    await a.close()
    await b.close()


@pytest.mark.asyncio
async def test_device_list_rollback_and_foreign_lists_refused(relay: RunningRelay) -> None:
    client = relay.client()
    alice = await client.create_account()
    mallory = await client.create_account()
    a = await client.connect(alice)
    await a.expect(CaughtUp)
    v1 = alice.device_list
    # Same version again, and a version that skips one.
    await a.send(PutDeviceList(1, v1.to_bytes()))
    assert (await a.expect(Error)).code is ErrorCode.DEVICE_LIST_ROLLBACK
    v2 = v1.successor(alice.master, v1.statement.devices, NOW + 1)
    v3 = v2.successor(alice.master, v1.statement.devices, NOW + 2)
    await a.send(PutDeviceList(2, v3.to_bytes()))
    assert (await a.expect(Error)).code is ErrorCode.DEVICE_LIST_ROLLBACK
    # Version 2 that does not chain to the stored list.
    unchained = SignedDeviceList.sign(
        DeviceList(
            alice.user_id,
            alice.master.public_key,
            2,
            NOW,
            secrets.token_bytes(32),
            v1.statement.devices,
        ),
        alice.master,
    )
    await a.send(PutDeviceList(3, unchained.to_bytes()))
    assert (await a.expect(Error)).code is ErrorCode.DEVICE_LIST_ROLLBACK
    # Another account's list.
    foreign = mallory.device_list.successor(
        mallory.master, mallory.device_list.statement.devices, NOW + 1
    )
    await a.send(PutDeviceList(4, foreign.to_bytes()))
    assert (await a.expect(Error)).code is ErrorCode.INVALID
    # A bad signature.
    tampered = bytearray(v2.to_bytes())
    tampered[-1] ^= 1
    await a.send(PutDeviceList(5, bytes(tampered)))
    assert (await a.expect(Error)).code is ErrorCode.BAD_SIGNATURE
    # The good successor is accepted; then the old version is a rollback.
    await a.send(PutDeviceList(6, v2.to_bytes()))
    assert (await a.expect(Ok)).req == 6
    await a.send(PutDeviceList(7, v2.to_bytes()))
    assert (await a.expect(Error)).code is ErrorCode.DEVICE_LIST_ROLLBACK
    await a.close()


@pytest.mark.asyncio
async def test_removed_device_cut_off(relay: RunningRelay) -> None:
    client = relay.client()
    alice = await client.create_account(devices=2)
    bob = await client.create_account()
    # Queue something for Alice's second device, and keep it connected.
    second = await client.connect(alice, 1)
    _, _ = await second.recv_until(CaughtUp)
    b = await client.connect(bob)
    await b.expect(CaughtUp)
    await b.send_message(
        secrets.token_bytes(16), [(alice.user_id, [(1001, b"to-1"), (1002, b"to-2")])]
    )
    await b.expect(Accepted)
    assert (await second.expect(Deliver)).ciphertext == b"to-2"
    primary = await client.connect(alice)
    await primary.recv_until(CaughtUp)
    new_list = alice.remove_device(1002)
    await primary.send(PutDeviceList(1, new_list.to_bytes()))
    await primary.recv_until(Ok)
    assert await second.closed() == CloseCode.DEVICE_REMOVED
    # Its authentication is refused afterwards, and its queue is gone.
    removed = alice.devices  # the remaining device list no longer holds 1002
    assert [d.device_id for d in removed] == [1001]
    assert await relay.ctx.storage.messages.depth(alice.user_id, 1002) == 0
    # Sends now address only 1001.
    await b.send_message(secrets.token_bytes(16), [(alice.user_id, [(1001, b"x"), (1002, b"y")])])
    mismatch = await b.expect(Mismatch)
    assert mismatch.users[0].extra == (1002,)
    await primary.close()
    await b.close()


@pytest.mark.asyncio
async def test_removed_device_auth_refused(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    alice = await client.create_account(devices=2)
    gone = alice.devices[1]
    primary = await client.connect(alice)
    await primary.recv_until(CaughtUp)
    await primary.send(PutDeviceList(1, alice.remove_device(1002).to_bytes()))
    await primary.recv_until(Ok)
    alice.devices.append(gone)  # the removed device tries again
    conn = await client.open(alice, 1)
    await conn.send(conn.auth_frame())
    assert (await conn.expect(Error)).code is ErrorCode.AUTH_FAILED
    assert await conn.closed() == CloseCode.AUTH_FAILED
    await primary.close()
