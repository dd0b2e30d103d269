"""A 3D study made of typed 2D slices: the check that the cascade types lesions right.

A lesion-type set is 2D slices (one per row of the manifest), each with a liver mask, a lesion mask
and a radiologist's type; the cascade runs on 3D studies. :func:`make_typed_study` stacks held-out
typed slices into one small study whose every lesion has a known type:

- each slice is resampled in plane to one pixel spacing (``spacing_mm``, bilinear; masks nearest)
  and padded or cropped (centre) to ``size`` x ``size`` pixels, padding with air (-1024 HU);
- each becomes a block of ``slices_per_lesion`` identical axial slices (``slice_mm`` apart), so every
  lesion is a 3D object a few millimetres thick;
- blocks are separated by one air slice (no liver, no lesion), so the lesions of two blocks are never
  one 3D component, in the reference or in a prediction;
- a slice whose lesion lies outside that field of view is left out (``study.json``: ``skipped``);
- slices are taken per class in turn (up to ``per_class`` each, one patient's first slice before
  anyone's second), so neighbouring blocks have different types.

Files written to ``out`` (RAS affine ``diag(spacing_mm, spacing_mm, slice_mm)``, shape
``(size, size, n_blocks * (slices_per_lesion + 1))``): ``volume.nii.gz`` (int16 HU),
``segmentation.nii.gz`` (0 background, 1 liver, 2 lesion: the LiTS convention), ``liver.nii.gz``
(0/1, for ``infer --liver``), ``lesiontypes.nii.gz`` (0, or 1 + k for a lesion of type k, as the
LiTS-like phantoms write) and ``study.json`` (which slice is in which block, its type, the classes).
:func:`monai_liver.inference.volume_check.check_volume` scores ``infer`` on it.

The slices of a typed set are a liver-centred field of view (a targeted reconstruction), not a whole
trunk: give the liver (``liver.nii.gz``) to check the typing alone; without it, stage 1's localiser,
trained on whole LiTS slices, meets a field of view it did not train on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_liver.errors import LiverError

__all__ = ["make_typed_study", "STUDY_FILES"]

#: the files :func:`make_typed_study` writes, by role.
STUDY_FILES: dict[str, str] = {
    "volume": "volume.nii.gz",
    "segmentation": "segmentation.nii.gz",
    "liver": "liver.nii.gz",
    "lesion_types": "lesiontypes.nii.gz",
    "study": "study.json",
}
AIR_HU = -1024.0


def _interleaved(items: Sequence[dict], class_names: Sequence[str], per_class: int) -> list[dict]:
    """Up to ``per_class`` items per class (each patient's first slice before any second), the classes in turn."""
    lowered = [c.lower() for c in class_names]
    queues: list[list[dict]] = []
    for name in lowered:
        rows = [it for it in items if str(it.get("label", "")).strip().lower() == name]
        rank: dict[str, int] = {}
        order = []
        for it in rows:
            pid = str(it.get("patient_id", ""))
            order.append((rank.get(pid, 0), len(order), it))
            rank[pid] = rank.get(pid, 0) + 1
        queues.append([it for _, _, it in sorted(order, key=lambda t: t[:2])][:per_class])
    picked = []
    for k in range(max((len(q) for q in queues), default=0)):
        picked += [q[k] for q in queues if k < len(q)]
    return picked


def _typed_slice(item: dict, dataset_dir: Path, class_names: Sequence[str], spacing_mm: float, size: int):
    """One item as (HU (size, size) float32, liver (size, size) bool, lesion types (size, size) uint8:
    0, or 1 + k for a lesion pixel of type k)."""
    from monai.transforms import ResizeWithPadOrCrop, Zoom

    from monai_liver.data.io import load_ct, load_mask
    from monai_liver.data.slices import _class_index, _resolve, _slice_value, seg_from_masks

    image = _resolve(item["image"], dataset_dir, "image", item)
    hu, affine = load_ct(image)
    k = _slice_value(item, image)
    k = 0 if k is None else k
    liver, lesion = (load_mask(_resolve(item[key], dataset_dir, key, item), reference_affine=affine,
                               reference_shape=hu.shape)[:, :, k] for key in ("liver", "lesion"))
    cls = _class_index(item.get("label"), class_names, image)
    seg, cls = seg_from_masks(liver, lesion, cls, len(class_names), item["lesion"])  # checks the mask values
    if cls < 0 or not (lesion > 0).any():
        raise LiverError(f"{image}: a typed study needs slices with a typed lesion (this row has none)")
    types = np.where(lesion > 0, lesion if lesion.max() > 1 else cls + 1, 0)  # 0/1 mask: the row's type
    factor = [float(np.linalg.norm(affine[:3, i])) / spacing_mm for i in (0, 1)]
    crop = ResizeWithPadOrCrop((size, size), mode="constant")

    def resample(a: np.ndarray, mode: str) -> np.ndarray:
        return np.asarray(crop(Zoom(factor, mode=mode, keep_size=False)(a[None].astype(np.float32))))[0]

    img = resample(hu[:, :, k] - AIR_HU, "bilinear") + AIR_HU  # pad with air
    return img, resample(seg >= 1, "nearest") > 0.5, np.rint(resample(types, "nearest")).astype(np.uint8)


def make_typed_study(
    datalist: str | Path,
    fold: int,
    out: str | Path,
    per_class: int = 8,
    slices_per_lesion: int = 3,
    spacing_mm: float = 0.8,
    slice_mm: float = 2.5,
    size: int = 256,
) -> dict:
    """Stack the typed slices of ``fold`` of a lesion-type ``datalist`` into a study (module doc);
    returns the content of ``study.json`` (``blocks``: per block its source image, patient, type,
    first axial index and lesion pixels)."""
    from monai_liver.data.datalist import read_datalist
    from monai_liver.data.phantoms.imaging import _save_nifti

    content = read_datalist(datalist, require_items=True)
    classes = list(content.get("classes") or [])
    if not classes:
        raise LiverError(f"{datalist}: no 'classes' list: a typed study needs the lesion types")
    if per_class < 1 or slices_per_lesion < 1 or spacing_mm <= 0 or slice_mm <= 0 or size < 32:
        raise LiverError(f"typed study: per_class and slices_per_lesion must be >= 1, spacings > 0 mm, size >= 32 "
                         f"(got {per_class}, {slices_per_lesion}, {spacing_mm}, {slice_mm}, {size})")
    held_out = [it for it in content["training"] if int(it.get("fold", -1)) == int(fold) and "lesion" in it]
    picked = _interleaved(held_out, classes, int(per_class))
    if not picked:
        raise LiverError(f"{datalist}: fold {fold} has no typed slice of {classes}")
    root = Path(content["dataset_dir"])
    step = int(slices_per_lesion) + 1
    slices, skipped = [], []
    for item in picked:
        img, liv, typ = _typed_slice(item, root, classes, float(spacing_mm), int(size))
        (slices if (typ > 0).any() else skipped).append((item, img, liv, typ))
    if not slices:
        raise LiverError(f"{datalist}: no lesion of fold {fold} lies within {size} px at {spacing_mm} mm; "
                         f"give a larger size or spacing")
    depth = len(slices) * step
    hu = np.full((size, size, depth), AIR_HU, np.float32)
    liver = np.zeros((size, size, depth), bool)
    types = np.zeros((size, size, depth), np.uint8)
    blocks = []
    for b, (item, img, liv, typ) in enumerate(slices):
        z0 = b * step
        hu[:, :, z0 : z0 + slices_per_lesion] = img[:, :, None]
        liver[:, :, z0 : z0 + slices_per_lesion] = liv[:, :, None]
        types[:, :, z0 : z0 + slices_per_lesion] = typ[:, :, None]
        present = np.bincount(typ[typ > 0], minlength=len(classes) + 1)
        blocks.append({"image": str(item["image"]), "patient_id": item.get("patient_id"),
                       "class": classes[int(present.argmax()) - 1], "first_slice": z0, "lesion_pixels": int(present.sum())})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([float(spacing_mm), float(spacing_mm), float(slice_mm), 1.0])
    _save_nifti(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine, out / STUDY_FILES["volume"])
    liver |= types > 0
    _save_nifti(np.where(types > 0, 2, liver).astype(np.uint8), affine, out / STUDY_FILES["segmentation"])
    _save_nifti(liver.astype(np.uint8), affine, out / STUDY_FILES["liver"])
    _save_nifti(types, affine, out / STUDY_FILES["lesion_types"])
    study = {"datalist": str(datalist), "fold": int(fold), "classes": classes, "slices_per_lesion": int(slices_per_lesion),
             "spacing_mm": [float(spacing_mm), float(spacing_mm), float(slice_mm)], "blocks": blocks,
             "skipped": [{"image": str(it["image"]), "why": f"its lesion lies outside {size} px at {spacing_mm} mm"}
                         for it, *_ in skipped]}
    (out / STUDY_FILES["study"]).write_text(json.dumps(study, indent=2))
    return study
