"""Share links through the SDK (issue 6; DESIGN 4.7): ``Client.make_share_link`` and
``client_sdk.share.open_share_link`` against a real relay (uvicorn on 127.0.0.1, a
SQLite database file, in this process so the tests set its clock and reach its
database), with real encrypted client stores and injected clocks on both sides.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from client_sdk._client.sharing import RECORD_PREFIX, ShareLinkRecord
from client_sdk.client import Client
from client_sdk.errors import (
    ConnectionFailed,
    InvalidShareLink,
    ShareLinkError,
    ShareLinkExpired,
    ShareLinkNotFound,
    ShareLinkTampered,
    ShareLinkTooLarge,
    ShareLinkTTLTooLong,
    ShareLinkUploadFailed,
    ShareLinkWrongCode,
    UsageError,
)
from client_sdk.share import ShareLinkInfo, ShareLinkState, open_share_link
from client_sdk.store import Table
from client_sdk.testing.canary import CanaryScanner, make_canaries, prove_detects
from e2ee.share import ShareLink
from server.api_share import PREVIEW_PAGE
from server.app import create_app
from server.context import RelayContext
from server.serving import RelayServer, uvicorn_config
from tests.server.relay_client import ORIGIN, relay_settings

WAIT = 20.0
"""Bound for anything a test waits for."""
SUFFIXES = ("", "-wal", "-shm")
BASE32 = re.compile(r"[A-Z2-7]{8}")


class Clock:
    """Wall-clock milliseconds plus an offset a test moves."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset


@dataclass
class Relay:
    ctx: RelayContext
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve(db: Path, clock: Clock, *, port: int = 0, **overrides: Any) -> AsyncIterator[Relay]:
    """The relay on ``db`` (SQLite) under uvicorn on 127.0.0.1:``port`` (0: any free
    port) with the clock ``clock``, stopped when the block ends."""
    settings = relay_settings(db.parent, database_url=f"sqlite:///{db}", **overrides)
    app = create_app(settings, clock=clock)
    config = uvicorn_config(app, settings, host="127.0.0.1", port=port, log_config=None)
    server = RelayServer(config, app.state.ctx)
    task = asyncio.create_task(server.serve(), name="share-test-relay")
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the relay stopped during startup")
                await asyncio.sleep(0.01)
        yield Relay(app.state.ctx, server.bound_port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)


class Env:
    """One relay database, its clock, the clients' clock and store keys."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "relay.db"
        self.relay_clock = Clock()
        self.clock = Clock()
        self.keys: dict[str, bytes] = {}

    def serve(
        self, *, port: int = 0, **overrides: Any
    ) -> contextlib.AbstractAsyncContextManager[Relay]:
        return serve(self.db, self.relay_clock, port=port, **overrides)

    def open(self, name: str, url: str) -> contextlib.AbstractAsyncContextManager[Client]:
        key = self.keys.setdefault(name, secrets.token_bytes(32))
        return Client.open(
            url, store=self.tmp_path / f"{name}.db", key=key, origin=ORIGIN, clock=self.clock
        )

    async def registered(self, relay: Relay, name: str = "alice") -> str:
        """Register ``name`` on ``relay`` (the client is closed again); its user id."""
        user_id = f"{name}-{secrets.token_hex(4)}"
        async with self.open(name, relay.url) as client:
            await client.register(user_id)
        return user_id

    def relay_files(self) -> list[tuple[str, bytes]]:
        out = []
        for suffix in SUFFIXES:
            file = Path(f"{self.db}{suffix}")
            if file.exists():
                out.append((f"relay.db{suffix or '-main'}", file.read_bytes()))
        return out

    def store_files(self, name: str) -> list[tuple[str, bytes]]:
        out = []
        for suffix in SUFFIXES:
            file = Path(f"{self.tmp_path / name}.db{suffix}")
            if file.exists():
                out.append((f"{name}.db{suffix or '-main'}", file.read_bytes()))
        return out


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest_asyncio.fixture
async def relay(env: Env) -> AsyncIterator[Relay]:
    async with env.serve() as running:
        yield running


def link_key(info: ShareLinkInfo) -> bytes:
    return ShareLink.parse(info.url).link_key


async def stored_record(client: Client, share_id: str) -> tuple[bytes, ShareLinkRecord]:
    """The store record of one link (white box)."""
    async with client._store.transaction() as tx:
        rows = await tx.scan(Table.META, RECORD_PREFIX)
    for key, value in rows:
        record = ShareLinkRecord.from_bytes(value)
        if record.id_text == share_id:
            return key, record
    raise AssertionError("no record for this link")


def relay_blob(env: Env, share_id: str) -> bytes:
    """The share's ciphertext as the relay's database holds it."""
    raw = base64.urlsafe_b64decode(share_id + "==")
    conn = sqlite3.connect(env.db)
    try:
        rows = conn.execute(
            "SELECT c.data FROM blob_chunks c JOIN share_links s ON s.blob_id = c.blob_id "
            "WHERE s.share_id = ? ORDER BY c.idx",
            (raw,),
        ).fetchall()
    finally:
        conn.close()
    return b"".join(row[0] for row in rows)


def set_relay_blob(env: Env, share_id: str, data: bytes) -> None:
    """Replace the share's ciphertext in the relay's database (one chunk)."""
    raw = base64.urlsafe_b64decode(share_id + "==")
    conn = sqlite3.connect(env.db, timeout=WAIT)
    try:
        with conn:
            (blob_id,) = conn.execute(
                "SELECT blob_id FROM share_links WHERE share_id = ?", (raw,)
            ).fetchone()
            updated = conn.execute(
                "UPDATE blob_chunks SET data = ? WHERE blob_id = ? AND idx = 0", (data, blob_id)
            ).rowcount
            assert updated == 1
    finally:
        conn.close()


# --- offline creation, upload, open ------------------------------------------------------


@pytest.mark.asyncio
async def test_made_offline_uploaded_on_connect_then_opened(env: Env) -> None:
    async with env.serve() as first:
        port = first.port
        await env.registered(first)
    url = f"ws://127.0.0.1:{port}"
    async with env.open("alice", url) as alice:
        # No relay runs: the links are made and committed all the same.
        text = await alice.make_share_link("name: Alice\nphone: +1 555 0100")
        raw = await alice.make_share_link(b"\x00\x01\xffbinary", max_views=3)
        assert text.pending and raw.pending
        assert text.url.startswith(f"http://127.0.0.1:{port}/s/{text.share_id}#")
        for info in (text, raw):
            status = await alice.share_link_status(info.share_id)
            assert status is not None and status.state is ShareLinkState.PENDING
        with pytest.raises(ConnectionFailed):
            await open_share_link(text.url)
        # The relay comes back (same database, same port): the next connection uploads.
        async with env.serve(port=port):
            await alice.connect()
            for info in (text, raw):
                status = await alice.share_link_status(info.share_id)
                assert status is not None and status.state is ShareLinkState.UPLOADED
            got_text = await open_share_link(text.url)
            got_raw = await alice.open_share_link(raw.url)
            assert got_text == "name: Alice\nphone: +1 555 0100" and isinstance(got_text, str)
            assert got_raw == b"\x00\x01\xffbinary" and isinstance(got_raw, bytes)
            # Uploaded records keep no blob; a second pass uploads nothing.
            _, record = await stored_record(alice, text.share_id)
            assert record.blob is None and record.proof_hash is None
            assert await alice.upload_pending_share_links() == []
            # Connected: a new link goes up at once.
            online = await alice.make_share_link("made online")
            assert not online.pending
            assert await open_share_link(online.url) == "made online"


@pytest.mark.asyncio
async def test_expiry_at_five_minutes_on_the_openers_clock(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        await alice.connect()
        info = await alice.make_share_link("expiring")
        assert not info.pending
        made_at = info.expires_at_ms - 300_000
        assert abs(made_at - env.clock()) < 10_000  # the default ttl is 5 minutes
        # 4:59 after making it, it opens; at 5:01 it is expired on the opener's clock
        # although the relay (whose clock is at the present) still serves it.
        got = await open_share_link(info.url, clock=lambda: made_at + 299_000)
        assert got == "expiring"
        with pytest.raises(ShareLinkExpired) as caught:
            await open_share_link(info.url, clock=lambda: made_at + 301_000)
        assert caught.value.expires_at_ms == info.expires_at_ms
        env.clock.offset = 301_000  # the client's own clock, through Client.open_share_link
        with pytest.raises(ShareLinkExpired):
            await alice.open_share_link(info.url)
        # Once the relay's clock passes the expiry too, it no longer serves it.
        env.relay_clock.offset = 301_000
        with pytest.raises(ShareLinkNotFound):
            await open_share_link(info.url, clock=lambda: made_at)


@pytest.mark.asyncio
async def test_a_pending_link_that_expired_is_dropped_not_uploaded(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        info = await alice.make_share_link("too late", ttl=60)
        assert info.pending
        env.clock.offset = 61_000
        with pytest.raises(ShareLinkUploadFailed) as caught:
            await alice.upload_pending_share_links()
        assert (caught.value.share_id, caught.value.reason) == (info.share_id, "expired")
        assert caught.value.http_status is None
        status = await alice.share_link_status(info.share_id)
        assert status is not None and (status.state, status.reason) == (
            ShareLinkState.FAILED,
            "expired",
        )
        _, record = await stored_record(alice, info.share_id)
        assert record.blob is None
        with pytest.raises(ShareLinkNotFound):
            await open_share_link(info.url, clock=env.clock)


# --- limits and refusals -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttl_is_checked_against_the_advertised_maximum(env: Env) -> None:
    async with env.serve(max_share_link_ttl_seconds=60) as relay:
        await env.registered(relay)
        async with env.open("alice", relay.url) as alice:
            # Before any configuration is known: the protocol default, 300 s.
            with pytest.raises(ShareLinkTTLTooLong) as caught:
                await alice.make_share_link("x", ttl=301)
            assert (caught.value.ttl, caught.value.max_ttl) == (301, 300)
            assert isinstance(caught.value, UsageError)
            too_long = await alice.make_share_link("refused later", ttl=120)
            fits = await alice.make_share_link("fits", ttl=50)
            # The explicit upload reads the relay's maximum (60 s) and tries both.
            with pytest.raises(ShareLinkUploadFailed) as refused:
                await alice.upload_pending_share_links()
            failure = refused.value
            assert (failure.share_id, failure.reason, failure.http_status) == (
                too_long.share_id,
                "ttl_too_long",
                400,
            )
            status = await alice.share_link_status(too_long.share_id)
            assert status is not None
            assert (status.state, status.reason) == (ShareLinkState.FAILED, "ttl_too_long")
            status = await alice.share_link_status(fits.share_id)
            assert status is not None and status.state is ShareLinkState.UPLOADED
            assert await open_share_link(fits.url) == "fits"
            with pytest.raises(ShareLinkNotFound):
                await open_share_link(too_long.url)
            # The maximum is remembered: above it is refused at once, offline or not.
            with pytest.raises(ShareLinkTTLTooLong) as caught:
                await alice.make_share_link("x", ttl=61)
            assert caught.value.max_ttl == 60
        async with env.open("alice", relay.url) as alice:
            with pytest.raises(ShareLinkTTLTooLong):
                await alice.make_share_link("x", ttl=61)
            assert (await alice.make_share_link("x", ttl=60)).pending


@pytest.mark.asyncio
async def test_a_refused_upload_on_connect_is_recorded_and_online_it_raises(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    async with env.serve(max_share_link_ttl_seconds=60) as relay:
        await env.registered(relay)
        async with env.open("alice", relay.url) as alice:
            info = await alice.make_share_link("refused", ttl=50)
            # The relay's clock is 30 s behind: 50 s from the client's now is 80 s from
            # the relay's, above its 60 s.
            env.relay_clock.offset = -30_000
            with caplog.at_level(logging.WARNING, logger="client_sdk.client"):
                await alice.connect()  # the refusal is recorded, not raised here
            status = await alice.share_link_status(info.share_id)
            assert status is not None
            assert (status.state, status.reason) == (ShareLinkState.FAILED, "ttl_too_long")
            assert "a pending share link was dropped: ttl_too_long" in caplog.text
            # Connected, the upload is tried at once and its refusal raised.
            with pytest.raises(ShareLinkUploadFailed) as caught:
                await alice.make_share_link("refused too", ttl=50)
            status = await alice.share_link_status(caught.value.share_id)
            assert status is not None and status.state is ShareLinkState.FAILED
            env.relay_clock.offset = 0
            assert not (await alice.make_share_link("accepted", ttl=50)).pending


@pytest.mark.asyncio
async def test_a_lost_answer_counts_as_uploaded_a_foreign_exists_does_not(
    env: Env, relay: Relay
) -> None:
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        info = await alice.make_share_link("once")
        key, pending = await stored_record(alice, info.share_id)
        assert await alice.upload_pending_share_links() == [info.share_id]
        # As if the relay's 201 never arrived after an attempt: pending, attempted.
        async with alice._store.transaction() as tx:
            await tx.put(Table.META, key, _attempted(pending, True).to_bytes())
        assert await alice.upload_pending_share_links() == [info.share_id]
        # Never attempted by this device, yet the relay has the id: refused for good.
        async with alice._store.transaction() as tx:
            await tx.put(Table.META, key, _attempted(pending, False).to_bytes())
        with pytest.raises(ShareLinkUploadFailed) as caught:
            await alice.upload_pending_share_links()
        assert (caught.value.reason, caught.value.http_status) == ("exists", 409)
        assert await open_share_link(info.url) == "once"


def _attempted(record: ShareLinkRecord, attempted: bool) -> ShareLinkRecord:
    return replace(record, attempted=attempted)


@pytest.mark.asyncio
async def test_argument_checks(env: Env, relay: Relay) -> None:
    async with env.open("alice", relay.url) as alice:
        with pytest.raises(UsageError):  # not registered
            await alice.make_share_link("x")
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        for kwargs in (
            {"ttl": 0},
            {"ttl": 1.5},
            {"max_views": 0},
            {"max_views": 1001},
            {"auth_code": ""},
            {"auth_code": "é" * 3},
            {"auth_code": 5},
        ):
            with pytest.raises(UsageError):
                await alice.make_share_link("x", **kwargs)
        with pytest.raises(UsageError):
            await alice.make_share_link(12345)  # type: ignore[arg-type]
        with pytest.raises(ShareLinkTooLarge) as caught:
            await alice.make_share_link(b"x" * 65_536)
        assert caught.value.limit == 65_536 - 53 - 1
        assert (await alice.make_share_link(b"x" * caught.value.limit)).pending
        with pytest.raises(InvalidShareLink):
            await alice.share_link_status("not an id")
        assert await alice.share_link_status("A" * 21 + "A") is None


# --- opening: views, codes, previews, tampering ------------------------------------------


@pytest.mark.asyncio
async def test_view_limit_and_previews_do_not_count(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        await alice.connect()
        info = await alice.make_share_link(b"two views", max_views=2)
        assert info.max_views == 2
        blob = relay_blob(env, info.share_id)
        assert blob
        preview_url = info.url.split("#", 1)[0]
        async with httpx.AsyncClient(timeout=WAIT) as http:
            for _ in range(3):  # a chat app's link preview, fetched again and again
                page = await http.get(preview_url)
                assert page.status_code == 200 and page.text == PREVIEW_PAGE
                assert blob not in page.content
        assert await open_share_link(info.url) == b"two views"
        assert await open_share_link(info.url) == b"two views"
        with pytest.raises(ShareLinkNotFound):
            await open_share_link(info.url)


@pytest.mark.asyncio
async def test_auth_codes_wrong_missing_and_five_strikes(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        await alice.connect()
        info = await alice.make_share_link("guarded", auth_code=True)
        code = info.auth_code
        assert code is not None and BASE32.fullmatch(code)
        # Any case, spaces and hyphens: the same code.
        typed = f"{code[:4].lower()}-{code[4:].lower()}"
        assert await open_share_link(info.url, typed) == "guarded"
        attempts = [None, "ABCDEFGH", "22222222", "77777777", "QQQQQQQQ"]
        assert code not in attempts
        for attempt in attempts:  # five wrong proofs: a missing code counts as one
            with pytest.raises(ShareLinkWrongCode):
                await open_share_link(info.url, attempt)
        with pytest.raises(ShareLinkNotFound):  # the fifth deleted it
            await open_share_link(info.url, code)
        # A given code is used as normalized; a link without a code refuses one.
        given = await alice.make_share_link("given", auth_code="abcd efgh-jk")
        assert given.auth_code == "ABCDEFGHJK"
        assert await open_share_link(given.url, "ABCDEFGHJK") == "given"
        plain = await alice.make_share_link("plain", auth_code=False)
        assert plain.auth_code is None
        with pytest.raises(ShareLinkWrongCode):
            await open_share_link(plain.url, "ABCDEFGH")
        assert await open_share_link(plain.url) == "plain"


@pytest.mark.asyncio
async def test_a_tampered_or_swapped_blob_is_refused(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    async with env.open("alice", relay.url) as alice:
        await alice.connect()
        first = await alice.make_share_link("first")
        second = await alice.make_share_link("second")
        blob = relay_blob(env, first.share_id)
        flipped = blob[:-1] + bytes((blob[-1] ^ 1,))
        set_relay_blob(env, first.share_id, flipped)
        with pytest.raises(ShareLinkTampered):
            await open_share_link(first.url)
        # Another link's ciphertext served under this id (the relay checks only the
        # proof): bound to the other id, it does not open either.
        set_relay_blob(env, first.share_id, relay_blob(env, second.share_id))
        with pytest.raises(ShareLinkTampered):
            await open_share_link(first.url)
        set_relay_blob(env, first.share_id, blob[:20])  # truncated below the overhead
        with pytest.raises(ShareLinkTampered):
            await open_share_link(first.url)
        set_relay_blob(env, first.share_id, blob)
        assert await open_share_link(first.url) == "first"
        assert await open_share_link(second.url) == "second"


# --- formats, secrets, canaries -----------------------------------------------------------


@pytest.mark.asyncio
async def test_link_format_and_reprs(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    # The same store on a relay named relay.example.com (nothing is contacted).
    async with env.open("alice", "wss://relay.example.com") as alice:
        info = await alice.make_share_link("card", auth_code=True, max_views=1)
        assert info.url.startswith(f"https://relay.example.com/s/{info.share_id}#")
        assert len(info.url) == 94  # "about 100 characters"
        assert info.auth_code is not None and BASE32.fullmatch(info.auth_code)
        secret_key = base64.urlsafe_b64encode(link_key(info)).rstrip(b"=").decode()
        shown = repr(info) + str(info) + repr(await alice.share_link_status(info.share_id))
        for secret in (info.url, secret_key, info.auth_code, "card"):
            assert secret not in shown
        assert info.share_id in shown
    for bad in (
        "",
        "https://relay.example.com/s/short#key",
        info.url.replace("/s/", "/x/"),
        info.url.split("#")[0],
        info.url + "A",
        info.url.replace("https", "ftp"),
        info.url + " ",
    ):
        with pytest.raises(InvalidShareLink) as caught:
            await open_share_link(bad)
        assert isinstance(caught.value, UsageError)
        assert secret_key not in str(caught.value)


@pytest.mark.asyncio
async def test_no_key_code_or_data_in_logs_or_errors(
    env: Env, relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    await env.registered(relay)
    data = f"secret-profile-{secrets.token_hex(8)}"
    errors: list[ShareLinkError] = []
    with caplog.at_level(logging.DEBUG):
        async with env.open("alice", relay.url) as alice:
            offline = await alice.make_share_link(data, auth_code=True)
            await alice.connect()
            online = await alice.make_share_link(data.encode(), auth_code="my code 42")
            assert await alice.open_share_link(offline.url, offline.auth_code) == data
            assert await open_share_link(online.url, "MYCODE42") == data.encode()
            with pytest.raises(ShareLinkWrongCode) as wrong:
                await open_share_link(online.url, "MYCODE43")
            errors.append(wrong.value)
            with pytest.raises(ShareLinkExpired) as expired:
                await open_share_link(online.url, "MYCODE42", clock=lambda: 2**62)
            errors.append(expired.value)
    secrets_seen = [
        offline.url,
        online.url,
        base64.urlsafe_b64encode(link_key(offline)).rstrip(b"=").decode(),
        base64.urlsafe_b64encode(link_key(online)).rstrip(b"=").decode(),
        link_key(offline).hex(),
        offline.auth_code or "",
        "MYCODE42",
        "my code 42",
        data,
    ]
    shown = caplog.text + "".join(f"{e!r} {e}" for e in errors)
    assert "share link" in caplog.text  # the flow was logged at all
    for secret in secrets_seen:
        assert secret and secret not in shown


@pytest.mark.asyncio
async def test_relay_and_store_files_hold_no_share_plaintext_or_key(env: Env, relay: Relay) -> None:
    await env.registered(relay)
    canaries = make_canaries(20, "share")
    scanner = CanaryScanner(canaries)
    prove_detects(scanner, canaries[0])
    async with env.open("alice", relay.url) as alice:
        infos = [await alice.make_share_link(c.decode(), max_views=1) for c in canaries[:10]]
        infos += [await alice.make_share_link(c) for c in canaries[10:]]
        blobs = []
        for info in infos:
            _, record = await stored_record(alice, info.share_id)
            assert record.blob is not None
            blobs.append(record.blob)
        await alice.connect()  # uploads all twenty
        for info in infos[:5]:  # some are opened (and the first ones used up)
            assert (await open_share_link(info.url)) in [c.decode() for c in canaries]
        keys = [link_key(info) for info in infos]
        key_scanner = CanaryScanner(keys)
        prove_detects(key_scanner, keys[0])
        for files in (env.relay_files(), env.store_files("alice")):
            assert files
            assert scanner.scan_all(files) == []
            assert key_scanner.scan_all(files) == []
    # The scan looked at the right files: the relay holds the ciphertexts (those not
    # used up), byte for byte.
    files = env.relay_files()
    held = [b for b in blobs[5:] if any(b in data for _, data in files)]
    assert len(held) == len(blobs) - 5
    for files in (env.relay_files(), env.store_files("alice")):
        assert scanner.scan_all(files) == []
        assert key_scanner.scan_all(files) == []
