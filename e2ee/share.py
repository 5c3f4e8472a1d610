"""Expiring encrypted share links (DESIGN 4.7; docs/protocol.md 11.1).

A client makes a share link offline: a random 16-byte share id and a random 32-byte
link key ``K``. The link is the relay's HTTP origin, the id, and ``K`` after ``#``
(a fragment, which browsers and HTTP clients never send to a server)::

    https://relay.example.com/s/<b64url(id)>#<b64url(K)>        (no padding; 94 characters)

**Keys.** With an optional auth code (typed by the recipient, passed on separately)::

    ikm   = K || Argon2id(normalized code, salt = id, ops 3, mem 64 MiB, 32 bytes)
    ikm   = K                                                   (no auth code)
    key   = HKDF-SHA-256(ikm, salt = empty, info = "e2ee/v1/share-key", 32)
    proof = BLAKE2b-256(key = HKDF-SHA-256(ikm, salt = empty, info = "e2ee/v1/share-proof", 32),
                        data = id)

The relay stores ``SHA-256(proof)`` and hands the blob only to a request carrying the
proof; a wrong auth code gives another key and another proof.

**Blob.** ::

    header = version (1) || expires_at_ms (u64 BE) || max_views (u32 BE, 0 = no limit)
    blob   = header || nonce[24] || XChaCha20-Poly1305(key, nonce, plaintext,
                                                       ad = "e2ee/v1/share" || id || header)

Opening checks the size and version, then the AEAD (:class:`ShareTampered`: a wrong
auth code, a wrong link key or modified bytes, which cannot be told apart), then the
expiry against the caller's clock (:class:`ShareExpired`, even when a relay still
served the blob).

Nothing here ever puts a link key, an auth code, a derived key, a proof or a
plaintext into a ``repr`` or an error message.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from .errors import DecodeError, DecryptionError, InvalidArgument, LimitExceeded, UnsupportedVersion
from .labels import Label
from .primitives import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    Rng,
    aead_decrypt,
    aead_encrypt,
    argon2id,
    blake2b,
    constant_time_equal,
    default_rng,
    hkdf_sha256,
    sha256,
)

__all__ = [
    "AUTH_CODE_LENGTH",
    "MAX_AUTH_CODE_LENGTH",
    "MAX_SHARE_BLOB_SIZE",
    "MAX_SHARE_PLAINTEXT",
    "MAX_SHARE_URL_LENGTH",
    "MAX_SHARE_VIEWS",
    "MIN_AUTH_CODE_LENGTH",
    "SHARE_AD_PREFIX",
    "SHARE_ARGON2ID_MEMLIMIT",
    "SHARE_ARGON2ID_OPSLIMIT",
    "SHARE_BLOB_OVERHEAD",
    "SHARE_HEADER_SIZE",
    "SHARE_ID_SIZE",
    "SHARE_LINK_KEY_SIZE",
    "SHARE_PATH_PREFIX",
    "SHARE_PROOF_SIZE",
    "SHARE_VERSION",
    "BadShareLink",
    "InvalidAuthCode",
    "MalformedShare",
    "OpenedShare",
    "ShareExpired",
    "ShareKeys",
    "ShareLink",
    "ShareTampered",
    "decode_share_id",
    "derive_share_keys",
    "encode_share_id",
    "generate_auth_code",
    "normalize_auth_code",
    "open_share",
    "seal_share",
]

SHARE_VERSION: Final = 1
"""Version byte of the share blob."""
SHARE_ID_SIZE: Final = 16
"""Share ids are 16 random bytes, chosen by the client (22 base64url characters)."""
SHARE_LINK_KEY_SIZE: Final = 32
"""The link key ``K``: 256 bits, so the relay alone cannot guess it."""
SHARE_PROOF_SIZE: Final = 32
"""The download proof (BLAKE2b-256); the relay stores its SHA-256."""
SHARE_ARGON2ID_OPSLIMIT: Final = 3
"""Argon2id passes for the auth code (DESIGN 4.7, pinned)."""
SHARE_ARGON2ID_MEMLIMIT: Final = 64 * 1024 * 1024
"""Argon2id memory for the auth code, in bytes (DESIGN 4.7, pinned)."""
SHARE_HEADER_SIZE: Final = 1 + 8 + 4
"""Version, expiry (u64 BE, ms since the epoch), view limit (u32 BE)."""
SHARE_BLOB_OVERHEAD: Final = SHARE_HEADER_SIZE + AEAD_NONCE_SIZE + AEAD_TAG_SIZE
"""Bytes a blob adds to its plaintext: header, nonce, tag (53)."""
MAX_SHARE_BLOB_SIZE: Final = 64 * 1024
"""Largest share blob: the relay's default ``max_share_size_bytes``; a share link holds
profile data, not files (those go as attachments)."""
MAX_SHARE_PLAINTEXT: Final = MAX_SHARE_BLOB_SIZE - SHARE_BLOB_OVERHEAD
"""Largest plaintext one share blob holds."""
MAX_SHARE_VIEWS: Final = 1000
"""Largest view limit (the relay accepts ``X-E2EE-Max-Views`` 1..1000)."""
AUTH_CODE_LENGTH: Final = 8
"""Generated auth codes: 8 base32 characters (40 bits)."""
MIN_AUTH_CODE_LENGTH: Final = 6
"""Shortest code :func:`generate_auth_code` makes (30 bits)."""
MAX_AUTH_CODE_LENGTH: Final = 64
"""Longest auth code (after normalization) accepted anywhere."""
MAX_SHARE_URL_LENGTH: Final = 1024
"""Longest text :meth:`ShareLink.parse` looks at (a link is about 100 characters)."""
SHARE_PATH_PREFIX: Final = "/s/"
"""The link path on the relay: ``/s/<b64url(id)>`` (a GET of it never returns the blob)."""
SHARE_AD_PREFIX: Final = b"e2ee/v1/share"
"""First bytes of the blob's associated data (docs/protocol.md 11.1; data, not an HKDF
info, like ``e2ee/v1/recovery``)."""

_U63_MAX: Final = 2**63 - 1
_ID_TEXT_LENGTH: Final = 22
_KEY_TEXT_LENGTH: Final = 43
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_AUTHORITY: Final = re.compile(
    rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[(?P<ipv6>[0-9a-f:.]{{2,45}})\])"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?",
    re.ASCII,
)
_MAX_HOST_LENGTH: Final = 253
_ORIGIN_SCHEMES: Final = {"https": "https", "wss": "https", "http": "http", "ws": "http"}
_LINK_SCHEMES: Final = frozenset({"https", "http"})
_CODE_IGNORED: Final = str.maketrans("", "", " -")
_PRINTABLE: Final = re.compile(r"[\x21-\x7e]+", re.ASCII)


# --- errors ------------------------------------------------------------------------------


class BadShareLink(DecodeError):
    """A share link (or share id) that does not parse: another scheme, host or path, a
    missing or malformed id or link key. The message never repeats the link."""


class InvalidAuthCode(InvalidArgument):
    """An auth code that is empty after normalization, longer than
    :data:`MAX_AUTH_CODE_LENGTH`, or holds characters other than printable ASCII. The
    message never repeats the code."""


class MalformedShare(DecodeError):
    """A share blob of an impossible size (checked before any cryptography)."""


class ShareTampered(DecryptionError):
    """The share blob does not authenticate: a wrong auth code (or a code missing or
    given when the link has none), a wrong link key, or modified bytes. These cannot be
    told apart: a wrong code derives another key."""


class ShareExpired(DecryptionError):
    """The blob authenticated, but its expiry has passed on the caller's clock (even if
    a relay still served it). The plaintext is not returned."""

    def __init__(self, expires_at_ms: int) -> None:
        super().__init__(f"share link expired at {expires_at_ms} ms")
        self.expires_at_ms = expires_at_ms


# --- ids and URLs ------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, size: int, length: int, what: str) -> bytes:
    """Strict base64url without padding: exactly ``length`` characters of the URL-safe
    alphabet, in canonical form (unused trailing bits zero)."""
    if len(text) != length or _B64URL.fullmatch(text) is None:
        raise BadShareLink(f"{what}: expected {length} base64url characters")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(data) != size or _b64url(data) != text:
        raise BadShareLink(f"{what}: not in canonical base64url form")
    return data


def encode_share_id(share_id: bytes) -> str:
    """The 22-character base64url form of a share id (the relay's path parameter).

    Raises:
        InvalidArgument: the id is not 16 bytes.
    """
    if len(share_id) != SHARE_ID_SIZE:
        raise InvalidArgument(f"a share id is {SHARE_ID_SIZE} bytes")
    return _b64url(share_id)


def decode_share_id(text: str) -> bytes:
    """Parse the base64url form of a share id (22 characters, no padding, canonical).

    Raises:
        BadShareLink: anything else.
    """
    if not isinstance(text, str):
        raise BadShareLink("a share id is text")
    return _b64url_decode(text, SHARE_ID_SIZE, _ID_TEXT_LENGTH, "share id")


def _check_authority(authority: str) -> str:
    """``host[:port]`` in lower case: a DNS name (or IPv4 address), or an IPv6 address
    in brackets; a port 1..65535 without leading zeros; no user info."""
    authority = authority.lower()
    match = _AUTHORITY.fullmatch(authority)
    if match is None or len(match["host"]) > _MAX_HOST_LENGTH:
        raise BadShareLink("share link: the host is not host[:port]")
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise BadShareLink("share link: not an IPv6 address in brackets") from None
    if match["port"] is not None and int(match["port"]) > 65535:
        raise BadShareLink("share link: port outside 1..65535")
    return authority


def _base_url_of_origin(relay_origin: str) -> str:
    """``https://host[:port]`` for a ``wss``/``https`` relay origin, ``http://...`` for a
    ``ws``/``http`` one."""
    scheme, sep, rest = relay_origin.partition("://")
    http_scheme = _ORIGIN_SCHEMES.get(scheme.lower())
    if not sep or http_scheme is None:
        raise InvalidArgument("the relay origin must be a ws://, wss://, http:// or https:// URL")
    authority = rest[:-1] if rest.endswith("/") else rest
    try:
        return f"{http_scheme}://{_check_authority(authority)}"
    except BadShareLink:
        raise InvalidArgument(
            "a relay origin or base URL is scheme://host[:port] (no path, query or user info)"
        ) from None


class ShareLink:
    """A share link: the relay's HTTP base URL, the share id and the link key ``K``.

    Holds a secret (``K``): its ``repr`` shows only the base URL and the id, and
    equality is constant-time. :attr:`url` is the text to hand out (or render as a QR
    code); :meth:`parse` reads it back.
    """

    __slots__ = ("_link_key", "base_url", "share_id")

    def __init__(self, base_url: str, share_id: bytes, link_key: bytes) -> None:
        """Build from its parts; ``base_url`` is ``http[s]://host[:port]``.

        Raises:
            InvalidArgument: an id or key of the wrong size, or a malformed base URL.
        """
        if len(share_id) != SHARE_ID_SIZE or len(link_key) != SHARE_LINK_KEY_SIZE:
            raise InvalidArgument("a share link holds a 16-byte id and a 32-byte link key")
        scheme, _, _ = base_url.partition("://")
        if scheme not in _LINK_SCHEMES:
            raise InvalidArgument("a share link's base URL is http:// or https://")
        self.base_url: str = _base_url_of_origin(base_url)
        self.share_id: bytes = bytes(share_id)
        self._link_key = bytes(link_key)

    @classmethod
    def generate(cls, relay_origin: str, rng: Rng = default_rng) -> ShareLink:
        """A fresh link (random id and link key from ``rng``) for the relay at
        ``relay_origin`` (``wss://host[:port]`` gives ``https://``, ``ws://`` gives
        ``http://``; ``https``/``http`` origins are kept). Works offline.

        Raises:
            InvalidArgument: the origin is not ``scheme://host[:port]`` with one of the
                four schemes.
        """
        base_url = _base_url_of_origin(relay_origin)
        return cls(base_url, rng(SHARE_ID_SIZE), rng(SHARE_LINK_KEY_SIZE))

    @classmethod
    def parse(cls, url: str) -> ShareLink:
        """Parse a link strictly: ``http[s]://host[:port]/s/<22 chars>#<43 chars>``,
        printable ASCII, no query, no user info, no trailing characters. The scheme and
        host may be in any case (they are kept in lower case).

        Raises:
            BadShareLink: anything else.
        """
        if not isinstance(url, str):
            raise BadShareLink("a share link is text")
        if len(url) > MAX_SHARE_URL_LENGTH:
            raise BadShareLink(f"a share link is at most {MAX_SHARE_URL_LENGTH} characters")
        if _PRINTABLE.fullmatch(url) is None:
            raise BadShareLink("a share link holds only printable ASCII without spaces")
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in _LINK_SCHEMES:
            raise BadShareLink("a share link starts with https:// or http://")
        authority, sep, path = rest.partition("/")
        if not sep:
            raise BadShareLink("share link: no path")
        base_url = f"{scheme}://{_check_authority(authority)}"
        path, sep, fragment = path.partition("#")
        if not sep:
            raise BadShareLink("share link: no link key after '#'")
        prefix = SHARE_PATH_PREFIX[1:]
        if not path.startswith(prefix):
            raise BadShareLink(f"share link: the path is not {SHARE_PATH_PREFIX}<id>")
        share_id = _b64url_decode(path[len(prefix) :], SHARE_ID_SIZE, _ID_TEXT_LENGTH, "share id")
        link_key = _b64url_decode(fragment, SHARE_LINK_KEY_SIZE, _KEY_TEXT_LENGTH, "link key")
        return cls(base_url, share_id, link_key)

    @property
    def link_key(self) -> bytes:
        """The 32-byte link key ``K`` (secret: never send it to the relay)."""
        return self._link_key

    @property
    def id_text(self) -> str:
        """The share id in base64url (the relay's path parameter)."""
        return _b64url(self.share_id)

    @property
    def path(self) -> str:
        """The link path on the relay, ``/s/<id>`` (without the key)."""
        return f"{SHARE_PATH_PREFIX}{self.id_text}"

    @property
    def url(self) -> str:
        """The link to hand out: ``base_url/s/<id>#<K>`` (holds the secret)."""
        return f"{self.base_url}{self.path}#{_b64url(self._link_key)}"

    def derive_keys(self, auth_code: str | None = None) -> ShareKeys:
        """:func:`derive_share_keys` for this link. Slow with an auth code (Argon2id,
        64 MiB): run it off an event loop.

        Raises:
            InvalidAuthCode: the code does not normalize.
        """
        return derive_share_keys(self.share_id, self._link_key, auth_code)

    def __repr__(self) -> str:
        return f"ShareLink(base_url={self.base_url!r}, id={self.id_text})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShareLink):
            return NotImplemented
        return self.base_url == other.base_url and constant_time_equal(
            self.share_id + self._link_key, other.share_id + other._link_key
        )

    def __hash__(self) -> int:
        return hash((self.base_url, self.share_id))


# --- auth codes ---------------------------------------------------------------------------


def generate_auth_code(rng: Rng = default_rng, *, length: int = AUTH_CODE_LENGTH) -> str:
    """A random auth code of ``length`` characters of the RFC 4648 base32 alphabet
    (``A-Z``, ``2-7``; 5 uniform bits each, taken from ``rng``).

    Raises:
        InvalidArgument: ``length`` outside ``MIN_AUTH_CODE_LENGTH..MAX_AUTH_CODE_LENGTH``.
    """
    if type(length) is not int or not MIN_AUTH_CODE_LENGTH <= length <= MAX_AUTH_CODE_LENGTH:
        raise InvalidArgument(
            f"auth codes have {MIN_AUTH_CODE_LENGTH}..{MAX_AUTH_CODE_LENGTH} characters"
        )
    raw = rng(-(-length * 5 // 8))
    # Character i takes bits 5i..5i+4 of ``raw``: every one of the first ``length`` is
    # made of random bits only (no padding bits), since 5 * length <= 8 * len(raw).
    return base64.b32encode(raw).decode("ascii")[:length]


def normalize_auth_code(code: str) -> str:
    """The form of an auth code that keys are derived from: ASCII spaces and hyphens
    removed, ASCII letters in upper case. What remains must be 1..64 printable ASCII
    characters (so a code copied as ``abcd-efgh`` or ``ABCD EFGH`` opens a link made
    with ``ABCDEFGH``).

    Raises:
        InvalidAuthCode: not text, empty after normalization, too long, or a character
            outside printable ASCII.
    """
    if not isinstance(code, str):
        raise InvalidAuthCode("an auth code is text")
    if len(code) > 4 * MAX_AUTH_CODE_LENGTH:
        raise InvalidAuthCode(f"an auth code has at most {MAX_AUTH_CODE_LENGTH} characters")
    normalized = code.translate(_CODE_IGNORED)
    if not normalized:
        raise InvalidAuthCode("an auth code cannot be empty")
    if len(normalized) > MAX_AUTH_CODE_LENGTH:
        raise InvalidAuthCode(f"an auth code has at most {MAX_AUTH_CODE_LENGTH} characters")
    if _PRINTABLE.fullmatch(normalized) is None:
        raise InvalidAuthCode("an auth code holds only printable ASCII characters")
    return normalized.upper()


# --- keys ---------------------------------------------------------------------------------


class ShareKeys:
    """The AEAD key and the download proof of one share link (with its auth code, if
    any), and the share id they belong to.

    Holds secrets: its ``repr`` shows only the id, equality is constant-time.
    """

    __slots__ = ("_key", "_proof", "share_id")

    def __init__(self, share_id: bytes, key: bytes, proof: bytes) -> None:
        """Build from its parts (normally made by :func:`derive_share_keys`).

        Raises:
            InvalidArgument: a part of the wrong size.
        """
        if (
            len(share_id) != SHARE_ID_SIZE
            or len(key) != SHARE_LINK_KEY_SIZE
            or len(proof) != SHARE_PROOF_SIZE
        ):
            raise InvalidArgument("share keys are a 16-byte id, a 32-byte key, a 32-byte proof")
        self.share_id: bytes = bytes(share_id)
        self._key = bytes(key)
        self._proof = bytes(proof)

    @property
    def proof(self) -> bytes:
        """The 32-byte download proof: the body of ``POST /v1/share/{id}/open``. Only
        link holders (with the code) can make it; keep it out of logs."""
        return self._proof

    @property
    def proof_hash(self) -> bytes:
        """``SHA-256(proof)``: what the relay stores (``X-E2EE-Proof-Hash`` at upload)."""
        return sha256(self._proof)

    def __repr__(self) -> str:
        return f"ShareKeys(id={_b64url(self.share_id)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShareKeys):
            return NotImplemented
        return constant_time_equal(
            self.share_id + self._key + self._proof, other.share_id + other._key + other._proof
        )

    def __hash__(self) -> int:
        return hash(self.share_id)


def derive_share_keys(share_id: bytes, link_key: bytes, auth_code: str | None = None) -> ShareKeys:
    """Derive the key and download proof of a share link (DESIGN 4.7; module docstring).

    With an auth code this runs Argon2id with the pinned cost (3 passes, 64 MiB):
    about 0.1-0.3 s; run it off an event loop.

    Raises:
        InvalidArgument: an id or link key of the wrong size.
        InvalidAuthCode: ``auth_code`` does not normalize (an empty code is refused, not
            taken as "no code").
    """
    if len(share_id) != SHARE_ID_SIZE or len(link_key) != SHARE_LINK_KEY_SIZE:
        raise InvalidArgument("share keys derive from a 16-byte id and a 32-byte link key")
    ikm = bytes(link_key)
    if auth_code is not None:
        password = normalize_auth_code(auth_code).encode("ascii")
        ikm += argon2id(
            password,
            salt=bytes(share_id),
            opslimit=SHARE_ARGON2ID_OPSLIMIT,
            memlimit=SHARE_ARGON2ID_MEMLIMIT,
            length=32,
        )
    key = hkdf_sha256(ikm, salt=b"", info=Label.SHARE_KEY.value, length=32)
    proof_key = hkdf_sha256(ikm, salt=b"", info=Label.SHARE_PROOF.value, length=32)
    proof = blake2b(bytes(share_id), key=proof_key, digest_size=SHARE_PROOF_SIZE)
    return ShareKeys(share_id, key, proof)


# --- the blob -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenedShare:
    """What an opened share blob holds: the plaintext and its authenticated header."""

    plaintext: bytes = field(repr=False)
    expires_at_ms: int
    max_views: int | None
    """The view limit the creator set (``None``: no limit); the relay enforces it."""


def _header(expires_at_ms: int, max_views: int) -> bytes:
    return bytes((SHARE_VERSION,)) + expires_at_ms.to_bytes(8, "big") + max_views.to_bytes(4, "big")


def _ad(share_id: bytes, header: bytes) -> bytes:
    return SHARE_AD_PREFIX + share_id + header


def seal_share(
    keys: ShareKeys,
    plaintext: bytes,
    *,
    expires_at_ms: int,
    max_views: int | None = None,
    rng: Rng = default_rng,
) -> bytes:
    """Encrypt ``plaintext`` into a share blob bound to the id, the expiry and the view
    limit (docs/protocol.md 11.1). ``expires_at_ms`` is the creation time plus the ttl
    (the caller clamps the ttl to what the relay allows).

    Raises:
        InvalidArgument: ``expires_at_ms`` outside ``0..2^63-1``, or ``max_views`` not
            ``None`` or ``1..MAX_SHARE_VIEWS``.
        LimitExceeded: ``plaintext`` is longer than :data:`MAX_SHARE_PLAINTEXT`.
    """
    if type(expires_at_ms) is not int or not 0 <= expires_at_ms <= _U63_MAX:
        raise InvalidArgument("expires_at_ms must be an integer in 0..2^63-1")
    if max_views is not None and (
        type(max_views) is not int or not 1 <= max_views <= MAX_SHARE_VIEWS
    ):
        raise InvalidArgument(f"max_views must be None (no limit) or 1..{MAX_SHARE_VIEWS}")
    if len(plaintext) > MAX_SHARE_PLAINTEXT:
        raise LimitExceeded(f"a share link holds at most {MAX_SHARE_PLAINTEXT} bytes")
    header = _header(expires_at_ms, max_views or 0)
    nonce = rng(AEAD_NONCE_SIZE)
    sealed = aead_encrypt(keys._key, nonce, bytes(plaintext), _ad(keys.share_id, header))
    return header + nonce + sealed


def open_share(keys: ShareKeys, blob: bytes, *, now_ms: int) -> OpenedShare:
    """Open a share blob: size and version, then the AEAD, then the expiry against
    ``now_ms`` (still valid when ``now_ms == expires_at_ms``, expired after).

    Raises:
        MalformedShare: shorter than :data:`SHARE_BLOB_OVERHEAD` or longer than
            :data:`MAX_SHARE_BLOB_SIZE`.
        UnsupportedVersion: another version byte.
        ShareTampered: the blob does not authenticate (wrong auth code, wrong link key,
            another share id, or modified bytes).
        ShareExpired: authentic, but ``now_ms > expires_at_ms``.
    """
    if not SHARE_BLOB_OVERHEAD <= len(blob) <= MAX_SHARE_BLOB_SIZE:
        raise MalformedShare(
            f"a share blob has {SHARE_BLOB_OVERHEAD}..{MAX_SHARE_BLOB_SIZE} bytes, not {len(blob)}"
        )
    blob = bytes(blob)
    if blob[0] != SHARE_VERSION:
        raise UnsupportedVersion("share blob", blob[0])
    header = blob[:SHARE_HEADER_SIZE]
    nonce = blob[SHARE_HEADER_SIZE : SHARE_HEADER_SIZE + AEAD_NONCE_SIZE]
    try:
        plaintext = aead_decrypt(
            keys._key,
            nonce,
            blob[SHARE_HEADER_SIZE + AEAD_NONCE_SIZE :],
            _ad(keys.share_id, header),
        )
    except DecryptionError:
        raise ShareTampered(
            "the share blob does not open: a wrong auth code or link, or modified bytes"
        ) from None
    expires_at_ms = int.from_bytes(header[1:9], "big")
    if now_ms > expires_at_ms:
        raise ShareExpired(expires_at_ms)
    max_views = int.from_bytes(header[9:13], "big")
    return OpenedShare(plaintext, expires_at_ms, max_views or None)
