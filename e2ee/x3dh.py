"""Session setup: X3DH and PQXDH revision 3 (DESIGN 4.3).

``IKM = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4] [|| SS]`` with DH1 = DH(IK_A, SPK_B),
DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B), DH4 = DH(EK_A, OPK_B) and SS the
ML-KEM-768 shared secret; ``SK = HKDF-SHA-256(salt = 0*32, IKM, info, 32)`` with
info ``e2ee/v1/x3dh`` or ``e2ee/v1/pqxdh``. Both sides authenticate each other
against verified device lists before any DH, and neither side accepts a downgrade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from . import cbor
from .device import OurDevice, OurPreKeys, PreKeyUse
from .device_list import PeerDevice
from .envelope import PROTOCOL_VERSION, PreKeyEnvelope, Suite
from .errors import DowngradeError, UnknownPreKey, UntrustedIdentity
from .keys import DHKeyPair
from .labels import Label
from .prekeys import PreKeyBundle, validate_bundle
from .primitives import (
    Rng,
    constant_time_equal,
    default_rng,
    hkdf_sha256,
    mlkem768_encapsulate,
    sha256,
)

__all__ = [
    "InitiatorSetup",
    "ResponderSetup",
    "derive_shared_key",
    "initiate",
    "respond",
    "session_ad",
]

_F: Final = b"\xff" * 32
_ZERO_SALT: Final = bytes(32)


def derive_shared_key(suite: Suite, dh_outputs: list[bytes], kem_secret: bytes | None) -> bytes:
    """SK = HKDF(salt = 32 zero bytes, 0xFF*32 || DH1..DH4 [|| SS], info by suite)."""
    ikm = _F + b"".join(dh_outputs) + (kem_secret or b"")
    info = Label.PQXDH.value if suite is Suite.PQXDH else Label.X3DH.value
    return hkdf_sha256(ikm, salt=_ZERO_SALT, info=info, length=32)


def _party(device: PeerDevice) -> cbor.Value:
    e = device.entry
    return {0: device.user_id, 1: e.device_id, 2: device.master_pk, 3: e.signing_pk, 4: e.x25519_ik}


def session_ad(
    *,
    suite: Suite,
    initiator: PeerDevice,
    responder: PeerDevice,
    base_key: bytes,
    signed_prekey: tuple[int, bytes],
    one_time_prekey: tuple[int, bytes] | None,
    kem_prekey: tuple[int, bytes] | None,
    kem_ciphertext: bytes | None,
) -> bytes:
    """Session AD = SHA-256(``e2ee/v1/session-ad`` || CBOR[version, suite, initiator,
    responder, EK_A, SPK{id, pk}, OPK{id, pk} or null, KEM{id, SHA-256(pk)} or null,
    SHA-256(kem_ct) or null]) (DESIGN 4.3)."""
    statement: cbor.Value = [
        PROTOCOL_VERSION,
        int(suite),
        _party(initiator),
        _party(responder),
        base_key,
        {0: signed_prekey[0], 1: signed_prekey[1]},
        None if one_time_prekey is None else {0: one_time_prekey[0], 1: one_time_prekey[1]},
        None if kem_prekey is None else {0: kem_prekey[0], 1: sha256(kem_prekey[1])},
        None if kem_ciphertext is None else sha256(kem_ciphertext),
    ]
    return sha256(Label.SESSION_AD.value + cbor.encode(statement))


@dataclass(frozen=True, slots=True)
class InitiatorSetup:
    """Alice's result: the first root key, the AD, and the pre-key header fields."""

    shared_key: bytes
    session_ad: bytes
    their_signed_prekey: bytes
    suite: Suite
    base_key: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int | None
    kem_ciphertext: bytes | None

    def __repr__(self) -> str:
        return f"InitiatorSetup(suite={self.suite.name}, spk={self.signed_prekey_id})"


def initiate(
    our: OurDevice,
    their: PeerDevice,
    bundle: PreKeyBundle,
    now_ms: int,
    rng: Rng = default_rng,
) -> InitiatorSetup:
    """Alice's side of X3DH/PQXDH from ``their`` verified device and its bundle.

    The bundle is validated in full first (every signature, the device in the list,
    the signed prekey's age, PQ downgrade); PQXDH is used whenever the bundle offers
    an ML-KEM prekey.

    Raises:
        UntrustedIdentity, BadSignature, StalePreKey, DowngradeError: from
            :func:`~e2ee.prekeys.validate_bundle`.
        LowOrderPoint: a DH output is all zero.
    """
    validate_bundle(bundle, their, now_ms)
    spk = bundle.signed_prekey
    opk = bundle.one_time_prekey
    kem = bundle.kem_prekey
    suite = Suite.PQXDH if kem is not None else Suite.X3DH
    ephemeral = DHKeyPair.generate(rng)
    dh = [
        our.identity.dh(spk.public_key),
        ephemeral.dh(their.entry.x25519_ik),
        ephemeral.dh(spk.public_key),
    ]
    if opk is not None:
        dh.append(ephemeral.dh(opk.public_key))
    kem_secret: bytes | None = None
    kem_ct: bytes | None = None
    if kem is not None:
        kem_secret, kem_ct = mlkem768_encapsulate(kem.public_key)
    ad = session_ad(
        suite=suite,
        initiator=our.as_peer(),
        responder=their,
        base_key=ephemeral.public_key,
        signed_prekey=(spk.prekey_id, spk.public_key),
        one_time_prekey=None if opk is None else (opk.prekey_id, opk.public_key),
        kem_prekey=None if kem is None else (kem.prekey_id, kem.public_key),
        kem_ciphertext=kem_ct,
    )
    return InitiatorSetup(
        shared_key=derive_shared_key(suite, dh, kem_secret),
        session_ad=ad,
        their_signed_prekey=spk.public_key,
        suite=suite,
        base_key=ephemeral.public_key,
        signed_prekey_id=spk.prekey_id,
        one_time_prekey_id=None if opk is None else opk.prekey_id,
        kem_prekey_id=None if kem is None else kem.prekey_id,
        kem_ciphertext=kem_ct,
    )


@dataclass(frozen=True, slots=True)
class ResponderSetup:
    """Bob's result: the first root key, the AD, his signed prekey (first ratchet key)
    and what to consume once the first message decrypts."""

    shared_key: bytes
    session_ad: bytes
    signed_prekey: DHKeyPair
    use: PreKeyUse

    def __repr__(self) -> str:
        return f"ResponderSetup(spk={self.use.signed_prekey_id})"


def respond(
    our: OurDevice,
    prekeys: OurPreKeys,
    their: PeerDevice | None,
    header: PreKeyEnvelope,
) -> ResponderSetup:
    """Bob's side of X3DH/PQXDH. Changes nothing: the caller commits
    :attr:`ResponderSetup.use` only after the first message decrypts (DESIGN 4.3).

    ``their`` is the sender's device from its verified device list (``None`` when the
    list has no such device: the caller refreshes the list once before calling).

    Raises:
        UntrustedIdentity: the sender is not in its verified list, or its identity key
            differs from the list's.
        DowngradeError: a classical pre-key message to a device that publishes ML-KEM
            prekeys.
        UnknownPreKey: a prekey id this device does not hold.
        LowOrderPoint: a DH output is all zero.
    """
    if their is None:
        raise UntrustedIdentity(
            "sender device is not in its verified device list", header.user_id, header.device_id
        )
    if (
        their.user_id != header.user_id
        or their.device_id != header.device_id
        or not constant_time_equal(their.entry.x25519_ik, header.identity_key)
    ):
        raise UntrustedIdentity(
            "pre-key message identity does not match the sender's device list",
            header.user_id,
            header.device_id,
        )
    if header.suite is Suite.X3DH and (our.pq or prekeys.publishes_kem):
        raise DowngradeError("classical pre-key message to a device that publishes ML-KEM keys")
    spk = prekeys.signed_prekey(header.signed_prekey_id)
    if spk is None:
        raise UnknownPreKey("signed", header.signed_prekey_id)
    opk: DHKeyPair | None = None
    opk_public: tuple[int, bytes] | None = None
    if header.one_time_prekey_id is not None:
        opk = prekeys.one_time_prekey(header.one_time_prekey_id)
        if opk is None:
            raise UnknownPreKey("one-time", header.one_time_prekey_id)
        opk_public = (header.one_time_prekey_id, opk.public_key)
    kem_secret: bytes | None = None
    kem_pk: tuple[int, bytes] | None = None
    kem_one_time = False
    if header.kem_prekey_id is not None and header.kem_ciphertext is not None:
        found = prekeys.kem_prekey(header.kem_prekey_id)
        if found is None:
            raise UnknownPreKey("ML-KEM", header.kem_prekey_id)
        kem_key, kem_one_time = found
        kem_secret = kem_key.decapsulate(header.kem_ciphertext)
        kem_pk = (header.kem_prekey_id, kem_key.public_key)
    dh = [
        spk.dh(header.identity_key),
        our.identity.dh(header.base_key),
        spk.dh(header.base_key),
    ]
    if opk is not None:
        dh.append(opk.dh(header.base_key))
    ad = session_ad(
        suite=header.suite,
        initiator=their,
        responder=our.as_peer(),
        base_key=header.base_key,
        signed_prekey=(header.signed_prekey_id, spk.public_key),
        one_time_prekey=opk_public,
        kem_prekey=kem_pk,
        kem_ciphertext=header.kem_ciphertext,
    )
    use = PreKeyUse(
        signed_prekey_id=header.signed_prekey_id,
        one_time_prekey_id=header.one_time_prekey_id,
        kem_prekey_id=header.kem_prekey_id,
        kem_one_time=kem_one_time,
        base_key=header.base_key,
    )
    return ResponderSetup(derive_shared_key(header.suite, dh, kem_secret), ad, spk, use)
