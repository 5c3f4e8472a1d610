"""Recovery from undecryptable messages: retry requests, resends, ``reset_session``
(issue 4 "Recovery")."""

from __future__ import annotations

from .base import ClientBase

__all__ = ["RecoveryMixin"]


class RecoveryMixin(ClientBase):
    """See the module documentation."""
