"""Sessions with a peer device: several per device, one active (DESIGN 4.3, 4.4).

* :func:`start_session` (initiator) runs X3DH/PQXDH against a validated bundle; the
  new session sends pre-key envelopes until the responder's first reply decrypts.
* :func:`decrypt` takes any envelope from a peer device: a message envelope goes to
  the record's sessions; a pre-key envelope goes to the session with its base key if
  one exists (so duplicate detection applies), else creates a responder session,
  after authenticating the sender against its verified device list and checking the
  seen-base-key ledger. Nothing is changed unless the message decrypts; the caller
  then persists the record and applies the returned :class:`~e2ee.device.PreKeyUse`
  in the same store transaction.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from . import cbor
from .device import OurDevice, OurPreKeys, PreKeyUse
from .device_list import PeerDevice
from .envelope import (
    EnvelopeType,
    MessageEnvelope,
    PreKeyEnvelope,
    Suite,
    encode_prekey_header,
    envelope_type,
)
from .errors import (
    CorruptState,
    DecryptionError,
    DuplicateMessage,
    E2EEError,
    InvalidArgument,
    KeyAgreementError,
    MessageKeyUnavailable,
    ReflectedMessage,
    TooManySkippedMessages,
)
from .limits import ARCHIVED_SESSION_IDLE_MS, MAX_SESSIONS_PER_DEVICE, MAX_STATE_SIZE
from .prekeys import PreKeyBundle
from .primitives import Rng, blake2b, constant_time_equal, default_rng
from .ratchet import RatchetState
from .x3dh import initiate, respond

__all__ = ["Decrypted", "Session", "SessionRecord", "decrypt", "start_session"]

_STATE_VERSION: Final = 1
_SESSION_KEYS: Final = frozenset(range(10))
_U32: Final = struct.Struct(">I")
_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__
_U63: Final = 2**63 - 1
# Which failure to report when every session of a record refuses a message: the most
# specific one wins.
_ERROR_RANK: Final = (DuplicateMessage, MessageKeyUnavailable, TooManySkippedMessages)


class Session:
    """One X3DH/PQXDH session with a peer device and its Double Ratchet."""

    __slots__ = (
        "base_key",
        "created_at_ms",
        "last_used_ms",
        "no_one_time_prekey",
        "pending_header",
        "prekey_header_digest",
        "ratchet",
        "suite",
        "their_identity_key",
    )

    def __init__(
        self,
        *,
        ratchet: RatchetState,
        base_key: bytes,
        suite: Suite,
        their_identity_key: bytes,
        pending_header: bytes | None,
        no_one_time_prekey: bool,
        prekey_header_digest: bytes | None = None,
        created_at_ms: int,
        last_used_ms: int,
    ) -> None:
        self.ratchet = ratchet
        self.base_key = base_key
        self.suite = suite
        self.their_identity_key = their_identity_key
        # Initiator only: the pre-key envelope header, sent in front of every message
        # until the responder's first reply decrypts.
        self.pending_header = pending_header
        # Responder only: BLAKE2b-128 of the pre-key header that created the session;
        # a redelivered pre-key message must carry exactly that header.
        self.prekey_header_digest = prekey_header_digest
        self.no_one_time_prekey = no_one_time_prekey
        self.created_at_ms = created_at_ms
        self.last_used_ms = last_used_ms

    def encrypt(self, plaintext: bytes, now_ms: int, rng: Rng = default_rng) -> bytes:
        """Envelope bytes of ``plaintext`` (a pre-key envelope while unacknowledged);
        ``rng`` gives the new ratchet key when this message starts a sending chain.

        Raises:
            LimitExceeded: the plaintext is too long.
            InvalidArgument: a responder session that has not received yet.
        """
        message = self.ratchet.encrypt(plaintext, rng)
        self.last_used_ms = now_ms
        header = self.pending_header
        if header is None:
            return message
        return header + _U32.pack(len(message)) + message

    def decrypt(self, envelope: MessageEnvelope, now_ms: int) -> bytes:
        """Decrypt a message of this session (commit on success).

        Raises:
            DecryptionError: and its subclasses, as :meth:`RatchetState.decrypt`.
        """
        plaintext = self.ratchet.decrypt(envelope, now_ms)
        self.pending_header = None
        self.last_used_ms = now_ms
        return plaintext

    def to_value(self) -> cbor.Value:
        """The session as a CBOR map."""
        return {
            0: _STATE_VERSION,
            1: self.ratchet.to_value(),
            2: self.base_key,
            3: int(self.suite),
            4: self.their_identity_key,
            5: self.pending_header,
            6: self.no_one_time_prekey,
            7: self.created_at_ms,
            8: self.last_used_ms,
            9: self.prekey_header_digest,
        }

    @classmethod
    def from_value(cls, value: cbor.Value) -> Session:
        """Rebuild a session from :meth:`to_value`.

        Raises:
            CorruptState: malformed.
        """
        try:
            m = cbor.expect_map(value, "session", _SESSION_KEYS)
            if m[0] != _STATE_VERSION:
                raise CorruptState(f"unknown session state version {m[0]!r}")
            return cls(
                ratchet=RatchetState.from_value(m[1]),
                base_key=cbor.field_bytes(m, 2, "base key", size=32),
                suite=Suite(cbor.field_int(m, 3, "suite", 1, 2)),
                their_identity_key=cbor.field_bytes(m, 4, "identity key", size=32),
                pending_header=cbor.field_optional_bytes(m, 5, "pending header"),
                no_one_time_prekey=cbor.field_bool(m, 6, "no one-time prekey"),
                created_at_ms=cbor.field_int(m, 7, "created_at_ms", 0, _U63),
                last_used_ms=cbor.field_int(m, 8, "last_used_ms", 0, _U63),
                prekey_header_digest=cbor.field_optional_bytes(
                    m, 9, "pre-key header digest", size=16
                ),
            )
        except CorruptState:
            raise
        except E2EEError as exc:
            raise CorruptState(f"session does not decode: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"Session({self.suite.name}, base_key={self.base_key[:8].hex()}..., "
            f"pending={self.pending_header is not None}, {self.ratchet!r})"
        )


class SessionRecord:
    """Every session with one peer device: the active one first, then archived ones,
    at most ``MAX_SESSIONS_PER_DEVICE`` (DESIGN 4.4)."""

    __slots__ = ("sessions",)

    def __init__(self, sessions: list[Session] | None = None) -> None:
        self.sessions: list[Session] = sessions or []

    @property
    def active(self) -> Session | None:
        """The session new messages are encrypted with."""
        return self.sessions[0] if self.sessions else None

    def promote(self, session: Session) -> None:
        """Make ``session`` active (it most recently decrypted or was created by us)."""
        if self.sessions and self.sessions[0] is session:
            return
        self.sessions.remove(session)
        self.sessions.insert(0, session)

    def add(self, session: Session) -> None:
        """Add a new session as the active one, evicting the oldest beyond the limit."""
        self.sessions.insert(0, session)
        del self.sessions[MAX_SESSIONS_PER_DEVICE:]

    def with_base_key(self, base_key: bytes) -> Session | None:
        """The session created by the pre-key messages with ``base_key``, if any."""
        for session in self.sessions:
            if session.base_key == base_key:
                return session
        return None

    def encrypt(self, plaintext: bytes, now_ms: int, rng: Rng = default_rng) -> bytes:
        """Encrypt with the active session (``rng`` as :meth:`Session.encrypt`).

        Raises:
            InvalidArgument: there is no session, or it cannot send yet.
            LimitExceeded: the plaintext is too long.
        """
        if not self.sessions:
            raise InvalidArgument("no session with this device")
        return self.sessions[0].encrypt(plaintext, now_ms, rng)

    def decrypt_message(self, envelope: MessageEnvelope, now_ms: int) -> bytes:
        """Decrypt a message envelope with whichever session it belongs to; the one
        that decrypts becomes active. Sessions that know its ratchet key are tried
        first; each try is commit-on-success, so failures change nothing.

        Raises:
            DecryptionError: no session decrypts it (the most specific failure).
        """
        if len(self.sessions) == 1:  # the common case: nothing to choose or promote
            return self.sessions[0].decrypt(envelope, now_ms)
        ratchet_pk = envelope.ratchet_pk
        ordered = sorted(
            self.sessions,
            key=lambda s: (
                not (s.ratchet.knows(ratchet_pk) or (ratchet_pk, envelope.n) in s.ratchet.skipped)
            ),
        )
        failures: list[E2EEError] = []
        for session in ordered:
            try:
                plaintext = session.decrypt(envelope, now_ms)
            except E2EEError as exc:
                failures.append(exc)
                continue
            self.promote(session)
            return plaintext
        for kind in _ERROR_RANK:
            for failure in failures:
                if isinstance(failure, kind):
                    raise failure
        if failures:
            raise failures[0]
        raise DecryptionError("no session with this device")

    def expire(self, now_ms: int) -> None:
        """Delete archived sessions idle for 30 days and skipped keys older than 30 days."""
        self.sessions = [
            s
            for i, s in enumerate(self.sessions)
            if i == 0 or now_ms - s.last_used_ms <= ARCHIVED_SESSION_IDLE_MS
        ]
        for session in self.sessions:
            session.ratchet.expire(now_ms)

    def to_bytes(self) -> bytes:
        """Versioned canonical CBOR of every session (holds secrets: store encrypted)."""
        return cbor.encode({0: _STATE_VERSION, 1: [s.to_value() for s in self.sessions]})

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CorruptState: the bytes do not decode.
        """
        try:
            m = cbor.expect_map(
                cbor.decode(data, max_size=MAX_STATE_SIZE), "session record", frozenset({0, 1})
            )
            if m[0] != _STATE_VERSION:
                raise CorruptState(f"unknown session record version {m[0]!r}")
            items = cbor.field_list(m, 1, "sessions", MAX_SESSIONS_PER_DEVICE)
        except CorruptState:
            raise
        except E2EEError as exc:
            raise CorruptState(f"session record does not decode: {exc}") from exc
        return cls([Session.from_value(item) for item in items])

    def __repr__(self) -> str:
        return f"SessionRecord({len(self.sessions)} sessions)"


def start_session(
    our: OurDevice,
    their: PeerDevice,
    bundle: PreKeyBundle,
    record: SessionRecord | None,
    now_ms: int,
    rng: Rng = default_rng,
) -> SessionRecord:
    """Initiate a session with ``their`` device from its bundle (DESIGN 4.3) and make
    it the active session of ``record`` (a new record when ``None``).

    Raises:
        UntrustedIdentity, BadSignature, StalePreKey, DowngradeError, LowOrderPoint:
            the bundle is refused (see :func:`~e2ee.x3dh.initiate`); ``record`` is
            then unchanged.
    """
    setup = initiate(our, their, bundle, now_ms, rng)
    ratchet = RatchetState.initiator_start(
        setup.session_ad, setup.shared_key, setup.their_signed_prekey, rng
    )
    header = encode_prekey_header(
        setup.suite,
        our.user_id,
        our.device_id,
        our.identity.public_key,
        setup.base_key,
        setup.signed_prekey_id,
        setup.one_time_prekey_id,
        setup.kem_prekey_id,
        setup.kem_ciphertext,
    )
    session = Session(
        ratchet=ratchet,
        base_key=setup.base_key,
        suite=setup.suite,
        their_identity_key=their.entry.x25519_ik,
        pending_header=header,
        no_one_time_prekey=setup.one_time_prekey_id is None,
        created_at_ms=now_ms,
        last_used_ms=now_ms,
    )
    record = record if record is not None else SessionRecord()
    record.add(session)
    return record


class Decrypted(NamedTuple):
    """The result of :func:`decrypt` (a ``NamedTuple``: one per message received, and
    cheaper to build than a frozen dataclass)."""

    plaintext: bytes
    record: SessionRecord
    prekey_use: PreKeyUse | None
    """Set when a new session was created: apply with ``OurPreKeys.commit_use`` in
    the same transaction that stores ``record``."""
    new_session: bool
    no_one_time_prekey: bool
    """The new session used no one-time prekey (a security event for the app)."""

    def commit_prekeys(self, prekeys: OurPreKeys) -> None:
        """Apply what this message consumed of ``prekeys`` (nothing unless it created
        a session); call it in the transaction that stores :attr:`record`."""
        if self.prekey_use is not None:
            prekeys.commit_use(self.prekey_use)

    def __repr__(self) -> str:
        return f"Decrypted({len(self.plaintext)} bytes, new_session={self.new_session})"


def decrypt(
    our: OurDevice,
    prekeys: OurPreKeys,
    record: SessionRecord | None,
    sender: PeerDevice | None,
    data: bytes,
    now_ms: int,
) -> Decrypted:
    """Decrypt an envelope from a peer device (DESIGN 4.3, 4.4).

    ``record`` holds our sessions with the sending device (``None`` if none);
    ``sender`` is that device from its verified device list (``None`` if the list
    does not hold it: the caller refreshes the list once and then lets this raise
    ``UntrustedIdentity``). Nothing is changed unless the message decrypts; on success
    ``record`` (or a new record) holds the updated sessions and ``prekeys`` is
    untouched: the caller applies ``prekey_use``.

    Raises:
        DecodeError: the envelope is malformed (``UnsupportedVersion`` for versions
            this code does not speak).
        UntrustedIdentity: a pre-key message whose sender does not match its list.
        DowngradeError: a classical pre-key message to a PQ device.
        UnknownPreKey: it names a prekey we do not hold.
        KeyAgreementError: a pre-key message for an existing session whose header is
            not the one that created it.
        DuplicateMessage: a byte-identical envelope (or a replayed pre-key message
            without one-time prekey) was already decrypted.
        MessageKeyUnavailable, TooManySkippedMessages, ReflectedMessage,
        DecryptionError: the message does not decrypt.
    """
    if envelope_type(data) is EnvelopeType.MESSAGE:
        envelope = MessageEnvelope.from_bytes(data)
        if record is None:
            raise DecryptionError("no session with this device")
        plaintext = record.decrypt_message(envelope, now_ms)
        return _new_tuple(Decrypted, (plaintext, record, None, False, False))
    prekey_message = PreKeyEnvelope.from_bytes(data)
    header_digest = blake2b(prekey_message.header_bytes(), digest_size=16)
    existing = None if record is None else record.with_base_key(prekey_message.base_key)
    if existing is not None and record is not None:
        if existing.prekey_header_digest is None:  # a session we initiated
            raise ReflectedMessage("pre-key message with our own base key")
        if not constant_time_equal(existing.prekey_header_digest, header_digest):
            raise KeyAgreementError("pre-key header differs from the one of its session")
        plaintext = existing.decrypt(prekey_message.message, now_ms)
        record.promote(existing)
        return Decrypted(plaintext, record, None, False, False)
    no_opk = prekey_message.one_time_prekey_id is None
    if no_opk and prekeys.base_key_seen(
        prekey_message.signed_prekey_id, prekey_message.kem_prekey_id, prekey_message.base_key
    ):
        # Checked first: a replay whose one-time KEM prekey is already gone is still
        # reported as the replay it is, not as an unknown prekey.
        raise DuplicateMessage("pre-key message replayed (base key already used)")
    setup = respond(our, prekeys, sender, prekey_message)
    session = Session(
        ratchet=RatchetState.responder_start(
            setup.session_ad, setup.shared_key, setup.signed_prekey
        ),
        base_key=prekey_message.base_key,
        suite=prekey_message.suite,
        their_identity_key=prekey_message.identity_key,
        pending_header=None,
        no_one_time_prekey=no_opk,
        prekey_header_digest=header_digest,
        created_at_ms=now_ms,
        last_used_ms=now_ms,
    )
    plaintext = session.decrypt(prekey_message.message, now_ms)
    record = record if record is not None else SessionRecord()
    record.add(session)
    return Decrypted(plaintext, record, setup.use, True, no_opk)
