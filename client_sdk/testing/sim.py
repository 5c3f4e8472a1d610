"""The simulation orchestrator: many real clients against a real relay, with faults.

:func:`run_simulation` (``e2ee sim`` runs it) does, for one :class:`SimConfig`:

1. starts the relay as a separate process (:class:`RelayProcess`) on a SQLite file in
   the work directory or on a fresh PostgreSQL database (dropped afterwards),
   optionally with Redis under a key prefix of its own, and a :class:`FaultProxy` on a
   fixed port in front of it (the clients only know the proxy);
2. starts the client processes (:mod:`client_sdk.testing.worker`), which register every
   user's first device and link the others through the real flow;
3. walks the seeded :class:`Schedule`: hands each send to its client process at the
   configured rate and injects the faults where the schedule puts them (relay SIGKILL
   and restart on a fresh port behind the proxy, client process SIGKILL and restart
   from its stores, dropped connections), sends again what was refused before it was
   committed, as an app would;
4. waits, polling up to a bound, until every committed message reached every device it
   was meant for, then asks the clients for their state sizes and stops them;
5. scans the relay's database files (or a ``pg_dump``), its logs and the Redis traffic
   for every message's canary (after proving the scanner finds a planted one);
6. returns a :class:`SimReport`; a failed run also writes the event log (per message:
   sent, accepted, relay acceptance time, delivered and decrypted per device) that
   ``e2ee sim --replay`` runs again.

Nothing sleeps as synchronisation: every wait polls a condition up to a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from client_sdk._files import atomic_write

from .canary import CANARY_PREFIX, CanaryScanner, RedisCapture, prove_detects
from .ledger import SECURITY_FAILURES, Ledger
from .proxy import FaultProxy
from .relay import RelayProcess, temporary_postgres_database
from .report import Progress, SimReport
from .workload import (
    Action,
    ConfigError,
    Schedule,
    SimConfig,
    canary,
    make_schedule,
    message_body,
)

__all__ = ["SimError", "SimRun", "load_replay", "run_simulation"]

logger = logging.getLogger("client_sdk.testing.sim")

POLL: Final = 0.02
"""Interval of every bounded poll."""
READY_SECONDS: Final = 300.0
"""Bound for a client process to open (and on its first start, register and link)
its devices."""
STOP_SECONDS: Final = 30.0
"""Bound for a client process to exit after ``stop``."""
RETRY_DELAY: Final = 0.5
"""Pause before a send refused before commit is handed over again."""
MAX_ATTEMPTS: Final = 200
"""Attempts of one send before it counts as not sent."""
MAX_IN_FLIGHT: Final = 400
"""Sends handed to client processes and not answered yet, at most."""
EVENT_LOG_VERSION: Final = 1


class SimError(RuntimeError):
    """The simulation could not run (a process did not start, a bound passed)."""


@dataclass
class _WorkerProcess:
    """One client process and what it hosts."""

    index: int
    users: tuple[str, ...]
    labels: tuple[str, ...]
    proc: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    state: asyncio.Future[dict[str, int]] | None = None
    starts: int = 0


@dataclass
class SimRun:
    """A finished run: its report, and where its files are."""

    report: SimReport
    workdir: Path
    event_log: Path | None


def load_replay(path: Path) -> tuple[SimConfig, Schedule]:
    """The configuration and schedule of a saved event log (``--replay``).

    Raises:
        ConfigError: not an event log this version writes, or malformed.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the event log {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != EVENT_LOG_VERSION:
        raise ConfigError(f"{path} is not a version {EVENT_LOG_VERSION} simulation event log")
    return SimConfig.from_json(data.get("config")), Schedule.from_json(data.get("schedule"))


class _Simulation:
    def __init__(
        self,
        config: SimConfig,
        schedule: Schedule,
        workdir: Path,
        progress: Progress | None,
    ) -> None:
        self.config = config
        self.schedule = schedule
        self.workdir = workdir
        self.progress = progress
        self.ledger = Ledger(schedule, config.devices_per_user)
        self.device_ids: dict[str, int] = {}
        self.workers = [
            _WorkerProcess(
                i,
                users,
                tuple(f"{u}/{d}" for u in users for d in range(config.devices_per_user)),
            )
            for i, users in enumerate(schedule.workers)
        ]
        self.worker_of = {u: w for w in self.workers for u in w.users}
        self.relay: RelayProcess | None = None
        self.proxy: FaultProxy | None = None
        self.redis_prefix = f"e2ee-sim-{secrets.token_hex(6)}:"
        self.report = SimReport(
            seed=config.seed,
            backend=("postgresql" if config.database else "sqlite")
            + ("+redis" if config.redis_url else ""),
            users=config.users,
            devices_per_user=config.devices_per_user,
            client_state_limit_bytes=config.client_state_limit_bytes,
            messages_planned=config.messages,
            intended_deliveries=self.ledger.intended_deliveries,
        )
        self.retry_at: dict[int, float] = {}
        self.started = time.monotonic()

    # --- client processes ---------------------------------------------------------------

    def _worker_command(self, worker: _WorkerProcess, *, setup: bool) -> list[str]:
        if self.proxy is None or self.relay is None:
            raise SimError("the relay and the proxy start before the clients")
        cmd = [
            sys.executable,
            "-m",
            "client_sdk.testing.worker",
            "--relay-url",
            self.proxy.url,
            "--origin",
            self.relay.origin,
            "--clients-dir",
            str(self.workdir / "clients"),
            "--users",
            ",".join(worker.users),
            "--devices",
            str(self.config.devices_per_user),
        ]
        return [*cmd, "--setup"] if setup else cmd

    async def _start_worker(self, worker: _WorkerProcess, *, setup: bool) -> None:
        worker.starts += 1
        worker.ready.clear()
        log = (self.workdir / f"client{worker.index}-{worker.starts}.log").open("wb")
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self._worker_command(worker, setup=setup),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=1 << 20,
            )
        finally:
            log.close()  # the child holds its own descriptor
        worker.reader = asyncio.create_task(self._read_reports(worker, worker.proc))

    async def _wait_ready(self, worker: _WorkerProcess) -> None:
        try:
            async with asyncio.timeout(READY_SECONDS):
                await worker.ready.wait()
        except TimeoutError:
            raise SimError(
                f"client process {worker.index} did not open its devices within"
                f" {READY_SECONDS} s (see client{worker.index}-{worker.starts}.log)"
            ) from None

    async def _read_reports(self, worker: _WorkerProcess, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # pragma: no cover - started with stdout=PIPE
            raise SimError("a client process has no output pipe")
        while line := await proc.stdout.readline():
            try:
                report = json.loads(line)
            except ValueError:
                continue  # a line cut by a SIGKILL
            self._on_report(worker, report)

    def _on_report(self, worker: _WorkerProcess, report: dict[str, Any]) -> None:
        ledger, event = self.ledger, report.get("ev")
        if event == "recv":
            before = ledger.delivered
            ledger.on_recv(
                report["dev"],
                report["sid"],
                seq=report["seq"],
                relay_ms=report["relay_ts"],
                t=report["t"],
            )
            if self.progress is not None and ledger.delivered > before:
                self.progress.advance()
        elif event == "done":
            ledger.on_done(report["dev"], report["sid"])
        elif event == "sending":
            ledger.on_sending(report["sid"], report["t"])
        elif event in ("sent", "queued"):
            ledger.on_result(report["sid"], event, msg_id=report["msg_id"], t=report["t"])
        elif event == "unsent":
            ledger.on_result(report["sid"], "unsent", error=report["error"])
            self.retry_at[report["sid"]] = time.monotonic() + RETRY_DELAY
        elif event == "send_error":
            ledger.on_result(report["sid"], "error", error=report["error"])
        elif event == "security":
            ledger.on_security(report["kind"])
        elif event == "fatal":
            ledger.on_fatal(report["error"])
        elif event == "ready":
            self.device_ids.update(report["devices"])
            worker.ready.set()
        elif event == "state" and worker.state is not None and not worker.state.done():
            worker.state.set_result(report["sizes"])

    async def _command(self, worker: _WorkerProcess, command: dict[str, Any]) -> None:
        proc = worker.proc
        if proc is None or proc.stdin is None:
            raise SimError(f"client process {worker.index} is not running")
        proc.stdin.write(json.dumps(command).encode() + b"\n")
        await proc.stdin.drain()

    async def _kill_worker(self, worker: _WorkerProcess) -> None:
        proc, worker.proc = worker.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(STOP_SECONDS):
            await proc.wait()
        if worker.reader is not None:
            async with asyncio.timeout(STOP_SECONDS):
                await worker.reader

    async def _stop_worker(self, worker: _WorkerProcess) -> None:
        proc = worker.proc
        if proc is None:
            return
        try:
            await self._command(worker, {"op": "stop"})
            async with asyncio.timeout(STOP_SECONDS):
                await proc.wait()
        except (TimeoutError, ConnectionError, SimError):
            logger.warning("client process %d did not stop in time: killed", worker.index)
        await self._kill_worker(worker)

    async def _state_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for worker in self.workers:
            worker.state = asyncio.get_running_loop().create_future()
            await self._command(worker, {"op": "state"})
            async with asyncio.timeout(STOP_SECONDS):
                sizes.update(await worker.state)
        return sizes

    # --- the schedule -------------------------------------------------------------------

    async def _dispatch(self, sid: int) -> None:
        action = self.ledger.messages[sid].action
        worker = self.worker_of[action.sender.split("/")[0]]
        self.ledger.on_dispatched(sid)
        await self._command(
            worker,
            {
                "op": "send",
                "sid": sid,
                "from": action.sender,
                "to": action.to,
                "body": message_body(sid, self.schedule.canary_keys[sid], action.size),
                "msg_id": self.ledger.messages[sid].msg_id_to_use,
            },
        )

    async def _retry_due(self) -> None:
        """Hand over again every send refused before commit whose pause is over."""
        now = time.monotonic()
        for sid in [s for s, at in self.retry_at.items() if at <= now]:
            del self.retry_at[sid]
            state = self.ledger.messages[sid]
            if state.outcome != "unsent":
                continue
            if state.attempts >= MAX_ATTEMPTS:
                state.outcome = "error"
                state.error = f"not accepted after {MAX_ATTEMPTS} attempts"
                continue
            worker = self.worker_of[state.action.sender.split("/")[0]]
            if worker.proc is not None:
                await self._dispatch(sid)
            else:
                self.retry_at[sid] = now + RETRY_DELAY

    async def _fault(self, action: Action) -> None:
        if self.relay is None or self.proxy is None:
            raise SimError("faults need the relay and the proxy running")
        if action.kind == "relay_kill":
            began = time.monotonic()
            await self.relay.kill()
            self.report.relay_kills += 1
            await self.relay.start()  # a fresh port: the proxy keeps the clients' one
            self.proxy.set_upstream(self.relay.port)
            self.report.relay_restarts_s.append(round(time.monotonic() - began, 3))
        elif action.kind == "client_kill":
            worker = self.workers[int(action.target)]
            await self._kill_worker(worker)
            self.report.client_kills += 1
            again = self.ledger.on_worker_killed(worker.labels)
            await self._start_worker(worker, setup=False)
            await self._wait_ready(worker)
            for sid in again:
                await self._dispatch(sid)
        elif action.kind == "disconnect":
            device_id = self.device_ids[action.target]
            user = action.target.partition("/")[0]
            await self.proxy.drop_connections(user_id=user, device_id=device_id)
            self.report.disconnects += 1

    async def _walk(self) -> None:
        interval = 1.0 / self.config.rate if self.config.rate > 0 else 0.0
        next_at = time.monotonic()
        for action in self.schedule.actions:
            if action.kind != "send":
                await self._fault(action)
                continue
            while self.ledger.outstanding_sends() >= MAX_IN_FLIGHT:
                await self._retry_due()
                await asyncio.sleep(POLL)
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            await self._retry_due()
            await self._dispatch(action.sid)
            self._postfix()

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.config.drain_s
        while not self.ledger.complete() and time.monotonic() < deadline:
            await self._retry_due()
            self._postfix()
            await asyncio.sleep(POLL * 5)
        if not self.ledger.complete():
            self.report.failures.append(
                f"delivery did not complete within {self.config.drain_s} s after the last send"
            )

    def _postfix(self) -> None:
        if self.progress is None:
            return
        figures = self.ledger.figures()
        self.progress.set_postfix(
            sent=figures["messages_sent"],
            dup=figures["duplicated"],
            undecryptable=figures["undecryptable"],
            relay_kills=self.report.relay_kills,
            client_kills=self.report.client_kills,
        )

    # --- the relay and the scan ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _database(self) -> AsyncIterator[str]:
        if self.config.database is None:
            yield f"sqlite:///{self.workdir / 'relay.db'}"
            return
        async with temporary_postgres_database(self.config.database) as url:
            yield url

    async def _scan(self, database_url: str, capture: RedisCapture | None) -> None:
        if self.relay is None:
            raise SimError("the scan needs the relay's files")
        canaries = [canary(sid, key) for sid, key in self.schedule.canary_keys.items()]
        planted = CANARY_PREFIX + f"planted-{secrets.token_hex(24)}".encode()
        scanner = CanaryScanner([*canaries, planted])
        prove_detects(scanner, planted)
        sources: list[tuple[str, bytes]] = []
        data_dir = self.workdir / f"{self.relay.name}-data"
        for path in sorted(self.workdir.glob("relay.db*")) + sorted(data_dir.rglob("*")):
            if path.is_file():
                sources.append((path.name, path.read_bytes()))
        sources.append(("relay logs", self.relay.log_bytes()))
        if self.config.database is not None:
            sources.append(("pg_dump", await _pg_dump(database_url)))
        if capture is not None:
            sources.append(("redis MONITOR", bytes(capture.monitor)))
            sources.append(("redis PSUBSCRIBE", bytes(capture.published)))
        hits = [h for h in scanner.scan_all(sources) if h.canary != planted]
        self.report.canary_hits = len(hits)
        self.report.canary_bytes_scanned = sum(scanner.scanned.values())
        for hit in hits[:5]:
            self.report.failures.append(f"a canary in {hit.source} ({hit.form})")

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> None:
        (self.workdir / "clients").mkdir(parents=True, exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            database_url = await stack.enter_async_context(self._database())
            capture: RedisCapture | None = None
            if self.config.redis_url is not None:
                capture = RedisCapture(self.config.redis_url, self.redis_prefix)
                await capture.start()
                stack.push_async_callback(capture.stop)
                stack.push_async_callback(_delete_prefix, self.config.redis_url, self.redis_prefix)
            self.relay = RelayProcess(
                database_url,
                self.workdir,
                redis_url=self.config.redis_url,
                redis_prefix=self.redis_prefix if self.config.redis_url else None,
                log_level="debug",
            )
            stack.push_async_callback(self.relay.kill)
            await self.relay.start()
            self.proxy = FaultProxy(self.relay.port, seed=self.config.seed)
            await self.proxy.start()
            stack.push_async_callback(self.proxy.stop)
            for worker in self.workers:
                stack.push_async_callback(self._kill_worker, worker)
            for worker in self.workers:
                await self._start_worker(worker, setup=True)
            for worker in self.workers:
                await self._wait_ready(worker)
            self.started = time.monotonic()
            if self.config.delay_ms:
                self.proxy.set_delay(self.config.delay_ms / 1000.0)
            if self.config.duplicate_probability:
                self.proxy.set_duplicate_probability(self.config.duplicate_probability)
            await self._walk()
            await self._drain()
            sizes = await self._state_sizes()
            self.report.max_client_state_bytes = max(sizes.values(), default=0)
            for worker in self.workers:
                await self._stop_worker(worker)
            self.report.duration_s = round(time.monotonic() - self.started, 3)
            await self._scan(database_url, capture)
            await self.relay.terminate()
        self._fill_report()

    def _fill_report(self) -> None:
        figures = self.ledger.figures()
        report = self.report
        report.messages_sent = figures["messages_sent"]
        report.delivered = figures["delivered"]
        report.lost = figures["lost"]
        report.duplicated = figures["duplicated"]
        report.undecryptable = figures["undecryptable"]
        report.redelivered_after_crash = figures["redelivered_after_crash"]
        report.out_of_order = figures["out_of_order"]
        report.misdelivered = figures["misdelivered"]
        report.resumed_sends = figures["resumed_sends"]
        report.security_events = dict(sorted(self.ledger.security.items()))
        report.latencies_ms = [round(v, 3) for v in self.ledger.latencies_ms]
        report.throughput = self.ledger.throughput(self.started)
        for name in ("not_sent", "send_errors"):
            if figures[name]:
                report.failures.append(f"{figures[name]} {name.replace('_', ' ')}")
        for kind, count in sorted(self.ledger.security.items()):
            if kind in SECURITY_FAILURES and kind != "Undecryptable":
                report.failures.append(f"{count} {kind} security events")
        for error, count in sorted(self.ledger.fatal.items()):
            report.failures.append(f"{count} client errors {error}")

    def event_log(self) -> dict[str, Any]:
        return {
            "version": EVENT_LOG_VERSION,
            "config": self.config.to_json(),
            "schedule": self.schedule.to_json(),
            "figures": self.ledger.figures(),
            "security_events": dict(self.ledger.security),
            "messages": self.ledger.event_log(),
        }


async def _pg_dump(database_url: str) -> bytes:
    """A plain ``pg_dump`` of the run's database (the relay's tables as they are)."""
    if shutil.which("pg_dump") is None:
        raise SimError("pg_dump is not installed: the PostgreSQL scan needs it")
    parts = urlsplit(database_url)
    proc = await asyncio.create_subprocess_exec(
        "pg_dump",
        "-h",
        parts.hostname or "127.0.0.1",
        "-p",
        str(parts.port or 5432),
        "-U",
        parts.username or "postgres",
        "--no-password",
        parts.path.lstrip("/"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SimError(f"pg_dump failed: {err.decode(errors='replace')[-500:]}")
    return out


async def _delete_prefix(redis_url: str, prefix: str) -> None:
    """Delete the run's Redis keys."""
    import redis.asyncio as aioredis  # noqa: PLC0415 - the relay extra

    client = aioredis.Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def run_simulation(
    config: SimConfig,
    workdir: Path,
    *,
    schedule: Schedule | None = None,
    progress: Callable[[int], Progress] | None = None,
    event_log: Path | None = None,
) -> SimRun:
    """Run one simulation in ``workdir`` (created if missing; it keeps the relay's and
    the clients' files and logs) and return its report. A failed run writes its event
    log to ``event_log`` (default ``workdir/sim-log.json``).

    ``schedule`` replays a saved one (otherwise it is made from ``config``);
    ``progress`` makes the progress bar from the number of intended deliveries.

    Raises:
        SimError: a process did not start or stop in time, or the whole run exceeded
            ``config.timeout_s``.
        ConfigError: the schedule does not fit the configuration.
    """
    schedule = schedule or make_schedule(config)
    if len(schedule.workers) != config.workers or sum(map(len, schedule.workers)) != config.users:
        raise ConfigError("the schedule was made for another population")
    workdir.mkdir(parents=True, exist_ok=True)
    sim = _Simulation(config, schedule, workdir, None)
    bar = progress(sim.ledger.intended_deliveries) if progress is not None else None
    sim.progress = bar
    try:
        async with asyncio.timeout(config.timeout_s):
            await sim.run()
    except TimeoutError:
        sim._fill_report()
        sim.report.failures.append(f"the run exceeded its bound of {config.timeout_s} s")
    finally:
        if bar is not None:
            bar.close()
    log_path: Path | None = None
    if not sim.report.passed:
        log_path = event_log or workdir / "sim-log.json"
        atomic_write(log_path, json.dumps(sim.event_log(), indent=1).encode())
        sim.report.event_log = str(log_path)
    return SimRun(sim.report, workdir, log_path)
