"""User ids, device ids and device addresses (DESIGN 4.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import DecodeError
from .primitives import Rng, default_rng

__all__ = [
    "DEVICE_ID_MAX",
    "Address",
    "InvalidUserId",
    "check_device_id",
    "check_user_id",
    "new_device_id",
]

DEVICE_ID_MAX: Final = 2**32 - 1
_USER_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)


class InvalidUserId(DecodeError):
    """A user id outside ``^[a-z0-9][a-z0-9._-]{0,62}$``."""


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is a valid user id (ASCII, lower case, 1-63 characters).

    Raises:
        InvalidUserId: it is not.
    """
    if not isinstance(user_id, str) or _USER_ID.fullmatch(user_id) is None:
        raise InvalidUserId("user id must match ^[a-z0-9][a-z0-9._-]{0,62}$")
    return user_id


def check_device_id(device_id: object) -> int:
    """Return ``device_id`` if it is an unsigned 32-bit integer.

    Raises:
        DecodeError: it is not.
    """
    if type(device_id) is not int or not 0 <= device_id <= DEVICE_ID_MAX:
        raise DecodeError("device id must be an unsigned 32-bit integer")
    return device_id


def new_device_id(used: frozenset[int] | set[int], rng: Rng = default_rng) -> int:
    """A random device id not in ``used`` (ids are never reused within an account)."""
    while True:
        candidate = int.from_bytes(rng(4), "big")
        if candidate not in used:
            return candidate


@dataclass(frozen=True, slots=True)
class Address:
    """One device of one user: where a session lives."""

    user_id: str
    device_id: int

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_device_id(self.device_id)

    def __str__(self) -> str:
        return f"{self.user_id}.{self.device_id}"
