"""The Double Ratchet (Signal specification, with the KDFs of DESIGN 4.4).

* ``KDF_RK(rk, dh)`` = HKDF-SHA-256(salt = rk, ikm = dh, info ``e2ee/v1/ratchet``, 64)
  -> ``rk' || ck``.
* ``KDF_CK(ck)``: ``mk = BLAKE2b-256(key = ck, 0x01)``, ``ck' = BLAKE2b-256(key = ck, 0x02)``.
* Message key: ``BLAKE2b-448(key = mk, "e2ee/v1/message")`` -> XChaCha20-Poly1305
  key (32) || nonce (24).
* Per-message AD = ``session_ad || direction || header`` (0x01 initiator->responder,
  0x02 back).

Decryption is *commit on success*: every new chain key, root key and skipped-key
insertion is computed in locals and applied only after the AEAD check passes, so a
tampered, replayed or over-limit message leaves the state (and its serialization)
unchanged. Limits (``MAX_SKIP`` and friends) are checked before any DH or KDF.

A DH ratchet step is split as Olm splits it: decrypting a message with a new
ratchet key derives the new receiving chain; the fresh sending key pair and chain
are made at our next :meth:`RatchetState.encrypt` (same keys and bytes on the wire
as the eager step of the Signal specification; docs/protocol.md 4.3).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import Final

from . import cbor
from .envelope import HEADER_SIZE as _HEADER_SIZE
from .envelope import MessageEnvelope
from .errors import (
    CorruptState,
    DecodeError,
    DuplicateMessage,
    E2EEError,
    InvalidArgument,
    LimitExceeded,
    MessageKeyUnavailable,
    ReflectedMessage,
    TooManySkippedMessages,
)
from .keys import DHKeyPair
from .labels import Label
from .limits import (
    MAX_PLAINTEXT,
    MAX_RECEIVING_CHAINS,
    MAX_SEEN_DIGESTS,
    MAX_SKIP,
    MAX_STATE_SIZE,
    MAX_STORED_SKIPPED,
    SKIPPED_KEY_MAX_AGE_MS,
)
from .primitives import Rng, aead_decrypt, aead_encrypt, default_rng

__all__ = [
    "DIRECTION_INITIATOR",
    "DIRECTION_RESPONDER",
    "RatchetState",
    "kdf_ck",
    "kdf_rk",
    "message_key_material",
]

DIRECTION_INITIATOR: Final = b"\x01"
"""Direction byte of messages from the initiator to the responder."""
DIRECTION_RESPONDER: Final = b"\x02"
"""Direction byte of messages from the responder to the initiator."""

_STATE_VERSION: Final = 1
_blake2b = hashlib.blake2b
_MESSAGE_LABEL: Final = Label.MESSAGE.value
_RATCHET_BLOCK_1: Final = Label.RATCHET.value + b"\x01"
_RATCHET_BLOCK_2: Final = Label.RATCHET.value + b"\x02"
_hmac_digest = hmac.digest
_CK_MSG: Final = b"\x01"
_CK_NEXT: Final = b"\x02"
_STATE_KEYS: Final = frozenset(range(12))


def kdf_rk(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    """KDF_RK: a new root key and chain key from a DH output (DESIGN 4.4):
    HKDF-SHA-256(salt = root key, ikm = DH output, info ``e2ee/v1/ratchet``, 64 bytes),
    written out as its three HMACs (RFC 5869 extract, then two expand blocks) because
    it runs on every DH ratchet step; ``tests/e2ee/test_session.py`` checks it against
    :func:`~e2ee.primitives.hkdf_sha256`."""
    prk = _hmac_digest(root_key, dh_output, "sha256")
    first = _hmac_digest(prk, _RATCHET_BLOCK_1, "sha256")
    return first, _hmac_digest(prk, first + _RATCHET_BLOCK_2, "sha256")


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """KDF_CK: ``(message_key, next_chain_key)`` (DESIGN 4.4)."""
    return (
        _blake2b(_CK_MSG, key=chain_key, digest_size=32).digest(),
        _blake2b(_CK_NEXT, key=chain_key, digest_size=32).digest(),
    )


def message_key_material(message_key: bytes) -> bytes:
    """The 56 bytes ``aead_key || nonce`` of a message key (DESIGN 4.4)."""
    return _blake2b(_MESSAGE_LABEL, key=message_key, digest_size=56).digest()


class _Chain:
    """A receiving chain: the peer's ratchet key, its chain key, the next counter.

    A chain that was superseded by a DH step keeps only its key and final counter
    (``chain_key`` empty): its remaining keys were moved to the skipped keys."""

    __slots__ = ("chain_key", "next_n", "ratchet_pk")

    def __init__(self, ratchet_pk: bytes, chain_key: bytes, next_n: int) -> None:
        self.ratchet_pk = ratchet_pk
        self.chain_key = chain_key
        self.next_n = next_n


class RatchetState:
    """The Double Ratchet state of one session. Holds secrets: ``repr`` shows none."""

    __slots__ = (
        "_ad_in",
        "_ad_out",
        "initiator",
        "our_ratchet",
        "prev_n",
        "receiving",
        "root_key",
        "seen",
        "send_ck",
        "send_n",
        "session_ad",
        "skipped",
        "their_ratchet_pk",
    )

    def __init__(
        self,
        *,
        session_ad: bytes,
        initiator: bool,
        root_key: bytes,
        our_ratchet: DHKeyPair,
        their_ratchet_pk: bytes | None,
        send_ck: bytes | None,
        send_n: int = 0,
        prev_n: int = 0,
        receiving: list[_Chain] | None = None,
        skipped: OrderedDict[tuple[bytes, int], tuple[bytes, int]] | None = None,
        seen: OrderedDict[bytes, None] | None = None,
    ) -> None:
        self.session_ad = session_ad
        self.initiator = initiator
        self.root_key = root_key
        self.our_ratchet = our_ratchet
        self.their_ratchet_pk = their_ratchet_pk
        self.send_ck = send_ck
        self.send_n = send_n
        self.prev_n = prev_n
        self.receiving: list[_Chain] = receiving if receiving is not None else []
        # (ratchet_pk, n) -> (message_key, stored_at_ms), oldest first. OrderedDicts:
        # evicting the oldest of a plain dict used as a queue scans its deleted slots.
        self.skipped: OrderedDict[tuple[bytes, int], tuple[bytes, int]] = (
            skipped if skipped is not None else OrderedDict()
        )
        # BLAKE2b-128 digests of decrypted envelopes, oldest first.
        self.seen: OrderedDict[bytes, None] = seen if seen is not None else OrderedDict()
        out, into = (
            (DIRECTION_INITIATOR, DIRECTION_RESPONDER)
            if initiator
            else (DIRECTION_RESPONDER, DIRECTION_INITIATOR)
        )
        self._ad_out = session_ad + out
        self._ad_in = session_ad + into

    # --- construction (Signal Double Ratchet 3.3) ---------------------------------------

    @classmethod
    def initiator_start(
        cls, session_ad: bytes, shared_key: bytes, their_ratchet_pk: bytes, rng: Rng = default_rng
    ) -> RatchetState:
        """RatchetInitAlice: a fresh ratchet key (not the X3DH ephemeral) and the first
        sending chain from ``DH(fresh, SPK_B)``.

        Raises:
            LowOrderPoint: ``their_ratchet_pk`` has small order.
        """
        ours = DHKeyPair.generate(rng)
        root_key, send_ck = kdf_rk(shared_key, ours.dh(their_ratchet_pk))
        return cls(
            session_ad=session_ad,
            initiator=True,
            root_key=root_key,
            our_ratchet=ours,
            their_ratchet_pk=their_ratchet_pk,
            send_ck=send_ck,
        )

    @classmethod
    def responder_start(
        cls, session_ad: bytes, shared_key: bytes, our_signed_prekey: DHKeyPair
    ) -> RatchetState:
        """RatchetInitBob: the signed prekey is the first ratchet key; no sending chain
        until the first message arrives."""
        return cls(
            session_ad=session_ad,
            initiator=False,
            root_key=shared_key,
            our_ratchet=our_signed_prekey,
            their_ratchet_pk=None,
            send_ck=None,
        )

    # --- encryption ------------------------------------------------------------------

    @property
    def can_send(self) -> bool:
        """Whether this side can send: it has a sending chain, or knows the peer's
        ratchet key to start one (a responder needs one message first)."""
        return self.send_ck is not None or self.their_ratchet_pk is not None

    def _start_sending_chain(self, their_ratchet_pk: bytes, rng: Rng) -> bytes:
        """The sending half of a DH ratchet step, done at the first send after a new
        receiving chain (as Olm does) rather than on receipt: a fresh ratchet key pair,
        ``RK, CKs = KDF_RK(RK, DH(new, their))``, ``PN = Ns``, ``Ns = 0``."""
        ours = DHKeyPair.generate(rng)
        self.root_key, chain_key = kdf_rk(self.root_key, ours.dh(their_ratchet_pk))
        self.our_ratchet = ours
        self.prev_n = self.send_n
        self.send_n = 0
        self.send_ck = chain_key
        return chain_key

    def encrypt(self, plaintext: bytes, rng: Rng = default_rng) -> bytes:
        """RatchetEncrypt: the envelope bytes of ``plaintext``. The first message after
        a new receiving chain first completes the DH step with a fresh key from ``rng``.

        Raises:
            LimitExceeded: ``plaintext`` is longer than ``MAX_PLAINTEXT``.
            InvalidArgument: no sending chain yet (a responder that has not received).
        """
        if len(plaintext) > MAX_PLAINTEXT:
            raise LimitExceeded(f"plaintext longer than {MAX_PLAINTEXT} bytes")
        chain_key = self.send_ck
        if chain_key is None:
            if self.their_ratchet_pk is None:
                raise InvalidArgument("no sending chain: the responder must receive first")
            chain_key = self._start_sending_chain(self.their_ratchet_pk, rng)
        if self.send_n >= 0xFFFFFFFF:  # the header counter is 32 bits
            raise LimitExceeded("sending chain exhausted")
        message_key = _blake2b(_CK_MSG, key=chain_key, digest_size=32).digest()
        # Header and ciphertext length in one pack: the length is known in advance.
        prefix = MessageEnvelope.encode_prefix(
            self.our_ratchet.public_key, self.prev_n, self.send_n, len(plaintext)
        )
        material = _blake2b(_MESSAGE_LABEL, key=message_key, digest_size=56).digest()
        ciphertext = aead_encrypt(
            material[:32], material[32:], plaintext, self._ad_out + prefix[:_HEADER_SIZE]
        )
        self.send_ck = _blake2b(_CK_NEXT, key=chain_key, digest_size=32).digest()
        self.send_n += 1
        return prefix + ciphertext

    # --- decryption ------------------------------------------------------------------

    def _chain(self, ratchet_pk: bytes) -> _Chain | None:
        receiving = self.receiving
        if receiving and receiving[-1].ratchet_pk == ratchet_pk:  # the current chain
            return receiving[-1]
        for chain in reversed(receiving):
            if chain.ratchet_pk == ratchet_pk:
                return chain
        return None

    def knows(self, ratchet_pk: bytes) -> bool:
        """Whether ``ratchet_pk`` is one of this session's receiving chains."""
        return self._chain(ratchet_pk) is not None

    def decrypt(self, envelope: MessageEnvelope, now_ms: int) -> bytes:
        """RatchetDecrypt with commit on success (DESIGN 4.4).

        Raises:
            DuplicateMessage: a byte-identical envelope was already decrypted.
            MessageKeyUnavailable: an old counter whose key is gone.
            TooManySkippedMessages: the message would skip more than ``MAX_SKIP`` keys.
            ReflectedMessage: the envelope carries our own ratchet key.
            DecryptionError: authentication failed.
            LowOrderPoint: the new ratchet key gives an all-zero DH.
        """
        raw = envelope.raw
        digest = _blake2b(raw, digest_size=16).digest()
        if digest in self.seen:
            raise DuplicateMessage("message already decrypted")
        ratchet_pk = envelope.ratchet_pk
        n = envelope.n
        ad = self._ad_in + envelope.header
        stored = self.skipped.get((ratchet_pk, n)) if self.skipped else None
        if stored is not None:
            message_key, stored_at = stored
            if now_ms - stored_at > SKIPPED_KEY_MAX_AGE_MS:
                raise MessageKeyUnavailable("skipped message key expired")
            plaintext = self._open(message_key, envelope.ciphertext, ad)
            del self.skipped[(ratchet_pk, n)]
            self._remember(digest)
            return plaintext
        chain = self._chain(ratchet_pk)
        if chain is not None:
            chain_key = chain.chain_key
            if n < chain.next_n or not chain_key:
                raise MessageKeyUnavailable("message key already used or discarded")
            if n == chain.next_n:  # the common case: the next message in order
                message_key = _blake2b(_CK_MSG, key=chain_key, digest_size=32).digest()
                material = _blake2b(_MESSAGE_LABEL, key=message_key, digest_size=56).digest()
                plaintext = aead_decrypt(material[:32], material[32:], envelope.ciphertext, ad)
                chain.chain_key = _blake2b(_CK_NEXT, key=chain_key, digest_size=32).digest()
                chain.next_n = n + 1
                self._remember(digest)
                return plaintext
            skip = n - chain.next_n
            if skip > MAX_SKIP:
                raise TooManySkippedMessages(skip, MAX_SKIP)
            new_skipped, message_key, chain_key = _advance(ratchet_pk, chain_key, chain.next_n, n)
            plaintext = self._open(message_key, envelope.ciphertext, ad)
            chain.chain_key = chain_key
            chain.next_n = n + 1
            self._store_skipped(new_skipped, now_ms)
            self._remember(digest)
            return plaintext
        if ratchet_pk == self.our_ratchet.public_key:
            raise ReflectedMessage("message carries our own ratchet key")
        return self._decrypt_new_chain(envelope, ad, digest, now_ms)

    def _decrypt_new_chain(
        self, envelope: MessageEnvelope, ad: bytes, digest: bytes, now_ms: int
    ) -> bytes:
        current = self.receiving[-1] if self.receiving else None
        pn, n = envelope.pn, envelope.n
        old_skip = 0
        if current is not None and current.chain_key:
            old_skip = max(0, pn - current.next_n)
        if old_skip + n > MAX_SKIP:
            raise TooManySkippedMessages(old_skip + n, MAX_SKIP)
        new_skipped: list[tuple[tuple[bytes, int], bytes]] = []
        if old_skip and current is not None:
            new_skipped, _, _ = _advance(current.ratchet_pk, current.chain_key, current.next_n, pn)
        root_key, recv_ck = kdf_rk(self.root_key, self.our_ratchet.dh(envelope.ratchet_pk))
        if n:
            more, message_key, recv_ck = _advance(envelope.ratchet_pk, recv_ck, 0, n)
            new_skipped += more
        else:  # the first message of the new chain (the usual case)
            message_key = _blake2b(_CK_MSG, key=recv_ck, digest_size=32).digest()
            recv_ck = _blake2b(_CK_NEXT, key=recv_ck, digest_size=32).digest()
        plaintext = self._open(message_key, envelope.ciphertext, ad)
        # Authenticated: commit. The sending half of the DH step (a fresh ratchet key)
        # waits for our next message (_start_sending_chain).
        if current is not None:
            current.chain_key = b""
            current.next_n = max(current.next_n, pn)
        self.receiving.append(_Chain(envelope.ratchet_pk, recv_ck, n + 1))
        if len(self.receiving) > MAX_RECEIVING_CHAINS:
            dropped = self.receiving.pop(0).ratchet_pk
            self.skipped = OrderedDict((k, v) for k, v in self.skipped.items() if k[0] != dropped)
        self.root_key = root_key
        self.their_ratchet_pk = envelope.ratchet_pk
        self.send_ck = None
        self._store_skipped(new_skipped, now_ms)
        self._remember(digest)
        return plaintext

    @staticmethod
    def _open(message_key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
        material = _blake2b(_MESSAGE_LABEL, key=message_key, digest_size=56).digest()
        return aead_decrypt(material[:32], material[32:], ciphertext, ad)

    def _store_skipped(self, entries: list[tuple[tuple[bytes, int], bytes]], now_ms: int) -> None:
        if not entries:
            return
        skipped = self.skipped
        for key, message_key in entries:
            skipped[key] = (message_key, now_ms)
        while len(skipped) > MAX_STORED_SKIPPED:
            skipped.popitem(last=False)

    def _remember(self, digest: bytes) -> None:
        seen = self.seen
        seen[digest] = None
        if len(seen) > MAX_SEEN_DIGESTS:
            seen.popitem(last=False)

    # --- upkeep ----------------------------------------------------------------------

    def expire(self, now_ms: int) -> int:
        """Delete skipped keys older than 30 days; returns how many were deleted."""
        before = len(self.skipped)
        self.skipped = OrderedDict(
            (k, v) for k, v in self.skipped.items() if now_ms - v[1] <= SKIPPED_KEY_MAX_AGE_MS
        )
        return before - len(self.skipped)

    # --- serialization (versioned; never pickle) ------------------------------------------

    def to_value(self) -> cbor.Value:
        """The state as a CBOR map (docs/protocol.md section 8)."""
        return {
            0: _STATE_VERSION,
            1: self.session_ad,
            2: self.initiator,
            3: self.root_key,
            4: self.our_ratchet.private_bytes(),
            5: self.their_ratchet_pk,
            6: self.send_ck,
            7: self.send_n,
            8: self.prev_n,
            9: [[c.ratchet_pk, c.chain_key, c.next_n] for c in self.receiving],
            10: [[k[0], k[1], v[0], v[1]] for k, v in self.skipped.items()],
            11: list(self.seen),
        }

    @classmethod
    def from_value(cls, value: cbor.Value) -> RatchetState:
        """Rebuild a state from :meth:`to_value` output.

        Raises:
            CorruptState: a missing or malformed field or an unknown version.
        """
        try:
            m = cbor.expect_map(value, "ratchet state", _STATE_KEYS)
            if m[0] != _STATE_VERSION:
                raise CorruptState(f"unknown ratchet state version {m[0]!r}")
            receiving = [
                _Chain(*_triple(c)) for c in cbor.field_list(m, 9, "chains", MAX_RECEIVING_CHAINS)
            ]
            skipped: OrderedDict[tuple[bytes, int], tuple[bytes, int]] = OrderedDict()
            for item in cbor.field_list(m, 10, "skipped", MAX_STORED_SKIPPED):
                pk, n, mk, at = _quad(item)
                skipped[(pk, n)] = (mk, at)
            seen: OrderedDict[bytes, None] = OrderedDict()
            for digest in cbor.field_list(m, 11, "seen", MAX_SEEN_DIGESTS):
                if not isinstance(digest, bytes) or len(digest) != 16:
                    raise DecodeError("seen digest")
                seen[digest] = None
            return cls(
                session_ad=cbor.field_bytes(m, 1, "session ad", size=32),
                initiator=cbor.field_bool(m, 2, "initiator"),
                root_key=cbor.field_bytes(m, 3, "root key", size=32),
                our_ratchet=DHKeyPair(cbor.field_bytes(m, 4, "ratchet key", size=32)),
                their_ratchet_pk=cbor.field_optional_bytes(m, 5, "their ratchet key", size=32),
                send_ck=cbor.field_optional_bytes(m, 6, "sending chain", size=32),
                send_n=cbor.field_int(m, 7, "send_n", 0, 2**32),
                prev_n=cbor.field_int(m, 8, "prev_n", 0, 2**32),
                receiving=receiving,
                skipped=skipped,
                seen=seen,
            )
        except CorruptState:
            raise
        except E2EEError as exc:
            raise CorruptState(f"ratchet state does not decode: {exc}") from exc

    def to_bytes(self) -> bytes:
        """Versioned canonical CBOR of the whole state."""
        return cbor.encode(self.to_value())

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        """Inverse of :meth:`to_bytes`.

        Raises:
            CorruptState: the bytes do not decode to a state.
        """
        try:
            value = cbor.decode(data, max_size=MAX_STATE_SIZE)
        except E2EEError as exc:
            raise CorruptState(f"ratchet state does not decode: {exc}") from exc
        return cls.from_value(value)

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (
            f"RatchetState({role}, send_n={self.send_n}, chains={len(self.receiving)}, "
            f"skipped={len(self.skipped)})"
        )


def _advance(
    ratchet_pk: bytes, chain_key: bytes, start: int, until: int
) -> tuple[list[tuple[tuple[bytes, int], bytes]], bytes, bytes]:
    """Walk a chain from counter ``start`` to ``until``: the skipped keys before
    ``until``, the message key at ``until`` and the chain key after it. Pure."""
    skipped: list[tuple[tuple[bytes, int], bytes]] = []
    for index in range(start, until):
        skipped.append(
            ((ratchet_pk, index), _blake2b(_CK_MSG, key=chain_key, digest_size=32).digest())
        )
        chain_key = _blake2b(_CK_NEXT, key=chain_key, digest_size=32).digest()
    message_key = _blake2b(_CK_MSG, key=chain_key, digest_size=32).digest()
    return skipped, message_key, _blake2b(_CK_NEXT, key=chain_key, digest_size=32).digest()


def _triple(value: cbor.Value) -> tuple[bytes, bytes, int]:
    item = cbor.expect_list(value, "chain", 3)
    if (
        len(item) != 3
        or not isinstance(item[0], bytes)
        or len(item[0]) != 32
        or not isinstance(item[1], bytes)
        or len(item[1]) not in (0, 32)
        or type(item[2]) is not int
        or item[2] < 0
    ):
        raise DecodeError("malformed chain")
    return item[0], item[1], item[2]


def _quad(value: cbor.Value) -> tuple[bytes, int, bytes, int]:
    item = cbor.expect_list(value, "skipped key", 4)
    if (
        len(item) != 4
        or not isinstance(item[0], bytes)
        or len(item[0]) != 32
        or type(item[1]) is not int
        or item[1] < 0
        or not isinstance(item[2], bytes)
        or len(item[2]) != 32
        or type(item[3]) is not int
    ):
        raise DecodeError("malformed skipped key")
    return item[0], item[1], item[2], item[3]
