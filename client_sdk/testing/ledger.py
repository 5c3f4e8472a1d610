"""What happened to every message of a simulation, and the invariants over it.

The orchestrator feeds the :class:`Ledger` every report its client processes make
(:mod:`client_sdk.testing.worker`) and every fault it injects; the ledger answers
whether delivery is complete and, at the end, the figures:

* **intended deliveries**: each message goes to every device of its recipient and to
  every *other* device of its sender (the SDK's ``sync_sent`` copy);
* **lost**: an intended delivery of a *committed* message (``send`` returned, or raised
  ``MessageQueued``/``SendFailed``, which leave it in the outbox) that never arrived;
* **duplicated**: a message yielded to a device again after the app marked it done, or
  twice within one life of its process;
* **redelivered after crash**: yielded again after the receiving process was killed
  between yielding it and marking it done (the SDK's documented at-least-once to the app
  until ``done()``: not a duplicate);
* **undecryptable**: ``Undecryptable`` security events;
* **out of order**: a device got a message the relay queued before one it had got
  already (its relay sequence number is below the highest this device has seen: the
  relay's per-device queue is FIFO in acceptance order, DESIGN 5);
* **resumed sends**: sends in progress when their process was killed; the app (the
  orchestrator) asks for them again with the same client message id, which the SDK
  answers with the message it committed, if it had, or sends anew (never twice).
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from .workload import Action, Schedule

__all__ = ["Arrival", "Ledger", "MessageState", "Outcome"]

Outcome = Literal["pending", "sending", "sent", "queued", "unsent", "error"]
COMMITTED: Final = frozenset({"sent", "queued"})
SECURITY_FAILURES: Final = frozenset(
    {
        "Undecryptable",
        "IdentityChanged",
        "DeviceListEquivocation",
        "KeyCheckMismatch",
        "MessagesMissing",
        "UnknownPayload",
        "RetryRequestDropped",
        "ReplayDropped",
    }
)
"""Security events a run without a malicious relay must never produce."""


class Arrival(NamedTuple):
    """A message's first arrival at one device."""

    t: float
    """Monotonic clock of the machine (comparable across its processes)."""
    seq: int
    """The relay's sequence number in that device's queue."""
    relay_ms: int
    """The relay's acceptance time."""


@dataclass
class MessageState:
    """One message's life: the send, its outcome, and where it arrived."""

    action: Action
    intended: frozenset[str]
    msg_id_to_use: str
    """The client message id the app chose for it (hex), the same on every attempt."""
    outcome: Outcome = "pending"
    attempts: int = 0
    msg_id: str | None = None
    sending_t: float | None = None
    confirmed_t: float | None = None
    error: str | None = None
    deliveries: dict[str, Arrival] = field(default_factory=dict)
    """First arrival per device."""

    def to_json(self) -> dict[str, Any]:
        return {
            "sid": self.action.sid,
            "sender": self.action.sender,
            "to": self.action.to,
            "size": self.action.size,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "msg_id": self.msg_id,
            "sending_t": self.sending_t,
            "accepted_t": self.confirmed_t,
            "error": self.error,
            "relay_accepted_ms": next((a.relay_ms for a in self.deliveries.values()), None),
            "delivered": {
                d: {"t": a.t, "relay_seq": a.seq, "relay_ms": a.relay_ms}
                for d, a in self.deliveries.items()
            },
            "missing": sorted(self.intended - set(self.deliveries)),
        }


class Ledger:
    """The orchestrator's record of a run (single-threaded: one event loop)."""

    def __init__(self, schedule: Schedule, devices_per_user: int) -> None:
        self.messages: dict[int, MessageState] = {}
        for action in schedule.sends():
            sender_user = action.sender.split("/")[0]
            intended = {f"{action.to}/{i}" for i in range(devices_per_user)}
            intended |= {f"{sender_user}/{i}" for i in range(devices_per_user)}
            intended.discard(action.sender)
            self.messages[action.sid] = MessageState(
                action, frozenset(intended), secrets.token_bytes(16).hex()
            )
        self.intended_deliveries = sum(len(m.intended) for m in self.messages.values())
        self.delivered = 0
        self.duplicated = 0
        self.redelivered_after_crash = 0
        self.misdelivered = 0
        self.out_of_order = 0
        self.security: collections.Counter[str] = collections.Counter()
        self.fatal: collections.Counter[str] = collections.Counter()
        self.resumed = 0
        """Sends in progress at a client kill, asked for again with their id."""
        self.dispatched: set[int] = set()
        """Sends handed to a client process (a re-handed one stays in)."""
        self._received: set[tuple[str, int]] = set()
        self._done: set[tuple[str, int]] = set()
        self._crash_pending: set[tuple[str, int]] = set()
        self._last_seq: dict[str, int] = {}
        self.arrivals: list[float] = []
        self.latencies_ms: list[float] = []

    # --- sends --------------------------------------------------------------------------

    def on_sending(self, sid: int, t: float) -> None:
        state = self.messages[sid]
        state.outcome = "sending"
        state.attempts += 1
        if state.sending_t is None:
            state.sending_t = t

    def on_result(
        self, sid: int, outcome: Outcome, *, msg_id: str = "", t: float = 0.0, error: str = ""
    ) -> None:
        """``sent``/``queued`` (committed), ``unsent`` (nothing committed: to send
        again) or ``error``."""
        state = self.messages[sid]
        state.outcome = outcome
        state.msg_id = msg_id or state.msg_id
        state.error = error or None
        if outcome in COMMITTED:
            state.confirmed_t = t

    def on_worker_killed(self, labels: Iterable[str]) -> list[int]:
        """A client process died with these devices: messages yielded but not done may
        come again. Returns the sends it was asked for and had not answered (started or
        not), to ask the restarted process for again (with the same message ids)."""
        hosted = set(labels)
        self._crash_pending |= {key for key in self._received - self._done if key[0] in hosted}
        again: list[int] = []
        for sid, state in self.messages.items():
            if state.action.sender not in hosted or sid not in self.dispatched:
                continue
            if state.outcome == "sending":
                self.resumed += 1
                again.append(sid)
            elif state.outcome == "pending":
                again.append(sid)
        return sorted(again)

    def on_dispatched(self, sid: int) -> None:
        """The send was handed to its client process."""
        self.dispatched.add(sid)
        self.messages[sid].outcome = "pending"

    # --- arrivals -----------------------------------------------------------------------

    def on_recv(self, label: str, sid: int, *, seq: int, relay_ms: int, t: float) -> None:
        """Device ``label`` got message ``sid``: the relay's sequence number in its queue,
        the relay's acceptance time, and when (monotonic clock)."""
        key = (label, sid)
        state = self.messages.get(sid)
        if state is None or label not in state.intended:
            self.misdelivered += 1
            return
        if key in self._received:
            if key in self._crash_pending:
                self._crash_pending.discard(key)
                self.redelivered_after_crash += 1
            else:
                self.duplicated += 1
            return
        self._received.add(key)
        state.deliveries[label] = Arrival(t, seq, relay_ms)
        self.delivered += 1
        self.arrivals.append(t)
        if state.sending_t is not None:
            self.latencies_ms.append(max(0.0, (t - state.sending_t) * 1000.0))
        if seq < self._last_seq.get(label, 0):
            self.out_of_order += 1
        self._last_seq[label] = max(seq, self._last_seq.get(label, 0))

    def on_done(self, label: str, sid: int) -> None:
        self._done.add((label, sid))
        self._crash_pending.discard((label, sid))

    def on_security(self, kind: str) -> None:
        self.security[kind] += 1

    def on_fatal(self, error: str) -> None:
        self.fatal[error] += 1

    # --- state --------------------------------------------------------------------------

    def unsent(self) -> list[int]:
        return [sid for sid, s in self.messages.items() if s.outcome == "unsent"]

    def outstanding_sends(self) -> int:
        """Sends handed to a client process and not answered yet."""
        return sum(
            1 for sid in self.dispatched if self.messages[sid].outcome in ("sending", "pending")
        )

    def complete(self) -> bool:
        """Every message settled and every committed one fully delivered."""
        for state in self.messages.values():
            if state.outcome in ("pending", "sending", "unsent"):
                return False
            if state.outcome in COMMITTED and len(state.deliveries) < len(state.intended):
                return False
        return True

    def figures(self) -> dict[str, int]:
        """The counts the report shows."""
        lost = not_sent = errors = 0
        for state in self.messages.values():
            missing = len(state.intended) - len(state.deliveries)
            if state.outcome in COMMITTED:
                lost += missing
            elif state.outcome == "error":
                errors += 1
            else:
                not_sent += 1
        return {
            "messages_sent": sum(1 for s in self.messages.values() if s.outcome in COMMITTED),
            "intended_deliveries": self.intended_deliveries,
            "delivered": self.delivered,
            "lost": lost,
            "duplicated": self.duplicated,
            "misdelivered": self.misdelivered,
            "redelivered_after_crash": self.redelivered_after_crash,
            "undecryptable": self.security["Undecryptable"],
            "out_of_order": self.out_of_order,
            "resumed_sends": self.resumed,
            "not_sent": not_sent,
            "send_errors": errors,
        }

    def throughput(self, start: float) -> list[tuple[float, int]]:
        """Messages decrypted in each second since ``start``."""
        per_second: collections.Counter[int] = collections.Counter(
            int(t - start) for t in self.arrivals if t >= start
        )
        if not per_second:
            return []
        return [(float(s), per_second[s]) for s in range(max(per_second) + 1)]

    def event_log(self) -> list[dict[str, Any]]:
        """Per message: sent, accepted, relay acceptance time, delivered (per device)."""
        return [self.messages[sid].to_json() for sid in sorted(self.messages)]
