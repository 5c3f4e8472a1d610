"""``e2ee demo`` (issue 4): one command, a relay subprocess and two clients.

Each test runs the real command line (``python -m e2ee demo``, which loads the
``demo`` entry point) in a subprocess with a bound on its time, and checks what it
prints: both directions, the relay column holding ciphertext and no plaintext, each
side reading exactly what the other sent, equal safety numbers; and that no relay
process is left behind (by the pid it prints and by its working directory), also after
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_sdk.demo import (
    ALICE_TO_BOB,
    BOB_TO_ALICE,
    DemoError,
    RelayProcess,
    plaintexts_found,
)

RUN_TIMEOUT = 120.0
"""Seconds the whole demo may take (about 2 s here)."""
WAIT = 30.0
"""Bound for anything else the tests wait for."""

_RELAY_LINE = re.compile(r"^relay: `e2ee serve` at ws://127\.0\.0\.1:(\d+) \(pid (\d+)\)", re.M)
_WORK_LINE = re.compile(r"^e2ee demo: a relay and two clients on this machine, in (\S+)$", re.M)
_ROW = re.compile(
    r"^  #(\d+) (alice|bob) +([\d,]+) B  (pre-key|message)  ([0-9a-f]{12})\.\.\.([0-9a-f]{12})"
    r" *\| (.*)$"
)
_SAFETY = re.compile(r"^safety number as (alice|bob) sees it: +((?:\d{5} ){11}\d{5})$", re.M)


def _env(tmp_path: Path) -> dict[str, str]:
    """The demo's environment: its temporary directory under ``tmp_path``."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}


def _argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "e2ee", "demo", *extra]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the demo's work dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            data = cmdline.read_bytes()
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if text.encode() in data and pid != os.getpid() and _alive(pid):
            found.append(pid)
    return found


def _assert_no_relay_left(relay_pid: int, work: str) -> None:
    """The relay is gone (bounded poll: it is reaped before the demo exits, so this
    normally holds at once) and no process runs in the demo's directory."""
    deadline = time.monotonic() + WAIT
    while _alive(relay_pid) or _processes_mentioning(work):
        assert time.monotonic() < deadline, f"relay {relay_pid} or a process in {work} remains"
        time.sleep(0.1)


def _rows(block: str) -> list[tuple[str, str, str]]:
    """``(relay column, sender, decrypted column)`` of each table row in ``block``."""
    rows = []
    for line in block.splitlines():
        match = _ROW.match(line)
        if match is not None:
            left = line.split(" | ", 1)[0]
            rows.append((left, match.group(2), match.group(7)))
    return rows


def test_demo_runs_both_ways_and_leaves_no_relay(tmp_path: Path) -> None:
    # Relay settings in the user's environment must not reach the demo's relay (it
    # would keep its messages in memory, or refuse registrations without the token).
    hostile = {"E2EE_DATABASE_URL": "memory://", "E2EE_REGISTRATION_TOKEN": "not-given"}
    done = subprocess.run(
        _argv(),
        env={**_env(tmp_path), **hostile},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert done.stderr == ""

    relay = _RELAY_LINE.search(out)
    work = _WORK_LINE.search(out)
    assert relay is not None and work is not None, out
    relay_pid = int(relay.group(2))
    assert work.group(1).startswith(str(tmp_path / "tmp"))
    _assert_no_relay_left(relay_pid, work.group(1))
    assert not Path(work.group(1)).exists()  # the temporary directory is removed
    assert out.rstrip().endswith(f"relay stopped (pid {relay_pid}); done.")

    # both directions, each with its own table
    first = out.index("alice -> bob: 2 messages")
    second = out.index("bob -> alice: 2 messages")
    assert first < second
    to_bob, to_alice = _rows(out[first:second]), _rows(out[second:])
    assert [(s, r) for _, s, r in to_bob] == [("alice", repr(t)) for t in ALICE_TO_BOB]
    assert [(s, r) for _, s, r in to_alice] == [("bob", repr(t)) for t in BOB_TO_ALICE]
    # alice's messages start the session (pre-key messages until bob answers); bob
    # answers on that session
    kinds = [line.split()[4] for line in out.splitlines() if _ROW.match(line)]
    assert kinds == ["pre-key", "pre-key", "message", "message"]

    # the relay column holds ciphertext, never a plaintext (raw or hex)
    texts = [*ALICE_TO_BOB, *BOB_TO_ALICE]
    for left, _, _ in [*to_bob, *to_alice]:
        for text in texts:
            assert text not in left and text.encode().hex() not in left
    edges = [m.group(5) + m.group(6) for line in out.splitlines() if (m := _ROW.match(line))]
    assert len(set(edges)) == 4  # four different ciphertexts
    assert "bob acknowledged them; the relay deleted them (0 left in its queue)" in out
    assert "alice acknowledged them; the relay deleted them (0 left in its queue)" in out
    assert "plaintexts found in the relay's files (relay.db" in out
    assert out.count("): none\n") == 1

    # both safety numbers: 60 digits, equal
    numbers = dict(_SAFETY.findall(out))
    assert set(numbers) == {"alice", "bob"}
    assert numbers["alice"] == numbers["bob"]
    assert len(numbers["alice"].replace(" ", "")) == 60
    assert "alice is verified" in out


def test_ctrl_c_stops_the_relay(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    with log.open("wb") as sink:
        proc = subprocess.Popen(_argv(), env=_env(tmp_path), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT
        while (relay := _RELAY_LINE.search(log.read_text())) is None:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    out = log.read_text()
    assert code == 130, out
    assert "e2ee: interrupted" in out
    work = _WORK_LINE.search(out)
    assert work is not None
    _assert_no_relay_left(int(relay.group(2)), work.group(1))
    assert not Path(work.group(1)).exists()


def test_keep_directory_that_exists_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        _argv("--keep", str(tmp_path)),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"e2ee demo: error: cannot create {tmp_path}")


def test_help() -> None:
    done = subprocess.run(
        _argv("--help"), capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: e2ee demo")
    assert "--keep DIR" in done.stdout


def test_readme_quick_start_runs_the_demo() -> None:
    """The README's first set-up commands install what the demo needs and run it."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text().splitlines()
    start = readme.index("<!-- ci:quickstart -->")
    assert readme[start + 1] == "```sh"
    end = readme.index("```", start + 2)
    assert readme[start + 2 : end] == ["pip install -e '.[relay]'", "e2ee demo"]
    assert start < readme.index("<!-- ci:test-command -->")


def test_a_relay_that_exits_at_once_is_reported_with_its_log(tmp_path: Path) -> None:
    """What ``wait_ready`` says when ``e2ee serve`` is not installed (the e2ee command
    line warns that it cannot load ``serve`` and exits with 2): a stand-in process
    prints the same and exits."""
    relay = RelayProcess(tmp_path, 1, tmp_path / "relay.log")
    warning = "e2ee: warning: cannot load command 'serve' (server.cli:serve_command): ..."
    with relay.log_path.open("wb") as log:
        relay._proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; print({warning!r}); sys.exit(2)"], stdout=log
        )
    with pytest.raises(DemoError) as error:
        asyncio.run(relay.wait_ready(WAIT))
    message = str(error.value)
    assert message.startswith("the relay exited with status 2 before it was ready")
    assert "pip install -e '.[relay]'" in message and warning in message
    assert relay.stop() == 2


def test_the_plaintext_scan_finds_a_planted_text(tmp_path: Path) -> None:
    """The demo's "plaintexts found in the relay's files: none" can say otherwise: a
    text planted in the WAL file is found, one that is absent is not."""
    database = tmp_path / "relay.db"
    database.write_bytes(b"\x00" * 64)
    (tmp_path / "relay.db-wal").write_bytes(b"..." + ALICE_TO_BOB[1].encode() + b"...")
    assert plaintexts_found(database, [ALICE_TO_BOB[0], ALICE_TO_BOB[1]]) == [ALICE_TO_BOB[1]]
