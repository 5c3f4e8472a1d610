"""Devices of one account: linking a new device through the relay's link mailbox,
``remove_device``, device list notices (issue 4 "API", DESIGN 4.2)."""

from __future__ import annotations

from .base import ClientBase

__all__ = ["LinkingMixin"]


class LinkingMixin(ClientBase):
    """See the module documentation."""
