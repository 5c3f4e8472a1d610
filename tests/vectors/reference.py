"""An independent reference implementation of protocol v1, written from ``docs/protocol.md`` alone.

It exists so that the pinned vectors in ``tests/vectors/*.json`` are checked by two
implementations: the ``e2ee`` package and this module. A mistake made the same way
in both (a "symmetric" mistake) would need the same misreading of the document
twice. So this module imports only the standard library, ``nacl.bindings`` and
``cryptography`` - never ``e2ee`` (``test_vectors.py`` checks that on its syntax
tree) - and every function names the section of ``docs/protocol.md`` it follows.

It is deliberately small and unvalidating: no limits, no key validation, no
commit-on-success, no skipped-key store. It computes what the document says the
bytes are, and nothing more.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import mlkem
from nacl import bindings

# --- §1.3 labels ------------------------------------------------------------------------

LABEL_DEVICE_LIST = b"e2ee/v1/device-list"
LABEL_SIGNED_PREKEY = b"e2ee/v1/signed-prekey"
LABEL_ONE_TIME_PREKEY = b"e2ee/v1/one-time-prekey"
LABEL_KEM_PREKEY = b"e2ee/v1/kem-prekey"
LABEL_KEM_LAST_RESORT = b"e2ee/v1/kem-last-resort"
LABEL_SESSION_AD = b"e2ee/v1/session-ad"
LABEL_X3DH = b"e2ee/v1/x3dh"
LABEL_PQXDH = b"e2ee/v1/pqxdh"
LABEL_RATCHET = b"e2ee/v1/ratchet"
LABEL_MESSAGE = b"e2ee/v1/message"

PREKEY_LABELS = {
    "spk": LABEL_SIGNED_PREKEY,
    "opk": LABEL_ONE_TIME_PREKEY,
    "kem": LABEL_KEM_PREKEY,
    "kem_last_resort": LABEL_KEM_LAST_RESORT,
}

PROTOCOL_VERSION = 1
SUITE_X3DH = 1
SUITE_PQXDH = 2
TYPE_MESSAGE = 1
TYPE_PREKEY = 2
DIRECTION_INITIATOR = 0x01  # §4.2: initiator -> responder
DIRECTION_RESPONDER = 0x02  # §4.2: responder -> initiator
KEM_CT_LEN = 1088
PADDING_BLOCK = 160

# --- §1.2 canonical CBOR ----------------------------------------------------------------


def _head(major: int, arg: int) -> bytes:
    """A CBOR head in its shortest form (RFC 8949 §4.2.1)."""
    if arg < 24:
        return bytes([major << 5 | arg])
    if arg < 1 << 8:
        return bytes([major << 5 | 24, arg])
    if arg < 1 << 16:
        return bytes([major << 5 | 25]) + struct.pack(">H", arg)
    if arg < 1 << 32:
        return bytes([major << 5 | 26]) + struct.pack(">I", arg)
    return bytes([major << 5 | 27]) + struct.pack(">Q", arg)


def cbor(value: object) -> bytes:
    """``CBOR(x)``: deterministic encoding of ints, bytes, str, list, int-keyed dict, bool, None."""
    if value is False:
        return b"\xf4"
    if value is True:
        return b"\xf5"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, list | tuple):
        return _head(4, len(value)) + b"".join(cbor(item) for item in value)
    if isinstance(value, dict):
        keys = sorted(value)
        if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= 255 for k in keys):
            raise ValueError("map keys must be integers 0..255")
        return _head(5, len(keys)) + b"".join(cbor(k) + cbor(value[k]) for k in keys)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _cbor_item(data: bytes, pos: int) -> tuple[object, int]:
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        simple = {20: False, 21: True, 22: None}
        if info not in simple:
            raise ValueError("unsupported simple value")
        return simple[info], pos
    if info < 24:
        arg = info
    elif info <= 27:
        size = 1 << (info - 24)
        arg = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    else:
        raise ValueError("indefinite or reserved length")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        raw = data[pos : pos + arg]
        if len(raw) != arg:
            raise ValueError("truncated")
        return (bytes(raw) if major == 2 else raw.decode("utf-8")), pos + arg
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _cbor_item(data, pos)
            items.append(item)
        return items, pos
    if major == 5:
        out: dict[object, object] = {}
        for _ in range(arg):
            key, pos = _cbor_item(data, pos)
            out[key], pos = _cbor_item(data, pos)
        return out, pos
    raise ValueError("tags are not allowed")


def cbor_decode(data: bytes) -> object:
    """Decode one canonical CBOR item; the input must re-encode to itself (§1.2 rule 3)."""
    value, end = _cbor_item(data, 0)
    if end != len(data) or cbor(value) != data:
        raise ValueError("not canonical CBOR")
    return value


# --- §1.1 primitives ---------------------------------------------------------------------


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869), extract then expand."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def blake2b(key: bytes, data: bytes, size: int) -> bytes:
    """Keyed BLAKE2b with a ``size``-byte output (``BLAKE2b-(8*size)``)."""
    return hashlib.blake2b(data, key=key, digest_size=size).digest()


def x25519_pub(sk: bytes) -> bytes:
    return bindings.crypto_scalarmult_base(sk)


def dh(sk: bytes, pk: bytes) -> bytes:
    """``DH(sk, pk)``: X25519; an all-zero result is an error."""
    out = bindings.crypto_scalarmult(sk, pk)
    if out == bytes(32):
        raise ValueError("LowOrderPoint")
    return out


def ed25519_pub(seed: bytes) -> bytes:
    return bindings.crypto_sign_seed_keypair(seed)[0]


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """Deterministic Ed25519 signature (RFC 8032) of ``message`` by the key with ``seed``."""
    _, sk = bindings.crypto_sign_seed_keypair(seed)
    return bindings.crypto_sign(message, sk)[:64]


def kem_pub(seed: bytes) -> bytes:
    """The ML-KEM-768 encapsulation key of the 64-byte private seed ``d || z``."""
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()


def kem_decaps(seed: bytes, kem_ct: bytes) -> bytes:
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(kem_ct)


def aead_encrypt(key: bytes, nonce: bytes, pt: bytes, ad: bytes) -> bytes:
    return bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, ad, nonce, key)


def aead_decrypt(key: bytes, nonce: bytes, ct: bytes, ad: bytes) -> bytes:
    return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, ad, nonce, key)


# --- §1.3 signatures ---------------------------------------------------------------------


def signing_bytes(label: bytes, statement: object) -> bytes:
    """``label || 0x00 || CBOR(statement)``: what every signature covers."""
    return label + b"\x00" + cbor(statement)


# --- §2.1 device list --------------------------------------------------------------------


def device_entry(device_id: int, signing_pk: bytes, x25519_ik: bytes, pq: bool, added_at_ms: int):
    return {0: device_id, 1: signing_pk, 2: x25519_ik, 3: pq, 4: added_at_ms}


def device_list_statement(
    user_id: str,
    master_pk: bytes,
    version: int,
    issued_at_ms: int,
    prev_hash: bytes | None,
    devices: list[dict[int, object]],
) -> dict[int, object]:
    ordered = sorted(devices, key=lambda entry: entry[0])  # type: ignore[arg-type,return-value]
    return {0: user_id, 1: master_pk, 2: version, 3: issued_at_ms, 4: prev_hash, 5: ordered}


def device_list_wire(statement: dict[int, object], master_seed: bytes) -> bytes:
    """``CBOR({0: statement, 1: signature})``, signed by the master key (§2.1)."""
    sig = ed25519_sign(master_seed, signing_bytes(LABEL_DEVICE_LIST, statement))
    return cbor({0: statement, 1: sig})


def device_list_hash(wire: bytes) -> bytes:
    """The next version's ``prev_hash``."""
    return hashlib.sha256(wire).digest()


# --- §2.2 prekeys ------------------------------------------------------------------------


def prekey_statement(
    user_id: str, device_id: int, prekey_id: int, created_at_ms: int, public_key: bytes
) -> dict[int, object]:
    return {0: user_id, 1: device_id, 2: prekey_id, 3: created_at_ms, 4: public_key}


def prekey_signing_bytes(kind: str, statement: dict[int, object]) -> bytes:
    return signing_bytes(PREKEY_LABELS[kind], statement)


def published_prekey(
    statement: dict[int, object], kind: str, signing_seed: bytes
) -> dict[int, object]:
    """The wire form ``{0: prekey_id, 1: created_at_ms, 2: public_key, 3: signature}``."""
    sig = ed25519_sign(signing_seed, prekey_signing_bytes(kind, statement))
    return {0: statement[2], 1: statement[3], 2: statement[4], 3: sig}


def bundle_wire(
    user_id: str,
    device_id: int,
    spk: dict[int, object],
    opk: dict[int, object] | None,
    kem: dict[int, object] | None,
    last_resort: bool,
) -> bytes:
    """§2.3: key 5 (``true``) only when the KEM prekey is the last-resort one."""
    value = {0: user_id, 1: device_id, 2: spk, 3: opk, 4: kem}
    if last_resort:
        value[5] = True
    return cbor(value)


# --- §3 X3DH / PQXDH ---------------------------------------------------------------------


def _sk(dhs: list[bytes], kem_ss: bytes | None) -> bytes:
    ikm = b"\xff" * 32 + b"".join(dhs) + (kem_ss or b"")
    info = LABEL_X3DH if kem_ss is None else LABEL_PQXDH
    return hkdf(ikm, bytes(32), info, 32)


def shared_key_initiator(
    ik_a: bytes,
    ek_a: bytes,
    ik_b_pub: bytes,
    spk_b_pub: bytes,
    opk_b_pub: bytes | None = None,
    kem_ss: bytes | None = None,
) -> bytes:
    """A's ``SK`` from its private ``IK_A`` and ``EK_A`` (and the KEM secret for PQXDH)."""
    dhs = [dh(ik_a, spk_b_pub), dh(ek_a, ik_b_pub), dh(ek_a, spk_b_pub)]
    if opk_b_pub is not None:
        dhs.append(dh(ek_a, opk_b_pub))
    return _sk(dhs, kem_ss)


def shared_key_responder(
    ik_b: bytes,
    spk_b: bytes,
    ik_a_pub: bytes,
    ek_a_pub: bytes,
    opk_b: bytes | None = None,
    kem_seed: bytes | None = None,
    kem_ct: bytes | None = None,
) -> bytes:
    """B's mirrored ``SK``; for PQXDH ``SS = KEM.Decaps(kem_ct)`` with B's KEM prekey seed."""
    dhs = [dh(spk_b, ik_a_pub), dh(ik_b, ek_a_pub), dh(spk_b, ek_a_pub)]
    if opk_b is not None:
        dhs.append(dh(opk_b, ek_a_pub))
    kem_ss = None if kem_seed is None else kem_decaps(kem_seed, kem_ct or b"")
    return _sk(dhs, kem_ss)


def party(
    user_id: str, device_id: int, master_pk: bytes, signing_pk: bytes, x25519_ik: bytes
) -> dict[int, object]:
    return {0: user_id, 1: device_id, 2: master_pk, 3: signing_pk, 4: x25519_ik}


def session_ad_input(
    suite: int,
    initiator: dict[int, object],
    responder: dict[int, object],
    ek_a_pub: bytes,
    spk: tuple[int, bytes],
    opk: tuple[int, bytes] | None,
    kem: tuple[int, bytes] | None,
    kem_ct: bytes | None,
) -> bytes:
    """What the session AD hashes; ``kem`` is ``(kem_id, KEM_pub)`` (hashed here)."""
    body = [
        PROTOCOL_VERSION,
        suite,
        initiator,
        responder,
        ek_a_pub,
        {0: spk[0], 1: spk[1]},
        None if opk is None else {0: opk[0], 1: opk[1]},
        None if kem is None else {0: kem[0], 1: hashlib.sha256(kem[1]).digest()},
        None if kem_ct is None else hashlib.sha256(kem_ct).digest(),
    ]
    return LABEL_SESSION_AD + cbor(body)


def session_ad(
    suite: int,
    initiator: dict[int, object],
    responder: dict[int, object],
    ek_a_pub: bytes,
    spk: tuple[int, bytes],
    opk: tuple[int, bytes] | None,
    kem: tuple[int, bytes] | None,
    kem_ct: bytes | None,
) -> bytes:
    """The 32-byte session AD: SHA-256 of :func:`session_ad_input`."""
    inputs = session_ad_input(suite, initiator, responder, ek_a_pub, spk, opk, kem, kem_ct)
    return hashlib.sha256(inputs).digest()


# --- §4 Double Ratchet -------------------------------------------------------------------


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf(dh_out, rk, LABEL_RATCHET, 64)
    return out[:32], out[32:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """``(mk, ck')``."""
    return blake2b(ck, b"\x01", 32), blake2b(ck, b"\x02", 32)


def message_key_material(mk: bytes) -> tuple[bytes, bytes]:
    """``(aead_key, nonce)`` of a message key."""
    m = blake2b(mk, LABEL_MESSAGE, 56)
    return m[:32], m[32:56]


def message_header(ratchet_pub: bytes, pn: int, n: int) -> bytes:
    return (
        struct.pack(">BB", PROTOCOL_VERSION, TYPE_MESSAGE) + ratchet_pub + struct.pack(">II", pn, n)
    )


def build_message_envelope(ratchet_pub: bytes, pn: int, n: int, ct: bytes) -> bytes:
    return message_header(ratchet_pub, pn, n) + struct.pack(">I", len(ct)) + ct


@dataclass(frozen=True)
class MessageEnvelope:
    ratchet_pub: bytes
    pn: int
    n: int
    ct: bytes

    @property
    def header(self) -> bytes:
        return message_header(self.ratchet_pub, self.pn, self.n)


def parse_message_envelope(data: bytes) -> MessageEnvelope:
    """§5.1; checks the fixed layout only."""
    if len(data) < 46 or data[0] != PROTOCOL_VERSION or data[1] != TYPE_MESSAGE:
        raise ValueError("not a v1 message envelope")
    pn, n, ct_len = struct.unpack(">III", data[34:46])
    if ct_len != len(data) - 46 or ct_len < 16:
        raise ValueError("bad ct_len")
    return MessageEnvelope(data[2:34], pn, n, data[46:])


def message_ad(session_ad_: bytes, direction: int, header: bytes) -> bytes:
    return session_ad_ + bytes([direction]) + header


def encrypt_message(
    mk: bytes,
    session_ad_: bytes,
    direction: int,
    ratchet_pub: bytes,
    pn: int,
    n: int,
    plaintext: bytes,
) -> bytes:
    """One §4.2 envelope from its message key."""
    key, nonce = message_key_material(mk)
    header = message_header(ratchet_pub, pn, n)
    ct = aead_encrypt(key, nonce, plaintext, message_ad(session_ad_, direction, header))
    return build_message_envelope(ratchet_pub, pn, n, ct)


def decrypt_message(mk: bytes, session_ad_: bytes, direction: int, envelope: bytes) -> bytes:
    env = parse_message_envelope(envelope)
    key, nonce = message_key_material(mk)
    return aead_decrypt(key, nonce, env.ct, message_ad(session_ad_, direction, env.header))


@dataclass
class Ratchet:
    """A minimal Double Ratchet (§4.1-4.3) for in-order messages: no skipped keys, no limits."""

    session_ad: bytes
    direction: int  # of the messages we send
    rk: bytes
    ratchet_sk: bytes
    their_ratchet_pub: bytes | None = None
    cks: bytes | None = None
    ckr: bytes | None = None
    ns: int = 0
    nr: int = 0
    pn: int = 0
    history: list[dict[str, bytes]] = field(default_factory=list)

    @classmethod
    def initiator(cls, session_ad_: bytes, sk: bytes, spk_b_pub: bytes, ratchet_sk: bytes):
        """RatchetInitAlice with the fresh ratchet private key ``ratchet_sk``."""
        rk, cks = kdf_rk(sk, dh(ratchet_sk, spk_b_pub))
        return cls(session_ad_, DIRECTION_INITIATOR, rk, ratchet_sk, spk_b_pub, cks)

    @classmethod
    def responder(cls, session_ad_: bytes, sk: bytes, spk_b: bytes):
        """RatchetInitBob: the SPK pair is the ratchet pair, ``RK = SK``."""
        return cls(session_ad_, DIRECTION_RESPONDER, sk, spk_b)

    def encrypt(self, plaintext: bytes, new_ratchet_sk: bytes | None = None) -> bytes:
        """Encrypt the next message; the first one after a DH step on receipt starts
        the sending chain with the fresh ratchet key ``new_ratchet_sk``."""
        if self.cks is None:
            if self.their_ratchet_pub is None or new_ratchet_sk is None:
                raise ValueError("no sending chain yet")
            self.ratchet_sk = new_ratchet_sk
            self.rk, self.cks = kdf_rk(self.rk, dh(new_ratchet_sk, self.their_ratchet_pub))
            self.pn, self.ns = self.ns, 0
        mk, self.cks = kdf_ck(self.cks)
        envelope = encrypt_message(
            mk,
            self.session_ad,
            self.direction,
            x25519_pub(self.ratchet_sk),
            self.pn,
            self.ns,
            plaintext,
        )
        self.ns += 1
        return envelope

    def decrypt(self, envelope: bytes) -> bytes:
        """Decrypt the next in-order message. A new ratchet key is a DH step on receipt:
        ``RK, CKr = KDF_RK(RK, DH(our key, theirs))``; the sending chain waits for the
        next encrypt (§4.3)."""
        env = parse_message_envelope(envelope)
        peer_direction = DIRECTION_RESPONDER + DIRECTION_INITIATOR - self.direction
        rk, ckr, nr = self.rk, self.ckr, self.nr
        stepped = env.ratchet_pub != self.their_ratchet_pub or ckr is None
        if stepped:
            rk, ckr = kdf_rk(rk, dh(self.ratchet_sk, env.ratchet_pub))
            nr = 0
        assert ckr is not None
        for _ in range(env.n - nr):
            _, ckr = kdf_ck(ckr)
        mk, ckr = kdf_ck(ckr)
        plaintext = decrypt_message(mk, self.session_ad, peer_direction, envelope)
        self.ckr, self.nr = ckr, env.n + 1
        if stepped:
            self.rk, self.their_ratchet_pub, self.cks = rk, env.ratchet_pub, None
        return plaintext


# --- §5.2 pre-key envelope ---------------------------------------------------------------


@dataclass(frozen=True)
class PreKeyEnvelope:
    suite: int
    user_id: str
    device_id: int
    ik_a: bytes
    ek_a: bytes
    spk_id: int
    opk_id: int | None
    kem_id: int | None
    kem_ct: bytes | None
    message: bytes


def build_prekey_envelope(env: PreKeyEnvelope) -> bytes:
    uid = env.user_id.encode("ascii")
    flags = 1 if env.opk_id is not None else 0
    out = struct.pack(">BBBBB", PROTOCOL_VERSION, TYPE_PREKEY, env.suite, flags, len(uid)) + uid
    out += struct.pack(">I", env.device_id) + env.ik_a + env.ek_a + struct.pack(">I", env.spk_id)
    if env.opk_id is not None:
        out += struct.pack(">I", env.opk_id)
    if env.suite == SUITE_PQXDH:
        assert env.kem_id is not None and env.kem_ct is not None
        out += struct.pack(">I", env.kem_id) + env.kem_ct
    return out + struct.pack(">I", len(env.message)) + env.message


def parse_prekey_envelope(data: bytes) -> PreKeyEnvelope:
    version, kind, suite, flags, uid_len = struct.unpack(">BBBBB", data[:5])
    if version != PROTOCOL_VERSION or kind != TYPE_PREKEY or suite not in (1, 2) or flags & ~1:
        raise ValueError("not a v1 pre-key envelope")
    pos = 5
    user_id = data[pos : pos + uid_len].decode("ascii")
    pos += uid_len
    (device_id,) = struct.unpack(">I", data[pos : pos + 4])
    ik_a, ek_a = data[pos + 4 : pos + 36], data[pos + 36 : pos + 68]
    (spk_id,) = struct.unpack(">I", data[pos + 68 : pos + 72])
    pos += 72
    opk_id = kem_id = kem_ct = None
    if flags & 1:
        (opk_id,) = struct.unpack(">I", data[pos : pos + 4])
        pos += 4
    if suite == SUITE_PQXDH:
        (kem_id,) = struct.unpack(">I", data[pos : pos + 4])
        kem_ct = data[pos + 4 : pos + 4 + KEM_CT_LEN]
        pos += 4 + KEM_CT_LEN
    (msg_len,) = struct.unpack(">I", data[pos : pos + 4])
    message = data[pos + 4 :]
    if msg_len != len(message):
        raise ValueError("bad msg_len")
    return PreKeyEnvelope(
        suite, user_id, device_id, ik_a, ek_a, spk_id, opk_id, kem_id, kem_ct, message
    )


# --- §6 inner payload --------------------------------------------------------------------


PAYLOAD_TEXT, PAYLOAD_BYTES = 1, 2
PAYLOAD_FIELDS = {
    3: ("destination_user", "original_id", "original_type", "original_body"),
    4: ("client_msg_id", "device_id", "ratchet_pub", "counter"),
    5: ("version",),
    6: ("blob_id", "key", "digest", "size"),
}
"""The map bodies of §6, their fields in key order 0, 1, ..."""


def payload_body(msg_type: int, body: object) -> object:
    """The CBOR value of a body: text and bytes as themselves, the others as maps built
    from their fields (a dict by the names of :data:`PAYLOAD_FIELDS`)."""
    if msg_type in (PAYLOAD_TEXT, PAYLOAD_BYTES):
        return body
    assert isinstance(body, dict)
    return {i: body[name] for i, name in enumerate(PAYLOAD_FIELDS[msg_type])}


def encode_payload(msg_type: int, client_msg_id: bytes, sender_ts_ms: int, body: object) -> bytes:
    """The padded payload: the smallest zero padding making the encoding a multiple of 160."""
    pad = 0
    while True:
        out = cbor({0: 1, 1: msg_type, 2: client_msg_id, 3: sender_ts_ms, 4: body, 5: bytes(pad)})
        if len(out) % PADDING_BLOCK == 0:
            return out
        pad += 1


def decode_payload(data: bytes) -> dict[int, object]:
    value = cbor_decode(data)
    if not isinstance(value, dict) or sorted(value) != [0, 1, 2, 3, 4, 5] or value[0] != 1:
        raise ValueError("not a v1 payload")
    if len(data) % PADDING_BLOCK or value[5] != bytes(len(value[5])):  # type: ignore[arg-type]
        raise ValueError("bad padding")
    return value


# --- §7 safety numbers -------------------------------------------------------------------


def fingerprint(user_id: str, master_pk: bytes) -> bytes:
    """The iterated 64-byte hash ``h`` of one side."""
    key = b"\x45" + master_pk
    h = struct.pack(">H", 1) + key + user_id.encode("ascii")
    for _ in range(5200):
        h = hashlib.sha512(h + key).digest()
    return h


def digits(h: bytes) -> str:
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(local: tuple[str, bytes], remote: tuple[str, bytes]) -> str:
    """The 60 digits shown; ``local``/``remote`` are ``(user_id, master_pk)``."""
    a, b = digits(fingerprint(*local)), digits(fingerprint(*remote))
    return min(a, b) + max(a, b)


def qr_payload(local: tuple[str, bytes], remote: tuple[str, bytes]) -> bytes:
    return cbor({0: 1, 1: fingerprint(*local)[:32], 2: fingerprint(*remote)[:32]})
