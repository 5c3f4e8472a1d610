"""Client SDK (issue 4, DESIGN 6): what a chat app embeds.

:class:`Client` (``client_sdk.client``) owns the device's keys in an encrypted local
store (:mod:`client_sdk.store`), talks to the relay over WebSockets
(:mod:`client_sdk.transport`), and gives the app ``send``, ``messages()``, typed
security events (:mod:`client_sdk.events`), safety numbers, device linking, key
upkeep, encrypted attachments, share links and QR codes (:mod:`client_sdk.qr`). Every error is a :class:`~client_sdk.errors.ClientError`. ``docs/sdk.md`` is
the guide; ``e2ee demo`` shows it end to end.

The names most apps need are re-exported here::

    from client_sdk import Client
"""

from .client import (
    Client,
    ContactSafetyNumber,
    EventItem,
    LinkOffer,
    Message,
    VerificationState,
)
from .errors import ClientError
from .share import ShareLinkInfo, ShareLinkState, ShareLinkStatus, open_share_link

__all__ = [
    "Client",
    "ClientError",
    "ContactSafetyNumber",
    "EventItem",
    "LinkOffer",
    "Message",
    "ShareLinkInfo",
    "ShareLinkState",
    "ShareLinkStatus",
    "VerificationState",
    "open_share_link",
]
