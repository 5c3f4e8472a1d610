"""Durable whole-file writes, shared by the SDK's file outputs (QR images, reports)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the whole new one:
    a temporary file beside it (mode 0600), flushed and synced, renamed over ``path``,
    then the directory synced where the platform allows. On any failure the temporary
    file is removed and ``path`` is untouched.

    Raises:
        OSError: the directory is missing or not writable.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform can (POSIX). The file is already in
    place: a platform or file system that cannot open or sync a directory (Windows,
    some network file systems) only loses that extra durability, so it is skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
