"""A fault-injecting, WebSocket-aware TCP proxy in front of a relay (issue 5).

:class:`FaultProxy` owns a fixed port on 127.0.0.1; SDK clients are given
:attr:`FaultProxy.url` as their relay URL and every connection they open (the HTTP
requests ``/v1/config`` and ``/v1/register`` as well as the WebSocket ``/v1/ws``) is
relayed to the upstream relay's port, which :meth:`FaultProxy.set_upstream` may change
while the proxy runs (a relay restarted on a fresh port: the clients keep their URL).

Design
------

One accepted connection is one :class:`ProxiedConnection` with one upstream TCP
connection and four tasks: for each direction a *reader*, which reads the socket,
understands what it reads and puts byte units on a bounded per-direction pipe, and a
*writer*, which takes the units in order, waits until each is due (the configured
delay) and writes it. A unit's due time is fixed when it is read, and the writer
handles units one after the other, so a delay never reorders a direction.

* **HTTP.** Until the relay's first response head is complete the bytes are forwarded
  untouched (the client's request as it comes; the response head once it is whole).
  A ``101 Switching Protocols`` switches both directions to WebSocket framing; any
  other status leaves the connection a raw byte pipe for its whole life (a later
  upgrade on a kept-alive connection is not looked at: the SDK opens a connection
  per HTTP request and a fresh one for the WebSocket).
* **WebSocket** (RFC 6455). Frames are parsed incrementally (7, 16 and 64-bit
  lengths, masked or not), fragmented messages are reassembled, and control frames
  (ping, pong, close) are forwarded at once and untouched (a close first flushes the
  fragments of an unfinished message). A complete, uncompressed binary message is
  decoded with :func:`e2ee.relay_frames.decode_relay_frame` or
  :func:`~e2ee.relay_frames.decode_client_frame`; the client's :class:`Auth` tells
  the connection's user and device. Frames that decode are offered to the
  :class:`FrameHook` s in the order they were added, each seeing what the previous
  ones let through. A message no hook changed is forwarded as its original wire
  bytes; a replacement is encoded as one unfragmented binary frame, unmasked towards
  the client and masked with a fresh random key towards the relay. Text messages,
  compressed messages, and payloads that do not decode are forwarded untouched
  without reaching hooks; after a framing violation the direction becomes a raw pipe
  (the endpoints fail the connection themselves). Decoding is skipped when nothing
  needs it (no hooks, no duplication, the connection's identity known).
* **Faults.** :meth:`FaultProxy.drop_connections` resets both sockets of the chosen
  connections (``SO_LINGER`` 0, then ``transport.abort()``: both peers see a reset,
  never a closing handshake). :meth:`FaultProxy.set_delay` delays every unit of both
  directions. :meth:`FaultProxy.set_duplicate_probability` sends relay-to-client
  :class:`Deliver` messages twice, drawn from ``random.Random(seed)``.
  :meth:`FaultProxy.stall_reader` stops both the reader and the writer of the
  relay-to-client direction of a device's connections (present and future): nothing
  more reaches the client and, as the proxy no longer reads the relay's socket, the
  kernel buffers fill and back-pressure reaches the relay.
* **Bounds.** Each direction's pipe holds at most :data:`MAX_QUEUED_BYTES` (one unit
  more when it is empty); a frame or reassembled message above :data:`MAX_MESSAGE`
  (the protocol's :data:`~e2ee.relay_frames.MAX_RELAY_FRAME` plus headroom) resets
  that connection alone; an HTTP response head above :data:`MAX_HTTP_HEAD` turns the
  connection into a raw pipe. A reader reads at most :data:`READ_CHUNK` bytes at a
  time, so a parser holds at most one frame and one chunk.
* **Lifecycle.** :meth:`FaultProxy.stop` closes the listening socket, resets every
  connection, cancels and awaits every task; the proxy may be started again on the
  same port. A hook that raises resets its connection; the error is counted and kept
  in :attr:`FaultProxy.hook_errors` for the test to inspect.

Logging is at DEBUG and names connection ids, user and device ids and sizes, never
payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Final, Generic, TypeVar

from e2ee.errors import DecodeError
from e2ee.relay_frames import (
    MAX_RELAY_FRAME,
    Auth,
    ClientFrame,
    Deliver,
    RelayFrame,
    decode_client_frame,
    decode_relay_frame,
)

from ..errors import ClientError, UsageError

__all__ = [
    "CONNECT_TIMEOUT",
    "HOST",
    "MAX_HTTP_HEAD",
    "MAX_INJECTED_MESSAGE",
    "MAX_MESSAGE",
    "MAX_QUEUED_BYTES",
    "MAX_RECORDED_ERRORS",
    "READ_CHUNK",
    "FaultProxy",
    "FrameHook",
    "ProxiedConnection",
    "ProxyError",
    "ProxyStats",
]

logger = logging.getLogger(__name__)

HOST: Final = "127.0.0.1"
"""The proxy listens and connects on loopback only."""
MAX_MESSAGE: Final = MAX_RELAY_FRAME + 4096
"""Largest WebSocket frame or reassembled message the proxy buffers: the protocol's
limit plus room for framing, so the relay and the client still see (and refuse)
anything slightly above their own limit; beyond it the connection is reset."""
MAX_HTTP_HEAD: Final = 16 * 1024
"""Largest HTTP response head looked at for the upgrade (the relay sends a few short
headers); a longer one leaves the connection a raw pipe."""
MAX_QUEUED_BYTES: Final = 2 * MAX_MESSAGE
"""Bytes one direction of one connection may hold between its reader and its writer
(a unit is always admitted into an empty pipe)."""
MAX_INJECTED_MESSAGE: Final = 4 * MAX_MESSAGE
"""Largest payload :meth:`ProxiedConnection.inject_to_client` or
:meth:`~ProxiedConnection.inject_to_relay` accept (above every endpoint's limit, so a
test can send an oversized frame on purpose)."""
READ_CHUNK: Final = 64 * 1024
"""Bytes read from a socket at a time."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds to connect to the upstream relay before the client's connection is reset."""
CLOSE_TIMEOUT: Final = 2.0
"""Seconds a graceful close of a finished connection may take before it is reset."""
MAX_RECORDED_ERRORS: Final = 100
"""Hook exceptions kept in :attr:`FaultProxy.hook_errors` (the count goes on)."""

_OP_CONTINUATION: Final = 0x0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
_RAW: Final = -1
"""Pseudo-opcode of a parser unit that is only bytes to forward (after a violation)."""
_MAX_CONTROL_PAYLOAD: Final = 125
_RSV1: Final = 0x40

_F = TypeVar("_F", RelayFrame, ClientFrame)


class ProxyError(ClientError):
    """The proxy cannot do what was asked (the connection is closed or not yet a
    WebSocket, or the proxy is not running)."""


@dataclass(slots=True)
class ProxyStats:
    """Counters since the proxy was created (they survive a stop and a start)."""

    connections: int = 0
    """Client connections accepted."""
    upstream_failures: int = 0
    """Client connections reset because the relay could not be reached."""
    dropped: int = 0
    """Connections reset by :meth:`FaultProxy.drop_connections`."""
    oversized: int = 0
    """Connections reset for a frame or message above :data:`MAX_MESSAGE`."""
    messages_from_client: int = 0
    """Binary WebSocket messages read from clients."""
    messages_from_relay: int = 0
    """Binary WebSocket messages read from the relay."""
    hooked: int = 0
    """Messages a hook replaced or dropped."""
    hook_errors: int = 0
    """Hook calls that raised (each resets its connection)."""
    duplicated: int = 0
    """``Deliver`` messages sent twice by :meth:`FaultProxy.set_duplicate_probability`."""
    delayed: int = 0
    """Units (messages, control frames, HTTP chunks) held back by a delay."""
    injected: int = 0
    """Messages injected with :meth:`ProxiedConnection.inject_to_client` or
    :meth:`~ProxiedConnection.inject_to_relay`."""


class FrameHook:
    """Sees, and may change, the relay protocol's messages through the proxy.

    Subclasses override what they need. A method returns ``None`` to forward the
    message unchanged, ``[]`` to drop it, or a sequence of WebSocket binary message
    payloads to send instead, in order. Only complete binary messages that decode
    (with :func:`~e2ee.relay_frames.decode_relay_frame` or
    :func:`~e2ee.relay_frames.decode_client_frame`) reach hooks; HTTP, control frames
    and undecodable data are forwarded untouched. Hooks run in the order they were
    added, each seeing the payloads the previous ones let through (a replacement that
    does not decode goes on without reaching later hooks). A hook runs in its connection's
    reader for that direction: while it awaits, that direction waits (in order). A
    hook that raises resets its connection (see :attr:`FaultProxy.hook_errors`).
    """

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        """A message from the relay to ``conn``'s client (``raw`` is its payload)."""
        return None

    async def to_relay(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        """A message from ``conn``'s client to the relay (``raw`` is its payload)."""
        return None


# --- WebSocket framing -----------------------------------------------------------------


def _apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask`` (RFC 6455 5.3)."""
    if not data:
        return b""
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def _encode_frame(payload: bytes, *, masked: bool, opcode: int = _OP_BINARY) -> bytes:
    """One final frame carrying ``payload`` (masked with a fresh random key if asked)."""
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    head = bytearray([0x80 | opcode])
    if size < 126:
        head.append(mask_bit | size)
    elif size < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack("!H", size)
    else:
        head.append(mask_bit | 127)
        head += struct.pack("!Q", size)
    if not masked:
        return bytes(head) + payload
    mask = secrets.token_bytes(4)
    return bytes(head) + mask + _apply_mask(payload, mask)


class _Oversized(Exception):
    """A frame or reassembled message above the limit."""

    def __init__(self, size: int) -> None:
        super().__init__(f"a WebSocket message of at least {size} bytes")
        self.size = size


@dataclass(frozen=True, slots=True)
class _Unit:
    """What a parser hands on: a control frame, a complete data message (with its
    payload unmasked and reassembled), or raw bytes (``opcode`` :data:`_RAW`)."""

    opcode: int
    raw: bytes
    """The bytes as they came on the wire (every fragment of a message)."""
    payload: bytes = b""
    compressed: bool = False


_HELD: Final = _Unit(_OP_CONTINUATION, b"")
"""What the parser returns for a fragment that completes nothing yet."""


class _FrameParser:
    """Incremental RFC 6455 parser of one direction (holds at most one frame, one read
    chunk and the fragments of one message, each bounded by ``max_message``)."""

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._payloads: list[bytes] = []
        self._opcode = _OP_BINARY
        self._compressed = False
        self._size = 0
        self.broken = False
        """A framing violation was seen: everything from then on is raw bytes."""

    def feed(self, data: bytes) -> list[_Unit]:
        """The units completed by ``data``, in order.

        Raises:
            _Oversized: a frame or message above the limit (the connection must end).
        """
        if self.broken:
            return [_Unit(_RAW, data)] if data else []
        self._buffer += data
        units: list[_Unit] = []
        while not self.broken:
            unit = self._next()
            if unit is None:
                break
            if unit is not _HELD:
                units.append(unit)
        return units

    def leftover(self) -> bytes:
        """The bytes held (unfinished fragments, then the unfinished frame), which are
        then forgotten."""
        rest = b"".join(self._fragments) + bytes(self._buffer)
        self._buffer.clear()
        self._drop_fragments()
        return rest

    def _drop_fragments(self) -> None:
        self._fragments.clear()
        self._payloads.clear()
        self._size = 0

    def _violation(self) -> _Unit:
        self.broken = True
        return _Unit(_RAW, self.leftover())

    def _next(self) -> _Unit | None:
        """The next unit; ``None`` when more bytes are needed; :data:`_HELD` for a
        fragment that completes nothing yet."""
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        masked = bool(second & 0x80)
        length = second & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            if length >> 63:
                return self._violation()
            offset = 10
        control = opcode >= 8
        if control:
            if opcode not in (_OP_CLOSE, _OP_PING, _OP_PONG):
                return self._violation()
            if not fin or length > _MAX_CONTROL_PAYLOAD:
                return self._violation()
        elif opcode == _OP_CONTINUATION:
            if not self._fragments:
                return self._violation()
        elif opcode not in (_OP_TEXT, _OP_BINARY) or self._fragments:
            return self._violation()
        if not control and self._size + length > self._max:
            raise _Oversized(self._size + length)
        mask_size = 4 if masked else 0
        total = offset + mask_size + length
        if len(buf) < total:
            return None
        raw = bytes(buf[:total])
        del buf[:total]
        if control:
            if opcode == _OP_CLOSE and self._fragments:
                # the sender gives up its unfinished message: forward it as it came
                held = b"".join(self._fragments)
                self._drop_fragments()
                return _Unit(_OP_CLOSE, held + raw)
            return _Unit(opcode, raw)
        payload = raw[offset + mask_size :]
        if masked:
            payload = _apply_mask(payload, raw[offset : offset + 4])
        if opcode != _OP_CONTINUATION:
            self._opcode = opcode
            self._compressed = bool(first & _RSV1)
        if fin and not self._fragments:
            return _Unit(opcode, raw, payload, self._compressed)
        self._fragments.append(raw)
        self._payloads.append(payload)
        self._size += length
        if not fin:
            return _HELD
        unit = _Unit(
            self._opcode, b"".join(self._fragments), b"".join(self._payloads), self._compressed
        )
        self._drop_fragments()
        return unit


# --- the pipe between a reader and a writer ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Bytes to write once the loop's clock reaches ``due``; ``data=None`` is the end
    of the direction (half-close)."""

    data: bytes | None
    due: float


class _PipeClosed(Exception):
    """The pipe's connection has ended."""


class _Pipe:
    """A FIFO of chunks bounded in bytes, one per direction of one connection."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[_Chunk] = deque()
        self._size = 0
        self._closed = False
        self._changed = asyncio.Event()

    async def _wait(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def put(self, chunk: _Chunk) -> None:
        """Append ``chunk``, waiting for room.

        Raises:
            _PipeClosed: the connection ended.
        """
        size = len(chunk.data or b"")
        while not self._closed and self._size and self._size + size > self._limit:
            await self._wait()
        if self._closed:
            raise _PipeClosed
        self._chunks.append(chunk)
        self._size += size
        self._changed.set()

    async def get(self) -> _Chunk:
        """The oldest chunk, waiting for one.

        Raises:
            _PipeClosed: the connection ended.
        """
        while not self._closed and not self._chunks:
            await self._wait()
        if self._closed:
            raise _PipeClosed
        chunk = self._chunks.popleft()
        self._size -= len(chunk.data or b"")
        self._changed.set()
        return chunk

    def close(self) -> None:
        """Wake every waiter with :class:`_PipeClosed` and forget the chunks."""
        self._closed = True
        self._chunks.clear()
        self._size = 0
        self._changed.set()


# --- one connection ------------------------------------------------------------------------


class _Mode(Enum):
    HTTP = "http"
    WEBSOCKET = "websocket"
    RAW = "raw"


class _HookFailed(Exception):
    """A hook raised: the connection is reset."""


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close ``writer``'s socket with a TCP reset (``SO_LINGER`` 0), at once."""
    if writer is None:
        return
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Direction(Generic[_F]):
    """One direction of one connection: its pipe, parser and protocol side."""

    def __init__(
        self,
        *,
        to_client: bool,
        decode: Callable[[bytes], _F],
        call: Callable[
            [FrameHook, ProxiedConnection, _F, bytes], Awaitable[Sequence[bytes] | None]
        ],
    ) -> None:
        self.to_client = to_client
        self.decode: Callable[[bytes], _F] = decode
        self.call: Callable[
            [FrameHook, ProxiedConnection, _F, bytes], Awaitable[Sequence[bytes] | None]
        ] = call
        self.pipe = _Pipe(MAX_QUEUED_BYTES)
        self.parser = _FrameParser(MAX_MESSAGE)

    @property
    def name(self) -> str:
        return "to client" if self.to_client else "to relay"


async def _call_to_client(
    hook: FrameHook, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
) -> Sequence[bytes] | None:
    return await hook.to_client(conn, frame, raw)


async def _call_to_relay(
    hook: FrameHook, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
) -> Sequence[bytes] | None:
    return await hook.to_relay(conn, frame, raw)


class ProxiedConnection:
    """One client TCP connection through the proxy and its upstream connection.

    ``user_id`` and ``device_id`` are learnt from the client's ``Auth`` frame
    (``None`` before it, and for HTTP connections).
    """

    def __init__(self, proxy: FaultProxy, conn_id: int, client: asyncio.StreamWriter) -> None:
        self.id: Final = conn_id
        self.user_id: str | None = None
        self.device_id: int | None = None
        self._proxy = proxy
        self._client = client
        self._relay: asyncio.StreamWriter | None = None
        self._mode = _Mode.HTTP
        self._closed = False
        self._flowing = asyncio.Event()
        """Set while the relay-to-client direction may move (cleared by a stall)."""
        self._flowing.set()
        self._to_client: _Direction[RelayFrame] = _Direction(
            to_client=True, decode=decode_relay_frame, call=_call_to_client
        )
        self._to_relay: _Direction[ClientFrame] = _Direction(
            to_client=False, decode=decode_client_frame, call=_call_to_relay
        )

    def __repr__(self) -> str:
        return (
            f"ProxiedConnection(id={self.id}, user_id={self.user_id!r}, "
            f"device_id={self.device_id!r}, mode={self._mode.value})"
        )

    @property
    def websocket(self) -> bool:
        """Whether the relay accepted a WebSocket upgrade on this connection."""
        return self._mode is _Mode.WEBSOCKET

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed

    @property
    def stalled(self) -> bool:
        """Whether relay-to-client data is held (:meth:`FaultProxy.stall_reader`)."""
        return not self._flowing.is_set()

    async def inject_to_client(self, payload: bytes) -> None:
        """Send one binary WebSocket message with ``payload`` to the client, after what
        is already queued for it (subject to the delay and a stall; no hook sees it).

        Raises:
            UsageError: ``payload`` is not bytes or above :data:`MAX_INJECTED_MESSAGE`.
            ProxyError: the connection is closed or not (yet) a WebSocket.
        """
        await self._inject(self._to_client, payload)

    async def inject_to_relay(self, payload: bytes) -> None:
        """Send one binary WebSocket message with ``payload`` (masked with a fresh key)
        to the relay, after what is already queued for it (no hook sees it).

        Raises:
            UsageError: ``payload`` is not bytes or above :data:`MAX_INJECTED_MESSAGE`.
            ProxyError: the connection is closed or not (yet) a WebSocket.
        """
        await self._inject(self._to_relay, payload)

    async def _inject(self, direction: _Direction[_F], payload: object) -> None:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise UsageError("an injected payload must be bytes")
        if len(payload) > MAX_INJECTED_MESSAGE:
            raise UsageError(f"an injected payload is at most {MAX_INJECTED_MESSAGE} bytes")
        if self._closed:
            raise ProxyError(f"connection {self.id} is closed")
        if self._mode is not _Mode.WEBSOCKET:
            raise ProxyError(f"connection {self.id} is not a WebSocket")
        frame = _encode_frame(bytes(payload), masked=not direction.to_client)
        try:
            await self._put(direction, frame)
        except _PipeClosed:
            raise ProxyError(f"connection {self.id} is closed") from None
        self._proxy.stats.injected += 1
        logger.debug("connection %d: injected %d bytes %s", self.id, len(payload), direction.name)

    # --- running ---------------------------------------------------------------------------

    async def _run(self, client_reader: asyncio.StreamReader) -> None:
        """Connect upstream and move bytes both ways until both directions end (then
        close gracefully) or one fails (then reset both sockets)."""
        proxy = self._proxy
        port = proxy.upstream_port
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                relay_reader, self._relay = await asyncio.open_connection(HOST, port)
        except (OSError, TimeoutError) as exc:
            proxy.stats.upstream_failures += 1
            logger.debug(
                "connection %d: upstream port %d unreachable (%s)",
                self.id,
                port,
                type(exc).__name__,
            )
            _reset(self._client)
            return
        relay = self._relay
        tasks = [
            asyncio.create_task(self._read_client(client_reader), name=f"proxy-{self.id}-c-read"),
            asyncio.create_task(
                self._write(self._to_relay, relay), name=f"proxy-{self.id}-r-write"
            ),
            asyncio.create_task(self._read_relay(relay_reader), name=f"proxy-{self.id}-r-read"),
            asyncio.create_task(
                self._write(self._to_client, self._client), name=f"proxy-{self.id}-c-write"
            ),
        ]
        failed = True
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = False
            for task in done:
                error = task.exception()
                if error is not None:
                    failed = True
                    logger.debug(
                        "connection %d: %s ended with %s",
                        self.id,
                        task.get_name(),
                        type(error).__name__,
                    )
        finally:
            self._end()
            if failed:
                _reset(self._client)
                _reset(relay)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (self._client, relay):
            writer.close()
        for writer in (self._client, relay):
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                _reset(writer)

    def _end(self) -> None:
        self._closed = True
        self._to_client.pipe.close()
        self._to_relay.pipe.close()
        self._flowing.set()

    def _abort(self) -> None:
        """Reset both sockets now (the tasks then end)."""
        self._end()
        _reset(self._client)
        _reset(self._relay)

    async def _write(self, direction: _Direction[_F], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await direction.pipe.get()
            if direction.to_client:
                await self._flowing.wait()
            wait = chunk.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if chunk.data is None:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(chunk.data)
            await writer.drain()

    async def _put(self, direction: _Direction[_F], data: bytes | None) -> None:
        delay = self._proxy._next_delay()
        if delay > 0:
            self._proxy.stats.delayed += 1
        await direction.pipe.put(_Chunk(data, asyncio.get_running_loop().time() + delay))

    async def _read_client(self, reader: asyncio.StreamReader) -> None:
        direction = self._to_relay
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                await self._finish(direction)
                return
            if self._mode is _Mode.WEBSOCKET:
                await self._feed(direction, data)
            else:
                await self._put(direction, data)

    async def _read_relay(self, reader: asyncio.StreamReader) -> None:
        direction = self._to_client
        head = bytearray()
        while True:
            await self._flowing.wait()
            data = await reader.read(READ_CHUNK)
            if not data:
                if head:
                    await self._put(direction, bytes(head))
                await self._finish(direction)
                return
            if self._mode is _Mode.HTTP:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    if len(head) > MAX_HTTP_HEAD:
                        self._mode = _Mode.RAW
                        await self._put(direction, bytes(head))
                        head.clear()
                    continue
                status = bytes(head[: head.find(b"\r\n")]).split(b" ", 2)
                upgraded = (
                    len(status) >= 2 and status[0].startswith(b"HTTP/1.") and status[1] == b"101"
                )
                if not upgraded:
                    self._mode = _Mode.RAW
                    await self._put(direction, bytes(head))
                    head.clear()
                    continue
                # the mode changes before the 101 reaches the client, so every byte
                # the client sends after it is parsed as frames
                self._mode = _Mode.WEBSOCKET
                logger.debug("connection %d: WebSocket open", self.id)
                await self._put(direction, bytes(head[: end + 4]))
                data = bytes(head[end + 4 :])
                head.clear()
                if data:
                    await self._feed(direction, data)
            elif self._mode is _Mode.WEBSOCKET:
                await self._feed(direction, data)
            else:
                await self._put(direction, data)

    async def _finish(self, direction: _Direction[_F]) -> None:
        """The reader's socket reached EOF: forward what is held, then the EOF."""
        rest = direction.parser.leftover()
        if rest:
            await self._put(direction, rest)
        await self._put(direction, None)

    async def _feed(self, direction: _Direction[_F], data: bytes) -> None:
        was_broken = direction.parser.broken
        try:
            units = direction.parser.feed(data)
        except _Oversized as exc:
            self._proxy.stats.oversized += 1
            logger.debug(
                "connection %d: a frame of %d bytes %s is above the limit; resetting",
                self.id,
                exc.size,
                direction.name,
            )
            raise
        for unit in units:
            if unit.opcode == _OP_BINARY and not unit.compressed:
                await self._message(direction, unit)
            else:
                await self._put(direction, unit.raw)
        if direction.parser.broken and not was_broken:
            logger.debug("connection %d: framing violation %s; now raw", self.id, direction.name)

    async def _message(self, direction: _Direction[_F], unit: _Unit) -> None:
        proxy = self._proxy
        if direction.to_client:
            proxy.stats.messages_from_relay += 1
        else:
            proxy.stats.messages_from_client += 1
        hooks = tuple(proxy._hooks)
        duplicating = direction.to_client and proxy._duplicate_p > 0
        identified = direction.to_client or self.user_id is not None
        if not hooks and not duplicating and identified:
            await self._put(direction, unit.raw)
            return
        try:
            frame = direction.decode(unit.payload)
        except DecodeError:
            await self._put(direction, unit.raw)
            return
        if isinstance(frame, Auth):
            self._authenticated(frame)
        outputs = await self._apply_hooks(direction, hooks, frame, unit.payload)
        if outputs is None:
            await self._put(direction, unit.raw)
            if self._duplicate(direction, frame):
                await self._put(direction, unit.raw)
            return
        for out_frame, payload in outputs:
            wire = _encode_frame(payload, masked=not direction.to_client)
            await self._put(direction, wire)
            if self._duplicate(direction, out_frame):
                await self._put(direction, wire)

    def _authenticated(self, frame: Auth) -> None:
        self.user_id, self.device_id = frame.user_id, frame.device_id
        logger.debug(
            "connection %d: device %s/%d authenticates", self.id, frame.user_id, frame.device_id
        )
        self._proxy._apply_stall(self)

    def _duplicate(self, direction: _Direction[_F], frame: _F | None) -> bool:
        proxy = self._proxy
        if not direction.to_client or not isinstance(frame, Deliver) or proxy._duplicate_p <= 0:
            return False
        if proxy._rng.random() >= proxy._duplicate_p:
            return False
        proxy.stats.duplicated += 1
        logger.debug("connection %d: delivery seq %d sent twice", self.id, frame.seq)
        return True

    async def _apply_hooks(
        self, direction: _Direction[_F], hooks: Sequence[FrameHook], frame: _F, payload: bytes
    ) -> list[tuple[_F | None, bytes]] | None:
        """What the hooks make of one message: ``None`` if none changed it, else the
        payloads to send, each with its decoded frame (``None``: it does not decode,
        so later hooks do not see it)."""
        items: list[tuple[_F | None, bytes]] = [(frame, payload)]
        changed = False
        for hook in hooks:
            following: list[tuple[_F | None, bytes]] = []
            for item_frame, item_payload in items:
                if item_frame is None:
                    following.append((item_frame, item_payload))
                    continue
                try:
                    result = await direction.call(hook, self, item_frame, item_payload)
                    replacement = None if result is None else _payloads(result)
                except Exception as exc:
                    self._proxy._hook_failed(self, hook, exc)
                    raise _HookFailed from exc
                if replacement is None:
                    following.append((item_frame, item_payload))
                    continue
                changed = True
                self._proxy.stats.hooked += 1
                logger.debug(
                    "connection %d: %s replaced a message %s with %d",
                    self.id,
                    type(hook).__name__,
                    direction.name,
                    len(replacement),
                )
                for out in replacement:
                    try:
                        decoded: _F | None = direction.decode(out)
                    except DecodeError:
                        decoded = None
                    following.append((decoded, out))
            items = following
        return items if changed else None


def _payloads(result: object) -> list[bytes]:
    """A hook's replacement as a list of bytes.

    Raises:
        UsageError: it is not a sequence of bytes.
    """
    if isinstance(result, bytes | bytearray | memoryview | str) or not isinstance(result, Sequence):
        raise UsageError("a hook returns None or a sequence of bytes payloads")
    out: list[bytes] = []
    for item in result:
        if not isinstance(item, bytes | bytearray | memoryview):
            raise UsageError("a hook returns None or a sequence of bytes payloads")
        out.append(bytes(item))
    return out


# --- the proxy ---------------------------------------------------------------------------------


def _check_port(port: int, what: str, *, allow_zero: bool) -> int:
    if type(port) is not int or not (0 if allow_zero else 1) <= port <= 65535:
        raise UsageError(f"{what} must be a TCP port number")
    return port


class FaultProxy:
    """A fault-injecting proxy on 127.0.0.1 in front of a relay (see the module
    documentation).

    ``async with FaultProxy(relay_port) as proxy:`` then give SDK clients
    :attr:`url`. ``port`` 0 picks a free port at the first start; it then stays fixed
    (a stopped proxy starts again on it). ``seed`` seeds the randomness of the
    duplication and the delay jitter; ``hooks`` are the first :class:`FrameHook` s.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        port: int = 0,
        seed: int | None = None,
        hooks: Sequence[FrameHook] = (),
    ) -> None:
        self._upstream = _check_port(upstream_port, "upstream_port", allow_zero=False)
        self._port = _check_port(port, "port", allow_zero=True)
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        self._hooks: list[FrameHook] = []
        for hook in hooks:
            self.add_hook(hook)
        self._delay = 0.0
        self._jitter = 0.0
        self._duplicate_p = 0.0
        self._stalled: set[tuple[str, int]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._next_id = 0
        self._connections: dict[int, ProxiedConnection] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.stats = ProxyStats()
        """Counters (see :class:`ProxyStats`)."""
        self.hook_errors: list[Exception] = []
        """The first :data:`MAX_RECORDED_ERRORS` exceptions hooks raised."""

    def __repr__(self) -> str:
        return (
            f"FaultProxy(port={self._port}, upstream_port={self._upstream}, "
            f"running={self.running}, connections={len(self._connections)})"
        )

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether the proxy accepts connections."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The proxy's port (0 only before a start with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:{port}``: the relay URL to give clients.

        Raises:
            ProxyError: the port is not known yet (``port=0`` and never started).
        """
        if not self._port:
            raise ProxyError("the proxy's port is chosen when it starts")
        return f"ws://{HOST}:{self._port}"

    @property
    def upstream_port(self) -> int:
        """The relay port new connections go to."""
        return self._upstream

    async def start(self) -> None:
        """Listen on 127.0.0.1 (on :attr:`port`, or a free port the first time).

        Raises:
            UsageError: the proxy is already running.
            OSError: the port cannot be bound.
        """
        if self._server is not None:
            raise UsageError("the proxy is already running")
        self._closing = False
        self._server = await asyncio.start_server(self._accept, HOST, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.debug("proxy on port %d for upstream port %d", self._port, self._upstream)

    async def stop(self) -> None:
        """Stop listening, reset every connection, cancel and await every task
        (idempotent)."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._end(list(self._connections.values()), list(self._tasks.values()))
        if server is not None:
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The server's callback: synchronous, so the connection's task is known (and
        stoppable) from the moment the connection is."""
        if self._closing:
            _reset(writer)
            return
        self._next_id += 1
        conn = ProxiedConnection(self, self._next_id, writer)
        self.stats.connections += 1
        logger.debug("connection %d accepted", conn.id)
        self._connections[conn.id] = conn
        task = asyncio.create_task(self._serve(conn, reader), name=f"proxy-{conn.id}")
        self._tasks[conn.id] = task

    async def _serve(self, conn: ProxiedConnection, reader: asyncio.StreamReader) -> None:
        try:
            await conn._run(reader)
        except Exception as exc:  # the connection is reset; the proxy goes on
            logger.debug("connection %d failed: %s", conn.id, type(exc).__name__)
            conn._abort()
        finally:
            conn._end()
            self._connections.pop(conn.id, None)
            self._tasks.pop(conn.id, None)
            logger.debug("connection %d ended", conn.id)

    async def _end(
        self, conns: Sequence[ProxiedConnection], tasks: Sequence[asyncio.Task[None]]
    ) -> None:
        for conn in conns:
            conn._abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- faults ---------------------------------------------------------------------------------

    def set_upstream(self, port: int) -> None:
        """Send new connections to the relay on ``port`` (open ones stay where they are).

        Raises:
            UsageError: not a port number.
        """
        self._upstream = _check_port(port, "port", allow_zero=False)
        logger.debug("upstream port now %d", port)

    def connections(self) -> list[ProxiedConnection]:
        """The open connections, oldest first."""
        return list(self._connections.values())

    async def drop_connections(
        self, user_id: str | None = None, device_id: int | None = None
    ) -> int:
        """Reset the open connections of ``user_id`` (all of them if ``None``) and
        ``device_id`` (all of the user's devices if ``None``): both peers see a TCP
        reset. Returns how many were dropped, once they have ended.

        Raises:
            UsageError: ``device_id`` without ``user_id``.
        """
        if device_id is not None and user_id is None:
            raise UsageError("device_id needs user_id")
        chosen = [
            conn
            for conn in self._connections.values()
            if user_id is None
            or (conn.user_id == user_id and (device_id is None or conn.device_id == device_id))
        ]
        tasks = [self._tasks[c.id] for c in chosen if c.id in self._tasks]
        self.stats.dropped += len(chosen)
        logger.debug("dropping %d connections", len(chosen))
        current = asyncio.current_task()
        await self._end(chosen, [t for t in tasks if t is not current])
        return len(chosen)

    def set_delay(self, seconds: float, jitter: float = 0.0) -> None:
        """Delay every unit of both directions by ``seconds`` plus a uniform draw in
        ``[0, jitter)`` (order is kept per direction; 0 turns it off).

        Raises:
            UsageError: a negative or non-finite value.
        """
        for value in (seconds, jitter):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise UsageError("delay and jitter are finite numbers of seconds >= 0")
        self._delay, self._jitter = float(seconds), float(jitter)

    def set_duplicate_probability(self, p: float) -> None:
        """Send each relay-to-client ``Deliver`` message twice with probability ``p``
        (drawn after the hooks, from the seeded generator; hooks do not see the copy).

        Raises:
            UsageError: ``p`` is not in [0, 1].
        """
        if not isinstance(p, int | float) or not 0 <= p <= 1:
            raise UsageError("the duplicate probability is in [0, 1]")
        self._duplicate_p = float(p)

    def stall_reader(self, user_id: str, device_id: int) -> None:
        """Hold everything the relay sends to this device's connections, present and
        future, and stop reading their relay sockets (back-pressure reaches the relay)
        until :meth:`resume_reader`."""
        self._stalled.add((user_id, device_id))
        for conn in self._connections.values():
            self._apply_stall(conn)

    def resume_reader(self, user_id: str, device_id: int) -> None:
        """Undo :meth:`stall_reader` (what was held goes on, in order)."""
        self._stalled.discard((user_id, device_id))
        for conn in self._connections.values():
            self._apply_stall(conn)

    def add_hook(self, hook: FrameHook) -> None:
        """Add ``hook`` after the others (it sees messages from the next one on).

        Raises:
            UsageError: not a :class:`FrameHook`.
        """
        if not isinstance(hook, FrameHook):
            raise UsageError("hooks are FrameHook instances")
        self._hooks.append(hook)

    def remove_hook(self, hook: FrameHook) -> None:
        """Remove ``hook`` (no-op if it is not installed)."""
        with contextlib.suppress(ValueError):
            self._hooks.remove(hook)

    # --- internals ------------------------------------------------------------------------------

    def _apply_stall(self, conn: ProxiedConnection) -> None:
        if conn.user_id is None or conn.device_id is None or conn.closed:
            return
        if (conn.user_id, conn.device_id) in self._stalled:
            if conn._flowing.is_set():
                logger.debug("connection %d stalled", conn.id)
            conn._flowing.clear()
        elif not conn._flowing.is_set():
            logger.debug("connection %d resumed", conn.id)
            conn._flowing.set()

    def _next_delay(self) -> float:
        if self._jitter:
            return self._delay + self._jitter * self._rng.random()
        return self._delay

    def _hook_failed(self, conn: ProxiedConnection, hook: FrameHook, exc: Exception) -> None:
        self.stats.hook_errors += 1
        if len(self.hook_errors) < MAX_RECORDED_ERRORS:
            self.hook_errors.append(exc)
        logger.debug(
            "connection %d: hook %s raised %s; resetting the connection",
            conn.id,
            type(hook).__name__,
            type(exc).__name__,
        )
