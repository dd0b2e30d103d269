"""An exclusive advisory lock on a file (``fcntl.flock``), next to :mod:`monai_liver.atomic`: one
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
    """Hold an exclusive lock on ``path`` (created, with its folder) for the ``with`` block: wait
    for another process that holds it, or with ``busy``, raise ``LiverError(busy)`` at once."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise LiverError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
