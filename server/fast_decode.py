"""Direct decoders of the two frames a busy client sends most, ``Send`` and ``Ack``.

Every message costs the relay a ``Send`` and (a share of) an ``Ack``; through the
generic canonical decoder (``e2ee.relay_frames.decode_client_frame``: CBOR into
values, a walk checking them against the data model, a re-encoding compared with the
input, then the frame's field checks) a 200-byte ``Send`` took about 11 us and an
``Ack`` about 5 us, several times the bare forwarder's whole cost per message.

:func:`fast_client_frame` reads the canonical bytes of these two frames in one pass:
every head must be the shortest one for its argument, the keys exactly those of the
frame in order, every field within the frame's limits (client message id size,
number of users, of devices, of sequence numbers; the user id syntax; device ids and
sequence numbers in range), no user or device repeated, and the input must end
exactly where the frame does. It answers the frame :func:`decode_client_frame` would,
or ``None`` for anything else (another frame type, a longer head, a limit, any
malformation), which the caller then hands to the generic decoder for its verdict and
its typed error. ``tests/server/test_fast_decode.py`` checks both directions: every
valid frame decodes to the same value, and no mutated input is accepted that the
generic decoder refuses, or decoded differently.
"""

from __future__ import annotations

import re
from typing import Final

from e2ee.identifiers import DEVICE_ID_MAX
from e2ee.relay_frames import (
    CLIENT_MSG_ID_SIZE,
    MAX_ACKS_PER_FRAME,
    MAX_ADDRESSED_USERS,
    MAX_RELAY_FRAME,
    Ack,
    FrameType,
    Send,
)

__all__ = ["fast_client_frame"]

_SEND_HEAD: Final = bytes((0xA3, 0x00, int(FrameType.SEND), 0x01, 0x40 | CLIENT_MSG_ID_SIZE))
"""A three-entry map, key 0 the type ``Send``, key 1 a byte string of the id's size."""
_ACK_HEAD: Final = bytes((0xA2, 0x00, int(FrameType.ACK), 0x01))
"""A two-entry map, key 0 the type ``Ack``, then key 1."""
_USER_ID: Final = re.compile(rb"[a-z0-9][a-z0-9._-]{0,62}")
"""``e2ee.identifiers.check_user_id``'s syntax, on the encoded bytes."""
_U63: Final = 2**63 - 1
_MINIMUM: Final = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}
"""The smallest argument each longer head (additional information 24-27) may carry."""
_WIDTH: Final = {24: 1, 25: 2, 26: 4, 27: 8}


class _Reject(Exception):
    """Not a canonical ``Send`` or ``Ack`` within the fast path's reach."""


def fast_client_frame(data: bytes) -> Send | Ack | None:
    """The ``Send`` or ``Ack`` that ``data`` canonically encodes, or ``None``: decode
    it with ``decode_client_frame`` (module docstring)."""
    if len(data) > MAX_RELAY_FRAME:
        return None
    try:
        if data.startswith(_SEND_HEAD):
            return _send(data)
        if data.startswith(_ACK_HEAD):
            return _ack(data)
    except (_Reject, IndexError):
        pass
    return None


def _argument(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """The argument of the head of major type ``major`` (shifted: ``0x40`` for byte
    strings) at ``pos``, and the position after the head; only the shortest head."""
    info = data[pos] - major
    if 0 <= info < 24:
        return info, pos + 1
    width = _WIDTH.get(info)
    if width is None:
        raise _Reject
    end = pos + 1 + width
    if end > len(data):
        raise _Reject
    value = int.from_bytes(data[pos + 1 : end], "big")
    if value < _MINIMUM[info]:
        raise _Reject
    return value, end


def _send(data: bytes) -> Send:
    pos = len(_SEND_HEAD)
    msg_id = data[pos : pos + CLIENT_MSG_ID_SIZE]
    pos += CLIENT_MSG_ID_SIZE
    if len(msg_id) != CLIENT_MSG_ID_SIZE or data[pos] != 0x02:
        raise _Reject
    count, pos = _argument(data, pos + 1, 0x80)
    if not 1 <= count <= MAX_ADDRESSED_USERS:
        raise _Reject
    addressed: list[tuple[str, tuple[tuple[int, bytes], ...]]] = []
    for _ in range(count):
        if data[pos] != 0x82:
            raise _Reject
        size, pos = _argument(data, pos + 1, 0x60)
        user = data[pos : pos + size]
        pos += size
        if len(user) != size or _USER_ID.fullmatch(user) is None:
            raise _Reject
        devices_count, pos = _argument(data, pos, 0x80)
        if devices_count > 23:  # more than a one-byte head: the generic decoder
            raise _Reject
        devices: list[tuple[int, bytes]] = []
        for _ in range(devices_count):
            if data[pos] != 0x82:
                raise _Reject
            device, pos = _argument(data, pos + 1, 0x00)
            if device > DEVICE_ID_MAX:
                raise _Reject
            size, pos = _argument(data, pos, 0x40)
            ciphertext = data[pos : pos + size]
            pos += size
            if len(ciphertext) != size:
                raise _Reject
            devices.append((device, ciphertext))
        if len({d for d, _ in devices}) != len(devices):
            raise _Reject
        addressed.append((user.decode("ascii"), tuple(devices)))
    if pos != len(data) or len({u for u, _ in addressed}) != len(addressed):
        raise _Reject
    return Send(msg_id, tuple(addressed))


def _ack(data: bytes) -> Ack:
    count, pos = _argument(data, len(_ACK_HEAD), 0x80)
    if not 1 <= count <= MAX_ACKS_PER_FRAME:
        raise _Reject
    seqs: list[int] = []
    for _ in range(count):
        seq, pos = _argument(data, pos, 0x00)
        if not 1 <= seq <= _U63:
            raise _Reject
        seqs.append(seq)
    if pos != len(data):
        raise _Reject
    return Ack(tuple(seqs))
