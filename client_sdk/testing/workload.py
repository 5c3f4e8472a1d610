"""The simulation's configuration and its seeded, reproducible schedule.

A :class:`SimConfig` and its seed determine the whole :class:`Schedule`: who talks to
whom (each user has a few 1:1 conversations), every message (sender device, recipient,
size, its canary) and where, between the messages, the faults happen (relay SIGKILLs,
client SIGKILLs, dropped connections). A schedule is saved in the event log of a failed
run and ``e2ee sim --replay log.json`` runs it again.

Message bodies are text: the message's canary (``E2EE-CANARY-sim<sid>-<48 hex>``, found
by the canary scanner if it ever reaches the relay in the clear), the simulation id as
``|sim=<sid>|`` (how a receiving worker names what it got), then filler up to the size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from .canary import CANARY_PREFIX

__all__ = [
    "MAX_BODY",
    "MIN_BODY",
    "Action",
    "ConfigError",
    "Schedule",
    "SimConfig",
    "canary",
    "make_schedule",
    "message_body",
    "user_ids",
]

ActionKind = Literal["send", "relay_kill", "client_kill", "disconnect"]
_KINDS: Final = ("send", "relay_kill", "client_kill", "disconnect")
_FILLER: Final = "abcdefghijklmnopqrstuvwxyz0123456789 "
MIN_BODY: Final = 100
"""The smallest body: the canary and the id take about 80 bytes."""
MAX_BODY: Final = 64 * 1024
"""The largest body the simulation sends (well inside one relay frame)."""


class ConfigError(ValueError):
    """A simulation setting is out of range, or a saved schedule does not load."""


@dataclass(frozen=True)
class SimConfig:
    """Everything a run depends on (with the seed, it determines the schedule).

    Attributes:
        seed: the schedule's seed (printed by every run).
        users, devices_per_user: the population (devices after the first are linked).
        messages: 1:1 messages to send.
        conversations: 1:1 conversations each user takes part in (at least).
        rate: messages handed to the clients per second (0: as fast as they take them).
        min_size, max_size: message body sizes in bytes (uniform).
        database: ``None`` for a SQLite file in the work directory, or a PostgreSQL
            URL of a server where a fresh database is created and dropped afterwards.
        redis_url: the relay's Redis (``None``: in-process notifier).
        relay_kills, client_kills, disconnects: faults spread over the run.
        duplicate_probability: share of deliveries the proxy sends twice.
        delay_ms: delay the proxy adds to every message.
        workers: client processes (a client SIGKILL kills one with all its devices).
        timeout_s: bound of the whole run.
        drain_s: how long delivery may take after the last send (bounded wait).
        client_state_limit_bytes: the largest store file a device may end with.
    """

    seed: int
    users: int = 50
    devices_per_user: int = 2
    messages: int = 5_000
    conversations: int = 3
    rate: float = 200.0
    min_size: int = MIN_BODY
    max_size: int = 1_024
    database: str | None = None
    redis_url: str | None = None
    relay_kills: int = 5
    client_kills: int = 3
    disconnects: int = 10
    duplicate_probability: float = 0.0
    delay_ms: float = 0.0
    workers: int = 4
    timeout_s: float = 900.0
    drain_s: float = 180.0
    client_state_limit_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (type(value) is not int):
                raise ConfigError(f"{f.name} must be an integer")
            if f.type == "float" and (type(value) not in (int, float) or not math.isfinite(value)):
                raise ConfigError(f"{f.name} must be a finite number")
            if f.type == "str | None" and value is not None and type(value) is not str:
                raise ConfigError(f"{f.name} must be a string")
        if self.users < 2 or self.devices_per_user < 1:
            raise ConfigError("a simulation needs at least 2 users of 1 device or more")
        if self.messages < 0:
            raise ConfigError("messages must not be negative")
        if not 1 <= self.conversations < self.users:
            raise ConfigError("conversations per user must be between 1 and users - 1")
        if self.rate < 0 or self.delay_ms < 0:
            raise ConfigError("rate and delay must not be negative")
        if not 0 <= self.duplicate_probability <= 1:
            raise ConfigError("the duplicate probability must be between 0 and 1")
        if not MIN_BODY <= self.min_size <= self.max_size <= MAX_BODY:
            raise ConfigError(f"message sizes must be between {MIN_BODY} and {MAX_BODY} bytes")
        if min(self.relay_kills, self.client_kills, self.disconnects) < 0:
            raise ConfigError("fault counts must not be negative")
        if not 1 <= self.workers <= self.users:
            raise ConfigError("workers must be between 1 and the number of users")
        if self.timeout_s <= 0 or self.drain_s <= 0:
            raise ConfigError("timeouts must be positive")
        if self.client_state_limit_bytes <= 0:
            raise ConfigError("the client state limit must be positive")

    def __repr__(self) -> str:
        shown = {**self.to_json()}
        return f"SimConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON, for the event log. A password in a URL is left out (a
        replay then connects as the same user without it: trust auth on loopback,
        ``PGPASSWORD`` or ``~/.pgpass``)."""
        value = asdict(self)
        for name in ("database", "redis_url"):
            if value[name] is not None:
                value[name] = _without_password(value[name])
        return value

    @classmethod
    def from_json(cls, value: object) -> SimConfig:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: not a settings object, an unknown field, or a value out of range.
        """
        if not isinstance(value, dict):
            raise ConfigError("the configuration is not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            return cls(**value)
        except TypeError as exc:
            raise ConfigError(f"bad settings: {exc}") from exc


@dataclass(frozen=True)
class Action:
    """One step of a schedule: a send, or a fault.

    ``send``: ``sid`` (0, 1, ...), ``sender`` (a device label such as ``"u003/1"``),
    ``to`` (a user id), ``size``. ``client_kill``: ``target`` is the worker index.
    ``disconnect``: ``target`` is a device label. ``relay_kill`` has no target.
    """

    kind: ActionKind
    sid: int = -1
    sender: str = ""
    to: str = ""
    size: int = 0
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        """Every field, as JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> Action:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: not an action, an unknown field, or a field of the wrong type.
        """
        if not isinstance(value, dict) or value.get("kind") not in _KINDS:
            raise ConfigError(f"not a schedule action: {value!r:.80}")
        types = {"kind": str, "sid": int, "sender": str, "to": str, "size": int, "target": str}
        for name, item in value.items():
            if name not in types:
                raise ConfigError(f"unknown field {name!r} in a schedule action")
            if type(item) is not types[name]:
                raise ConfigError(f"the schedule action field {name!r} has the wrong type")
        return cls(**value)


@dataclass(frozen=True)
class Schedule:
    """The run's steps in order, and each user's worker."""

    actions: tuple[Action, ...]
    workers: tuple[tuple[str, ...], ...]
    """User ids hosted by each worker process."""
    canary_keys: dict[int, str] = field(default_factory=dict, compare=False)
    """Each message's canary suffix (hex), by simulation id."""

    def sends(self) -> Iterator[Action]:
        return (a for a in self.actions if a.kind == "send")

    def to_json(self) -> dict[str, Any]:
        return {
            "actions": [a.to_json() for a in self.actions],
            "workers": [list(w) for w in self.workers],
            "canaries": {str(k): v for k, v in self.canary_keys.items()},
        }

    @classmethod
    def from_json(cls, value: object) -> Schedule:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: malformed.
        """
        if not isinstance(value, dict):
            raise ConfigError("the schedule is not a JSON object")
        unknown = set(value) - {"actions", "workers", "canaries"}
        if unknown:
            raise ConfigError(f"unknown schedule fields: {', '.join(sorted(map(str, unknown)))}")
        try:
            actions = tuple(Action.from_json(a) for a in value["actions"])
            workers = tuple(tuple(str(u) for u in w) for w in value["workers"])
            canaries = {int(k): str(v) for k, v in value["canaries"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"bad schedule: {exc!r:.120}") from exc
        return cls(actions, workers, canaries)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def user_ids(count: int) -> list[str]:
    """The simulated users' ids: ``u000``, ``u001``, ..."""
    return [f"u{i:03d}" for i in range(count)]


def message_body(sid: int, canary_key: str, size: int) -> str:
    """The body of message ``sid``: its canary, its id, filler up to ``size`` bytes."""
    head = f"{CANARY_PREFIX.decode()}sim{sid:05d}-{canary_key}|sim={sid}|"
    filler = random.Random(sid).choices(_FILLER, k=max(0, size - len(head)))  # noqa: S311
    return head + "".join(filler)


def canary(sid: int, canary_key: str) -> bytes:
    """The canary of message ``sid`` (what the scanner looks for)."""
    return CANARY_PREFIX + f"sim{sid:05d}-{canary_key}".encode()


def _conversations(users: list[str], per_user: int, rng: random.Random) -> list[tuple[str, str]]:
    """1:1 conversations so that every user has at least ``per_user`` of them."""
    pairs: set[tuple[str, str]] = set()
    for user in users:
        mine = [p for p in pairs if user in p]
        others = [u for u in users if u != user and tuple(sorted((user, u))) not in pairs]
        rng.shuffle(others)
        for other in others[: max(0, per_user - len(mine))]:
            a, b = sorted((user, other))
            pairs.add((a, b))
    return sorted(pairs)


def _spread(count: int, total: int, rng: random.Random, *, offset: float) -> list[int]:
    """``count`` positions in ``1 .. total`` (a fault at ``p`` comes after ``p`` sends),
    evenly spread with some jitter."""
    if count == 0 or total == 0:
        return []
    step = total / (count + 1)
    return sorted(
        min(total, max(1, int(step * (i + offset) + rng.uniform(-step / 4, step / 4))))
        for i in range(1, count + 1)
    )


def make_schedule(config: SimConfig) -> Schedule:
    """The schedule ``config`` and its seed determine (the same every time)."""
    rng = random.Random(config.seed)  # noqa: S311 - a reproducible schedule, not a secret
    users = user_ids(config.users)
    per_worker = [users[w :: config.workers] for w in range(config.workers)]
    pairs = _conversations(users, config.conversations, rng)
    faults: dict[int, list[Action]] = {}
    for position in _spread(config.relay_kills, config.messages, rng, offset=0.0):
        faults.setdefault(position, []).append(Action("relay_kill"))
    for position in _spread(config.client_kills, config.messages, rng, offset=0.5):
        faults.setdefault(position, []).append(
            Action("client_kill", target=str(rng.randrange(config.workers)))
        )
    for _ in range(config.disconnects if config.messages else 0):
        device = f"{rng.choice(users)}/{rng.randrange(config.devices_per_user)}"
        faults.setdefault(rng.randint(1, config.messages), []).append(
            Action("disconnect", target=device)
        )
    actions: list[Action] = []
    canaries: dict[int, str] = {}
    for sid in range(config.messages):
        actions.extend(faults.get(sid, []))
        a, b = rng.choice(pairs)
        sender, to = (a, b) if rng.random() < 0.5 else (b, a)
        canaries[sid] = rng.randbytes(24).hex()
        actions.append(
            Action(
                "send",
                sid=sid,
                sender=f"{sender}/{rng.randrange(config.devices_per_user)}",
                to=to,
                size=rng.randint(config.min_size, config.max_size),
            )
        )
    actions.extend(faults.get(config.messages, []))  # after the last send
    return Schedule(tuple(actions), tuple(tuple(g) for g in per_worker), canaries)
