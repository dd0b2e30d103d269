"""Materialise 2D training slices from datalist items into an on-disk ``.npy`` cache.

Reading one slice of a ``.nii.gz`` decompresses the file from its start, so every source volume
is read once, all of its wanted slices are written as ``.npy``, and later runs read only those.

Inputs (datalist items, paths relative to ``dataset_dir`` or absolute):

- volume items (LiTS / MSD): ``{"image", "label", "patient_id", "fold"}``, label map 0/1/2;
  every slice with liver (``only_liver``) becomes an item; lesion slices repeat
  ``lesion_oversample`` times.
- manifest items: ``{"image", "liver", "lesion", "label": class name, "slice"?, "patient_id",
  "fold"}``; the image is 2D (NIfTI / DICOM file) or 3D with ``slice`` = axial index ``k`` of the
  RAS canonical array ``vol[:, :, k]``. Items naming the same files share one read.

Output items: ``{"image": <HU float32 (X, Y) .npy>, "seg": <uint8 (X, Y) .npy>, "cls": int,
"patient_id", "fold", "source": the item's image, "slice": int}``.

The ``seg`` label map: 0 background, 1 liver, then lesions by this rule:

- LiTS / MSD: 2 lesion (no type); ``cls`` = -1.
- manifest lesion mask 0/1: lesion pixels 2; ``cls`` = index of ``label`` in ``class_names``
  (-1 when the row has no label). The type is in ``cls``: the joint target takes 2 + cls.
- manifest lesion mask with class ids 1..K (values index ``class_names``, 1-based): lesion pixels
  2 + (value - 1), so each lesion keeps its own type; ``cls`` = the row's label (which must be one
  of the ids in the mask) or, without a label, the id with the most pixels.

Hence a seg whose maximum is 2 may still need ``cls`` to know its lesion type; a seg with values
above 2 carries the types itself (see ``monai_liver.transforms.StrategyTargetd``).

Cache: one folder per source, named by a hash of (resolved source paths, their mtime and size,
settings); files are written to a temporary name and moved into place with ``os.replace``, and
an ``index.json`` written last marks the entry complete, so concurrent or interrupted runs never
leave a half-written slice behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_liver.constants import DEFAULT_CLASSES
from monai_liver.data.io import align_mask, load_ct, read_mask
from monai_liver.errors import LiverError

__all__ = ["CACHE_VERSION", "materialise_slices", "seg_from_masks"]

logger = logging.getLogger(__name__)

#: bump when the cached files' content or layout changes
CACHE_VERSION = 1


# ----------------------------------------------------------------------------- helpers


def _resolve(value: Any, dataset_dir: Path, key: str, item: dict) -> Path:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LiverError(f"{dataset_dir}: datalist item {item.get('image', item)!r} has no '{key}' path.")
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else dataset_dir / p


def _stat_token(path: Path) -> list:
    """(name, mtime_ns, size) of a file, or of every file in a folder (a DICOM series)."""
    try:
        if path.is_dir():
            return [[f.name, f.stat().st_mtime_ns, f.stat().st_size] for f in sorted(path.iterdir()) if f.is_file()]
        st = path.stat()
    except OSError:
        raise LiverError(f"{path}: file not found.") from None
    return [str(path.resolve()), st.st_mtime_ns, st.st_size]


def _key(sources: Sequence[Path], settings: dict) -> str:
    blob = json.dumps(
        {"v": CACHE_VERSION, "sources": [_stat_token(p) for p in sources], "paths": [str(p.resolve()) for p in sources],
         "settings": settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    from monai_liver.atomic import write_text

    write_text(path, json.dumps(obj, indent=1))


def _read_index(entry: Path) -> dict | None:
    """The entry's index when it is complete (every file it lists exists), else None."""
    index = entry / "index.json"
    try:
        meta = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION:
        return None
    for s in meta.get("slices", []):
        if not ((entry / s["image"]).is_file() and (entry / s["seg"]).is_file()):
            return None
    return meta


def _safe_stem(path: Path) -> str:
    name = re.sub(r"\.nii(\.gz)?$|\.dcm$", "", path.name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "src"


def _class_index(label: Any, class_names: Sequence[str], source: Path) -> int:
    if label is None or (isinstance(label, float) and np.isnan(label)) or str(label).strip() == "":
        return -1
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if 0 <= int(label) < len(class_names):
            return int(label)
    name = str(label).strip()
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    raise LiverError(f"{source}: class '{name}' is not one of {list(class_names)}.")


def seg_from_masks(
    liver: np.ndarray, lesion: np.ndarray | None, cls: int, n_classes: int, lesion_path: Path | str = "lesion mask"
) -> tuple[np.ndarray, int]:
    """Combine a manifest item's liver and lesion masks into the cached ``seg`` label map.

    ``liver`` (X, Y) any values (> 0 is liver); ``lesion`` (X, Y) 0/1 or class ids 1..n_classes.
    Returns ``(seg uint8 (X, Y), cls)`` following the rule in this module's docstring.
    """
    seg = (liver > 0).astype(np.uint8)
    if lesion is None:
        return seg, cls
    values = np.unique(lesion[lesion > 0])
    if values.size == 0:
        return seg, cls
    if values.max() > n_classes:
        raise LiverError(
            f"{lesion_path}: lesion mask value {int(values.max())} is not allowed "
            f"(expected 0/1 or class ids 1..{n_classes})."
        )
    if values.max() <= 1:  # 0/1 mask: the type is the row's label
        seg[lesion > 0] = 2
        return seg, cls
    ids = [int(v) for v in values]
    if cls >= 0 and cls + 1 not in ids:
        raise LiverError(
            f"{lesion_path}: lesion mask holds class ids {ids} but the manifest label is class {cls + 1}."
        )
    seg[lesion > 0] = (1 + lesion[lesion > 0]).astype(np.uint8)  # value v (1-based) -> 2 + (v - 1)
    if cls < 0:
        counts = [(int((lesion == v).sum()), -v) for v in ids]
        cls = -max(counts)[1] - 1
    return seg, cls


# ----------------------------------------------------------------------------- one source


def _write_entry(entry: Path, slices: list[tuple[int, np.ndarray, np.ndarray, int]], meta: dict) -> dict:
    entry.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, img, seg, cls in slices:
        iname, sname = f"z{k:04d}.npy", f"z{k:04d}_seg.npy"
        _atomic_save_npy(entry / iname, np.ascontiguousarray(img, dtype=np.float32))
        _atomic_save_npy(entry / sname, np.ascontiguousarray(seg, dtype=np.uint8))
        rows.append({"slice": int(k), "image": iname, "seg": sname, "cls": int(cls), "lesion": bool((seg >= 2).any())})
    meta = {**meta, "version": CACHE_VERSION, "slices": rows}
    _atomic_write_json(entry / "index.json", meta)
    return meta


def _volume_slices(image: Path, label: Path, only_liver: bool) -> list[tuple[int, np.ndarray, np.ndarray, int]]:
    ct, affine = load_ct(image)
    seg = align_mask(*read_mask(label, affine, ct.shape[2]), label, affine, ct.shape)
    bad = np.setdiff1d(np.unique(seg), [0, 1, 2])
    if bad.size:
        raise LiverError(f"{label}: label value {int(bad[0])} is not allowed (expected 0 background, 1 liver, 2 lesion).")
    keep = np.flatnonzero((seg > 0).any(axis=(0, 1))) if only_liver else np.arange(ct.shape[2])
    return [(int(k), ct[:, :, k], seg[:, :, k].astype(np.uint8), -1) for k in keep]


def _slice_geometry(affine: np.ndarray, k: int) -> np.ndarray:
    """Affine of the single slice ``vol[:, :, k:k+1]``."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ [0, 0, k] + affine[:3, 3]
    return out


def _manifest_masks(path: Path | None, ct_shape, affine, wanted: list[int]) -> dict[int, np.ndarray | None]:
    """Mask slices (X, Y) for the wanted axial indices, aligned to the CT by geometry.

    A 2D mask over a 3D image belongs to the one slice the item names: it is matched in plane.
    """
    if path is None:
        return {k: None for k in wanted}
    data, maff = read_mask(path, affine, ct_shape[2])
    if data.shape[2] == 1 and ct_shape[2] > 1:
        return {k: align_mask(data, maff, path, _slice_geometry(affine, k), ct_shape[:2] + (1,))[:, :, 0] for k in wanted}
    vol = align_mask(data, maff, path, affine, ct_shape)
    return {k: vol[:, :, k] for k in wanted}


def _manifest_slices(
    image: Path, liver: Path, lesion: Path | None, requests: list[tuple[int | None, int]], n_classes: int
) -> dict[tuple[int | None, int], tuple[int, np.ndarray, np.ndarray, int]]:
    """Read one manifest image (+ masks) once and cut every requested (slice, cls) from it."""
    ct, affine = load_ct(image)
    depth = ct.shape[2]
    index: dict[tuple[int | None, int], int] = {}
    for req in requests:
        k = req[0]
        if k is None:
            if depth != 1:
                raise LiverError(f"{image}: 3D image ({depth} slices) needs a 'slice' value in the manifest.")
            k = 0
        if not 0 <= k < depth:
            raise LiverError(f"{image}: slice {k} is out of range (the image has {depth} axial slices).")
        index[req] = k
    wanted = sorted(set(index.values()))
    livers = _manifest_masks(liver, ct.shape, affine, wanted)
    lesions = _manifest_masks(lesion, ct.shape, affine, wanted)
    out = {}
    for req, k in index.items():
        seg, cls = seg_from_masks(livers[k], lesions[k], req[1], n_classes, lesion or "lesion mask")
        out[req] = (k, ct[:, :, k], seg, cls)
    return out


def _slice_value(item: dict, source: Path) -> int | None:
    value = item.get("slice")
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise LiverError(f"{source}: slice {value!r} is not an integer index.")
    return int(number)


# ----------------------------------------------------------------------------- public


def materialise_slices(
    items: Sequence[dict],
    dataset_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    class_names: Sequence[str] = DEFAULT_CLASSES,
    only_liver: bool = True,
    lesion_oversample: int = 1,
) -> list[dict]:
    """Turn datalist items into cached 2D slice items (see the module docstring for the rules).

    Args:
        items: datalist items (volume or manifest items); paths relative to ``dataset_dir``.
        dataset_dir: folder the item paths are relative to.
        cache_dir: where ``.npy`` slices are written (created); safe to share between runs.
        class_names: lesion types, in class-index order.
        only_liver: keep only the slices of a volume that contain liver (or lesion).
        lesion_oversample: repeat each volume slice with lesion this many times (>= 1).

    Returns:
        slice items in input order (a volume's slices by increasing z), each
        ``{"image", "seg", "cls", "patient_id", "fold", "source", "slice"}``.
    """
    if int(lesion_oversample) < 1:
        raise LiverError(f"{cache_dir}: lesion_oversample must be at least 1, got {lesion_oversample}.")
    dataset_dir = Path(dataset_dir)
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LiverError(f"{cache_dir}: cannot create the slice cache folder ({e.strerror}).") from None
    class_names = tuple(class_names)

    # plan: one cache entry per (source files, settings); manifest rows sharing files share a read
    plans = []  # (item, entry path, kind, sources, request)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item:
            raise LiverError(f"{dataset_dir}: datalist item {i} has no 'image'.")
        image = _resolve(item["image"], dataset_dir, "image", item)
        if "liver" in item or "lesion" in item:
            liver = _resolve(item.get("liver"), dataset_dir, "liver", item)
            les = item.get("lesion")
            lesion = None if les is None or (isinstance(les, str) and not les.strip()) else _resolve(les, dataset_dir, "lesion", item)
            k = _slice_value(item, image)
            cls = _class_index(item.get("label"), class_names, image)
            sources = [image, liver] + ([lesion] if lesion else [])
            settings = {"kind": "manifest", "slice": k, "cls": cls, "classes": list(class_names)}
            plans.append((item, sources, "manifest", (k, cls)))
        else:
            label = _resolve(item.get("label"), dataset_dir, "label", item)
            sources = [image, label]
            settings = {"kind": "volume", "only_liver": bool(only_liver)}
            plans.append((item, sources, "volume", None))
        key = _key(sources, settings)
        entry = cache_dir / f"{_safe_stem(image)}_{key}"
        plans[-1] = plans[-1] + (entry,)
        groups.setdefault((plans[-1][2], tuple(str(p) for p in sources)), []).append(i)

    metas: dict[int, dict] = {}
    for (kind, _), members in groups.items():
        todo = []
        for i in members:
            meta = _read_index(plans[i][4])
            if meta is None:
                todo.append(i)
            else:
                metas[i] = meta
        if not todo:
            continue
        sources = plans[todo[0]][1]
        written: dict[Path, dict] = {}  # items repeated in the datalist share one entry
        if kind == "volume":
            slices = _volume_slices(sources[0], sources[1], only_liver)
            for i in todo:
                entry = plans[i][4]
                if entry not in written:
                    written[entry] = _write_entry(entry, slices, {"source": str(sources[0])})
                metas[i] = written[entry]
            logger.info("%s: cached %d slices", sources[0], len(slices))
        else:
            lesion = sources[2] if len(sources) > 2 else None
            cut = _manifest_slices(sources[0], sources[1], lesion, [plans[i][3] for i in todo], len(class_names))
            for i in todo:
                entry = plans[i][4]
                if entry not in written:
                    written[entry] = _write_entry(entry, [cut[plans[i][3]]], {"source": str(sources[0])})
                metas[i] = written[entry]

    out: list[dict] = []
    for i, (item, sources, kind, _req, entry) in enumerate(plans):
        for row in metas[i]["slices"]:
            slice_item = {
                "image": str(entry / row["image"]),
                "seg": str(entry / row["seg"]),
                "cls": int(row["cls"]),
                "patient_id": str(item.get("patient_id", _safe_stem(sources[0]))),
                "fold": int(item.get("fold", -1)),
                "source": str(item["image"]),
                "slice": int(row["slice"]),
            }
            repeat = int(lesion_oversample) if kind == "volume" and row["lesion"] else 1
            out.extend(dict(slice_item) for _ in range(repeat))
    return out
