"""Smoke test of the SDK benchmark (bench/sdk.py), so its code cannot rot.

A tiny configuration (2 pairs, a fraction of a second per run, one round) through the
real command line: a relay subprocess on SQLite, four SDK clients with real crypto
and stores, bench/relay.py's load generator. It asserts that the run completes and
prints every row and field of its table, and that its JSON holds figures from both
sides; never a timing or a ratio's value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import sdk as sdk_bench

TINY = ["--quick", "--pairs", "2", "--warmup", "0.2", "--measure", "0.5"]


def test_quick_run_prints_the_table_and_writes_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    code = sdk_bench.main([*TINY, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    header = (
        "| measurement | SDK (real crypto, stores) | relay only (load generator) |"
        " SDK / relay only |"
    )
    assert header in printed
    lines = printed.splitlines()
    rows = [line for line in lines if line.startswith("| ") and "pairs" in line]
    assert [row.split("|")[1].strip().split(",")[0] for row in rows] == [
        "msg/s",
        "p50 latency ms",
        "p99 latency ms",
    ]
    for row in rows:
        assert ", 2 pairs" in row
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4, row
    assert "SDK: 4 clients registered, 2 sessions set up" in printed
    assert "relay durability, read back: journal_mode=wal, synchronous=2 (FULL)" in printed
    assert "  sdk/tp2: " in printed and "  relay-only/tp2: " in printed

    result = json.loads(out.read_text())
    entry = result["summary"]["2"]
    for key in ("sdk_msgs_per_s", "relay_msgs_per_s", "throughput_ratio"):
        assert entry[key] > 0, key
    for key in ("sdk_p50_ms", "sdk_p99_ms", "relay_p50_ms", "relay_p99_ms"):
        assert math.isfinite(entry[key]) and entry[key] > 0, key
    assert entry["sdk_latency_samples"] > 0
    assert entry["relay_latency_samples"] > 0
    assert result["durability"] == {"journal_mode": "wal", "synchronous": "2 (FULL)"}


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sdk_bench.main(["--pairs", "0"])
    assert exit_info.value.code == 2
    assert "--pairs needs counts >= 1" in capsys.readouterr().err
