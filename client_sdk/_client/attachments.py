"""Encrypted attachments on the relay's blob storage (issue 6; docs/protocol.md 11.2).

``send_attachment`` encrypts a file with a fresh key (libsodium secretstream, 64 KiB
chunks, ``e2ee.attachment``) while it streams it into ``PUT /v1/blobs``, then sends
the :class:`~e2ee.attachment.AttachmentPointer` (blob id, key, digest, size) as an
``attachment`` message through the normal send path (outbox, ``sync_sent`` to our own
other devices). ``download_attachment`` streams ``GET /v1/blobs/{id}`` through an
:class:`~e2ee.attachment.AttachmentReader` into a temporary file beside the
destination and renames it onto the destination only once the final chunk, the size
and the ciphertext digest check out.

Neither side ever holds the file: at most a few chunks (a 64 KiB plaintext piece, its
ciphertext, one network read of at most ``BLOB_READ_SIZE``) are in memory at a time,
whatever the attachment's size. The relay keeps a blob for its message TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, Final, TypeVar

from e2ee.attachment import (
    ATTACHMENT_CHUNK_SIZE,
    AttachmentEncryptor,
    AttachmentPointer,
    AttachmentReader,
    attachment_blob_size,
)
from e2ee.attachment import AttachmentCorrupt as CoreAttachmentCorrupt
from e2ee.errors import E2EEError
from e2ee.identifiers import check_user_id
from e2ee.payload import AttachmentRef, Payload, PayloadType

from .._files import fsync_dir
from ..errors import AttachmentCorrupt, AttachmentFileError, ClientError, StoreCorrupt, UsageError
from ..store import Table
from ..transport.blob_http import BlobEndpoint, delete_blob, open_blob, put_blob
from ..transport.protocol import DeviceIdentity
from . import records
from .receiving import Message, ReceivingMixin
from .records import OutboxRecord, SentMessageRecord
from .sending import SendingMixin

__all__ = ["AttachmentsMixin"]

logger = logging.getLogger("client_sdk.client")

_MSG_ID_SIZE: Final = 16
_TEMP_SUFFIX: Final = ".part"
_TEMP_NAME_PREFIX: Final = 64
"""Characters of the destination's name kept in its temporary file's name (which
stays within the file system's name limit)."""

T = TypeVar("T")


async def _local(what: str, call: Callable[[], T]) -> T:
    """Run a blocking file-system call off the event loop; an ``OSError`` becomes
    :class:`AttachmentFileError` (the ``OSError`` is its cause)."""
    try:
        return await asyncio.to_thread(call)
    except OSError as exc:
        raise AttachmentFileError(f"{what} failed: {type(exc).__name__}") from exc


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    """``size`` bytes from ``file``, fewer only at its end."""
    parts: list[bytes] = []
    left = size
    while left:
        part = file.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open a regular file for reading; ``(file, size)``.

    Raises:
        UsageError: not a regular file (a directory, a pipe, a device).
        OSError: it cannot be opened.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): a FIFO would block it
        raise UsageError("an attachment is a regular file")
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
    try:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError("an attachment is a regular file")
    except BaseException:
        file.close()
        raise
    return file, info.st_size


async def _ciphertext(
    file: BinaryIO, size: int, encryptor: AttachmentEncryptor
) -> AsyncIterator[bytes]:
    """The blob of ``size`` bytes of ``file``: the header, then each ciphertext chunk,
    reading one 64 KiB piece at a time (the layout ``attachment_blob_size(size)``
    announces: every chunk full but the last, which carries ``TAG_FINAL``).

    Raises:
        AttachmentFileError: a read failed, or the file changed size meanwhile.
    """
    yield encryptor.header
    remaining = size
    while True:
        want = min(ATTACHMENT_CHUNK_SIZE, remaining)
        piece = await _local("reading the attachment", partial(_read_exactly, file, want))
        if len(piece) != want:
            raise AttachmentFileError("the attachment file shrank while it was being sent")
        remaining -= want
        if remaining == 0:
            if await _local("reading the attachment", partial(file.read, 1)):
                raise AttachmentFileError("the attachment file grew while it was being sent")
            yield encryptor.push(piece, final=True)
            return
        yield encryptor.push(piece)


def _flush_and_sync(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class AttachmentsMixin(SendingMixin, ReceivingMixin):
    """``send_attachment`` and ``download_attachment``."""

    def _blob_endpoint(self) -> BlobEndpoint:
        device, _ = self._ready()
        return BlobEndpoint(
            self._http_url,
            self._origin,
            DeviceIdentity(device.user_id, device.device_id, device.signing),
            ssl=self._ssl,
            spki_pin=self._spki_pin,
        )

    async def send_attachment(
        self,
        user_id: str,
        path: str | os.PathLike[str],
        *,
        client_msg_id: bytes | None = None,
    ) -> bytes:
        """Send the file at ``path`` as an encrypted attachment to every device of
        ``user_id`` (and, as ``sync_sent``, to this user's other devices); return the
        message's client message id once the relay accepted it.

        The file is encrypted under a fresh key as it is read, 64 KiB at a time, and
        streamed to the relay (never held whole); the relay keeps the blob for its
        message TTL. The message carrying the pointer (blob id, key, digest, size) then
        goes exactly as :meth:`send` sends (committed to the outbox first). The file
        must not change while it is sent.

        ``client_msg_id`` makes the call idempotent as for :meth:`send`: called again
        with the id of an attachment already committed to the same user, it uploads
        nothing and delivers (or just returns) that message. A blob no committed message
        points to (the send failed before its commit, or the relay refused the message
        for good) is deleted from the relay; one left by a cancelled call expires.

        Raises:
            UsageError: not registered, closed, a bad user id, a path that is not a
                regular file, a ``client_msg_id`` that is not 16 bytes, all zero, or
                names another message.
            AttachmentFileError: the file could not be read, or changed size.
            IdentityError: the recipient's device list or a bundle failed verification.
            TooLarge: above the relay's maximum blob size or this device's blob quota.
            SendFailed, MessageQueued: as :meth:`send` (the message is committed).
            TransportError: the upload or the send failed before the commit.
        """
        self._ready()
        try:
            check_user_id(user_id)
        except E2EEError as exc:
            raise UsageError(str(exc)) from exc
        if client_msg_id is None:
            msg_id = self._rng(_MSG_ID_SIZE)
        elif not isinstance(client_msg_id, bytes) or len(client_msg_id) != _MSG_ID_SIZE:
            raise UsageError(f"client_msg_id is {_MSG_ID_SIZE} bytes")
        elif client_msg_id == bytes(_MSG_ID_SIZE):
            raise UsageError("client_msg_id must not be all zero (reserved)")
        else:
            msg_id = client_msg_id
            earlier = await self._earlier_attachment(msg_id, user_id)
            if earlier is not None:
                return await self._resume(earlier)
        source = Path(os.fspath(path))
        file, size = await _local("opening the attachment", lambda: _open_regular(source))
        endpoint = self._blob_endpoint()
        try:
            # The recipient is checked (and its list stored) before anything is uploaded.
            conn = await self._connection()
            await self._device_list(conn, user_id)
            encryptor = AttachmentEncryptor.generate(self._rng)
            stored = await put_blob(
                endpoint, _ciphertext(file, size, encryptor), attachment_blob_size(size)
            )
        finally:
            await _local("closing the attachment", file.close)
        pointer = encryptor.pointer(stored.blob_id)
        try:
            return await self._send_body(user_id, PayloadType.ATTACHMENT, pointer.to_ref(), msg_id)
        except Exception:
            if not await self._outbox_points_to(msg_id, stored.blob_id):
                await self._discard_blob(endpoint, stored.blob_id)
            raise

    async def _earlier_attachment(
        self, msg_id: bytes, user_id: str
    ) -> tuple[bytes, bytes | None, OutboxRecord | None] | None:
        """What an earlier ``send_attachment`` with the app's ``msg_id`` committed, as
        :meth:`_committed` says (``None``: nothing).

        Raises:
            UsageError: the id names a message to another user or no attachment.
            StoreCorrupt: the remembered message does not decode.
        """
        async with self._store.transaction() as tx:
            data = await tx.get(Table.META, records.SENT_MESSAGE_PREFIX + msg_id)
            if data is None:
                return None
            sent = SentMessageRecord.from_bytes(data)
            try:
                body = Payload.from_bytes(sent.payload, from_own_device=False).body
            except E2EEError as exc:
                raise StoreCorrupt("a sent message does not decode", table=Table.META) from exc
            if sent.recipient != user_id or not isinstance(body, AttachmentRef):
                raise UsageError("client_msg_id already names another message")
            return await self._committed(tx, msg_id, user_id, body)

    async def _outbox_points_to(self, msg_id: bytes, blob_id: bytes) -> bool:
        """Whether the outbox holds message ``msg_id`` pointing to blob ``blob_id`` (it
        will be sent: the blob must stay)."""
        async with self._store.transaction() as tx:
            rows = await tx.scan(Table.OUTBOX)
        for _, value in rows:
            record = OutboxRecord.from_bytes(value)
            if record.client_msg_id != msg_id:
                continue
            try:
                body = Payload.from_bytes(record.payload, from_own_device=False).body
            except E2EEError as exc:
                raise StoreCorrupt("an outbox payload does not decode", table="outbox") from exc
            return isinstance(body, AttachmentRef) and body.blob_id == blob_id
        return False

    async def _discard_blob(self, endpoint: BlobEndpoint, blob_id: bytes) -> None:
        """Delete a blob no message points to (best effort: it expires otherwise)."""
        try:
            await delete_blob(endpoint, blob_id)
        except ClientError as exc:
            logger.info("an unsent attachment's blob was left to expire (%s)", type(exc).__name__)
        else:
            logger.info("an unsent attachment's blob was deleted")

    async def download_attachment(
        self, message: Message | AttachmentPointer, dest_path: str | os.PathLike[str]
    ) -> Path:
        """Download and decrypt the attachment of ``message`` (a :class:`Message` whose
        ``attachment`` is set, including a ``sync_sent`` copy, or an
        :class:`~e2ee.attachment.AttachmentPointer`) to ``dest_path``; return it.

        The blob is decrypted as it arrives into a temporary file beside the
        destination (created ``0600``), which is fsynced and renamed onto
        ``dest_path`` (replacing a file there) only once the final chunk, the size and
        the SHA-256 of the whole blob are the pointer's. On any failure the temporary
        file is removed and the destination is untouched, never partially written.

        Raises:
            UsageError: not registered, closed, or a message without an attachment.
            AttachmentCorrupt: the blob is not what the sender uploaded (truncated,
                chunks modified, reordered or appended, another size or digest).
            BlobNotFound: the relay no longer holds the blob (expired, deleted).
            AttachmentFileError: the temporary file could not be written or renamed
                (a missing directory, a full disk).
            TransportError: the download failed (the relay refused, the connection
                broke or timed out).
        """
        pointer = message.attachment if isinstance(message, Message) else message
        if not isinstance(pointer, AttachmentPointer):
            raise UsageError("this message carries no attachment")
        endpoint = self._blob_endpoint()
        dest = Path(os.fspath(dest_path))
        directory = dest.parent
        prefix = f".{dest.name[:_TEMP_NAME_PREFIX]}."
        fd, name = await _local(
            "creating the temporary file",
            lambda: tempfile.mkstemp(prefix=prefix, suffix=_TEMP_SUFFIX, dir=directory),
        )
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                reader = AttachmentReader(pointer)
                async with open_blob(endpoint, pointer.blob_id) as download:
                    async for piece in download:
                        plaintext = reader.feed(piece)
                        if plaintext:
                            await _local(
                                "writing the attachment", partial(out.writelines, plaintext)
                            )
                rest = reader.finish()
                if rest:
                    await _local("writing the attachment", lambda: out.write(rest))
                await _local("syncing the attachment", lambda: _flush_and_sync(out))
            await _local("renaming the attachment", lambda: os.replace(temp, dest))
        except CoreAttachmentCorrupt as exc:
            _remove(temp)
            logger.warning("a downloaded attachment was refused: %s", exc)
            raise AttachmentCorrupt(str(exc)) from exc
        except BaseException:
            _remove(temp)  # one unlink: no need to leave the event loop (or be cancelled)
            raise
        await asyncio.to_thread(fsync_dir, directory)
        return dest
