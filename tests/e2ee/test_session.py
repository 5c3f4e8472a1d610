"""Sessions and the Double Ratchet: several sessions per device, limits, lifetimes."""

from __future__ import annotations

import dataclasses

import pytest

from e2ee import cbor
from e2ee.envelope import MessageEnvelope, PreKeyEnvelope
from e2ee.errors import (
    CorruptState,
    DecryptionError,
    DuplicateMessage,
    InvalidArgument,
    LimitExceeded,
    MessageKeyUnavailable,
    UnknownPreKey,
    UnsupportedVersion,
)
from e2ee.keys import DHKeyPair
from e2ee.limits import (
    ARCHIVED_SESSION_IDLE_MS,
    MAX_PLAINTEXT,
    MAX_RECEIVING_CHAINS,
    MAX_SEEN_DIGESTS,
    MAX_SESSIONS_PER_DEVICE,
    MAX_STORED_SKIPPED,
    SKIPPED_KEY_MAX_AGE_MS,
)
from e2ee.primitives import hkdf_sha256
from e2ee.ratchet import RatchetState, kdf_rk
from e2ee.session import Session, SessionRecord, decrypt, start_session

from .helpers import NOW, TestUser, make_user


class Pair:
    """Alice and Bob with an established session (Bob has replied once)."""

    def __init__(self, pq: bool = False, seed: int = 30) -> None:
        self.alice: TestUser = make_user("alice", pq=pq, seed=seed)
        self.bob: TestUser = make_user("bob", pq=pq, seed=seed + 1)
        self.a = start_session(
            self.alice.devices[0].device, self.bob.peer(), self.bob.devices[0].bundle(), None, NOW
        )
        self.b = self.to_bob(self.a.encrypt(b"hello", NOW)).record
        self.to_alice(self.b.encrypt(b"hi", NOW))

    def to_bob(self, envelope: bytes, now: int = NOW):  # type: ignore[no-untyped-def]
        b = self.bob.devices[0]
        result = decrypt(
            b.device, b.prekeys, getattr(self, "b", None), self.alice.peer(), envelope, now
        )
        result.commit_prekeys(b.prekeys)
        return result

    def to_alice(self, envelope: bytes, now: int = NOW):  # type: ignore[no-untyped-def]
        a = self.alice.devices[0]
        return decrypt(a.device, a.prekeys, self.a, self.bob.peer(), envelope, now)


def test_prekey_envelopes_until_the_first_reply() -> None:
    alice, bob = make_user("alice", seed=40), make_user("bob", seed=41)
    record = start_session(alice.devices[0].device, bob.peer(), bob.devices[0].bundle(), None, NOW)
    assert record.encrypt(b"1", NOW)[1] == 2  # pre-key envelope
    pair = Pair()
    assert pair.a.encrypt(b"after reply", NOW)[1] == 1  # plain message envelope
    assert pair.a.active is not None and pair.a.active.pending_header is None


def test_responder_cannot_send_first_and_limits() -> None:
    pair = Pair()
    spk = DHKeyPair.generate()
    responder = RatchetState.responder_start(bytes(32), bytes(32), spk)
    assert not responder.can_send
    with pytest.raises(InvalidArgument):
        responder.encrypt(b"x")
    with pytest.raises(LimitExceeded):
        pair.a.encrypt(bytes(MAX_PLAINTEXT + 1), NOW)
    assert pair.to_bob(pair.a.encrypt(bytes(MAX_PLAINTEXT), NOW)).plaintext == bytes(MAX_PLAINTEXT)
    with pytest.raises(InvalidArgument):
        SessionRecord().encrypt(b"x", NOW)
    b = pair.bob.devices[0]
    with pytest.raises(DecryptionError):
        decrypt(b.device, b.prekeys, None, pair.alice.peer(), pair.a.encrypt(b"x", NOW), NOW)
    with pytest.raises(DecryptionError):
        SessionRecord().decrypt_message(MessageEnvelope.from_bytes(pair.a.encrypt(b"y", NOW)), NOW)


def test_out_of_order_skipped_keys_and_unavailable_old_counters() -> None:
    pair = Pair()
    messages = [pair.a.encrypt(f"m{i}".encode(), NOW) for i in range(5)]
    assert pair.to_bob(messages[4]).plaintext == b"m4"
    session = pair.b.active
    assert session is not None and len(session.ratchet.skipped) == 4
    assert pair.to_bob(messages[1]).plaintext == b"m1"
    assert len(session.ratchet.skipped) == 3
    # A different message with an old, used counter: unavailable, not duplicate.
    envelope = MessageEnvelope.from_bytes(messages[1])
    forged = MessageEnvelope.assemble(envelope.header, bytes(len(envelope.ciphertext)))
    with pytest.raises(MessageKeyUnavailable):
        pair.to_bob(forged)
    # Skipped keys expire after 30 days.
    with pytest.raises(MessageKeyUnavailable):
        pair.to_bob(messages[2], NOW + SKIPPED_KEY_MAX_AGE_MS + 1)
    assert session.ratchet.expire(NOW + SKIPPED_KEY_MAX_AGE_MS + 1) == 3
    assert session.ratchet.skipped == {}


def test_skipped_keys_from_the_previous_chain_and_chain_limit() -> None:
    pair = Pair()
    late = [pair.a.encrypt(b"late", NOW)]
    pair.to_bob(pair.a.encrypt(b"now", NOW))
    # Several DH round trips: late keys from old chains survive at most 5 chains.
    for _ in range(MAX_RECEIVING_CHAINS + 1):
        pair.to_alice(pair.b.encrypt(b"ping", NOW))
        late.append(pair.a.encrypt(b"late", NOW))
        pair.to_bob(pair.a.encrypt(b"pong", NOW))
    session = pair.b.active
    assert session is not None
    assert len(session.ratchet.receiving) == MAX_RECEIVING_CHAINS
    with pytest.raises(DecryptionError):  # its chain was dropped with its keys
        pair.to_bob(late[0])
    assert pair.to_bob(late[-1]).plaintext == b"late"


def test_stored_skipped_keys_are_capped() -> None:
    pair = Pair()
    session = pair.b.active
    assert session is not None
    for _round in range(3):
        for _ in range(900):
            pair.a.encrypt(b"lost", NOW)
        pair.to_bob(pair.a.encrypt(b"arrives", NOW))
    assert len(session.ratchet.skipped) == MAX_STORED_SKIPPED


def test_several_sessions_per_device_one_active() -> None:
    pair = Pair()
    a_dev = pair.alice.devices[0]
    old_active = pair.a.active
    # Alice starts a second session (e.g. after a reset); the old one is archived.
    pair.a = start_session(a_dev.device, pair.bob.peer(), pair.bob.devices[0].bundle(), pair.a, NOW)
    assert len(pair.a.sessions) == 2 and pair.a.active is not old_active
    new_msg = pair.a.encrypt(b"via new", NOW)
    result = pair.to_bob(new_msg)
    assert result.new_session and len(pair.b.sessions) == 2
    # Bob replies on the new session; a message on the old session still decrypts
    # and makes it active again on Bob's side.
    assert old_active is not None
    old_msg = old_active.encrypt(b"via old", NOW)
    assert pair.to_bob(old_msg).plaintext == b"via old"
    assert pair.b.active is not None and pair.b.active.base_key == old_active.base_key
    for _ in range(MAX_SESSIONS_PER_DEVICE + 2):
        pair.a = start_session(
            a_dev.device, pair.bob.peer(), pair.bob.devices[0].bundle(), pair.a, NOW
        )
    assert len(pair.a.sessions) == MAX_SESSIONS_PER_DEVICE


def test_archived_sessions_expire_after_30_idle_days() -> None:
    pair = Pair()
    pair.a = start_session(
        pair.alice.devices[0].device, pair.bob.peer(), pair.bob.devices[0].bundle(), pair.a, NOW
    )
    pair.a.expire(NOW + ARCHIVED_SESSION_IDLE_MS)
    assert len(pair.a.sessions) == 2
    pair.a.expire(NOW + ARCHIVED_SESSION_IDLE_MS + 1)
    assert len(pair.a.sessions) == 1  # the active one always stays


def test_unknown_prekeys_are_typed() -> None:
    alice, bob = make_user("alice", seed=50), make_user("bob", seed=51)
    b = bob.devices[0]
    record = start_session(alice.devices[0].device, bob.peer(), b.bundle(), None, NOW)
    genuine = PreKeyEnvelope.from_bytes(record.encrypt(b"x", NOW))
    for change in [
        {"signed_prekey_id": 9999},
        {"one_time_prekey_id": 9999},
        {"kem_prekey_id": 9999},
    ]:
        with pytest.raises(UnknownPreKey):
            decrypt(
                b.device,
                b.prekeys,
                None,
                alice.peer(),
                dataclasses.replace(genuine, **change).to_bytes(),  # type: ignore[arg-type]
                NOW,
            )


def test_unsupported_envelope_version() -> None:
    pair = Pair()
    envelope = bytearray(pair.a.encrypt(b"x", NOW))
    envelope[0] = 2
    with pytest.raises(UnsupportedVersion):
        pair.to_bob(bytes(envelope))
    envelope[0] = 0
    with pytest.raises(UnsupportedVersion):
        pair.to_bob(bytes(envelope))


def test_state_round_trips_and_corruption_is_typed() -> None:
    pair = Pair(pq=True)
    for i in range(3):
        pair.a.encrypt(b"skip %d" % i, NOW)
    pair.to_bob(pair.a.encrypt(b"x", NOW))
    data = pair.b.to_bytes()
    restored = SessionRecord.from_bytes(data)
    assert restored.to_bytes() == data
    assert pair.a.encrypt(b"after restore", NOW)
    assert "skipped=3" in repr(pair.b.active) and "SessionRecord(1" in repr(pair.b)
    with pytest.raises(CorruptState):
        SessionRecord.from_bytes(b"\xa0")
    with pytest.raises(CorruptState):
        SessionRecord.from_bytes(cbor.encode({0: 9, 1: []}))
    value = cbor.decode(data)
    assert isinstance(value, dict) and isinstance(value[1], list)
    session_value = value[1][0]
    assert isinstance(session_value, dict)
    for key, bad in [(0, 7), (3, 9), (2, b"short")]:
        broken = dict(session_value)
        broken[key] = bad
        with pytest.raises(CorruptState):
            Session.from_value(broken)
    ratchet_value = session_value[1]
    assert isinstance(ratchet_value, dict)
    for key, bad in [
        (0, 9),
        (9, [[b"x", b"", 0]]),
        (10, [[bytes(32), 0, b"short", 0]]),
        (11, [b"not sixteen"]),
        (3, None),
    ]:
        broken = dict(ratchet_value)
        broken[key] = bad
        with pytest.raises(CorruptState):
            RatchetState.from_value(broken)
    with pytest.raises(CorruptState):
        RatchetState.from_bytes(b"\xff")
    assert RatchetState.from_bytes(cbor.encode(ratchet_value)).to_value() == ratchet_value


def test_failures_across_several_sessions_report_the_most_specific() -> None:
    pair = Pair()
    pair.a = start_session(
        pair.alice.devices[0].device, pair.bob.peer(), pair.bob.devices[0].bundle(), pair.a, NOW
    )
    pair.to_bob(pair.a.encrypt(b"second session", NOW))
    pair.to_alice(pair.b.encrypt(b"ack", NOW))  # plain message envelopes from here on
    assert len(pair.b.sessions) == 2
    message = pair.a.encrypt(b"again", NOW)
    pair.to_bob(message)
    with pytest.raises(DuplicateMessage):  # one session says duplicate, the other fails
        pair.to_bob(message)
    tampered = bytearray(pair.a.encrypt(b"tampered", NOW))
    tampered[-1] ^= 1
    before = pair.b.to_bytes()
    with pytest.raises(DecryptionError) as caught:
        pair.to_bob(bytes(tampered))
    assert type(caught.value) is DecryptionError
    assert pair.b.to_bytes() == before
    empty = SessionRecord()
    with pytest.raises(DecryptionError):
        empty.decrypt_message(MessageEnvelope.from_bytes(pair.a.encrypt(b"x", NOW)), NOW)


def test_duplicate_window_forgets_the_oldest_digest() -> None:
    pair = Pair()
    first = pair.a.encrypt(b"first", NOW)
    pair.to_bob(first)
    for _ in range(MAX_SEEN_DIGESTS):
        pair.to_bob(pair.a.encrypt(b"more", NOW))
    session = pair.b.active
    assert session is not None and len(session.ratchet.seen) == MAX_SEEN_DIGESTS
    with pytest.raises(MessageKeyUnavailable):  # no longer known as a duplicate
        pair.to_bob(first)


def test_existing_session_messages_commit_no_prekeys() -> None:
    pair = Pair()
    prekeys = pair.bob.devices[0].prekeys
    before = prekeys.to_bytes()
    result = pair.to_bob(pair.a.encrypt(b"plain", NOW))
    assert result.prekey_use is None
    result.commit_prekeys(prekeys)
    assert prekeys.to_bytes() == before


def test_an_old_chain_message_whose_key_was_used_is_unavailable() -> None:
    pair = Pair()
    old = pair.a.encrypt(b"on the first chain", NOW)
    pair.to_bob(old)
    pair.to_alice(pair.b.encrypt(b"turn", NOW))
    pair.to_bob(pair.a.encrypt(b"on the next chain", NOW))
    forged = bytearray(old)
    forged[-1] ^= 1  # not a duplicate (other bytes), and its key is gone
    with pytest.raises(MessageKeyUnavailable):
        pair.to_bob(bytes(forged))


def test_a_sending_chain_stops_at_the_32_bit_counter() -> None:
    pair = Pair()
    session = pair.a.active
    assert session is not None
    pair.a.encrypt(b"starts the sending chain", NOW)
    session.ratchet.send_n = 0xFFFFFFFF
    with pytest.raises(LimitExceeded):
        pair.a.encrypt(b"one too many", NOW)


def test_kdf_rk_is_hkdf_sha256_with_the_ratchet_label() -> None:
    root, dh = bytes(range(32)), bytes(range(32, 64))
    expected = hkdf_sha256(dh, salt=root, info=b"e2ee/v1/ratchet", length=64)
    assert kdf_rk(root, dh) == (expected[:32], expected[32:])
