"""Unit tests of client_sdk.testing.ledger: intended deliveries, the delivery figures
(duplicates, redeliveries after a crash, misdeliveries, order, losses, sends in doubt),
completion, throughput and the event log (pure and in memory)."""

from __future__ import annotations

import json

import pytest

from client_sdk.testing.ledger import Arrival, Ledger, MessageState
from client_sdk.testing.workload import Action, Schedule, SimConfig, make_schedule

FIGURES = {
    "messages_sent",
    "intended_deliveries",
    "delivered",
    "lost",
    "duplicated",
    "misdelivered",
    "redelivered_after_crash",
    "undecryptable",
    "out_of_order",
    "resumed_sends",
    "not_sent",
    "send_errors",
}
# Two workers: users u000, u001 on worker A; u002 on worker B (2 devices each).
WORKER_A = ("u000/0", "u000/1", "u001/0", "u001/1")
WORKER_B = ("u002/0", "u002/1")


def send(sid: int, sender: str, to: str, size: int = 200) -> Action:
    return Action("send", sid=sid, sender=sender, to=to, size=size)


def ledger_of(*actions: Action, devices_per_user: int = 2) -> Ledger:
    return Ledger(Schedule(tuple(actions), (), {}), devices_per_user)


def one_message() -> Ledger:
    """Message 0 from u000/0 to u001: intended for u001/0, u001/1 and u000/1."""
    return ledger_of(send(0, "u000/0", "u001"))


def sent(ledger: Ledger, sid: int, t: float = 1.0) -> None:
    ledger.on_dispatched(sid)
    ledger.on_sending(sid, t)
    ledger.on_result(sid, "sent", msg_id=f"id{sid}", t=t + 0.01)


# --- intended deliveries ----------------------------------------------------------------


def test_intended_devices_are_the_recipients_and_the_senders_others() -> None:
    ledger = ledger_of(
        send(0, "u000/1", "u001"),
        Action("relay_kill"),
        send(1, "u002/0", "u000"),
        Action("disconnect", target="u000/0"),
        devices_per_user=3,
    )
    assert set(ledger.messages) == {0, 1}
    assert ledger.messages[0].intended == {"u001/0", "u001/1", "u001/2", "u000/0", "u000/2"}
    assert ledger.messages[1].intended == {"u000/0", "u000/1", "u000/2", "u002/1", "u002/2"}
    assert "u000/1" not in ledger.messages[0].intended
    assert ledger.intended_deliveries == 10


def test_with_one_device_per_user_only_the_recipient_is_intended() -> None:
    ledger = ledger_of(send(0, "u000/0", "u001"), devices_per_user=1)
    assert ledger.messages[0].intended == {"u001/0"}
    assert ledger.intended_deliveries == 1


def test_ledger_of_a_generated_schedule() -> None:
    config = SimConfig(seed=3, users=6, devices_per_user=3, messages=200, workers=2)
    ledger = Ledger(make_schedule(config), config.devices_per_user)
    assert sorted(ledger.messages) == list(range(config.messages))
    assert all(len(m.intended) == 5 for m in ledger.messages.values())
    assert ledger.intended_deliveries == 5 * config.messages
    assert all(m.outcome == "pending" for m in ledger.messages.values())
    assert not ledger.complete()


# --- deliveries -------------------------------------------------------------------------


def test_first_delivery_counts() -> None:
    ledger = one_message()
    ledger.on_sending(0, 10.0)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=10.25)
    state = ledger.messages[0]
    assert state.deliveries == {"u001/0": Arrival(10.25, 500, 500)}
    assert ledger.delivered == 1
    assert ledger.arrivals == [10.25]
    assert ledger.latencies_ms == [pytest.approx(250.0)]
    assert ledger.duplicated == ledger.misdelivered == ledger.out_of_order == 0


def test_latency_needs_a_sending_time_and_is_never_negative() -> None:
    ledger = ledger_of(send(0, "u000/0", "u001"), send(1, "u000/0", "u001"))
    ledger.on_recv("u001/0", 0, seq=1, relay_ms=1, t=5.0)
    assert ledger.latencies_ms == []
    ledger.on_sending(1, 9.0)
    ledger.on_recv("u001/0", 1, seq=2, relay_ms=2, t=8.0)
    assert ledger.latencies_ms == [0.0]
    assert ledger.delivered == 2


def test_a_second_delivery_in_one_process_life_is_a_duplicate() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    ledger.on_recv("u001/0", 0, seq=400, relay_ms=400, t=2.0)
    assert ledger.duplicated == 1
    assert ledger.delivered == 1
    assert ledger.messages[0].deliveries == {"u001/0": Arrival(1.0, 500, 500)}
    assert ledger.arrivals == [1.0]
    assert ledger.out_of_order == 0


def test_a_delivery_after_done_is_a_duplicate() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    ledger.on_done("u001/0", 0)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=2.0)
    assert ledger.duplicated == 1
    assert ledger.redelivered_after_crash == 0


def test_the_same_message_on_two_devices_is_no_duplicate() -> None:
    ledger = one_message()
    for label in ("u001/0", "u001/1", "u000/1"):
        ledger.on_recv(label, 0, seq=500, relay_ms=500, t=1.0)
    assert ledger.delivered == 3
    assert ledger.duplicated == 0


def test_a_redelivery_after_a_crash_before_done_is_counted_once() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    assert ledger.on_worker_killed(WORKER_A) == []
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=2.0)
    assert ledger.redelivered_after_crash == 1
    assert ledger.duplicated == 0
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=3.0)
    assert ledger.redelivered_after_crash == 1
    assert ledger.duplicated == 1
    assert ledger.delivered == 1
    assert ledger.messages[0].deliveries == {"u001/0": Arrival(1.0, 500, 500)}


def test_two_kills_before_the_redelivery_allow_one_redelivery() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=2.0)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=3.0)
    assert ledger.redelivered_after_crash == 1
    assert ledger.duplicated == 1


def test_each_life_that_dies_before_done_allows_a_redelivery() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=2.0)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=3.0)
    assert ledger.redelivered_after_crash == 2
    assert ledger.duplicated == 0
    ledger.on_done("u001/0", 0)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=4.0)
    assert ledger.redelivered_after_crash == 2
    assert ledger.duplicated == 1


def test_a_redelivery_after_done_and_a_crash_is_a_duplicate() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    ledger.on_done("u001/0", 0)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=2.0)
    assert ledger.redelivered_after_crash == 0
    assert ledger.duplicated == 1


def test_a_crash_of_another_worker_does_not_excuse_a_redelivery() -> None:
    ledger = one_message()
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=1.0)
    ledger.on_worker_killed(WORKER_B)
    ledger.on_recv("u001/0", 0, seq=500, relay_ms=500, t=2.0)
    assert ledger.redelivered_after_crash == 0
    assert ledger.duplicated == 1


def test_a_crash_excuses_only_the_killed_devices() -> None:
    ledger = ledger_of(send(0, "u000/0", "u002"))
    ledger.on_recv("u002/0", 0, seq=1, relay_ms=1, t=1.0)
    ledger.on_recv("u000/1", 0, seq=1, relay_ms=1, t=1.0)
    ledger.on_worker_killed(WORKER_B)
    ledger.on_recv("u002/0", 0, seq=1, relay_ms=1, t=2.0)
    ledger.on_recv("u000/1", 0, seq=1, relay_ms=1, t=2.0)
    assert ledger.redelivered_after_crash == 1
    assert ledger.duplicated == 1


@pytest.mark.parametrize(
    ("label", "sid"),
    [
        ("u000/0", 0),  # the sending device itself
        ("u002/0", 0),  # a user outside the conversation
        ("u001/2", 0),  # a device index the run does not have
        ("u001/0", 9),  # no such message
        ("u001/0", -1),  # a body without a simulation id
    ],
)
def test_a_delivery_to_a_device_not_intended_is_misdelivered(label: str, sid: int) -> None:
    ledger = one_message()
    ledger.on_recv(label, sid, seq=500, relay_ms=500, t=1.0)
    ledger.on_recv(label, sid, seq=500, relay_ms=500, t=2.0)
    assert ledger.misdelivered == 2
    assert ledger.delivered == 0
    assert ledger.duplicated == 0
    assert ledger.messages[0].deliveries == {}
    assert ledger.arrivals == []
    assert ledger.figures()["misdelivered"] == 2


# --- order ------------------------------------------------------------------------------


def test_out_of_order_when_relay_time_goes_backwards_on_one_device() -> None:
    ledger = ledger_of(*(send(sid, "u000/0", "u001") for sid in range(4)))
    ledger.on_recv("u001/0", 0, seq=100, relay_ms=100, t=1.0)
    ledger.on_recv("u001/0", 1, seq=100, relay_ms=100, t=1.1)  # same millisecond: in order
    ledger.on_recv("u001/0", 2, seq=300, relay_ms=300, t=1.2)
    assert ledger.out_of_order == 0
    ledger.on_recv("u001/0", 3, seq=200, relay_ms=200, t=1.3)
    assert ledger.out_of_order == 1
    assert ledger.figures()["out_of_order"] == 1


def test_order_is_per_device() -> None:
    ledger = ledger_of(*(send(sid, "u000/0", "u001") for sid in range(3)))
    ledger.on_recv("u001/0", 1, seq=200, relay_ms=200, t=1.0)
    ledger.on_recv("u001/1", 0, seq=100, relay_ms=100, t=1.1)
    ledger.on_recv("u000/1", 0, seq=100, relay_ms=100, t=1.2)
    ledger.on_recv("u001/1", 1, seq=200, relay_ms=200, t=1.3)
    ledger.on_recv("u001/0", 2, seq=300, relay_ms=300, t=1.4)
    assert ledger.out_of_order == 0


def test_repeated_deliveries_do_not_count_as_out_of_order() -> None:
    ledger = ledger_of(send(0, "u000/0", "u001"), send(1, "u000/0", "u001"))
    ledger.on_recv("u001/0", 0, seq=100, relay_ms=100, t=1.0)
    ledger.on_recv("u001/0", 1, seq=200, relay_ms=200, t=1.1)
    ledger.on_worker_killed(WORKER_A)
    ledger.on_recv("u001/0", 0, seq=100, relay_ms=100, t=2.0)  # redelivered after the crash
    ledger.on_recv("u001/0", 0, seq=100, relay_ms=100, t=2.1)  # duplicated
    assert ledger.out_of_order == 0
    assert ledger.redelivered_after_crash == 1
    assert ledger.duplicated == 1


# --- sends and losses -------------------------------------------------------------------


def test_send_reports_update_the_message() -> None:
    ledger = one_message()
    state = ledger.messages[0]
    ledger.on_dispatched(0)
    assert (state.outcome, state.attempts) == ("pending", 0)
    ledger.on_sending(0, 1.0)
    assert (state.outcome, state.attempts, state.sending_t) == ("sending", 1, 1.0)
    ledger.on_result(0, "unsent", error="ConnectionClosed")
    assert (state.outcome, state.error, state.confirmed_t) == ("unsent", "ConnectionClosed", None)
    assert ledger.unsent() == [0]
    ledger.on_dispatched(0)
    assert state.outcome == "pending"
    assert ledger.unsent() == []
    ledger.on_sending(0, 2.0)
    assert (state.attempts, state.sending_t) == (2, 1.0)
    ledger.on_result(0, "queued", msg_id="abcd", t=2.5)
    assert (state.outcome, state.msg_id, state.confirmed_t, state.error) == (
        "queued",
        "abcd",
        2.5,
        None,
    )
    ledger.on_result(0, "sent", t=3.0)
    assert (state.outcome, state.msg_id, state.confirmed_t) == ("sent", "abcd", 3.0)


def test_lost_counts_only_committed_messages() -> None:
    ledger = ledger_of(*(send(sid, "u000/0", "u001") for sid in range(6)))
    sent(ledger, 0)  # sent, delivered to one device of three
    ledger.on_recv("u001/0", 0, seq=1, relay_ms=1, t=2.0)
    ledger.on_dispatched(1)  # queued, delivered nowhere
    ledger.on_sending(1, 1.0)
    ledger.on_result(1, "queued", msg_id="q", t=1.5)
    sent(ledger, 2)  # sent and fully delivered
    for label in ("u001/0", "u001/1", "u000/1"):
        ledger.on_recv(label, 2, seq=2, relay_ms=2, t=2.0)
    ledger.on_dispatched(3)  # unsent
    ledger.on_sending(3, 1.0)
    ledger.on_result(3, "unsent", error="TransportError")
    ledger.on_dispatched(4)  # error
    ledger.on_sending(4, 1.0)
    ledger.on_result(4, "error", error="UnknownRecipient")
    # 5: never dispatched
    figures = ledger.figures()
    assert set(figures) == FIGURES
    assert figures["lost"] == 2 + 3
    assert figures["messages_sent"] == 3
    assert figures["send_errors"] == 1
    assert figures["not_sent"] == 2
    assert figures["resumed_sends"] == 0
    assert figures["delivered"] == 4
    assert figures["intended_deliveries"] == 18


def test_a_send_in_progress_at_a_kill_is_handed_back_with_its_id() -> None:
    ledger = one_message()
    msg_id = ledger.messages[0].msg_id_to_use
    assert len(bytes.fromhex(msg_id)) == 16
    ledger.on_dispatched(0)
    ledger.on_sending(0, 1.0)
    assert ledger.on_worker_killed(WORKER_A) == [0]
    assert ledger.figures()["resumed_sends"] == 1
    assert not ledger.complete()
    ledger.on_dispatched(0)
    ledger.on_sending(0, 2.0)
    ledger.on_result(0, "sent", msg_id=msg_id, t=2.5)
    assert ledger.messages[0].msg_id_to_use == msg_id  # the same id on every attempt
    assert ledger.messages[0].sending_t == 1.0  # latency from the first attempt
    assert ledger.figures()["lost"] == 3
    deliver_everywhere(ledger, 0)
    assert ledger.complete() and ledger.figures()["lost"] == 0


def test_a_kill_of_another_worker_leaves_a_send_in_progress() -> None:
    ledger = one_message()
    ledger.on_dispatched(0)
    ledger.on_sending(0, 1.0)
    assert ledger.on_worker_killed(WORKER_B) == []
    assert ledger.messages[0].outcome == "sending"
    assert ledger.figures()["resumed_sends"] == 0


def test_a_kill_hands_back_the_sends_its_devices_had_not_started() -> None:
    ledger = ledger_of(
        send(0, "u000/0", "u002"),  # A, dispatched, not started: handed back
        send(1, "u001/1", "u000"),  # A, dispatched, not started: handed back
        send(2, "u000/1", "u002"),  # A, not dispatched yet
        send(3, "u000/0", "u002"),  # A, in progress: handed back (resumed)
        send(4, "u001/0", "u002"),  # A, sent
        send(5, "u001/0", "u002"),  # A, unsent (retried by the orchestrator)
        send(6, "u002/0", "u000"),  # B, dispatched, not started
        send(7, "u000/0", "u002"),  # A, error
    )
    for sid in (1, 0, 3, 4, 5, 6, 7):
        ledger.on_dispatched(sid)
    ledger.on_sending(3, 1.0)
    sent(ledger, 4)
    ledger.on_sending(5, 1.0)
    ledger.on_result(5, "unsent", error="TransportError")
    ledger.on_sending(7, 1.0)
    ledger.on_result(7, "error", error="UnknownRecipient")
    assert ledger.outstanding_sends() == 4  # 0, 1, 3 and 6
    assert ledger.on_worker_killed(WORKER_A) == [0, 1, 3]
    outcomes = {sid: state.outcome for sid, state in ledger.messages.items()}
    assert outcomes == {
        0: "pending",
        1: "pending",
        2: "pending",
        3: "sending",
        4: "sent",
        5: "unsent",
        6: "pending",
        7: "error",
    }
    assert ledger.outstanding_sends() == 4  # 0, 1, 3 (until handed over again) and 6
    assert ledger.on_worker_killed(WORKER_B) == [6]
    assert ledger.on_worker_killed([]) == []


def test_outstanding_sends_count_what_was_handed_over_and_not_answered() -> None:
    ledger = ledger_of(*(send(sid, "u000/0", "u001") for sid in range(3)))
    assert ledger.outstanding_sends() == 0
    ledger.on_dispatched(0)
    ledger.on_dispatched(1)
    assert ledger.outstanding_sends() == 2
    ledger.on_sending(0, 1.0)
    assert ledger.outstanding_sends() == 2
    ledger.on_result(0, "sent", msg_id="m", t=1.1)
    ledger.on_result(1, "unsent", error="TransportError")
    assert ledger.outstanding_sends() == 0
    ledger.on_dispatched(1)
    assert ledger.outstanding_sends() == 1
    assert ledger.dispatched == {0, 1}


# --- completion -------------------------------------------------------------------------


def deliver_everywhere(ledger: Ledger, sid: int) -> None:
    for label in sorted(ledger.messages[sid].intended):
        ledger.on_recv(label, sid, seq=sid, relay_ms=sid, t=5.0)


def test_complete_when_every_message_is_settled_and_every_committed_one_delivered() -> None:
    ledger = ledger_of(send(0, "u000/0", "u001"), send(1, "u001/0", "u000"))
    assert not ledger.complete()  # nothing sent
    sent(ledger, 0)
    assert not ledger.complete()  # 1 pending, 0 undelivered
    deliver_everywhere(ledger, 0)
    assert not ledger.complete()
    ledger.on_dispatched(1)
    assert not ledger.complete()
    ledger.on_sending(1, 2.0)
    assert not ledger.complete()
    ledger.on_result(1, "unsent", error="TransportError")
    assert not ledger.complete()  # to be sent again
    ledger.on_dispatched(1)
    ledger.on_sending(1, 3.0)
    ledger.on_result(1, "queued", msg_id="q", t=3.0)
    assert not ledger.complete()
    ledger.on_recv("u000/0", 1, seq=9, relay_ms=9, t=4.0)
    ledger.on_recv("u000/1", 1, seq=9, relay_ms=9, t=4.0)
    assert not ledger.complete()
    ledger.on_recv("u001/1", 1, seq=9, relay_ms=9, t=4.0)
    assert ledger.complete()
    assert ledger.figures()["lost"] == 0


def test_errors_are_settled_and_killed_sends_are_not() -> None:
    ledger = ledger_of(send(0, "u000/0", "u001"), send(1, "u001/0", "u000"))
    ledger.on_dispatched(0)
    ledger.on_sending(0, 1.0)
    ledger.on_result(0, "error", error="UnknownRecipient")
    ledger.on_dispatched(1)
    ledger.on_sending(1, 1.0)
    assert ledger.on_worker_killed(WORKER_A) == [1]
    assert not ledger.complete()  # 1 waits to be asked for again
    ledger.on_dispatched(1)
    ledger.on_sending(1, 2.0)
    ledger.on_result(1, "queued", msg_id="q", t=2.0)
    deliver_everywhere(ledger, 1)
    assert ledger.complete()


# --- counters, throughput and the event log ---------------------------------------------


def test_security_and_fatal_counters() -> None:
    ledger = one_message()
    for kind in ("Undecryptable", "Undecryptable", "IdentityChanged"):
        ledger.on_security(kind)
    ledger.on_fatal("Removed")
    assert ledger.security == {"Undecryptable": 2, "IdentityChanged": 1}
    assert ledger.fatal == {"Removed": 1}
    assert ledger.figures()["undecryptable"] == 2


def test_throughput_counts_first_deliveries_per_second_since_start() -> None:
    ledger = ledger_of(*(send(sid, "u000/0", "u001") for sid in range(5)))
    start = 100.0
    assert ledger.throughput(start) == []
    ledger.on_recv("u001/0", 0, seq=1, relay_ms=1, t=99.5)  # before the start: left out
    ledger.on_recv("u001/0", 1, seq=2, relay_ms=2, t=100.0)
    ledger.on_recv("u001/1", 1, seq=2, relay_ms=2, t=100.999)
    ledger.on_recv("u001/0", 2, seq=3, relay_ms=3, t=103.0)
    ledger.on_recv("u001/0", 2, seq=3, relay_ms=3, t=103.5)  # duplicated: left out
    ledger.on_recv("u001/0", 3, seq=4, relay_ms=4, t=103.9)
    assert ledger.throughput(start) == [(0.0, 2), (1.0, 0), (2.0, 0), (3.0, 2)]
    assert ledger.throughput(200.0) == []


def test_event_log_describes_every_message_in_sid_order() -> None:
    ledger = ledger_of(send(1, "u000/0", "u001", size=321), send(0, "u001/1", "u000", size=123))
    ledger.on_dispatched(1)
    ledger.on_sending(1, 1.0)
    ledger.on_result(1, "sent", msg_id="beef", t=1.5)
    ledger.on_recv("u001/1", 1, seq=777, relay_ms=777, t=2.0)
    ledger.on_recv("u000/1", 1, seq=778, relay_ms=778, t=2.5)
    log = ledger.event_log()
    assert json.loads(json.dumps(log)) == log
    assert [entry["sid"] for entry in log] == [0, 1]
    assert log[0] == {
        "sid": 0,
        "sender": "u001/1",
        "to": "u000",
        "size": 123,
        "outcome": "pending",
        "attempts": 0,
        "msg_id": None,
        "sending_t": None,
        "accepted_t": None,
        "error": None,
        "relay_accepted_ms": None,
        "delivered": {},
        "missing": ["u000/0", "u000/1", "u001/0"],
    }
    assert log[1] == {
        "sid": 1,
        "sender": "u000/0",
        "to": "u001",
        "size": 321,
        "outcome": "sent",
        "attempts": 1,
        "msg_id": "beef",
        "sending_t": 1.0,
        "accepted_t": 1.5,
        "error": None,
        "relay_accepted_ms": 777,
        "delivered": {
            "u001/1": {"t": 2.0, "relay_seq": 777, "relay_ms": 777},
            "u000/1": {"t": 2.5, "relay_seq": 778, "relay_ms": 778},
        },
        "missing": ["u001/0"],
    }


def test_message_state_json_of_a_failed_send() -> None:
    state = MessageState(send(4, "u000/0", "u001"), frozenset({"u001/0"}), "00" * 16)
    state.outcome = "error"
    state.error = "UnknownRecipient"
    entry = state.to_json()
    assert entry["outcome"] == "error"
    assert entry["error"] == "UnknownRecipient"
    assert entry["missing"] == ["u001/0"]
    assert entry["delivered"] == {}
