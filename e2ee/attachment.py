"""Encrypted attachments: libsodium secretstream in fixed chunks (docs/protocol.md 11.2).

An attachment is encrypted on the sender's device, uploaded as a blob to the relay,
and sent to the recipient as an ``attachment`` payload carrying an
:class:`AttachmentPointer` (blob id, key, digest, size). The blob is::

    blob  = header[24] || chunk_1 || ... || chunk_n                    (n >= 1)
    chunk = crypto_secretstream_xchacha20poly1305_push(piece, ad = empty, tag)

under a fresh random 32-byte key per attachment. Every piece but the last is exactly
:data:`ATTACHMENT_CHUNK_SIZE` (64 KiB) plaintext bytes with ``TAG_MESSAGE``; the last
is 0..64 KiB with ``TAG_FINAL``, and nothing may follow it. A ciphertext chunk is its
piece plus 17 bytes, so a reader can cut a byte stream received in arbitrary pieces
back into chunks (:class:`Rechunker`). ``digest`` is the SHA-256 of the whole blob
and ``size`` its length in bytes (header included), both computed incrementally.

Everything here is incremental and holds at most one chunk: feed pieces in, take
pieces out; the caller does the I/O. Truncation at any chunk boundary, reordered,
repeated, appended or modified chunks, anything after the final chunk, another key or
header: each is :class:`AttachmentCorrupt`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from . import cbor
from .errors import DecodeError, DecryptionError, InvalidArgument
from .payload import AttachmentRef
from .primitives import (
    SECRETSTREAM_ABYTES,
    SECRETSTREAM_HEADER_SIZE,
    SECRETSTREAM_KEY_SIZE,
    SECRETSTREAM_TAG_FINAL,
    SECRETSTREAM_TAG_MESSAGE,
    Rng,
    constant_time_equal,
    default_rng,
    secretstream_init_pull,
    secretstream_init_push,
    secretstream_keygen,
    secretstream_pull,
    secretstream_push,
)

__all__ = [
    "ATTACHMENT_CHUNK_SIZE",
    "ATTACHMENT_CIPHERTEXT_CHUNK_SIZE",
    "ATTACHMENT_DIGEST_SIZE",
    "ATTACHMENT_HEADER_SIZE",
    "ATTACHMENT_KEY_SIZE",
    "MAX_BLOB_ID_SIZE",
    "MIN_ATTACHMENT_BLOB_SIZE",
    "AttachmentCorrupt",
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "AttachmentPointer",
    "AttachmentReader",
    "Rechunker",
    "attachment_blob_size",
    "attachment_plaintext_size",
]

ATTACHMENT_KEY_SIZE: Final = SECRETSTREAM_KEY_SIZE
"""A fresh random secretstream key per attachment."""
ATTACHMENT_HEADER_SIZE: Final = SECRETSTREAM_HEADER_SIZE
"""The secretstream header that starts every blob."""
ATTACHMENT_CHUNK_SIZE: Final = 64 * 1024
"""Plaintext bytes of every chunk but the last (the last holds 0..this many)."""
ATTACHMENT_CIPHERTEXT_CHUNK_SIZE: Final = ATTACHMENT_CHUNK_SIZE + SECRETSTREAM_ABYTES
"""Bytes of a full ciphertext chunk (65,553)."""
ATTACHMENT_DIGEST_SIZE: Final = 32
"""SHA-256 of the whole blob."""
MIN_ATTACHMENT_BLOB_SIZE: Final = ATTACHMENT_HEADER_SIZE + SECRETSTREAM_ABYTES
"""The blob of an empty attachment: the header and one empty final chunk (41 bytes)."""
MAX_BLOB_ID_SIZE: Final = 64
"""Longest blob id a pointer carries (the relay's ids are 16 bytes)."""
_U63_MAX: Final = 2**63 - 1
_POINTER_KEYS: Final = frozenset(range(4))
_MAX_POINTER: Final = 256


class AttachmentCorrupt(DecryptionError):
    """An attachment blob that is not exactly what the sender uploaded: truncated (no
    final chunk), a chunk modified, reordered, repeated or of an impossible length,
    data after the final chunk, another key or header, or a size or digest other than
    the pointer's. A decryptor that raised it refuses everything afterwards."""


def attachment_plaintext_size(blob_size: int) -> int:
    """The plaintext length of a well-formed blob of ``blob_size`` bytes (the layout
    fixes it: every chunk but the last is full).

    Raises:
        InvalidArgument: no well-formed blob has this size.
    """
    body = blob_size - ATTACHMENT_HEADER_SIZE
    if type(blob_size) is not int or body < SECRETSTREAM_ABYTES:
        raise InvalidArgument(f"an attachment blob has at least {MIN_ATTACHMENT_BLOB_SIZE} bytes")
    chunks = -(-body // ATTACHMENT_CIPHERTEXT_CHUNK_SIZE)
    last = body - (chunks - 1) * ATTACHMENT_CIPHERTEXT_CHUNK_SIZE
    if last < SECRETSTREAM_ABYTES:
        raise InvalidArgument("no attachment blob has this size (its last chunk is too short)")
    return body - chunks * SECRETSTREAM_ABYTES


def attachment_blob_size(plaintext_size: int) -> int:
    """The blob size :meth:`AttachmentEncryptor.stream` makes for ``plaintext_size``
    bytes: the last chunk carries the remainder (a full chunk when the size is a
    multiple of 64 KiB), an empty attachment is one empty final chunk. Known before
    encrypting, so an upload can announce its ``Content-Length``.

    Raises:
        InvalidArgument: a negative size.
    """
    if type(plaintext_size) is not int or plaintext_size < 0:
        raise InvalidArgument("a plaintext size is a non-negative integer")
    chunks = max(1, -(-plaintext_size // ATTACHMENT_CHUNK_SIZE))
    return ATTACHMENT_HEADER_SIZE + plaintext_size + chunks * SECRETSTREAM_ABYTES


class Rechunker:
    """Cut a byte stream received in arbitrary pieces into pieces of exactly ``size``
    bytes (the last may be shorter): ciphertext chunks by default, or plaintext chunks
    with ``size=ATTACHMENT_CHUNK_SIZE``. Holds less than one chunk."""

    __slots__ = ("_buffer", "_size")

    def __init__(self, size: int = ATTACHMENT_CIPHERTEXT_CHUNK_SIZE) -> None:
        """Raises:
        InvalidArgument: ``size`` is not positive.
        """
        if type(size) is not int or size <= 0:
            raise InvalidArgument("a chunk size is a positive integer")
        self._size = size
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back: fed but not yet part of a whole chunk."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data``; return every chunk it completes, in order."""
        size = self._size
        view = memoryview(data)
        chunks: list[bytes] = []
        if self._buffer:
            take = size - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) < size:
                return chunks
            chunks.append(bytes(self._buffer))
            self._buffer.clear()
        while len(view) >= size:
            chunks.append(bytes(view[:size]))
            view = view[size:]
        self._buffer += view
        return chunks

    def flush(self) -> bytes | None:
        """At the end of the stream: the incomplete last chunk, or ``None`` when the
        stream ended on a chunk boundary."""
        if not self._buffer:
            return None
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def _check_pointer(blob_id: object, key: object, digest: object, size: object) -> None:
    if not isinstance(blob_id, bytes) or not 1 <= len(blob_id) <= MAX_BLOB_ID_SIZE:
        raise DecodeError(f"attachment: a blob id has 1..{MAX_BLOB_ID_SIZE} bytes")
    if not isinstance(key, bytes) or len(key) != ATTACHMENT_KEY_SIZE:
        raise DecodeError(f"attachment: the key has {ATTACHMENT_KEY_SIZE} bytes")
    if not isinstance(digest, bytes) or len(digest) != ATTACHMENT_DIGEST_SIZE:
        raise DecodeError(f"attachment: the digest has {ATTACHMENT_DIGEST_SIZE} bytes")
    if type(size) is not int or not 0 <= size <= _U63_MAX:
        raise DecodeError("attachment: the size is an integer in 0..2^63-1")
    try:
        attachment_plaintext_size(size)
    except InvalidArgument as exc:
        raise DecodeError(f"attachment: {exc}") from None


@dataclass(frozen=True, slots=True, eq=False)
class AttachmentPointer:
    """What an ``attachment`` message carries: CBOR ``{0: blob_id, 1: key[32],
    2: digest[32], 3: size}`` (the body of payload type 6, docs/protocol.md 6, 11.2).

    ``size`` is the blob's length (header included), ``digest`` its SHA-256. Holds the
    attachment key: its ``repr`` shows only the blob id and size, equality is
    constant-time.
    """

    blob_id: bytes
    key: bytes = field(repr=False)
    digest: bytes
    size: int

    def __post_init__(self) -> None:
        """Raises:
        InvalidArgument: a field the receiver would refuse.
        """
        try:
            _check_pointer(self.blob_id, self.key, self.digest, self.size)
        except DecodeError as exc:
            raise InvalidArgument(str(exc)) from None

    @property
    def plaintext_size(self) -> int:
        """The attachment's length in bytes once decrypted."""
        return attachment_plaintext_size(self.size)

    def to_value(self) -> cbor.Value:
        """The CBOR map (to embed in a payload)."""
        return {0: self.blob_id, 1: self.key, 2: self.digest, 3: self.size}

    @classmethod
    def from_value(cls, value: cbor.Value) -> AttachmentPointer:
        """Check a decoded CBOR map.

        Raises:
            DecodeError: fields missing, unknown, of the wrong type or size, or a size
                no blob has.
        """
        m = cbor.expect_map(value, "attachment", _POINTER_KEYS)
        blob_id = cbor.field_bytes(m, 0, "attachment blob id", max_size=MAX_BLOB_ID_SIZE)
        key = cbor.field_bytes(m, 1, "attachment key", size=ATTACHMENT_KEY_SIZE)
        digest = cbor.field_bytes(m, 2, "attachment digest", size=ATTACHMENT_DIGEST_SIZE)
        size = cbor.field_int(m, 3, "attachment size", 0, _U63_MAX)
        _check_pointer(blob_id, key, digest, size)
        return cls(blob_id, key, digest, size)

    def to_bytes(self) -> bytes:
        """Canonical CBOR."""
        return cbor.encode(self.to_value())

    @classmethod
    def from_bytes(cls, data: bytes) -> AttachmentPointer:
        """Decode strict canonical CBOR.

        Raises:
            DecodeError: malformed (any CBOR error) or a field refused.
        """
        return cls.from_value(cbor.decode(data, max_size=_MAX_POINTER))

    def to_ref(self) -> AttachmentRef:
        """The payload layer's form (``e2ee.payload.AttachmentRef``)."""
        return AttachmentRef(self.blob_id, self.key, self.digest, self.size)

    @classmethod
    def from_ref(cls, ref: AttachmentRef) -> AttachmentPointer:
        """From a decoded ``attachment`` payload body.

        Raises:
            DecodeError: a field a pointer refuses (an empty blob id, a size no blob has).
        """
        return cls.from_value({0: ref.blob_id, 1: ref.key, 2: ref.digest, 3: ref.size})

    def __repr__(self) -> str:
        return f"AttachmentPointer(blob_id={self.blob_id.hex()}, size={self.size})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AttachmentPointer):
            return NotImplemented
        return self.size == other.size and constant_time_equal(
            self.blob_id + self.key + self.digest, other.blob_id + other.key + other.digest
        )

    def __hash__(self) -> int:
        return hash((self.blob_id, self.size))


class AttachmentEncryptor:
    """Encrypt one attachment incrementally. The blob is :attr:`header` followed by the
    output of every :meth:`push`, in order (or everything :meth:`stream` yields).

    Holds the key: its ``repr`` shows only progress.
    """

    __slots__ = (
        "_ciphertext_size",
        "_final",
        "_hash",
        "_key",
        "_plaintext_size",
        "_state",
        "header",
    )

    def __init__(self, key: bytes) -> None:
        """Start a blob under ``key`` (a fresh key per attachment: see :meth:`generate`).

        Raises:
            InvalidArgument: the key is not 32 bytes.
        """
        self._state, header = secretstream_init_push(key)
        self._key = bytes(key)
        self.header: bytes = header
        """The 24 bytes that start the blob."""
        self._hash = hashlib.sha256(header)
        self._ciphertext_size = len(header)
        self._plaintext_size = 0
        self._final = False

    @classmethod
    def generate(cls, rng: Rng = default_rng) -> AttachmentEncryptor:
        """An encryptor under a fresh key from ``rng``."""
        return cls(secretstream_keygen(rng))

    @property
    def key(self) -> bytes:
        """The attachment key (secret: it travels only inside the pointer)."""
        return self._key

    @property
    def finished(self) -> bool:
        """Whether the final chunk was pushed."""
        return self._final

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes pushed so far."""
        return self._plaintext_size

    @property
    def ciphertext_size(self) -> int:
        """Blob bytes produced so far, header included."""
        return self._ciphertext_size

    def push(self, chunk: bytes, *, final: bool = False) -> bytes:
        """Encrypt the next piece: exactly :data:`ATTACHMENT_CHUNK_SIZE` bytes unless
        ``final``, then 0..64 KiB. Returns the ciphertext chunk (the piece plus 17 bytes).

        Raises:
            InvalidArgument: the final chunk was already pushed, or a piece of the wrong
                length.
        """
        if self._final:
            raise InvalidArgument("the attachment's final chunk was already pushed")
        size = len(chunk)
        if size > ATTACHMENT_CHUNK_SIZE or (not final and size != ATTACHMENT_CHUNK_SIZE):
            raise InvalidArgument(
                f"attachment chunks hold exactly {ATTACHMENT_CHUNK_SIZE} bytes, the last at most"
            )
        tag = SECRETSTREAM_TAG_FINAL if final else SECRETSTREAM_TAG_MESSAGE
        ciphertext = secretstream_push(self._state, bytes(chunk), tag=tag)
        self._hash.update(ciphertext)
        self._ciphertext_size += len(ciphertext)
        self._plaintext_size += size
        self._final = final
        return ciphertext

    def stream(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        """Encrypt a whole attachment given as pieces of any sizes (say, file reads):
        yields the header, then each ciphertext chunk; the last full-or-shorter chunk is
        the final one (the layout :func:`attachment_blob_size` predicts). Holds one
        chunk back to know which is last.

        Raises:
            InvalidArgument: something was already pushed.
        """
        if self._ciphertext_size != len(self.header):
            raise InvalidArgument("stream() encrypts a whole attachment from the start")
        yield self.header
        chunker = Rechunker(ATTACHMENT_CHUNK_SIZE)
        held: bytes | None = None
        for piece in pieces:
            for chunk in chunker.feed(piece):
                if held is not None:
                    yield self.push(held)
                held = chunk
        rest = chunker.flush()
        if rest is not None:
            if held is not None:
                yield self.push(held)
            held = rest
        yield self.push(held if held is not None else b"", final=True)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the whole blob.

        Raises:
            InvalidArgument: the final chunk was not pushed yet.
        """
        if not self._final:
            raise InvalidArgument("the attachment is not finished: push the final chunk first")
        return self._hash.digest()

    def pointer(self, blob_id: bytes) -> AttachmentPointer:
        """The pointer to send once the blob is uploaded under ``blob_id``.

        Raises:
            InvalidArgument: the final chunk was not pushed yet, or a bad blob id.
        """
        return AttachmentPointer(blob_id, self._key, self.digest, self._ciphertext_size)

    def __repr__(self) -> str:
        return f"AttachmentEncryptor(plaintext_size={self._plaintext_size}, finished={self._final})"


class AttachmentDecryptor:
    """Decrypt one attachment chunk by chunk (see :class:`AttachmentReader` for a blob
    received as a byte stream cut anywhere). Any failure is final: after an
    :class:`AttachmentCorrupt` every call raises it again.

    Holds the stream state: its ``repr`` shows only progress.
    """

    __slots__ = ("_broken", "_ciphertext_size", "_final", "_hash", "_plaintext_size", "_state")

    def __init__(self, key: bytes, header: bytes) -> None:
        """Start reading the blob that begins with ``header``.

        Raises:
            InvalidArgument: the key is not 32 bytes.
            AttachmentCorrupt: the header is not 24 bytes.
        """
        if len(key) != ATTACHMENT_KEY_SIZE:
            raise InvalidArgument(f"an attachment key is {ATTACHMENT_KEY_SIZE} bytes")
        if len(header) != ATTACHMENT_HEADER_SIZE:
            raise AttachmentCorrupt(f"an attachment header is {ATTACHMENT_HEADER_SIZE} bytes")
        self._state = secretstream_init_pull(key, header)
        self._hash = hashlib.sha256(header)
        self._ciphertext_size = len(header)
        self._plaintext_size = 0
        self._final = False
        self._broken = False

    @property
    def finished(self) -> bool:
        """Whether the final chunk was decrypted."""
        return self._final

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes returned so far."""
        return self._plaintext_size

    @property
    def ciphertext_size(self) -> int:
        """Blob bytes consumed so far, header included."""
        return self._ciphertext_size

    def _fail(self, reason: str) -> AttachmentCorrupt:
        self._broken = True
        return AttachmentCorrupt(f"attachment corrupt: {reason}")

    def pull(self, chunk: bytes) -> bytes:
        """Decrypt the next ciphertext chunk and return its plaintext.

        Raises:
            AttachmentCorrupt: a chunk after the final one, of an impossible length,
                that does not authenticate (modified, reordered, repeated, from another
                blob), a short chunk without ``TAG_FINAL``, an unexpected tag, or the
                decryptor failed before.
        """
        if self._broken:
            raise AttachmentCorrupt("attachment corrupt: an earlier chunk failed")
        if self._final:
            raise self._fail("data after the final chunk")
        if not SECRETSTREAM_ABYTES <= len(chunk) <= ATTACHMENT_CIPHERTEXT_CHUNK_SIZE:
            raise self._fail("a chunk of an impossible length")
        chunk = bytes(chunk)
        try:
            plaintext, tag = secretstream_pull(self._state, chunk)
        except DecryptionError:
            raise self._fail("a chunk does not authenticate") from None
        if tag == SECRETSTREAM_TAG_MESSAGE:
            if len(plaintext) != ATTACHMENT_CHUNK_SIZE:
                raise self._fail("a short chunk that is not the final one")
        elif tag == SECRETSTREAM_TAG_FINAL:
            self._final = True
        else:
            raise self._fail(f"unexpected chunk tag {tag}")
        self._hash.update(chunk)
        self._ciphertext_size += len(chunk)
        self._plaintext_size += len(plaintext)
        return plaintext

    def finish(self) -> bytes:
        """End of the blob: check the final chunk was seen; return the SHA-256 of the
        whole blob (compare it with the pointer's digest).

        Raises:
            AttachmentCorrupt: no final chunk (truncated), or the decryptor failed.
        """
        if self._broken:
            raise AttachmentCorrupt("attachment corrupt: an earlier chunk failed")
        if not self._final:
            raise self._fail("truncated: no final chunk")
        return self._hash.digest()

    def __repr__(self) -> str:
        return f"AttachmentDecryptor(plaintext_size={self._plaintext_size}, finished={self._final})"


class AttachmentReader:
    """Decrypt a whole blob received as a byte stream cut anywhere, and check it
    against its pointer: feed the downloaded bytes, write out what comes back, and
    call :meth:`finish` before trusting (say, renaming) the result. Never holds more
    than one chunk besides the data fed; refuses bytes beyond the pointer's size as
    they arrive."""

    __slots__ = ("_broken", "_chunker", "_decryptor", "_done", "_header", "_pointer", "_received")

    def __init__(self, pointer: AttachmentPointer) -> None:
        """Read the blob ``pointer`` names (its key, size and digest)."""
        self._pointer = pointer
        self._broken = False
        self._done = False
        self._header = bytearray()
        self._decryptor: AttachmentDecryptor | None = None
        self._chunker = Rechunker()
        self._received = 0

    @property
    def plaintext_size(self) -> int:
        """Plaintext bytes returned so far."""
        return 0 if self._decryptor is None else self._decryptor.plaintext_size

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add downloaded bytes; return the plaintext of every chunk they complete.

        Raises:
            AttachmentCorrupt: more bytes than the pointer's size, a chunk refused (see
                :meth:`AttachmentDecryptor.pull`), or an earlier failure.
            InvalidArgument: :meth:`finish` has already succeeded.
        """
        self._check_usable()
        self._received += len(data)
        if self._received > self._pointer.size:
            self._broken = True
            raise AttachmentCorrupt("attachment corrupt: more bytes than its size")
        try:
            return self._feed(memoryview(data))
        except AttachmentCorrupt:
            self._broken = True
            raise

    def _feed(self, view: memoryview) -> list[bytes]:
        if self._decryptor is None:
            take = ATTACHMENT_HEADER_SIZE - len(self._header)
            self._header += view[:take]
            view = view[take:]
            if len(self._header) < ATTACHMENT_HEADER_SIZE:
                return []
            self._decryptor = AttachmentDecryptor(self._pointer.key, bytes(self._header))
        return [self._decryptor.pull(chunk) for chunk in self._chunker.feed(view)]

    def finish(self) -> bytes:
        """End of the download: decrypt what is left, then check the final chunk, the
        size and the digest. Returns the plaintext of the last chunk when it was shorter
        than a full ciphertext chunk (else ``b""``): write it before trusting the result.

        Raises:
            AttachmentCorrupt: truncated, a chunk refused, a size or digest other than
                the pointer's, or an earlier failure.
            InvalidArgument: :meth:`finish` has already succeeded.
        """
        self._check_usable()
        self._broken = True  # until every check below has passed
        if self._decryptor is None:
            raise AttachmentCorrupt("attachment corrupt: truncated inside the header")
        rest = self._chunker.flush()
        out = b"" if rest is None else self._decryptor.pull(rest)
        digest = self._decryptor.finish()
        if self._received != self._pointer.size:
            raise AttachmentCorrupt("attachment corrupt: not the size its pointer names")
        if not constant_time_equal(digest, self._pointer.digest):
            raise AttachmentCorrupt("attachment corrupt: not the digest its pointer names")
        self._broken = False
        self._done = True
        return out

    def _check_usable(self) -> None:
        if self._done:
            raise InvalidArgument("the attachment reader has already finished")
        if self._broken:
            raise AttachmentCorrupt("attachment corrupt: an earlier part failed")

    def __repr__(self) -> str:
        return f"AttachmentReader({self._pointer!r}, received={self._received})"
