"""A client process of the simulation (``python -m client_sdk.testing.worker``).

One worker hosts the devices of a group of users, each a real
:class:`~client_sdk.Client` on its own encrypted store (a raw 32-byte key kept in a
``.key`` file beside it, mode 0600), and runs what an app runs: a ``messages()`` loop
and an ``events()`` loop per device, and the sends the orchestrator asks for, one at a
time per device. It can be SIGKILLed at any moment and started again: it then reopens
the same stores, and the SDK resends what its outboxes hold and yields again what its
inboxes hold.

The orchestrator (:mod:`client_sdk.testing.sim`) talks to it over its standard input
and output, one JSON object per line.

Commands (stdin):

* ``{"op": "send", "sid": 7, "from": "u003/0", "to": "u017", "body": "...",
  "msg_id": "<32 hex>"}``: the app-chosen client message id makes the send idempotent,
  so a send interrupted by a SIGKILL is simply asked for again after the restart.
* ``{"op": "state"}``: answers ``{"ev": "state", "sizes": {device: bytes}}`` (store file
  sizes, the write-ahead log included).
* ``{"op": "stop"}``: closes every client and exits 0 (end of input does the same).

Reports (stdout): ``ready`` (with each device's id), ``sending`` (a send is handed to
the SDK now), ``sent`` (accepted: its client message id), ``queued`` (``MessageQueued``:
committed, it goes on the next connection), ``unsent`` (refused before anything was
committed: the orchestrator sends it again later, as an app would), ``send_error``
(anything else), ``recv`` (a decrypted message: the simulation id read from its body),
``done`` (the message left the inbox), ``security`` (a security event), ``fatal``.

A first start with ``--setup`` registers each user's first device and links the
others through the real linking flow (``link_device`` on the primary, ``Client.open(
link_code=...)`` on the new device).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from client_sdk.client import Client
from client_sdk.errors import ClientError, MessageQueued, TransportError

__all__ = ["SID_PATTERN", "WorkerDevice", "device_label", "main", "store_paths"]

logger = logging.getLogger("client_sdk.testing.worker")

SID_PATTERN: Final = re.compile(r"\|sim=(\d+)\|")
"""How a simulation message's id is written into its body."""
LINK_SECONDS: Final = 60.0
"""Bound for linking one device."""


def device_label(user_id: str, index: int) -> str:
    """``"u003/1"``: a device by its user and its index (0 is the primary)."""
    return f"{user_id}/{index}"


def store_paths(clients_dir: Path, label: str) -> tuple[Path, Path]:
    """``(store file, key file)`` of a device."""
    stem = label.replace("/", "-")
    return clients_dir / f"{stem}.db", clients_dir / f"{stem}.key"


def _store_key(path: Path) -> bytes:
    """The device's raw store key: read, or made and written (0600) on first use."""
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path.name} does not hold a 32-byte key")
        return key
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    return key


@dataclass
class WorkerDevice:
    """One hosted device: its label, its client and its send queue."""

    label: str
    client: Client
    sends: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class Worker:
    """The devices of one worker process and their loops."""

    def __init__(self, relay_url: str, origin: str, clients_dir: Path) -> None:
        self.relay_url = relay_url
        self.origin = origin
        self.clients_dir = clients_dir
        self.devices: dict[str, WorkerDevice] = {}
        self.stack = contextlib.AsyncExitStack()
        self.tasks: list[asyncio.Task[None]] = []

    # --- output -------------------------------------------------------------------------

    @staticmethod
    def emit(event: str, **fields: Any) -> None:
        """One report line (written and flushed at once: a SIGKILL loses nothing
        written before it)."""
        fields["ev"] = event
        sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    # --- opening ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _opened(self, label: str, link_code: str | None = None) -> AsyncIterator[Client]:
        store, key_file = store_paths(self.clients_dir, label)
        async with Client.open(
            self.relay_url,
            store=store,
            key=_store_key(key_file),
            origin=self.origin,
            link_code=link_code,
            link_timeout=LINK_SECONDS,
        ) as client:
            yield client

    async def open_user(self, user_id: str, devices: int, *, setup: bool) -> None:
        """Open (and with ``setup``, register and link) every device of ``user_id``."""
        primary_label = device_label(user_id, 0)
        primary = await self.stack.enter_async_context(self._opened(primary_label))
        if setup and not primary.is_registered:
            await primary.register(user_id)
        self.devices[primary_label] = WorkerDevice(primary_label, primary)
        for index in range(1, devices):
            label = device_label(user_id, index)
            store, _ = store_paths(self.clients_dir, label)
            if setup and not store.exists():
                offer = await primary.link_device()
                completing = asyncio.create_task(offer.complete(timeout=LINK_SECONDS))
                try:
                    client = await self.stack.enter_async_context(self._opened(label, offer.code))
                finally:
                    await completing
            else:
                client = await self.stack.enter_async_context(self._opened(label))
            self.devices[label] = WorkerDevice(label, client)

    # --- loops --------------------------------------------------------------------------

    async def receive_loop(self, device: WorkerDevice) -> None:
        """``messages()`` as an app runs it: report, then mark done."""
        while True:
            try:
                async for message in device.client.messages():
                    body = message.body
                    text = body if isinstance(body, str) else body.decode("utf-8", "replace")
                    match = SID_PATTERN.search(text)
                    sid = int(match.group(1)) if match else -1
                    self.emit(
                        "recv",
                        dev=device.label,
                        sid=sid,
                        sender=message.sender_user,
                        msg_id=message.client_msg_id.hex(),
                        relay_ts=message.relay_ts_ms,
                        seq=message.relay_seq,
                        t=time.monotonic(),
                    )
                    await message.done()
                    self.emit("done", dev=device.label, sid=sid)
                return  # the client was closed
            except ClientError as exc:
                # Reconnecting cannot help (removed, refused authentication): report and
                # try again after a pause so the orchestrator sees it in the figures.
                self.emit("fatal", dev=device.label, error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def events_loop(self, device: WorkerDevice) -> None:
        """``events()``: every security event, reported by kind with its fields."""
        async for item in device.client.events():
            event = item.event
            self.emit(
                "security",
                dev=device.label,
                kind=type(event).__name__,
                fields={k: v for k, v in asdict(event).items() if isinstance(v, str | int)},
            )

    async def send_loop(self, device: WorkerDevice) -> None:
        """The device's sends, one at a time, in the order they were asked for."""
        while True:
            command = await device.sends.get()
            sid = command["sid"]
            self.emit("sending", sid=sid, t=time.monotonic())
            try:
                msg_id = await device.client.send(
                    command["to"], command["body"], client_msg_id=bytes.fromhex(command["msg_id"])
                )
            except MessageQueued as exc:
                self.emit("queued", sid=sid, msg_id=exc.client_msg_id.hex(), t=time.monotonic())
            except TransportError as exc:
                self.emit("unsent", sid=sid, error=type(exc).__name__)
            except ClientError as exc:
                self.emit("send_error", sid=sid, error=type(exc).__name__)
            else:
                self.emit("sent", sid=sid, msg_id=msg_id.hex(), t=time.monotonic())

    # --- commands -----------------------------------------------------------------------

    def state(self) -> dict[str, int]:
        """Bytes on disk of each device's store (main file and write-ahead log)."""
        sizes: dict[str, int] = {}
        for label in self.devices:
            store, _ = store_paths(self.clients_dir, label)
            total = 0
            for path in (store, store.with_name(store.name + "-wal")):
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
            sizes[label] = total
        return sizes

    async def serve(self, commands: asyncio.StreamReader) -> None:
        """Run every loop and follow the commands until ``stop`` or end of input."""
        for device in self.devices.values():
            for loop in (self.receive_loop, self.events_loop, self.send_loop):
                self.tasks.append(asyncio.create_task(loop(device)))
        self.emit("ready", devices={label: d.client.device_id for label, d in self.devices.items()})
        while line := await commands.readline():
            command = json.loads(line)
            op = command.get("op")
            if op == "send":
                self.devices[command["from"]].sends.put_nowait(command)
            elif op == "state":
                self.emit("state", sizes=self.state())
            elif op == "stop":
                break
            else:
                raise ValueError(f"unknown command {op!r}")

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.stack.aclose()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _run(args: argparse.Namespace) -> None:
    worker = Worker(args.relay_url, args.origin, Path(args.clients_dir))
    try:
        for user_id in args.users.split(","):
            await worker.open_user(user_id, args.devices, setup=args.setup)
        await worker.serve(await _stdin_reader())
    finally:
        await worker.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (started by the orchestrator)."""
    parser = argparse.ArgumentParser(prog="python -m client_sdk.testing.worker")
    parser.add_argument("--relay-url", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--clients-dir", required=True)
    parser.add_argument("--users", required=True, help="comma-separated user ids")
    parser.add_argument("--devices", type=int, required=True, help="devices per user")
    parser.add_argument("--setup", action="store_true", help="register and link first")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        asyncio.run(_run(args))
    except Exception as exc:
        Worker.emit("fatal", dev="", error=f"{type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
