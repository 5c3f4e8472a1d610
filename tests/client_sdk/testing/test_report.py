"""Tests of client_sdk.testing.report: SimReport JSON, the summary table, the plot, Progress."""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from client_sdk.testing.report import (
    PLOT_SIZE_PX,
    REPORT_VERSION,
    PlotUnavailable,
    Progress,
    ReportError,
    SimReport,
    percentile,
    summary_table,
    write_plot,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_report(**overrides: Any) -> SimReport:
    values: dict[str, Any] = {
        "seed": 42,
        "backend": "postgres",
        "users": 100,
        "devices_per_user": 3,
        "client_state_limit_bytes": 1_000_000,
        "started_at": "2025-01-02T03:04:05+00:00",
        "messages_planned": 5000,
        "messages_sent": 5000,
        "intended_deliveries": 14000,
        "delivered": 14000,
        "redelivered_after_crash": 7,
        "relay_kills": 2,
        "client_kills": 5,
        "disconnects": 11,
        "relay_restarts_s": [1.25, 0.75],
        "canary_bytes_scanned": 123456,
        "max_client_state_bytes": 54321,
        "duration_s": 20.0,
        "latencies_ms": [float(i) for i in range(1, 101)],
        "throughput": [(float(s), 700) for s in range(20)],
        "event_log": None,
    }
    values.update(overrides)
    return SimReport(**values)


# --- percentile ---------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]  # the textbook nearest-rank example
    assert percentile(values, 5) == 15.0
    assert percentile(values, 30) == 20.0
    assert percentile(values, 40) == 20.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 0) == 15.0


def test_percentile_is_order_independent_and_picks_a_member() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 90) == 90.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 7) == 7.0  # 0.07 * 100 has float noise above 7
    assert percentile([3.5], 99.9) == 3.5


@pytest.mark.parametrize("q", [-1, 100.5, math.nan])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], q)


def test_percentile_rejects_empty() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


# --- passed -------------------------------------------------------------------------


def test_clean_run_passes() -> None:
    report = make_report()
    assert report.passed
    assert report.problems == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"lost": 1}, "1 deliveries lost"),
        ({"duplicated": 2}, "2 deliveries duplicated"),
        ({"undecryptable": 3}, "3 deliveries undecryptable"),
        ({"out_of_order": 4}, "4 deliveries out of order"),
        ({"canary_hits": 1}, "1 canary hits"),
        ({"failures": ["relay never came back"]}, "relay never came back"),
        ({"max_client_state_bytes": 1_000_001}, "above the limit of 1000000"),
    ],
)
def test_each_problem_fails_the_run(overrides: dict[str, Any], expected: str) -> None:
    report = make_report(**overrides)
    assert not report.passed
    assert len(report.problems) == 1
    assert expected in report.problems[0]


def test_state_at_the_limit_passes() -> None:
    assert make_report(max_client_state_bytes=1_000_000).passed


def test_defaults() -> None:
    report = SimReport(
        seed=1, backend="sqlite", users=2, devices_per_user=1, client_state_limit_bytes=10
    )
    assert report.passed
    assert report.latencies_ms == [] and report.throughput == [] and report.event_log is None
    assert report.started_at.endswith("+00:00")
    # Each report gets its own lists.
    other = SimReport(
        seed=1, backend="sqlite", users=2, devices_per_user=1, client_state_limit_bytes=10
    )
    report.failures.append("x")
    assert other.failures == []


# --- JSON ---------------------------------------------------------------------------


def test_json_round_trip() -> None:
    report = make_report(lost=1, failures=["a", "b"], event_log="/tmp/events.jsonl")
    data = report.to_json()
    assert data["version"] == REPORT_VERSION
    assert data["passed"] is False
    for key in ("lost", "duplicated", "undecryptable"):
        assert key in data
    assert data["throughput"][0] == [0.0, 700]
    # Through real JSON text, both ways.
    again = SimReport.from_json(json.loads(json.dumps(data)))
    assert again == report
    assert again.to_json() == data


def test_to_json_copies_lists() -> None:
    report = make_report()
    data = report.to_json()
    data["latencies_ms"].append(1e9)
    assert 1e9 not in report.latencies_ms


def test_from_json_accepts_integral_floats() -> None:
    data = make_report().to_json()
    data["duration_s"] = 20
    data["latencies_ms"] = [1, 2.5]
    report = SimReport.from_json(data)
    assert report.duration_s == 20.0 and isinstance(report.duration_s, float)
    assert report.latencies_ms == [1.0, 2.5]


def test_from_json_allows_negative_seed() -> None:
    data = make_report().to_json()
    data["seed"] = -5
    assert SimReport.from_json(data).seed == -5


def _broken(key: str, value: Any) -> dict[str, Any]:
    data = make_report().to_json()
    data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        (_broken("version", 2), "unsupported report version 2"),
        (_broken("passed", "yes"), "'passed' must be a boolean"),
        (_broken("colour", "red"), "unknown report field"),
        (_broken("lost", "0"), "'lost' must be an integer, not str"),
        (_broken("lost", True), "'lost' must be an integer, not bool"),
        (_broken("lost", 1.0), "'lost' must be an integer, not float"),
        (_broken("delivered", -1), "'delivered' must not be negative"),
        (_broken("seed", None), "'seed' must be an integer"),
        (_broken("backend", 3), "'backend' must be a string"),
        (_broken("duration_s", "1"), "'duration_s' must be a number"),
        (_broken("duration_s", math.inf), "'duration_s' must be finite"),
        (_broken("latencies_ms", [1.0, "2"]), r"'latencies_ms\[1\]' must be a number"),
        (_broken("latencies_ms", 1.0), "'latencies_ms' must be a list"),
        (_broken("throughput", [[1.0]]), r"'throughput\[0\]' must be a \[seconds, count\] pair"),
        (_broken("throughput", [[1.0, 2.5]]), r"'throughput\[0\]\[1\]' must be an integer"),
        (_broken("failures", [1]), r"'failures\[0\]' must be a string"),
        (_broken("event_log", 1), "'event_log' must be a string"),
        (_broken("relay_restarts_s", [math.nan]), "must be finite"),
        (_broken("started_at", "yesterday"), "ISO 8601"),
        (_broken("started_at", "2025-01-02T03:04:05+02:00"), "must be in UTC"),
        (_broken("started_at", "2025-01-02T03:04:05"), "must be in UTC"),
    ],
)
def test_from_json_rejects(data: object, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        SimReport.from_json(data)


@pytest.mark.parametrize("key", [*make_report().to_json().keys()])
def test_from_json_rejects_each_missing_field(key: str) -> None:
    data = make_report().to_json()
    del data[key]
    with pytest.raises(ReportError, match=key):
        SimReport.from_json(data)


def test_report_error_is_a_value_error() -> None:
    assert issubclass(ReportError, ValueError)


def test_write_and_read(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    report = make_report(lost=2)
    report.write(path)
    assert json.loads(path.read_text())["lost"] == 2
    assert SimReport.read(path) == report
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary file left behind


def test_write_refuses_nan_and_leaves_target_alone(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    make_report().write(path)
    before = path.read_bytes()
    with pytest.raises(ReportError, match="cannot be written"):
        make_report(duration_s=math.nan).write(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["report.json"]


def test_write_failure_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises(OSError):
        make_report().write(target)  # os.replace cannot replace a directory with a file
    assert os.listdir(tmp_path) == ["a-directory"]


def test_read_rejects_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(b"{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        SimReport.read(path)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ReportError, match="not valid JSON"):
        SimReport.read(path)


# --- summary table ------------------------------------------------------------------


def _value(table: str, label: str) -> str:
    for line in table.splitlines():
        if line.startswith(label + " "):
            return line[len(label) :].strip()
    raise AssertionError(f"no row {label!r} in\n{table}")


def test_summary_table_passed() -> None:
    table = summary_table(make_report())
    lines = table.splitlines()
    assert lines[-1] == "PASSED"
    assert _value(table, "users x devices") == "100 x 3"
    assert _value(table, "messages sent") == "5,000 of 5,000 planned"
    assert _value(table, "intended deliveries") == "14,000"
    assert _value(table, "delivered") == "14,000"
    assert _value(table, "lost") == "0"
    assert _value(table, "redelivered after crash") == "7"
    assert _value(table, "relay kills") == "2 (restart mean 1.00 s, max 1.25 s)"
    assert _value(table, "client kills") == "5"
    assert _value(table, "disconnects") == "11"
    assert _value(table, "canary hits / bytes scanned") == "0 / 123,456"
    assert _value(table, "max client state (bytes)") == "54,321 (limit 1,000,000)"
    assert _value(table, "latency p50/p90/p99/max (ms)") == "50.0 / 90.0 / 99.0 / 100.0"
    assert _value(table, "throughput mean/peak (msg/s)") == "700.0 / 700"
    assert _value(table, "duration") == "20.0 s"
    assert _value(table, "seed") == "42"
    # Values start in one column, after the widest label and two spaces.
    rule = lines[0]
    assert set(rule) == {"-"} and lines[lines.index(rule, 1)] == rule
    rows = lines[1 : lines.index(rule, 1)]
    columns = {re.match(r"^\S.*?\S( {2,})\S", row).end(1) for row in rows}  # type: ignore[union-attr]
    assert columns == {len("latency p50/p90/p99/max (ms)") + 2}, table


def test_summary_table_failed_lists_problems() -> None:
    report = make_report(
        lost=3, canary_hits=1, failures=["relay 2 never restarted"], event_log="/tmp/ev.jsonl"
    )
    table = summary_table(report)
    lines = table.splitlines()
    assert "FAILED (3 problems)" in lines
    verdict = lines.index("FAILED (3 problems)")
    assert lines[verdict + 1 :] == [
        "  - relay 2 never restarted",
        "  - 3 deliveries lost",
        "  - 1 canary hits in relay storage or logs",
    ]
    assert _value(table, "event log") == "/tmp/ev.jsonl"
    assert "PASSED" not in table


def test_summary_table_without_data() -> None:
    report = SimReport(
        seed=0, backend="memory", users=0, devices_per_user=0, client_state_limit_bytes=0
    )
    table = summary_table(report)
    assert _value(table, "latency p50/p90/p99/max (ms)") == "no data"
    assert _value(table, "throughput mean/peak (msg/s)") == "- / 0"
    assert table.splitlines()[-1] == "PASSED"


# --- plot ---------------------------------------------------------------------------


def _check_png(path: Path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    image = pytest.importorskip("matplotlib.image").imread(path)
    width, height = PLOT_SIZE_PX
    assert image.shape[:2] == (height, width)


def test_write_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "sim.png"
    write_plot(make_report(failures=["x"]), path)
    _check_png(path)
    assert os.listdir(tmp_path) == ["sim.png"]


def test_write_plot_without_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "empty.png"
    report = SimReport(
        seed=0, backend="memory", users=0, devices_per_user=0, client_state_limit_bytes=0
    )
    write_plot(report, path)
    _check_png(path)


def test_write_plot_single_latency(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "one.png"
    write_plot(make_report(latencies_ms=[5.0], throughput=[(0.0, 1)]), path)
    _check_png(path)


def test_write_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable, match=r"pip install 'e2ee\[sim\]'"):
        write_plot(make_report(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    assert issubclass(PlotUnavailable, RuntimeError)


# --- Progress -----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_tty_redraws_in_place_at_most_ten_times_a_second() -> None:
    clock = FakeClock()
    stream = FakeTTY()
    bar = Progress(200, stream=stream, label="sim", clock=clock)
    assert stream.getvalue().count("\r") == 1  # initial draw
    for _ in range(49):  # 49 steps within 49 ms: no redraw
        clock.now += 0.001
        bar.advance()
    assert stream.getvalue().count("\r") == 1
    clock.now += 0.1
    bar.advance()
    assert stream.getvalue().count("\r") == 2
    last = stream.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("sim: |")
    assert "50/200" in last and " 25%" in last
    assert "ETA" in last and "/s" in last
    assert "\n" not in stream.getvalue()


def test_progress_tty_line_contents_and_eta() -> None:
    clock = FakeClock()
    stream = FakeTTY()
    bar = Progress(100, stream=stream, clock=clock)
    clock.now += 10.0
    bar.advance(50)
    bar.set_postfix(lost=0, dup=1)  # within 0.1 s of the last draw: not drawn yet
    clock.now += 0.1
    bar.set_postfix(lost=0, dup=1)
    last = stream.getvalue().rsplit("\r", 1)[1].rstrip()
    assert last == "|" + "#" * 12 + "-" * 12 + "| 50/100  50% 5.0/s ETA 00:10 lost=0 dup=1"


def test_progress_tty_completion_is_drawn_at_once_and_close_ends_line() -> None:
    clock = FakeClock()
    stream = FakeTTY()
    with Progress(10, stream=stream, clock=clock) as bar:
        bar.advance(9)
        bar.advance(1)  # same instant, but complete: drawn
        assert "10/10 100%" in stream.getvalue().rsplit("\r", 1)[1]
        bar.set_postfix(lost=0)
    out = stream.getvalue()
    assert out.endswith("\n")
    assert "lost=0" in out.rsplit("\r", 1)[1]


def test_progress_tty_clears_a_longer_previous_line() -> None:
    clock = FakeClock()
    stream = FakeTTY()
    bar = Progress(10, stream=stream, clock=clock)
    clock.now += 1
    bar.set_postfix(note="a-very-long-postfix-text")
    clock.now += 1
    bar.set_postfix()
    previous, last = stream.getvalue().rsplit("\r", 2)[1:]
    assert "note" in previous and "note" not in last
    assert len(last) == len(previous) and last.endswith(" ")


def test_progress_plain_stream_prints_each_ten_percent() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    bar = Progress(100, stream=stream, label="sim", clock=clock)
    assert stream.getvalue() == ""
    for _ in range(100):
        clock.now += 0.25
        bar.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert [line.split()[1] for line in lines] == [f"{n}/100" for n in range(10, 101, 10)]
    assert all(line.startswith("sim: ") and "|" not in line and "\r" not in line for line in lines)
    bar.set_postfix(lost=0)
    clock.now += 1
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[-1].startswith("sim: 100/100 100%") and lines[-1].endswith("lost=0")
    assert "in 00:26" in lines[-1]


def test_progress_plain_stream_big_jumps_print_once() -> None:
    stream = io.StringIO()
    with Progress(10, stream=stream, clock=FakeClock()) as bar:
        bar.advance(7)
        bar.advance(1)
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["7/10", "8/10", "8/10"]


def test_progress_zero_total_and_overshoot() -> None:
    stream = io.StringIO()
    with Progress(0, stream=stream, clock=FakeClock()) as bar:
        bar.advance(3)
    assert stream.getvalue().splitlines() == ["3/0 100% 0.0/s in 00:00"]
    tty = FakeTTY()
    with Progress(2, stream=tty, clock=FakeClock()) as bar:
        bar.advance(5)
    assert "|" + "#" * 24 + "|" in tty.getvalue()


def test_progress_misuse() -> None:
    with pytest.raises(ValueError, match="negative"):
        Progress(-1, stream=io.StringIO())
    bar = Progress(5, stream=io.StringIO(), clock=FakeClock())
    with pytest.raises(ValueError, match="back"):
        bar.advance(-1)
    bar.close()
    bar.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        bar.advance()
    with pytest.raises(RuntimeError, match="closed"):
        bar.set_postfix(lost=1)
    assert bar.count == 0


def test_progress_defaults_to_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(1) as bar:
        bar.advance()
    assert "1/1 100%" in capsys.readouterr().err


def test_progress_closes_on_exception() -> None:
    stream = FakeTTY()
    with pytest.raises(KeyError), Progress(3, stream=stream, clock=FakeClock()):
        raise KeyError("boom")
    assert stream.getvalue().endswith("\n")
