"""A malicious relay, played by :class:`~client_sdk.testing.proxy.FrameHook` s on a
:class:`~client_sdk.testing.proxy.FaultProxy` (issue 5).

A relay sees every frame and may change, drop, hold, reorder, replay or invent any of
them; what it cannot do is sign as a user's master key or a device, or encrypt in a
session. These hooks play such a relay between real SDK clients and a real relay, so
an app can check that it surfaces what the SDK reports: each hook's documentation says
what it does on the wire and what the SDK does about it (the ``client_sdk.events``
event or the ``client_sdk.errors`` error the app sees)::

    hook = SubstituteBundleKeys("bob")
    proxy.add_hook(hook)
    with pytest.raises(IdentityError):
        await alice.send("bob", "hello")     # nothing is encrypted for the relay's keys

=================================  ===========================================================
hook                               what the app sees
=================================  ===========================================================
:class:`SubstituteBundleKeys`      ``send`` raises ``IdentityError(reason="BadSignature")``
:class:`StripKemPreKey`            ``send`` raises ``IdentityError(reason="DowngradeError")``
:class:`AddDeviceToList`           ``send`` raises ``IdentityError(reason="BadSignature")``
:class:`ServeStaleList`            ``IdentityError(reason="DeviceListRollback")``, or
                                   ``DeviceListStale`` once the frozen list is 30 days old
:class:`ServeEquivocatingList`     ``DeviceListEquivocation`` and
                                   ``IdentityError(reason="Equivocation")``
:class:`Reorder`                   nothing: every message once, in the order delivered
:class:`Replay`                    ``ReplayDropped`` (silence for a same-sequence redelivery)
:class:`Drop`                      ``MessagesMissing`` after 24 hours, then the message
:class:`Tamper`                    ``Undecryptable(reason="DecryptionError")``, then the message
:class:`Reflect`                   ``Undecryptable(reason="ReflectedMessage")``
:class:`ReplayRetryRequest`        ``ReplayDropped`` (no second resend)
:class:`ForgeRetryRequest`         ``Undecryptable`` at the target; its retry request is
                                   dropped by the peer (``RetryRequestDropped``) or, for a
                                   reused header, answered by one resend
=================================  ===========================================================

Answers carry no user id (a ``BundleResult`` or ``DeviceListResult`` names only its
request id), so every hook tracks the ``ClaimBundle`` and ``GetDeviceList`` requests of
each connection and acts on the answers to the user it targets.

Deliveries a hook invents carry sequence numbers the relay never assigned, drawn from
one counter shared by every hook of the process, from :data:`INVENTED_SEQ_BASE` up
(above any sequence number a relay assigns in a test); the hook removes the client's
acknowledgements of them from its ``Ack`` frames (dropping an ``Ack`` that held only
those), so the relay never sees them. A client uses sequence numbers only to tell a
redelivery (a number it processed) from a replay (any other number); it remembers which
of the numbers below its highest it processed, so an invented number far above the
relay's does not make a later replay under a real number pass for a redelivery.

The hooks keep no key material of the users (they have none); they log at DEBUG with
user and device ids, never ciphertexts.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

from e2ee.device import OurDevice
from e2ee.device_list import SignedDeviceList
from e2ee.envelope import EnvelopeType, MessageEnvelope, PreKeyEnvelope, envelope_type
from e2ee.errors import E2EEError
from e2ee.identifiers import DEVICE_ID_MAX, check_device_id, check_user_id
from e2ee.keys import DHKeyPair, KEMKeyPair, SigningKeyPair
from e2ee.prekeys import PreKeyBundle, SignedPublicPreKey, prekey_statement
from e2ee.primitives import AEAD_TAG_SIZE
from e2ee.relay_frames import (
    Ack,
    BundleResult,
    ClaimBundle,
    ClientFrame,
    Deliver,
    DeviceListResult,
    Error,
    GetDeviceList,
    RelayFrame,
    Send,
)

from ..errors import UsageError
from .proxy import FaultProxy, FrameHook, ProxiedConnection, ProxyError

__all__ = [
    "INVENTED_SEQ_BASE",
    "MAX_TRACKED_REQUESTS",
    "AddDeviceToList",
    "Drop",
    "ForgeRetryRequest",
    "MaliciousHook",
    "Reflect",
    "Reorder",
    "Replay",
    "ReplayRetryRequest",
    "ServeEquivocatingList",
    "ServeStaleList",
    "StripKemPreKey",
    "SubstituteBundleKeys",
    "Tamper",
]

logger = logging.getLogger(__name__)

INVENTED_SEQ_BASE: Final = 2**62
"""The first sequence number a hook invents (relay sequence numbers are below 2**63 and
count up from 1 per device, so a test relay never reaches it)."""
MAX_TRACKED_REQUESTS: Final = 4096
"""Unanswered ``ClaimBundle``/``GetDeviceList`` requests a hook remembers (the oldest
is forgotten first; a client has a few in flight at a time)."""
_FORGED_CIPHERTEXT: Final = 160 + AEAD_TAG_SIZE
"""Size of a forged message's ciphertext: one padded payload block and its tag, the
size of a small message (a retry request, a short text)."""

_invented_seqs: Final[Iterator[int]] = itertools.count(INVENTED_SEQ_BASE)
"""One counter for every hook, so two hooks never invent the same number."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_user(user_id: object, what: str = "user_id") -> str:
    try:
        return check_user_id(user_id)
    except E2EEError as exc:
        raise UsageError(f"{what} is not a user id: {exc}") from None


def _check_device(device_id: object) -> int:
    try:
        return check_device_id(device_id)
    except E2EEError as exc:
        raise UsageError(f"device_id is not a device id: {exc}") from None


def _check_count(count: object) -> int:
    if type(count) is not int or count < 1:
        raise UsageError("count is an integer >= 1")
    return count


def _device(conn: ProxiedConnection) -> tuple[str, int] | None:
    """The (user, device) a connection authenticated as, if known."""
    if conn.user_id is None or conn.device_id is None:
        return None
    return conn.user_id, conn.device_id


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a tracked request asked for (``device_id`` ``None``: a device list)."""

    user_id: str
    device_id: int | None


class MaliciousHook(FrameHook):
    """Base of the hooks of this module: tracks which user each ``ClaimBundle`` and
    ``GetDeviceList`` of a connection asked for (so :meth:`_from_relay` knows whose
    bundle or list an answer holds), invents deliveries (:meth:`_invent`) and keeps the
    client's acknowledgements of them from the relay.

    Subclasses override :meth:`_from_relay` and :meth:`_from_client` (same contract as
    :meth:`FrameHook.to_client` and :meth:`FrameHook.to_relay`).
    """

    def __init__(self) -> None:
        self._asked: dict[tuple[int, int], _Asked] = {}
        self._invented: dict[tuple[str, int], set[int]] = {}
        self.injected = 0
        """Deliveries this hook invented."""
        self.acks_swallowed = 0
        """Acknowledged sequence numbers kept from the relay (invented ones)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(injected={self.injected})"

    async def to_client(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        """Resolve what an answer answers, then :meth:`_from_relay`."""
        asked = None
        if isinstance(frame, BundleResult | DeviceListResult | Error) and frame.req is not None:
            asked = self._asked.pop((conn.id, frame.req), None)
        return await self._from_relay(conn, frame, raw, asked)

    async def to_relay(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        """Track requests and keep acknowledgements of invented deliveries, then
        :meth:`_from_client`."""
        if isinstance(frame, Ack):
            return self._filter_ack(conn, frame)
        if isinstance(frame, ClaimBundle):
            self._track(conn, frame.req, _Asked(frame.user_id, frame.device_id))
        elif isinstance(frame, GetDeviceList):
            self._track(conn, frame.req, _Asked(frame.user_id, None))
        return await self._from_client(conn, frame, raw)

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        """A frame to ``conn``'s client; ``asked`` is what the request it answers asked
        for (``None`` for anything but an answer to a tracked request)."""
        return None

    async def _from_client(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        """A frame from ``conn``'s client (not an ``Ack``)."""
        return None

    def _track(self, conn: ProxiedConnection, req: int, asked: _Asked) -> None:
        self._asked[(conn.id, req)] = asked
        while len(self._asked) > MAX_TRACKED_REQUESTS:
            del self._asked[next(iter(self._asked))]

    def _filter_ack(self, conn: ProxiedConnection, frame: Ack) -> Sequence[bytes] | None:
        who = _device(conn)
        invented = self._invented.get(who) if who is not None else None
        if not invented:
            return None
        kept = tuple(seq for seq in frame.seqs if seq not in invented)
        if len(kept) == len(frame.seqs):
            return None
        gone = len(frame.seqs) - len(kept)
        invented.difference_update(frame.seqs)
        self.acks_swallowed += gone
        logger.debug(
            "connection %d: %d acknowledgement(s) of invented deliveries kept", conn.id, gone
        )
        return [Ack(kept).to_bytes()] if kept else []

    def _invent(
        self,
        conn: ProxiedConnection,
        sender_user: str,
        sender_device: int,
        ciphertext: bytes,
        accepted_at_ms: int | None = None,
    ) -> Deliver:
        """A ``Deliver`` to ``conn``'s device under a fresh invented sequence number,
        whose acknowledgement this hook will keep from the relay.

        Raises:
            UsageError: the connection has not authenticated yet.
        """
        who = _device(conn)
        if who is None:
            raise UsageError("a delivery is invented for an authenticated connection")
        seq = next(_invented_seqs)
        self._invented.setdefault(who, set()).add(seq)
        self.injected += 1
        at = _now_ms() if accepted_at_ms is None else accepted_at_ms
        return Deliver(seq, sender_user, sender_device, at, ciphertext)


def _open_connections(
    proxy: FaultProxy, user_id: str, device_id: int | None
) -> list[ProxiedConnection]:
    return [
        c
        for c in proxy.connections()
        if c.websocket
        and not c.closed
        and c.user_id == user_id
        and (device_id is None or c.device_id == device_id)
    ]


# --- bundles ---------------------------------------------------------------------------


class _BundleHook(MaliciousHook):
    """Rewrites the bundles of ``user_id`` (of ``device_id`` only, if given)."""

    def __init__(self, user_id: str, device_id: int | None = None) -> None:
        super().__init__()
        self.user_id = _check_user(user_id)
        self.device_id = None if device_id is None else _check_device(device_id)
        self.rewritten = 0
        """Bundles rewritten."""

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        if not isinstance(frame, BundleResult) or asked is None or asked.user_id != self.user_id:
            return None
        if self.device_id is not None and asked.device_id != self.device_id:
            return None
        try:
            bundle = PreKeyBundle.from_bytes(frame.bundle)
        except E2EEError:
            return None  # not a bundle the client accepts anyway
        self.rewritten += 1
        logger.debug(
            "connection %d: %s rewrote the bundle of %s/%d",
            conn.id,
            type(self).__name__,
            bundle.user_id,
            bundle.device_id,
        )
        return [BundleResult(frame.req, self._rewrite(bundle).to_bytes()).to_bytes()]

    def _rewrite(self, bundle: PreKeyBundle) -> PreKeyBundle:
        raise NotImplementedError


class SubstituteBundleKeys(_BundleHook):
    """Serves the relay's own keys in ``user_id``'s prekey bundles (of ``device_id``
    only, if given).

    **Wire:** every ``BundleResult`` answering a ``ClaimBundle`` for the user carries
    freshly generated keys in place of the signed prekey, the one-time prekey and the
    ML-KEM prekey (one-time or last-resort), with the original ids and times, each
    signed by a signing key the relay made up (it cannot sign as the device). A bundle
    holds no identity key: the device's identity and signing keys come from the user's
    signed device list (:class:`AddDeviceToList` attacks that).

    **SDK:** the bundle is validated against the signing key in the verified device
    list before any key agreement: ``send`` raises
    ``IdentityError(user_id, reason="BadSignature")``; no session is started, nothing
    is encrypted or sent, the outbox stays empty. The relay has consumed the one-time
    prekeys it handed out.
    """

    def __init__(self, user_id: str, device_id: int | None = None) -> None:
        super().__init__(user_id, device_id)
        self._signing = SigningKeyPair.generate()

    @property
    def substituted(self) -> int:
        """Bundles served with substituted keys."""
        return self.rewritten

    def _forge(self, bundle: PreKeyBundle, prekey: SignedPublicPreKey) -> SignedPublicPreKey:
        public_key = (
            KEMKeyPair.generate().public_key
            if prekey.kind.is_kem
            else DHKeyPair.generate().public_key
        )
        statement = prekey_statement(
            bundle.user_id, bundle.device_id, prekey.prekey_id, prekey.created_at_ms, public_key
        )
        signature = self._signing.sign(prekey.kind.label, statement)
        return replace(prekey, public_key=public_key, signature=signature)

    def _rewrite(self, bundle: PreKeyBundle) -> PreKeyBundle:
        one_time, kem = bundle.one_time_prekey, bundle.kem_prekey
        return replace(
            bundle,
            signed_prekey=self._forge(bundle, bundle.signed_prekey),
            one_time_prekey=None if one_time is None else self._forge(bundle, one_time),
            kem_prekey=None if kem is None else self._forge(bundle, kem),
        )


class StripKemPreKey(_BundleHook):
    """Removes the ML-KEM prekey from ``user_id``'s prekey bundles (of ``device_id``
    only, if given): a downgrade from PQXDH to X3DH.

    **Wire:** every ``BundleResult`` answering a ``ClaimBundle`` for the user is served
    without its KEM prekey (one-time or last-resort); the other prekeys and their
    signatures are untouched.

    **SDK:** the device is post-quantum in its user's signed device list, so a bundle
    without an ML-KEM prekey is refused before any key agreement: ``send`` raises
    ``IdentityError(user_id, reason="DowngradeError")``; nothing is encrypted or sent.
    """

    @property
    def stripped(self) -> int:
        """Bundles served without their KEM prekey."""
        return self.rewritten

    def _rewrite(self, bundle: PreKeyBundle) -> PreKeyBundle:
        return replace(bundle, kem_prekey=None)


# --- device lists --------------------------------------------------------------------------


class _ListHook(MaliciousHook):
    """Acts on the ``DeviceListResult`` s answering a ``GetDeviceList`` for ``user_id``."""

    def __init__(self, user_id: str) -> None:
        super().__init__()
        self.user_id = _check_user(user_id)

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        if (
            not isinstance(frame, DeviceListResult)
            or asked is None
            or asked.device_id is not None
            or asked.user_id != self.user_id
        ):
            return None
        try:
            signed = SignedDeviceList.from_bytes(frame.signed_list)
        except E2EEError:
            return None  # not a list the client accepts anyway
        served = self._serve(conn, signed)
        if served is None:
            return None
        return [DeviceListResult(frame.req, served).to_bytes()]

    def _serve(self, conn: ProxiedConnection, signed: SignedDeviceList) -> bytes | None:
        """The list to serve instead of ``signed`` (``None``: serve it)."""
        raise NotImplementedError


class AddDeviceToList(_ListHook):
    """Adds a device of the relay's to ``user_id``'s signed device list.

    **Wire:** every ``DeviceListResult`` answering a ``GetDeviceList`` for the user
    holds one more device (fresh signing and identity keys, post-quantum, the next free
    device id) than the user signed, under the user's original master-key signature
    (the relay cannot sign as the master key; a list re-signed by another master key is
    an identity change, reported as ``IdentityChanged``).

    **SDK:** the master-key signature no longer verifies: the list is refused, the
    stored (verified) list is left as it was (none if it was the first), and the call
    that needed it (``send``, ``safety_number``, ...) raises
    ``IdentityError(user_id, reason="BadSignature")``; nothing is sent to the user.
    A list is fetched when none is stored, when the relay answers a send with
    ``Mismatch``, for a message from an unlisted device, and once the stored list is
    past its 7-day re-signing period (at most hourly).
    """

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.added: list[int] = []
        """The device id added to each list served."""

    def _serve(self, conn: ProxiedConnection, signed: SignedDeviceList) -> bytes | None:
        statement = signed.statement
        ids = {d.device_id for d in statement.devices}
        free = (
            i
            for i in itertools.chain(
                range(max(ids, default=-1) + 1, DEVICE_ID_MAX + 1), range(DEVICE_ID_MAX + 1)
            )
            if i not in ids
        )
        device_id = next(free, None)
        if device_id is None:
            return None
        extra = OurDevice.generate(
            statement.user_id, device_id, statement.master_pk, now_ms=statement.issued_at_ms
        )
        try:
            forged = replace(
                statement,
                devices=tuple(
                    sorted((*statement.devices, extra.entry()), key=lambda d: d.device_id)
                ),
            )
        except E2EEError:
            return None  # the list is full
        self.added.append(device_id)
        logger.debug(
            "connection %d: device %d added to a list of %s", conn.id, device_id, statement.user_id
        )
        return SignedDeviceList(forged, signed.signature).to_bytes()


class ServeStaleList(_ListHook):
    """Hides changes of ``user_id``'s device list by serving an older version.

    **Wire:** every list served for the user is recorded (the first bytes seen of each
    version). The oldest recorded version is served as it is; with ``reveal_newer``
    the first answer holding a newer version passes too (a client learns it), and
    from then on every answer is replaced by the oldest version (a rollback hiding,
    for instance, the removal of a compromised device). Without ``reveal_newer`` newer
    versions never pass: the list is frozen at the oldest.

    **SDK:** a client that has seen a newer version refuses the older one: the call
    that fetched it raises ``IdentityError(user_id, reason="DeviceListRollback")`` and
    the stored list stays the newer one. A client that never saw a newer version
    cannot tell a frozen list from a user who changed nothing, until the frozen list is
    more than 30 days old (users re-sign every 7 days): ``DeviceListStale(user_id,
    issued_at_ms)``, once per list, while sending goes on to the listed devices.
    """

    def __init__(self, user_id: str, *, reveal_newer: bool = True) -> None:
        super().__init__(user_id)
        self.reveal_newer = reveal_newer
        self._versions: dict[int, bytes] = {}
        self._revealed = False
        self.rolled_back = 0
        """Answers replaced by the oldest version."""

    @property
    def versions(self) -> list[int]:
        """The versions recorded, oldest first."""
        return sorted(self._versions)

    def _serve(self, conn: ProxiedConnection, signed: SignedDeviceList) -> bytes | None:
        version = signed.statement.version
        self._versions.setdefault(version, signed.to_bytes())
        oldest = min(self._versions)
        if version == oldest:
            return None
        if self.reveal_newer and not self._revealed:
            self._revealed = True
            return None
        self.rolled_back += 1
        logger.debug(
            "connection %d: version %d of a list served for version %d", conn.id, oldest, version
        )
        return self._versions[oldest]


class ServeEquivocatingList(_ListHook):
    """Serves ``fork``: another list of its user, typically with the version the user
    published, signed with the user's own master key (a relay that kept an old fork,
    or got a signature on a list the user never published).

    **Wire:** every ``DeviceListResult`` answering a ``GetDeviceList`` for the fork's
    user holds ``fork``.

    **SDK:** a client that accepted another list with the fork's version (or the
    fork's predecessor, without the fork chaining to it) refuses it as an
    equivocation: ``DeviceListEquivocation(user_id, version)`` once per distinct fork,
    and the call that fetched it raises ``IdentityError(user_id,
    reason="Equivocation")``; the stored list stays the one accepted, and sending
    within the hour uses it. (A client that never saw a list of the user accepts the
    fork: equivocation is detectable only against something seen.)
    """

    def __init__(self, fork: SignedDeviceList | bytes) -> None:
        if isinstance(fork, bytes):
            try:
                fork = SignedDeviceList.from_bytes(fork)
            except E2EEError as exc:
                raise UsageError(f"fork is not a signed device list: {type(exc).__name__}") from exc
        if not isinstance(fork, SignedDeviceList):
            raise UsageError("fork is a SignedDeviceList or its bytes")
        super().__init__(fork.statement.user_id)
        self._fork = fork.to_bytes()
        self.served = 0
        """Answers replaced by the fork."""

    def _serve(self, conn: ProxiedConnection, signed: SignedDeviceList) -> bytes | None:
        self.served += 1
        return self._fork


# --- deliveries ------------------------------------------------------------------------------


class _DeliveryHook(MaliciousHook):
    """Acts on the ``Deliver`` frames to one device."""

    def __init__(self, user_id: str, device_id: int) -> None:
        super().__init__()
        self.user_id = _check_user(user_id)
        self.device_id = _check_device(device_id)

    def _targets(self, conn: ProxiedConnection, frame: RelayFrame) -> bool:
        return isinstance(frame, Deliver) and _device(conn) == (self.user_id, self.device_id)


class Reorder(_DeliveryHook):
    """Holds ``count`` deliveries to one device and releases them in reverse order.

    **Wire:** the next ``count`` ``Deliver`` frames to the device's connection are
    held (nothing reaches it; none is acknowledged) and, when the last arrives, sent
    newest first; with ``repeat`` every following batch of ``count`` too. Deliveries
    held when the connection ends are lost with it (the relay delivers them again on
    the next connection).

    **SDK:** no event and nothing lost: each message decrypts exactly once (out-of-order
    messages of a chain use the skipped message keys the later one left), and the
    app gets them in the order they arrived. What it can see of the reorder is
    ``Message.relay_ts_ms`` (the relay's acceptance time) and ``Message.sender_ts_ms``
    (the sender's clock), which go backwards across the batch.
    """

    def __init__(self, user_id: str, device_id: int, count: int, *, repeat: bool = False) -> None:
        super().__init__(user_id, device_id)
        self.count = _check_count(count)
        self.repeat = repeat
        self._held: dict[int, list[bytes]] = {}
        self.released = 0
        """Batches released."""

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        if not self._targets(conn, frame) or (self.released and not self.repeat):
            return None
        held = self._held.setdefault(conn.id, [])
        held.append(raw)
        if len(held) < self.count:
            return []
        del self._held[conn.id]
        self.released += 1
        logger.debug("connection %d: %d deliveries released in reverse", conn.id, len(held))
        return held[::-1]


class Replay(_DeliveryHook):
    """Delivers messages to one device twice.

    **Wire:** each of the next ``count`` ``Deliver`` frames to the device is followed by
    a copy: under a new sequence number the relay never assigned (above every real
    one; its acknowledgement is kept from the relay), or, with ``same_seq``, under its
    own sequence number (what an honest relay does after an acknowledgement was lost
    with a connection).

    **SDK:** the copy is dropped and never shown twice. Under a new sequence number it
    is a replay no honest relay makes: ``ReplayDropped(sender_user, sender_device)``
    for each copy. Under a sequence number already processed it is dropped silently.
    """

    def __init__(
        self, user_id: str, device_id: int, *, count: int = 1, same_seq: bool = False
    ) -> None:
        super().__init__(user_id, device_id)
        self.count = _check_count(count)
        self.same_seq = same_seq
        self.replayed: list[int] = []
        """The sequence numbers of the deliveries that were sent twice."""

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        if not isinstance(frame, Deliver) or not self._targets(conn, frame):
            return None
        if len(self.replayed) >= self.count:
            return None
        self.replayed.append(frame.seq)
        if self.same_seq:
            return [raw, raw]
        copy = self._invent(
            conn, frame.sender_user, frame.sender_device, frame.ciphertext, frame.accepted_at_ms
        )
        return [raw, copy.to_bytes()]


class Drop(_DeliveryHook):
    """Deletes messages to one device: swallows them and acknowledges them itself.

    **Wire:** each of the next ``count`` ``Deliver`` frames to the device is dropped and
    an ``Ack`` of its sequence number is sent to the relay on the device's connection,
    so the relay deletes it and never delivers it again.

    **SDK:** the sender's next message in the same chain leaves a gap (a skipped
    message key). A gap not filled within 24 hours (by the receiver's clock) is
    reported once, ``MessagesMissing(sender_user, sender_device, count)``, by the check
    that runs on each connection and at most hourly in the ``messages()`` loop, and a
    retry request for the oldest missing message goes to the sender, which resends it,
    with its original client message id, on a new session: the app gets it then. A
    message dropped with nothing after it in its chain is not noticed.
    """

    def __init__(self, user_id: str, device_id: int, *, count: int = 1) -> None:
        super().__init__(user_id, device_id)
        self.count = _check_count(count)
        self.dropped: list[int] = []
        """The sequence numbers dropped (and acknowledged to the relay)."""

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        if not isinstance(frame, Deliver) or not self._targets(conn, frame):
            return None
        if len(self.dropped) >= self.count:
            return None
        try:
            await conn.inject_to_relay(Ack((frame.seq,)).to_bytes())
        except ProxyError:
            return []  # the connection ended: the relay delivers it again on the next one
        self.dropped.append(frame.seq)
        logger.debug("connection %d: delivery %d dropped and acknowledged", conn.id, frame.seq)
        return []


class Tamper(_DeliveryHook):
    """Changes the ciphertext of messages to one device.

    **Wire:** the last byte of the ciphertext of each of the next ``count`` ``Deliver``
    frames to the device is flipped (same sequence number).

    **SDK:** authentication fails and nothing is committed:
    ``Undecryptable(sender_user, sender_device, "DecryptionError")``; a retry request
    goes to the sender, which resends the message on a new session (at most one per
    message, and one new session per device per hour): the app gets it then, once.
    """

    def __init__(self, user_id: str, device_id: int, *, count: int = 1) -> None:
        super().__init__(user_id, device_id)
        self.count = _check_count(count)
        self.tampered: list[int] = []
        """The sequence numbers whose ciphertext was changed."""

    async def _from_relay(
        self, conn: ProxiedConnection, frame: RelayFrame, raw: bytes, asked: _Asked | None
    ) -> Sequence[bytes] | None:
        if not isinstance(frame, Deliver) or not self._targets(conn, frame) or not frame.ciphertext:
            return None
        if len(self.tampered) >= self.count:
            return None
        self.tampered.append(frame.seq)
        ct = frame.ciphertext
        return [replace(frame, ciphertext=ct[:-1] + bytes([ct[-1] ^ 0x01])).to_bytes()]


# --- messages a client sent ----------------------------------------------------------------


def _addressed_peer(frame: Send, sender: str) -> list[tuple[str, int, bytes]]:
    """``(user, device, ciphertext)`` of every ciphertext of ``frame`` for a user other
    than ``sender``."""
    return [
        (user, device, ct)
        for user, devices in frame.addressed
        if user != sender
        for device, ct in devices
    ]


class Reflect(MaliciousHook):
    """Sends a user's own messages back to it.

    **Wire:** for each of the next ``count`` ``Send`` frames of ``user_id`` that address
    another user, the ciphertext for that user's first addressed device is delivered
    back to the sending connection, as if that device had sent it (under an invented
    sequence number); the ``Send`` itself passes.

    **SDK:** the envelope carries the sender's own base key or ratchet key:
    ``Undecryptable(peer_user, peer_device, "ReflectedMessage")``; no retry request is
    sent for it (no resend can cure a reflection) and nothing is shown.
    """

    def __init__(self, user_id: str, *, count: int = 1) -> None:
        super().__init__()
        self.user_id = _check_user(user_id)
        self.count = _check_count(count)
        self.reflected: list[tuple[str, int]] = []
        """The (user, device) each reflected ciphertext was addressed to."""

    async def _from_client(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        if not isinstance(frame, Send) or conn.user_id != self.user_id:
            return None
        if len(self.reflected) >= self.count:
            return None
        targets = _addressed_peer(frame, self.user_id)
        if not targets:
            return None
        user, device, ct = targets[0]
        try:
            await conn.inject_to_client(self._invent(conn, user, device, ct).to_bytes())
        except ProxyError:
            return None  # the connection ended: the Send does not reach the relay either
        self.reflected.append((user, device))
        logger.debug("connection %d: a message to %s/%d reflected", conn.id, user, device)
        return None


@dataclass(frozen=True, slots=True)
class _Captured:
    sender_device: int
    device_id: int
    ciphertext: bytes


class ReplayRetryRequest(MaliciousHook):
    """Replays a retry request ``user_id`` sent to ``peer_user``, to make the peer
    resend again.

    **Wire:** the relay cannot read payloads; it recognises the SDK's control messages
    by their addressing: a user's own messages also address the user's own account
    (for its other devices), while retry requests, resends and device-list notices
    address only the peer. The ciphertexts of the first ``count`` ``Send`` frames of
    ``user_id`` that address ``peer_user`` alone are captured (the ``Send`` passes);
    :meth:`replay` later delivers each again to its device under an invented sequence
    number.

    **SDK:** the peer already decrypted that envelope: ``ReplayDropped(user_id,
    sender_device)``; the request is not considered again, so nothing is resent (and a
    request the peer honoured is never honoured twice: ``already_resent``).
    """

    def __init__(self, user_id: str, peer_user: str, *, count: int = 1) -> None:
        super().__init__()
        self.user_id = _check_user(user_id)
        self.peer_user = _check_user(peer_user, "peer_user")
        if self.peer_user == self.user_id:
            raise UsageError("peer_user is another user")
        self.count = _check_count(count)
        self._frames = 0
        self.captured: list[_Captured] = []
        """The captured ciphertexts (sending device, addressed device, ciphertext)."""

    async def _from_client(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        who = _device(conn)
        if not isinstance(frame, Send) or who is None or who[0] != self.user_id:
            return None
        if self._frames >= self.count or [u for u, _ in frame.addressed] != [self.peer_user]:
            return None
        self._frames += 1
        self.captured += [
            _Captured(who[1], device, ct) for _, device, ct in _addressed_peer(frame, self.user_id)
        ]
        return None

    async def replay(self, proxy: FaultProxy) -> int:
        """Deliver every captured ciphertext again to its device, on each of that
        device's open connections through ``proxy``; how many deliveries were made.

        Raises:
            ProxyError: a connection closed meanwhile.
        """
        made = 0
        for item in self.captured:
            for conn in _open_connections(proxy, self.peer_user, item.device_id):
                deliver = self._invent(conn, self.user_id, item.sender_device, item.ciphertext)
                await conn.inject_to_client(deliver.to_bytes())
                made += 1
        logger.debug("%d captured message(s) replayed", made)
        return made


class ForgeRetryRequest(MaliciousHook):
    """Fabricates a message "from" ``user_id`` to ``peer_user`` (for instance a retry
    request, to make the peer resend), though the relay cannot encrypt in their session.

    **Wire:** the header (ratchet key and counters) of the last message ``user_id``'s
    devices sent to each device of ``peer_user`` is recorded from their ``Send``
    frames. :meth:`forge` delivers to each open connection of those devices an
    envelope under that header with random ciphertext, as sent by the recorded device
    (under an invented sequence number): with the next counter of the chain (the
    sender's next message), or, with ``reuse_counter``, the counter of the message
    already delivered.

    **SDK:** the forgery does not authenticate and nothing is committed:
    ``Undecryptable(user_id, sender_device, reason)`` at the peer (``DecryptionError``
    for the next counter, ``MessageKeyUnavailable`` for a reused one). The peer cannot
    tell a forgery from a damaged message, so it sends ``user_id``'s device a retry
    request for that header (limits: one per message, one per device per hour). For
    the next counter the sender has sent nothing under it: dropped,
    ``RetryRequestDropped(peer_user, peer_device, "unknown")``, nothing resent. For a
    reused counter the sender finds the message it did send and resends it once on a
    new session (consuming a one-time prekey); the peer already has it and drops the
    copy, under a sequence number it never processed: ``ReplayDropped(user_id,
    sender_device)``; nothing is shown twice.
    """

    def __init__(self, user_id: str, peer_user: str, *, reuse_counter: bool = False) -> None:
        super().__init__()
        self.user_id = _check_user(user_id)
        self.peer_user = _check_user(peer_user, "peer_user")
        if self.peer_user == self.user_id:
            raise UsageError("peer_user is another user")
        self.reuse_counter = reuse_counter
        self._headers: dict[int, tuple[int, bytes, int, int]] = {}
        self.forged: list[tuple[int, int]] = []
        """(sender device, peer device) of each forged delivery."""

    async def _from_client(
        self, conn: ProxiedConnection, frame: ClientFrame, raw: bytes
    ) -> Sequence[bytes] | None:
        who = _device(conn)
        if not isinstance(frame, Send) or who is None or who[0] != self.user_id:
            return None
        for user, device, ct in _addressed_peer(frame, self.user_id):
            if user != self.peer_user:
                continue
            try:
                if envelope_type(ct) is EnvelopeType.MESSAGE:
                    message = MessageEnvelope.from_bytes(ct)
                else:
                    message = PreKeyEnvelope.from_bytes(ct).message
            except E2EEError:
                continue
            self._headers[device] = (who[1], message.ratchet_pk, message.pn, message.n)
        return None

    async def forge(self, proxy: FaultProxy) -> int:
        """Deliver a forged envelope to each open connection of each device of
        ``peer_user`` whose chain header is known; how many deliveries were made.

        Raises:
            ProxyError: a connection closed meanwhile.
        """
        made = 0
        for device_id, (sender_device, ratchet_pk, pn, n) in sorted(self._headers.items()):
            counter = n if self.reuse_counter else n + 1
            header = MessageEnvelope.encode_header(ratchet_pk, pn, counter)
            envelope = MessageEnvelope.assemble(header, secrets.token_bytes(_FORGED_CIPHERTEXT))
            for conn in _open_connections(proxy, self.peer_user, device_id):
                deliver = self._invent(conn, self.user_id, sender_device, envelope)
                await conn.inject_to_client(deliver.to_bytes())
                self.forged.append((sender_device, device_id))
                made += 1
        logger.debug("%d forged message(s) delivered", made)
        return made
