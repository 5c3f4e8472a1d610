"""A relay running as a separate process (``python -m e2ee serve``), for the system tests.

:class:`RelayProcess` starts ``e2ee serve`` on 127.0.0.1 with a free port (a
subprocess cannot be told port 0 and report back, so a free port is picked and the
start retried on a collision), waits until uvicorn reports it is listening on that
port and ``/healthz`` answers (polled, bounded), and stops it by its own handle:
SIGKILL (:meth:`RelayProcess.kill`) or SIGTERM with a bounded wait
(:meth:`RelayProcess.terminate`). Its stdout and stderr go to one log file.

The child gets a clean ``E2EE_*`` environment (none of the test run's variables),
generous rate limits unless told otherwise (:data:`GENEROUS_RATES`), the test origin
:data:`~tests.server.relay_client.ORIGIN` and its own data directory.

:func:`relay_processes` is an async context manager handing out a starter and
stopping every process it started, whatever happens in the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import httpx

from tests.server.relay_client import ORIGIN, RelayClient

__all__ = [
    "GENEROUS_RATES",
    "RATE_FIELDS",
    "RelayProcess",
    "RelayProcessError",
    "free_port",
    "relay_processes",
]

START_SECONDS: Final = 60.0
"""Upper bound for a relay process to be listening (imports, migrations)."""
STOP_SECONDS: Final = 30.0
"""Upper bound for a relay process to exit after SIGTERM (it closes every socket with
GOING_AWAY first, bounded by the relay's own shutdown limit) or SIGKILL."""
POLL_SECONDS: Final = 0.02
"""Interval of the bounded polls (log, health, exit)."""
START_ATTEMPTS: Final = 5
"""Ports tried before giving up (only a collision with another process retries)."""

RATE_FIELDS: Final = (
    "rate_registration",
    "rate_auth_ip",
    "rate_auth_device",
    "rate_http",
    "rate_claim_requester",
    "rate_claim_target",
    "rate_send",
    "rate_frames",
)
"""Every rate limit of :class:`server.settings.RelaySettings`."""
GENEROUS_RATES: Final[Mapping[str, tuple[float, int]]] = {
    name: (100_000.0, 100_000) for name in RATE_FIELDS
}
"""Rate limits no test load reaches (a test that floods sets its own)."""

_COLLISION_MARKERS: Final = ("address already in use", "errno 98")


class RelayProcessError(RuntimeError):
    """The relay process did not start, or did not stop, in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still
    take it before the relay binds: :meth:`RelayProcess.start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_")}
    env["PYTHONUNBUFFERED"] = "1"  # the log is complete up to a SIGKILL
    env.update(extra)
    return env


@dataclass
class RelayProcess:
    """One ``e2ee serve`` process (restartable: :meth:`start` again after a stop)."""

    database_url: str
    workdir: Path
    """Holds the data directory and the log files."""
    name: str = "relay"
    redis_url: str | None = None
    redis_prefix: str | None = None
    log_level: str = "info"
    rates: Mapping[str, tuple[float, int]] = field(default_factory=lambda: dict(GENEROUS_RATES))
    env: Mapping[str, str] = field(default_factory=dict)
    """More ``E2EE_*`` settings for the child."""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)
    """One log file per start, in order."""
    _log_file: IO[bytes] | None = None

    # --- settings -----------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        """The command line of one start."""
        cmd = [
            sys.executable,
            "-m",
            "e2ee",
            "serve",
            "--db",
            self.database_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--origin",
            ORIGIN,
            "--data-dir",
            str(self.workdir / f"{self.name}-data"),
        ]
        if self.redis_url is not None:
            cmd += ["--redis", self.redis_url]
        return cmd

    def child_env(self) -> dict[str, str]:
        """The child's environment: log level, rate limits, Redis prefix, extras."""
        extra = {"E2EE_LOG_LEVEL": self.log_level}
        for name, (per_second, burst) in self.rates.items():
            extra[f"E2EE_{name.upper()}__PER_SECOND"] = repr(float(per_second))
            extra[f"E2EE_{name.upper()}__BURST"] = str(int(burst))
        if self.redis_prefix is not None:
            extra["E2EE_REDIS_PREFIX"] = self.redis_prefix
        extra.update(self.env)
        return _child_env(extra)

    # --- state --------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The running process's id.

        Raises:
            RelayProcessError: not running.
        """
        if self.proc is None:
            raise RelayProcessError("the relay process is not running")
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The log file of the latest start."""
        if not self.logs:
            raise RelayProcessError("the relay process was never started")
        return self.logs[-1]

    def log_text(self) -> str:
        """Everything every start of this relay has logged so far."""
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs)

    def log_bytes(self) -> bytes:
        """The raw logs of every start."""
        return b"".join(p.read_bytes() for p in self.logs)

    def client(self) -> RelayClient:
        """A client of the running relay."""
        return RelayClient(self.port)

    def rss_kib(self) -> int:
        """The process's resident set size (``VmRSS`` of ``/proc/<pid>/status``), KiB.

        Raises:
            RelayProcessError: not running, or no ``VmRSS`` line (not Linux).
        """
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RelayProcessError("no VmRSS in /proc/<pid>/status")

    # --- starting -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the relay and wait until it serves ``/healthz`` (bounded).

        Raises:
            RelayProcessError: it exited or did not become healthy in time (the log
                tail is in the message); every port tried collided.
        """
        if self.running:
            raise RelayProcessError("the relay process is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(START_ATTEMPTS):
            port = free_port()
            if await self._start_on(port):
                return
        raise RelayProcessError(f"no free port after {START_ATTEMPTS} attempts")

    async def _start_on(self, port: int) -> bool:
        """Start on ``port``: ``True`` once healthy, ``False`` on a port collision."""
        self.starts += 1
        log_path = self.workdir / f"{self.name}-{self.starts}.log"
        self.logs.append(log_path)
        self._log_file = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command(port),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.child_env(),
            cwd=self.workdir,
        )
        self.port = port
        listening = f"Uvicorn running on http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    text = log_path.read_text(encoding="utf-8", errors="replace")
                    self._close_log()
                    self.proc = None
                    if any(m in text.lower() for m in _COLLISION_MARKERS):
                        return False
                    raise RelayProcessError(f"the relay exited during startup:\n{text[-3000:]}")
                # Only our process prints this line for this port (a collision exits
                # before it), so /healthz below is answered by our relay.
                log = log_path.read_text(encoding="utf-8", errors="replace")
                if listening in log and await self._healthy():
                    return True
                await asyncio.sleep(POLL_SECONDS)
        except BaseException:
            await self.kill()
            raise
        await self.kill()
        raise RelayProcessError(
            f"the relay was not healthy within {START_SECONDS} s:\n{self.log_text()[-3000:]}"
        )

    async def _healthy(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                response = await client.get(f"http://127.0.0.1:{self.port}/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def healthz(self) -> httpx.Response:
        """``GET /healthz`` of the running relay."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.get(f"http://127.0.0.1:{self.port}/healthz")

    # --- stopping -----------------------------------------------------------------------

    async def kill(self) -> int | None:
        """SIGKILL the process (by its own handle) and reap it; its exit status."""
        return await self._stop(signal.SIGKILL)

    async def terminate(self) -> int | None:
        """SIGTERM (graceful shutdown) and wait, bounded; a process that does not exit
        in time is killed and :class:`RelayProcessError` raised.

        Raises:
            RelayProcessError: it did not exit within :data:`STOP_SECONDS`.
        """
        return await self._stop(signal.SIGTERM)

    async def _stop(self, sig: signal.Signals) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(sig)
            deadline = time.monotonic() + STOP_SECONDS
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_SECONDS)
                raise RelayProcessError(f"the relay did not exit within {STOP_SECONDS} s")
            return proc.returncode
        finally:
            self.proc = None
            self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


Starter = Callable[..., Coroutine[Any, Any, RelayProcess]]


@contextlib.asynccontextmanager
async def relay_processes(workdir: Path) -> AsyncIterator[Starter]:
    """Yield ``start(database_url, **options) -> RelayProcess`` (started and healthy);
    every process started through it is killed at the end if still running."""
    started: list[RelayProcess] = []

    async def start(database_url: str, **options: Any) -> RelayProcess:
        options.setdefault("name", f"relay{len(started) + 1}")
        relay = RelayProcess(database_url, workdir, **options)
        started.append(relay)
        await relay.start()
        return relay

    try:
        yield start
    finally:
        for relay in started:
            with contextlib.suppress(Exception):
                await relay.kill()
