"""The complete example of docs/sdk.md (issue 4): the text of the marked block, run.

The fenced ``python`` block right after the line ``<!-- sdk:example -->`` is extracted
from the document, written to ``chat.py`` and run as the document says: two processes,
bob and alice, each with its own store and raw key, against a real relay (``e2ee serve``
as a subprocess on SQLite, started and stopped by ``client_sdk.demo.running_relay``).
Lines are written to their standard input, and what they print is read with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_sdk.demo import READY_TIMEOUT, RelayProcess, running_relay
from tests.doc_blocks import marked_block

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"
MARKER = "<!-- sdk:example -->"
MAX_LINES = 50
"""Issue 4: a complete example chat app of under 50 lines."""
WAIT = 30.0
"""Bound for each line a test waits for."""
_SAFETY = re.compile(r"^(?:\d{5} ){11}\d{5}$")


def example_source(text: str) -> str:
    """The body of the fenced ``python`` block right after the marker line."""
    return marked_block(text, MARKER)


def test_extraction_finds_the_block_and_refuses_bad_documents() -> None:
    doc = f"intro\n{MARKER}\n```python\nprint(1)\n```\n```python\nprint(2)\n```\n"
    assert example_source(doc) == "print(1)\n"
    for bad in (
        "no marker\n```python\nx\n```\n",
        f"{MARKER}\ntext\n```python\nx\n```\n",
        f"{MARKER}\n```python\nx\n",
        f"{MARKER}\n```python\nx\n```\n{MARKER}\n```python\ny\n```\n",
    ):
        with pytest.raises(ValueError):
            example_source(bad)


def test_the_example_is_under_50_lines_and_compiles() -> None:
    source = example_source(DOC.read_text())
    assert len(source.splitlines()) < MAX_LINES
    compile(source, "chat.py", "exec")


class Chat:
    """One running copy of the example, fed through its standard input."""

    def __init__(self, script: Path, relay_url: str, store: Path, me: str, peer: str, key: bytes):
        env = {**os.environ, "CHAT_STORE_KEY": key.hex(), "PYTHONUNBUFFERED": "1"}
        self.name = me
        self.proc = subprocess.Popen(
            [sys.executable, str(script), relay_url, str(store), me, peer],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=script.parent,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def type(self, line: str) -> None:
        """Type one line into the chat."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str | re.Pattern[str]) -> str:
        """The next printed line, which must match ``pattern`` (a ``str`` is matched
        whole); waits at most :data:`WAIT` seconds."""
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"{self.name}: nothing printed within {WAIT} s") from None
        if line is None:
            raise AssertionError(f"{self.name} exited: {self._stderr()}")
        self.seen.append(line)
        matched = pattern.match(line) if isinstance(pattern, re.Pattern) else line == pattern
        assert matched, f"{self.name} printed {line!r}, expected {pattern!r}"
        return line

    def end(self) -> int:
        """Ctrl-D; the exit status (bounded wait)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        leftover = []
        while (line := self._lines.get_nowait()) is not None:
            leftover.append(line)
        assert leftover == [], f"{self.name} printed more: {leftover}"
        return code

    def _stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read()

    def close(self) -> None:
        """Kill the process if it still runs, and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._reader.join(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    with running_relay(tmp_path) as running:
        asyncio.run(running.wait_ready(READY_TIMEOUT))
        yield running


def test_the_documented_example_chats_both_ways(tmp_path: Path, relay: RelayProcess) -> None:
    script = tmp_path / "chat.py"
    script.write_text(example_source(DOC.read_text()))
    keys = {"alice": secrets.token_bytes(32), "bob": secrets.token_bytes(32)}
    chats: list[Chat] = []

    def start(me: str, peer: str) -> Chat:
        chat = Chat(script, relay.url, tmp_path / f"{me}.db", me, peer, keys[me])
        chats.append(chat)
        chat.expect(f"chatting as {me} with {peer}; /safety or Ctrl-D")
        return chat

    try:
        bob = start("bob", "alice")
        alice = start("alice", "bob")
        alice.type("hello bob")
        alice.type("")  # an empty line sends nothing
        alice.type("how are you?")
        bob.expect("alice: hello bob")
        bob.expect("alice: how are you?")
        bob.type("hi alice, fine")
        alice.expect("bob: hi alice, fine")
        alice.type("/safety")
        bob.type("/safety")
        assert alice.expect(_SAFETY) == bob.expect(_SAFETY)
        assert alice.end() == 0, alice.seen

        # alice is offline: bob's message waits at the relay; alice's next run (same
        # store and key) restores her account and session and shows it
        bob.type("are you still there?")
        alice = start("alice", "bob")
        alice.expect("bob: are you still there?")
        alice.type("back again")
        bob.expect("alice: back again")

        # a message to a user the relay does not know is refused, and the chat goes on
        stranger = Chat(script, relay.url, tmp_path / "carol.db", "carol", "nobody", keys["bob"])
        chats.append(stranger)
        stranger.expect("chatting as carol with nobody; /safety or Ctrl-D")
        stranger.type("anyone?")
        stranger.expect(re.compile(r"^not sent: UnknownUser: "))
        assert stranger.end() == 0
        assert [c.end() for c in (alice, bob)] == [0, 0]
    finally:
        for chat in chats:
            chat.close()
    for chat in chats:
        assert chat.proc.returncode == 0


def test_the_example_refuses_wrong_arguments(tmp_path: Path) -> None:
    script = tmp_path / "chat.py"
    script.write_text(example_source(DOC.read_text()))
    deadline = time.monotonic() + WAIT
    done = subprocess.run(
        [sys.executable, str(script), "ws://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert time.monotonic() < deadline
    assert done.returncode == 1
    assert "python chat.py RELAY_URL STORE_PATH USER_ID PEER_ID" in done.stderr
