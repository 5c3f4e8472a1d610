"""``e2ee demo``: a relay and two clients on this machine, end to end, in one command.

1. Starts a relay as a subprocess (``python -m e2ee serve``) on the embedded SQLite
   default, in a temporary data directory, on a free port of 127.0.0.1, and waits
   (bounded) until its ``/readyz`` answers 200.
2. Opens two clients, alice and bob, each with its own encrypted store in the
   temporary directory (opened with a random 32-byte key), and registers them.
3. alice sends to bob while bob is not reading: the demo reads the relay's SQLite file
   (read-only) and shows what the relay queued (sender, size, envelope type, the
   first and last bytes in hex) beside what bob then decrypts; bob answers, and the same is
   shown the other way. It then checks that the relay's database files contain none of
   the plaintexts, and that the relay deleted the messages once they were acknowledged.
4. Prints the safety number as each side computes it (``Client.safety_number``), and
   bob verifies alice's QR payload.

The relay is stopped through its process handle at the end, and also on an error or
Ctrl-C (SIGTERM counts as Ctrl-C while the demo runs); on Linux it also gets SIGTERM
if the demo process dies. The SDK never imports the relay's code: the relay is a
separate program (the ``relay`` extra: ``pip install -e '.[relay]'``).

Exit codes: 0 when everything above worked, 1 when something failed (the reason is
printed, with the tail of the relay's log when the relay is to blame), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from e2ee.envelope import EnvelopeType, envelope_type
from e2ee.errors import E2EEError

from .client import Client, Message
from .errors import ClientError

__all__ = [
    "ALICE_TO_BOB",
    "BOB_TO_ALICE",
    "READY_TIMEOUT",
    "DemoCommand",
    "DemoError",
    "QueuedCiphertext",
    "RelayProcess",
    "command",
    "plaintexts_found",
    "read_relay_queue",
    "run_demo",
    "running_relay",
]

HOST: Final = "127.0.0.1"
READY_TIMEOUT: Final = 30.0
"""Seconds the relay may take to create and migrate its database and answer /readyz."""
STEP_TIMEOUT: Final = 60.0
"""Seconds any one step of the exchange (register, send, receive) may take."""
STOP_TIMEOUT: Final = 10.0
"""Seconds the relay may take to shut down after SIGTERM before it is killed."""
RELAY_DB: Final = "relay.db"
"""The relay's default SQLite file in its data directory (``e2ee serve``)."""
HEX_EDGE_BYTES: Final = 6
"""How many leading and trailing ciphertext bytes the relay column shows, in hex."""
_POLL_INTERVAL: Final = 0.1
_PR_SET_PDEATHSIG: Final = 1

ALICE_TO_BOB: Final = ("Hi bob! This goes through the relay end-to-end encrypted.", "Lunch at 1?")
BOB_TO_ALICE: Final = ("Hi alice, got both.", "1 pm works. See you!")


class DemoError(ClientError):
    """The demo could not run (the relay did not start, its database cannot be read) or
    an outcome was not what it must be (a message not read back, a plaintext at the
    relay, different safety numbers)."""


# --- the relay process ----------------------------------------------------------------


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """SIGTERM the relay when the demo process dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _http_status(port: int, path: str, timeout: float) -> int:
    """The status code of ``GET path`` on 127.0.0.1:``port``.

    Raises:
        OSError: the connection failed.
        TimeoutError: no status line within ``timeout``.
        ValueError: a malformed status line.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("malformed HTTP status line")
    return int(parts[1])


class RelayProcess:
    """``e2ee serve`` as a subprocess with its own data directory and port."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The relay's base URL (its origin: ``e2ee serve`` defaults to ws://HOST:PORT)."""
        return f"ws://{HOST}:{self.port}"

    @property
    def database(self) -> Path:
        """The relay's SQLite file."""
        return self.data_dir / RELAY_DB

    @property
    def pid(self) -> int | None:
        """The relay's process id while it was started."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start ``python -m e2ee serve`` (this interpreter), output to the log file.

        Raises:
            OSError: the process could not be started or the log file not written.
        """
        argv = [
            sys.executable,
            "-m",
            "e2ee",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]
        # The relay's settings also come from E2EE_* variables and E2EE_CONFIG: none of
        # the user's (a PostgreSQL URL, a registration token, an origin) may leak in.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("E2EE_")}
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509 - no threads yet
            )

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the relay's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no relay log)"
        return "\n".join(text.splitlines()[-lines:])

    def _exited(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    async def wait_ready(self, timeout: float) -> None:
        """Poll ``/readyz`` until it answers 200, for at most ``timeout`` seconds.

        Raises:
            DemoError: the relay exited or was not ready in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout
        while True:
            code = self._exited()
            if code is not None:
                tail = self.log_tail()
                missing = "cannot load command 'serve'" in tail or "invalid choice" in tail
                hint = " (the relay is not installed: pip install -e '.[relay]')" if missing else ""
                raise DemoError(
                    f"the relay exited with status {code} before it was ready{hint}\n{tail}"
                )
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                if await _http_status(self.port, "/readyz", timeout=2.0) == 200:
                    return
            if time.monotonic() >= deadline:
                raise DemoError(f"the relay was not ready within {timeout:g} s\n{self.log_tail()}")
            await asyncio.sleep(_POLL_INTERVAL)

    def stop(self) -> int | None:
        """SIGTERM, wait up to :data:`STOP_TIMEOUT`, then SIGKILL; the process is reaped.
        Returns its exit status (``None`` if it was never started). Idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        return proc.returncode


@contextlib.contextmanager
def running_relay(work: Path) -> Iterator[RelayProcess]:
    """A started :class:`RelayProcess` in ``work``; stopped when the block ends, however
    it ends (an exception, Ctrl-C)."""
    data_dir = work / "relay"
    data_dir.mkdir()
    relay = RelayProcess(data_dir, _free_port(), work / "relay.log")
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


# --- what the relay stored ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueuedCiphertext:
    """One row of the relay's message queue, as the relay stored it."""

    recipient: str
    recipient_device: int
    seq: int
    sender: str
    sender_device: int
    ciphertext: bytes

    def kind(self) -> str:
        """``pre-key`` or ``message``: the envelope type its second byte names (readable
        without any key; a pre-key message starts a session)."""
        try:
            kind = envelope_type(self.ciphertext)
        except E2EEError:
            return "unknown"
        return "pre-key" if kind is EnvelopeType.PREKEY else "message"


def read_relay_queue(database: Path, recipient: str) -> list[QueuedCiphertext]:
    """The messages the relay's SQLite file holds for ``recipient``, oldest first, read
    through a read-only connection (the relay keeps running and writing).

    Raises:
        DemoError: the file cannot be read or has no message queue.
    """
    uri = f"{database.resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
            rows = db.execute(
                "SELECT user_id, device_id, seq, sender_user, sender_device, ciphertext "
                "FROM message_queue WHERE user_id = ? ORDER BY device_id, seq",
                (recipient,),
            ).fetchall()
    except sqlite3.Error as exc:
        raise DemoError(f"cannot read the relay's database {database}: {exc}") from None
    return [
        QueuedCiphertext(str(u), int(d), int(s), str(su), int(sd), bytes(c))
        for u, d, s, su, sd, c in rows
    ]


def _relay_files(database: Path) -> list[Path]:
    """The relay's database file and its WAL and shared-memory files that exist."""
    names = (database.name, f"{database.name}-wal", f"{database.name}-shm")
    return [p for p in (database.parent / n for n in names) if p.exists()]


def plaintexts_found(database: Path, plaintexts: Sequence[str]) -> list[str]:
    """The plaintexts (UTF-8) found anywhere in the relay's database files."""
    blobs = [p.read_bytes() for p in _relay_files(database)]
    return [t for t in plaintexts if any(t.encode() in blob for blob in blobs)]


# --- the exchange ------------------------------------------------------------------------


_LEFT_WIDTH: Final = 55


def _say(text: str = "") -> None:
    print(text, flush=True)


def _relay_cell(row: QueuedCiphertext) -> str:
    data = row.ciphertext
    shown = f"{data[:HEX_EDGE_BYTES].hex()}...{data[-HEX_EDGE_BYTES:].hex()}"
    return f"#{row.seq} {row.sender:<5} {len(data):>5,} B  {row.kind():<7}  {shown}"


def _read_cell(message: Message) -> str:
    body = message.body if isinstance(message.body, str) else message.body.hex()
    return repr(body)


def _show_side_by_side(reader: str, stored: list[QueuedCiphertext], read: list[Message]) -> None:
    left = "what the relay stored (relay.db, message_queue)"
    _say(f"  {left:<{_LEFT_WIDTH}} | what {reader} decrypted")
    _say(f"  {'-' * _LEFT_WIDTH}-+-{'-' * 40}")
    for row, message in zip(stored, read, strict=True):
        _say(f"  {_relay_cell(row):<{_LEFT_WIDTH}} | {_read_cell(message)}")


async def _receive(client: Client, count: int) -> list[Message]:
    """The next ``count`` messages of ``client``, each marked done."""
    got: list[Message] = []
    async with asyncio.timeout(STEP_TIMEOUT):
        async for message in client.messages():
            got.append(message)
            await message.done()
            if len(got) == count:
                break
    return got


async def _wait_queued(database: Path, recipient: str, count: int) -> list[QueuedCiphertext]:
    """The relay's queue for ``recipient`` once it holds ``count`` messages (polled,
    bounded: ``send`` returns after the relay's ``Accepted``, which follows its commit)."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        rows = read_relay_queue(database, recipient)
        if len(rows) >= count:
            return rows
        if time.monotonic() >= deadline:
            raise DemoError(f"the relay queued {len(rows)} of {count} messages for {recipient}")
        await asyncio.sleep(_POLL_INTERVAL)


async def _one_way(
    relay: RelayProcess, sender: Client, receiver: Client, texts: Sequence[str]
) -> None:
    """``sender`` sends ``texts`` to ``receiver`` (not reading meanwhile); show what the
    relay queued beside what ``receiver`` decrypted."""
    sender_id, receiver_id = sender.user_id, receiver.user_id
    for text in texts:
        async with asyncio.timeout(STEP_TIMEOUT):
            await sender.send(receiver_id, text)
    stored = await _wait_queued(relay.database, receiver_id, len(texts))
    read = await _receive(receiver, len(texts))
    _say(f"{sender_id} -> {receiver_id}: {len(texts)} messages")
    _show_side_by_side(receiver_id, stored, read)
    if [m.body for m in read] != list(texts):
        raise DemoError(f"{receiver_id} did not read what {sender_id} sent")
    if any(t.encode() in row.ciphertext for row in stored for t in texts):
        raise DemoError("a plaintext appears in what the relay stored")
    left = await _wait_queued_empty(relay.database, receiver_id)
    _say(f"  {receiver_id} acknowledged them; the relay deleted them ({left} left in its queue)")
    _say()


async def _wait_queued_empty(database: Path, recipient: str) -> int:
    """Poll (bounded) until the relay's queue for ``recipient`` is empty; 0.

    Raises:
        DemoError: messages are still queued after :data:`STEP_TIMEOUT`.
    """
    deadline = time.monotonic() + STEP_TIMEOUT
    while rows := read_relay_queue(database, recipient):
        if time.monotonic() >= deadline:
            raise DemoError(f"the relay still holds {len(rows)} messages for {recipient}")
        await asyncio.sleep(_POLL_INTERVAL)
    return 0


async def run_demo(relay: RelayProcess, work: Path) -> None:
    """The whole exchange against a started relay (see the module documentation).

    Raises:
        DemoError: an outcome was wrong or the relay did not start.
        ClientError: the SDK failed (the relay refused, a timeout, ...).
        TimeoutError: a step took longer than :data:`STEP_TIMEOUT`.
    """
    await relay.wait_ready(READY_TIMEOUT)
    _say(f"e2ee demo: a relay and two clients on this machine, in {work}")
    _say(f"relay: `e2ee serve` at {relay.url} (pid {relay.pid}), SQLite file relay/{RELAY_DB}")
    keys = {name: secrets.token_bytes(32) for name in ("alice", "bob")}
    async with (
        Client.open(relay.url, store=work / "alice.db", key=keys["alice"]) as alice,
        Client.open(relay.url, store=work / "bob.db", key=keys["bob"]) as bob,
    ):
        for client, name in ((alice, "alice"), (bob, "bob")):
            async with asyncio.timeout(STEP_TIMEOUT):
                await client.register(name)
            _say(
                f"{name} registered, device {client.device_id}: public keys at the relay, "
                f"private keys in {name}.db (encrypted)"
            )
        _say()
        _say("Each side sends while the other is not reading, so the relay holds the messages;")
        _say("its column shows the stored bytes (envelope header, then ciphertext; texts are")
        _say("padded, so a size does not give a length away).")
        _say()
        await _one_way(relay, alice, bob, ALICE_TO_BOB)
        await _one_way(relay, bob, alice, BOB_TO_ALICE)

        files = ", ".join(p.name for p in _relay_files(relay.database))
        found = plaintexts_found(relay.database, [*ALICE_TO_BOB, *BOB_TO_ALICE])
        _say(f"plaintexts found in the relay's files ({files}): {', '.join(found) or 'none'}")
        if found:
            raise DemoError("the relay's files contain a plaintext")

        async with asyncio.timeout(STEP_TIMEOUT):
            alice_view = await alice.safety_number("bob")
            bob_view = await bob.safety_number("alice")
        _say()
        _say(f"safety number as alice sees it: {alice_view.display()}")
        _say(f"safety number as bob sees it:   {bob_view.display()}")
        if alice_view.digits != bob_view.digits:
            raise DemoError("the two sides see different safety numbers")
        async with asyncio.timeout(STEP_TIMEOUT):
            await bob.verify("alice", alice_view.qr_payload)
        _say("the same 60 digits on both sides; bob scanned alice's QR code: alice is verified")


# --- the command ---------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class DemoCommand:
    """The ``e2ee demo`` subcommand."""

    name = "demo"
    help = "run a relay and two clients (alice, bob) on this machine and show what the relay sees"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """The description and ``--keep``."""
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.description = (__doc__ or "").replace("``", "")
        parser.add_argument(
            "--keep",
            metavar="DIR",
            type=Path,
            help="work in DIR (created, must not exist) and keep the relay's database, its "
            "log and both stores there (default: a temporary directory, removed)",
        )

    def run(self, args: argparse.Namespace) -> int:
        """Run the demo; 0 on success, 1 on a failure (printed).

        Raises:
            KeyboardInterrupt: Ctrl-C or SIGTERM (the relay is stopped first).
        """
        keep: Path | None = args.keep
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            if keep is None:
                with tempfile.TemporaryDirectory(prefix="e2ee-demo-") as tmp:
                    return self._run_in(Path(tmp))
            try:
                keep.mkdir(parents=True)
            except OSError as exc:
                print(f"e2ee demo: error: cannot create {keep}: {exc}", file=sys.stderr)
                return 1
            return self._run_in(keep)
        finally:
            signal.signal(signal.SIGTERM, previous)

    @staticmethod
    def _run_in(work: Path) -> int:
        relay: RelayProcess | None = None
        try:
            with running_relay(work) as relay:
                asyncio.run(run_demo(relay, work))
        except BrokenPipeError:
            # The reader of our output went away (``e2ee demo | head``): stop quietly.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except (ClientError, TimeoutError, OSError) as exc:
            what = str(exc) or type(exc).__name__
            print(f"e2ee demo: error: {type(exc).__name__}: {what}", file=sys.stderr)
            if relay is not None and not isinstance(exc, DemoError):
                print(f"relay log (tail):\n{relay.log_tail()}", file=sys.stderr)
            return 1
        print(f"relay stopped (pid {relay.pid}); done.", flush=True)
        return 0


command: Final = DemoCommand()
"""The entry point of ``e2ee demo`` (group ``e2ee.commands``)."""
