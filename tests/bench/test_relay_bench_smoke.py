"""Smoke test of the relay benchmark (bench/relay.py), so its code cannot rot.

Tiny counts (2 pairs, a fraction of a second per run); it asserts only that the run
completes and prints its fields (figures, ratios, targets, the durability settings
read back), never a timing or a verdict. The idle-socket memory measurement runs with
1,000 sockets, the "1,000-socket smoke version" issue 3 asks CI to run (about 25 s
on the 2-core development machine: registering 1,000 accounts and opening 1,000
authenticated sockets, then 1,000 bare ones).

The PostgreSQL part skips when the server is unreachable (a failure under
``E2EE_REQUIRE_SERVICES=1``, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bench import loadgen
from bench import relay as relay_bench
from e2ee.relay_frames import Send
from tests.server.pg import pg_admin_url

SMOKE_SOCKETS = 1_000
TINY = [
    "--quick",
    "--rounds",
    "1",
    "--pairs",
    "2",
    "--paced-pairs",
    "2",
    "--rate",
    "200",
    "--warmup",
    "0.2",
    "--measure",
    "0.5",
    "--window",
    "2",
]


def _postgres_reachable() -> None:
    why = asyncio.run(relay_bench.postgres_reachable(pg_admin_url()))
    if why is not None:
        shown = make_url(pg_admin_url()).render_as_string(hide_password=True)
        pytest.skip(f"PostgreSQL is not reachable at {shown}: {why}")


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, object]]:
    out = Path(args[args.index("--json") + 1])
    code = relay_bench.main(args)
    printed = capsys.readouterr().out
    assert code == 0, printed
    return printed, json.loads(out.read_text())


def test_throughput_and_latency_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TINY, "--backends", "sqlite", "--sockets", "0", "--data-dir", str(tmp_path / "d")]
    printed, result = _run([*args, "--json", str(tmp_path / "r.json")], capsys)
    for field in (
        "msg/s, 2 pairs",
        "p50 latency, ms, at 200 msg/s",
        "p99 latency, ms, at 200 msg/s",
        "p99 send -> Accepted, ms",
        ">= 0.25",
        "<= 20 ms",
        "durability (sqlite), read back: journal_mode=wal, synchronous=2 (FULL)",
        "CPU during the measured windows",
    ):
        assert field in printed, field
    summary = result["summary"]
    assert isinstance(summary, dict)
    row = summary["throughput"]["2"]
    assert row["bare"]["msgs_per_s"] > 0
    assert row["sqlite"]["msgs_per_s"] > 0
    assert row["sqlite"]["ratio"] > 0
    assert summary["latency"]["sqlite"]["messages"] > 0
    assert result["refused"] == []


def test_throughput_and_latency_on_postgres(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _postgres_reachable()
    args = [*TINY, "--backends", "postgres", "--sockets", "0", "--require-postgres"]
    args += ["--pg-admin-url", pg_admin_url(), "--json", str(tmp_path / "r.json")]
    printed, result = _run(args, capsys)
    assert "durability (postgres), read back: synchronous_commit=on, fsync=on" in printed
    assert ">= 0.15" in printed
    summary = result["summary"]
    assert isinstance(summary, dict)
    assert summary["throughput"]["2"]["postgres"]["msgs_per_s"] > 0
    assert summary["latency"]["postgres"]["messages"] > 0


def test_idle_socket_memory_with_1000_sockets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--memory-only", "--sockets", str(SMOKE_SOCKETS), "--data-dir", str(tmp_path / "d")]
    printed, result = _run([*args, "--json", str(tmp_path / "r.json")], capsys)
    assert "| bare forwarder | 1,000 |" in printed
    assert "| relay, SQLite | 1,000 |" in printed
    assert "relay / bare memory per connection:" in printed
    memory = result["memory"]
    assert isinstance(memory, dict)
    for name in ("bare", "sqlite"):
        assert memory[name]["sockets"] == SMOKE_SOCKETS
        assert memory[name]["rss_after_kib"] > 0


def test_durability_check_refuses_other_settings() -> None:
    relay_bench.check_durability("sqlite", dict(relay_bench.SHIPPED_DURABILITY["sqlite"]))
    with pytest.raises(relay_bench.BenchRefused, match="synchronous"):
        relay_bench.check_durability("sqlite", {"journal_mode": "wal", "synchronous": "1 (NORMAL)"})
    with pytest.raises(relay_bench.BenchRefused, match="synchronous_commit"):
        relay_bench.check_durability("postgres", {"synchronous_commit": "off", "fsync": "on"})
    with pytest.raises(relay_bench.BenchRefused):
        relay_bench.check_durability("postgres", {})


def _unmask(frame: bytes) -> bytes:
    """The payload of one masked client frame (as a server reads it)."""
    length = frame[1] & 0x7F
    at = 2
    if length == 126:
        length, at = int.from_bytes(frame[2:4], "big"), 4
    key, data = frame[at : at + 4], frame[at + 4 :]
    assert len(data) == length
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def test_spliced_send_frames_equal_their_encoding() -> None:
    rng = random.Random(7)
    salt = bytes(range(8))
    frames = loadgen.build_frames(
        3, 250, 300, recipient_user="bob", recipient_device=2, salt=salt, rng=rng
    )
    assert len(frames) == 300
    padding_rng = random.Random(7)
    padding = padding_rng.randbytes(
        loadgen.CIPHERTEXT_SIZE - len(loadgen.MARKER) - 8  # the index: pair and index
    )
    for offset in (0, 1, 5, 255, 299):  # 256 crosses a byte of the index
        index = 250 + offset
        expected = Send(
            loadgen._INDEX.pack(3, index) + salt,
            (("bob", ((2, loadgen.ciphertext(3, index, padding)),)),),
        ).to_bytes()
        assert _unmask(frames[offset]) == expected
    assert (
        loadgen.build_frames(0, 0, 0, recipient_user="a", recipient_device=1, salt=salt, rng=rng)
        == []
    )
