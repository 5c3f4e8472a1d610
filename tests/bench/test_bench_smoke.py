"""Smoke test of the benchmark (bench/run.py): a --quick run completes in-process and
every contender's result check ran. No timing is asserted.

The peers (vodozemac, doubleratchet) come with ``pip install -e '.[bench]'``, not
with ``.[test]``: the bench itself tolerates their absence ("n/a"), so only the e2ee
rows are required here, and a peer's rows are checked only when it is importable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import run as bench_run

E2EE_SAMPLERS = (
    "one_direction/e2ee",
    "one_direction_session/e2ee",
    "dh_step/e2ee",
    "decrypt_skipped_2000/e2ee",
    "decrypt_skipped_0/e2ee",
    "decrypt_hit_skipped/e2ee",
    "setup_x3dh/e2ee",
    "setup_pqxdh/e2ee",
)
PEER_SAMPLERS = {
    "vodozemac": (
        "one_direction/vodozemac",
        "dh_step/vodozemac",
        "setup_x3dh/vodozemac",
        "setup_x3dh/vodozemac_bare",
    ),
    "doubleratchet": ("one_direction/doubleratchet", "dh_step/doubleratchet"),
}
ROUNDS = 2


def _run(tmp_path: Path, peers: tuple[str, ...]) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    result = bench_run.run_benchmark(
        quick=True, rounds=ROUNDS, scale=400, peers=peers, json_path=out, echo=False
    )
    assert json.loads(out.read_text())["checks"] == result["checks"]
    return result


def _checked(result: dict[str, Any], sampler: str) -> None:
    # first and last result of every timed loop, every round (quick runs no warm-up)
    assert result["checks"].get(sampler) == 2 * ROUNDS, sampler
    assert len(result["samples_us"][sampler]) == ROUNDS
    assert all(value > 0 for value in result["samples_us"][sampler])


def test_quick_run_checks_every_contender(tmp_path: Path) -> None:
    result = _run(tmp_path, bench_run.PEERS)
    for sampler in E2EE_SAMPLERS:
        _checked(result, sampler)
    rows = {row["key"]: row for row in result["rows"]}
    assert set(rows) == {row.key for row in bench_run.ROWS}
    for row in rows.values():
        assert row["e2ee_us"] > 0
        assert row["floor_us"] > 0
    assert rows["decrypt_skipped_2000"]["ratio_vs_empty"] > 0
    available = {
        "vodozemac": bench_run.vz is not None,
        "doubleratchet": bench_run.dr is not None,
    }
    for peer, samplers in PEER_SAMPLERS.items():
        if available[peer] and peer not in result["meta"]["unavailable"]:
            for sampler in samplers:
                _checked(result, sampler)
        else:
            assert peer in result["meta"]["unavailable"] or not available[peer]
            assert all(sampler not in result["checks"] for sampler in samplers)
    assert result["machine"]["python"]


def test_quick_run_tolerates_missing_peers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if neither peer were installed (CI installs .[test] only).
    monkeypatch.setattr(bench_run, "vz", None)
    monkeypatch.setattr(bench_run, "dr", None)
    out = tmp_path / "b.json"
    assert bench_run.main(["--quick", "--rounds", str(ROUNDS), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "one direction A->B (ratchet API)" in printed
    assert "n/a" in printed
    assert "vodozemac is not installed" in printed
    result = json.loads(out.read_text())
    for sampler in E2EE_SAMPLERS:
        assert result["checks"][sampler] == 2 * ROUNDS
    assert set(result["meta"]["unavailable"]) == {"vodozemac", "doubleratchet"}
    rows = {row["key"]: row for row in result["rows"]}
    assert rows["one_direction"]["vodozemac_us"] is None
    assert rows["one_direction"]["doubleratchet_us"] is None
    assert rows["one_direction"]["ratio_e2ee_vodozemac"] is None
