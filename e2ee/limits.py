"""Every limit of the protocol core, each with its reason (DESIGN 4.4, CONVENTIONS 10).

Limits are configuration, not state: they are never serialized with a session
and are checked before any work is done.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ARCHIVED_SESSION_IDLE_MS",
    "DAY_MS",
    "DEVICE_LIST_RESIGN_MS",
    "DEVICE_LIST_STALE_MS",
    "MAX_CBOR_DEPTH",
    "MAX_DEVICES_PER_LIST",
    "MAX_ENVELOPE_SIZE",
    "MAX_PLAINTEXT",
    "MAX_RECEIVING_CHAINS",
    "MAX_SEEN_BASE_KEYS",
    "MAX_SEEN_DIGESTS",
    "MAX_SESSIONS_PER_DEVICE",
    "MAX_SKIP",
    "MAX_STATE_SIZE",
    "MAX_STORED_SKIPPED",
    "MAX_STRUCTURE_SIZE",
    "ONE_TIME_PREKEY_BATCH",
    "ONE_TIME_PREKEY_LOW",
    "ONE_TIME_PREKEY_MAX_AGE_MS",
    "PAYLOAD_PADDING_BLOCK",
    "SIGNED_PREKEY_MAX_AGE_MS",
    "SIGNED_PREKEY_RETENTION_MIN_MS",
    "SIGNED_PREKEY_ROTATION_MS",
    "SKIPPED_KEY_MAX_AGE_MS",
]

DAY_MS: Final = 86_400_000

# Double Ratchet (DESIGN 4.4).
MAX_SKIP: Final = 1_000
"""Most message keys one incoming message may make us derive, (PN - Nr) + N:
bounds the work an attacker can force per message."""
MAX_STORED_SKIPPED: Final = 2_000
"""Skipped message keys kept per session; the oldest is evicted beyond this."""
MAX_RECEIVING_CHAINS: Final = 5
"""Receiving chains kept per session; skipped keys of older chains are dropped."""
MAX_SESSIONS_PER_DEVICE: Final = 5
"""Sessions kept per peer device: one active, the rest archived."""
MAX_SEEN_DIGESTS: Final = 2_000
"""Digests of decrypted envelopes kept per session to tell a duplicate apart."""
MAX_PLAINTEXT: Final = 64 * 1024
"""Largest plaintext one message carries; larger content goes as an attachment."""
SKIPPED_KEY_MAX_AGE_MS: Final = 30 * DAY_MS
"""Skipped message keys are deleted after this long."""
ARCHIVED_SESSION_IDLE_MS: Final = 30 * DAY_MS
"""Archived sessions are deleted after this long without use."""

# Prekeys (DESIGN 4.2, 4.3, 4.4).
SIGNED_PREKEY_ROTATION_MS: Final = 7 * DAY_MS
"""A device replaces its signed prekey this often."""
SIGNED_PREKEY_MAX_AGE_MS: Final = 30 * DAY_MS
"""An initiator refuses a signed prekey older than this (``StalePreKey``)."""
SIGNED_PREKEY_RETENTION_MIN_MS: Final = 35 * DAY_MS
"""Superseded signed prekey private keys live at least this long after rotation
(``max(35 days, relay TTL + 5 days)``), so delayed pre-key messages still decrypt."""
ONE_TIME_PREKEY_BATCH: Final = 100
"""One-time prekeys (EC and KEM) are generated and uploaded in batches of this size."""
ONE_TIME_PREKEY_LOW: Final = 25
"""Below this many one-time prekeys of a kind on the relay, a device refills."""
ONE_TIME_PREKEY_MAX_AGE_MS: Final = 90 * DAY_MS
"""Unused one-time prekey private keys are deleted after this long (once a newer
batch has been uploaded)."""
MAX_SEEN_BASE_KEYS: Final = 10_000
"""Base keys of pre-key messages without a one-time prekey remembered per device;
past this the device rotates its signed prekey and last-resort KEM key."""

# Device lists (DESIGN 4.2).
DEVICE_LIST_RESIGN_MS: Final = 7 * DAY_MS
"""The primary device re-signs its device list at least this often."""
DEVICE_LIST_STALE_MS: Final = 30 * DAY_MS
"""A device list older than this is reported as stale (sending continues)."""
MAX_DEVICES_PER_LIST: Final = 100
"""Most devices one account may have: bounds the work of checking a list."""

# Encodings (DESIGN 4.1).
MAX_STRUCTURE_SIZE: Final = 256 * 1024
"""Largest CBOR structure (device list, bundle, payload) the decoder accepts."""
MAX_ENVELOPE_SIZE: Final = MAX_PLAINTEXT + 4 * 1024
"""Largest message envelope: a full padded plaintext plus headers and tag."""
MAX_STATE_SIZE: Final = 16 * 1024 * 1024
"""Largest serialized state object (sessions with all their skipped keys)."""
MAX_CBOR_DEPTH: Final = 16
"""Deepest nesting the strict CBOR decoder follows."""
PAYLOAD_PADDING_BLOCK: Final = 160
"""Inner payloads are padded to a multiple of this many bytes (DESIGN 4.5)."""
