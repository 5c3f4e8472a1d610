"""The relay's direct encoders of ``Deliver`` and ``Accepted`` (server/session.py)
write exactly the bytes of the frame classes' generic canonical encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2ee.errors import InvalidArgument
from e2ee.relay_frames import Accepted, Deliver, decode_relay_frame
from server.session import accepted_frame, deliver_frame
from server.storage.base import QueuedMessage

# Every head length (1, 2, 3, 5 and 9 bytes) and its boundaries.
_UINTS = st.one_of(
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1]),
    st.integers(min_value=0, max_value=2**63 - 1),
)
_USERS = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)


@given(
    seq=_UINTS.filter(lambda n: n >= 1),
    user=_USERS,
    device=st.integers(min_value=0, max_value=2**32 - 1),
    at=_UINTS,
    ciphertext=st.binary(max_size=300) | st.sampled_from([b"\0" * 65535, b"\1" * 65536]),
)
def test_deliver_frame_is_the_canonical_encoding(
    seq: int, user: str, device: int, at: int, ciphertext: bytes
) -> None:
    encoded = deliver_frame(QueuedMessage(seq, user, device, at, ciphertext))
    expected = Deliver(seq, user, device, at, ciphertext)
    assert encoded == expected.to_bytes()
    assert decode_relay_frame(encoded) == expected


@given(client_msg_id=st.binary(min_size=16, max_size=16), at=_UINTS)
def test_accepted_frame_is_the_canonical_encoding(client_msg_id: bytes, at: int) -> None:
    encoded = accepted_frame(client_msg_id, at)
    expected = Accepted(client_msg_id, at)
    assert encoded == expected.to_bytes()
    assert decode_relay_frame(encoded) == expected


def test_values_outside_the_plain_cases_take_the_generic_encoder() -> None:
    assert deliver_frame(QueuedMessage(7, "é", 1, 2, b"x")) == (
        Deliver(7, "é", 1, 2, b"x").to_bytes()
    )
    assert accepted_frame(b"\1" * 16, True) == Accepted(b"\1" * 16, True).to_bytes()
    with pytest.raises(InvalidArgument):
        deliver_frame(QueuedMessage(2**64, "a", 1, 2, b"x"))
    with pytest.raises(InvalidArgument):
        deliver_frame(QueuedMessage(1, "a", 1, 2, bytearray(b"x")))  # type: ignore[arg-type]
    assert accepted_frame(b"\1" * 16, -1) == Accepted(b"\1" * 16, -1).to_bytes()
