"""Safety numbers, verification and identity changes (issue 4 "API", DESIGN 4.2)."""

from __future__ import annotations

from .base import ClientBase

__all__ = ["IdentityMixin"]


class IdentityMixin(ClientBase):
    """See the module documentation."""
