"""The SDK benchmark (issue 4): end-to-end messages/s and latency through the client SDK
with real crypto, beside the relay-only figures of the same run on the same relay.

``python -m bench.sdk`` starts one relay (bench/launch.py, exactly as bench/relay.py
launches it: SQLite, the default database file in a fresh data directory, the shipped
durability settings, the bench's generous rate limits) and measures, for 10 and 100
sender/recipient pairs:

* **SDK**: ``Client`` objects in this process (one event loop), each with its own
  encrypted SQLite store (raw 32-byte keys) in a temporary directory and its own
  WebSocket. A sender calls ``await client.send(peer, text)`` (a 100-character text:
  padded payload, Double Ratchet encryption, outbox commit, ``Send``, ``Accepted``,
  outbox delete); a recipient runs ``async for message in client.messages()`` (decrypt,
  commit session + inbox + dedupe record, ``Ack``, yield) and calls ``message.done()``.
  Sessions are set up before anything is measured (one message each way per pair), so
  the measured messages are normal ratchet messages, not pre-key messages.
* **relay only**: bench/relay.py's lean load generator (bench/loadgen.py: pre-built
  ~200 B ``Send`` frames on a minimal WebSocket client, no crypto, no store) on bench
  accounts of the same relay.

Two measurements per pair count, for both sides:

* **messages/s**, closed loop with one message in flight per sender (an SDK sender
  awaits ``send``, which returns on ``Accepted``; the load generator's window is 1,
  freed on ``Accepted``): messages received per second over the measured window;
* **p50/p99 latency**, send -> received (the SDK: from calling ``send`` to the
  recipient's loop yielding the message; the load generator: from writing the frame
  to reading the ``Deliver``), paced at the same rate on both sides: half the SDK's
  messages/s for that pair count in the same round.

Rounds: every measurement runs once per round, the order of SDK and relay-only
alternating; a figure is the median over rounds, a ratio the median of per-round
ratios, latency percentiles are over every sample of every round. CPU use of this
process (the clients) and of the relay during each window is printed beside them.

See bench/README.md ("SDK benchmark") for the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from client_sdk.client import Client, Message
from client_sdk.errors import ClientError

from .accounts import RegistrationError
from .loadgen import LoadError, percentile
from .relay import (
    Bench,
    BenchRefused,
    Target,
    _cpu_probe,
    _fs_type,
    check_durability,
    cpu_share,
    machine_info,
    start_relay,
)
from .relay import Settings as RelaySettings
from .servers import ServerError, raise_fd_limit

__all__ = [
    "SdkPair",
    "SdkResult",
    "Settings",
    "main",
    "run_bench",
    "sdk_paced",
    "sdk_throughput",
]

PAIR_COUNTS: Final = (10, 100)
FULL_TIMES: Final = (1.0, 4.0)
QUICK_TIMES: Final = (0.3, 1.0)
"""(warm-up, measured) seconds per run."""
FULL_ROUNDS: Final = 3
PACED_SHARE: Final = 0.5
"""The paced latency runs send at this share of the SDK's closed-loop messages/s."""
TEXT_SIZE: Final = 100
"""Characters per SDK message (ASCII)."""
MAX_PACED_BACKLOG_S: Final = 1.0
"""A paced run stops (overloaded) when more than this many seconds' worth of messages
are sent and not received (as bench/loadgen.py's paced runs)."""
PACING_TICK_S: Final = 0.0005
DRAIN_TIMEOUT_S: Final = 120.0
"""Every message sent must be received within this after the senders stop."""
REGISTER_CONCURRENCY: Final = 8
STEP_TIMEOUT_S: Final = 120.0


class SdkLoadError(RuntimeError):
    """An SDK run saw something that makes it meaningless (a lost, duplicated or
    reordered message, a failed send)."""


def _log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)


# --- SDK clients -------------------------------------------------------------------------


@dataclass
class SdkPair:
    """One sender/recipient pair of registered clients and its counters for a run."""

    number: int
    sender: Client
    recipient: Client
    sent_at: list[float] = field(default_factory=list)
    """Time each message of the current run was handed to ``send``, by index."""
    expected: int = 0
    """Index of the next message the recipient must yield."""
    rec_lo: int = 1 << 62
    rec_hi: int = 1 << 62
    """Indexes ``rec_lo <= i < rec_hi`` were sent while recording latencies."""

    @property
    def recipient_id(self) -> str:
        return self.recipient.user_id

    def reset(self) -> None:
        self.sent_at.clear()
        self.expected = 0
        self.rec_lo = self.rec_hi = 1 << 62


@dataclass
class SdkResult:
    """One SDK run (closed loop or paced); times in milliseconds."""

    pairs: int
    seconds: float
    received: int
    msgs_per_s: float
    total_sent: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    rate: float | None = None
    pacing_lag_p99_ms: float = math.nan
    overloaded: bool = False
    probes: tuple[Any, Any] | None = None


def _text(run: int, pair: int, index: int) -> str:
    head = f"{run}:{pair}:{index}:"
    return head + "x" * (TEXT_SIZE - len(head))


class _SdkRun:
    """The recipients' loops of one run: check order, count, record latencies."""

    def __init__(self, pairs: list[SdkPair], run: int) -> None:
        self.pairs = pairs
        self.run = run
        self.received = 0
        self.latencies: list[float] = []
        self.failure: SdkLoadError | None = None
        self.progress = asyncio.Event()
        for pair in pairs:
            pair.reset()
        self._tasks = [asyncio.create_task(self._receive(p)) for p in pairs]

    def fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = SdkLoadError(message)
        self.progress.set()

    def check(self) -> None:
        if self.failure is not None:
            raise self.failure
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise SdkLoadError(f"a recipient's loop failed: {task.exception()!r}")

    def _accept(self, pair: SdkPair, message: Message) -> None:
        now = time.perf_counter()
        body = message.body
        parts = body.split(":", 3) if isinstance(body, str) else []
        if len(parts) != 4 or message.sender_user != pair.sender.user_id:
            self.fail(f"pair {pair.number}: unexpected message from {message.sender_user}")
            return
        run, number, index = int(parts[0]), int(parts[1]), int(parts[2])
        if run != self.run or number != pair.number or index != pair.expected:
            self.fail(
                f"pair {pair.number}: got {run}:{number}:{index}, expected "
                f"{self.run}:{pair.number}:{pair.expected} (lost, duplicated or reordered)"
            )
            return
        pair.expected += 1
        self.received += 1
        if pair.rec_lo <= index < pair.rec_hi:
            self.latencies.append(now - pair.sent_at[index])
        self.progress.set()

    async def _receive(self, pair: SdkPair) -> None:
        async for message in pair.recipient.messages():
            self._accept(pair, message)
            # done() at once (the loop would do it on its next step): a loop cancelled
            # at the end of the run must not leave a yielded message for the next run.
            await message.done()

    def sent(self) -> int:
        return sum(len(p.sent_at) for p in self.pairs)

    async def drain(self, sending: Awaitable[Any]) -> None:
        """Wait for the senders to finish, then for every message to be received.

        Raises:
            SdkLoadError: a failure, or not drained within :data:`DRAIN_TIMEOUT_S`.
        """
        await sending
        deadline = time.perf_counter() + DRAIN_TIMEOUT_S
        while True:
            self.check()
            if all(p.expected == len(p.sent_at) for p in self.pairs):
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise SdkLoadError(
                    f"not drained in {DRAIN_TIMEOUT_S} s: sent {self.sent()}, "
                    f"received {self.received}"
                )
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), min(remaining, 0.5))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _send(run: _SdkRun, pair: SdkPair) -> None:
    index = len(pair.sent_at)
    pair.sent_at.append(time.perf_counter())
    try:
        await pair.sender.send(pair.recipient_id, _text(run.run, pair.number, index))
    except ClientError as exc:
        run.fail(f"pair {pair.number}: send failed: {type(exc).__name__}: {exc}")


async def _sleep_checked(run: _SdkRun, seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while (remaining := deadline - time.perf_counter()) > 0:
        run.check()
        await asyncio.sleep(min(remaining, 0.1))
    run.check()


async def sdk_throughput(
    pairs: list[SdkPair],
    *,
    run_id: int,
    warmup_s: float,
    measure_s: float,
    probe: Callable[[], Any] | None = None,
) -> SdkResult:
    """Closed loop: every sender awaits one ``send`` after the other; messages/s is what
    the recipients yielded during ``measure_s`` after ``warmup_s``. Then the senders stop
    and every message must arrive, in order, exactly once.

    Raises:
        SdkLoadError: a failed send, a lost/duplicate/reordered message, no drain.
    """
    run = _SdkRun(pairs, run_id)
    sending = True
    recording = False

    async def sender(pair: SdkPair) -> None:
        while sending and run.failure is None:
            if recording and pair.rec_lo > len(pair.sent_at):
                pair.rec_lo = len(pair.sent_at)
            await _send(run, pair)
        pair.rec_hi = min(pair.rec_hi, len(pair.sent_at))

    try:
        senders = asyncio.gather(*(sender(p) for p in pairs))
        await _sleep_checked(run, warmup_s)
        p0 = probe() if probe else None
        recording = True
        d0, t0 = run.received, time.perf_counter()
        await _sleep_checked(run, measure_s)
        d1, t1 = run.received, time.perf_counter()
        p1 = probe() if probe else None
        sending = False
        await run.drain(senders)
    finally:
        sending = False
        await run.stop()
    seconds = t1 - t0
    lat_ms = [x * 1000 for x in run.latencies]
    return SdkResult(
        pairs=len(pairs),
        seconds=seconds,
        received=d1 - d0,
        msgs_per_s=(d1 - d0) / seconds,
        total_sent=run.sent(),
        latencies_ms=lat_ms,
        p50_ms=statistics.median(lat_ms) if lat_ms else math.nan,
        p99_ms=percentile(lat_ms, 0.99) if lat_ms else math.nan,
        probes=None if probe is None else (p0, p1),
    )


async def sdk_paced(
    pairs: list[SdkPair],
    *,
    run_id: int,
    rate: float,
    warmup_s: float,
    measure_s: float,
    probe: Callable[[], Any] | None = None,
) -> SdkResult:
    """Open loop at ``rate`` messages/s in total, round robin over the pairs: each send
    is started at its scheduled time as its own task (a sender does not wait for its
    previous ``send``); latency is send -> yielded for every message started during
    ``measure_s`` after ``warmup_s``. Overloaded (more than
    :data:`MAX_PACED_BACKLOG_S` of messages not received): stops early and says so.

    Raises:
        SdkLoadError: as :func:`sdk_throughput`.
    """
    run = _SdkRun(pairs, run_id)
    tasks: set[asyncio.Task[None]] = set()
    lags: list[float] = []
    max_backlog = max(20, int(rate * MAX_PACED_BACKLOG_S))
    overloaded = False
    p0: Any = None
    d0 = 0
    start = time.perf_counter()
    t0 = start
    try:
        record_from = start + warmup_s
        stop_at = record_from + measure_s
        scheduled = turn = 0
        recording = False
        while True:
            run.check()
            now = time.perf_counter()
            if now >= stop_at:
                break
            if run.sent() - run.received > max_backlog:
                overloaded = True
                break
            if not recording and now >= record_from:
                recording = True
                p0 = probe() if probe else None
                d0, t0 = run.received, now
                for pair in pairs:
                    pair.rec_lo = pair.rec_hi = len(pair.sent_at)
            due = int((now - start) * rate)
            while scheduled < due:
                pair = pairs[turn]
                turn = (turn + 1) % len(pairs)
                intended = start + scheduled / rate
                scheduled += 1
                if recording:
                    lags.append(time.perf_counter() - intended)
                    pair.rec_hi += 1
                task = asyncio.create_task(_send(run, pair))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(PACING_TICK_S)
        p1 = probe() if probe else None
        d1, t1 = run.received, time.perf_counter()
        await run.drain(asyncio.gather(*tasks))
        if overloaded:
            d0, t0, d1, t1 = 0, start, run.received, time.perf_counter()
    finally:
        for task in list(tasks):
            task.cancel()
        await run.stop()
    lat_ms = [x * 1000 for x in run.latencies]
    return SdkResult(
        pairs=len(pairs),
        seconds=t1 - t0,
        received=d1 - d0,
        msgs_per_s=(d1 - d0) / (t1 - t0) if t1 > t0 else 0.0,
        total_sent=run.sent(),
        latencies_ms=lat_ms,
        p50_ms=statistics.median(lat_ms) if lat_ms else math.nan,
        p99_ms=percentile(lat_ms, 0.99) if lat_ms else math.nan,
        rate=rate,
        pacing_lag_p99_ms=percentile([x * 1000 for x in lags], 0.99) if lags else math.nan,
        overloaded=overloaded,
        probes=None if probe is None else (p0, p1),
    )


async def open_sdk_pairs(
    stack: contextlib.AsyncExitStack, url: str, origin: str, stores: Path, count: int
) -> list[SdkPair]:
    """Open and register ``2 * count`` clients (raw-key stores in ``stores``) and set up
    every pair's session with one message each way.

    Raises:
        ClientError: a registration or a send failed.
        SdkLoadError: the set-up messages did not arrive.
    """
    tag = secrets.token_hex(3)
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def client(name: str) -> Client:
        async with gate:
            opened = await stack.enter_async_context(
                Client.open(
                    url, store=stores / f"{name}.db", key=secrets.token_bytes(32), origin=origin
                )
            )
            await opened.register(name)
            return opened

    clients = await asyncio.gather(
        *(client(f"sdk{tag}-{role}{i:04d}") for i in range(count) for role in ("s", "r"))
    )
    pairs = [SdkPair(i, clients[2 * i], clients[2 * i + 1]) for i in range(count)]

    async def first_exchange(pair: SdkPair) -> None:
        for a, b in ((pair.sender, pair.recipient), (pair.recipient, pair.sender)):
            await a.send(b.user_id, "hello")
            async for message in b.messages():
                if message.sender_user != a.user_id or message.body != "hello":
                    raise SdkLoadError(f"pair {pair.number}: unexpected set-up message")
                await message.done()
                break

    async with asyncio.timeout(STEP_TIMEOUT_S):
        await asyncio.gather(*(first_exchange(p) for p in pairs))
    return pairs


# --- the run -------------------------------------------------------------------------------


@dataclass
class Settings:
    """What one run of the bench does."""

    quick: bool = False
    rounds: int = FULL_ROUNDS
    pair_counts: tuple[int, ...] = PAIR_COUNTS
    warmup_s: float = FULL_TIMES[0]
    measure_s: float = FULL_TIMES[1]
    paced_share: float = PACED_SHARE
    json_path: Path | None = None
    keep: bool = False


@dataclass
class _Figures:
    sdk_tp: dict[int, list[SdkResult]] = field(default_factory=dict)
    relay_tp: dict[int, list[float]] = field(default_factory=dict)
    sdk_paced: dict[int, list[SdkResult]] = field(default_factory=dict)
    relay_paced: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def _share(probes: tuple[Any, Any] | None, msgs_per_s: float) -> dict[str, float]:
    share = cpu_share(probes)
    if share and msgs_per_s > 0:
        share["client_us_per_msg"] = share["loadgen"] / msgs_per_s * 1e6
        share["server_us_per_msg"] = share["server"] / msgs_per_s * 1e6
    return share


class _Rounds:
    """Runs the measurements of each round on the SDK pairs and the relay-only pairs."""

    def __init__(
        self,
        settings: Settings,
        target: Target,
        relay_bench: Bench,
        sdk: list[SdkPair],
        log: Callable[[str], None],
    ) -> None:
        self.s = settings
        self.target = target
        self.relay_bench = relay_bench
        self.sdk = sdk
        self.log = log
        self.figures = _Figures()
        self.probe = _cpu_probe(target.server)

    async def sdk_closed(self, count: int, run_id: int) -> SdkResult:
        result = await sdk_throughput(
            self.sdk[:count],
            run_id=run_id,
            warmup_s=self.s.warmup_s,
            measure_s=self.s.measure_s,
            probe=self.probe,
        )
        self.figures.sdk_tp.setdefault(count, []).append(result)
        share = _share(result.probes, result.msgs_per_s)
        self.figures.cpu.setdefault(f"sdk/tp{count}", []).append(share)
        return result

    async def relay_closed(self, count: int) -> float:
        result = await self.relay_bench.throughput_run(self.target, count)
        self.figures.relay_tp.setdefault(count, []).append(result.msgs_per_s)
        share = _share(result.probes, result.msgs_per_s)
        self.figures.cpu.setdefault(f"relay-only/tp{count}", []).append(share)
        return result.msgs_per_s

    async def sdk_latency(self, count: int, run_id: int, rate: float) -> SdkResult:
        result = await sdk_paced(
            self.sdk[:count],
            run_id=run_id,
            rate=rate,
            warmup_s=self.s.warmup_s,
            measure_s=self.s.measure_s,
            probe=self.probe,
        )
        self.figures.sdk_paced.setdefault(count, []).append(result)
        return result

    async def relay_latency(self, count: int, rate: float) -> dict[str, Any]:
        # bench/relay.py's paced run reads its rate and pair count from its settings.
        self.relay_bench.s.rate = rate
        self.relay_bench.s.paced_pairs = count
        paced = await self.relay_bench.paced_run(self.target)
        entry = {
            "rate": rate,
            "p50_ms": paced.p50_ms,
            "p99_ms": paced.p99_ms,
            "overloaded": paced.overloaded,
            "latencies_ms": paced.latencies_ms,
            "pacing_lag_p99_ms": paced.pacing_lag_p99_ms,
        }
        self.figures.relay_paced.setdefault(count, []).append(entry)
        return entry

    async def round(self, number: int) -> None:
        """Every measurement once; SDK first in even rounds, relay only first in odd."""
        shown = f"round {number + 1}/{self.s.rounds}"
        for count in self.s.pair_counts:
            run_id = number * 1_000 + count
            if number % 2 == 0:
                sdk_result = await self.sdk_closed(count, run_id)
                relay_rate = await self.relay_closed(count)
            else:
                relay_rate = await self.relay_closed(count)
                sdk_result = await self.sdk_closed(count, run_id)
            rate = max(1.0, sdk_result.msgs_per_s * self.s.paced_share)
            self.log(
                f"{shown}, {count} pairs: msg/s SDK {sdk_result.msgs_per_s:,.0f}, relay only "
                f"{relay_rate:,.0f}; paced at {rate:,.0f} msg/s ..."
            )
            if number % 2 == 0:
                sdk_lat = await self.sdk_latency(count, run_id + 500, rate)
                relay_lat = await self.relay_latency(count, rate)
            else:
                relay_lat = await self.relay_latency(count, rate)
                sdk_lat = await self.sdk_latency(count, run_id + 500, rate)
            self.log(
                f"{shown}, {count} pairs, at {rate:,.0f} msg/s: SDK p50 {sdk_lat.p50_ms:.1f} "
                f"p99 {sdk_lat.p99_ms:.1f} ms{' (overloaded)' if sdk_lat.overloaded else ''}, "
                f"relay only p50 {relay_lat['p50_ms']:.2f} p99 {relay_lat['p99_ms']:.2f} ms"
                f"{' (overloaded)' if relay_lat['overloaded'] else ''}"
            )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(settings: Settings, figures: _Figures) -> dict[str, Any]:
    """Medians over rounds, paired ratios, pooled latency percentiles."""
    out: dict[str, Any] = {}
    for count in settings.pair_counts:
        sdk_tp = [r.msgs_per_s for r in figures.sdk_tp.get(count, [])]
        relay_tp = figures.relay_tp.get(count, [])
        sdk_lat = [x for r in figures.sdk_paced.get(count, []) for x in r.latencies_ms]
        relay_lat = [x for e in figures.relay_paced.get(count, []) for x in e["latencies_ms"]]
        rates = [r.rate or 0.0 for r in figures.sdk_paced.get(count, [])]
        entry: dict[str, Any] = {
            "sdk_msgs_per_s": _median(sdk_tp),
            "relay_msgs_per_s": _median(relay_tp),
            "sdk_rounds": sdk_tp,
            "relay_rounds": relay_tp,
            "throughput_ratio": _median([s / r for s, r in zip(sdk_tp, relay_tp, strict=True)]),
            "paced_rates": rates,
            "sdk_p50_ms": statistics.median(sdk_lat) if sdk_lat else math.nan,
            "sdk_p99_ms": percentile(sdk_lat, 0.99) if sdk_lat else math.nan,
            "relay_p50_ms": statistics.median(relay_lat) if relay_lat else math.nan,
            "relay_p99_ms": percentile(relay_lat, 0.99) if relay_lat else math.nan,
            "sdk_latency_samples": len(sdk_lat),
            "relay_latency_samples": len(relay_lat),
            "sdk_overloaded": any(r.overloaded for r in figures.sdk_paced.get(count, [])),
            "relay_overloaded": any(e["overloaded"] for e in figures.relay_paced.get(count, [])),
            "sdk_closed_loop_p50_ms": statistics.median(
                [x for r in figures.sdk_tp.get(count, []) for x in r.latencies_ms] or [math.nan]
            ),
        }
        for side in ("sdk", "relay"):
            for q in ("p50", "p99"):
                entry.setdefault(f"{side}_{q}_ms", math.nan)
        entry["p50_ratio"] = entry["sdk_p50_ms"] / entry["relay_p50_ms"]
        entry["p99_ratio"] = entry["sdk_p99_ms"] / entry["relay_p99_ms"]
        out[str(count)] = entry
    out["cpu"] = {
        key: {
            k: _median([s[k] for s in shares if k in s])
            for k in ("server", "loadgen", "other", "client_us_per_msg", "server_us_per_msg")
            if any(k in s for s in shares)
        }
        for key, shares in figures.cpu.items()
    }
    return out


def render(settings: Settings, summary: dict[str, Any]) -> list[str]:
    """The result table (Markdown) and the CPU lines."""
    lines = [
        "| measurement | SDK (real crypto, stores) | relay only (load generator) | SDK / relay only |",
        "|---|---:|---:|---:|",
    ]
    for count in settings.pair_counts:
        e = summary[str(count)]
        rate = _median(e["paced_rates"])
        lines.append(
            f"| msg/s, {count} pairs | {e['sdk_msgs_per_s']:,.0f} | {e['relay_msgs_per_s']:,.0f} |"
            f" {e['throughput_ratio']:.3f} |"
        )
        for q in ("p50", "p99"):
            sdk = f"{e[f'sdk_{q}_ms']:.2f}" + (" (overloaded)" if e["sdk_overloaded"] else "")
            relay = f"{e[f'relay_{q}_ms']:.2f}" + (" (overloaded)" if e["relay_overloaded"] else "")
            lines.append(
                f"| {q} latency ms, {count} pairs, at {rate:,.0f} msg/s | {sdk} | {relay} |"
                f" {e[f'{q}_ratio']:.1f}x |"
            )
    lines.append("")
    lines.append(
        "CPU during the measured closed-loop windows, in cores: this process (SDK clients or "
        "load generator) / relay / other jobs; CPU per message:"
    )
    for key, share in summary["cpu"].items():
        if "client_us_per_msg" not in share:
            continue
        lines.append(
            f"  {key}: {share['loadgen']:.2f} / {share['server']:.2f} / {share['other']:.2f};"
            f" client {share['client_us_per_msg']:,.0f} us, relay "
            f"{share['server_us_per_msg']:,.0f} us per message"
        )
    return lines


async def run_bench(settings: Settings) -> dict[str, Any]:
    """Run the whole bench; print progress and the table; return every figure.

    Raises:
        BenchRefused: the relay does not run with the shipped durability settings.
        ServerError, LoadError, RegistrationError, SdkLoadError, ClientError: a server,
            the load or a client failed.
    """
    start = time.perf_counter()

    def log(message: str) -> None:
        _log(start, message)

    raise_fd_limit()
    machine = machine_info()
    print(
        f"SDK bench: {machine['cpus']} CPUs ({machine['cpu']}), {machine['python']}, load "
        f"average {machine['loadavg']}; rounds {settings.rounds}, pairs "
        f"{'/'.join(map(str, settings.pair_counts))}, {settings.warmup_s} s warm-up + "
        f"{settings.measure_s} s measured per run",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="e2ee-sdk-bench-"))
    stores = work / "stores"
    stores.mkdir()
    result: dict[str, Any] = {
        "machine": machine,
        "settings": json.loads(json.dumps(asdict(settings), default=str)),
    }
    figures = _Figures()
    target: Target | None = None
    try:
        log(f"starting the relay on SQLite in {work} ({_fs_type(work)})")
        target = await start_relay("sqlite", work, data_dir=work / "relay-data", db_url=None)
        check_durability("sqlite", target.durability)
        result["durability"] = target.durability
        url = f"ws://127.0.0.1:{target.server.port}"
        most = max(settings.pair_counts)
        async with contextlib.AsyncExitStack() as stack:
            t0 = time.perf_counter()
            sdk = await open_sdk_pairs(stack, url, target.origin, stores, most)
            result["sdk_setup_s"] = time.perf_counter() - t0
            log(
                f"SDK: {2 * most} clients registered, {most} sessions set up in "
                f"{result['sdk_setup_s']:.1f} s"
            )
            t0 = time.perf_counter()
            await target.connect_pairs(most, seed=4_000)
            log(
                f"relay only: {most} pairs registered and authenticated in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            relay_bench = Bench(
                RelaySettings(window=1, warmup_s=settings.warmup_s, measure_s=settings.measure_s),
                start,
            )
            rounds = _Rounds(settings, target, relay_bench, sdk, log)
            for number in range(settings.rounds):
                await rounds.round(number)
            figures = rounds.figures
    finally:
        if target is not None:
            target.close()
            target.server.stop()
        if not settings.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(settings, figures)
    result["summary"] = summary
    print()
    print(f"## SDK benchmark ({machine['date']}, {machine['cpus']} CPUs)")
    for line in render(settings, summary):
        print(line)
    shown = ", ".join(f"{k}={v}" for k, v in result["durability"].items())
    print(f"relay durability, read back: {shown} (the shipped defaults)")
    if settings.json_path is not None:
        settings.json_path.write_text(json.dumps(result, indent=2, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m bench.sdk [--quick] [--rounds N] [--pairs 10,100] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.sdk", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 0.3 + 1 s per run"
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL_ROUNDS}; --quick 1)")
    parser.add_argument(
        "--pairs", default=",".join(map(str, PAIR_COUNTS)), help="pair counts, e.g. 10,100"
    )
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run")
    parser.add_argument("--measure", type=float, help="measured seconds per run")
    parser.add_argument(
        "--paced-share",
        type=float,
        default=PACED_SHARE,
        help="latency runs send at this share of the SDK's messages/s (default 0.5)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the relay's data and stores")
    args = parser.parse_args(argv)
    times = QUICK_TIMES if args.quick else FULL_TIMES
    pair_counts = tuple(int(x) for x in args.pairs.split(",") if x)
    if not pair_counts or min(pair_counts) < 1 or not 0 < args.paced_share <= 1:
        parser.error("--pairs needs counts >= 1 and --paced-share a share in (0, 1]")
    settings = Settings(
        quick=args.quick,
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else FULL_ROUNDS),
        pair_counts=pair_counts,
        warmup_s=args.warmup if args.warmup is not None else times[0],
        measure_s=args.measure if args.measure is not None else times[1],
        paced_share=args.paced_share,
        json_path=args.json,
        keep=args.keep,
    )
    try:
        asyncio.run(run_bench(settings))
    except BenchRefused as exc:
        print(f"SDK bench refused: {exc}", file=sys.stderr)
        return 2
    except (ServerError, LoadError, RegistrationError, SdkLoadError, ClientError) as exc:
        print(f"SDK bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
