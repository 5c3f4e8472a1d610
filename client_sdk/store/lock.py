"""The exclusive lock that keeps two processes off one store (DESIGN 6).

``flock(LOCK_EX | LOCK_NB)`` on a lock file beside the store (``<store>.lock``), held
while the store is open. ``flock`` locks belong to an open file description, so a
second open in the same process conflicts as well as one in another process; the
kernel releases the lock when the descriptor closes, including when the process is
killed. The lock file is never deleted (deleting it would let a third opener lock a
new file while the second still holds the old one). POSIX only.
"""

from __future__ import annotations

import fcntl
import os
from typing import Final

from ..errors import StoreLocked

__all__ = ["FileLock"]

_LOCK_FILE_MODE: Final = 0o600


class FileLock:
    """A held lock; :meth:`release` is idempotent."""

    __slots__ = ("_fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, lock_path: str, store_path: str) -> FileLock:
        """Take the lock at ``lock_path`` without waiting (blocking I/O: off the loop).

        Raises:
            StoreLocked: it is held (by another process or another open of this one).
            OSError: the lock file cannot be created or opened.
        """
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _LOCK_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(store_path) from None
        except BaseException:  # pragma: no cover - flock fails otherwise only on odd filesystems
            os.close(fd)
            raise
        return cls(fd, lock_path)

    def release(self) -> None:
        """Close the descriptor, which releases the lock."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileLock(path={self.path!r}, held={self._fd >= 0})"
