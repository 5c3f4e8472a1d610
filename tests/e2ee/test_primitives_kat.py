"""Known-answer and error-path tests of :mod:`e2ee.primitives`.

Vectors come from the RFCs named on each test (RFC 7748, RFC 8032, RFC 5869, RFC 4231,
RFC 7693, FIPS 180-4). Together with the typed-error tests below, this file alone
drives every line and branch of ``e2ee/primitives.py``.
"""

from __future__ import annotations

import datetime

import nacl.bindings
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from e2ee import primitives
from e2ee.errors import (
    BadSignature,
    DecodeError,
    DecryptionError,
    E2EEError,
    InvalidArgument,
    InvalidKey,
    LowOrderPoint,
)

_P = 2**255 - 19


def h(hex_string: str) -> bytes:
    return bytes.fromhex(hex_string)


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


# --- RFC 7748: X25519 -------------------------------------------------------------------

# Section 5.2: (scalar, input u-coordinate, output u-coordinate).
RFC7748_SCALARMULT = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
RFC7748_ITER_1 = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
RFC7748_ITER_1000 = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"

# Section 6.1.
ALICE_PRIVATE = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED_SECRET = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# The canonical u-coordinates of the points of small order (orders 1/2, 4 and 8).
X25519_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",  # u = 0
    "0100000000000000000000000000000000000000000000000000000000000000",  # u = 1
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # u = p - 1
]


@pytest.mark.parametrize(("scalar", "u", "expected"), RFC7748_SCALARMULT)
def test_x25519_rfc7748_scalarmult(scalar: str, u: str, expected: str) -> None:
    assert primitives.x25519(h(scalar), h(u)) == h(expected)
    # The second input u has its top bit set: x25519 masks it (RFC 7748 section 5), but
    # the decode-time check refuses such a key as non-canonical.
    if h(u)[31] & 0x80:
        with pytest.raises(InvalidKey):
            primitives.x25519_validate_public(h(u))


def test_x25519_rfc7748_iterations() -> None:
    k = u = (9).to_bytes(32, "little")
    for iteration in range(1, 1001):
        k, u = primitives.x25519(k, u), k
        if iteration == 1:
            assert k == h(RFC7748_ITER_1)
    assert k == h(RFC7748_ITER_1000)


def test_x25519_rfc7748_diffie_hellman() -> None:
    assert primitives.x25519_public_from_private(ALICE_PRIVATE) == ALICE_PUBLIC
    assert primitives.x25519_public_from_private(BOB_PRIVATE) == BOB_PUBLIC
    assert primitives.x25519(ALICE_PRIVATE, BOB_PUBLIC) == SHARED_SECRET
    assert primitives.x25519(BOB_PRIVATE, ALICE_PUBLIC) == SHARED_SECRET


def test_x25519_wrong_lengths() -> None:
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(InvalidArgument):
            primitives.x25519_public_from_private(bad)
        with pytest.raises(InvalidArgument):
            primitives.x25519(bad, BOB_PUBLIC)
        with pytest.raises(InvalidArgument):
            primitives.x25519(ALICE_PRIVATE, bad)


@pytest.mark.parametrize("u", X25519_SMALL_ORDER)
def test_x25519_small_order_public_keys(u: str) -> None:
    with pytest.raises(InvalidKey):
        primitives.x25519_validate_public(h(u))
    # libsodium refuses the same keys at DH time; never a bare nacl RuntimeError.
    with pytest.raises(LowOrderPoint):
        primitives.x25519(ALICE_PRIVATE, h(u))


def test_x25519_validate_public() -> None:
    assert primitives.x25519_validate_public(ALICE_PUBLIC) == ALICE_PUBLIC
    assert primitives.x25519_validate_public(BOB_PUBLIC) == BOB_PUBLIC
    top_bit = ALICE_PUBLIC[:31] + bytes((ALICE_PUBLIC[31] | 0x80,))
    non_canonical = [
        top_bit,
        _P.to_bytes(32, "little"),
        (_P + 1).to_bytes(32, "little"),
        (2**256 - 1).to_bytes(32, "little"),
    ]
    for key in non_canonical:
        with pytest.raises(InvalidKey):
            primitives.x25519_validate_public(key)
    for bad_length in (b"", bytes(31), ALICE_PUBLIC + b"\x00"):
        with pytest.raises(InvalidKey):
            primitives.x25519_validate_public(bad_length)


# --- RFC 8032: Ed25519 ------------------------------------------------------------------

RFC8032_TEST_1024_MESSAGE = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98"
    "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8"
    "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
    "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc"
    "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
    "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
    "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
    "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7"
    "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
    "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
    "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24"
    "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
    "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc"
    "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
    "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a"
    "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e"
    "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
    "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c"
    "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
    "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08"
    "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649"
    "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
    "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
    "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e"
    "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
    "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
    "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1"
    "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c"
    "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0"
)

# Section 7.1: (name, seed, public key, message, signature).
RFC8032_VECTORS = [
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        RFC8032_TEST_1024_MESSAGE,
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]

# The eight points of small order on edwards25519 (the torsion subgroup), as encoded
# by libsodium's blocklist: identity, order 2, order 4 (and its "negative zero"
# encoding), and the order-8 points.
ED25519_SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
]
ED25519_ORDER_8_POINT = h("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")


@pytest.mark.parametrize(
    ("seed", "public_key", "message", "signature"),
    [vector[1:] for vector in RFC8032_VECTORS],
    ids=[vector[0] for vector in RFC8032_VECTORS],
)
def test_ed25519_rfc8032(seed: str, public_key: str, message: str, signature: str) -> None:
    msg = h(message)
    public, secret = primitives.ed25519_keypair_from_seed(h(seed))
    assert public == h(public_key)
    assert primitives.ed25519_public_from_seed(h(seed)) == public
    assert primitives.ed25519_validate_public(public) == public
    sig = primitives.ed25519_sign(secret, msg)
    assert sig == h(signature)
    primitives.ed25519_verify(public, msg, sig)
    # One flipped bit anywhere (R, S, message, key) must fail with BadSignature.
    for index in (0, 31, 32, 63):
        with pytest.raises(BadSignature):
            primitives.ed25519_verify(public, msg, flip_bit(sig, index))
    with pytest.raises(BadSignature):
        primitives.ed25519_verify(public, msg + b"\x00", sig)
    if msg:
        with pytest.raises(BadSignature):
            primitives.ed25519_verify(public, flip_bit(msg, len(msg) - 1, 7), sig)
    with pytest.raises(BadSignature):
        primitives.ed25519_verify(flip_bit(public, 0), msg, sig)


def test_ed25519_wrong_lengths() -> None:
    public, secret = primitives.ed25519_keypair_from_seed(bytes(32))
    sig = primitives.ed25519_sign(secret, b"m")
    for bad_seed in (b"", bytes(31), bytes(33), bytes(64)):
        with pytest.raises(InvalidArgument):
            primitives.ed25519_keypair_from_seed(bad_seed)
        with pytest.raises(InvalidArgument):
            primitives.ed25519_public_from_seed(bad_seed)
    for bad_secret in (bytes(32), bytes(63), secret + b"\x00"):
        with pytest.raises(InvalidArgument):
            primitives.ed25519_sign(bad_secret, b"m")
    for bad_key in (b"", public[:31], public + b"\x00"):
        with pytest.raises(InvalidKey):
            primitives.ed25519_validate_public(bad_key)
        with pytest.raises(InvalidKey):
            primitives.ed25519_verify(bad_key, b"m", sig)
    for bad_sig in (b"", sig[:63], sig + b"\x00"):
        with pytest.raises(BadSignature):
            primitives.ed25519_verify(public, b"m", bad_sig)


@pytest.mark.parametrize("point", ED25519_SMALL_ORDER)
def test_ed25519_validate_refuses_small_order(point: str) -> None:
    with pytest.raises(InvalidKey):
        primitives.ed25519_validate_public(h(point))


def test_ed25519_validate_refuses_mixed_order_and_non_canonical() -> None:
    public = primitives.ed25519_public_from_seed(h(RFC8032_VECTORS[0][1]))
    mixed = nacl.bindings.crypto_core_ed25519_add(public, ED25519_ORDER_8_POINT)
    assert mixed != public
    with pytest.raises(InvalidKey):
        primitives.ed25519_validate_public(mixed)
    # y = p and y = p + 1: non-canonical encodings of small-order points.
    for y in (_P, _P + 1):
        with pytest.raises(InvalidKey):
            primitives.ed25519_validate_public(y.to_bytes(32, "little"))
    # y = 2 is not the y-coordinate of any point on the curve.
    with pytest.raises(InvalidKey):
        primitives.ed25519_validate_public((2).to_bytes(32, "little"))


# --- RFC 5869 (HKDF) and RFC 4231 (HMAC) -----------------------------------------------

RFC5869_CASES = [
    (  # Test Case 1
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (  # Test Case 2: longer inputs and outputs
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (  # Test Case 3: zero-length salt and info
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]

RFC4231_CASES = [
    (  # Test Case 1
        "0b" * 20,
        b"Hi There".hex(),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (  # Test Case 2
        b"Jefe".hex(),
        b"what do ya want for nothing?".hex(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (  # Test Case 3
        "aa" * 20,
        "dd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
    ),
    (  # Test Case 4
        bytes(range(1, 26)).hex(),
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
    ),
    (  # Test Case 6
        "aa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ),
    (  # Test Case 7
        "aa" * 131,
        (
            b"This is a test using a larger than block-size key and a larger than "
            b"block-size data. The key needs to be hashed before being used by the "
            b"HMAC algorithm."
        ).hex(),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869_CASES)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    assert primitives.hkdf_sha256(h(ikm), salt=h(salt), info=h(info), length=length) == h(okm)


def test_hkdf_lengths() -> None:
    ikm = b"input keying material"
    full = primitives.hkdf_sha256(ikm, salt=b"s", info=b"i", length=255 * 32)
    assert len(full) == 255 * 32
    for length in (1, 31, 32, 33, 64, 65):
        # Every output is a prefix of the longest one (one-block fast path included).
        assert primitives.hkdf_sha256(ikm, salt=b"s", info=b"i", length=length) == full[:length]
    # An empty salt is the same as HashLen zero bytes (RFC 5869 section 2.2).
    assert primitives.hkdf_sha256(ikm, salt=b"", info=b"", length=40) == primitives.hkdf_sha256(
        ikm, salt=bytes(32), info=b"", length=40
    )
    for bad in (0, -1, 255 * 32 + 1):
        with pytest.raises(InvalidArgument):
            primitives.hkdf_sha256(ikm, salt=b"s", info=b"i", length=bad)


@pytest.mark.parametrize(("key", "data", "mac"), RFC4231_CASES)
def test_hmac_sha256_rfc4231(key: str, data: str, mac: str) -> None:
    assert primitives.hmac_sha256(h(key), h(data)) == h(mac)


# --- hashes, BLAKE2b and constant-time comparison ------------------------------------


def test_sha2_fips180_abc() -> None:
    assert primitives.sha256(b"abc") == h(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert primitives.sha512(b"abc") == h(RFC8032_VECTORS[4][3])


def test_blake2b_rfc7693_abc() -> None:
    expected = h(
        "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
        "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
    )
    assert primitives.blake2b(b"abc", digest_size=64) == expected


# libsodium advertises crypto_generichash_KEYBYTES_MIN = 16, but that is only a
# recommendation: crypto_generichash (and PyNaCl's binding) accept any key of 0..64
# bytes, empty meaning unkeyed. So keys are drawn over the whole 0..64 range.
# (PyNaCl exports no plain ``crypto_generichash``; its one-shot BLAKE2b binding is
# crypto_generichash_blake2b_salt_personal(data, digest_size=, key=, salt=, person=).)
@settings(database=None, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=2000),
    key=st.binary(min_size=0, max_size=nacl.bindings.crypto_generichash_KEYBYTES_MAX),
    digest_size=st.integers(
        min_value=nacl.bindings.crypto_generichash_BYTES_MIN,
        max_value=nacl.bindings.crypto_generichash_BYTES_MAX,
    ),
)
def test_blake2b_matches_libsodium(data: bytes, key: bytes, digest_size: int) -> None:
    expected = nacl.bindings.crypto_generichash_blake2b_salt_personal(
        data, digest_size=digest_size, key=key
    )
    assert primitives.blake2b(data, key=key, digest_size=digest_size) == expected


def test_blake2b_limits() -> None:
    assert nacl.bindings.crypto_generichash_KEYBYTES_MIN == 16
    assert nacl.bindings.crypto_generichash_KEYBYTES_MAX == 64
    assert len(primitives.blake2b(b"")) == 32
    assert len(primitives.blake2b(b"", key=bytes(64), digest_size=1)) == 1
    for kwargs in ({"key": bytes(65)}, {"digest_size": 0}, {"digest_size": 65}):
        with pytest.raises(InvalidArgument):
            primitives.blake2b(b"data", **kwargs)


def test_constant_time_equal() -> None:
    assert primitives.constant_time_equal(b"abc", b"abc")
    assert primitives.constant_time_equal(b"", b"")
    assert not primitives.constant_time_equal(b"abc", b"abd")
    assert not primitives.constant_time_equal(b"abc", b"ab")


def test_default_rng() -> None:
    assert len(primitives.default_rng(24)) == 24
    assert primitives.default_rng(32) != primitives.default_rng(32)


# --- XChaCha20-Poly1305 -----------------------------------------------------------------


def test_aead_round_trip_and_tamper() -> None:
    key, nonce, aad = bytes(range(32)), bytes(range(24)), b"header"
    for plaintext in (b"", b"x", b"attack at dawn" * 10):
        sealed = primitives.aead_encrypt(key, nonce, plaintext, aad)
        assert len(sealed) == len(plaintext) + primitives.AEAD_TAG_SIZE
        assert primitives.aead_decrypt(key, nonce, sealed, aad) == plaintext
        for index in (0, len(sealed) - 1):
            with pytest.raises(DecryptionError):
                primitives.aead_decrypt(key, nonce, flip_bit(sealed, index), aad)
        with pytest.raises(DecryptionError):
            primitives.aead_decrypt(key, nonce, sealed, aad + b"!")
        with pytest.raises(DecryptionError):
            primitives.aead_decrypt(flip_bit(key, 0), nonce, sealed, aad)
        with pytest.raises(DecryptionError):
            primitives.aead_decrypt(key, flip_bit(nonce, 23), sealed, aad)
    for short in (b"", bytes(15)):
        with pytest.raises(DecryptionError):
            primitives.aead_decrypt(key, nonce, short, aad)


def test_aead_wrong_sizes() -> None:
    key, nonce = bytes(32), bytes(24)
    for bad_key, bad_nonce in ((bytes(31), nonce), (bytes(33), nonce), (key, bytes(12))):
        with pytest.raises(InvalidArgument):
            primitives.aead_encrypt(bad_key, bad_nonce, b"m", b"")
        with pytest.raises(InvalidArgument):
            primitives.aead_decrypt(bad_key, bad_nonce, bytes(32), b"")


# --- ML-KEM-768 -------------------------------------------------------------------------


def test_mlkem768_round_trip() -> None:
    seed = bytes(range(64))
    public = primitives.mlkem768_public_from_seed(seed)
    assert len(public) == primitives.MLKEM768_PUBLIC_KEY_SIZE
    assert primitives.mlkem768_public_from_seed(seed) == public
    assert primitives.mlkem768_validate_public(public) == public
    shared, ciphertext = primitives.mlkem768_encapsulate(public)
    assert len(shared) == primitives.MLKEM768_SHARED_SECRET_SIZE
    assert len(ciphertext) == primitives.MLKEM768_CIPHERTEXT_SIZE
    assert primitives.mlkem768_decapsulate(seed, ciphertext) == shared
    # Implicit rejection: a tampered ciphertext decapsulates to another secret.
    rejected = primitives.mlkem768_decapsulate(seed, flip_bit(ciphertext, 0))
    assert len(rejected) == 32
    assert rejected != shared
    # Another seed's key cannot decapsulate it either.
    assert primitives.mlkem768_decapsulate(bytes(64), ciphertext) != shared


def test_mlkem768_invalid_arguments() -> None:
    seed = bytes(range(64))
    public = primitives.mlkem768_public_from_seed(seed)
    _, ciphertext = primitives.mlkem768_encapsulate(public)
    for bad_seed in (b"", bytes(32), bytes(63), bytes(65)):
        with pytest.raises(InvalidArgument):
            primitives.mlkem768_public_from_seed(bad_seed)
        with pytest.raises(InvalidArgument):
            primitives.mlkem768_decapsulate(bad_seed, ciphertext)
    for bad_ct in (b"", ciphertext[:-1], ciphertext + b"\x00"):
        with pytest.raises(InvalidKey):
            primitives.mlkem768_decapsulate(seed, bad_ct)
        with pytest.raises(DecodeError):  # documented as DecodeError; InvalidKey is one
            primitives.mlkem768_decapsulate(seed, bad_ct)
    # A coefficient of 0xfff >= q = 3329 fails the FIPS 203 modulus check.
    unreduced = b"\xff\xff\xff" + public[3:]
    for bad_key in (b"", public[:-1], public + b"\x00", unreduced):
        with pytest.raises(InvalidKey):
            primitives.mlkem768_validate_public(bad_key)
        with pytest.raises(InvalidKey):
            primitives.mlkem768_encapsulate(bad_key)


# --- Argon2id ---------------------------------------------------------------------------


def _argon2id_min(password: bytes, salt: bytes, length: int = 32) -> bytes:
    return primitives.argon2id(
        password,
        salt=salt,
        opslimit=primitives.ARGON2ID_OPSLIMIT_MIN,
        memlimit=primitives.ARGON2ID_MEMLIMIT_MIN,
        length=length,
    )


def test_argon2id_minimum_limits_deterministic() -> None:
    salt = bytes(range(16))
    first = _argon2id_min(b"correct horse", salt)
    assert len(first) == 32
    assert _argon2id_min(b"correct horse", salt) == first
    assert _argon2id_min(b"correct horse", flip_bit(salt, 0)) != first
    assert _argon2id_min(b"correct horsf", salt) != first
    assert len(_argon2id_min(b"", salt, length=16)) == 16
    assert len(_argon2id_min(b"", salt, length=64)) == 64


def test_argon2id_invalid_parameters() -> None:
    salt = bytes(16)
    ops_min, mem_min = primitives.ARGON2ID_OPSLIMIT_MIN, primitives.ARGON2ID_MEMLIMIT_MIN
    for bad_salt in (b"", bytes(15), bytes(17)):
        with pytest.raises(InvalidArgument):
            primitives.argon2id(b"pw", salt=bad_salt, opslimit=ops_min, memlimit=mem_min)
    bad_limits = [
        (ops_min - 1, mem_min, 32),
        (ops_min, mem_min - 1, 32),
        (ops_min, mem_min, 15),
        # Above libsodium's maxima: refused here, not by PyNaCl's untyped ValueError.
        (nacl.bindings.crypto_pwhash_argon2id_OPSLIMIT_MAX + 1, mem_min, 32),
        (ops_min, nacl.bindings.crypto_pwhash_argon2id_MEMLIMIT_MAX + 1, 32),
        (ops_min, mem_min, nacl.bindings.crypto_pwhash_BYTES_MAX + 1),
    ]
    for opslimit, memlimit, length in bad_limits:
        with pytest.raises(InvalidArgument):
            primitives.argon2id(
                b"pw", salt=salt, opslimit=opslimit, memlimit=memlimit, length=length
            )


# --- certificates -----------------------------------------------------------------------


def _self_signed_der(
    private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    algorithm = None if isinstance(private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(private_key, algorithm)
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def test_spki_sha256_of_self_signed_ed25519_certificate() -> None:
    private_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    cert_der = _self_signed_der(private_key)
    spki_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert primitives.spki_sha256(cert_der) == primitives.sha256(spki_der)
    # The pin depends on the key only: another certificate for another key differs.
    other = _self_signed_der(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
    assert primitives.spki_sha256(other) != primitives.spki_sha256(cert_der)


def test_spki_sha256_refuses_garbage() -> None:
    cert_der = _self_signed_der(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    for garbage in (b"", b"\x00" * 64, b"not a certificate", cert_der[:-10]):
        with pytest.raises(InvalidKey):
            primitives.spki_sha256(garbage)


def test_spki_sha256_refuses_undecodable_public_key() -> None:
    # Parseable certificates whose key cannot be loaded: an unknown key algorithm
    # (UnsupportedAlgorithm from cryptography) and an EC point off the curve (ValueError).
    # Both must surface as InvalidKey, never as a bare library exception.
    ed_der = _self_signed_der(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    oid_ed25519 = h("06032b6570")  # OBJECT IDENTIFIER 1.3.101.112
    spki_oid_at = ed_der.index(oid_ed25519, ed_der.index(oid_ed25519) + 1)
    unknown_algorithm = ed_der[:spki_oid_at] + h("06032b6563") + ed_der[spki_oid_at + 5 :]
    ec_key = ec.derive_private_key(12345, ec.SECP256R1())
    ec_der = _self_signed_der(ec_key)
    point = ec_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    off_curve = ec_der.replace(point, flip_bit(point, len(point) - 1))
    assert primitives.spki_sha256(ec_der)  # the unmodified certificate is fine
    for cert_der in (unknown_algorithm, off_curve):
        with pytest.raises(InvalidKey):
            primitives.spki_sha256(cert_der)


# --- the error contract -----------------------------------------------------------------


def test_typed_errors_are_e2ee_errors() -> None:
    for error in (BadSignature, DecryptionError, InvalidArgument, InvalidKey, LowOrderPoint):
        assert issubclass(error, E2EEError)
    # InvalidArgument stays a ValueError for callers that catch that.
    assert issubclass(InvalidArgument, ValueError)
