"""Safety numbers and their QR payload (DESIGN 4.2).

libsignal's numeric fingerprint construction with version ``0x0001``, key encoding
``0x45 || master_pk`` and the user id as stable identifier::

    h = version(2 bytes, big-endian) || key || user_id
    repeat 5,200 times: h = SHA-512(h || key)

Each user's 30 digits are the first 30 bytes of ``h`` in six 5-byte big-endian
chunks, each ``mod 100000`` as five digits. The 60 shown digits put the smaller of
the two 30-digit strings first, so both users see the same number. The QR payload is
CBOR ``{0: version, 1: local fingerprint (first 32 bytes of h), 2: remote
fingerprint}``; :meth:`SafetyNumber.verify_qr` checks each half against the right
side, so swapped or duplicated halves fail.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from . import cbor
from .errors import DecodeError
from .identifiers import check_user_id
from .primitives import constant_time_equal

__all__ = ["FINGERPRINT_ITERATIONS", "FINGERPRINT_VERSION", "SafetyNumber", "fingerprint"]

FINGERPRINT_VERSION: Final = 1
FINGERPRINT_ITERATIONS: Final = 5_200
_KEY_TYPE: Final = b"\x45"
_QR_KEYS: Final = frozenset(range(3))


def fingerprint(user_id: str, master_pk: bytes, iterations: int = FINGERPRINT_ITERATIONS) -> bytes:
    """The 64-byte iterated SHA-512 fingerprint of one user's master key."""
    check_user_id(user_id)
    key = _KEY_TYPE + master_pk
    digest = FINGERPRINT_VERSION.to_bytes(2, "big") + key + user_id.encode("ascii")
    for _ in range(iterations):
        digest = hashlib.sha512(digest + key).digest()
    return digest


def _digits(fp: bytes) -> str:
    return "".join(f"{int.from_bytes(fp[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5))


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    """The safety number between our user and one contact."""

    local_fingerprint: bytes
    remote_fingerprint: bytes

    @classmethod
    def compute(
        cls, local_user: str, local_master_pk: bytes, remote_user: str, remote_master_pk: bytes
    ) -> SafetyNumber:
        """The safety number of two users' master keys (DESIGN 4.2)."""
        return cls(
            fingerprint(local_user, local_master_pk), fingerprint(remote_user, remote_master_pk)
        )

    @property
    def digits(self) -> str:
        """The 60 digits both users see (the smaller 30-digit half first)."""
        local, remote = _digits(self.local_fingerprint), _digits(self.remote_fingerprint)
        return local + remote if local <= remote else remote + local

    def display(self) -> str:
        """The 60 digits in twelve groups of five."""
        d = self.digits
        return " ".join(d[i : i + 5] for i in range(0, 60, 5))

    def qr_payload(self) -> bytes:
        """CBOR ``{0: version, 1: local fingerprint, 2: remote fingerprint}``."""
        return cbor.encode(
            {
                0: FINGERPRINT_VERSION,
                1: self.local_fingerprint[:32],
                2: self.remote_fingerprint[:32],
            }
        )

    def verify_digits(self, digits: str) -> bool:
        """Whether ``digits`` (spaces ignored) is this safety number."""
        cleaned = "".join(digits.split())
        return constant_time_equal(cleaned.encode(), self.digits.encode())

    def verify_qr(self, payload: bytes) -> bool:
        """Whether the contact's scanned QR payload matches: its *local* half must be
        our remote fingerprint and its *remote* half our local one.

        Raises:
            DecodeError: the payload is malformed or of another version.
        """
        m = cbor.expect_map(cbor.decode(payload, max_size=256), "safety number QR", _QR_KEYS)
        if cbor.field_int(m, 0, "version") != FINGERPRINT_VERSION:
            raise DecodeError("safety number QR: unknown version")
        theirs_local = cbor.field_bytes(m, 1, "local fingerprint", size=32)
        theirs_remote = cbor.field_bytes(m, 2, "remote fingerprint", size=32)
        ok_remote = constant_time_equal(theirs_local, self.remote_fingerprint[:32])
        ok_local = constant_time_equal(theirs_remote, self.local_fingerprint[:32])
        return ok_remote and ok_local
