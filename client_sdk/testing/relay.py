"""A relay running as a separate process (``python -m e2ee serve``), and throwaway
PostgreSQL databases for it (issue 5).

:class:`RelayProcess` starts ``e2ee serve`` on 127.0.0.1 with a free port (a
subprocess cannot be told port 0 and report back, so a free port is picked and the
start retried on a collision), waits until uvicorn reports it is listening on that
port and ``/healthz`` answers 200 (polled, bounded), and stops it by its own handle:
SIGKILL (:meth:`RelayProcess.kill`) or SIGTERM with a bounded wait
(:meth:`RelayProcess.terminate`). :meth:`RelayProcess.restart` kills and starts it
again, on a fresh port or on the same one. Its stdout and stderr go to one log file
per start.

The child gets a clean ``E2EE_*`` environment (none of the caller's variables),
generous rate limits unless told otherwise (:data:`GENEROUS_RATES`), its origin
(:data:`DEFAULT_ORIGIN` unless told otherwise: clients pass it as ``origin=``) and its
own data directory.

:func:`relay_processes` is an async context manager handing out a starter and
killing every process it started, whatever happens in the block.

:func:`temporary_postgres_database` creates a randomly named PostgreSQL database
(``e2ee_sim_<hex>``), migrated to the relay's schema, yields its URL in the form
``e2ee serve --db`` takes, and drops it afterwards.

This module needs the ``relay`` extra (``pip install 'e2ee[relay]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar, overload

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "DEFAULT_ORIGIN",
    "DEFAULT_PG_ADMIN_URL",
    "GENEROUS_RATES",
    "RATE_FIELDS",
    "PostgresUnavailable",
    "RelayProcess",
    "RelayProcessError",
    "Starter",
    "check_postgres_admin_url",
    "create_postgres_database",
    "drop_postgres_database",
    "free_port",
    "relay_processes",
    "temporary_postgres_database",
]

HOST: Final = "127.0.0.1"
"""Every relay process listens on loopback only."""
DEFAULT_ORIGIN: Final = "wss://relay.test"
"""The origin a :class:`RelayProcess` serves unless told otherwise (clients connect to
``ws://127.0.0.1:<port>`` and pass this as ``origin=``)."""
START_SECONDS: Final = 60.0
"""Upper bound for a relay process to be listening (imports, migrations)."""
STOP_SECONDS: Final = 30.0
"""Upper bound for a relay process to exit after SIGTERM (it closes every socket with
GOING_AWAY first, bounded by the relay's own shutdown limit) or SIGKILL."""
RESTART_PORT_SECONDS: Final = 60.0
"""Upper bound for a port to be free again (:meth:`RelayProcess.restart` on the same port)."""
POLL_SECONDS: Final = 0.02
"""Interval of the bounded polls (log, health, exit)."""
HEALTH_SECONDS: Final = 2.0
"""Upper bound of one ``/healthz`` request."""
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

DEFAULT_PG_ADMIN_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The maintenance connection :func:`temporary_postgres_database` uses by default."""
PG_CONNECT_SECONDS: Final = 5.0
"""Upper bound for connecting to the PostgreSQL server."""
PG_DATABASE_PREFIX: Final = "e2ee_sim_"
"""The name prefix of the databases :func:`temporary_postgres_database` creates."""

_COLLISION_MARKERS: Final = ("address already in use", "errno 98")
_PG_DRIVERS: Final = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})
_PG_PREFIX: Final = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_PG_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class RelayProcessError(RuntimeError):
    """The relay process did not start, or did not stop, in time, or was used in a
    state that does not allow it (started twice, never started)."""


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server of the maintenance URL cannot be reached or refused the
    connection (the message names the URL without its password)."""


# --- ports and HTTP -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still
    take it before the relay binds: :meth:`RelayProcess.start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_bindable(port: int) -> bool:
    """Whether a listener could bind ``port`` now (with ``SO_REUSEADDR``, as uvicorn
    binds: connections of a killed process in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


async def _http_status(port: int, path: str, timeout: float) -> int:
    """The status code of ``GET path`` on 127.0.0.1:``port`` (no HTTP client library:
    the ``relay`` extra does not bring one).

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
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError("malformed HTTP status line")
    return int(parts[1])


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("E2EE_")}
    env["PYTHONUNBUFFERED"] = "1"  # the log is complete up to a SIGKILL
    env.update(extra)
    return env


# --- the relay process --------------------------------------------------------------------


@dataclass
class RelayProcess:
    """One ``e2ee serve`` process (restartable: :meth:`start` again after a stop).

    Its storage is ``database_url`` (``sqlite:///path``, or a migrated
    ``postgresql+asyncpg://...`` database such as :func:`temporary_postgres_database`
    yields); ``workdir`` holds its data directory and its log files.
    """

    database_url: str = field(repr=False)
    workdir: Path
    """Holds the data directory and the log files."""
    name: str = "relay"
    """Names the data directory and the log files (several relays may share a workdir)."""
    redis_url: str | None = field(default=None, repr=False)
    """Redis for notifications between several relay nodes (``--redis``)."""
    redis_prefix: str | None = None
    log_level: str = "info"
    rates: Mapping[str, tuple[float, int]] = field(
        default_factory=lambda: dict(GENEROUS_RATES), repr=False
    )
    """``(per_second, burst)`` per name of :data:`RATE_FIELDS`."""
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """More ``E2EE_*`` settings for the child."""
    origin: str = DEFAULT_ORIGIN
    """The origin the relay serves (``--origin``); clients pass it as ``origin=``."""
    port: int = field(default=0, init=False)
    """The port of the latest start (0 before the first)."""
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    starts: int = field(default=0, init=False)
    """Processes started so far (collisions included)."""
    logs: list[Path] = field(default_factory=list, init=False, repr=False)
    """One log file per start, in order."""
    _log_file: IO[bytes] | None = field(default=None, init=False, repr=False)

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
            HOST,
            "--port",
            str(port),
            "--origin",
            self.origin,
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
    def url(self) -> str:
        """The relay's base URL (``ws://127.0.0.1:<port>``, what ``Client.open`` takes).

        Raises:
            RelayProcessError: never started.
        """
        if self.port == 0:
            raise RelayProcessError("the relay process was never started")
        return f"ws://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The log file of the latest start.

        Raises:
            RelayProcessError: never started.
        """
        if not self.logs:
            raise RelayProcessError("the relay process was never started")
        return self.logs[-1]

    def log_text(self) -> str:
        """Everything every start of this relay has logged so far."""
        return "".join(p.read_text(encoding="utf-8", errors="replace") for p in self.logs)

    def log_bytes(self) -> bytes:
        """The raw logs of every start."""
        return b"".join(p.read_bytes() for p in self.logs)

    def rss_kib(self) -> int:
        """The process's resident set size (``VmRSS`` of ``/proc/<pid>/status``), KiB.

        Raises:
            RelayProcessError: not running, or no ``VmRSS`` line (not Linux).
        """
        try:
            status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except OSError as exc:
            raise RelayProcessError(f"cannot read the process status: {exc}") from None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RelayProcessError("no VmRSS in /proc/<pid>/status")

    async def health_status(self) -> int:
        """The status code of ``GET /healthz`` of the running relay.

        Raises:
            OSError: the relay cannot be reached.
            TimeoutError: no answer within :data:`HEALTH_SECONDS`.
            ValueError: a malformed answer.
        """
        return await _http_status(self.port, "/healthz", HEALTH_SECONDS)

    # --- starting -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the relay on a free port and wait until it serves ``/healthz`` (bounded).

        Raises:
            RelayProcessError: already running; it exited or did not become healthy in
                time (the log tail is in the message); every port tried collided.
        """
        self._refuse_running()
        for _ in range(START_ATTEMPTS):
            if await self.start_on(free_port()):
                return
        raise RelayProcessError(f"no free port after {START_ATTEMPTS} attempts")

    async def start_on(self, port: int) -> bool:
        """Start on ``port``: ``True`` once healthy, ``False`` when the port was taken
        (the process exited saying so; nothing is left running).

        Raises:
            ValueError: ``port`` is not a TCP port number.
            RelayProcessError: already running; it exited for another reason or did
                not become healthy within :data:`START_SECONDS` (it is killed; the log
                tail is in the message).
        """
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("port must be an int in 1..65535")
        self._refuse_running()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log_path = self.workdir / f"{self.name}-{self.starts}.log"
        self.logs.append(log_path)
        self._log_file = log_path.open("wb")
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=self.child_env(),
                cwd=self.workdir,
            )
        except BaseException:
            self._close_log()
            raise
        self.port = port
        listening = f"Uvicorn running on http://{HOST}:{port}"
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

    async def restart(self, *, same_port: bool = False) -> None:
        """SIGKILL the relay if it runs, and start it again: on a fresh free port, or
        with ``same_port`` on the port it had (clients keep their URL), polling until
        the port can be bound again (bounded by :data:`RESTART_PORT_SECONDS`).

        Raises:
            RelayProcessError: ``same_port`` for a relay never started; the port did
                not become free in time; the start failed (see :meth:`start_on`).
        """
        if same_port and self.port == 0:
            raise RelayProcessError("the relay process was never started: no port to reuse")
        port = self.port
        await self.kill()
        if not same_port:
            await self.start()
            return
        deadline = time.monotonic() + RESTART_PORT_SECONDS
        while True:
            if _port_bindable(port) and await self.start_on(port):
                return
            if time.monotonic() >= deadline:
                raise RelayProcessError(
                    f"port {port} was not free again within {RESTART_PORT_SECONDS} s"
                )
            await asyncio.sleep(POLL_SECONDS)

    def _refuse_running(self) -> None:
        if self.running:
            raise RelayProcessError("the relay process is already running")

    async def _healthy(self) -> bool:
        try:
            return await self.health_status() == 200
        except (OSError, TimeoutError, ValueError):
            return False

    # --- stopping -----------------------------------------------------------------------

    async def kill(self) -> int | None:
        """SIGKILL the process (by its own handle) and reap it; its exit status
        (``None`` when it was not started)."""
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


R = TypeVar("R", bound=RelayProcess)
Starter = Callable[..., Coroutine[Any, Any, R]]
"""``await start(database_url, **options)``: a started, healthy relay process."""


@overload
def relay_processes(
    workdir: Path,
) -> contextlib.AbstractAsyncContextManager[Starter[RelayProcess]]: ...
@overload
def relay_processes(
    workdir: Path, kind: type[R]
) -> contextlib.AbstractAsyncContextManager[Starter[R]]: ...
def relay_processes(
    workdir: Path, kind: type[RelayProcess] = RelayProcess
) -> contextlib.AbstractAsyncContextManager[Starter[Any]]:
    """Yield ``start(database_url, **options) -> RelayProcess`` (started and healthy;
    ``options`` are :class:`RelayProcess` fields, ``name`` defaults to ``relay<n>``);
    every process started through it is killed at the end if still running.

    ``kind`` is the class instantiated (a subclass of :class:`RelayProcess`).
    """
    return _relay_processes(workdir, kind)


@contextlib.asynccontextmanager
async def _relay_processes(workdir: Path, kind: type[R]) -> AsyncIterator[Starter[R]]:
    started: list[R] = []

    async def start(database_url: str, **options: Any) -> R:
        options.setdefault("name", f"relay{len(started) + 1}")
        relay = kind(database_url, workdir, **options)
        started.append(relay)
        await relay.start()
        return relay

    try:
        yield start
    finally:
        for relay in started:
            with contextlib.suppress(Exception):
                await relay.kill()


# --- temporary PostgreSQL databases -------------------------------------------------------


def _admin(admin_url: str) -> URL:
    """``admin_url`` parsed, with the plain driver name asyncpg takes.

    Raises:
        ValueError: not a ``postgresql://`` URL.
    """
    try:
        url = make_url(admin_url)
    except ArgumentError:
        raise ValueError("admin_url is not a database URL") from None
    if url.drivername not in _PG_DRIVERS:
        raise ValueError("admin_url must be a postgresql:// URL")
    return url.set(drivername="postgresql")


def check_postgres_admin_url(admin_url: str) -> None:
    """Check that ``admin_url`` is a ``postgresql://`` URL (``postgresql+asyncpg://``
    and ``postgres://`` too) without connecting.

    Raises:
        ValueError: it is not.
    """
    _admin(admin_url)


async def _connect(admin: URL) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            admin.render_as_string(hide_password=False), timeout=PG_CONNECT_SECONDS
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        where = admin.render_as_string(hide_password=True)
        raise PostgresUnavailable(f"PostgreSQL is not reachable at {where}: {exc}") from None
    return conn


def _quoted(name: str) -> str:
    if not _PG_NAME.fullmatch(name):
        raise ValueError("not a database name of this harness ([a-z_][a-z0-9_]*, <= 63)")
    return f'"{name}"'


async def create_postgres_database(
    admin_url: str = DEFAULT_PG_ADMIN_URL,
    *,
    prefix: str = PG_DATABASE_PREFIX,
    migrate: bool = False,
) -> tuple[str, str]:
    """Create a database named ``<prefix><12 random hex digits>`` on the server of
    ``admin_url`` (a maintenance connection: any database of that server); with
    ``migrate``, apply the relay's migrations to it. Returns ``(name, url)``, ``url``
    the ``postgresql+asyncpg://`` URL of the new database (``e2ee serve --db``).

    Raises:
        ValueError: ``admin_url`` is not a ``postgresql://`` URL, or ``prefix`` not
            ``[a-z_][a-z0-9_]*`` of at most 40 characters.
        PostgresUnavailable: the server cannot be reached.
        asyncpg.PostgresError: the server refused to create the database.
    """
    admin = _admin(admin_url)
    if not _PG_PREFIX.fullmatch(prefix):
        raise ValueError("prefix must be [a-z_][a-z0-9_]* of at most 40 characters")
    name = f"{prefix}{secrets.token_hex(6)}"
    conn = await _connect(admin)
    try:
        await conn.execute(f"CREATE DATABASE {_quoted(name)}")
    finally:
        await conn.close()
    url = admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    if migrate:
        from server.storage.migrate import upgrade_database  # noqa: PLC0415 - alembic is slow

        try:
            await asyncio.to_thread(upgrade_database, url)
        except BaseException:
            await drop_postgres_database(name, admin_url)
            raise
    return name, url


async def drop_postgres_database(name: str, admin_url: str = DEFAULT_PG_ADMIN_URL) -> None:
    """Drop database ``name`` (if it exists) on the server of ``admin_url``, ending
    every session still connected to it first (``WITH (FORCE)``: a relay that was
    SIGKILLed, or a pool not yet closed, cannot keep it alive).

    Raises:
        ValueError: ``admin_url`` is not a ``postgresql://`` URL, or ``name`` is not a
            name :func:`create_postgres_database` makes.
        PostgresUnavailable: the server cannot be reached.
    """
    admin = _admin(admin_url)
    quoted = _quoted(name)
    conn = await _connect(admin)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def temporary_postgres_database(
    admin_url: str = DEFAULT_PG_ADMIN_URL,
    *,
    prefix: str = PG_DATABASE_PREFIX,
    migrate: bool = True,
) -> AsyncIterator[str]:
    """``async with temporary_postgres_database() as url:`` a fresh, randomly named
    database (``e2ee_sim_<hex>``) on the server of ``admin_url``, migrated to the
    relay's schema (unless ``migrate`` is false), dropped when the block ends however
    it ends. ``url`` is ``postgresql+asyncpg://...``, what ``e2ee serve --db`` and
    :class:`RelayProcess` take.

    Raises:
        ValueError, PostgresUnavailable, asyncpg.PostgresError: as
            :func:`create_postgres_database`.
    """
    name, url = await create_postgres_database(admin_url, prefix=prefix, migrate=migrate)
    try:
        yield url
    finally:
        await drop_postgres_database(name, admin_url)
