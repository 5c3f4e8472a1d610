"""The simulation harness end to end (issue 5 "What the tests must show").

The CI workload: 50 users x 2 devices (the second linked through the real flow), 5,000
messages, 5 relay SIGKILL restarts, 3 client process SIGKILL restarts and random
dropped connections, on SQLite and on PostgreSQL with Redis: 0 lost, 0 duplicated,
0 undecryptable, printed as figures. Each run is bounded (``timeout_s``).

Smaller runs check the replay of a failed run's schedule and the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.testing.report import SimReport, summary_table
from client_sdk.testing.sim import load_replay, run_simulation
from client_sdk.testing.workload import SimConfig, make_schedule
from tests.server.pg import pg_admin_url
from tests.services import connect_redis, redis_url

CI_RUN_SECONDS = 600.0
"""Bound of one CI workload run (it takes about a minute or two on 2 cores)."""


def _ci_config(seed: int, **overrides: object) -> SimConfig:
    settings: dict[str, object] = {
        "seed": seed,
        "users": 50,
        "devices_per_user": 2,
        "messages": 5_000,
        "relay_kills": 5,
        "client_kills": 3,
        "disconnects": 10,
        "rate": 250.0,
        "timeout_s": CI_RUN_SECONDS,
    }
    settings.update(overrides)
    return SimConfig(**settings)  # type: ignore[arg-type]


def _show(report: SimReport, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print()
        print(summary_table(report))


def _assert_clean(report: SimReport) -> None:
    assert report.problems == []
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.undecryptable == 0
    assert report.out_of_order == 0
    assert report.canary_hits == 0
    assert report.canary_bytes_scanned > 0
    assert report.messages_sent == report.messages_planned
    assert report.delivered == report.intended_deliveries == report.messages_planned * 3
    assert report.relay_kills == 5 and report.client_kills == 3
    assert report.disconnects > 0


@pytest.mark.asyncio
async def test_ci_workload_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = await run_simulation(_ci_config(seed=5150), tmp_path / "sim")
    _show(run.report, capsys)
    _assert_clean(run.report)
    assert run.event_log is None


@pytest.mark.asyncio
async def test_ci_workload_on_postgresql_with_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await connect_redis()  # skips (a failure in CI) when Redis is down
    await client.aclose()
    config = _ci_config(seed=6160, database=pg_admin_url(), redis_url=redis_url())
    run = await run_simulation(config, tmp_path / "sim")
    _show(run.report, capsys)
    _assert_clean(run.report)
    assert run.report.backend == "postgresql+redis"


@pytest.mark.asyncio
async def test_a_failed_run_writes_its_event_log_and_replays(tmp_path: Path) -> None:
    """A run that fails (here: a client state limit no store can meet) writes the event
    log; ``--replay`` of that log runs the same schedule again."""
    config = SimConfig(
        seed=77,
        users=4,
        messages=60,
        conversations=2,
        relay_kills=1,
        client_kills=1,
        disconnects=2,
        workers=2,
        rate=0,
        client_state_limit_bytes=1,
        timeout_s=300,
    )
    run = await run_simulation(config, tmp_path / "first")
    assert not run.report.passed
    assert run.report.lost == run.report.duplicated == run.report.undecryptable == 0
    assert run.event_log is not None and run.report.event_log == str(run.event_log)
    log = json.loads(run.event_log.read_text())
    assert len(log["messages"]) == 60
    first = log["messages"][0]
    assert {"sid", "sending_t", "accepted_t", "msg_id", "relay_accepted_ms", "delivered"} <= set(
        first
    )
    assert len(first["delivered"]) == 3 and first["missing"] == []
    replay_config, schedule = load_replay(run.event_log)
    assert replay_config == config
    assert schedule == make_schedule(config)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2ee",
            "sim",
            "--replay",
            str(run.event_log),
            "--workdir",
            str(tmp_path / "replay"),
            "--report",
            str(tmp_path / "replay.json"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("E2EE_")},
    )
    assert proc.returncode == 1, proc.stderr  # the same limit fails the replay too
    assert "e2ee sim: seed 77" in proc.stdout
    replayed = SimReport.read(tmp_path / "replay.json")
    assert replayed.seed == 77 and replayed.messages_planned == 60
    assert replayed.delivered == replayed.intended_deliveries == 180
    assert replayed.lost == replayed.duplicated == 0


def test_cli_reports_plots_and_refuses_bad_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_")}
    bad = subprocess.run(
        [sys.executable, "-m", "e2ee", "sim", "--users", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert bad.returncode == 2 and "e2ee sim: error:" in bad.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2ee",
            "sim",
            "--users",
            "3",
            "--conversations",
            "2",
            "--messages",
            "40",
            "--relay-kills",
            "0",
            "--client-kills",
            "0",
            "--disconnects",
            "1",
            "--workers",
            "1",
            "--seed",
            "3",
            "--report",
            str(tmp_path / "out.json"),
            "--plot",
            str(tmp_path / "out.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout and "seed 3" in proc.stdout
    assert "deliveries" in proc.stderr  # the progress bar
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["lost"] == report["duplicated"] == report["undecryptable"] == 0
    assert report["delivered"] == 120
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
