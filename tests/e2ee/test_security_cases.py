"""Named security cases of the protocol core, one test each (issue 2)."""

from __future__ import annotations

import dataclasses

import nacl.bindings  # tests may use nacl directly to build hostile inputs
import pytest

import e2ee.ratchet as ratchet_module
from e2ee import cbor
from e2ee.device_list import (
    DeviceList,
    SignedDeviceList,
    check_device_list,
)
from e2ee.envelope import MessageEnvelope, PreKeyEnvelope, Suite
from e2ee.errors import (
    BadSignature,
    DecryptionError,
    DeviceListRollback,
    DowngradeError,
    DuplicateMessage,
    Equivocation,
    InvalidKey,
    KeyAgreementError,
    ReflectedMessage,
    StalePreKey,
    TooManySkippedMessages,
    UntrustedIdentity,
)
from e2ee.keys import DHKeyPair, SigningKeyPair
from e2ee.labels import Label
from e2ee.limits import DAY_MS, MAX_SKIP
from e2ee.prekeys import PreKeyBundle
from e2ee.session import SessionRecord, decrypt, start_session

from .helpers import NOW, TestUser, make_user

ORDER8_POINT = bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
IDENTITY_POINT = bytes.fromhex("01" + "00" * 31)


def _pair(pq: bool = True) -> tuple[TestUser, TestUser]:
    return make_user("alice", pq=pq, seed=11), make_user("bob", pq=pq, seed=12)


def _snapshot(user: TestUser, record: SessionRecord | None) -> tuple[bytes, bytes | None]:
    prekeys = user.devices[0].prekeys.to_bytes()
    return prekeys, None if record is None else record.to_bytes()


def test_prekey_message_with_another_identity_key_is_refused_before_any_state() -> None:
    alice, bob = _pair()
    mallory_ik = DHKeyPair.generate()
    record = start_session(alice.devices[0].device, bob.peer(), bob.devices[0].bundle(), None, NOW)
    genuine = PreKeyEnvelope.from_bytes(record.encrypt(b"hi", NOW))
    forged = dataclasses.replace(genuine, identity_key=mallory_ik.public_key).to_bytes()
    before = _snapshot(bob, None)
    with pytest.raises(UntrustedIdentity):
        decrypt(bob.devices[0].device, bob.devices[0].prekeys, None, alice.peer(), forged, NOW)
    assert _snapshot(bob, None) == before
    # The genuine message still works afterwards: nothing was consumed.
    result = decrypt(
        bob.devices[0].device, bob.devices[0].prekeys, None, alice.peer(), genuine.to_bytes(), NOW
    )
    assert result.plaintext == b"hi"


def test_unknown_sender_device_is_untrusted() -> None:
    alice, bob = _pair()
    record = start_session(alice.devices[0].device, bob.peer(), bob.devices[0].bundle(), None, NOW)
    envelope = record.encrypt(b"hi", NOW)
    with pytest.raises(UntrustedIdentity):
        decrypt(bob.devices[0].device, bob.devices[0].prekeys, None, None, envelope, NOW)
    # A device entry of another device (same user) is not the sender either.
    other = make_user("alice", devices=2, seed=11)
    with pytest.raises(UntrustedIdentity):
        decrypt(bob.devices[0].device, bob.devices[0].prekeys, None, other.peer(1), envelope, NOW)


def test_pq_device_bundle_without_kem_prekey_is_a_downgrade() -> None:
    alice, bob = _pair(pq=True)
    stripped = bob.devices[0].bundle(kem=False)
    assert stripped.kem_prekey is None
    with pytest.raises(DowngradeError):
        start_session(alice.devices[0].device, bob.peer(), stripped, None, NOW)


def test_classical_prekey_message_to_kem_publishing_responder_is_refused() -> None:
    # Alice believes bob is classical (a list entry without pq) and reaches him by X3DH,
    # but bob publishes KEM prekeys: he refuses the downgrade.
    alice, bob = _pair(pq=True)
    entry = dataclasses.replace(bob.devices[0].device.entry(), pq=False)
    classical_peer = dataclasses.replace(bob.peer(), entry=entry)
    record = start_session(
        alice.devices[0].device, classical_peer, bob.devices[0].bundle(kem=False), None, NOW
    )
    envelope = record.encrypt(b"hi", NOW)
    assert PreKeyEnvelope.from_bytes(envelope).suite is Suite.X3DH
    before = _snapshot(bob, None)
    with pytest.raises(DowngradeError):
        decrypt(bob.devices[0].device, bob.devices[0].prekeys, None, alice.peer(), envelope, NOW)
    assert _snapshot(bob, None) == before


def _list_with_master(master_pk: bytes) -> bytes:
    user = make_user("carol", seed=13)
    statement = user.device_list.statement.to_value()
    assert isinstance(statement, dict)
    statement[1] = master_pk
    return cbor.encode({0: statement, 1: bytes(64)})


@pytest.mark.parametrize(
    "bad_key",
    [IDENTITY_POINT, ORDER8_POINT],
    ids=["small-order-identity", "small-order-8"],
)
def test_small_order_ed25519_master_key_is_refused_at_decode(bad_key: bytes) -> None:
    with pytest.raises(InvalidKey):
        SignedDeviceList.from_bytes(_list_with_master(bad_key))


def test_mixed_order_ed25519_key_is_refused_at_decode() -> None:
    good = SigningKeyPair.generate().public_key
    mixed = nacl.bindings.crypto_core_ed25519_add(good, ORDER8_POINT)
    with pytest.raises(InvalidKey):
        SignedDeviceList.from_bytes(_list_with_master(mixed))
    # and as a device signing key
    user = make_user("carol", seed=14)
    statement = user.device_list.statement.to_value()
    assert isinstance(statement, dict) and isinstance(statement[5], list)
    device = statement[5][0]
    assert isinstance(device, dict)
    device[1] = mixed
    with pytest.raises(InvalidKey):
        SignedDeviceList.from_bytes(cbor.encode({0: statement, 1: bytes(64)}))


def test_device_list_rollback_is_caught() -> None:
    carol = make_user("carol", seed=15)
    v1 = carol.device_list
    v2 = v1.successor(carol.master, v1.statement.devices, NOW + 1)
    check_device_list(
        v2, user_id="carol", pinned_master_pk=carol.master.public_key, last_seen=v1, now_ms=NOW
    )
    with pytest.raises(DeviceListRollback) as caught:
        check_device_list(
            v1, user_id="carol", pinned_master_pk=carol.master.public_key, last_seen=v2, now_ms=NOW
        )
    assert (caught.value.seen, caught.value.offered) == (2, 1)


def test_equivocating_device_list_is_caught() -> None:
    carol = make_user("carol", seed=16)
    v1 = carol.device_list
    fork_a = v1.successor(carol.master, v1.statement.devices, NOW + 1)
    fork_b = v1.successor(carol.master, (), NOW + 2)
    with pytest.raises(Equivocation):
        check_device_list(
            fork_b, user_id="carol", pinned_master_pk=None, last_seen=fork_a, now_ms=NOW
        )
    # A v3 that does not chain to the v2 we saw is a fork as well.
    v3_of_b = fork_b.successor(carol.master, (), NOW + 3)
    with pytest.raises(Equivocation):
        check_device_list(
            v3_of_b, user_id="carol", pinned_master_pk=None, last_seen=fork_a, now_ms=NOW
        )


def test_counter_jump_past_max_skip_is_refused_before_any_dh_or_kdf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob = _pair(pq=False)
    a_record = start_session(
        alice.devices[0].device, bob.peer(), bob.devices[0].bundle(), None, NOW
    )
    first = decrypt(
        bob.devices[0].device,
        bob.devices[0].prekeys,
        None,
        alice.peer(),
        a_record.encrypt(b"0", NOW),
        NOW,
    )
    b_record = first.record
    session = a_record.active
    assert session is not None
    session.pending_header = None  # plain message envelopes from here on
    # Same chain: a counter MAX_SKIP + 1 ahead.
    for _ in range(MAX_SKIP + 1):
        session.ratchet.encrypt(b"skipped")
    far = a_record.encrypt(b"far", NOW)
    calls: list[str] = []

    def count(name: str, real):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ratchet_module, "kdf_rk", count("kdf_rk", ratchet_module.kdf_rk))
    monkeypatch.setattr(ratchet_module, "_advance", count("kdf_ck", ratchet_module._advance))
    monkeypatch.setattr(DHKeyPair, "dh", count("dh", DHKeyPair.dh))
    before = b_record.to_bytes()
    with pytest.raises(TooManySkippedMessages):
        decrypt(bob.devices[0].device, bob.devices[0].prekeys, b_record, alice.peer(), far, NOW)
    assert calls == []
    assert b_record.to_bytes() == before
    # New chain: (PN - Nr) + N past MAX_SKIP, checked before the DH step.
    reply = b_record.encrypt(b"reply", NOW)
    a_record.decrypt_message(MessageEnvelope.from_bytes(reply), NOW)
    next_chain = a_record.encrypt(b"next chain", NOW)
    calls.clear()
    with pytest.raises(TooManySkippedMessages):
        decrypt(
            bob.devices[0].device, bob.devices[0].prekeys, b_record, alice.peer(), next_chain, NOW
        )
    assert calls == []


def test_message_reflected_to_its_sender_fails() -> None:
    alice, bob = _pair()
    a_record = start_session(
        alice.devices[0].device, bob.peer(), bob.devices[0].bundle(), None, NOW
    )
    outgoing = a_record.encrypt(b"to bob", NOW)
    result = decrypt(
        bob.devices[0].device, bob.devices[0].prekeys, None, alice.peer(), outgoing, NOW
    )
    reply = result.record.encrypt(b"to alice", NOW)
    decrypt(alice.devices[0].device, alice.devices[0].prekeys, a_record, bob.peer(), reply, NOW)
    mine = a_record.encrypt(b"alice again", NOW)
    before = a_record.to_bytes()
    with pytest.raises(ReflectedMessage):
        decrypt(alice.devices[0].device, alice.devices[0].prekeys, a_record, bob.peer(), mine, NOW)
    assert a_record.to_bytes() == before
    # Bob's own message reflected to bob fails too (his direction byte differs).
    bobs = result.record.encrypt(b"bob again", NOW)
    with pytest.raises(DecryptionError):
        result.record.decrypt_message(MessageEnvelope.from_bytes(bobs), NOW)


def test_ciphertext_moved_to_another_session_or_address_fails() -> None:
    alice, bob = _pair()
    carol = make_user("carol", seed=17)
    # Alice talks to bob and to carol; a message to bob is delivered to carol instead.
    to_bob = start_session(alice.devices[0].device, bob.peer(), bob.devices[0].bundle(), None, NOW)
    to_carol = start_session(
        alice.devices[0].device, carol.peer(), carol.devices[0].bundle(), None, NOW
    )
    for_carol = to_carol.encrypt(b"for carol", NOW)
    for_bob = to_bob.encrypt(b"for bob", NOW)
    result = decrypt(
        carol.devices[0].device, carol.devices[0].prekeys, None, alice.peer(), for_carol, NOW
    )
    carol_record = result.record
    carol_prekeys = carol.devices[0].prekeys.to_bytes()
    # Carol holds prekeys with the same ids as Bob's (ids count from 1 per device), so
    # the key agreement runs, with other keys and another session AD: the first
    # message does not authenticate, and nothing is consumed.
    with pytest.raises(DecryptionError) as caught:
        decrypt(
            carol.devices[0].device,
            carol.devices[0].prekeys,
            carol_record,
            alice.peer(),
            for_bob,
            NOW,
        )
    assert type(caught.value) is DecryptionError
    assert carol.devices[0].prekeys.to_bytes() == carol_prekeys
    # Established sessions: a message of the bob session re-addressed to carol.
    bob_record = decrypt(
        bob.devices[0].device, bob.devices[0].prekeys, None, alice.peer(), for_bob, NOW
    ).record
    decrypt(
        alice.devices[0].device,
        alice.devices[0].prekeys,
        to_bob,
        bob.peer(),
        bob_record.encrypt(b"ack", NOW),
        NOW,
    )
    decrypt(
        alice.devices[0].device,
        alice.devices[0].prekeys,
        to_carol,
        carol.peer(),
        carol_record.encrypt(b"ack", NOW),
        NOW,
    )
    moved = to_bob.encrypt(b"bob only", NOW)
    before = carol_record.to_bytes()
    with pytest.raises(DecryptionError):
        decrypt(
            carol.devices[0].device,
            carol.devices[0].prekeys,
            carol_record,
            alice.peer(),
            moved,
            NOW,
        )
    assert carol_record.to_bytes() == before
    # And a message from alice's first device presented as coming from another of her
    # devices: that device's sessions cannot decrypt it.
    assert bob_record.decrypt_message(MessageEnvelope.from_bytes(moved), NOW) == b"bob only"


def test_prekey_message_without_one_time_prekey_replayed_after_restart_is_duplicate() -> None:
    alice, bob = _pair()
    a_record = start_session(
        alice.devices[0].device, bob.peer(), bob.devices[0].bundle(opk=False), None, NOW
    )
    envelope = a_record.encrypt(b"no opk", NOW)
    b = bob.devices[0]
    result = decrypt(b.device, b.prekeys, None, alice.peer(), envelope, NOW)
    assert result.no_one_time_prekey and result.prekey_use is not None
    b.prekeys.commit_use(result.prekey_use)
    # Restart: state from bytes; the session is lost (e.g. the store was restored
    # without it), so only the durable base-key ledger can catch the replay.
    restored = type(b.prekeys).from_bytes(b.prekeys.to_bytes())
    with pytest.raises(DuplicateMessage):
        decrypt(b.device, restored, None, alice.peer(), envelope, NOW)
    # With the session restored too, the existing session refuses it as a duplicate.
    record = SessionRecord.from_bytes(result.record.to_bytes())
    with pytest.raises(DuplicateMessage):
        decrypt(b.device, restored, record, alice.peer(), envelope, NOW)


def test_redelivered_prekey_message_goes_to_its_existing_session() -> None:
    alice, bob = _pair()
    b = bob.devices[0]
    a_record = start_session(alice.devices[0].device, bob.peer(), b.bundle(), None, NOW)
    first = a_record.encrypt(b"one", NOW)
    second = a_record.encrypt(b"two", NOW)  # still a pre-key envelope (no reply yet)
    assert PreKeyEnvelope.from_bytes(second).base_key == PreKeyEnvelope.from_bytes(first).base_key
    result = decrypt(b.device, b.prekeys, None, alice.peer(), second, NOW)
    assert result.prekey_use is not None
    b.prekeys.commit_use(result.prekey_use)  # the one-time prekey is now gone
    # The earlier pre-key message arrives late: the existing session handles it,
    # not "unknown prekey" and not a second session.
    late = decrypt(b.device, b.prekeys, result.record, alice.peer(), first, NOW)
    assert late.plaintext == b"one" and not late.new_session
    assert len(late.record.sessions) == 1


def test_signed_prekey_older_than_30_days_is_refused() -> None:
    alice, bob = _pair()
    bundle = bob.devices[0].bundle()
    with pytest.raises(StalePreKey):
        start_session(alice.devices[0].device, bob.peer(), bundle, None, NOW + 30 * DAY_MS + 1)
    start_session(alice.devices[0].device, bob.peer(), bundle, None, NOW + 30 * DAY_MS)


def test_bundle_signed_by_another_device_is_refused() -> None:
    alice, bob = _pair()
    mallory = make_user("bob", seed=99)  # same user id, different keys
    forged = dataclasses.replace(mallory.devices[0].bundle(), device_id=bob.peer().device_id)
    with pytest.raises(BadSignature):
        start_session(alice.devices[0].device, bob.peer(), forged, None, NOW)
    other_device = PreKeyBundle(
        "bob", 4242, forged.signed_prekey, forged.one_time_prekey, forged.kem_prekey
    )
    with pytest.raises(UntrustedIdentity):
        start_session(alice.devices[0].device, bob.peer(), other_device, None, NOW)


def test_signature_labels_are_registered() -> None:
    # The label-separation case itself lives in test_identifiers_labels; this checks
    # the device list is signed under its label only.
    carol = make_user("carol", seed=18)
    statement = carol.device_list.statement
    wrong = carol.master.sign(Label.SIGNED_PREKEY, statement.to_value())
    forged = SignedDeviceList(statement, wrong).to_bytes()
    with pytest.raises(BadSignature):
        SignedDeviceList.from_bytes(forged)
    assert isinstance(DeviceList.from_value(statement.to_value()), DeviceList)


def test_redelivered_prekey_message_must_carry_the_header_of_its_session() -> None:
    alice, bob = _pair()
    b = bob.devices[0]
    a_record = start_session(alice.devices[0].device, bob.peer(), b.bundle(), None, NOW)
    first = a_record.encrypt(b"one", NOW)
    second = a_record.encrypt(b"two", NOW)
    result = decrypt(b.device, b.prekeys, None, alice.peer(), first, NOW)
    result.commit_prekeys(b.prekeys)
    # Same base key and a genuine ratchet message, but another identity key claimed.
    forged = dataclasses.replace(
        PreKeyEnvelope.from_bytes(second), identity_key=DHKeyPair.generate().public_key
    ).to_bytes()
    before = result.record.to_bytes()
    with pytest.raises(KeyAgreementError):
        decrypt(b.device, b.prekeys, result.record, alice.peer(), forged, NOW)
    assert result.record.to_bytes() == before
    assert decrypt(b.device, b.prekeys, result.record, alice.peer(), second, NOW).plaintext == (
        b"two"
    )


def test_our_own_prekey_message_reflected_to_us_fails() -> None:
    alice, bob = _pair()
    a = alice.devices[0]
    a_record = start_session(a.device, bob.peer(), bob.devices[0].bundle(), None, NOW)
    mine = a_record.encrypt(b"to bob", NOW)
    before = a_record.to_bytes()
    with pytest.raises(ReflectedMessage):
        decrypt(a.device, a.prekeys, a_record, bob.peer(), mine, NOW)
    assert a_record.to_bytes() == before
