"""Atomic file writes: a reader (another run, the label server, a resumed experiment) sees the old
file or the new one, never half of one. The content goes to a temporary name in the same folder
(unique per process and call), is flushed to disk, then renamed over the target (``os.replace``)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["copy_file", "temporary_path", "write_bytes", "write_text"]


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden, unique name beside ``path`` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path, tmp = Path(path), temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically; returns ``dst``."""
    dst, tmp = Path(dst), temporary_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
