"""The WebSocket endpoint ``/v1/ws``: the thin driver around :class:`RelaySession`
(CONVENTIONS 3).

One :class:`Connection` per socket moves bytes and owns the time: the auth timeout,
the sender task (every write bounded by :data:`~server.limits.OVERFLOW_SECONDS`), the
delivery task (backlog from sequence 0, ``CaughtUp``, then live on notifications,
within the delivery window) and the control tasks (takeover by a newer connection
of the same device on another node; device removed; prekeys low). Frames are binary
WebSocket messages; the uvicorn server is configured with ``ws_max_size =
MAX_FRAME`` so a bigger message is closed with 1009 before it is buffered (checked
here again for other servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from e2ee.relay_frames import Ack, CaughtUp, CloseCode, Error, ErrorCode

from . import limits
from .context import RelayContext
from .hub import control_key, takeover_key
from .notify import Listener
from .session import DeliveryWindow, RelaySession, Reply, deliver_frame
from .storage.base import QueuedMessage, StorageError

__all__ = ["Connection", "routes"]

logger = logging.getLogger(__name__)

_STORAGE_RETRY_SECONDS: Final = 1.0
_DISCONNECTED: Final = -1
_ACK_ATTEMPTS: Final = 5
"""How often a failed deletion of acknowledged messages is tried before it is given up
(the messages stay queued and come back on the device's next connection)."""


class _Overflow(Exception):
    """The client stopped reading or acknowledging."""


class Connection:
    """One WebSocket: a :class:`RelaySession` and the tasks that drive it."""

    def __init__(self, ctx: RelayContext, websocket: WebSocket) -> None:
        self._ctx = ctx
        self._ws = websocket
        ip = ctx.client_ip(websocket.client)
        self.session = RelaySession(ctx, ctx.rng(limits.NONCE_SIZE), ip, self.acks_deleted)
        self._out: deque[tuple[bytes, int]] = deque()
        """Frames to write, with the delivery sequence (0: not a delivery)."""
        self._out_waiter: asyncio.Future[None] | None = None
        """The sender's wait for a frame (set only while the queue is empty)."""
        self._write_started: float | None = None
        """When the write in progress began (loop time; ``None``: not writing)."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._write_guard: asyncio.Timeout | None = None
        self._answers = 0
        self._window = DeliveryWindow()
        self._window_open = asyncio.Event()
        self._close: tuple[CloseCode, str] | None = None
        self._closing = asyncio.Event()
        self._peer_gone = False
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Listener] = []
        self._stamp = 0
        self._in_request = False
        self._cursor = 0
        """The last sequence written to the delivery queue (backlog or live)."""
        self._live: Listener | None = None
        """The device's news while the delivery task waits for it, caught up: a
        message accepted meanwhile may be handed over directly (:meth:`offer`)."""
        self._sends: deque[tuple[asyncio.Task[Reply], int]] = deque()
        """Sends being stored, in the order they arrived, with their frame sizes
        (:meth:`_start_send`)."""
        self._send_bytes = 0
        """The frame bytes of :attr:`_sends`."""
        self._acks: list[int] = []
        """Acknowledged sequences not yet deleted (by :meth:`_delete_acked`)."""
        self._ack_task: asyncio.Task[None] | None = None

    # --- ConnectionHandle ---------------------------------------------------------------

    @property
    def stamp(self) -> int:
        """When this connection authenticated (its takeover stamp)."""
        return self._stamp

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close with ``code`` after the frames already queued (first request wins)."""
        if self._close is None:
            self._close = (code, reason)
        self._closing.set()

    async def closed(self) -> None:
        """Wait until the connection has finished."""
        await self._done.wait()

    async def acks_deleted(self) -> None:
        """Wait (at most :data:`~server.limits.CLOSE_SECONDS`) until the deletion of
        what this connection's device acknowledged so far has finished."""
        task = self._ack_task
        if task is not None:
            await asyncio.wait({task}, timeout=limits.CLOSE_SECONDS)

    def offer(self, message: QueuedMessage) -> bool:
        """Deliver ``message``, just accepted (committed) for this device, without
        reading it back from storage, if it is the next one in sequence and the
        delivery task is caught up and waiting with room in the window. Otherwise
        (``False``) the delivery task fetches it on the notification, as from
        another node."""
        news = self._live
        if (
            news is None
            or message.seq != self._cursor + 1
            or self._close is not None
            or not self._window.has_room()
        ):
            return False
        self._window.sent(message.seq, len(message.ciphertext))
        self._enqueue(deliver_frame(message), message.seq)
        self._cursor = message.seq
        news.delivered(message.seq)
        return True

    # --- the driver ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until it closes."""
        ctx = self._ctx
        await self._ws.accept()
        ctx.hub.opened(self)
        ctx.metrics.connections.inc()
        sender = asyncio.create_task(self._send_loop(), name="e2ee-ws-send")
        try:
            self._enqueue(self.session.hello())
            reader = asyncio.create_task(self._read_loop(), name="e2ee-ws-read")
            self._tasks.append(reader)
            loop = asyncio.get_running_loop()
            timer = loop.call_later(limits.AUTH_TIMEOUT_SECONDS, self._auth_deadline)
            try:
                await self._closing.wait()
            finally:
                timer.cancel()
            if self._in_request:
                # Let a request already being processed (a Send being committed) finish
                # and answer, bounded, rather than cancel it midway.
                await asyncio.wait({reader}, timeout=limits.CLOSE_SECONDS)
            if self._sends:
                await self._sends_done(limits.CLOSE_SECONDS)
            await self._stop_tasks()
            await self._finish(sender)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await self._stop_tasks()
            await self._cancel_sends()
            await self._finish_acks()
            for listener in self._listeners:
                with contextlib.suppress(Exception):
                    await listener.aclose()
            ctx.hub.closed(self)
            ctx.metrics.connections.dec()
            if self.session.authenticated:
                ctx.metrics.authenticated.dec()
            self._done.set()

    def _auth_deadline(self) -> None:
        if not self.session.authenticated:
            self._ctx.metrics.refused("auth_timeout")
            self.close_soon(CloseCode.AUTH_TIMEOUT, "no authentication in time")

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _finish(self, sender: asyncio.Task[None]) -> None:
        """Flush what is queued (bounded), then send the close frame."""
        if self._peer_gone or self._close is None:
            return
        code, reason = self._close
        if code is not CloseCode.OVERFLOW:
            self._enqueue_close()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                async with asyncio.timeout(limits.CLOSE_SECONDS):
                    await asyncio.shield(sender)
            if sender.done():
                return
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        with contextlib.suppress(Exception):
            async with asyncio.timeout(limits.CLOSE_SECONDS):
                await self._ws.close(int(code), reason)

    # --- writing ------------------------------------------------------------------------

    def _enqueue(self, frame: bytes, seq: int = 0) -> None:
        if seq == 0:
            self._answers += 1
            if self._answers > limits.OUTGOING_QUEUE:
                self._ctx.metrics.refused("overflow")
                self.close_soon(CloseCode.OVERFLOW, "client is not reading")
                return
        self._out.append((frame, seq))
        self._wake_sender()

    def _enqueue_close(self) -> None:
        self._out.append((b"", _DISCONNECTED))
        self._wake_sender()

    def _wake_sender(self) -> None:
        waiter = self._out_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _send_loop(self) -> None:
        """Write the queued frames in order, every write bounded by
        :data:`~server.limits.OVERFLOW_SECONDS`.

        The bound is one timeout around the whole loop, expired by :meth:`_check_write`
        (a timer armed at most once per bound) when the write in progress began
        ``OVERFLOW_SECONDS`` ago: a write rarely waits (only when the socket's buffer
        is full), and a timeout context per frame cost more than the write itself.
        """
        ws = self._ws
        out = self._out
        metrics = self._ctx.metrics
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as guard:
                self._write_guard = guard
                while True:
                    if not out:
                        waiter: asyncio.Future[None] = loop.create_future()
                        self._out_waiter = waiter
                        try:
                            await waiter
                        finally:
                            self._out_waiter = None
                        continue
                    frame, seq = out.popleft()
                    if seq == _DISCONNECTED:
                        if self._close is not None:
                            code, reason = self._close
                            async with asyncio.timeout(limits.CLOSE_SECONDS):
                                await ws.close(int(code), reason)
                        return
                    self._write_started = started = loop.time()
                    if self._watchdog is None:
                        self._watchdog = loop.call_at(
                            started + limits.OVERFLOW_SECONDS, self._check_write
                        )
                    await ws.send_bytes(frame)
                    self._write_started = None
                    if seq == 0:
                        self._answers -= 1
                    else:
                        metrics.messages_out.inc()
        except TimeoutError:
            metrics.refused("overflow")
            self.close_soon(CloseCode.OVERFLOW, "client is not reading")
        except Exception:  # the peer went away mid-write
            self._peer_gone = True
            self.close_soon(CloseCode.NORMAL, "")
        finally:
            self._write_started = None
            self._write_guard = None
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

    def _check_write(self) -> None:
        """The watchdog timer: expire the sender's guard when the write in progress
        began :data:`~server.limits.OVERFLOW_SECONDS` ago, or re-arm for its deadline."""
        self._watchdog = None
        started = self._write_started
        guard = self._write_guard
        if started is None or guard is None:
            return  # not writing: the next write arms the timer again
        deadline = started + limits.OVERFLOW_SECONDS
        loop = asyncio.get_running_loop()
        if loop.time() >= deadline:
            guard.reschedule(deadline)  # in the past: the sender is cancelled at once
        else:
            self._watchdog = loop.call_at(deadline, self._check_write)

    # --- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    self._peer_gone = True
                    self.close_soon(CloseCode.NORMAL, "")
                    return
                data = message.get("bytes")
                reply = self._text_frame() if data is None else await self._receive(data)
                if reply is None:
                    continue  # a send in flight: answered by _send_done
                if reply.frames and self._sends:
                    await self._sends_done()  # answers stay in order
                await self._apply(reply)
                if self._close is not None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("connection reader failed", exc_info=True)
            self.close_soon(CloseCode.INTERNAL_ERROR, "internal error")

    async def _receive(self, data: bytes) -> Reply | None:
        """Handle one binary frame: its reply, or ``None`` for a send now in flight
        (at most :data:`~server.limits.SENDS_IN_FLIGHT` of them and
        :data:`~server.limits.SENDS_IN_FLIGHT_BYTES`)."""
        session = self.session
        frame = session.parse(data)
        if isinstance(frame, Reply):
            return frame
        if session.pipelines(frame):
            self._start_send(session.handle(frame, data), len(data))
            while self._sends and (
                len(self._sends) >= limits.SENDS_IN_FLIGHT
                or self._send_bytes >= limits.SENDS_IN_FLIGHT_BYTES
            ):
                await asyncio.wait({self._sends[0][0]})
            return None
        if self._sends and type(frame) is not Ack:
            await self._sends_done()  # answers stay in order
        self._in_request = True
        try:
            return await session.handle(frame, data)
        finally:
            self._in_request = False

    def _start_send(self, handling: Coroutine[Any, Any, Reply], size: int) -> None:
        """Store a send without waiting for its commit: the reader goes on with the
        next frame, so a connection's sends share group commits. Answers are queued
        in arrival order by :meth:`_send_done`."""
        task = asyncio.get_running_loop().create_task(handling)
        self._sends.append((task, size))
        self._send_bytes += size
        task.add_done_callback(self._send_done)

    async def _sends_done(self, timeout: float | None = None) -> None:
        """Wait until every send in flight is answered (at most ``timeout`` s)."""
        await asyncio.wait({task for task, _ in self._sends}, timeout=timeout)

    def _send_done(self, _task: asyncio.Task[Reply]) -> None:
        sends = self._sends
        while sends and sends[0][0].done():
            task, size = sends.popleft()
            self._send_bytes -= size
            if task.cancelled():
                continue
            reply = task.result()  # handle() never raises
            for frame in reply.frames:
                self._enqueue(frame)
            if reply.close is not None:
                self.close_soon(*reply.close)

    def _text_frame(self) -> Reply:
        self._ctx.metrics.refused(ErrorCode.MALFORMED.name.lower())
        return Reply([Error(ErrorCode.MALFORMED, "frames are binary messages").to_bytes()])

    async def _apply(self, reply: Reply) -> None:
        for frame in reply.frames:
            self._enqueue(frame)
        if reply.acked:
            self._window.acked(reply.acked)
            self._window_open.set()
            await self._acknowledged(reply.acked)
        if reply.close is not None:
            self.close_soon(*reply.close)
            return
        if reply.authenticated:
            await self._authenticated()

    async def _authenticated(self) -> None:
        ctx = self._ctx
        session = self.session
        user_id, device_id = session.user_id, session.device_id
        if user_id is None or device_id is None:  # pragma: no cover - authenticated
            return
        ctx.metrics.authenticated.inc()
        self._stamp = ctx.hub.next_stamp(ctx.now_ms())
        previous = ctx.hub.get(session.key)
        try:
            # Listen before reading the backlog, so nothing stored meanwhile is missed.
            news = await ctx.notifier.listen(session.key)
            self._listeners.append(news)
            takeover = await ctx.notifier.listen(takeover_key(user_id, device_id))
            self._listeners.append(takeover)
            control = await ctx.notifier.listen(control_key(user_id, device_id))
            self._listeners.append(control)
            ctx.hub.attach(session.key, self)
            await ctx.notifier.notify(takeover_key(user_id, device_id), self._stamp)
            if previous is not None:
                # What the device acknowledged on its previous connection is deleted
                # before the backlog is read, so it is not delivered again.
                await previous.acks_deleted()
        except Exception:
            logger.warning("could not listen for a device's news", exc_info=True)
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "try again later")
            return
        self._tasks.append(asyncio.create_task(self._deliver_loop(news), name="e2ee-ws-deliver"))
        self._tasks.append(asyncio.create_task(self._takeover_loop(takeover), name="e2ee-ws-take"))
        self._tasks.append(asyncio.create_task(self._control_loop(control), name="e2ee-ws-ctl"))

    # --- acknowledgements ---------------------------------------------------------------

    async def _acknowledged(self, seqs: tuple[int, ...]) -> None:
        """Delete acknowledged messages in the background: an ``Ack`` has no answer, so
        the next frame need not wait for the deletion's commit, and the ``Ack`` frames
        arriving meanwhile are deleted together. Past
        :data:`~server.limits.ACK_BACKLOG` pending sequences the reader waits for the
        deletion in progress (memory stays bounded)."""
        self._acks.extend(seqs)
        task = self._ack_task
        if task is None:
            self._ack_task = asyncio.create_task(self._delete_acked(), name="e2ee-ws-ack")
        elif len(self._acks) > limits.ACK_BACKLOG:
            await asyncio.wait({task})

    async def _delete_acked(self) -> None:
        failures = 0
        try:
            while self._acks:
                seqs, self._acks = self._acks, []
                try:
                    await self.session.delete_acked(seqs)
                    failures = 0
                except StorageError:
                    failures += 1
                    if failures >= _ACK_ATTEMPTS:
                        logger.warning(
                            "gave up deleting %d acknowledged messages; they stay queued",
                            len(seqs),
                        )
                        failures = 0
                        continue
                    logger.warning("deleting acknowledged messages failed; retrying")
                    self._acks[:0] = seqs
                    await asyncio.sleep(_STORAGE_RETRY_SECONDS)
                except Exception:  # a bug: they stay queued and come back (at least once)
                    logger.exception("deleting %d acknowledged messages failed", len(seqs))
        finally:
            self._ack_task = None

    async def _cancel_sends(self) -> None:
        """Cancel the sends still being stored (after :meth:`run` waited for them,
        bounded): a send stored anyway is answered to the client's retry."""
        sends = [task for task, _ in self._sends]
        for task in sends:
            task.cancel()
        for task in sends:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sends.clear()
        self._send_bytes = 0

    async def _finish_acks(self) -> None:
        """Let the deletion of what was acknowledged finish (bounded) as the connection
        ends, so a reconnecting device is not sent it again."""
        task = self._ack_task
        if task is not None:
            await asyncio.wait({task}, timeout=limits.CLOSE_SECONDS)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- delivery -----------------------------------------------------------------------

    async def _deliver_loop(self, news: Listener) -> None:
        """Backlog from sequence 0, ``CaughtUp``, then live (DESIGN 5)."""
        ctx = self._ctx
        user_id, device_id = self.session.user_id, self.session.device_id
        if user_id is None or device_id is None:  # pragma: no cover - authenticated
            return
        seen = 0
        caught_up = False
        try:
            with contextlib.suppress(StorageError):
                ctx.metrics.queue_depth.set(await ctx.storage.messages.depth(user_id, device_id))
            while True:
                try:
                    batch = await ctx.storage.messages.fetch(
                        user_id, device_id, self._cursor, limits.FETCH_BATCH, ctx.now_ms()
                    )
                except StorageError:
                    logger.warning("delivery fetch failed; retrying", exc_info=True)
                    await asyncio.sleep(_STORAGE_RETRY_SECONDS)
                    continue
                for message in batch:
                    if not self._window.has_room():
                        await self._wait_window()
                    self._window.sent(message.seq, len(message.ciphertext))
                    self._enqueue(deliver_frame(message), message.seq)
                    self._cursor = message.seq
                if len(batch) == limits.FETCH_BATCH:
                    continue
                if not caught_up:
                    caught_up = True
                    self._enqueue(CaughtUp().to_bytes())
                self._live = news
                try:
                    latest = await news.wait(max(self._cursor, seen), limits.IDLE_RECHECK_SECONDS)
                finally:
                    self._live = None
                if latest is not None:
                    seen = latest
        except _Overflow:
            ctx.metrics.refused("overflow")
            self.close_soon(CloseCode.OVERFLOW, "client stopped acknowledging")

    async def _wait_window(self) -> None:
        while not self._window.has_room():
            self._window_open.clear()
            try:
                async with asyncio.timeout(limits.ACK_STALL_SECONDS):
                    await self._window_open.wait()
            except TimeoutError:
                raise _Overflow from None

    # --- control ------------------------------------------------------------------------

    async def _takeover_loop(self, takeover: Listener) -> None:
        """A newer connection of this device (on any node) closes this one."""
        while True:
            if await takeover.wait(self._stamp, limits.IDLE_RECHECK_SECONDS) is not None:
                self.close_soon(CloseCode.CONNECTED_ELSEWHERE, "connected elsewhere")
                return

    async def _control_loop(self, control: Listener) -> None:
        """Re-read the device's state when told it changed (removed, prekeys low)."""
        seen = control.latest
        while True:
            latest = await control.wait(seen, limits.IDLE_RECHECK_SECONDS)
            if latest is None:
                continue
            seen = latest
            reply = await self.session.state_check()
            await self._apply(reply)
            if reply.close is not None:
                return


def routes(ctx: RelayContext) -> list[BaseRoute]:
    """``/v1/ws``."""

    async def endpoint(websocket: WebSocket) -> None:
        await Connection(ctx, websocket).run()

    return [WebSocketRoute("/v1/ws", endpoint)]
