"""The client's record of the relay sequence numbers it processed (``SeqWindow``):
what tells a relay's redelivery of an unacknowledged message (dropped silently) from a
replay under a number never processed (``ReplayDropped``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_sdk._client.records import SEQ_WINDOW, SeqWindow
from client_sdk.errors import StoreCorrupt


@given(st.lists(st.integers(min_value=1, max_value=3 * SEQ_WINDOW), max_size=60))
def test_the_window_answers_as_the_set_of_processed_numbers(seqs: list[int]) -> None:
    """Against a plain set: a number is processed iff it was marked and is within the
    window below the highest; the stored form round-trips."""
    window = SeqWindow()
    for seq in seqs:
        window.mark(seq)
        window = SeqWindow.from_bytes(window.to_bytes())
    last = max(seqs, default=0)
    assert window.last == last
    for seq in range(0, 3 * SEQ_WINDOW + 2):
        expected = seq in seqs and last - seq < SEQ_WINDOW
        assert window.processed(seq) == expected, seq


def test_a_huge_number_does_not_make_earlier_ones_processed() -> None:
    """A relay that delivers one message under a huge number first cannot make the
    numbers below it (never processed) pass for redeliveries."""
    window = SeqWindow()
    for seq in (1, 2, 3):
        window.mark(seq)
    window.mark(2**62)
    assert window.processed(2**62)
    assert not any(window.processed(seq) for seq in (1, 2, 3, 4, 2**62 - 1, 2**62 + 1))


def test_the_stored_forms() -> None:
    """Nothing stored: nothing processed. The 8-byte record of earlier versions (the
    highest number alone) reads as everything up to it processed, within the window.
    Any other size is a corrupt store."""
    assert not SeqWindow.from_bytes(None).processed(0)
    old = SeqWindow.from_bytes((5000).to_bytes(8, "big"))
    assert old.processed(5000) and old.processed(5000 - SEQ_WINDOW + 1)
    assert not old.processed(5000 - SEQ_WINDOW) and not old.processed(5001)
    assert len(old.to_bytes()) == 8 + SEQ_WINDOW // 8
    with pytest.raises(StoreCorrupt):
        SeqWindow.from_bytes(b"\x00" * 9)
