"""A small relay client for tests (and other helpers' tests), and a real in-process relay.

* :func:`make_account` builds an account with e2ee helpers (master key, devices,
  signed device list, prekeys).
* :class:`RelayClient` registers over HTTP (httpx) and opens authenticated
  WebSocket connections (``websockets.asyncio.client``): :class:`DeviceConnection`
  sends frames and reads typed relay frames.
* :func:`running_relay` runs the relay app under a real uvicorn on 127.0.0.1 with
  port 0 (a task in the test's event loop) and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from e2ee import cbor
from e2ee.auth import sign_relay_auth
from e2ee.device import OurDevice, OurPreKeys
from e2ee.device_list import DeviceList, SignedDeviceList
from e2ee.keys import SigningKeyPair
from e2ee.prekeys import SignedPublicPreKey
from e2ee.relay_frames import (
    MAX_RELAY_FRAME,
    Ack,
    Auth,
    AuthOk,
    ClaimBundle,
    Hello,
    Ok,
    PutDeviceList,
    RegisterRequest,
    RelayFrame,
    Send,
    UploadPreKeys,
    decode_relay_frame,
    sign_register,
)
from server.app import create_app
from server.context import RelayContext
from server.notify import Notifier
from server.serving import RelayServer, uvicorn_config
from server.settings import RateLimit, RelaySettings
from server.storage.base import Storage

__all__ = [
    "NOW",
    "ORIGIN",
    "DeviceConnection",
    "RelayClient",
    "RunningRelay",
    "TestAccount",
    "TestAccountDevice",
    "make_account",
    "relay_settings",
    "running_relay",
]

ORIGIN = "wss://relay.test"
"""The origin test clients are configured with (and test relays are told)."""
NOW = 1_700_000_000_000
WAIT = 10.0
"""Upper bound for anything a test waits for (never a sleep: a bounded poll)."""
_GENEROUS = RateLimit(per_second=10_000, burst=10_000)

F = TypeVar("F", bound=RelayFrame)


def relay_settings(tmp_path: Path | None = None, **overrides: Any) -> RelaySettings:
    """Settings for a test relay: memory storage, the test origin, generous limits."""
    values: dict[str, Any] = {
        "database_url": "memory://",
        "origin": ORIGIN,
        "host": "127.0.0.1",
        "port": 0,
        "rate_registration": _GENEROUS,
        "rate_auth_ip": _GENEROUS,
        "rate_auth_device": _GENEROUS,
        "rate_http": _GENEROUS,
        "rate_claim_requester": _GENEROUS,
        "rate_claim_target": _GENEROUS,
        "rate_send": _GENEROUS,
        "rate_frames": _GENEROUS,
    }
    if tmp_path is not None:
        values["data_dir"] = tmp_path / "relay-data"
    values.update(overrides)
    return RelaySettings(**values)


# --- accounts ----------------------------------------------------------------------------


@dataclass
class TestAccountDevice:
    __test__ = False

    device: OurDevice
    prekeys: OurPreKeys = field(default_factory=OurPreKeys)

    @property
    def device_id(self) -> int:
        return self.device.device_id


@dataclass
class TestAccount:
    __test__ = False

    user_id: str
    master: SigningKeyPair
    devices: list[TestAccountDevice]
    device_list: SignedDeviceList

    def device(self, index: int = 0) -> TestAccountDevice:
        return self.devices[index]

    def add_device(self, device_id: int, now: int = NOW) -> SignedDeviceList:
        """A new device and the next device list naming it (not yet published)."""
        device = OurDevice.generate(self.user_id, device_id, self.master.public_key, now_ms=now)
        self.devices.append(TestAccountDevice(device))
        entries = tuple(sorted((d.device.entry() for d in self.devices), key=lambda e: e.device_id))
        self.device_list = self.device_list.successor(self.master, entries, now)
        return self.device_list

    def remove_device(self, device_id: int, now: int = NOW) -> SignedDeviceList:
        """The next device list without ``device_id`` (not yet published)."""
        self.devices = [d for d in self.devices if d.device_id != device_id]
        entries = tuple(sorted((d.device.entry() for d in self.devices), key=lambda e: e.device_id))
        self.device_list = self.device_list.successor(self.master, entries, now)
        return self.device_list


def make_account(user_id: str | None = None, *, now: int = NOW) -> TestAccount:
    """A fresh account with one device (id 1001) and version 1 of its signed device
    list (add devices with :meth:`TestAccount.add_device` and publish the list)."""
    user_id = user_id or f"u{secrets.token_hex(6)}"
    master = SigningKeyPair.generate()
    first = TestAccountDevice(OurDevice.generate(user_id, 1001, master.public_key, now_ms=now))
    statement = DeviceList(user_id, master.public_key, 1, now, None, (first.device.entry(),))
    return TestAccount(user_id, master, [first], SignedDeviceList.sign(statement, master))


# --- the client --------------------------------------------------------------------------


class DeviceConnection:
    """One WebSocket connection of one device."""

    def __init__(self, ws: ClientConnection, hello: Hello, account: TestAccount, index: int):
        self.ws = ws
        self.hello = hello
        self.account = account
        self.index = index
        self._req = 0

    @property
    def device(self) -> TestAccountDevice:
        return self.account.devices[self.index]

    def next_req(self) -> int:
        self._req += 1
        return self._req

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data)

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame.to_bytes())

    async def recv(self, timeout: float = WAIT) -> RelayFrame:
        """The next relay frame.

        Raises:
            ConnectionClosed: the relay closed the connection.
            TimeoutError: nothing within ``timeout``.
        """
        async with asyncio.timeout(timeout):
            data = await self.ws.recv(decode=False)
        return decode_relay_frame(data)

    async def expect(self, kind: type[F], timeout: float = WAIT) -> F:
        """The next frame, which must be a ``kind``."""
        frame = await self.recv(timeout)
        assert isinstance(frame, kind), f"expected {kind.__name__}, got {frame!r}"
        return frame

    async def recv_until(self, kind: type[F], timeout: float = WAIT) -> tuple[F, list[RelayFrame]]:
        """Frames until one of ``kind``: that one and those before it."""
        before: list[RelayFrame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if isinstance(frame, kind):
                    return frame, before
                before.append(frame)

    async def authenticate(
        self, *, origin: str = ORIGIN, nonce: bytes | None = None, spki: bytes | None = None
    ) -> AuthOk:
        await self.send(self.auth_frame(origin=origin, nonce=nonce, spki=spki))
        return await self.expect(AuthOk)

    def auth_frame(
        self, *, origin: str = ORIGIN, nonce: bytes | None = None, spki: bytes | None = None
    ) -> Auth:
        device = self.device.device
        signature = sign_relay_auth(
            device.signing,
            origin=origin,
            user_id=device.user_id,
            device_id=device.device_id,
            nonce=nonce if nonce is not None else self.hello.nonce,
            spki_sha256=spki,
        )
        return Auth(device.user_id, device.device_id, signature)

    async def send_message(
        self, client_msg_id: bytes, addressed: Sequence[tuple[str, Sequence[tuple[int, bytes]]]]
    ) -> None:
        frame = Send(client_msg_id, tuple((u, tuple(devs)) for u, devs in addressed))
        await self.send(frame)

    async def ack(self, seqs: Sequence[int]) -> None:
        await self.send(Ack(tuple(seqs)))

    def prekey_upload(
        self,
        *,
        one_time: int = 0,
        kem: int = 0,
        signed: bool = True,
        last_resort: bool = True,
        now: int = NOW,
    ) -> UploadPreKeys:
        """A fresh upload frame (new ids from the device's counter)."""
        device = self.device.device
        prekeys = self.device.prekeys
        spk = prekeys.rotate_signed_prekey(device, now) if signed else None
        otks: list[SignedPublicPreKey] = []
        while len(otks) < one_time:
            otks += prekeys.one_time_batch(device, now, count=min(100, one_time - len(otks)))
        kems: list[SignedPublicPreKey] = []
        while len(kems) < kem:
            kems += prekeys.one_time_batch(device, now, kem=True, count=min(100, kem - len(kems)))
        lr = prekeys.rotate_last_resort(device, now) if last_resort else None
        return UploadPreKeys(self.next_req(), spk, tuple(otks), tuple(kems), lr)

    async def claim(self, user_id: str, device_id: int) -> int:
        req = self.next_req()
        await self.send(ClaimBundle(req, user_id, device_id))
        return req

    async def closed(self, timeout: float = WAIT) -> int | None:
        """Wait until the relay closes the connection (reading and dropping frames);
        its close code."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.ws.recv()
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()


class RelayClient:
    """Talks to one running relay."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.http_url = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}/v1/ws"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url, timeout=WAIT)

    async def get(self, path: str) -> httpx.Response:
        async with self.http() as client:
            return await client.get(path)

    async def get_healthz(self) -> httpx.Response:
        return await self.get("/healthz")

    async def register_nonce(self) -> bytes:
        async with self.http() as client:
            response = await client.post("/v1/register/nonce")
        response.raise_for_status()
        value = cbor.decode(response.content)
        assert isinstance(value, dict)
        nonce = value[0]
        assert isinstance(nonce, bytes)
        return nonce

    def register_body(
        self, account: TestAccount, nonce: bytes, token: str | None = None
    ) -> RegisterRequest:
        device = account.devices[0].device
        return RegisterRequest(
            account.device_list.to_bytes(),
            nonce,
            sign_register(account.master, account.user_id, device.device_id, nonce),
            sign_register(device.signing, account.user_id, device.device_id, nonce),
            token,
        )

    async def post_register(self, body: bytes) -> httpx.Response:
        async with self.http() as client:
            return await client.post(
                "/v1/register", content=body, headers={"content-type": "application/cbor"}
            )

    async def register(self, account: TestAccount, token: str | None = None) -> httpx.Response:
        """Register ``account`` (asserting nothing: the caller checks the status)."""
        nonce = await self.register_nonce()
        return await self.post_register(self.register_body(account, nonce, token).to_bytes())

    async def create_account(self, user_id: str | None = None, devices: int = 1) -> TestAccount:
        """Register a new account and publish device lists until it has ``devices``
        devices (ids 1001, 1002, ...)."""
        account = make_account(user_id)
        response = await self.register(account)
        assert response.status_code == 201, response.text
        if devices > 1:
            conn = await self.connect(account)
            for i in range(1, devices):
                signed = account.add_device(1001 + i)
                req = conn.next_req()
                await conn.send(PutDeviceList(req, signed.to_bytes()))
                ok, _ = await conn.recv_until(Ok)
                assert ok.req == req
            await conn.close()
        return account

    async def open(
        self, account: TestAccount, index: int = 0, *, max_size: int | None = MAX_RELAY_FRAME + 64
    ) -> DeviceConnection:
        """A connection that has read the relay's Hello (not yet authenticated)."""
        ws = await connect(
            self.ws_url, max_size=max_size, compression=None, open_timeout=WAIT, close_timeout=2
        )
        data = await asyncio.wait_for(ws.recv(decode=False), WAIT)
        hello = decode_relay_frame(data)
        assert isinstance(hello, Hello)
        return DeviceConnection(ws, hello, account, index)

    async def connect(self, account: TestAccount, index: int = 0) -> DeviceConnection:
        """An authenticated connection of ``account``'s device ``index``."""
        conn = await self.open(account, index)
        await conn.authenticate()
        return conn


# --- a real relay in process ---------------------------------------------------------------


@dataclass
class RunningRelay:
    app: Starlette
    server: RelayServer
    port: int
    task: asyncio.Task[None]

    @property
    def ctx(self) -> RelayContext:
        ctx: RelayContext = self.app.state.ctx
        return ctx

    def client(self) -> RelayClient:
        return RelayClient(self.port)

    async def stop(self) -> None:
        """Graceful shutdown (sockets closed with GOING_AWAY), bounded."""
        self.server.should_exit = True
        await asyncio.wait_for(asyncio.shield(self.task), 30)


@contextlib.asynccontextmanager
async def running_relay(
    settings: RelaySettings,
    *,
    storage: Storage | None = None,
    notifier: Notifier | None = None,
) -> AsyncIterator[RunningRelay]:
    """Run the relay under uvicorn on 127.0.0.1, port 0, until the block ends."""
    app = create_app(settings, storage=storage, notifier=notifier)
    config = uvicorn_config(app, settings, host="127.0.0.1", port=0, log_config=None)
    server = RelayServer(config, app.state.ctx)
    task = asyncio.create_task(server.serve(), name="test-relay")
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the relay stopped during startup")
                await asyncio.sleep(0.01)
        relay = RunningRelay(app, server, server.bound_port, task)
        yield relay
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
