"""A stateful model of one Alice/Bob session pair (DESIGN 4.3, 4.4; docs/protocol.md 4).

:class:`RatchetPair` runs a real session built with :func:`e2ee.session.start_session`
and :func:`e2ee.session.decrypt`: X3DH or PQXDH (one run each), with or without a
one-time prekey and with a one-time or last-resort ML-KEM prekey (drawn per example),
so Alice's first messages are pre-key envelopes until Bob's first reply reaches her.
Its rules send (Alice any time, Bob once he has received), deliver any in-flight
message (reordering), drop one, redeliver a delivered one byte-identically, flip one
bit of any message and deliver the copy, run a full round trip (two DH ratchet steps),
and crash a side and rebuild it from its last committed serialized state.

Checked throughout:

* every untampered message decrypts exactly once, to its own plaintext (unless the
  receiver has since dropped its chain: at most ``MAX_RECEIVING_CHAINS`` are kept);
* a byte-identical redelivery raises ``DuplicateMessage``;
* a tampered copy raises the documented error for the bytes it hits, never anything
  outside :class:`~e2ee.errors.E2EEError`;
* every failed decrypt leaves the receiver's serialized state (``SessionRecord`` and
  ``OurPreKeys``) byte-identical, and a side's live state always equals its last
  committed snapshot;
* no session stores more than ``MAX_STORED_SKIPPED`` skipped keys.

Hypothesis reports rule firings as events only in its statistics, so every rule also
counts itself in :data:`RULE_COUNTS`; :func:`test_ratchet_pair` runs the machine once
per suite and then requires every rule to have fired often enough.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import PeerDevice
from e2ee.envelope import (
    HEADER_SIZE,
    EnvelopeType,
    MessageEnvelope,
    PreKeyEnvelope,
    Suite,
    envelope_type,
)
from e2ee.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    E2EEError,
    KeyAgreementError,
    LowOrderPoint,
    UntrustedIdentity,
)
from e2ee.limits import MAX_RECEIVING_CHAINS, MAX_STORED_SKIPPED
from e2ee.prekeys import PreKeyBundle, SignedPublicPreKey
from e2ee.primitives import Rng
from e2ee.session import SessionRecord, decrypt, start_session
from tests.hypothesis_profiles import STATEFUL_SETTINGS

from .helpers import NOW, TestUser, make_user, seeded_rng

RULE_COUNTS: Counter[str] = Counter()
"""How often each rule fired since the last reset (and finer events)."""

REQUIRED_COUNTERS = (
    "send",
    "deliver-in-order",
    "deliver-out-of-order",
    "drop",
    "duplicate",
    "tamper",
    "restore",
    "round-trip",
)
"""The counters :func:`test_ratchet_pair` requires to reach its minimum."""

_STEP_MS = 1_000
_ALICE, _BOB = "alice", "bob"

# Byte offsets inside a message envelope (docs/protocol.md 5.1).
_VERSION_AND_TYPE = range(2)
_RATCHET_KEY = range(2, 34)
_CT_LEN = range(HEADER_SIZE, HEADER_SIZE + 4)

_MESSAGE_ERRORS = (DecodeError, DecryptionError, LowOrderPoint)
"""What a tampered message envelope may raise (``RatchetState.decrypt``, ``decrypt``)."""
_PREKEY_HEADER_ERRORS = (DecodeError, DecryptionError, KeyAgreementError, UntrustedIdentity)
"""What a pre-key envelope with a tampered X3DH/PQXDH header may raise."""


# --- users: built once per suite, copied per example --------------------------------------


@dataclass(frozen=True)
class _Party:
    device: OurDevice
    peer: PeerDevice
    prekeys: bytes
    """``OurPreKeys.to_bytes()`` as generated: each example starts from a fresh copy."""


@dataclass(frozen=True)
class _Users:
    alice: _Party
    bob: _Party
    signed_prekey: SignedPublicPreKey
    one_time: SignedPublicPreKey
    kem_one_time: SignedPublicPreKey | None
    kem_last_resort: SignedPublicPreKey | None


@functools.cache
def _users(pq: bool) -> _Users:
    """Alice and Bob for one suite. Key generation (ML-KEM above all) runs once per
    suite per process; examples rebuild only prekey state and sessions."""
    alice = make_user("alice", pq=pq, seed=101 if pq else 201)
    bob = make_user("bob", pq=pq, seed=102 if pq else 202)
    b = bob.devices[0]

    def party(user: TestUser) -> _Party:
        device = user.devices[0]
        return _Party(device.device, user.peer(), device.prekeys.to_bytes())

    return _Users(
        alice=party(alice),
        bob=party(bob),
        signed_prekey=b.signed_prekey,
        one_time=b.one_time[0],
        kem_one_time=b.kem_one_time[0] if pq else None,
        kem_last_resort=b.last_resort,
    )


# --- the model --------------------------------------------------------------------------


@dataclass
class _Message:
    """One envelope on the wire, with what the model knows about it."""

    ident: int
    sender: str
    plaintext: bytes
    data: bytes
    inner: MessageEnvelope
    """The ratchet message (of a pre-key envelope: the one inside it)."""
    inner_offset: int
    """Where ``inner`` starts in ``data`` (0 for a message envelope)."""
    prekey: PreKeyEnvelope | None

    def __repr__(self) -> str:
        kind = "prekey" if self.prekey is not None else "message"
        return f"<{self.sender}#{self.ident} {kind} n={self.inner.n} pn={self.inner.pn}>"


@dataclass
class _Side:
    """One device: live state, its last committed serialized state, and the model."""

    name: str
    device: OurDevice
    peer: PeerDevice
    """The other side's device from its verified list (the ``sender`` of its messages)."""
    rng: Rng
    prekeys: OurPreKeys
    record: SessionRecord | None = None
    committed_record: bytes | None = None
    committed_prekeys: bytes = b""
    chains: list[bytes] = field(default_factory=list)
    """Model: the peer's ratchet keys this side has received from, oldest first (at
    most ``MAX_RECEIVING_CHAINS``)."""
    dropped_chains: set[bytes] = field(default_factory=set)
    """Model: peer chains this side no longer keeps; their messages are lost."""
    received: bool = False

    def state(self) -> tuple[bytes | None, bytes]:
        """The serialized state, as a store would persist it."""
        record = None if self.record is None else self.record.to_bytes()
        return record, self.prekeys.to_bytes()

    def commit(self) -> None:
        self.committed_record, self.committed_prekeys = self.state()

    def restore(self) -> None:
        """Crash: rebuild every object from the last committed bytes."""
        committed = self.committed_record
        self.record = None if committed is None else SessionRecord.from_bytes(committed)
        self.prekeys = OurPreKeys.from_bytes(self.committed_prekeys)

    def can_send(self) -> bool:
        record = self.record
        return record is not None and record.active is not None and record.active.ratchet.can_send

    def received_from(self, ratchet_pk: bytes) -> None:
        """Model a successful decrypt of a message on the peer chain ``ratchet_pk``."""
        self.received = True
        if ratchet_pk in self.chains:
            return
        self.chains.append(ratchet_pk)
        if len(self.chains) > MAX_RECEIVING_CHAINS:
            self.dropped_chains.add(self.chains.pop(0))


def _count(name: str) -> None:
    RULE_COUNTS[name] += 1
    event(name)


class RatchetPair(RuleBasedStateMachine):
    """Alice and Bob over a lossy, reordering, duplicating, tampering relay, with crashes.

    Subclasses fix the key agreement (:class:`X3DHPair`, :class:`PQXDHPair`), so each
    suite gets a full run of its own."""

    SUITE: ClassVar[Suite]

    def __init__(self) -> None:
        super().__init__()
        self.sides: dict[str, _Side] = {}
        self.in_flight: list[_Message] = []
        self.delivered: list[_Message] = []
        self.next_ident = 0
        self.now = NOW

    # --- helpers ----------------------------------------------------------------------

    def _tick(self) -> int:
        self.now += _STEP_MS
        return self.now

    def _other(self, name: str) -> _Side:
        return self.sides[_BOB if name == _ALICE else _ALICE]

    def _decrypt(self, receiver: _Side, data: bytes) -> bytes:
        """Decrypt ``data`` at ``receiver`` and, on success, commit like a store would
        (record and prekey use in one transaction). On failure, check that nothing
        changed before re-raising."""
        before = receiver.state()
        had_record = receiver.record is not None
        try:
            result = decrypt(
                receiver.device,
                receiver.prekeys,
                receiver.record,
                receiver.peer,
                data,
                self._tick(),
            )
        except BaseException:
            assert receiver.state() == before, "a failed decrypt changed the state"
            assert receiver.state() == (receiver.committed_record, receiver.committed_prekeys)
            raise
        assert result.new_session == (not had_record)
        assert (result.prekey_use is not None) == result.new_session
        if result.prekey_use is not None:
            receiver.prekeys.commit_use(result.prekey_use)
        receiver.record = result.record
        receiver.commit()
        return result.plaintext

    def _accepted(self, receiver: _Side, message: _Message) -> None:
        """Book-keeping once ``message`` decrypted (from its bytes or a copy)."""
        self.in_flight.remove(message)
        self.delivered.append(message)
        receiver.received_from(message.inner.ratchet_pk)

    # --- setup ------------------------------------------------------------------------

    @initialize(
        one_time=st.booleans(),
        kem_one_time=st.booleans(),
        seed=st.integers(0, 2**32 - 1),
    )
    def start(self, one_time: bool, kem_one_time: bool, seed: int) -> None:
        pq = self.SUITE is Suite.PQXDH
        users = _users(pq)
        alice = _Side(
            _ALICE,
            users.alice.device,
            users.bob.peer,
            seeded_rng(seed),
            OurPreKeys.from_bytes(users.alice.prekeys),
        )
        bob = _Side(
            _BOB,
            users.bob.device,
            users.alice.peer,
            seeded_rng(seed ^ 0x5A5A5A5A),
            OurPreKeys.from_bytes(users.bob.prekeys),
        )
        kem = None
        if pq:
            kem = users.kem_one_time if kem_one_time else users.kem_last_resort
        bundle = PreKeyBundle(
            users.bob.device.user_id,
            users.bob.device.device_id,
            users.signed_prekey,
            users.one_time if one_time else None,
            kem,
        )
        alice.record = start_session(
            alice.device, alice.peer, bundle, None, self._tick(), alice.rng
        )
        assert alice.record.active is not None
        assert alice.record.active.suite is self.SUITE
        alice.commit()
        bob.commit()
        self.sides = {_ALICE: alice, _BOB: bob}
        # The responder cannot send before it has received.
        assert not bob.can_send()

    # --- rules ------------------------------------------------------------------------

    def _send(self, sender: _Side, payload: bytes) -> _Message:
        _count("send")
        _count(f"send-{sender.name}")
        ident = self.next_ident
        self.next_ident += 1
        plaintext = b"%d|" % ident + payload  # unique per message
        assert sender.record is not None
        data = sender.record.encrypt(plaintext, self._tick(), sender.rng)
        sender.commit()
        prekey: PreKeyEnvelope | None = None
        if envelope_type(data) is EnvelopeType.PREKEY:
            prekey = PreKeyEnvelope.from_bytes(data)
            inner = prekey.message
        else:
            inner = MessageEnvelope.from_bytes(data)
        # Alice sends pre-key envelopes exactly until one of Bob's messages decrypts.
        assert (prekey is not None) == (sender.name == _ALICE and not sender.received)
        message = _Message(
            ident, sender.name, plaintext, data, inner, len(data) - len(inner.raw), prekey
        )
        self.in_flight.append(message)
        return message

    @rule(payload=st.binary(max_size=24))
    def send_alice(self, payload: bytes) -> None:
        self._send(self.sides[_ALICE], payload)

    @precondition(lambda self: self.sides[_BOB].can_send())
    @rule(payload=st.binary(max_size=24))
    def send_bob(self, payload: bytes) -> None:
        self._send(self.sides[_BOB], payload)

    def _deliver(self, message: _Message) -> None:
        receiver = self._other(message.sender)
        first = min(m.ident for m in self.in_flight if m.sender == message.sender)
        _count("deliver-in-order" if message.ident == first else "deliver-out-of-order")
        if message.inner.ratchet_pk in receiver.dropped_chains:
            # The receiver dropped that chain with its skipped keys (limit of 5 chains).
            _count("deliver-dropped-chain")
            try:
                self._decrypt(receiver, message.data)
            except DecryptionError:
                pass
            else:  # pragma: no cover - a failure
                raise AssertionError("a message of a dropped chain decrypted")
            self.in_flight.remove(message)
            return
        plaintext = self._decrypt(receiver, message.data)
        assert plaintext == message.plaintext
        self._accepted(receiver, message)

    def _pick_in_flight(self, data: st.DataObject) -> _Message:
        """Any in-flight message; when none is, Alice sends one first (so the rule
        is always enabled)."""
        if not self.in_flight:
            self._send(self.sides[_ALICE], b"")
        return data.draw(st.sampled_from(self.in_flight), label="message")

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver any in-flight message: not always the oldest, so this reorders."""
        self._deliver(self._pick_in_flight(data))

    @rule()
    def round_trip(self) -> None:
        """Alice sends and Bob receives, then Bob answers and Alice receives: two DH
        ratchet steps, so runs reach more chains than ``MAX_RECEIVING_CHAINS``."""
        _count("round-trip")
        self._deliver(self._send(self.sides[_ALICE], b"ping"))
        self._deliver(self._send(self.sides[_BOB], b"pong"))

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """Lose an in-flight message for good."""
        _count("drop")
        self.in_flight.remove(self._pick_in_flight(data))

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """Redeliver a delivered message byte-identically (when none is, Alice sends
        one and it is delivered first)."""
        _count("duplicate")
        if not self.delivered:
            self._deliver(self._send(self.sides[_ALICE], b""))
        message = data.draw(st.sampled_from(self.delivered), label="message")
        receiver = self._other(message.sender)
        try:
            self._decrypt(receiver, bytes(message.data))
        except DuplicateMessage:
            pass
        else:  # pragma: no cover - a failure
            raise AssertionError(f"duplicate {message!r} decrypted again")

    @rule(data=st.data())
    def tamper(self, data: st.DataObject) -> None:
        """Flip one bit of any message (in flight or delivered) and deliver the copy."""
        _count("tamper")
        if not (self.in_flight or self.delivered):
            self._send(self.sides[_ALICE], b"")
        message = data.draw(st.sampled_from(self.in_flight + self.delivered), label="message")
        in_flight = message in self.in_flight
        _count("tamper-in-flight" if in_flight else "tamper-delivered")
        bits = 8 * len(message.data)
        inner_at = 8 * message.inner_offset
        bit = data.draw(
            st.one_of(
                st.integers(0, min(bits, 8 * 160) - 1),  # the headers
                st.integers(inner_at, inner_at + 8 * (HEADER_SIZE + 4) - 1),  # ratchet header
                st.integers(0, bits - 1),  # anywhere
            ),
            label="bit",
        )
        tampered = bytearray(message.data)
        tampered[bit // 8] ^= 1 << (bit % 8)
        receiver = self._other(message.sender)
        offset = bit // 8 - message.inner_offset
        if offset < 0:
            self._tamper_prekey_header(receiver, message, bytes(tampered), in_flight)
            return
        _count("tamper-message")
        try:
            self._decrypt(receiver, bytes(tampered))
        except E2EEError as exc:
            # Anything else (or no error) fails the test.
            assert isinstance(exc, _MESSAGE_ERRORS), repr(exc)
            if offset in _VERSION_AND_TYPE or offset in _CT_LEN:
                assert isinstance(exc, DecodeError), repr(exc)
            elif offset in _RATCHET_KEY:
                pass  # an invalid key, or a valid one that gives another chain
            else:  # counters, ciphertext or tag: authenticated
                assert isinstance(exc, DecryptionError), repr(exc)
                assert not isinstance(exc, DuplicateMessage), repr(exc)
        else:  # pragma: no cover - a failure
            raise AssertionError(f"tampered copy of {message!r} decrypted (bit {bit})")

    def _tamper_prekey_header(
        self, receiver: _Side, message: _Message, tampered: bytes, in_flight: bool
    ) -> None:
        """A bit of the X3DH/PQXDH header. Once the responder has the session with
        the envelope's base key, a redelivered pre-key message must carry exactly the
        header that created it (session.decrypt): a copy that still parses with the
        same base key is refused with ``KeyAgreementError``, before its ratchet
        message is looked at."""
        assert message.prekey is not None
        _count("tamper-prekey-header")
        try:
            parsed: PreKeyEnvelope | None = PreKeyEnvelope.from_bytes(tampered)
        except DecodeError:
            parsed = None
        expected: type[E2EEError] | tuple[type[E2EEError], ...]
        same_session = (
            parsed is not None
            and parsed.base_key == message.prekey.base_key
            and receiver.record is not None
            and receiver.record.with_base_key(parsed.base_key) is not None
        )
        if same_session:
            _count("tamper-prekey-header-refused")
            expected = KeyAgreementError
        else:
            expected = DecodeError if parsed is None else _PREKEY_HEADER_ERRORS
        try:
            self._decrypt(receiver, tampered)
        except E2EEError as exc:
            # Anything else (or no error) fails the test.
            assert isinstance(exc, expected), repr(exc)
        else:  # pragma: no cover - a failure
            raise AssertionError(f"tampered copy of {message!r} decrypted")

    @rule(name=st.sampled_from([_ALICE, _BOB]))
    def restore(self, name: str) -> None:
        """Crash and restart from the last committed state."""
        _count("restore")
        side = self.sides[name]
        side.restore()
        assert side.state() == (side.committed_record, side.committed_prekeys)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def committed_state_is_live_state(self) -> None:
        for side in self.sides.values():
            assert side.state() == (side.committed_record, side.committed_prekeys)

    @invariant()
    def skipped_keys_bounded(self) -> None:
        for side in self.sides.values():
            if side.record is not None:
                for session in side.record.sessions:
                    assert len(session.ratchet.skipped) <= MAX_STORED_SKIPPED

    @invariant()
    def one_session_each(self) -> None:
        for side in self.sides.values():
            assert side.record is None or len(side.record.sessions) == 1


class X3DHPair(RatchetPair):
    SUITE = Suite.X3DH


class PQXDHPair(RatchetPair):
    SUITE = Suite.PQXDH


def _minimum() -> int:
    """50 firings per rule under the CI settings (300 examples, measured minimum over
    40 runs: several hundred). The dev settings (30 examples of 20 steps) only require
    each rule to fire at all: with so few examples Hypothesis's swarm testing (rules
    switched off per example) makes the counts heavy-tailed, and a proportional bound
    of 5 failed about 2% of dev runs."""
    return 50 if STATEFUL_SETTINGS.max_examples >= 300 else 1


@pytest.mark.parametrize("machine", [X3DHPair, PQXDHPair], ids=["X3DH", "PQXDH"])
def test_ratchet_pair(machine: type[RatchetPair]) -> None:
    RULE_COUNTS.clear()
    run_state_machine_as_test(machine, settings=STATEFUL_SETTINGS)
    minimum = _minimum()
    low = {name: RULE_COUNTS[name] for name in REQUIRED_COUNTERS if RULE_COUNTS[name] < minimum}
    assert not low, f"rules fired fewer than {minimum} times: {low} (all: {dict(RULE_COUNTS)})"
