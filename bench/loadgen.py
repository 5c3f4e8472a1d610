"""The lean load generator of the relay benchmark (bench/relay.py).

One process, one event loop, no WebSocket library: :class:`WsClient` is a minimal
RFC 6455 client on an :class:`asyncio.Protocol`. Client frames are masked (random
keys) when they are *built*, so sending a pre-built frame is one ``transport.write``;
server frames are parsed in place (length, opcode) and handed to a callback. Pings
are answered. The same client and the same pre-built ~200 B frames drive the relay
and the bare forwarder (bench/forwarder.py); only what completes a message differs:

* **relay**: the frame is a real ``Send`` (16-byte client message id, one ~150 B
  ciphertext for the recipient's one device). A sender keeps at most ``window``
  sends that the relay has not answered with ``Accepted``; a recipient parses each
  ``Deliver`` and acknowledges the sequence numbers of everything one read brought
  (one ``Ack`` per read: batched under load, one per message when they trickle).
* **bare**: the same bytes are forwarded verbatim; a sender's window is freed when
  its recipient receives the frame (there is no acceptance).

Every ciphertext carries a marker, the pair number and the message's index in its
pair, so a recipient checks order (FIFO per pair), duplicates and losses, and the
paced run computes each message's latency from its send time (both ends are in this
process: one clock).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import random
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import cbor2

from e2ee.relay_frames import Ack, FrameType, Send

__all__ = [
    "CIPHERTEXT_SIZE",
    "LoadError",
    "PacedResult",
    "Pair",
    "PairEndpoints",
    "ThroughputResult",
    "WsClient",
    "build_frames",
    "connect",
    "percentile",
    "run_paced",
    "run_throughput",
]

CIPHERTEXT_SIZE: Final = 150
"""Ciphertext bytes per message: with the Send framing (message id, recipient user id,
device id) the WebSocket payload is about 200 B."""
MARKER: Final = b"\x9a\x7bBENCH"
"""Starts every ciphertext: a recipient finds the pair and index right after it."""
_INDEX: Final = struct.Struct(">II")
MAX_PACED_BACKLOG_S: Final = 1.0
"""A paced run stops when more than this many seconds' worth of messages are sent and
not delivered: the server cannot sustain the rate, and flooding it further only
grows its queues (uvicorn stops reading a socket whose messages the app has not
taken, so even pongs would wait and the keep-alive would close it)."""
PACING_TICK_S: Final = 0.0005
"""Sleep between two looks at the paced schedule (the loop wakes about every 1 ms)."""
HANDSHAKE_TIMEOUT_S: Final = 30.0
"""Opening handshake bound (10,000 sockets are opened in waves)."""
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_ACCEPTED: Final = int(FrameType.ACCEPTED)
_DELIVER: Final = int(FrameType.DELIVER)
_CAUGHT_UP: Final = int(FrameType.CAUGHT_UP)


class LoadError(RuntimeError):
    """The load generator saw something that makes the run meaningless (a refusal, a
    closed socket, a lost, duplicated or reordered message)."""


# --- frames ---------------------------------------------------------------------------


def mask_frame(payload: bytes, opcode: int = _OP_BINARY, rng: random.Random | None = None) -> bytes:
    """One complete, masked client frame (FIN set) holding ``payload``."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = (rng or random).getrandbits(32).to_bytes(4, "big")
    if n == 0:
        return header + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return header + key + masked


def ciphertext(pair: int, index: int, padding: bytes) -> bytes:
    """The bench ciphertext: marker, pair, index, padding (CIPHERTEXT_SIZE bytes)."""
    return MARKER + _INDEX.pack(pair, index) + padding


def build_frames(
    pair: int,
    start: int,
    count: int,
    *,
    recipient_user: str,
    recipient_device: int,
    salt: bytes,
    rng: random.Random,
) -> list[bytes]:
    """``count`` masked ``Send`` frames of pair ``pair``, indexes ``start..start+count-1``.

    Each has its own client message id (the index and ``salt``, unique per run), so the
    relay stores every one (no idempotent replay). The same bytes go to the forwarder.

    The frames of one call differ only in the index inside the message id and inside
    the ciphertext (fixed-size fields at fixed offsets), so only the first is encoded;
    the others splice their index into its bytes: the generic encoder costs about
    30 us a frame, which made the load generator the bottleneck of the forwarder's runs
    whenever a pair ran out of pre-built frames. The last frame is checked against
    ``Send(...).to_bytes()``.
    """
    if count <= 0:
        return []
    padding = rng.randbytes(CIPHERTEXT_SIZE - len(MARKER) - _INDEX.size)

    def payload_of(index: int) -> bytes:
        send = Send(
            _INDEX.pack(pair, index) + salt,
            ((recipient_user, ((recipient_device, ciphertext(pair, index, padding)),)),),
        )
        return send.to_bytes()

    template = payload_of(start)
    first = _INDEX.pack(pair, start)
    id_at = template.index(first + salt)
    ct_at = template.index(MARKER + first) + len(MARKER)
    size = _INDEX.size
    head, middle, tail = template[:id_at], template[id_at + size : ct_at], template[ct_at + size :]
    frames = []
    for index in range(start, start + count):
        at = _INDEX.pack(pair, index)
        frames.append(mask_frame(head + at + middle + at + tail, rng=rng))
    last = start + count - 1
    if head + _INDEX.pack(pair, last) + middle + _INDEX.pack(pair, last) + tail != payload_of(last):
        raise LoadError("a spliced Send frame differs from its encoding")
    return frames


# --- the client -----------------------------------------------------------------------


class WsClient(asyncio.Protocol):
    """A minimal WebSocket client: handshake, frame parsing, ping answers, close."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {{key}}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buf = bytearray()
        self._handshaking = True
        self._expected_accept = b""
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.on_binary: Callable[[bytes], None] = self._inbox.put_nowait
        """Called with each binary message; by default they queue for :meth:`recv`."""
        self.on_read_end: Callable[[], None] | None = None
        """Called after each read's messages were handed to :attr:`on_binary`."""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        self._expected_accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        transport.write(self._request.replace("{key}", key.decode()).encode())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._handshaking:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            self._handshaking = False
            lines = head.split("\r\n")
            accept = b""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-accept":
                    accept = value.strip().encode()
            if not lines[0].startswith("HTTP/1.1 101") or accept != self._expected_accept:
                if not self.opened.done():
                    self.opened.set_exception(LoadError(f"handshake refused: {lines[0]!r}"))
                self._abort()
                return
            if not self.opened.done():
                self.opened.set_result(None)
        pos = 0
        size = len(buf)
        on_binary = self.on_binary
        while size - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            hlen = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                hlen = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hlen = 10
            end = pos + hlen + length
            if end > size:
                break
            payload = bytes(buf[pos + hlen : end])
            pos = end
            opcode = b0 & 0x0F
            if opcode == _OP_BINARY:
                on_binary(payload)
            elif opcode == _OP_PING:
                self.write(mask_frame(payload, _OP_PONG))
            elif opcode == _OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                self.write(mask_frame(payload[:2], _OP_CLOSE))
                self._abort()
                break
            elif opcode in (_OP_TEXT, _OP_CONT):
                self._fail(LoadError(f"unexpected frame opcode {opcode}"))
                break
        if pos:
            del buf[:pos]
        if self.on_read_end is not None:
            self.on_read_end()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(LoadError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)

    # API

    def write(self, frame: bytes) -> None:
        """Send one pre-built (masked) frame."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, payload: bytes) -> None:
        """Mask and send one binary message."""
        self.write(mask_frame(payload))

    async def recv(self, timeout: float) -> bytes:
        """The next queued binary message (only while :attr:`on_binary` is the default).

        Raises:
            LoadError: none within ``timeout`` or the connection closed.
        """
        getter = asyncio.ensure_future(self._inbox.get())
        waiters: set[asyncio.Future[Any]] = {getter, self.closed}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.closed.done():
            raise LoadError(f"connection closed with code {self.closed.result()}")
        raise LoadError(f"no message within {timeout} s")

    def close(self) -> None:
        """Send a normal close frame and drop the connection."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(b"\x03\xe8", _OP_CLOSE))
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._abort()


async def connect(host: str, port: int, path: str) -> WsClient:
    """Open a WebSocket to ``ws://host:port/path``.

    Raises:
        LoadError: the handshake failed or timed out.
        OSError: the TCP connection failed.
    """
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WsClient(host, port, path), host, port)
    try:
        await asyncio.wait_for(asyncio.shield(client.opened), HANDSHAKE_TIMEOUT_S)
    except TimeoutError:
        client.close()
        raise LoadError(f"WebSocket handshake to {path} timed out") from None
    return client


# --- pairs and runs -------------------------------------------------------------------


@dataclass
class PairEndpoints:
    """What the runner needs of one sender/recipient pair (connected, authenticated,
    caught up; the recipient's address for the Send frames)."""

    sender: WsClient
    recipient: WsClient
    recipient_user: str
    recipient_device: int


def _noop() -> None:
    return None


def _ignore(payload: bytes) -> None:
    return None


@dataclass
class Pair:
    """One pair's state during a run."""

    number: int
    ends: PairEndpoints
    frames: list[bytes]
    next_send: int = 0
    in_flight: int = 0
    accepted: int = 0
    delivered: int = 0
    expected: int = 0
    sent_at: list[float] = field(default_factory=list)
    """Send time of each message of the paced run, by index."""
    rec_lo: int = 1 << 62
    rec_hi: int = 1 << 62
    """Indexes ``rec_lo <= i < rec_hi`` were sent while recording latencies."""
    pending_acks: list[int] = field(default_factory=list)
    send_one: Callable[[], None] = _noop
    fill_window: Callable[[], None] = _noop


@dataclass
class ThroughputResult:
    """One closed-loop run."""

    pairs: int
    window: int
    seconds: float
    delivered: int
    msgs_per_s: float
    accepted_per_s: float | None
    total_sent: int
    probes: tuple[Any, Any] | None = None
    """``probe()`` at the start and at the end of the measured window."""


@dataclass
class PacedResult:
    """One paced (open-loop) run; times in milliseconds."""

    pairs: int
    rate: float
    seconds: float
    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    accepted_p50_ms: float | None
    accepted_p99_ms: float | None
    pacing_lag_p99_ms: float
    achieved_rate: float
    """Messages/s delivered during the measured window (overloaded: from the start to
    the end of the drain, the server's service rate)."""
    overloaded: bool = False
    """The server fell more than MAX_PACED_BACKLOG_S behind: the run stopped early."""
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    probes: tuple[Any, Any] | None = None


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by the nearest-rank method.

    Raises:
        LoadError: no values.
    """
    if not values:
        raise LoadError("no samples")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


class _Run:
    """Wires the callbacks of every pair for one run (throughput or paced)."""

    def __init__(
        self,
        pairs: list[Pair],
        *,
        relay: bool,
        window: int,
        frame_source: Callable[[Pair, int], list[bytes]],
        paced: bool,
    ) -> None:
        self.pairs = pairs
        self.relay = relay
        self.window = window
        self.frame_source = frame_source
        self.paced = paced
        self.sending = True
        self.finished = False
        self.delivered = 0
        self.accepted = 0
        self.failure: LoadError | None = None
        self.progress = asyncio.Event()
        self.latencies: list[float] = []
        self.accept_latencies: list[float] = []
        for pair in pairs:
            self._wire(pair)

    def _fail(self, message: str) -> None:
        if self.failure is None and not self.finished:
            self.failure = LoadError(message)
        self.sending = False
        self.progress.set()

    def _wire(self, pair: Pair) -> None:
        sender, recipient = pair.ends.sender, pair.ends.recipient
        number = pair.number
        now = time.perf_counter
        paced = self.paced

        def send_one() -> None:
            if pair.next_send >= len(pair.frames):
                pair.frames.extend(self.frame_source(pair, len(pair.frames)))
            if paced:
                pair.sent_at.append(now())
            sender.write(pair.frames[pair.next_send])
            pair.next_send += 1
            pair.in_flight += 1

        def fill_window() -> None:
            while self.sending and pair.in_flight < self.window:
                send_one()

        pair.send_one = send_one
        pair.fill_window = fill_window

        def delivered(index: int) -> None:
            if index != pair.expected:
                kind = "duplicate" if index < pair.expected else "gap (lost or reordered)"
                self._fail(f"pair {number}: {kind}: got index {index}, expected {pair.expected}")
                return
            pair.expected += 1
            pair.delivered += 1
            self.delivered += 1
            if pair.rec_lo <= index < pair.rec_hi:
                self.latencies.append(now() - pair.sent_at[index])
            self.progress.set()

        if self.relay:

            def on_sender(payload: bytes) -> None:
                m = cbor2.loads(payload)
                if m.get(0) != _ACCEPTED:
                    self._fail(f"pair {number}: relay answered a send with {m!r:.200}")
                    return
                pair.in_flight -= 1
                pair.accepted += 1
                self.accepted += 1
                if paced:
                    index = _INDEX.unpack_from(m[1])[1]
                    if pair.rec_lo <= index < pair.rec_hi:
                        self.accept_latencies.append(now() - pair.sent_at[index])
                else:
                    fill_window()
                self.progress.set()

            def on_recipient(payload: bytes) -> None:
                m = cbor2.loads(payload)
                kind = m.get(0)
                if kind == _DELIVER:
                    pair.pending_acks.append(m[1])
                    delivered(_INDEX.unpack_from(m[5], len(MARKER))[1])
                elif kind != _CAUGHT_UP:
                    self._fail(f"pair {number}: unexpected frame to recipient {m!r:.200}")

            def flush_acks() -> None:
                if pair.pending_acks:
                    recipient.send(Ack(tuple(pair.pending_acks)).to_bytes())
                    pair.pending_acks.clear()

            sender.on_binary = on_sender
            sender.on_read_end = None
            recipient.on_binary = on_recipient
            recipient.on_read_end = flush_acks
        else:

            def on_bare_recipient(payload: bytes) -> None:
                at = payload.find(MARKER)
                if at < 0:
                    self._fail(f"pair {number}: frame without bench ciphertext")
                    return
                delivered(_INDEX.unpack_from(payload, at + len(MARKER))[1])
                pair.in_flight -= 1
                if not paced:
                    fill_window()

            def on_bare_sender(payload: bytes) -> None:
                self._fail(f"pair {number}: the forwarder sent a frame to a sender")

            sender.on_binary = on_bare_sender
            sender.on_read_end = None
            recipient.on_binary = on_bare_recipient
            recipient.on_read_end = None

        for client, role in ((sender, "sender"), (recipient, "recipient")):
            client.closed.add_done_callback(self._closed_callback(number, role))

    def _closed_callback(self, number: int, role: str) -> Callable[[asyncio.Future[int]], None]:
        def closed(fut: asyncio.Future[int]) -> None:
            code = "?" if fut.cancelled() else fut.result()
            self._fail(f"pair {number}: the {role}'s connection closed (code {code})")

        return closed

    def sent(self) -> int:
        return sum(p.next_send for p in self.pairs)

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def drain(self, timeout: float) -> None:
        """Stop sending; wait until every sent message was delivered (and, on the
        relay, accepted), in order.

        Raises:
            LoadError: a failure, or not drained within ``timeout``.
        """
        self.sending = False
        deadline = time.perf_counter() + timeout
        while True:
            self.check()
            sent = self.sent()
            if self.delivered == sent and (not self.relay or self.accepted == sent):
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise LoadError(
                    f"not drained within {timeout} s: sent {sent}, delivered {self.delivered}"
                    + (f", accepted {self.accepted}" if self.relay else "")
                )
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), min(remaining, 0.5))
        for pair in self.pairs:
            if pair.expected != pair.next_send:
                raise LoadError(
                    f"pair {pair.number}: {pair.expected} of {pair.next_send} delivered"
                )

    def unwire(self) -> None:
        """Detach the callbacks (the connections stay open for the next run)."""
        self.finished = True
        for pair in self.pairs:
            for client in (pair.ends.sender, pair.ends.recipient):
                client.on_binary = _ignore
                client.on_read_end = None


async def run_throughput(
    ends: list[PairEndpoints],
    *,
    relay: bool,
    window: int,
    warmup_s: float,
    measure_s: float,
    frame_source: Callable[[Pair, int], list[bytes]],
    initial_frames: list[list[bytes]],
    drain_timeout_s: float = 60.0,
    probe: Callable[[], Any] | None = None,
) -> ThroughputResult:
    """Closed loop: every sender keeps ``window`` messages in flight; messages/s is
    what the recipients received during ``measure_s`` after ``warmup_s``. Then the
    senders stop and every message sent must arrive, in order, exactly once.

    Raises:
        LoadError: a refusal, a closed connection, a lost/duplicate/reordered message.
    """
    pairs = [Pair(i, e, initial_frames[i]) for i, e in enumerate(ends)]
    run = _Run(pairs, relay=relay, window=window, frame_source=frame_source, paced=False)
    try:
        for pair in pairs:
            pair.fill_window()
        await _sleep_checked(run, warmup_s)
        p0 = probe() if probe else None
        d0, a0, t0 = run.delivered, run.accepted, time.perf_counter()
        await _sleep_checked(run, measure_s)
        d1, a1, t1 = run.delivered, run.accepted, time.perf_counter()
        p1 = probe() if probe else None
        await run.drain(drain_timeout_s)
    finally:
        run.unwire()
    seconds = t1 - t0
    return ThroughputResult(
        pairs=len(pairs),
        window=window,
        seconds=seconds,
        delivered=d1 - d0,
        msgs_per_s=(d1 - d0) / seconds,
        accepted_per_s=(a1 - a0) / seconds if relay else None,
        total_sent=run.sent(),
        probes=None if probe is None else (p0, p1),
    )


async def run_paced(
    ends: list[PairEndpoints],
    *,
    relay: bool,
    rate: float,
    warmup_s: float,
    measure_s: float,
    frame_source: Callable[[Pair, int], list[bytes]],
    initial_frames: list[list[bytes]],
    drain_timeout_s: float = 60.0,
    probe: Callable[[], Any] | None = None,
) -> PacedResult:
    """Open loop at ``rate`` messages/s in total, round robin over the pairs (a
    sender does not wait for ``Accepted``, so a slow server cannot slow the schedule
    down and hide its queueing); latency is send -> delivery of every message sent
    during ``measure_s`` (after ``warmup_s``), from the actual send time. The pacing
    lag (actual - scheduled send time) is reported so a client that could not keep up
    shows.

    A server that cannot sustain the rate is not flooded without end: once more than
    :data:`MAX_PACED_BACKLOG_S` seconds' worth of messages are undelivered the run
    stops sending and reports ``overloaded`` with the rate it did deliver.

    Raises:
        LoadError: as :func:`run_throughput`.
    """
    pairs = [Pair(i, e, initial_frames[i]) for i, e in enumerate(ends)]
    run = _Run(pairs, relay=relay, window=0, frame_source=frame_source, paced=True)
    lags: list[float] = []
    max_backlog = max(100, int(rate * MAX_PACED_BACKLOG_S))
    overloaded = False
    p0: Any = None
    p1: Any = None
    recorded = 0
    d0 = 0
    t0 = t1 = time.perf_counter()
    d1 = 0
    try:
        start = time.perf_counter()
        record_from = start + warmup_s
        stop_at = record_from + measure_s
        scheduled = 0
        turn = 0
        recording = False
        while True:
            run.check()
            now = time.perf_counter()
            if now >= stop_at:
                break
            if run.sent() - run.delivered > max_backlog:
                overloaded = True
                break
            due = int((now - start) * rate)
            if not recording and now >= record_from:
                recording = True
                p0 = probe() if probe else None
                d0, t0 = run.delivered, now
                for pair in pairs:
                    pair.rec_lo = pair.rec_hi = pair.next_send
            while scheduled < due:
                pair = pairs[turn]
                turn = (turn + 1) % len(pairs)
                intended = start + scheduled / rate
                scheduled += 1
                if recording:
                    lags.append(time.perf_counter() - intended)
                    recorded += 1
                    pair.rec_hi += 1
                pair.send_one()
            await asyncio.sleep(PACING_TICK_S)
        p1 = probe() if probe else None
        d1, t1 = run.delivered, time.perf_counter()
        if not recording:
            d0, t0 = 0, start
        await run.drain(drain_timeout_s)
        if overloaded:  # busy from start to the end of the drain: its service rate
            d0, t0, d1, t1 = 0, start, run.delivered, time.perf_counter()
    finally:
        run.unwire()
    lat_ms = [x * 1000 for x in run.latencies]
    acc_ms = [x * 1000 for x in run.accept_latencies]
    if len(lat_ms) != recorded or (relay and len(acc_ms) != recorded):
        raise LoadError(
            f"paced run: {len(lat_ms)} latencies ({len(acc_ms)} accepted) for {recorded} sends"
        )
    nan = float("nan")
    return PacedResult(
        pairs=len(pairs),
        rate=rate,
        seconds=t1 - t0,
        messages=len(lat_ms),
        p50_ms=statistics.median(lat_ms) if lat_ms else nan,
        p99_ms=percentile(lat_ms, 0.99) if lat_ms else nan,
        max_ms=max(lat_ms, default=nan),
        accepted_p50_ms=statistics.median(acc_ms) if relay and acc_ms else None,
        accepted_p99_ms=percentile(acc_ms, 0.99) if relay and acc_ms else None,
        pacing_lag_p99_ms=percentile([x * 1000 for x in lags], 0.99) if lags else nan,
        achieved_rate=(d1 - d0) / (t1 - t0) if t1 > t0 else 0.0,
        overloaded=overloaded,
        latencies_ms=lat_ms,
        probes=None if probe is None else (p0, p1),
    )


async def _sleep_checked(run: _Run, seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while (remaining := deadline - time.perf_counter()) > 0:
        run.check()
        await asyncio.sleep(min(remaining, 0.1))
    run.check()
