"""Share links in the core (DESIGN 4.7; docs/protocol.md 11.1; ``e2ee/share.py``): the link
URL, auth codes, the key and proof derivation (a known answer computed independently),
and the sealed blob with its authenticated expiry and view limit.

Argon2id runs with the pinned cost (3 passes, 64 MiB, about 0.1 s): the derivations
with a code are few and shared through module fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import nacl.bindings as sodium
import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee.errors import (
    DecodeError,
    DecryptionError,
    InvalidArgument,
    LimitExceeded,
    UnsupportedVersion,
)
from e2ee.share import (
    AUTH_CODE_LENGTH,
    MAX_AUTH_CODE_LENGTH,
    MAX_SHARE_BLOB_SIZE,
    MAX_SHARE_PLAINTEXT,
    MAX_SHARE_URL_LENGTH,
    MAX_SHARE_VIEWS,
    MIN_AUTH_CODE_LENGTH,
    SHARE_AD_PREFIX,
    SHARE_BLOB_OVERHEAD,
    SHARE_HEADER_SIZE,
    SHARE_VERSION,
    BadShareLink,
    InvalidAuthCode,
    MalformedShare,
    OpenedShare,
    ShareExpired,
    ShareKeys,
    ShareLink,
    ShareTampered,
    decode_share_id,
    derive_share_keys,
    encode_share_id,
    generate_auth_code,
    normalize_auth_code,
    open_share,
    seal_share,
)
from tests.hypothesis_profiles import DECODER_SETTINGS

from .helpers import NOW, seeded_rng

CODE = "ABCDEFGH"
EXPIRES = NOW + 300_000
PLAINTEXT = b"name: Alice; blood type: 0+"

# The known answer: fixed id and link key, with and without the code "abcd-efgh".
KAT_ID = bytes(range(16))
KAT_LINK_KEY = bytes(range(0x20, 0x40))
KAT = {
    None: (
        "59d3a2c2441b6bf19a6a990b260e0b7232850f7bb92d00735581086d3da75980",
        "bbe186e10be1888ecdc2fcfd878b0096348a4e71b1c343a4bead1864c01af2ca",
    ),
    "abcd-efgh": (
        "6ff4e24f1336ba152710ef93811e710d94e8a59ba78a42c5150b2dcc7bac6456",
        "fed35ff7199c03faec4d23755c0b7e83f0145452a6a767cde21e7898bf22e214",
    ),
}


def _independent_keys(share_id: bytes, link_key: bytes, code: bytes | None) -> tuple[bytes, bytes]:
    """The derivation of docs/protocol.md 11.1 with hashlib, hmac and nacl.bindings only."""
    ikm = link_key
    if code is not None:
        ikm += sodium.crypto_pwhash_alg(
            32, code, share_id, 3, 64 * 1024 * 1024, sodium.crypto_pwhash_ALG_ARGON2ID13
        )

    def hkdf(info: bytes) -> bytes:  # RFC 5869, empty salt = 32 zero bytes, one block
        prk = hmac.new(bytes(32), ikm, "sha256").digest()
        return hmac.new(prk, info + b"\x01", "sha256").digest()

    key = hkdf(b"e2ee/v1/share-key")
    proof = hashlib.blake2b(share_id, key=hkdf(b"e2ee/v1/share-proof"), digest_size=32).digest()
    return key, proof


def _independent_seal(key: bytes, share_id: bytes, header: bytes, nonce: bytes, pt: bytes) -> bytes:
    ad = b"e2ee/v1/share" + share_id + header
    return header + nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, ad, nonce, key)


@pytest.fixture(scope="module")
def link() -> ShareLink:
    return ShareLink.generate("wss://relay.example.com", seeded_rng(60))


@pytest.fixture(scope="module")
def coded(link: ShareLink) -> ShareKeys:
    return link.derive_keys(CODE)


@pytest.fixture(scope="module")
def plain(link: ShareLink) -> ShareKeys:
    return link.derive_keys()


@pytest.fixture(scope="module")
def blob(coded: ShareKeys) -> bytes:
    return seal_share(coded, PLAINTEXT, expires_at_ms=EXPIRES, max_views=3, rng=seeded_rng(61))


# --- key and proof derivation --------------------------------------------------------------


@pytest.mark.parametrize("code", [None, "abcd-efgh"])
def test_known_answer(code: str | None) -> None:
    expected_key, expected_proof = (bytes.fromhex(h) for h in KAT[code])
    independent_code = None if code is None else code.replace("-", "").upper().encode()
    # The pinned answer is what an independent implementation computes...
    assert _independent_keys(KAT_ID, KAT_LINK_KEY, independent_code) == (
        expected_key,
        expected_proof,
    )
    # ...and what the module computes: the proof directly, the key through the blob
    # format (an independently sealed blob opens; a module-sealed one decrypts).
    keys = derive_share_keys(KAT_ID, KAT_LINK_KEY, code)
    assert keys.proof == expected_proof
    assert keys.proof_hash == hashlib.sha256(expected_proof).digest()
    header = bytes([1]) + EXPIRES.to_bytes(8, "big") + (7).to_bytes(4, "big")
    nonce = bytes(range(100, 124))
    sealed = _independent_seal(expected_key, KAT_ID, header, nonce, PLAINTEXT)
    assert open_share(keys, sealed, now_ms=NOW) == OpenedShare(PLAINTEXT, EXPIRES, 7)
    ours = seal_share(keys, PLAINTEXT, expires_at_ms=EXPIRES, max_views=7, rng=lambda n: nonce)
    assert ours == sealed


def test_code_is_normalized_before_argon2id(link: ShareLink, coded: ShareKeys) -> None:
    assert link.derive_keys(" abcd-EFGH ") == coded


def test_keys_differ_by_code_and_link(link: ShareLink, coded: ShareKeys, plain: ShareKeys) -> None:
    assert coded != plain and coded.proof != plain.proof
    other = ShareLink.generate("wss://relay.example.com", seeded_rng(62)).derive_keys()
    assert other != plain and other.proof != plain.proof
    assert link.derive_keys() == plain  # deterministic
    assert plain.share_id == coded.share_id == link.share_id


def test_derive_refuses_bad_inputs() -> None:
    with pytest.raises(InvalidArgument):
        derive_share_keys(bytes(15), bytes(32))
    with pytest.raises(InvalidArgument):
        derive_share_keys(bytes(16), bytes(31))
    with pytest.raises(InvalidAuthCode):  # "" is refused, never taken as "no code"
        derive_share_keys(bytes(16), bytes(32), "")
    with pytest.raises(InvalidArgument):
        ShareKeys(bytes(16), bytes(32), bytes(31))


def test_share_keys_hide_secrets(coded: ShareKeys, plain: ShareKeys) -> None:
    text = repr(coded)
    assert coded.proof.hex() not in text and coded._key.hex() not in text
    assert encode_share_id(coded.share_id) in text
    assert coded.__eq__(object()) is NotImplemented
    assert len({coded, plain}) == 2 and hash(coded) == hash(plain)


# --- auth codes -----------------------------------------------------------------------------


def test_generated_codes() -> None:
    code = generate_auth_code(seeded_rng(1))
    assert len(code) == AUTH_CODE_LENGTH == 8
    assert set(code) <= set(string.ascii_uppercase + "234567")
    assert normalize_auth_code(code) == code
    # 5 random bits per character, straight from the rng (RFC 4648 order)
    assert generate_auth_code(bytes) == "AAAAAAAA"
    assert generate_auth_code(lambda n: b"\xff" * n) == "77777777"
    assert generate_auth_code(seeded_rng(1)) == base64.b32encode(seeded_rng(1)(5)).decode()
    for length in (MIN_AUTH_CODE_LENGTH, 9, 13, MAX_AUTH_CODE_LENGTH):
        assert len(generate_auth_code(seeded_rng(length), length=length)) == length
    assert len({generate_auth_code(seeded_rng(i)) for i in range(200)}) == 200


@pytest.mark.parametrize("length", [MIN_AUTH_CODE_LENGTH - 1, MAX_AUTH_CODE_LENGTH + 1, 0, True])
def test_generated_code_length_bounds(length: int) -> None:
    with pytest.raises(InvalidArgument):
        generate_auth_code(seeded_rng(1), length=length)


@pytest.mark.parametrize(
    ("given_code", "normalized"),
    [
        ("ABCDEFGH", "ABCDEFGH"),
        ("abcd-efgh", "ABCDEFGH"),
        ("  ab cd - ef gh  ", "ABCDEFGH"),
        ("1234", "1234"),
        ("p@ss!", "P@SS!"),
        ("x" * MAX_AUTH_CODE_LENGTH, "X" * MAX_AUTH_CODE_LENGTH),
    ],
)
def test_normalize(given_code: str, normalized: str) -> None:
    assert normalize_auth_code(given_code) == normalized


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " - - ",
        "abc\tdef",
        "zq9x\n",
        "pässword",
        "\u00a0abc",
        "x" * (MAX_AUTH_CODE_LENGTH + 1),
        " " * 1000 + "x",
        b"ABCDEFGH",
    ],
)
def test_normalize_refuses(bad: object) -> None:
    with pytest.raises(InvalidAuthCode) as info:
        normalize_auth_code(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, InvalidArgument)
    if isinstance(bad, str) and bad.strip():
        assert bad.strip() not in str(info.value)


# --- the blob ---------------------------------------------------------------------------------


def test_round_trip(coded: ShareKeys, plain: ShareKeys, blob: bytes) -> None:
    opened = open_share(coded, blob, now_ms=NOW)
    assert opened == OpenedShare(PLAINTEXT, EXPIRES, 3)
    assert PLAINTEXT not in blob and PLAINTEXT.hex() not in repr(opened)
    assert len(blob) == SHARE_BLOB_OVERHEAD + len(PLAINTEXT)
    assert blob[:SHARE_HEADER_SIZE] == bytes([SHARE_VERSION]) + EXPIRES.to_bytes(8, "big") + (
        3
    ).to_bytes(4, "big")
    unlimited = seal_share(plain, b"", expires_at_ms=EXPIRES, rng=seeded_rng(3))
    assert unlimited[9:13] == bytes(4)
    assert open_share(plain, unlimited, now_ms=NOW) == OpenedShare(b"", EXPIRES, None)


def test_fresh_nonce_per_seal(plain: ShareKeys) -> None:
    assert seal_share(plain, PLAINTEXT, expires_at_ms=EXPIRES) != seal_share(
        plain, PLAINTEXT, expires_at_ms=EXPIRES
    )


def test_expiry_edge(plain: ShareKeys) -> None:
    sealed = seal_share(plain, PLAINTEXT, expires_at_ms=EXPIRES, rng=seeded_rng(4))
    assert open_share(plain, sealed, now_ms=EXPIRES).plaintext == PLAINTEXT
    with pytest.raises(ShareExpired) as info:
        open_share(plain, sealed, now_ms=EXPIRES + 1)
    assert info.value.expires_at_ms == EXPIRES
    assert isinstance(info.value, DecryptionError)
    assert PLAINTEXT.decode() not in str(info.value)


def test_expiry_is_checked_after_authentication(plain: ShareKeys) -> None:
    sealed = bytearray(seal_share(plain, PLAINTEXT, expires_at_ms=NOW, rng=seeded_rng(5)))
    sealed[-1] ^= 1
    # expired and tampered: the AEAD answers first
    with pytest.raises(ShareTampered):
        open_share(plain, bytes(sealed), now_ms=NOW + 10**9)


def test_wrong_code_and_wrong_link_are_tampered(
    link: ShareLink, coded: ShareKeys, plain: ShareKeys, blob: bytes
) -> None:
    wrong = link.derive_keys("ABCDEFGI")
    assert wrong.proof != coded.proof
    for keys in (wrong, plain):  # a wrong code, or the code left out
        with pytest.raises(ShareTampered) as info:
            open_share(keys, blob, now_ms=NOW)
        assert CODE not in str(info.value)
    other = ShareLink.generate("wss://relay.example.com", seeded_rng(63)).derive_keys()
    with pytest.raises(ShareTampered):
        open_share(other, seal_share(plain, b"x", expires_at_ms=EXPIRES), now_ms=NOW)
    # Same key bytes under another share id: the id is in the AD.
    moved = ShareKeys(bytes(16), plain._key, plain.proof)
    with pytest.raises(ShareTampered):
        open_share(moved, seal_share(plain, b"x", expires_at_ms=EXPIRES), now_ms=NOW)


def test_every_byte_is_authenticated(coded: ShareKeys, blob: bytes) -> None:
    # Header fields (expiry, view limit), nonce, ciphertext and tag: each byte flipped.
    for index in range(1, len(blob)):
        for mask in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= mask
            with pytest.raises(ShareTampered):
                open_share(coded, bytes(tampered), now_ms=NOW)


@pytest.mark.parametrize(
    ("field", "start", "end", "value"),
    [
        ("expires_at_ms", 1, 9, (EXPIRES + 10**9).to_bytes(8, "big")),
        ("max_views", 9, 13, bytes(4)),  # "no limit" instead of 3
        ("max_views", 9, 13, (MAX_SHARE_VIEWS).to_bytes(4, "big")),
    ],
)
def test_header_fields_are_bound(
    coded: ShareKeys, blob: bytes, field: str, start: int, end: int, value: bytes
) -> None:
    tampered = blob[:start] + value + blob[end:]
    with pytest.raises(ShareTampered):
        open_share(coded, tampered, now_ms=NOW)


def test_version_and_size_checked_first(coded: ShareKeys, blob: bytes) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        open_share(coded, bytes([2]) + blob[1:], now_ms=NOW)
    assert info.value.version == 2 and isinstance(info.value, DecodeError)
    for size in (0, 1, SHARE_BLOB_OVERHEAD - 1):
        with pytest.raises(MalformedShare):
            open_share(coded, blob[:size], now_ms=NOW)
    with pytest.raises(MalformedShare):
        open_share(coded, blob + bytes(MAX_SHARE_BLOB_SIZE), now_ms=NOW)


def test_largest_share(plain: ShareKeys) -> None:
    sealed = seal_share(plain, bytes(MAX_SHARE_PLAINTEXT), expires_at_ms=EXPIRES)
    assert len(sealed) == MAX_SHARE_BLOB_SIZE
    assert open_share(plain, sealed, now_ms=NOW).plaintext == bytes(MAX_SHARE_PLAINTEXT)
    with pytest.raises(LimitExceeded):
        seal_share(plain, bytes(MAX_SHARE_PLAINTEXT + 1), expires_at_ms=EXPIRES)


@pytest.mark.parametrize(
    ("expires_at_ms", "max_views"),
    [
        (-1, None),
        (2**63, None),
        (True, None),
        (EXPIRES, 0),
        (EXPIRES, MAX_SHARE_VIEWS + 1),
        (EXPIRES, -1),
        (EXPIRES, True),
    ],
)
def test_seal_refuses_bad_arguments(
    plain: ShareKeys, expires_at_ms: int, max_views: int | None
) -> None:
    with pytest.raises(InvalidArgument):
        seal_share(plain, b"x", expires_at_ms=expires_at_ms, max_views=max_views)


def test_view_limits_carried(plain: ShareKeys) -> None:
    for views in (1, MAX_SHARE_VIEWS):
        sealed = seal_share(plain, b"x", expires_at_ms=EXPIRES, max_views=views)
        assert open_share(plain, sealed, now_ms=NOW).max_views == views


def test_ad_layout(plain: ShareKeys) -> None:
    sealed = seal_share(plain, b"x", expires_at_ms=EXPIRES, rng=seeded_rng(6))
    header, nonce, body = sealed[:13], sealed[13:37], sealed[37:]
    ad = SHARE_AD_PREFIX + plain.share_id + header
    assert SHARE_AD_PREFIX == b"e2ee/v1/share"
    assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(body, ad, nonce, plain._key) == b"x"


# --- the link URL ---------------------------------------------------------------------------


def test_link_format(link: ShareLink) -> None:
    url = link.url
    assert len(url) == 94  # "about 100 characters" for relay.example.com
    id_text = base64.urlsafe_b64encode(link.share_id).rstrip(b"=").decode()
    key_text = base64.urlsafe_b64encode(link.link_key).rstrip(b"=").decode()
    assert url == f"https://relay.example.com/s/{id_text}#{key_text}"
    assert link.path == f"/s/{id_text}" and link.id_text == id_text
    assert link.base_url == "https://relay.example.com"
    assert ShareLink.parse(url) == link
    text = repr(link)
    assert key_text not in text and link.link_key.hex() not in text and id_text in text


@pytest.mark.parametrize(
    ("origin", "base_url"),
    [
        ("wss://relay.example.com", "https://relay.example.com"),
        ("ws://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("https://Relay.Example.COM:8443/", "https://relay.example.com:8443"),
        ("HTTP://localhost", "http://localhost"),
        ("wss://[::1]:443", "https://[::1]:443"),
        ("wss://[2001:DB8::1]", "https://[2001:db8::1]"),
        ("wss://a-b.c0.example", "https://a-b.c0.example"),
        ("wss://relay.example.com:65535", "https://relay.example.com:65535"),
    ],
)
def test_link_origins(origin: str, base_url: str) -> None:
    link = ShareLink.generate(origin, seeded_rng(7))
    assert link.base_url == base_url
    assert link.url.startswith(base_url + "/s/")
    assert ShareLink.parse(link.url) == link


@pytest.mark.parametrize(
    "origin",
    [
        "relay.example.com",
        "ftp://relay.example.com",
        "wss://",
        "wss://relay.example.com/v1",
        "wss://relay.example.com?x=1",
        "wss://relay.example.com#frag",
        "wss://user@relay.example.com",
        "wss://relay.example.com:0",
        "wss://relay.example.com:08443",
        "wss://relay.example.com:65536",
        "wss://relay.example.com:",
        "wss://-relay.example.com",
        "wss://relay-.example.com",
        "wss://relay..example.com",
        "wss://relay.example.com.",
        "wss://relay_1.example.com",
        "wss://[::1",
        "wss://[1:2:3:4:5:6:7:8:9]",
        "wss://[fe80::1%25eth0]",
        "wss://" + "a" * 64 + ".example",
        "wss://" + ".".join(["a" * 60] * 5),
        "wss://relay.example.com/ ",
    ],
)
def test_link_refuses_bad_origins(origin: str) -> None:
    with pytest.raises(InvalidArgument):
        ShareLink.generate(origin, seeded_rng(8))


def test_link_constructor() -> None:
    link = ShareLink("https://relay.example.com", bytes(16), bytes(32))
    assert link.url.startswith("https://relay.example.com/s/AAAAAAAAAAAAAAAAAAAAAA#")
    assert link != ShareLink("https://relay.example.com", bytes(16), bytes(31) + b"\x01")
    assert link != ShareLink("http://relay.example.com", bytes(16), bytes(32))
    assert link.__eq__("x") is NotImplemented
    assert hash(link) == hash(ShareLink("https://relay.example.com", bytes(16), bytes(32)))
    for base_url in ("wss://relay.example.com", "https://relay.example.com/x", "relay"):
        with pytest.raises(InvalidArgument):
            ShareLink(base_url, bytes(16), bytes(32))
    with pytest.raises(InvalidArgument):
        ShareLink("https://relay.example.com", bytes(17), bytes(32))
    with pytest.raises(InvalidArgument):
        ShareLink("https://relay.example.com", bytes(16), bytes(33))


_B64URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def _non_canonical(text: str) -> str:
    """Set the lowest unused bit of the last character: 16 bytes in 22 characters leave
    4 bits unused, 32 bytes in 43 leave 2. Lenient decoders give the same bytes."""
    value = _B64URL_ALPHABET.index(text[-1])
    assert value & 1 == 0
    return text[:-1] + _B64URL_ALPHABET[value | 1]


def _bad_links(url: str) -> list[str]:
    base, _, rest = url.partition("/s/")
    id_text, _, key_text = rest.partition("#")
    non_canonical_id = _non_canonical(id_text)
    assert base64.urlsafe_b64decode(non_canonical_id + "==") == decode_share_id(id_text)
    return [
        "",
        url + " ",
        " " + url,
        url + "=",
        url.replace("https://", "ftp://"),
        url.replace("https://", "https:/"),
        url.replace("https://", "wss://"),
        url.replace("https://", ""),
        url.replace("/s/", "/S/"),
        url.replace("/s/", "/x/"),
        url.replace("/s/", "/s//"),
        url.replace("/s/", "/v1/s/"),
        url.replace("#", "?"),
        url.replace("#", "?q=1#"),
        url.replace("#", "/#"),
        f"{base}/s/{id_text}",
        f"{base}#{key_text}",
        base,
        f"{base}/s/{id_text}#",
        f"{base}/s/#{key_text}",
        f"{base}/s/{id_text}#{key_text}#",
        f"{base}/s/{id_text}#{key_text[:-1]}",
        f"{base}/s/{id_text}#{key_text}A",
        f"{base}/s/{id_text[:-1]}#{key_text}",
        f"{base}/s/{id_text}A#{key_text}",
        f"{base}/s/{id_text}==#{key_text}",
        f"{base}/s/{id_text[:-1]}+#{key_text}",
        f"{base}/s/{id_text[:-1]}/#{key_text}",
        f"{base}/s/{non_canonical_id}#{key_text}",
        f"{base}/s/{id_text}#{_non_canonical(key_text)}",
        "https://user@relay.example.com" + url[len(base) :],
        "https://relay.example.com:99999" + url[len(base) :],
        "https://relay.example.com:0" + url[len(base) :],
        "https://[::g]" + url[len(base) :],
        "https://" + url[len(base) :],
        url.replace("relay", "rélay"),
        url + "\x00",
        url + "x" * MAX_SHARE_URL_LENGTH,
    ]


def test_parse_refuses_malformed_links(link: ShareLink) -> None:
    url = link.url
    key_text = url.rpartition("#")[2]
    for bad in _bad_links(url):
        with pytest.raises(BadShareLink) as info:
            ShareLink.parse(bad)
        assert key_text not in str(info.value), bad
    with pytest.raises(BadShareLink):
        ShareLink.parse(url.encode())  # type: ignore[arg-type]


def test_parse_accepts_case_in_scheme_and_host(link: ShareLink) -> None:
    shouted = link.url.replace("https://relay.example.com", "HTTPS://RELAY.Example.com")
    assert ShareLink.parse(shouted) == link


@DECODER_SETTINGS
@given(text=st.text(max_size=200))
def test_parse_arbitrary_text(text: str) -> None:
    try:
        parsed = ShareLink.parse(text)
    except BadShareLink:
        return
    assert ShareLink.parse(parsed.url) == parsed  # pragma: no cover - random text never parses


@DECODER_SETTINGS
@given(data=st.data())
def test_parse_mutated_links(data: st.DataObject) -> None:
    url = ShareLink.generate("wss://relay.example.com", seeded_rng(9)).url
    chars = list(url)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(chars)))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        char = data.draw(st.characters(codec="utf-8"))
        if action == "insert":
            chars.insert(position, char)
        elif position < len(chars):
            if action == "replace":
                chars[position] = char
            else:
                del chars[position]
    mutated = "".join(chars)
    try:
        parsed = ShareLink.parse(mutated)
    except BadShareLink:
        return
    # Whatever parses is a well-formed link that prints back to the same text (up to
    # the case of the scheme and host).
    assert parsed.url.lower() == mutated.lower()
    assert ShareLink.parse(parsed.url) == parsed


# --- share ids for the relay -----------------------------------------------------------------


def test_share_id_text() -> None:
    share_id = bytes(range(16))
    text = encode_share_id(share_id)
    assert len(text) == 22 and decode_share_id(text) == share_id
    with pytest.raises(InvalidArgument):
        encode_share_id(bytes(15))
    for bad in ["", text[:-1], text + "A", text[:-1] + "B", text[:-1] + "=", "!" * 22, "é" * 22]:
        with pytest.raises(BadShareLink):
            decode_share_id(bad)
    with pytest.raises(BadShareLink):
        decode_share_id(share_id)  # type: ignore[arg-type]


@DECODER_SETTINGS
@given(share_id=st.binary(min_size=16, max_size=16))
def test_share_id_round_trip(share_id: bytes) -> None:
    assert decode_share_id(encode_share_id(share_id)) == share_id
