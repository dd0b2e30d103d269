"""An exclusive advisory lock on a file or folder (``fcntl.flock``), next to :mod:`monai_liver.atomic`: one
process at a time works in a folder. The lock is released when the block ends, and by the operating
system when its process dies (even by SIGKILL), so a killed holder never leaves it stale."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from monai_liver.errors import LiverError

__all__ = ["exclusive_lock"]


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block: a file (created, with its folder),
    or an existing folder itself (nothing is written into it); wait for another process that holds
    it, or with ``busy``, raise ``LiverError(busy)`` at once."""
    import fcntl

    path = Path(path)
    if path.is_dir():
        fd = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # as open(path, "w")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise LiverError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
