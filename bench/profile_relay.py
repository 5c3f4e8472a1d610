"""Where the relay's time goes under the benchmark's load (py-spy, sampling).

``python -m bench.profile_relay [--db sqlite|postgres] [--pairs 10] [--seconds 8]
[--rate MSG_PER_S]`` starts the relay as bench/relay.py does (bench/launch.py, shipped
durability, the bench's rate limits), connects the pairs, runs the closed-loop load of
the throughput measurement (or, with ``--rate``, the paced load of the latency
measurement over ``--pairs`` pairs) and records the relay process with ``py-spy record`` (``pip
install py-spy``; it samples the running process, so the relay runs unmodified). It
prints the messages/s reached, the CPU used, and the samples by layer (relay code,
SQLAlchemy, driver, asyncio, uvicorn/websockets/starlette, e2ee), the functions with
the most samples of their own, and the relay functions with the most samples in
total (their callees included). ``--raw FILE`` keeps py-spy's raw stacks (for a
flame graph: ``py-spy``'s ``--format speedscope`` or any collapsed-stack tool).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from .loadgen import PacedResult, ThroughputResult
from .relay import (
    DEFAULT_PG_ADMIN_URL,
    Bench,
    Settings,
    Target,
    cpu_share,
    pg_admin,
    start_relay,
    with_database,
)
from .servers import raise_fd_limit

__all__ = ["LAYERS", "main", "summarize_stacks"]

SAMPLE_RATE: Final = 250
"""py-spy samples per second."""
LAYERS: Final = {
    "server": "relay (server/)",
    "e2ee": "e2ee",
    "sqlalchemy": "SQLAlchemy (with the sqlite3 C calls it makes: do_execute, do_commit)",
    "asyncpg": "asyncpg",
    "uvicorn": "uvicorn",
    "websockets": "websockets",
    "starlette": "starlette",
    "asyncio": "asyncio",
}
"""Layers a sample is attributed to, by the first path component of its innermost
frame's file (py-spy prints paths relative to their ``sys.path`` entry)."""


IDLE_FRAMES: Final = ("_worker (concurrent/futures/thread.py",)
"""Innermost frames py-spy reports as busy that are a thread waiting for work (the
default executor's idle worker): left out."""


def _path(frame: str) -> str:
    """The file of a py-spy frame ``function (path/to/file.py:line)``."""
    return frame[frame.rfind("(") + 1 : frame.rfind(":")]


def _layer(frame: str) -> str:
    return LAYERS.get(_path(frame).split("/", 1)[0], "other (standard library, C)")


def summarize_stacks(raw: str, top: int = 25) -> list[str]:
    """A text summary of py-spy raw (collapsed) stacks: by layer, by function (self),
    and the relay's own functions inclusive of their callees."""
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.strip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_FRAMES):
            continue
        total += count
        own[frames[-1]] += count
        layers[_layer(frames[-1])] += count
        for frame in set(frames):
            if _path(frame).startswith("server/"):
                inclusive[frame] += count
    if total == 0:
        return ["no samples"]
    lines = [f"{total:,} samples (busy time only)", "", "by layer (innermost frame):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in layers.most_common()]
    lines += ["", f"top {top} functions, own samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", f"top {top} relay functions, callees included:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return lines


async def _profile(
    db: str, pairs: int, seconds: float, raw_path: Path | None, rate: float | None
) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 1
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="e2ee-relay-profile-"))
    pg_db: str | None = None
    target: Target | None = None
    try:
        if db == "sqlite":
            target = await start_relay("sqlite", work, data_dir=work / "data", db_url=None)
        else:
            pg_db = f"e2ee_profile_{secrets.token_hex(6)}"
            await pg_admin(DEFAULT_PG_ADMIN_URL, f'CREATE DATABASE "{pg_db}"')
            url = with_database(DEFAULT_PG_ADMIN_URL, pg_db)
            target = await start_relay("postgres", work, data_dir=work, db_url=url, upgrade=True)
        print(f"relay on {db}: durability {target.durability}", flush=True)
        await target.connect_pairs(pairs, seed=4242)
        settings = Settings(warmup_s=1.0, measure_s=seconds, paced_pairs=pairs)
        if rate is not None:
            settings.rate = rate
        bench = Bench(settings, time.perf_counter())
        out = raw_path or work / "stacks.txt"
        argv = [py_spy, "record", "-p", str(target.server.pid), "-d", str(round(seconds))]
        argv += ["-r", str(SAMPLE_RATE), "-f", "raw", "-o", str(out)]
        recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        result: ThroughputResult | PacedResult
        if rate is None:
            result = await bench.throughput_run(target, pairs)
            reached = f"{result.msgs_per_s:,.0f} msg/s"
        else:
            result = paced = await bench.paced_run(target)
            reached = (
                f"paced {paced.achieved_rate:,.0f} msg/s, p50 {paced.p50_ms:.2f} ms, "
                f"p99 {paced.p99_ms:.2f} ms"
            )
        _, err = recorder.communicate(timeout=seconds + 30)
        share = cpu_share(result.probes)
        print(
            f"{pairs} pairs: {reached}; CPU in cores: relay "
            f"{share['server']:.2f}, load generator {share['loadgen']:.2f}, PostgreSQL "
            f"{share['postgres']:.2f}, other {share['other']:.2f}"
        )
        if recorder.returncode != 0:
            print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
            return 1
        print()
        print("\n".join(summarize_stacks(out.read_text())))
        return 0
    finally:
        if target is not None:
            target.close()
            target.server.stop()
        if pg_db is not None:
            with contextlib.suppress(Exception):
                await pg_admin(
                    DEFAULT_PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'
                )
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_relay")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw stacks in this file")
    parser.add_argument(
        "--rate", type=float, help="paced messages/s over --pairs pairs instead of the closed loop"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_profile(args.db, args.pairs, args.seconds, args.raw, args.rate))


if __name__ == "__main__":
    sys.exit(main())
