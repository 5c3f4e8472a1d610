"""The relay benchmark (issue 3): the relay against a bare forwarder, same run, same
load generator.

``python -m bench.relay`` measures, with the lean load generator of
bench/loadgen.py (pre-built ~200 B frames; this process) against one server process
at a time (bench/launch.py: the relay, or the bare in-memory forwarder of
bench/forwarder.py, on the same uvicorn configuration):

* messages/s with 10 and 100 sender/recipient pairs (closed loop: each sender keeps
  ``--window`` messages in flight; on the relay a message is in flight until its
  ``Accepted``, and recipients acknowledge what they receive);
* p50/p99 latency, send -> delivery, at a paced 2,000 messages/s;

on the relay with SQLite (the default database file in a fresh data directory: WAL,
``synchronous=FULL``) and with PostgreSQL (a fresh database, created and dropped
here), and on the bare forwarder; then the memory per idle connection with
``--sockets`` authenticated relay sockets against as many bare Starlette sockets.

Rounds: every measurement runs once per round on every server, the order of the
servers rotating from round to round; a figure is the median over rounds, a ratio
the median of the per-round ratios (paired: a burst of other load on the machine
hits both sides), latency percentiles are over every sample of every round.

The relay's durability settings are read back through its own storage engine
(bench/launch.py) and printed; when they are not the shipped defaults the run
refuses to report that relay's figures (exit status 2). Its rate limits are raised
through its settings (the bench is a flood by design); nothing else is changed.

See bench/README.md ("Relay") for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from .accounts import (
    DEVICE_ID,
    BenchAccount,
    RegistrationError,
    make_accounts,
    open_device,
    register_accounts,
)
from .forwarder import WS_PATH
from .idle_sockets import IdleResult, measure_idle_sockets
from .loadgen import (
    LoadError,
    PacedResult,
    Pair,
    PairEndpoints,
    ThroughputResult,
    build_frames,
    connect,
    percentile,
    run_paced,
    run_throughput,
)
from .servers import HOST, ServerError, ServerProcess, raise_fd_limit, start_server

__all__ = [
    "DEFAULT_PG_ADMIN_URL",
    "SHIPPED_DURABILITY",
    "Bench",
    "BenchRefused",
    "Settings",
    "Target",
    "check_durability",
    "cpu_share",
    "main",
    "pg_admin",
    "postgres_reachable",
    "run_bench",
    "start_relay",
    "with_database",
]

# --- what is measured and the targets ---------------------------------------------------

TARGET_SHARE: Final = {"sqlite": 0.25, "postgres": 0.15}
"""Relay throughput as a share of the bare forwarder's, at least (issue 3)."""
TARGET_P99_MS: Final = 20.0
"""Relay p99 send -> delivery latency at the paced rate, at most (issue 3)."""
TARGET_MEMORY_RATIO: Final = 2.0
"""Relay memory per idle authenticated socket / bare Starlette's, at most (issue 3)."""
PACED_RATE: Final = 2_000.0
PAIR_COUNTS: Final = (10, 100)
PACED_PAIRS: Final = 10
"""Pairs sharing the paced load (200 messages/s each at 2,000/s)."""
DEFAULT_WINDOW: Final = 8
"""Messages in flight per sender in the closed-loop runs: enough to keep the bare
forwarder busy with 10 pairs (a window of 1 leaves it waiting on round trips)."""
DEFAULT_SOCKETS: Final = 10_000

SHIPPED_DURABILITY: Final = {
    "sqlite": {"journal_mode": "wal", "synchronous": "2 (FULL)"},
    "postgres": {"synchronous_commit": "on", "fsync": "on"},
}
"""The durability settings the relay ships with (issue 3); any other value refuses
the report."""
BENCH_RATE_LIMIT: Final = {"per_second": 1e9, "burst": 1_000_000_000}
BENCH_SETTINGS: Final = {
    "rate_send": BENCH_RATE_LIMIT,
    "rate_frames": BENCH_RATE_LIMIT,
    "rate_registration": BENCH_RATE_LIMIT,
    "rate_http": BENCH_RATE_LIMIT,
    "rate_auth_ip": BENCH_RATE_LIMIT,
    "rate_auth_device": BENCH_RATE_LIMIT,
    "log_level": "warning",
}
"""The only settings the bench changes: its own generous rate limits (a flood from
one loopback address is the point), and quieter logs."""
DEFAULT_PG_ADMIN_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
FULL_TIMES: Final = (1.0, 5.0)
QUICK_TIMES: Final = (0.5, 1.5)
"""(warm-up, measured) seconds per run."""
BACKEND_TITLES: Final = {
    "bare": "bare forwarder",
    "sqlite": "relay, SQLite",
    "postgres": "relay, PostgreSQL",
}


class BenchRefused(RuntimeError):
    """The relay does not run with the shipped durability settings: no figures."""


def _log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)


# --- CPU accounting ---------------------------------------------------------------------

_TICK: Final = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _machine_busy_s() -> float:
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _postgres_cpu_s() -> float:
    """CPU seconds of every process named ``postgres`` (the server's backends, WAL
    writer, checkpointer) visible in /proc: the database's own share."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            text = stat.read_text()
            if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
                fields = text.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / _TICK


@dataclass
class CpuSnapshot:
    wall: float
    server: float
    client: float
    machine: float
    postgres: float


def _cpu_probe(server: ServerProcess) -> Callable[[], CpuSnapshot]:
    def probe() -> CpuSnapshot:
        return CpuSnapshot(
            time.perf_counter(),
            _proc_cpu_s(server.pid),
            time.process_time(),
            _machine_busy_s(),
            _postgres_cpu_s(),
        )

    return probe


def cpu_share(probes: tuple[Any, Any] | None) -> dict[str, float]:
    """CPU used during the measured window, in cores: server, load generator,
    PostgreSQL's processes, everything else."""
    if probes is None:
        return {}
    a, b = probes
    wall = b.wall - a.wall
    server = (b.server - a.server) / wall
    client = (b.client - a.client) / wall
    postgres = (b.postgres - a.postgres) / wall
    other = max(0.0, (b.machine - a.machine) / wall - server - client - postgres)
    return {"server": server, "loadgen": client, "postgres": postgres, "other": other}


# --- targets (servers under test) -------------------------------------------------------


@dataclass
class Target:
    """One server under test with its connected pairs."""

    name: str  # "bare", "sqlite", "postgres"
    server: ServerProcess
    ends: list[PairEndpoints] = field(default_factory=list)
    durability: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    accounts: list[BenchAccount] = field(default_factory=list)
    vacuum_url: str | None = None
    """PostgreSQL with ``autovacuum`` off: the relay database's URL, vacuumed before
    each run (:meth:`Bench.before_run`)."""

    @property
    def relay(self) -> bool:
        return self.name != "bare"

    async def connect_pairs(self, count: int, seed: int) -> None:
        """Register (relay) and connect ``count`` sender/recipient pairs."""
        if not self.relay:
            for i in range(count):
                recipient = await connect(HOST, self.server.port, f"{WS_PATH}?pair={i}&role=recv")
                sender = await connect(HOST, self.server.port, f"{WS_PATH}?pair={i}&role=send")
                self.ends.append(PairEndpoints(sender, recipient, f"bare-{i:05d}", DEVICE_ID))
            return
        self.accounts = make_accounts(f"bench{seed}", 2 * count, seed)
        await register_accounts(self.server.port, self.accounts)
        for i in range(count):
            sender_account, recipient_account = self.accounts[2 * i], self.accounts[2 * i + 1]
            recipient = await open_device(self.server.port, recipient_account, self.origin)
            sender = await open_device(self.server.port, sender_account, self.origin)
            self.ends.append(PairEndpoints(sender, recipient, recipient_account.user_id, DEVICE_ID))

    def close(self) -> None:
        for ends in self.ends:
            ends.sender.close()
            ends.recipient.close()
        self.ends.clear()


def check_durability(name: str, found: dict[str, str]) -> None:
    """Refuse unless ``found`` holds the shipped durability settings.

    Raises:
        BenchRefused: a setting differs (or was not read back).
    """
    expected = SHIPPED_DURABILITY[name]
    wrong = {k: found.get(k) for k, v in expected.items() if found.get(k) != v}
    if wrong:
        raise BenchRefused(
            f"relay on {name} does not run with the shipped durability settings: "
            f"found {wrong}, shipped {expected}; refusing to report"
        )


def _fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind


async def start_relay(
    name: str, work: Path, *, data_dir: Path | None, db_url: str | None, upgrade: bool = False
) -> Target:
    args = ["--report", "{report}"]
    if upgrade:
        args.append("--upgrade")
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if db_url is not None:
        args += ["--db", db_url]
    for key, value in BENCH_SETTINGS.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    server = await start_server("relay", args, work)
    target = Target(name, server)
    report = server.report
    target.durability = {str(k): str(v) for k, v in report.get("durability", {}).items()}
    target.origin = str(report.get("settings", {}).get("origin", f"ws://{HOST}:{server.port}"))
    return target


# --- PostgreSQL database of the run ----------------------------------------------------


@contextlib.asynccontextmanager
async def _pg(url: str) -> AsyncIterator[Any]:
    """An asyncpg connection to the server (and database) of ``url``, closed after."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    asyncpg: Any = importlib.import_module("asyncpg")  # untyped; only PostgreSQL needs it
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def pg_admin(url: str, statement: str) -> None:
    async with _pg(url) as conn:
        await conn.execute(statement)


async def pg_setting(url: str, name: str) -> str:
    """``SHOW name`` on the PostgreSQL server of ``url``."""
    async with _pg(url) as conn:
        return str(await conn.fetchval(f"SHOW {name}"))


async def postgres_reachable(url: str) -> str | None:
    """``None`` when the PostgreSQL server of ``url`` answers, else why not."""
    try:
        await pg_admin(url, "SELECT 1")
    except Exception as exc:  # any failure: unreachable for the bench's purpose
        return f"{type(exc).__name__}: {exc}"
    return None


def with_database(url: str, database: str) -> str:
    """The relay's SQLAlchemy URL of ``database`` on the server of ``url``."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    parsed = make_url(url).set(drivername="postgresql+asyncpg", database=database)
    return parsed.render_as_string(hide_password=False)


# --- the measurements -------------------------------------------------------------------


@dataclass
class Settings:
    """What one run of the bench does."""

    quick: bool = False
    rounds: int = 3
    window: int = DEFAULT_WINDOW
    pair_counts: tuple[int, ...] = PAIR_COUNTS
    paced_pairs: int = PACED_PAIRS
    rate: float = PACED_RATE
    warmup_s: float = FULL_TIMES[0]
    measure_s: float = FULL_TIMES[1]
    backends: tuple[str, ...] = ("sqlite", "postgres")
    sockets: int = DEFAULT_SOCKETS
    throughput: bool = True
    """Run the throughput and latency part (``--memory-only``: only the sockets)."""
    pg_admin_url: str = DEFAULT_PG_ADMIN_URL
    require_postgres: bool = False
    data_dir: Path | None = None
    json_path: Path | None = None
    keep: bool = False


def _frame_source(
    target: Target, salt: bytes, rng: random.Random
) -> Callable[[Pair, int], list[bytes]]:
    def source(pair: Pair, start: int) -> list[bytes]:
        return build_frames(
            pair.number,
            start,
            2_000,
            recipient_user=pair.ends.recipient_user,
            recipient_device=pair.ends.recipient_device,
            salt=salt,
            rng=rng,
        )

    return source


def _initial_frames(
    ends: list[PairEndpoints], per_pair: int, salt: bytes, rng: random.Random
) -> list[list[bytes]]:
    return [
        build_frames(
            i,
            0,
            per_pair,
            recipient_user=e.recipient_user,
            recipient_device=e.recipient_device,
            salt=salt,
            rng=rng,
        )
        for i, e in enumerate(ends)
    ]


@contextlib.contextmanager
def _naming(target: Target, what: str) -> Iterator[None]:
    """Prefix a load failure with the server and the measurement, and the server's
    log tail when it is a relay."""
    try:
        yield
    except LoadError as exc:
        tail = f"\n--- {target.name} server log (tail) ---\n{target.server.log_tail()}"
        raise LoadError(f"{target.name}, {what}: {exc}{tail if target.relay else ''}") from exc


class Bench:
    """Runs every measurement of one invocation and holds the results."""

    def __init__(self, settings: Settings, start: float) -> None:
        self.s = settings
        self.start = start
        self.throughput: dict[tuple[str, int], list[ThroughputResult]] = {}
        self.paced: dict[str, list[PacedResult]] = {}
        self.cpu: dict[tuple[str, str], list[dict[str, float]]] = {}
        self.rate_guess: dict[tuple[str, int], float] = {}
        self.rng = random.Random(20261123)

    def log(self, message: str) -> None:
        _log(self.start, message)

    def _frames_for(self, target: Target, key: tuple[str, int], pairs: int) -> int:
        seconds = self.s.warmup_s + self.s.measure_s
        guess = self.rate_guess.get(key, 100_000.0 if not target.relay else 15_000.0)
        return max(200, int(guess * seconds * 1.3 / pairs))

    async def before_run(self, target: Target) -> None:
        """Untimed, before each measurement: on a PostgreSQL server with ``autovacuum``
        off, vacuum the relay's database (the dead rows of the queue table, every
        message's insert and delete, would otherwise pile up run after run, which no
        server with PostgreSQL's default settings lets happen)."""
        if target.vacuum_url is not None:
            await pg_admin(target.vacuum_url, "VACUUM (ANALYZE)")

    async def throughput_run(self, target: Target, pairs: int) -> ThroughputResult:
        await self.before_run(target)
        ends = target.ends[:pairs]
        salt = secrets.token_bytes(8)
        key = (target.name, pairs)
        frames = _initial_frames(ends, self._frames_for(target, key, pairs), salt, self.rng)
        with _naming(target, f"throughput, {pairs} pairs"):
            result = await run_throughput(
                ends,
                relay=target.relay,
                window=self.s.window,
                warmup_s=self.s.warmup_s,
                measure_s=self.s.measure_s,
                frame_source=_frame_source(target, salt, self.rng),
                initial_frames=frames,
                probe=_cpu_probe(target.server),
            )
        self.rate_guess[key] = max(self.rate_guess.get(key, 0.0), result.msgs_per_s)
        self.throughput.setdefault(key, []).append(result)
        share = cpu_share(result.probes)
        if share and result.msgs_per_s > 0:
            share["server_us_per_msg"] = share["server"] / result.msgs_per_s * 1e6
        self.cpu.setdefault((target.name, f"tp{pairs}"), []).append(share)
        return result

    async def paced_run(self, target: Target) -> PacedResult:
        await self.before_run(target)
        ends = target.ends[: self.s.paced_pairs]
        salt = secrets.token_bytes(8)
        per_pair = int(self.s.rate * (self.s.warmup_s + self.s.measure_s) * 1.2 / len(ends)) + 10
        with _naming(target, f"paced {self.s.rate:,.0f} msg/s"):
            result = await run_paced(
                ends,
                relay=target.relay,
                rate=self.s.rate,
                warmup_s=self.s.warmup_s,
                measure_s=self.s.measure_s,
                frame_source=_frame_source(target, salt, self.rng),
                initial_frames=_initial_frames(ends, per_pair, salt, self.rng),
                probe=_cpu_probe(target.server),
            )
        self.paced.setdefault(target.name, []).append(result)
        self.cpu.setdefault((target.name, "paced"), []).append(cpu_share(result.probes))
        return result

    async def rounds(self, targets: list[Target]) -> None:
        for r in range(self.s.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for pairs in self.s.pair_counts:
                shown = []
                for target in order:
                    tp = await self.throughput_run(target, pairs)
                    shown.append(f"{target.name} {tp.msgs_per_s:,.0f}")
                self.log(
                    f"round {r + 1}/{self.s.rounds}: msg/s with {pairs} pairs: " + ", ".join(shown)
                )
            shown = []
            for target in order:
                pr = await self.paced_run(target)
                if pr.overloaded:
                    shown.append(
                        f"{target.name} overloaded ({pr.achieved_rate:,.0f} msg/s delivered)"
                    )
                else:
                    shown.append(f"{target.name} p50 {pr.p50_ms:.2f} p99 {pr.p99_ms:.2f}")
            self.log(
                f"round {r + 1}/{self.s.rounds}: latency ms at {self.s.rate:,.0f} msg/s: "
                + ", ".join(shown)
            )


# --- report ------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(bench: Bench, names: list[str]) -> dict[str, Any]:
    """Medians over rounds, paired ratios, pooled latency percentiles, verdicts."""
    out: dict[str, Any] = {"throughput": {}, "latency": {}, "cpu": {}}
    for pairs in bench.s.pair_counts:
        row: dict[str, Any] = {}
        bare_runs = bench.throughput.get(("bare", pairs), [])
        for name in names:
            runs = bench.throughput.get((name, pairs), [])
            entry: dict[str, Any] = {
                "msgs_per_s": _median([r.msgs_per_s for r in runs]),
                "rounds": [r.msgs_per_s for r in runs],
            }
            if name != "bare" and bare_runs:
                ratios = [r.msgs_per_s / b.msgs_per_s for r, b in zip(runs, bare_runs, strict=True)]
                entry["ratio"] = _median(ratios)
                entry["target"] = TARGET_SHARE[name]
                entry["met"] = entry["ratio"] >= TARGET_SHARE[name]
            row[name] = entry
        out["throughput"][pairs] = row
    for name in names:
        paced = bench.paced.get(name, [])
        pooled = [x for r in paced for x in r.latencies_ms]
        overloaded = any(r.overloaded for r in paced)
        entry = {
            "overloaded": overloaded,
            "delivered_rate": _median([r.achieved_rate for r in paced]),
            "p50_ms": statistics.median(pooled) if pooled and not overloaded else float("nan"),
            "p99_ms": percentile(pooled, 0.99) if pooled and not overloaded else float("nan"),
            "max_ms": max(pooled) if pooled else float("nan"),
            "rounds_p99_ms": [r.p99_ms for r in paced],
            "pacing_lag_p99_ms": max((r.pacing_lag_p99_ms for r in paced), default=float("nan")),
            "messages": len(pooled),
        }
        if name != "bare":
            entry["accepted_p50_ms"] = _median([r.accepted_p50_ms or 0.0 for r in paced])
            entry["accepted_p99_ms"] = _median([r.accepted_p99_ms or 0.0 for r in paced])
            entry["target_p99_ms"] = TARGET_P99_MS
            entry["met"] = not overloaded and entry["p99_ms"] <= TARGET_P99_MS
        out["latency"][name] = entry
    for (name, scenario), shares in bench.cpu.items():
        out["cpu"][f"{name}/{scenario}"] = {
            k: _median([s[k] for s in shares if k in s])
            for k in ("server", "loadgen", "postgres", "other", "server_us_per_msg")
            if any(k in s for s in shares)
        }
    return out


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def render(summary: dict[str, Any], names: list[str], settings: Settings) -> list[str]:
    """The final table (Markdown)."""
    relays = [n for n in names if n != "bare"]
    head = "| measurement | bare forwarder |"
    rule = "|---|---:|"
    for name in relays:
        head += f" {BACKEND_TITLES[name]} | ratio | target | met? |"
        rule += "---:|---:|---|---|"
    lines = [head, rule]
    for pairs, row in summary["throughput"].items():
        line = f"| msg/s, {pairs} pairs | {row['bare']['msgs_per_s']:,.0f} |"
        for name in relays:
            e = row[name]
            line += (
                f" {e['msgs_per_s']:,.0f} | {e['ratio']:.2f} | >= {e['target']:.2f} |"
                f" {_yes(e['met'])} |"
            )
        lines.append(line)
    lat = summary["latency"]

    def shown(e: dict[str, Any], key: str) -> str:
        if e["overloaded"]:
            return f"overloaded ({e['delivered_rate']:,.0f} msg/s delivered)"
        value = e.get(key)
        return "-" if value is None else f"{value:.2f}"

    for q in ("p50", "p99"):
        line = (
            f"| {q} latency, ms, at {settings.rate:,.0f} msg/s | {shown(lat['bare'], f'{q}_ms')} |"
        )
        for name in relays:
            e = lat[name]
            if q == "p99":
                line += f" {shown(e, 'p99_ms')} | | <= {TARGET_P99_MS:.0f} ms | {_yes(e['met'])} |"
            else:
                line += f" {shown(e, 'p50_ms')} | | | |"
        lines.append(line)
    line = "| p99 send -> Accepted, ms | - |"
    for name in relays:
        line += f" {shown(lat[name], 'accepted_p99_ms')} | | | |"
    lines.append(line)
    return lines


def render_memory(results: dict[str, IdleResult]) -> list[str]:
    bare, relay = results.get("bare"), results.get("sqlite")
    lines = [
        "| idle sockets | sockets | RSS before MiB | RSS after MiB | KiB per connection |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {BACKEND_TITLES[name]} | {r.sockets:,} | {r.rss_before_kib / 1024:.1f} |"
            f" {r.rss_after_kib / 1024:.1f} | {r.per_connection_kib:.1f} |"
        )
    if bare is not None and relay is not None and bare.per_connection_kib > 0:
        ratio = relay.per_connection_kib / bare.per_connection_kib
        lines.append("")
        lines.append(
            f"relay / bare memory per connection: {ratio:.2f}x (target <= {TARGET_MEMORY_RATIO:.0f}x:"
            f" {'met' if ratio <= TARGET_MEMORY_RATIO else 'NOT met'})"
        )
    return lines


def machine_info() -> dict[str, str]:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# --- the run ----------------------------------------------------------------------------


async def run_bench(settings: Settings) -> dict[str, Any]:
    """Run the whole bench; print progress and the tables; return every figure. A relay
    that is not on the shipped durability settings is not measured: its refusal is in
    ``result["refused"]`` and printed.

    Raises:
        ServerError, LoadError, RegistrationError: a server or the load failed.
    """
    start = time.perf_counter()
    bench = Bench(settings, start)
    fd_limit = raise_fd_limit()
    machine = machine_info()
    print(
        f"relay bench: {machine['cpus']} CPUs ({machine['cpu']}), {machine['python']}, "
        f"load average {machine['loadavg']}, file descriptors {fd_limit:,}",
        flush=True,
    )
    if settings.throughput:
        print(
            f"  rounds {settings.rounds}, window {settings.window} per sender, pairs "
            f"{'/'.join(map(str, settings.pair_counts))}, paced {settings.rate:,.0f} msg/s over "
            f"{settings.paced_pairs} pairs, {settings.warmup_s} s warm-up + {settings.measure_s} s "
            f"measured per run",
            flush=True,
        )
    work = Path(tempfile.mkdtemp(prefix="e2ee-relay-bench-"))
    data_dir = settings.data_dir or Path(
        tempfile.mkdtemp(prefix="e2ee-relay-bench-data-", dir=_default_data_parent())
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": machine,
        "settings": _jsonable(asdict(settings)),
        "bench_settings": BENCH_SETTINGS,
        "refused": [],
    }
    try:
        tables: list[str] = []
        if settings.throughput:
            tables += await _throughput_phase(bench, work, data_dir, result)
        if settings.sockets > 0:
            memory = await _memory(bench, settings, work, data_dir, result["refused"])
            result["memory"] = {
                k: {**asdict(v), "per_connection_kib": v.per_connection_kib}
                for k, v in memory.items()
            }
            if memory:
                tables += ["", *render_memory(memory)]
        print()
        print(f"## Relay benchmark ({machine['date']}, {machine['cpus']} CPUs)")
        for line in tables:
            print(line)
        if result["refused"]:
            print()
            for message in result["refused"]:
                print(f"REFUSED: {message}")
    finally:
        if not settings.keep:
            shutil.rmtree(work, ignore_errors=True)
            if settings.data_dir is None:
                shutil.rmtree(data_dir, ignore_errors=True)
    if settings.json_path is not None:
        settings.json_path.write_text(json.dumps(result, indent=2, default=str))
    return result


async def _start_targets(
    bench: Bench, work: Path, data_dir: Path, refused: list[str], pg_dbs: list[str]
) -> list[Target]:
    """The bare forwarder and every relay whose durability settings are the shipped
    ones (the others are stopped and their refusal recorded)."""
    settings = bench.s
    targets: list[Target] = []
    bench.log("starting the bare forwarder")
    targets.append(Target("bare", await start_server("bare", [], work)))
    for name in settings.backends:
        if name == "sqlite":
            bench.log(
                f"starting the relay on SQLite: default database file in {data_dir} "
                f"({_fs_type(data_dir)})"
            )
            target = await start_relay(name, work, data_dir=data_dir, db_url=None)
        elif name == "postgres":
            pg_db = f"e2ee_bench_{secrets.token_hex(6)}"
            try:
                await pg_admin(settings.pg_admin_url, f'CREATE DATABASE "{pg_db}"')
            except Exception as exc:  # any failure (unreachable, refused): no PostgreSQL
                if settings.require_postgres:
                    raise
                bench.log(f"PostgreSQL skipped: cannot create a database ({exc})")
                continue
            pg_dbs.append(pg_db)
            url = with_database(settings.pg_admin_url, pg_db)
            bench.log(f"starting the relay on PostgreSQL: fresh database {pg_db}")
            target = await start_relay(
                name, work, data_dir=work / "pg-data", db_url=url, upgrade=True
            )
            if await pg_setting(url, "autovacuum") != "on":
                target.vacuum_url = with_database(settings.pg_admin_url, pg_db)
                bench.log(
                    "  autovacuum is off on this PostgreSQL server: the bench runs VACUUM "
                    "(ANALYZE) on the relay's database before each PostgreSQL run, as "
                    "autovacuum (on by default) would keep its churned queue table"
                )
        else:
            raise ValueError(f"unknown backend {name!r}")
        targets.append(target)
        shown = ", ".join(f"{k}={v}" for k, v in target.durability.items())
        bench.log(f"  {name} durability read back from the relay's engine: {shown}")
        try:
            check_durability(name, target.durability)
        except BenchRefused as exc:
            bench.log(f"  REFUSED: {exc}")
            refused.append(str(exc))
            targets.remove(target)
            target.server.stop()
    return targets


async def _throughput_phase(
    bench: Bench, work: Path, data_dir: Path, result: dict[str, Any]
) -> list[str]:
    """Throughput and latency on every target; returns the printed tables."""
    settings = bench.s
    targets: list[Target] = []
    pg_dbs: list[str] = []
    try:
        targets = await _start_targets(bench, work, data_dir, result["refused"], pg_dbs)
        result["durability"] = {t.name: t.durability for t in targets if t.relay}
        result["vacuumed_before_each_run"] = [t.name for t in targets if t.vacuum_url]
        pairs_needed = max([*settings.pair_counts, settings.paced_pairs])
        for i, target in enumerate(targets):
            t0 = time.perf_counter()
            await target.connect_pairs(pairs_needed, seed=1000 + i)
            what = "registered and authenticated" if target.relay else "connected"
            bench.log(
                f"{target.name}: {pairs_needed} pairs {what} in {time.perf_counter() - t0:.1f} s"
            )
        await bench.rounds(targets)
    finally:
        for t in targets:
            t.close()
            t.server.stop()
        for pg_db in pg_dbs:
            with contextlib.suppress(Exception):
                await pg_admin(
                    settings.pg_admin_url, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'
                )
    names = [t.name for t in targets]
    summary = summarize(bench, names)
    result["summary"] = _jsonable(summary)
    lines = ["", *render(summary, names, settings), ""]
    lines.append(
        "CPU during the measured windows, in cores: server / load generator / PostgreSQL "
        "processes / other jobs on the machine; server CPU per message:"
    )
    for key, share in summary["cpu"].items():
        per_msg = share.get("server_us_per_msg")
        lines.append(
            f"  {key}: {share['server']:.2f} / {share['loadgen']:.2f} / "
            f"{share['postgres']:.2f} / {share['other']:.2f}"
            + ("" if per_msg is None else f"; {per_msg:,.0f} us per message")
        )
    for name in names:
        if name != "bare":
            shown = ", ".join(f"{k}={v}" for k, v in result["durability"][name].items())
            lines.append(f"durability ({name}), read back: {shown} (the shipped defaults)")
    for name in result["vacuumed_before_each_run"]:
        lines.append(
            f"autovacuum ({name}): off on this server; VACUUM (ANALYZE) ran before each run"
        )
    return lines


async def _memory(
    bench: Bench, settings: Settings, work: Path, data_dir: Path, refused: list[str]
) -> dict[str, IdleResult]:
    results: dict[str, IdleResult] = {}
    bench.log(f"memory: {settings.sockets:,} idle sockets on a fresh bare forwarder")
    server = await start_server("bare", [], work)
    try:
        results["bare"] = await measure_idle_sockets(
            server, settings.sockets, origin=None, progress=True
        )
    finally:
        server.stop()
    r = results["bare"]
    bench.log(
        f"  bare: {r.per_connection_kib:.1f} KiB per connection (opened in {r.open_seconds:.1f} s)"
    )
    mem_dir = data_dir / "memory"
    bench.log(f"memory: {settings.sockets:,} idle authenticated sockets on a fresh relay (SQLite)")
    target = await start_relay("sqlite", work, data_dir=mem_dir, db_url=None)
    try:
        try:
            check_durability("sqlite", target.durability)
        except BenchRefused as exc:
            bench.log(f"  REFUSED: {exc}")
            refused.append(str(exc))
            return results
        results["sqlite"] = await measure_idle_sockets(
            target.server, settings.sockets, origin=target.origin, progress=True
        )
    finally:
        target.server.stop()
    r = results["sqlite"]
    bench.log(
        f"  relay: {r.per_connection_kib:.1f} KiB per connection (registered in "
        f"{r.register_seconds or 0:.1f} s, opened in {r.open_seconds:.1f} s)"
    )
    return results


def _default_data_parent() -> Path:
    """Where the relay's default data directory lives (so the bench's SQLite file is on
    the same filesystem as a real default install)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m bench.relay [--quick] [--sockets N] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run: 1 round, 0.5 + 1.5 s per run, 1,000 sockets",
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW, help="messages in flight per sender"
    )
    parser.add_argument(
        "--pairs", default=",".join(map(str, PAIR_COUNTS)), help="pair counts, e.g. 10,100"
    )
    parser.add_argument("--paced-pairs", type=int, default=PACED_PAIRS)
    parser.add_argument("--rate", type=float, default=PACED_RATE, help="paced messages/s")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run")
    parser.add_argument("--measure", type=float, help="measured seconds per run")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="relay databases: sqlite,postgres"
    )
    parser.add_argument(
        "--sockets",
        type=int,
        help="idle sockets for the memory measurement (0: skip; default 10,000, --quick 1,000)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL server where a fresh database is created and dropped",
    )
    parser.add_argument(
        "--require-postgres",
        action="store_true",
        help="fail instead of skipping PostgreSQL when it is unreachable",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="data directory of the SQLite relay (default: a fresh one next to the default data directory, removed afterwards)",
    )
    parser.add_argument(
        "--memory-only", action="store_true", help="only the idle-socket memory measurement"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--keep", action="store_true", help="keep server logs and the data directory"
    )
    args = parser.parse_args(argv)
    times = QUICK_TIMES if args.quick else FULL_TIMES
    settings = Settings(
        quick=args.quick,
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 3),
        window=args.window,
        pair_counts=tuple(int(x) for x in args.pairs.split(",") if x),
        paced_pairs=args.paced_pairs,
        rate=args.rate,
        warmup_s=args.warmup if args.warmup is not None else times[0],
        measure_s=args.measure if args.measure is not None else times[1],
        backends=tuple(x for x in args.backends.split(",") if x),
        sockets=args.sockets
        if args.sockets is not None
        else (1_000 if args.quick else DEFAULT_SOCKETS),
        pg_admin_url=args.pg_admin_url,
        require_postgres=args.require_postgres,
        data_dir=args.data_dir,
        json_path=args.json,
        keep=args.keep,
        throughput=not args.memory_only,
    )
    try:
        result = asyncio.run(run_bench(settings))
    except (ServerError, LoadError, RegistrationError) as exc:
        print(f"relay bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 2 if result.get("refused") else 0


if __name__ == "__main__":
    sys.exit(main())
