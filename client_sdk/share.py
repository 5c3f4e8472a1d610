"""Share links for the app (issue 6; DESIGN 4.7; ``docs/share-links.md``).

Making a link takes a registered device (``Client.make_share_link``: the upload is
device-authenticated); opening one takes nothing but the link, and the auth code if it
has one, so a link holder needs no account::

    from client_sdk.share import open_share_link

    data = await open_share_link(url, auth_code="ABCD-EFGH")

:func:`open_share_link` parses the link (its host is the relay), derives the key and
the download proof (Argon2id, 64 MiB, off the event loop when there is an auth code),
posts the proof to ``/v1/share/{id}/open``, then opens the blob: authentication first
(:class:`~client_sdk.errors.ShareLinkTampered`), then the expiry against the caller's
clock (:class:`~client_sdk.errors.ShareLinkExpired`, even when a relay still served
it). It returns what the link was made with: ``str`` for text, ``bytes`` for bytes.

**Content.** The sealed plaintext (``docs/protocol.md`` 11.1) is one kind byte and the
data: ``0x00`` bytes as given, ``0x01`` text in UTF-8. Anything else, or text that is
not UTF-8, is refused as :class:`~client_sdk.errors.ShareLinkTampered`.

Nothing here ever logs a link, its key, an auth code, a proof or data; the types that
hold a link or a code keep them out of their ``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from e2ee.errors import UnsupportedVersion
from e2ee.share import (
    MAX_SHARE_BLOB_SIZE,
    SHARE_BLOB_OVERHEAD,
    BadShareLink,
    InvalidAuthCode,
    MalformedShare,
    ShareExpired,
    ShareKeys,
    ShareLink,
    ShareTampered,
    derive_share_keys,
    normalize_auth_code,
    open_share,
)

from .errors import (
    InvalidShareLink,
    ShareLinkExpired,
    ShareLinkTampered,
    UsageError,
)
from .transport.http import HTTP_TIMEOUT
from .transport.share_http import open_share_blob

__all__ = [
    "CONTENT_BYTES",
    "CONTENT_TEXT",
    "DEFAULT_SHARE_TTL",
    "ShareLinkInfo",
    "ShareLinkState",
    "ShareLinkStatus",
    "decode_share_content",
    "derive_link_keys",
    "encode_share_content",
    "max_share_data",
    "open_blob",
    "open_share_link",
    "parse_link",
]

logger = logging.getLogger(__name__)

DEFAULT_SHARE_TTL: Final = 300
"""``make_share_link``'s default ttl in seconds (the relay's default maximum too)."""
CONTENT_BYTES: Final = 0x00
"""Kind byte of sealed content given as ``bytes``."""
CONTENT_TEXT: Final = 0x01
"""Kind byte of sealed content given as ``str`` (UTF-8)."""


class ShareLinkState(StrEnum):
    """Where a share link made by this device stands (``Client.share_link_status``)."""

    PENDING = "pending"
    """Sealed and stored; waiting for the relay (uploaded on the next connection)."""
    UPLOADED = "uploaded"
    """The relay accepted it (it may since have expired or been used up there)."""
    FAILED = "failed"
    """It will never open: the relay refused it, or it expired before it could be
    uploaded (``reason`` says which)."""


@dataclass(frozen=True, slots=True)
class ShareLinkInfo:
    """A share link just made (``Client.make_share_link``). ``url`` holds the link key
    and ``auth_code`` is the code to pass on separately: both stay out of the ``repr``."""

    url: str = field(repr=False)
    """The link to hand out (or render with ``client_sdk.qr.share_link_qr``)."""
    share_id: str
    """The share id (base64url, 22 characters; not a secret): the argument of
    ``Client.share_link_status``."""
    expires_at_ms: int
    """When the link stops opening (ms since the epoch, on the maker's clock)."""
    max_views: int | None
    """How many opens the relay allows (``None``: no limit)."""
    auth_code: str | None = field(default=None, repr=False)
    """The auth code (normalized: upper case, no spaces or hyphens), ``None`` without."""
    pending: bool = True
    """Whether the upload still waits for the relay (offline, or the relay could not be
    reached); it goes up on the next connection."""


@dataclass(frozen=True, slots=True)
class ShareLinkStatus:
    """What this device knows of one of its share links."""

    share_id: str
    state: ShareLinkState
    expires_at_ms: int
    reason: str | None = None
    """Why it failed: the relay's refusal label (``ttl_too_long``, ``expired``,
    ``too_large``, ``exists``, ...) or ``expired`` (before it could be uploaded)."""


# --- content -------------------------------------------------------------------------


def max_share_data(max_blob_size: int) -> int:
    """The most bytes of data (text in UTF-8) a link holds when the relay takes blobs of
    up to ``max_blob_size`` bytes (never above the format's 64 KiB)."""
    return max(0, min(max_blob_size, MAX_SHARE_BLOB_SIZE) - SHARE_BLOB_OVERHEAD - 1)


def encode_share_content(data: str | bytes) -> bytes:
    """The plaintext sealed for ``data``: its kind byte, then the bytes (text in UTF-8).

    Raises:
        UsageError: ``data`` is neither ``str`` nor bytes-like, or text that cannot be
            encoded in UTF-8 (lone surrogates).
    """
    if isinstance(data, str):
        try:
            return bytes((CONTENT_TEXT,)) + data.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("share link text must be encodable in UTF-8") from None
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes((CONTENT_BYTES,)) + bytes(data)
    raise UsageError("share link data is str or bytes")


def decode_share_content(plaintext: bytes) -> str | bytes:
    """Inverse of :func:`encode_share_content`.

    Raises:
        ShareLinkTampered: no kind byte, an unknown kind, or text that is not UTF-8.
    """
    if not plaintext:
        raise ShareLinkTampered("the share link's content is empty (no kind byte)")
    kind, body = plaintext[0], plaintext[1:]
    if kind == CONTENT_BYTES:
        return body
    if kind == CONTENT_TEXT:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise ShareLinkTampered("the share link's text is not UTF-8") from None
    raise ShareLinkTampered("the share link's content is of a kind this SDK does not know")


# --- keys ----------------------------------------------------------------------------


async def derive_link_keys(link: ShareLink, auth_code: str | None) -> ShareKeys:
    """The key and download proof of ``link`` with ``auth_code``. With a code Argon2id
    (3 passes, 64 MiB) runs in a worker thread, off the event loop.

    Raises:
        UsageError: the code does not normalize (empty, longer than 64 characters, or
            not printable ASCII); the message never repeats it.
    """
    if auth_code is None:
        return derive_share_keys(link.share_id, link.link_key)
    try:
        code = normalize_auth_code(auth_code)
    except InvalidAuthCode as exc:
        raise UsageError(f"invalid auth code: {exc}") from None
    return await asyncio.to_thread(derive_share_keys, link.share_id, link.link_key, code)


# --- opening -------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_link(url: str) -> ShareLink:
    """:meth:`ShareLink.parse`, its refusal typed for the SDK.

    Raises:
        InvalidShareLink: ``url`` is not a share link (the message never repeats it).
    """
    try:
        return ShareLink.parse(url)
    except BadShareLink as exc:
        raise InvalidShareLink(str(exc)) from None


def open_blob(keys: ShareKeys, blob: bytes, now_ms: int) -> str | bytes:
    """Open a share blob served by a relay and decode its content.

    Raises:
        ShareLinkTampered: the blob does not authenticate, is of an impossible size or
            another version, or holds content of an unknown kind.
        ShareLinkExpired: authentic, but past its expiry at ``now_ms``.
    """
    try:
        opened = open_share(keys, blob, now_ms=now_ms)
    except ShareExpired as exc:
        raise ShareLinkExpired(exc.expires_at_ms) from None
    except ShareTampered:
        raise ShareLinkTampered(
            "the share link's blob does not open: modified or replaced bytes"
        ) from None
    except MalformedShare:
        raise ShareLinkTampered("the relay served a share blob of an impossible size") from None
    except UnsupportedVersion:
        raise ShareLinkTampered(
            "the relay served a share blob of an unknown version (modified, or made by a newer app)"
        ) from None
    return decode_share_content(opened.plaintext)


async def open_share_link(
    url: str,
    auth_code: str | None = None,
    *,
    clock: Callable[[], int] = _now_ms,
    ssl: ssl_module.SSLContext | None = None,
    pin: bytes | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> str | bytes:
    """Open a share link: fetch its blob from the relay named in the link with the
    download proof, and decrypt it. Needs no account. Each successful call counts one
    view at the relay; a wrong code counts one of the 5 wrong tries.

    ``auth_code`` is the code the maker passed on separately (any case, spaces and
    hyphens ignored); ``clock`` gives the time expiry is checked against (ms since the
    epoch); ``ssl`` and ``pin`` (the SHA-256 of the relay certificate's
    SubjectPublicKeyInfo) apply to ``https`` links; ``timeout`` bounds the request in
    seconds.

    Returns:
        ``str`` when the link was made from text, ``bytes`` when made from bytes.

    Raises:
        InvalidShareLink: ``url`` is not a share link (nothing was sent).
        UsageError: the auth code does not normalize, or a pin with an ``http`` link.
        ShareLinkWrongCode: the relay refused the proof (a wrong or missing code, or a
            code for a link without one).
        ShareLinkNotFound: the relay has no such link (expired there, used up, deleted
            after 5 wrong codes or by its maker, or never uploaded).
        ShareLinkExpired: the relay served it, but it expired on ``clock``.
        ShareLinkTampered: the relay served bytes that do not open under the key.
        TransportError: the relay could not be reached (``ConnectionFailed``,
            ``RequestTimeout``, ``PinMismatch``) or refused otherwise (``RateLimited``).
    """
    link = parse_link(url)
    keys = await derive_link_keys(link, auth_code)
    blob = await open_share_blob(
        link.base_url, link.share_id, keys.proof, ssl=ssl, spki_pin=pin, timeout=timeout
    )
    content = open_blob(keys, blob, clock())
    logger.debug("opened a share link")
    return content
