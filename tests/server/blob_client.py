"""Test side of the blob and link-mailbox endpoints: a relay on a real uvicorn on
127.0.0.1 (in this process, so tests reach its storage and clock), accounts put
straight into storage, and the client's HTTP authentication headers.

:class:`SpyBlobStore` wraps the relay's blob store and records what the endpoints do
(which ids were begun, which deleted), so a test can wait for the relay to clean up
after a client vanished and then check nothing is left, without touching the blob
itself first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette

from e2ee import cbor
from e2ee.auth import sign_relay_auth
from e2ee.keys import SigningKeyPair
from server import api_blobs, api_links
from server.app import create_app
from server.blob_auth import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_USER,
    b64url_encode,
)
from server.context import RelayContext
from server.serving import RelayServer, uvicorn_config
from server.storage.base import (
    AccountRecord,
    AccountStore,
    BlobRecord,
    BlobStore,
    DeviceRecord,
    LinkStore,
    MessageStore,
    NonceStore,
    PreKeyStore,
    ShareStore,
    Storage,
    UnknownBlob,
)
from server.storage.memory import MemoryStorage
from tests.e2ee.helpers import TestUser, make_user
from tests.server.relay_client import ORIGIN, relay_settings

__all__ = [
    "ORIGIN",
    "ManualClock",
    "Relay",
    "SpyBlobStore",
    "SpyStorage",
    "auth_headers",
    "error_of",
    "fetch_nonce",
    "running_relay",
    "signed",
]

START_MS = 1_700_000_000_000
_STARTUP_SECONDS = 10.0


class ManualClock:
    """The relay's injected clock (milliseconds)."""

    def __init__(self, start: int = START_MS) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class SpyBlobStore:
    """A :class:`~server.storage.base.BlobStore` that delegates and records calls."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.begun: list[bytes] = []
        self.deleted: list[tuple[bytes, bool]] = []
        self.appended: list[tuple[bytes, int, int]] = []
        """(blob id, index, chunk length) of every successful append."""
        self.vanish_after: int | None = None
        """When set, a download's blob is deleted after this many chunks (as a
        concurrent DELETE or the expiry purge would), and storage raises."""

    async def begin(
        self,
        blob_id: bytes,
        owner_user: str,
        owner_device: int,
        now_ms: int,
        expires_at_ms: int,
        quota_bytes: int,
    ) -> None:
        self.begun.append(blob_id)
        await self.inner.begin(
            blob_id, owner_user, owner_device, now_ms, expires_at_ms, quota_bytes
        )

    async def append(self, blob_id: bytes, index: int, chunk: bytes, quota_bytes: int) -> None:
        await self.inner.append(blob_id, index, chunk, quota_bytes)
        self.appended.append((blob_id, index, len(chunk)))

    async def complete(self, blob_id: bytes) -> BlobRecord:
        return await self.inner.complete(blob_id)

    async def get(self, blob_id: bytes, now_ms: int) -> BlobRecord | None:
        return await self.inner.get(blob_id, now_ms)

    async def chunks(self, blob_id: bytes) -> AsyncIterator[bytes]:
        served = 0
        async for chunk in self.inner.chunks(blob_id):
            if self.vanish_after is not None and served >= self.vanish_after:
                await self.inner.delete(blob_id)
                raise UnknownBlob("deleted mid-stream")
            served += 1
            yield chunk

    async def delete(self, blob_id: bytes) -> bool:
        existed = await self.inner.delete(blob_id)
        self.deleted.append((blob_id, existed))
        return existed

    async def purge_expired(self, now_ms: int, limit: int) -> int:
        return await self.inner.purge_expired(now_ms, limit)


class SpyStorage:
    """A :class:`~server.storage.base.Storage` whose blob store is a :class:`SpyBlobStore`."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.spy = SpyBlobStore(inner.blobs)

    @property
    def accounts(self) -> AccountStore:
        return self.inner.accounts

    @property
    def prekeys(self) -> PreKeyStore:
        return self.inner.prekeys

    @property
    def messages(self) -> MessageStore:
        return self.inner.messages

    @property
    def blobs(self) -> BlobStore:
        return self.spy

    @property
    def links(self) -> LinkStore:
        return self.inner.links

    @property
    def nonces(self) -> NonceStore:
        return self.inner.nonces

    @property
    def shares(self) -> ShareStore:
        return self.inner.shares

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Relay:
    """A running test relay."""

    base_url: str
    port: int
    app: Starlette
    storage: SpyStorage
    clock: ManualClock
    users: dict[str, TestUser] = field(default_factory=dict)

    @property
    def ctx(self) -> RelayContext:
        ctx: RelayContext = self.app.state.ctx
        return ctx

    @property
    def blobs(self) -> SpyBlobStore:
        return self.storage.spy

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30.0, **kwargs)

    async def add_user(self, user_id: str, *, devices: int = 1, seed: int = 1) -> TestUser:
        """Create an account with ``devices`` devices straight in storage."""
        user = make_user(user_id, devices=devices, pq=False, seed=seed)
        statement = user.device_list.statement
        record = AccountRecord(
            user_id=user_id,
            master_pk=user.master.public_key,
            list_version=statement.version,
            signed_list=user.device_list.to_bytes(),
            list_digest=user.device_list.digest,
            devices=tuple(
                DeviceRecord(user_id, d.device_id, d.signing_pk, d.x25519_ik, d.pq)
                for d in statement.devices
            ),
        )
        await self.storage.accounts.create_account(record, self.clock())
        self.users[user_id] = user
        return user

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` (bounded); fail with ``what`` if it never holds."""
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")


def _with_blob_routes(app: Starlette) -> None:
    """Register the blob and link routes when ``create_app`` does not yet (they belong
    in ``server.app.ROUTE_FACTORIES``; until then the tests add them)."""
    paths = {getattr(route, "path", None) for route in app.router.routes}
    ctx: RelayContext = app.state.ctx
    if "/v1/blobs" not in paths:
        app.router.routes.extend(api_blobs.routes(ctx))
    if "/v1/link/{link_id}/{slot}" not in paths:
        app.router.routes.extend(api_links.routes(ctx))


@contextlib.asynccontextmanager
async def running_relay(*, storage: Storage | None = None, **settings: Any) -> AsyncIterator[Relay]:
    """The relay app under the relay's own uvicorn configuration on 127.0.0.1 (any free
    port), with a manual clock, stopped on exit.

    ``storage`` defaults to a fresh :class:`MemoryStorage` (the caller closes one it
    passes); ``settings`` override :func:`tests.server.relay_client.relay_settings`
    (memory storage, the test origin, generous rate limits).
    """
    inner = storage if storage is not None else MemoryStorage()
    spy = SpyStorage(inner)
    clock = ManualClock()
    app = create_app(relay_settings(**settings), storage=spy, clock=clock)
    _with_blob_routes(app)
    config = uvicorn_config(app, app.state.ctx.settings, host="127.0.0.1", port=0, log_config=None)
    server = RelayServer(config, app.state.ctx)
    task = asyncio.create_task(server.serve(), name="test-relay")
    try:
        async with asyncio.timeout(_STARTUP_SECONDS):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the test relay stopped during startup")
                await asyncio.sleep(0.01)
        port = server.bound_port
        yield Relay(f"http://127.0.0.1:{port}", port, app, spy, clock)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=_STARTUP_SECONDS * 3)
        if storage is None:
            await inner.aclose()


# --- the client's side of HTTP authentication -------------------------------------------


async def fetch_nonce(client: httpx.AsyncClient) -> bytes:
    """A fresh HTTP-auth nonce from ``POST /v1/auth/nonce``."""
    response = await client.post("/v1/auth/nonce")
    assert response.status_code == 200, response.text
    value = cbor.decode(response.content)
    assert isinstance(value, dict)
    nonce = value[0]
    assert isinstance(nonce, bytes)
    return nonce


def auth_headers(
    signing: SigningKeyPair,
    user_id: str,
    device_id: int,
    nonce: bytes,
    *,
    origin: str = ORIGIN,
    spki_sha256: bytes | None = None,
) -> dict[str, str]:
    """The four authentication headers of one request (what a client SDK sends)."""
    signature = sign_relay_auth(
        signing,
        origin=origin,
        user_id=user_id,
        device_id=device_id,
        nonce=nonce,
        spki_sha256=spki_sha256,
    )
    return {
        HEADER_USER: user_id,
        HEADER_DEVICE: str(device_id),
        HEADER_NONCE: b64url_encode(nonce),
        HEADER_SIGNATURE: b64url_encode(signature),
    }


async def signed(
    client: httpx.AsyncClient, user: TestUser, index: int = 0, **kwargs: Any
) -> dict[str, str]:
    """Fetch a nonce and sign it as ``user``'s device ``index``."""
    device = user.devices[index].device
    nonce = await fetch_nonce(client)
    return auth_headers(device.signing, device.user_id, device.device_id, nonce, **kwargs)


def error_of(response: httpx.Response) -> str:
    """The ``error`` label of a relay error response."""
    body = response.json()
    assert isinstance(body, dict) and set(body) >= {"error", "reason"}, body
    error = body["error"]
    assert isinstance(error, str)
    return error
