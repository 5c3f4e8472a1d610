"""Key upkeep without the app's help: prekey refill, signed prekey rotation,
last-resort replacement, the key-consistency check (issue 4 "Upkeep", DESIGN 4.2, 4.4)."""

from __future__ import annotations

from .base import ClientBase

__all__ = ["UpkeepMixin"]


class UpkeepMixin(ClientBase):
    """See the module documentation."""
