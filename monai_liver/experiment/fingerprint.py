"""A fingerprint of an experiment's input data, so that a folder is never resumed on other data.

The fingerprint (SHA-256, first 16 hex digits) covers the inputs the user named: a datalist's
JSON text and, for every file its items name, the path relative to the dataset folder and the
file's content hash (files up to 4 MB: slices, small volumes; so regenerated phantoms, which are
byte-identical, keep their fingerprint) or its size and modification time (larger files: hashing a
LiTS copy of tens of GB on every resume would cost minutes, and a rewrite changes the time); a
manifest CSV's text and its files likewise; a LiTS folder's ``volume-*`` / ``segmentation-*`` files.
Phantoms the experiment makes itself have no fingerprint (their seed is one of the fixed settings).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["data_fingerprint"]

_FILE_KEYS = ("image", "label", "liver", "lesion")


#: files up to this size are hashed by content (slices, small volumes), larger ones by size and time
HASH_BYTES = 4 << 20


def _stamp(h, path: Path, root: Path) -> None:
    try:
        st = path.stat()
        if st.st_size <= HASH_BYTES:
            stamp = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    try:
        name = os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        name = str(path)
    h.update(f"{name}\0{stamp}\n".encode())


def _datalist_files(path: Path) -> tuple[bytes, Path, list[Path]]:
    from monai_liver.data.datalist import read_datalist

    content = read_datalist(path)
    root = Path(content["dataset_dir"])
    files = {root / str(it[k]) for it in content["training"] for k in _FILE_KEYS
             if isinstance(it.get(k), str) and (k != "label" or "liver" not in it)}
    return path.read_bytes(), root, sorted(files)


def _manifest_files(path: Path) -> tuple[bytes, Path, list[Path]]:
    from monai_liver.data.manifest import read_manifest

    rows = read_manifest(path, check_files=False, allow_outside=True)
    files = {Path(r[k]) for r in rows for k in ("image", "liver", "lesion")}
    return path.read_bytes(), path.parent, sorted(files)


def _lits_files(folder: Path) -> tuple[bytes, Path, list[Path]]:
    files = [p for pattern in ("volume-*.nii*", "segmentation-*.nii*") for p in folder.rglob(pattern)]
    return b"", folder, sorted(files)


def data_fingerprint(datalist=None, manifest=None, lits=None, lits_datalist=None) -> str | None:
    """Fingerprint of the given inputs (module doc); None when none is given (phantoms)."""
    h = hashlib.sha256()
    given = False
    for kind, value, reader in (("datalist", datalist, _datalist_files), ("manifest", manifest, _manifest_files),
                                ("lits", lits, _lits_files), ("lits_datalist", lits_datalist, _datalist_files)):
        if not value:
            continue
        given = True
        text, root, files = reader(Path(value))
        h.update(f"{kind}\0".encode() + hashlib.sha256(text).digest())
        for f in files:
            _stamp(h, f, root)
    return h.hexdigest()[:16] if given else None
