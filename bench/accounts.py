"""Bench accounts: keys generated with e2ee, registered through the relay's normal
HTTP path (``POST /v1/register/nonce``, ``POST /v1/register``), and authenticated
WebSockets (``Hello`` -> ``Auth`` -> ``AuthOk`` ... ``CaughtUp``).

Each account has one device: a master key, the device's signing key and X25519
identity key, and a version-1 signed device list holding that one device (as
tests/e2ee/helpers.py builds them; bench/ does not import tests/). Keys come from a
seeded generator: they protect nothing, and a run is reproducible.

Registration runs over a few keep-alive HTTP/1.1 connections at once (a minimal
client, no third-party HTTP library), so thousands of accounts register in seconds;
the relay's registration rate limits are raised for the bench through its settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Final

from e2ee import cbor
from e2ee.auth import sign_relay_auth
from e2ee.device_list import DeviceEntry, DeviceList, SignedDeviceList
from e2ee.keys import DHKeyPair, SigningKeyPair
from e2ee.relay_frames import (
    Ack,
    Auth,
    AuthOk,
    CaughtUp,
    Deliver,
    Hello,
    RegisterRequest,
    decode_relay_frame,
    sign_register,
)

from .loadgen import WsClient, connect
from .servers import HOST, read_response

__all__ = [
    "BenchAccount",
    "RegistrationError",
    "make_accounts",
    "open_device",
    "register_accounts",
]

DEVICE_ID: Final = 1
"""Every bench account's one device."""
ISSUED_AT_MS: Final = 1_700_000_000_000
AUTH_TIMEOUT_S: Final = 30.0
"""How long authentication and the stored backlog may take per socket."""


class RegistrationError(RuntimeError):
    """The relay refused a registration or an authentication."""


@dataclass(frozen=True, slots=True)
class BenchAccount:
    """One registered (or to be registered) account with one device."""

    user_id: str
    master: SigningKeyPair
    signing: SigningKeyPair
    signed_list: bytes


def make_accounts(prefix: str, count: int, seed: int) -> list[BenchAccount]:
    """``count`` accounts ``<prefix>-00000``... with fresh (seeded) keys."""
    rng = random.Random(seed).randbytes
    accounts = []
    for i in range(count):
        user_id = f"{prefix}-{i:05d}"
        master = SigningKeyPair.generate(rng)
        signing = SigningKeyPair.generate(rng)
        identity = DHKeyPair.generate(rng)
        entry = DeviceEntry(DEVICE_ID, signing.public_key, identity.public_key, False, ISSUED_AT_MS)
        statement = DeviceList(user_id, master.public_key, 1, ISSUED_AT_MS, None, (entry,))
        signed = SignedDeviceList.sign(statement, master).to_bytes()
        accounts.append(BenchAccount(user_id, master, signing, signed))
    return accounts


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection to the relay."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/cbor\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        return await read_response(self._reader)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = self._reader = None


async def _register_one(conn: _HttpConnection, account: BenchAccount) -> None:
    status, body = await conn.post("/v1/register/nonce", b"")
    if status != 200:
        raise RegistrationError(f"nonce: HTTP {status} {body[:200]!r}")
    answer = cbor.decode(body)
    nonce = answer.get(0) if isinstance(answer, dict) else None
    if not isinstance(nonce, bytes):
        raise RegistrationError("nonce: unexpected answer")
    request = RegisterRequest(
        account.signed_list,
        nonce,
        sign_register(account.master, account.user_id, DEVICE_ID, nonce),
        sign_register(account.signing, account.user_id, DEVICE_ID, nonce),
    )
    status, body = await conn.post("/v1/register", request.to_bytes())
    if status != 201:
        raise RegistrationError(f"register {account.user_id}: HTTP {status} {body[:200]!r}")


async def register_accounts(
    port: int,
    accounts: list[BenchAccount],
    *,
    connections: int = 16,
    progress: bool = False,
) -> float:
    """Register every account over ``connections`` parallel keep-alive connections;
    return the seconds it took.

    Raises:
        RegistrationError: a refusal (rate limit, taken user id, bad signature).
    """
    start = time.perf_counter()
    todo = iter(accounts)
    done = [0]
    total = len(accounts)
    step = max(1, total // 10)

    async def worker() -> None:
        conn = _HttpConnection(port)
        try:
            for account in todo:
                await _register_one(conn, account)
                done[0] += 1
                if progress and done[0] % step == 0:
                    print(f"    registered {done[0]:,}/{total:,}", flush=True)
        finally:
            await conn.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(min(connections, total)):
            group.create_task(worker())
    return time.perf_counter() - start


async def open_device(port: int, account: BenchAccount, origin: str) -> WsClient:
    """An authenticated WebSocket of the account's device, past ``CaughtUp``. Stored
    messages delivered before it (left over from an earlier run) are acknowledged.

    Raises:
        RegistrationError: the relay refused the authentication.
        bench.loadgen.LoadError: the connection failed or timed out.
    """
    client = await connect(HOST, port, "/v1/ws")
    try:
        hello = decode_relay_frame(await client.recv(AUTH_TIMEOUT_S))
        if not isinstance(hello, Hello):
            raise RegistrationError(f"expected Hello, got {type(hello).__name__}")
        signature = sign_relay_auth(
            account.signing,
            origin=origin,
            user_id=account.user_id,
            device_id=DEVICE_ID,
            nonce=hello.nonce,
            spki_sha256=None,
        )
        client.send(Auth(account.user_id, DEVICE_ID, signature).to_bytes())
        answer = decode_relay_frame(await client.recv(AUTH_TIMEOUT_S))
        if not isinstance(answer, AuthOk):
            raise RegistrationError(f"auth {account.user_id}: {answer!r:.200}")
        while True:
            frame = decode_relay_frame(await client.recv(AUTH_TIMEOUT_S))
            if isinstance(frame, CaughtUp):
                return client
            if isinstance(frame, Deliver):
                client.send(Ack((frame.seq,)).to_bytes())
                continue
            raise RegistrationError(f"{account.user_id}: unexpected {frame!r:.200}")
    except BaseException:
        client.close()
        raise
