"""Starting, probing and stopping the bench's server processes (bench/launch.py), and
reading their memory (``VmRSS`` of ``/proc/<pid>/status``; psutil is not needed)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "HOST",
    "ServerError",
    "ServerProcess",
    "free_port",
    "http_request",
    "raise_fd_limit",
    "rss_kib",
    "start_server",
]

HOST: Final = "127.0.0.1"
READY_TIMEOUT_S: Final = 60.0
"""A server that does not answer /healthz within this is a failed start (a new
SQLite file or PostgreSQL database is migrated first)."""
STOP_TIMEOUT_S: Final = 15.0
"""Graceful stop (SIGTERM: the relay closes its sockets with going-away) before SIGKILL."""
_REPO: Final = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """A bench server did not start, died, or answered unexpectedly."""


_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the bench process dies (even by
    SIGKILL), so an interrupted bench leaves no server behind (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def raise_fd_limit() -> int:
    """Raise this process's ``RLIMIT_NOFILE`` soft limit to its hard limit (children
    inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def free_port() -> int:
    """A TCP port free on the loopback right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS``).

    Raises:
        ServerError: the process is gone or reports no VmRSS.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise ServerError(f"cannot read /proc/{pid}/status: {exc}") from None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ServerError(f"process {pid} reports no VmRSS")


async def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/cbor",
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, body).

    Raises:
        OSError: the connection failed.
        TimeoutError: no complete answer within ``timeout``.
        ServerError: a malformed answer.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            return await read_response(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (Content-Length framed): (status, body).

    Raises:
        ServerError: a malformed or chunked answer.
        asyncio.IncompleteReadError: the connection closed early.
    """
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ServerError(f"malformed status line {lines[0]!r}") from None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise ServerError("chunked responses are not expected")
    return status, await reader.readexactly(length)


@dataclass
class ServerProcess:
    """One running bench server."""

    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """The server's current resident set size, KiB."""
        self.check_alive()
        return rss_kib(self.proc.pid)

    def check_alive(self) -> None:
        """Raise ServerError (with the log's tail) if the process has exited."""
        code = self.proc.poll()
        if code is not None:
            raise ServerError(f"{self.kind} server exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL: the server stops and is reaped."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)


async def start_server(kind: str, args: list[str], work_dir: Path) -> ServerProcess:
    """Start ``python -m bench.launch <kind> --port P <args>`` and wait for /healthz.

    ``args`` may contain ``{report}``, replaced by a report file in ``work_dir`` that is
    read back (JSON) once the server is ready.

    Raises:
        ServerError: it exited or did not become ready in time.
    """
    port = free_port()
    report_path = work_dir / f"{kind}-{port}.report.json"
    log_path = work_dir / f"{kind}-{port}.log"
    argv = [
        sys.executable,
        "-m",
        "bench.launch",
        kind.split("-", maxsplit=1)[0],
        "--port",
        str(port),
    ]
    argv += [a.replace("{report}", str(report_path)) for a in args]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=_REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads start servers
        )
    server = ServerProcess(kind, port, proc, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            server.check_alive()
        except ServerError:
            raise
        try:
            status, _ = await http_request(port, "GET", "/healthz", timeout=2.0)
            if status == 200:
                break
        except (OSError, TimeoutError, ServerError, asyncio.IncompleteReadError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError(
                f"{kind} server not ready in {READY_TIMEOUT_S} s:\n{server.log_tail()}"
            )
        await asyncio.sleep(0.1)
    if report_path.exists():
        server.report = json.loads(report_path.read_text())
    return server
