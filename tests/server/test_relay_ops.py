"""Operational endpoints, graceful shutdown, the CLI and the settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2ee.relay_frames import CaughtUp, CloseCode, Error, ErrorCode
from server import api_blobs, limits
from server.errors import REFUSALS, ConfigError, RateLimited, TooLarge, refusal_for
from server.ratelimit import RateLimiter
from server.session import DeliveryWindow
from server.settings import RateLimit, load_settings
from server.storage.base import QueueFull, StorageError, StorageUnavailable
from tests.server.relay_client import RunningRelay, relay_settings, running_relay
from tests.server.relay_fixtures import memory_relay

__all__ = ["memory_relay"]

E2EE = [sys.executable, "-m", "e2ee"]


@pytest.mark.asyncio
async def test_health_ready_metrics_openapi_config(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}
    account = await client.create_account()
    conn = await client.connect(account)
    await conn.expect(CaughtUp)
    metrics = (await client.get("/metrics")).text
    for name in (
        "relay_connections",
        "relay_messages_in_total",
        "relay_messages_out_total",
        "relay_queue_depth_last",
        "relay_refusals_total",
    ):
        assert name in metrics
    assert "relay_connections 1.0" in metrics
    schema = (await client.get("/openapi.json")).json()
    assert "/v1/register" in schema["paths"] and "/readyz" in schema["paths"]
    assert "post" in schema["paths"]["/v1/register"]
    config = (await client.get("/v1/config")).json()
    assert config["protocol_versions"] == [1]
    assert config["max_frame"] == limits.MAX_FRAME
    assert config["message_ttl_ms"] == limits.MESSAGE_TTL_SECONDS * 1000
    assert config["max_share_link_ttl_ms"] == limits.MAX_SHARE_LINK_TTL_SECONDS * 1000
    assert config["max_share_size"] == limits.MAX_SHARE_SIZE_BYTES
    assert config["max_blob_size"] == api_blobs.MAX_BLOB_SIZE
    assert config["blob_quota_bytes"] == limits.BLOB_QUOTA_BYTES
    await conn.close()


@pytest.mark.asyncio
async def test_readyz_unavailable_when_storage_fails(memory_relay: RunningRelay) -> None:
    storage = memory_relay.ctx.storage

    async def broken_ping() -> None:
        raise StorageUnavailable("down")

    original = storage.ping
    storage.ping = broken_ping  # type: ignore[method-assign]
    try:
        response = await memory_relay.client().get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "unavailable"
    finally:
        storage.ping = original  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_storage_failure_answers_unavailable(memory_relay: RunningRelay) -> None:
    client = memory_relay.client()
    account = await client.create_account()
    conn = await client.connect(account)
    await conn.expect(CaughtUp)
    prekeys = memory_relay.ctx.storage.prekeys

    async def broken_upload(*args: object) -> None:
        raise StorageUnavailable("down")

    original = prekeys.upload
    prekeys.upload = broken_upload  # type: ignore[method-assign]
    try:
        upload = conn.prekey_upload(one_time=1)
        await conn.send(upload)
        error = await conn.expect(Error)
        assert error.code is ErrorCode.UNAVAILABLE and error.req == upload.req
    finally:
        prekeys.upload = original  # type: ignore[method-assign]
    await conn.close()


@pytest.mark.asyncio
async def test_graceful_shutdown_closes_going_away(tmp_path: Path) -> None:
    async with running_relay(relay_settings(tmp_path)) as running:
        client = running.client()
        account = await client.create_account()
        conn = await client.connect(account)
        await conn.expect(CaughtUp)
        await running.stop()
        assert await conn.closed() == CloseCode.GOING_AWAY


@pytest.mark.asyncio
async def test_sqlite_file_created_in_data_dir(tmp_path: Path) -> None:
    settings = relay_settings(tmp_path, database_url=None)
    async with running_relay(settings) as running:
        account = await running.client().create_account()
    assert (tmp_path / "relay-data" / "relay.db").is_file()
    async with running_relay(settings) as running:  # reopened: the account persisted
        assert await running.ctx.storage.accounts.get_account(account.user_id) is not None


# --- settings and CLI -----------------------------------------------------------------


def test_settings_precedence_and_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-secret\n")
    config = tmp_path / "relay.toml"
    config.write_text(
        f'port = 9000\nhost = "0.0.0.0"\nqueue_quota = 5\n'
        f'registration_token_file = "{token_file}"\n'
        "[rate_send]\nper_second = 1.5\nburst = 3\n"
    )
    monkeypatch.setenv("E2EE_PORT", "9100")
    monkeypatch.setenv("E2EE_QUEUE_QUOTA", "7")
    settings = load_settings(config, queue_quota=11)
    assert settings.host == "0.0.0.0"  # file
    assert settings.port == 9100  # environment over file
    assert settings.queue_quota == 11  # flag over environment
    assert settings.rate_send == RateLimit(per_second=1.5, burst=3)
    assert settings.registration_token is not None
    assert settings.registration_token.get_secret_value() == "file-secret"
    shown = json.dumps(settings.redacted())
    assert "file-secret" not in shown and "file-secret" not in repr(settings)


def test_settings_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, port=70000)
    with pytest.raises(ConfigError, match="spki"):
        load_settings(None, spki_binding="accepted")
    with pytest.raises(ConfigError, match="tls_cert"):
        load_settings(None, spki_binding="relay")


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("E2EE_")}
    full_env.update(env)
    return subprocess.run(
        [*E2EE, *args], capture_output=True, text=True, timeout=60, env=full_env, check=False
    )


def test_config_check_redacts_secrets(tmp_path: Path) -> None:
    result = _run_cli(
        ["config", "check", "--db", "postgresql+asyncpg://relay:hunter2@127.0.0.1/relay"],
        {"E2EE_REGISTRATION_TOKEN": "tok-123", "E2EE_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["registration_token"] == "********"
    assert "hunter2" not in result.stdout and "tok-123" not in result.stdout
    assert shown["database_url"] == "postgresql+asyncpg://relay:***@127.0.0.1/relay"
    bad = _run_cli(["config", "check", "--port", "99999"], {"E2EE_DATA_DIR": str(tmp_path)})
    assert bad.returncode == 1 and "port" in bad.stderr


def test_serve_and_db_help() -> None:
    result = _run_cli(["serve", "--help"], {})
    assert result.returncode == 0
    for flag in ("--host", "--port", "--db", "--redis", "--config", "--data-dir", "--origin"):
        assert flag in result.stdout
    assert "GOING_AWAY" in result.stdout or "going away" in result.stdout
    result = _run_cli(["db", "--help"], {})
    assert result.returncode == 0 and "upgrade" in result.stdout


def test_db_upgrade_creates_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "x" / "relay.db"
    result = _run_cli(["db", "upgrade", "--db", f"sqlite:///{db}"], {})
    assert result.returncode == 0, result.stderr
    assert db.is_file()


# --- pure parts -----------------------------------------------------------------------


def test_refusal_table() -> None:
    assert refusal_for(RateLimited("x")).code is ErrorCode.RATE_LIMITED
    assert refusal_for(TooLarge("frame", 1)).close is CloseCode.TOO_BIG
    assert refusal_for(QueueFull("u", 1)).code is ErrorCode.QUEUE_FULL
    assert refusal_for(StorageError()).code is ErrorCode.UNAVAILABLE
    assert refusal_for(KeyError()).http_status == 500
    assert all(r.http_status >= 400 for r in REFUSALS.values())


def test_rate_limiter_refills_and_bounds_keys() -> None:
    now = [0.0]
    limiter = RateLimiter("t", RateLimit(per_second=1, burst=2), clock=lambda: now[0], max_keys=2)
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    now[0] = 1.0
    assert limiter.allow("a") and not limiter.allow("a")
    limiter.allow("b")
    limiter.allow("c")  # "a" forgotten: starts full again
    assert limiter.allow("a")
    with pytest.raises(RateLimited):
        RateLimiter("t", RateLimit(per_second=1, burst=1), clock=lambda: 0.0).check("k", cost=2)


def test_delivery_window() -> None:
    window = DeliveryWindow(max_count=2, max_bytes=100)
    assert window.has_room()
    window.sent(1, 500)  # one always fits
    assert not window.has_room()
    window.acked((1,))
    window.sent(2, 10)
    window.sent(3, 10)
    assert not window.has_room() and len(window) == 2
    window.acked((2, 99))
    assert window.has_room()
