"""Every limit of the relay, each with its reason (CONVENTIONS 10).

Operator-tunable values (quotas, TTLs, rate limits) are defaults of
:class:`server.settings.RelaySettings`; the rest are fixed here because the
protocol or the relay's memory bounds depend on them.
"""

from __future__ import annotations

from typing import Final

from e2ee.auth import RELAY_NONCE_SIZE
from e2ee.relay_frames import MAX_RELAY_FRAME

__all__ = [
    "ACK_BACKLOG",
    "ACK_STALL_SECONDS",
    "AUTH_TIMEOUT_SECONDS",
    "BLOB_CHUNK_SIZE",
    "BLOB_QUOTA_BYTES",
    "CLOSE_SECONDS",
    "DELIVERY_WINDOW",
    "DELIVERY_WINDOW_BYTES",
    "FETCH_BATCH",
    "IDLE_RECHECK_SECONDS",
    "LINK_MAX_BLOB",
    "LINK_SLOTS",
    "LINK_TTL_SECONDS",
    "MAX_FRAME",
    "MAX_MALFORMED_FRAMES",
    "MAX_REGISTER_BODY",
    "MAX_SHARE_LINK_TTL_SECONDS",
    "MAX_SHARE_SIZE_BYTES",
    "MAX_SHARE_SIZE_CEILING",
    "MESSAGE_TTL_SECONDS",
    "NONCE_SIZE",
    "NONCE_TTL_MS",
    "OUTGOING_QUEUE",
    "OVERFLOW_SECONDS",
    "PREKEYS_LOW",
    "PURGE_BATCH",
    "PURGE_INTERVAL_SECONDS",
    "QUEUE_QUOTA",
    "RATE_AUTH_DEVICE",
    "RATE_AUTH_IP",
    "RATE_CLAIM_REQUESTER",
    "RATE_CLAIM_TARGET",
    "RATE_FRAMES",
    "RATE_HTTP",
    "RATE_LIMITER_KEYS",
    "RATE_REGISTRATION",
    "RATE_SEND",
    "SENDS_IN_FLIGHT",
    "SENDS_IN_FLIGHT_BYTES",
    "SHARE_MAX_VIEWS",
    "SHARE_MAX_WRONG_PROOFS",
    "SHUTDOWN_CLOSE_SECONDS",
]

# --- frames and connections ---------------------------------------------------------

MAX_FRAME: Final = MAX_RELAY_FRAME
"""256 KiB: one upload of 100 + 100 prekeys, or one message to every device of two
users, fits; a bigger WebSocket message is closed with 1009 before it is parsed."""
NONCE_SIZE: Final = RELAY_NONCE_SIZE
"""32 random bytes: unguessable, so an auth statement cannot be precomputed."""
NONCE_TTL_MS: Final = 30_000
"""A relay nonce (connection auth, registration) is valid 30 s (DESIGN 5)."""
AUTH_TIMEOUT_SECONDS: Final = 30.0
"""A connection that has not authenticated within the nonce's lifetime is closed."""
OUTGOING_QUEUE: Final = 64
"""Frames waiting to be written on one connection. Deliveries are bounded by the
window below; this bounds answers and pushes, so a client that sends requests but
stops reading cannot grow the relay's memory: past it the connection is closed with
``OVERFLOW``."""
DELIVERY_WINDOW: Final = 256
"""Unacknowledged deliveries per connection: enough to keep a fast link busy, small
enough that a reconnect re-sends little."""
DELIVERY_WINDOW_BYTES: Final = 4 * 1024 * 1024
"""Unacknowledged delivered ciphertext bytes per connection (memory and re-send bound)."""
OVERFLOW_SECONDS: Final = 3.0
"""A write that cannot complete for this long (the client stopped reading) closes
the connection with ``OVERFLOW``; its messages stay queued. 3 s, not 5: a stopped
reader must be closed within 5 s of stopping, and noticing the stall itself takes
time (the socket buffers fill first)."""
ACK_STALL_SECONDS: Final = 3.0
"""With the delivery window full, a client that acknowledges nothing for this long
has stopped consuming: closed with ``OVERFLOW`` (its messages stay queued). Below
5 s for the same reason as :data:`OVERFLOW_SECONDS`."""
ACK_BACKLOG: Final = 4 * DELIVERY_WINDOW
"""Acknowledged sequences per connection waiting to be deleted (the deletions of
``Ack`` frames that arrive while one is in progress are done together). Past it the
connection reads no further frame until the deletion in progress has finished."""
SENDS_IN_FLIGHT: Final = 32
"""Sends one connection may have being stored at once (on a store that accepts them in
the order they arrive): the reader reads on while they wait for their group commit,
up to this many and :data:`SENDS_IN_FLIGHT_BYTES`."""
SENDS_IN_FLIGHT_BYTES: Final = 2 * MAX_FRAME
"""Frame bytes of the sends one connection may have being stored at once (big sends
are stored nearly one at a time: the relay's memory per connection stays bounded)."""
CLOSE_SECONDS: Final = 10.0
"""How long a close frame may wait to be written before the connection is dropped."""
SHUTDOWN_CLOSE_SECONDS: Final = 5.0
"""On shutdown, how long to wait for every socket to take its ``GOING_AWAY`` close."""
FETCH_BATCH: Final = 64
"""Queue entries read per storage round trip while delivering."""
IDLE_RECHECK_SECONDS: Final = 30.0
"""An idle connection re-reads its queue this often even without news (a missed
notification is found by the cursor, DESIGN 5)."""
MAX_MALFORMED_FRAMES: Final = 16
"""Malformed or unknown frames tolerated per connection before it is closed
(a buggy client gets typed errors; a fuzzer is cut off)."""
MAX_REGISTER_BODY: Final = MAX_FRAME
"""A registration body holds one signed device list and two signatures."""

# --- key directory ------------------------------------------------------------------

PREKEYS_LOW: Final = 25
"""A claim that leaves fewer one-time prekeys of a kind than this pushes
``prekeys_low`` (DESIGN 4.2: refilled below 25)."""

# --- storage and expiry -------------------------------------------------------------

MESSAGE_TTL_SECONDS: Final = 30 * 24 * 3600
"""Undelivered messages expire after 30 days (issue 3)."""
QUEUE_QUOTA: Final = 10_000
"""Messages one device's queue may hold: a month offline in an active chat, and a
bound on what one sender can pile onto a victim."""
BLOB_QUOTA_BYTES: Final = 1024 * 1024 * 1024
"""Blob bytes one device may hold (1 GiB)."""
BLOB_CHUNK_SIZE: Final = 1024 * 1024
"""Blobs are stored as rows of at most 1 MiB (issue 3)."""
MAX_SHARE_LINK_TTL_SECONDS: Final = 5 * 60
"""Share-link blobs live at most 5 minutes by default (advertised in /v1/config)."""
MAX_SHARE_SIZE_BYTES: Final = 64 * 1024
"""A share-link ciphertext is at most 64 KiB by default: profile data or a contact
card, small enough to hold whole while it is checked (advertised in /v1/config)."""
MAX_SHARE_SIZE_CEILING: Final = BLOB_CHUNK_SIZE
"""The most an operator may allow per share (1 MiB): one blob chunk, so an upload is
held whole before it is stored (nothing is stored for a refused one) and an open
reads the ciphertext in the same transaction that counts the view."""
SHARE_MAX_VIEWS: Final = 1_000
"""The largest view limit an upload may ask for (``X-E2EE-Max-Views``)."""
SHARE_MAX_WRONG_PROOFS: Final = 5
"""The 5th wrong download proof deletes a share (DESIGN 4.7: an auth code is guarded
online by 5 tries)."""
LINK_SLOTS: Final = 2
"""A link mailbox holds at most 2 sealed blobs (one each way)."""
LINK_MAX_BLOB: Final = 64 * 1024
"""Each link-mailbox blob is at most 64 KiB."""
LINK_TTL_SECONDS: Final = 10 * 60
"""A link mailbox lives 10 minutes."""
PURGE_INTERVAL_SECONDS: Final = 60.0
"""Seconds between expiry purges."""
PURGE_BATCH: Final = 1_000
"""Rows one purge call deletes, so a purge never holds a long transaction."""

# --- rate limits: (events per second, burst) ---------------------------------------

RATE_REGISTRATION: Final = (1 / 6, 20)
"""Per client IP: 10 a minute after a burst of 20 (account creation is rare)."""
RATE_AUTH_IP: Final = (5.0, 50)
"""Per client IP: reconnect storms behind one NAT pass, guessing does not."""
RATE_AUTH_DEVICE: Final = (0.5, 10)
"""Per device: a device reconnects with backoff, never 10 times at once."""
RATE_CLAIM_REQUESTER: Final = (5.0, 200)
"""Per requesting device: starting sessions with a large group at once passes."""
RATE_CLAIM_TARGET: Final = (2.0, 100)
"""Per target device: bounds how fast anyone can drain its one-time prekeys."""
RATE_SEND: Final = (200.0, 1_000)
"""Per device: far above human chat, bounds a runaway client."""
RATE_FRAMES: Final = (500.0, 2_000)
"""Per connection, frames of any kind: a flood beyond it is closed."""
RATE_HTTP: Final = (2.0, 30)
"""Per client IP for other rate-limited HTTP endpoints (link mailbox, blobs)."""
RATE_LIMITER_KEYS: Final = 100_000
"""Keys one rate limiter tracks before it forgets the fullest buckets (memory bound)."""
