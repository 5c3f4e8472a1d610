"""Share links (issue 6; DESIGN 4.7; ``docs/share-links.md``): ``make_share_link``,
``upload_pending_share_links``, ``share_link_status``, ``open_share_link``.

**Making a link works offline.** ``make_share_link`` draws a random share id and link
key (the client's injectable rng), derives the key and download proof (Argon2id off
the event loop when there is an auth code), seals the data with the expiry and the
view limit, and commits a *pending upload* to the encrypted store: the sealed blob, the
SHA-256 of the proof, the expiry and the view limit. The link key itself is never
stored: the blob is already sealed and the relay needs only the proof's hash, so the
only copy of the key is the link handed to the app. Then, if the client is connected,
the upload is tried at once.

**Uploads** (``PUT /v1/share/{id}``, device-authenticated over HTTP) run on every new
connection (like the outbox), right after ``make_share_link`` when connected, and on
``upload_pending_share_links()``. Per pending link:

* expired on the client's clock: dropped, never uploaded (status ``failed``,
  ``expired``);
* accepted (201): status ``uploaded``, the blob is dropped from the store;
* refused for good (any 4xx but 401, 408, 429: ``ttl_too_long``, ``expired``,
  ``too_large``, ``exists``, ``bad_request``, ...): dropped, status ``failed`` with the
  relay's label, and :class:`~client_sdk.errors.ShareLinkUploadFailed` raised by the
  explicit calls (logged on a connection). One exception: ``exists`` for a link whose
  upload was attempted before means that attempt reached the relay and only its answer
  was lost (share ids are 128 random bits), so the link counts as uploaded;
* the relay could not be reached or refused for now (network, timeout, 401, 429,
  5xx): it stays pending for the next connection.

**Limits.** The ttl is checked against the ``max_share_link_ttl_ms`` the relay last
advertised (``GET /v1/config``, read on the first connection of each client and
remembered in the store; 300 s before any is known), the data size against its
``max_share_size``.

**Status.** ``share_link_status(share_id)`` reports ``pending``, ``uploaded`` or
``failed`` (with the reason) for a link made by this device, until a day after its
expiry (then the record is purged).

Store records (table ``META``, encrypted like every record): ``b"sl/l/" +
lookup("share-link", id)`` a :class:`ShareLinkRecord`; ``b"sl/limits"`` a
:class:`ShareLimitsRecord`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

from e2ee import cbor
from e2ee.errors import E2EEError, InvalidArgument
from e2ee.share import (
    MAX_SHARE_VIEWS,
    SHARE_ID_SIZE,
    BadShareLink,
    InvalidAuthCode,
    ShareLink,
    decode_share_id,
    encode_share_id,
    generate_auth_code,
    normalize_auth_code,
    seal_share,
)

from ..errors import (
    InvalidShareLink,
    ShareLinkTooLarge,
    ShareLinkTTLTooLong,
    ShareLinkUploadFailed,
    StoreClosed,
    StoreCorrupt,
    TransportError,
    UsageError,
)
from ..share import (
    DEFAULT_SHARE_TTL,
    ShareLinkInfo,
    ShareLinkState,
    ShareLinkStatus,
    derive_link_keys,
    encode_share_content,
    max_share_data,
    open_share_link,
    parse_link,
)
from ..store import Table, Transaction
from ..transport import DeviceIdentity, RelayConnection
from ..transport.share_http import (
    DEFAULT_SHARE_LIMITS,
    ShareLimits,
    fetch_share_limits,
    put_share,
)
from .base import ClientBase

__all__ = [
    "LIMITS_KEY",
    "RECORD_PREFIX",
    "STATUS_RETENTION_MS",
    "ShareLimitsRecord",
    "ShareLinkRecord",
    "SharingMixin",
]

logger = logging.getLogger("client_sdk.client")

RECORD_PREFIX: Final = b"sl/l/"
"""META key prefix of :class:`ShareLinkRecord` (``+ lookup("share-link", id)``)."""
LIMITS_KEY: Final = b"sl/limits"
"""META key of the :class:`ShareLimitsRecord`."""
STATUS_RETENTION_MS: Final = 24 * 60 * 60 * 1000
"""How long after its expiry a link's status is kept (then purged)."""

_VERSION: Final = 1
_LOOKUP_PART: Final = "share-link"
_U63: Final = 2**63 - 1
_MAX_BLOB: Final = 1 << 20
_MAX_REASON: Final = 64
_STATES: Final = (ShareLinkState.PENDING, ShareLinkState.UPLOADED, ShareLinkState.FAILED)
"""Stored state codes: the index in this tuple."""


def _decode(data: bytes, what: str, keys: int, max_size: int) -> dict[int, cbor.Value]:
    try:
        m = cbor.expect_map(cbor.decode(data, max_size=max_size), what, frozenset(range(keys)))
    except E2EEError as exc:
        raise StoreCorrupt(
            f"{what} does not decode: {type(exc).__name__}", table=Table.META
        ) from exc
    if m[0] != _VERSION:
        raise StoreCorrupt(f"unknown {what} record version", table=Table.META)
    return m


@dataclass(frozen=True, slots=True)
class ShareLinkRecord:
    """One share link made by this device: ``{0: v, 1: share id, 2: state (0 pending,
    1 uploaded, 2 failed), 3: created_at_ms, 4: expires_at_ms, 5: max_views | null,
    6: proof hash | null, 7: sealed blob | null, 8: an upload was attempted, 9: failure
    reason | null}``. The proof hash and the blob are kept only while pending; the link
    key is never stored."""

    share_id: bytes
    state: ShareLinkState
    created_at_ms: int
    expires_at_ms: int
    max_views: int | None
    proof_hash: bytes | None = field(default=None, repr=False)
    blob: bytes | None = field(default=None, repr=False)
    attempted: bool = False
    reason: str | None = None

    @property
    def id_text(self) -> str:
        """The share id in base64url."""
        return encode_share_id(self.share_id)

    def settled(self, state: ShareLinkState, reason: str | None = None) -> ShareLinkRecord:
        """This link uploaded or failed: the blob and proof hash are dropped."""
        return replace(self, state=state, proof_hash=None, blob=None, reason=reason)

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.share_id,
                2: _STATES.index(self.state),
                3: self.created_at_ms,
                4: self.expires_at_ms,
                5: self.max_views,
                6: self.proof_hash,
                7: self.blob,
                8: self.attempted,
                9: self.reason,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareLinkRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode, or a pending link lacks its blob.
        """
        m = _decode(data, "share link", 10, _MAX_BLOB + 1024)
        try:
            record = cls(
                cbor.field_bytes(m, 1, "share id", size=SHARE_ID_SIZE),
                _STATES[cbor.field_int(m, 2, "state", 0, len(_STATES) - 1)],
                cbor.field_int(m, 3, "created at", 0, _U63),
                cbor.field_int(m, 4, "expires at", 0, _U63),
                None if m[5] is None else cbor.field_int(m, 5, "max views", 1, MAX_SHARE_VIEWS),
                cbor.field_optional_bytes(m, 6, "proof hash", size=32),
                None if m[7] is None else cbor.field_bytes(m, 7, "blob", max_size=_MAX_BLOB),
                cbor.field_bool(m, 8, "attempted"),
                None if m[9] is None else cbor.field_str(m, 9, "reason", _MAX_REASON),
            )
        except E2EEError as exc:
            raise StoreCorrupt(
                f"share link does not decode: {type(exc).__name__}", table=Table.META
            ) from exc
        pending = record.state is ShareLinkState.PENDING
        if pending != (record.blob is not None) or pending != (record.proof_hash is not None):
            raise StoreCorrupt("share link: a pending upload needs its blob", table=Table.META)
        return record


@dataclass(frozen=True, slots=True)
class ShareLimitsRecord:
    """``{0: v, 1: max_ttl_ms, 2: max_size, 3: fetched_at_ms}``: the share-link limits
    the relay last advertised."""

    limits: ShareLimits
    fetched_at_ms: int

    def to_bytes(self) -> bytes:
        """Versioned CBOR."""
        return cbor.encode(
            {
                0: _VERSION,
                1: self.limits.max_ttl_ms,
                2: self.limits.max_size,
                3: self.fetched_at_ms,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareLimitsRecord:
        """Inverse of :meth:`to_bytes`.

        Raises:
            StoreCorrupt: it does not decode.
        """
        m = _decode(data, "share limits", 4, 256)
        try:
            return cls(
                ShareLimits(
                    cbor.field_int(m, 1, "max ttl", 1, _U63),
                    cbor.field_int(m, 2, "max size", 1, _U63),
                ),
                cbor.field_int(m, 3, "fetched at", 0, _U63),
            )
        except E2EEError as exc:
            raise StoreCorrupt(
                f"share limits do not decode: {type(exc).__name__}", table=Table.META
            ) from exc


def _same_relay(link: ShareLink, http_url: str) -> bool:
    """Whether ``link`` names the relay at ``http_url`` (scheme, host and port)."""
    ours, theirs = urlsplit(http_url), urlsplit(link.base_url)
    try:
        our_port, their_port = ours.port, theirs.port
    except ValueError:
        return False
    return (
        ours.scheme == theirs.scheme
        and (ours.hostname or "").lower() == theirs.hostname
        and our_port == their_port
    )


class SharingMixin(ClientBase):
    """See the module documentation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._share_lock = asyncio.Lock()
        """One upload pass at a time (a connection's and an explicit call's)."""
        self._share_limits_fetched = False
        """Whether this client read the relay's share-link limits yet."""

    # --- making -------------------------------------------------------------------------

    async def make_share_link(
        self,
        data: str | bytes,
        *,
        ttl: int = DEFAULT_SHARE_TTL,
        max_views: int | None = None,
        auth_code: str | bool | None = None,
    ) -> ShareLinkInfo:
        """Make a share link for ``data``; works offline (module documentation).

        ``ttl`` is the lifetime in seconds (at most what the relay last advertised);
        ``max_views`` how many opens the relay allows (1..1000, ``None``: no limit);
        ``auth_code`` ``True`` generates a code of 8 base32 characters, a ``str`` is
        used as the code (any case; spaces and hyphens ignored), ``None``/``False``
        makes a link without one. The code is returned in
        :attr:`ShareLinkInfo.auth_code`: pass it on separately from the link.

        The link is committed as a pending upload before this returns; when connected
        its upload is tried at once (:attr:`ShareLinkInfo.pending` says whether it is
        still waiting), otherwise it goes up on the next connection.

        Raises:
            UsageError: not registered or closed; ``data`` neither text nor bytes; a
                ``ttl`` or ``max_views`` out of range; an auth code that does not
                normalize (empty, longer than 64 characters, not printable ASCII).
            ShareLinkTTLTooLong: ``ttl`` above the relay's advertised maximum.
            ShareLinkTooLarge: ``data`` above the relay's advertised size limit.
            ShareLinkUploadFailed: connected, and the relay refused the upload for good
                (the link will never open; nothing is pending).
            StoreError: the store failed (nothing was committed).
        """
        device, _ = self._ready()
        content = encode_share_content(data)
        if type(ttl) is not int or ttl < 1:
            raise UsageError("ttl is a whole number of seconds, at least 1")
        if max_views is not None and (
            type(max_views) is not int or not 1 <= max_views <= MAX_SHARE_VIEWS
        ):
            raise UsageError(f"max_views is None (no limit) or 1..{MAX_SHARE_VIEWS}")
        code = self._share_code(auth_code)
        limits = await self._share_limits()
        if ttl * 1000 > limits.max_ttl_ms:
            raise ShareLinkTTLTooLong(ttl, limits.max_ttl_ms // 1000)
        size_limit = max_share_data(limits.max_size)
        if len(content) - 1 > size_limit:
            raise ShareLinkTooLarge(len(content) - 1, size_limit)
        try:
            link = ShareLink.generate(self._http_url, rng=self._rng)
        except InvalidArgument:
            raise UsageError("the relay URL cannot be the base of a share link") from None
        keys = await derive_link_keys(link, code)
        now = self._clock()
        expires_at_ms = now + ttl * 1000
        blob = seal_share(
            keys, content, expires_at_ms=expires_at_ms, max_views=max_views, rng=self._rng
        )
        record = ShareLinkRecord(
            link.share_id,
            ShareLinkState.PENDING,
            now,
            expires_at_ms,
            max_views,
            proof_hash=keys.proof_hash,
            blob=blob,
        )
        async with self._store.transaction() as tx:
            await self._sweep_share_links(tx, now)
            await tx.put(Table.META, self._share_key(link.share_id), record.to_bytes())
        logger.info("share link made by device %d; upload pending", device.device_id)
        pending = True
        conn = self._conn
        if conn is not None and conn.is_open:
            try:
                uploaded, refused = await self._upload_share_links(only=link.share_id)
            except TransportError as exc:
                logger.info("share link upload deferred (%s)", type(exc).__name__)
            else:
                for failure in refused:
                    if failure.share_id == link.id_text:
                        raise failure
                pending = link.id_text not in uploaded
        return ShareLinkInfo(
            url=link.url,
            share_id=link.id_text,
            expires_at_ms=expires_at_ms,
            max_views=max_views,
            auth_code=code,
            pending=pending,
        )

    def _share_code(self, auth_code: str | bool | None) -> str | None:
        """The normalized auth code ``make_share_link`` uses (``True``: a new one)."""
        if auth_code is None or auth_code is False:
            return None
        if auth_code is True:
            return generate_auth_code(self._rng)
        if not isinstance(auth_code, str):
            raise UsageError("auth_code is a str, True (generate one), or None")
        try:
            return normalize_auth_code(auth_code)
        except InvalidAuthCode as exc:
            raise UsageError(f"invalid auth code: {exc}") from None

    # --- uploading ----------------------------------------------------------------------

    async def upload_pending_share_links(self) -> list[str]:
        """Upload every pending share link now (what each new connection does too) and
        return the share ids uploaded. Reads the relay's share-link limits first.

        Raises:
            UsageError: not registered, or closed.
            ShareLinkUploadFailed: the relay refused a link for good, or a link expired
                before it could be uploaded (the first such; every link was tried and
                each outcome is in :meth:`share_link_status`).
            TransportError: the relay could not be reached or refused for now; links not
                uploaded yet stay pending.
            StoreError: the store failed.
        """
        self._ready()
        await self._refresh_share_limits()
        uploaded, refused = await self._upload_share_links()
        if refused:
            raise refused[0]
        return uploaded

    async def share_link_status(self, share_id: str) -> ShareLinkStatus | None:
        """Where the share link ``share_id`` (:attr:`ShareLinkInfo.share_id`) made by this
        device stands; ``None`` for a link this store does not know (made elsewhere, or
        purged a day after its expiry). A pending link past its expiry is reported as
        failed (``expired``): it will not be uploaded.

        Raises:
            InvalidShareLink: ``share_id`` is not a share id.
            StoreError: the store failed (``StoreClosed`` once closed).
        """
        try:
            raw = decode_share_id(share_id)
        except BadShareLink as exc:
            raise InvalidShareLink(str(exc)) from None
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, self._share_key(raw))
        if data is None:
            return None
        record = ShareLinkRecord.from_bytes(data)
        state, reason = record.state, record.reason
        if state is ShareLinkState.PENDING and record.expires_at_ms <= self._clock():
            state, reason = ShareLinkState.FAILED, "expired"
        return ShareLinkStatus(share_id, state, record.expires_at_ms, reason)

    async def _after_connect(self, conn: RelayConnection) -> None:
        await super()._after_connect(conn)
        try:
            if not self._share_limits_fetched:
                try:
                    await self._refresh_share_limits()
                except TransportError as exc:
                    logger.info("share-link limits not read (%s)", type(exc).__name__)
            uploaded, refused = await self._upload_share_links()
        except TransportError as exc:
            logger.info("pending share links not uploaded (%s)", type(exc).__name__)
            return
        except (StoreClosed, UsageError):
            if not self._closed:
                raise
            logger.info("share links: the client closed during the upload")
            return
        for failure in refused:
            logger.warning("a pending share link was dropped: %s", failure.reason)
        if uploaded:
            logger.info("%d pending share links uploaded", len(uploaded))

    async def _upload_share_links(
        self, *, only: bytes | None = None
    ) -> tuple[list[str], list[ShareLinkUploadFailed]]:
        """One upload pass (module documentation) over every pending link, or the one
        with id ``only``: ``(ids uploaded, failures)``. A transport error ends the pass
        (what was settled before stays settled; the rest stays pending).

        Raises:
            TransportError: the relay could not be reached or refused for now.
            UsageError: not registered, or closed.
            StoreError: the store failed.
        """
        async with self._share_lock:
            device, _ = self._ready()
            identity = DeviceIdentity(device.user_id, device.device_id, device.signing)
            async with self._store.transaction() as tx:
                pending, refused = await self._sweep_share_links(tx, self._clock())
            uploaded: list[str] = []
            for key, record in pending:
                if only is not None and record.share_id != only:
                    continue
                if not record.attempted:
                    async with self._store.transaction() as tx:
                        await tx.put(Table.META, key, replace(record, attempted=True).to_bytes())
                if record.blob is None or record.proof_hash is None:  # pragma: no cover
                    raise StoreCorrupt("share link: a pending upload needs its blob")
                try:
                    await put_share(
                        self._http_url,
                        origin=self._origin,
                        identity=identity,
                        share_id=record.share_id,
                        blob=record.blob,
                        proof_hash=record.proof_hash,
                        expires_at_ms=record.expires_at_ms,
                        max_views=record.max_views,
                        ssl=self._ssl,
                        spki_pin=self._spki_pin,
                    )
                except ShareLinkUploadFailed as exc:
                    if exc.reason == "exists" and record.attempted:
                        # An earlier attempt reached the relay; only its answer was lost.
                        settled = record.settled(ShareLinkState.UPLOADED)
                    else:
                        settled = record.settled(ShareLinkState.FAILED, exc.reason[:_MAX_REASON])
                        refused.append(exc)
                else:
                    settled = record.settled(ShareLinkState.UPLOADED)
                async with self._store.transaction() as tx:
                    await tx.put(Table.META, key, settled.to_bytes())
                if settled.state is ShareLinkState.UPLOADED:
                    uploaded.append(record.id_text)
            return uploaded, refused

    async def _sweep_share_links(
        self, tx: Transaction, now_ms: int
    ) -> tuple[list[tuple[bytes, ShareLinkRecord]], list[ShareLinkUploadFailed]]:
        """Inside ``tx``: drop pending links that expired (status failed, ``expired``),
        purge settled records a day past their expiry; ``(pending links, the links
        just dropped as expired)``."""
        pending: list[tuple[bytes, ShareLinkRecord]] = []
        expired: list[ShareLinkUploadFailed] = []
        for key, value in await tx.scan(Table.META, RECORD_PREFIX):
            record = ShareLinkRecord.from_bytes(value)
            if record.state is not ShareLinkState.PENDING:
                if now_ms - record.expires_at_ms > STATUS_RETENTION_MS:
                    await tx.delete(Table.META, key)
            elif record.expires_at_ms <= now_ms:
                await tx.put(
                    Table.META, key, record.settled(ShareLinkState.FAILED, "expired").to_bytes()
                )
                expired.append(ShareLinkUploadFailed(record.id_text, "expired"))
            else:
                pending.append((key, record))
        if expired:
            logger.info("%d pending share links expired before their upload", len(expired))
        return pending, expired

    def _share_key(self, share_id: bytes) -> bytes:
        return RECORD_PREFIX + self._store.lookup_key(_LOOKUP_PART, share_id)

    # --- limits -------------------------------------------------------------------------

    async def _share_limits(self) -> ShareLimits:
        """The limits the relay last advertised (the protocol defaults before any)."""
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, LIMITS_KEY)
        return DEFAULT_SHARE_LIMITS if data is None else ShareLimitsRecord.from_bytes(data).limits

    async def _refresh_share_limits(self) -> ShareLimits:
        """Read the relay's share-link limits and remember them in the store.

        Raises:
            TransportError: the relay could not be asked.
            StoreError: the store failed.
        """
        limits = await fetch_share_limits(self._http_url, ssl=self._ssl, spki_pin=self._spki_pin)
        async with self._store.transaction() as tx:
            await tx.put(
                Table.META, LIMITS_KEY, ShareLimitsRecord(limits, self._clock()).to_bytes()
            )
        self._share_limits_fetched = True
        return limits

    # --- opening ------------------------------------------------------------------------

    async def open_share_link(self, url: str, auth_code: str | None = None) -> str | bytes:
        """:func:`client_sdk.share.open_share_link` with this client's clock and TLS
        context (and its SPKI pin when the link names this client's relay). Needs no
        registration and no connection.

        Raises:
            As :func:`client_sdk.share.open_share_link`.
        """
        link = parse_link(url)
        pin = self._spki_pin if _same_relay(link, self._http_url) else None
        return await open_share_link(url, auth_code, clock=self._clock, ssl=self._ssl, pin=pin)
