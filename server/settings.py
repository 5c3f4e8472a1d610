"""The relay's configuration: one pydantic-settings model (issue 3, "Running it").

Precedence, highest first: values passed in (command-line flags), environment
variables with the prefix ``E2EE_`` (nested fields with ``__``, e.g.
``E2EE_RATE_SEND__PER_SECOND``), then the TOML settings file named by
``--config`` or ``E2EE_CONFIG``. Secrets may instead be read from files
(``registration_token_file``, ``database_url_file``, ``redis_url_file``), so they
need not sit in the environment or the settings file. :func:`load_settings` is the
one entry point; :meth:`RelaySettings.redacted` is what ``e2ee config check`` and
logs show.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from . import limits
from .errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "RateLimit",
    "RelaySettings",
    "default_data_dir",
    "load_settings",
]

ENV_PREFIX: Final = "E2EE_"
CONFIG_ENV: Final = "E2EE_CONFIG"
"""Environment variable naming the TOML settings file (``--config`` wins over it)."""
_SQLITE_FILE: Final = "relay.db"

_config_file: ContextVar[Path | None] = ContextVar("e2ee_relay_config_file", default=None)


def default_data_dir() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/e2ee-relay`` (default
    ``~/.local/share/e2ee-relay``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "e2ee-relay"


class RateLimit(BaseModel):
    """A token bucket: ``burst`` events at once, refilled at ``per_second``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


def _rate(limit: tuple[float, int]) -> Any:
    per_second, burst = limit
    return Field(default_factory=lambda: RateLimit(per_second=per_second, burst=burst))


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} from {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{what} file {path} is empty")
    return value


class RelaySettings(BaseSettings):
    """Everything an operator can configure. Defaults run a single node on SQLite."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port (0: any free port)."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """Where the default SQLite database lives (created when missing)."""
    database_url: str | None = None
    """Storage URL (``sqlite:///path`` or ``postgresql+asyncpg://...``);
    default: ``relay.db`` in ``data_dir``. ``memory://`` keeps everything in memory
    (tests only)."""
    database_url_file: Path | None = None
    """Read ``database_url`` from this file (it may hold a password)."""
    redis_url: str | None = None
    """Redis for notifications between several relay nodes (optional)."""
    redis_url_file: Path | None = None
    """Read ``redis_url`` from this file."""
    redis_prefix: str = "e2ee:"
    """Prefix of every Redis channel and key this relay uses."""
    origin: str | None = None
    """The public URL clients are configured with (``wss://relay.example``); it is part
    of every ``relay-auth`` statement. Default: ``ws(s)://host:port``."""
    spki_binding: Literal["relay", "accepted", "off"] | None = None
    """``relay``: TLS ends here, the auth statement names our certificate's SPKI
    SHA-256; ``accepted``: TLS ends at a proxy whose hashes are in ``spki_accepted``;
    ``off``: no binding. Default: ``relay`` with a certificate, else ``off``."""
    spki_accepted: tuple[str, ...] = ()
    """Hex SHA-256 hashes of the SubjectPublicKeyInfo a client may have seen."""
    tls_cert: Path | None = None
    """PEM certificate chain (TLS ends at the relay when set)."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    registration_token: SecretStr | None = None
    """When set, registration requires this token (an operator-run closed relay)."""
    registration_token_file: Path | None = None
    """Read ``registration_token`` from this file."""
    message_ttl_seconds: int = Field(default=limits.MESSAGE_TTL_SECONDS, ge=60)
    """How long an undelivered message stays queued."""
    max_share_link_ttl_seconds: int = Field(default=limits.MAX_SHARE_LINK_TTL_SECONDS, ge=1)
    """Longest lifetime of a share-link blob."""
    max_share_size_bytes: int = Field(
        default=limits.MAX_SHARE_SIZE_BYTES, ge=1, le=limits.MAX_SHARE_SIZE_CEILING
    )
    """Largest share-link ciphertext (at most 1 MiB)."""
    queue_quota: int = Field(default=limits.QUEUE_QUOTA, ge=1)
    """Messages one device's queue may hold."""
    blob_quota_bytes: int = Field(default=limits.BLOB_QUOTA_BYTES, ge=0)
    """Blob bytes one device may hold."""
    rate_registration: RateLimit = _rate(limits.RATE_REGISTRATION)
    """Registrations (and registration nonces) per client IP."""
    rate_auth_ip: RateLimit = _rate(limits.RATE_AUTH_IP)
    """WebSocket authentication attempts per client IP."""
    rate_auth_device: RateLimit = _rate(limits.RATE_AUTH_DEVICE)
    """WebSocket authentication attempts per device."""
    rate_claim_requester: RateLimit = _rate(limits.RATE_CLAIM_REQUESTER)
    """Bundle claims per requesting device."""
    rate_claim_target: RateLimit = _rate(limits.RATE_CLAIM_TARGET)
    """Bundle claims per target device (one-time prekey draining)."""
    rate_send: RateLimit = _rate(limits.RATE_SEND)
    """Sends per device."""
    rate_frames: RateLimit = _rate(limits.RATE_FRAMES)
    """Frames of any kind per connection (a flood is closed)."""
    rate_http: RateLimit = _rate(limits.RATE_HTTP)
    """Other rate-limited HTTP requests (link mailbox, blobs, share links) per client IP."""
    purge_interval_seconds: float = Field(default=limits.PURGE_INTERVAL_SECONDS, gt=0)
    """Seconds between two runs of the expiry purge."""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for field, file_field in (
            ("registration_token", "registration_token_file"),
            ("database_url", "database_url_file"),
            ("redis_url", "redis_url_file"),
        ):
            path = data.get(file_field)
            if path is None or data.get(field) is not None:
                continue
            data = {**data, field: _read_secret_file(Path(path), field)}
        return data

    @model_validator(mode="after")
    def _check(self) -> RelaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.spki_binding == "relay" and self.tls_cert is None:
            raise ValueError("spki_binding 'relay' needs tls_cert (TLS must end at the relay)")
        if self.spki_binding == "accepted" and not self.spki_accepted:
            raise ValueError("spki_binding 'accepted' needs at least one spki_accepted hash")
        for value in self.spki_accepted:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise ValueError(f"spki_accepted: {value!r} is not hex") from None
            if len(raw) != 32:
                raise ValueError(f"spki_accepted: {value!r} is not a SHA-256 (32 bytes)")
        if self.origin is not None and not self.origin.startswith(
            ("ws://", "wss://", "http://", "https://")
        ):
            raise ValueError("origin must be a ws://, wss://, http:// or https:// URL")
        return self

    # --- derived values ---------------------------------------------------------------

    @property
    def effective_spki_binding(self) -> Literal["relay", "accepted", "off"]:
        """The binding mode in force (the default resolved)."""
        if self.spki_binding is not None:
            return self.spki_binding
        return "relay" if self.tls_cert is not None else "off"

    @property
    def effective_origin(self) -> str:
        """The origin auth statements must name."""
        if self.origin is not None:
            return self.origin
        scheme = "wss" if self.tls_cert is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def effective_database_url(self) -> str:
        """The database URL in force (default: SQLite in ``data_dir``)."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{self.data_dir / _SQLITE_FILE}"

    @property
    def uses_default_database(self) -> bool:
        """Whether the database is the default SQLite file in ``data_dir``."""
        return self.database_url is None

    def accepted_spki_hashes(self) -> tuple[bytes, ...]:
        """The accepted SPKI hashes as bytes (mode ``accepted``)."""
        return tuple(bytes.fromhex(v) for v in self.spki_accepted)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with every secret hidden (for display)."""
        out = self.model_dump(mode="json")
        out["registration_token"] = None if self.registration_token is None else "********"
        out["database_url"] = _hide_password(self.effective_database_url)
        out["redis_url"] = None if self.redis_url is None else _hide_password(self.redis_url)
        out["origin"] = self.effective_origin
        out["spki_binding"] = self.effective_spki_binding
        return out

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then the environment, then the TOML file (:func:`load_settings`)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def load_settings(config_file: Path | None = None, **overrides: Any) -> RelaySettings:
    """Build the settings: ``overrides`` (flags; ``None`` values are ignored) over the
    environment over the TOML file ``config_file`` (default: ``$E2EE_CONFIG``).

    Raises:
        ConfigError: the file is missing or unreadable, or a value is invalid (the
            message names the field, never a secret value).
    """
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"settings file {config_file} does not exist")
    values = {k: v for k, v in overrides.items() if v is not None}
    token = _config_file.set(config_file)
    try:
        return RelaySettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    except ValueError as exc:  # a secret file that cannot be read, a malformed TOML file
        raise ConfigError(f"invalid settings: {exc}") from None
    finally:
        _config_file.reset(token)
