"""The relay connection's driver: one ``websockets`` client connection around a
:class:`~client_sdk.transport.protocol.RelayProtocol` (CONVENTIONS 3).

The driver moves bytes and owns the time: the opening handshake (TLS, then the SPKI
pin, checked before the protocol object exists and so before anything is signed),
the authentication, a reader task, a timeout on every request, and the close. It
never resends anything: a send whose answer is lost (timeout, disconnect) is resent
by the SDK's outbox from its stored bytes, with the same client message id, on the
next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Final, TypeAlias, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode as WsCloseCode

from e2ee.errors import E2EEError
from e2ee.prekeys import SignedPublicPreKey
from e2ee.primitives import spki_sha256
from e2ee.relay_frames import (
    MAX_RELAY_FRAME,
    Accepted,
    BundleResult,
    DeviceListResult,
    KeyStatus,
    Mismatch,
    Ok,
    RelayFrame,
)

from ..errors import (
    ConnectionFailed,
    MalformedFrame,
    PinMismatch,
    RelayRefused,
    RequestTimeout,
    TransportError,
    UsageError,
)
from .protocol import (
    Answer,
    Authenticated,
    CaughtUpEvent,
    Delivery,
    DeviceIdentity,
    PreKeysLowEvent,
    ProtocolEvent,
    RelayNotice,
    RelayProtocol,
    RequestKey,
    State,
)
from .refusals import close_error

__all__ = [
    "CLOSE_TIMEOUT",
    "MAX_MESSAGE",
    "OPEN_TIMEOUT",
    "REQUEST_TIMEOUT",
    "RelayConnection",
    "RelayEvent",
]

logger = logging.getLogger(__name__)

OPEN_TIMEOUT: Final = 15.0
"""Seconds for TCP, TLS, the WebSocket handshake and authentication together (the
relay's nonce lives 30 s; a slow link should fail well inside that)."""
REQUEST_TIMEOUT: Final = 30.0
"""Seconds a request waits for its answer (a send is committed in one transaction on
the relay; 30 s is far beyond a healthy relay, short enough to reconnect)."""
CLOSE_TIMEOUT: Final = 5.0
"""Seconds the closing handshake may take before the socket is dropped."""
MAX_MESSAGE: Final = MAX_RELAY_FRAME + 1024
"""Largest WebSocket message read: a frame of :data:`MAX_RELAY_FRAME` plus room for
headers; anything between the two fails frame decoding (MalformedFrame), anything
above is closed by ``websockets`` with 1009 before it is buffered."""
_SPKI_PIN_SIZE: Final = 32

RelayEvent: TypeAlias = Delivery | CaughtUpEvent | PreKeysLowEvent | RelayNotice
"""What :meth:`RelayConnection.events` yields."""

_F = TypeVar("_F", bound=RelayFrame)


def _observed_spki(ws: ClientConnection) -> bytes:
    ssl_object = ws.transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl_module.SSLObject | ssl_module.SSLSocket):
        raise ConnectionFailed("a wss:// connection without TLS")
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise ConnectionFailed("the relay presented no certificate")
    try:
        return spki_sha256(der)
    except E2EEError as exc:
        raise ConnectionFailed("the relay's certificate does not decode") from exc


class RelayConnection:
    """One authenticated connection of one device to the relay.

    Open with :meth:`connect`; use as an async context manager (or call
    :meth:`close`). Requests may run concurrently from several tasks; events
    (deliveries, ``CaughtUp``, prekeys low, refusals of no request) are read with
    :meth:`events`. When the relay closes the connection, every waiting request and
    the event iterator raise the typed close error (:mod:`client_sdk.transport.refusals`).
    """

    def __init__(
        self,
        ws: ClientConnection,
        protocol: RelayProtocol,
        *,
        spki: bytes | None,
        request_timeout: float,
    ) -> None:
        self._ws = ws
        self._protocol = protocol
        self.spki_sha256 = spki
        """SHA-256 of the relay certificate's SubjectPublicKeyInfo (``None`` without TLS)."""
        self.relay_time_ms: int | None = None
        """The relay's clock at authentication."""
        self._request_timeout = request_timeout
        self._waiters: dict[RequestKey, asyncio.Future[RelayFrame]] = {}
        self._events: asyncio.Queue[RelayEvent | None] = asyncio.Queue()
        """Unbounded: the relay's delivery window bounds the unacknowledged deliveries,
        and a bounded queue would stall answers behind events nobody reads yet.
        ``None`` marks the end."""
        self._error: TransportError | None = None
        self._closing = False
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RelayConnection({self._protocol!r})"

    # --- opening -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        origin: str,
        identity: DeviceIdentity,
        spki_pin: bytes | None = None,
        ssl: ssl_module.SSLContext | None = None,
        open_timeout: float = OPEN_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> RelayConnection:
        """Connect to the relay's WebSocket ``url`` and authenticate (DESIGN 5, 6).

        For ``wss://`` the SHA-256 of the certificate's SubjectPublicKeyInfo is read
        from the TLS handshake and compared with ``spki_pin`` (when given) before the
        relay's ``Hello`` is even read, so nothing is signed for a relay that fails the
        pin; the same hash goes into the signed statement. ``origin`` is the relay
        URL the client was configured with (what the relay expects in the statement).

        Raises:
            UsageError: a pin without ``wss://``, or a pin that is not 32 bytes.
            PinMismatch: the certificate's key is not the pinned one (closed, nothing
                signed).
            ConnectionFailed: unreachable, TLS or WebSocket handshake failed, timeout,
                or the connection broke during authentication.
            NoCommonVersion: the relay speaks no version this SDK speaks.
            MalformedFrame: the relay sent an invalid frame.
            AuthFailed: the relay refused the authentication.
            Disconnected: (a subclass) the relay closed during authentication.
        """
        tls = url.startswith("wss://")
        if spki_pin is not None and (not tls or len(spki_pin) != _SPKI_PIN_SIZE):
            raise UsageError("an SPKI pin needs a wss:// URL and is 32 bytes (SHA-256)")
        try:
            ws = await connect(
                url,
                ssl=ssl if tls else None,
                compression=None,
                max_size=MAX_MESSAGE,
                open_timeout=open_timeout,
                close_timeout=CLOSE_TIMEOUT,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConnectionFailed(f"could not connect to the relay: {type(exc).__name__}") from exc
        try:
            spki = _observed_spki(ws) if tls else None
            if spki_pin is not None and (spki is None or not hmac.compare_digest(spki, spki_pin)):
                logger.warning("the relay's certificate does not match the SPKI pin")
                raise PinMismatch(expected=spki_pin, seen=spki or b"")
            protocol = RelayProtocol(origin=origin, identity=identity, spki_sha256=spki)
            conn = cls(ws, protocol, spki=spki, request_timeout=request_timeout)
            await conn._authenticate(open_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await ws.close(WsCloseCode.NORMAL_CLOSURE)
            raise
        conn._reader = asyncio.create_task(conn._read_loop(), name="e2ee-relay-reader")
        logger.info("connected to the relay as device %d", identity.device_id)
        return conn

    async def _authenticate(self, timeout: float) -> None:
        ws = self._ws
        protocol = self._protocol
        try:
            async with asyncio.timeout(timeout):
                while protocol.state is not State.OPEN:
                    data = await ws.recv(decode=False)
                    try:
                        events = protocol.receive(data)
                    except MalformedFrame:
                        await self._close_for_violation()
                        raise
                    for frame in protocol.data_to_send():
                        await ws.send(frame)
                    for event in events:
                        self._dispatch(event)
        except TimeoutError:
            raise ConnectionFailed(
                "the relay did not authenticate the connection in time"
            ) from None
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None

    # --- the reader ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        error: TransportError | None = None
        try:
            while True:
                data = await self._ws.recv(decode=False)
                events = self._protocol.receive(data)
                for event in events:
                    self._dispatch(event)
        except ConnectionClosed as exc:
            error = None if self._closing else self._closed_error(exc)
        except MalformedFrame as exc:
            logger.warning("closing the relay connection: %s", exc)
            error = exc
            await self._close_for_violation()
        except TransportError as exc:  # pragma: no cover - receive raises only the above when open
            error = exc
            await self._close_for_violation()
        except Exception as exc:
            error = ConnectionFailed(f"the relay connection failed: {type(exc).__name__}")
            error.__cause__ = exc
        finally:
            self._finish(error)

    def _closed_error(self, exc: ConnectionClosed) -> TransportError:
        received = exc.rcvd
        if received is None:
            error: TransportError = ConnectionFailed("the connection to the relay was lost")
        else:
            error = close_error(int(received.code), received.reason)
        logger.info("the relay connection ended: %s", type(error).__name__)
        return error

    async def _close_for_violation(self) -> None:
        self._protocol.closed()
        with contextlib.suppress(Exception):
            await self._ws.close(WsCloseCode.PROTOCOL_ERROR, "malformed frame")

    def _finish(self, error: TransportError | None) -> None:
        self._error = error
        self._protocol.closed()
        failure = error or ConnectionFailed("the connection was closed")
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(failure)
        self._waiters.clear()
        self._events.put_nowait(None)

    def _dispatch(self, event: ProtocolEvent) -> None:
        if isinstance(event, Answer):
            future = self._waiters.pop(event.key, None)
            if future is None or future.done():
                return
            if isinstance(event.result, RelayRefused):
                future.set_exception(event.result)
            else:
                future.set_result(event.result)
        elif isinstance(event, Authenticated):
            self.relay_time_ms = event.relay_time_ms
        else:
            self._events.put_nowait(event)

    # --- events --------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[RelayEvent]:
        """Deliveries, ``CaughtUp``, prekeys-low and unaddressed refusals, in order.

        Ends when :meth:`close` was called; otherwise, when the connection ends,
        raises its typed error after the events received before it.

        Raises:
            Disconnected: (or a subclass: ``GoingAway``, ``Overflow``,
                ``ConnectedElsewhere``, ``DeviceRemoved``) the relay closed.
            AuthFailed, RateLimited: the relay closed with those close codes.
            ConnectionFailed: the connection was lost without a close frame.
            MalformedFrame: the relay sent an invalid frame (the connection is closed).
        """
        while True:
            item = await self._events.get()
            if item is None:
                self._events.put_nowait(None)
                if self._error is not None:
                    raise self._error
                return
            yield item

    @property
    def is_open(self) -> bool:
        """Whether the connection is authenticated and not closed."""
        return self._protocol.state is State.OPEN and self._error is None

    async def wait_closed(self) -> TransportError | None:
        """Wait until the connection ends; why (``None`` when :meth:`close` ended it)."""
        if self._reader is not None:
            await asyncio.shield(self._reader)
        return self._error

    # --- requests ------------------------------------------------------------------------

    async def _write(self) -> None:
        for frame in self._protocol.data_to_send():
            await self._ws.send(frame)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing or self._protocol.state is not State.OPEN:
            raise UsageError("the relay connection is closed")

    async def _call(
        self, operation: str, start: Callable[[], RequestKey], expected: type[_F]
    ) -> _F:
        self._check_usable()
        key = start()
        future: asyncio.Future[RelayFrame] = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._write()
                result = await future
        except TimeoutError:
            self._protocol.forget(key)
            raise RequestTimeout(operation, self._request_timeout) from None
        except ConnectionClosed:
            await self.wait_closed()
            raise (self._error or ConnectionFailed("the connection was closed")) from None
        finally:
            self._waiters.pop(key, None)
            if future.done() and not future.cancelled():
                # The connection ended (or the bound expired) while the frame was still
                # being written: the answer's failure was set but never awaited, and the
                # error raised above already says what happened.
                future.exception()
        if not isinstance(result, expected):  # pragma: no cover - the protocol checks types
            raise MalformedFrame(f"{operation}: unexpected {type(result).__name__}")
        return result

    async def send(
        self, client_msg_id: bytes, addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]]
    ) -> Accepted | Mismatch:
        """Send one message: a ciphertext per addressed device of each addressed user.

        Returns ``Accepted`` (durably stored for every device; a retry with the same
        id and content gets the same answer) or ``Mismatch`` (nothing stored: the
        device sets were not exact).

        Raises:
            IdempotencyConflict, QueueFull, RateLimited, TooLarge, UnknownUser,
                RelayUnavailable, RelayRefused: the relay refused it (typed by code).
            RequestTimeout: no answer in time (resend later with the same id).
            UsageError: a malformed id, the same id already in flight, or closed.
            TransportError: the connection ended first (its typed close error).
        """
        return await self._call(
            "send",
            lambda: self._protocol.send(client_msg_id, addressed),
            Accepted | Mismatch,  # type: ignore[arg-type]
        )

    async def upload_prekeys(
        self,
        *,
        signed_prekey: SignedPublicPreKey | None = None,
        one_time: Iterable[SignedPublicPreKey] = (),
        kem: Iterable[SignedPublicPreKey] = (),
        last_resort: SignedPublicPreKey | None = None,
    ) -> None:
        """Upload prekeys (each signed by this device).

        Raises:
            BadSignatureRefused, PreKeyIdReused, TooLarge, RelayRefused: refused.
            RequestTimeout, UsageError, TransportError: as :meth:`send`.
        """
        await self._call(
            "upload_prekeys",
            lambda: self._protocol.upload_prekeys(
                signed_prekey=signed_prekey, one_time=one_time, kem=kem, last_resort=last_resort
            ),
            Ok,
        )

    async def claim_bundle(self, user_id: str, device_id: int) -> bytes:
        """Claim a device's prekey bundle: its bytes (an ``e2ee.prekeys.PreKeyBundle``,
        to be checked against the verified device list).

        Raises:
            UnknownUser, UnknownDevice, NoPreKeys, RateLimited, RelayRefused: refused.
            RequestTimeout, UsageError, TransportError: as :meth:`send`.
        """
        result = await self._call(
            "claim_bundle", lambda: self._protocol.claim_bundle(user_id, device_id), BundleResult
        )
        return result.bundle

    async def get_device_list(self, user_id: str) -> bytes:
        """A user's signed device list, as bytes (verify before use).

        Raises:
            UnknownUser, RelayRefused: refused.
            RequestTimeout, UsageError, TransportError: as :meth:`send`.
        """
        result = await self._call(
            "get_device_list", lambda: self._protocol.get_device_list(user_id), DeviceListResult
        )
        return result.signed_list

    async def put_device_list(self, signed_list: bytes) -> None:
        """Publish the next version of this account's signed device list.

        Raises:
            DeviceListRollback, BadSignatureRefused, RelayRefused: refused.
            RequestTimeout, UsageError, TransportError: as :meth:`send`.
        """
        await self._call("put_device_list", lambda: self._protocol.put_device_list(signed_list), Ok)

    async def key_check(self) -> KeyStatus:
        """What the relay holds for this device (signed and last-resort prekeys, counts
        of one-time prekeys, the digest of the accepted device list).

        Raises:
            RelayRefused: refused.
            RequestTimeout, UsageError, TransportError: as :meth:`send`.
        """
        return await self._call("key_check", self._protocol.key_check, KeyStatus)

    async def ack(self, seqs: Iterable[int]) -> None:
        """Acknowledge deliveries that are durably processed (the relay deletes them).

        Raises:
            UsageError: closed.
            TransportError: the connection ended (its typed close error).
            RequestTimeout: the frames could not be written in time.
        """
        self._check_usable()
        self._protocol.ack(seqs)
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._write()
        except TimeoutError:
            raise RequestTimeout("ack", self._request_timeout) from None
        except ConnectionClosed:
            await self.wait_closed()
            raise (self._error or ConnectionFailed("the connection was closed")) from None

    # --- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection (bounded by :data:`CLOSE_TIMEOUT`); waiting requests
        fail with ``ConnectionFailed``; :meth:`events` ends."""
        self._closing = True
        with contextlib.suppress(Exception):
            await self._ws.close(WsCloseCode.NORMAL_CLOSURE)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def __aenter__(self) -> RelayConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
