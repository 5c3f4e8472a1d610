"""The one exception tree of the client SDK (CONVENTIONS 9).

Every error the SDK raises is a :class:`ClientError`. Subclasses are split by
blame and operation, carry structured attributes, and never include secret bytes
(keys, passphrases, plaintext) in their message or attributes. More subtrees join
as the SDK grows; the local store's errors are :class:`StoreError`.
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "OriginMismatch",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "UnsupportedStoreVersion",
    "UsageError",
    "WeakParameters",
    "WrongKey",
    "WrongPassphrase",
]


class ClientError(Exception):
    """Root of every error the client SDK raises."""


class UsageError(ClientError):
    """The application called the SDK wrongly (a bad argument, a call out of order)."""


# --- the local store -------------------------------------------------------------------


class StoreError(ClientError):
    """The local encrypted store failed (also raised, as such, for an I/O failure of
    the underlying database, with the database error as ``__cause__``)."""


class StoreClosed(StoreError):
    """The store was used after :meth:`aclose`."""


class StoreLocked(StoreError):
    """Another process, or another open store object of this process, holds the store.

    Attributes:
        path: the store file.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"the store {path} is open elsewhere (its lock file is held)")
        self.path = path


class WrongKey(StoreError):
    """The key does not open this store (the header's verification value does not open)."""


class WrongPassphrase(WrongKey):
    """The passphrase does not open this store.

    An attacker who edits the header's salt or raises its Argon2id parameters also
    gives this error: the derived key then differs, which cannot be told apart from a
    wrong passphrase. Parameters lowered below the floor give :class:`WeakParameters`.
    """


class StoreCorrupt(StoreError):
    """The store's content fails authentication or does not decode: a record was
    edited, swapped or moved to another key or table, the header was edited, or the
    file is not a store.

    Attributes:
        table: the record table involved, when a record failed (``None`` for the
            header or the file as a whole).
    """

    def __init__(self, message: str, *, table: str | None = None) -> None:
        super().__init__(message)
        self.table = table


class WeakParameters(StoreCorrupt):
    """The header asks for Argon2id parameters below the floor (an attacker lowering
    them to speed up guessing), so the store is refused before any derivation.

    Attributes:
        opslimit, memlimit: the header's parameters.
        floor_opslimit, floor_memlimit: the floor they fall below.
    """

    def __init__(
        self, *, opslimit: int, memlimit: int, floor_opslimit: int, floor_memlimit: int
    ) -> None:
        super().__init__(
            f"the store header asks for Argon2id ops={opslimit} mem={memlimit} bytes, below "
            f"the floor ops={floor_opslimit} mem={floor_memlimit} bytes"
        )
        self.opslimit = opslimit
        self.memlimit = memlimit
        self.floor_opslimit = floor_opslimit
        self.floor_memlimit = floor_memlimit


class OriginMismatch(StoreError):
    """The store was created for another relay origin (open with
    ``migrate_origin=True`` to move it).

    Attributes:
        stored: the origin the store remembers.
        requested: the origin it was opened with.
    """

    def __init__(self, *, stored: str, requested: str) -> None:
        super().__init__(f"the store belongs to relay {stored!r}, not {requested!r}")
        self.stored = stored
        self.requested = requested


class UnsupportedStoreVersion(StoreError):
    """The store was written by a newer SDK (a schema version above the supported one).

    Attributes:
        version: the store's schema version.
        supported: the newest version this SDK reads.
    """

    def __init__(self, *, version: int, supported: int) -> None:
        super().__init__(
            f"the store has schema version {version}; this SDK reads up to {supported}"
        )
        self.version = version
        self.supported = supported
