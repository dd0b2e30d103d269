"""Lesion-type 2D slices of many patients with a CSV manifest (the hospital data of the paper, made up)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_liver.constants import DEFAULT_CLASSES
from monai_liver.data.phantoms.anatomy import _Anatomy
from monai_liver.data.phantoms.geometry import _Grid
from monai_liver.data.phantoms.imaging import _STREAM_PATIENT, _STREAM_PLAN, _blur_and_noise, _check_seed, _prepare_dir, _rng, _save_nifti
from monai_liver.data.phantoms.lesions import CLASS_MIX, LESION_TYPES, _draw_lesion, _lesion_style, _n_lesions, _paint_lesion, _place_lesions
from monai_liver.errors import LiverError


MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "image", "liver", "lesion", "label")


_MIN_SIZE = 32


def _check_classes(class_names: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    names = tuple(str(c).strip().lower() for c in class_names)
    unknown = [n for n in names if n not in LESION_TYPES]
    if not names or unknown or len(set(names)) != len(names):
        raise LiverError(
            f"class names {list(class_names)!r}: phantoms can draw only distinct types among {list(LESION_TYPES)}"
        )
    return names


def _patient_classes(n_patients: int, names: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Class per patient in the CLASS_MIX proportions (largest remainder), shuffled."""
    w = np.array([CLASS_MIX[n] for n in names])
    share = w / w.sum() * n_patients
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts))[: n_patients - counts.sum()]:
        counts[i] += 1
    labels = [n for n, c in zip(names, counts) for _ in range(c)]
    rng.shuffle(labels)
    return labels


def _slices_per_patient(n_patients: int, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """At least one slice each; the rest spread unevenly (some patients contribute several), at most
    about three times the mean per patient."""
    cap = max(3, int(np.ceil(3 * n_slices / n_patients)))
    w = rng.gamma(0.8, size=n_patients) + 1e-6
    counts = 1 + rng.multinomial(n_slices - n_patients, w / w.sum())
    while (excess := int(np.clip(counts - cap, 0, None).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = np.where(counts < cap, w, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def _patient_slices(pid: str, kind: str, n: int, size: int, rng: np.random.Generator):
    """``n`` slices of one patient: yields (HU int16 (X, Y), liver uint8, lesion uint8, affine)."""
    anat = _Anatomy(rng)
    style = _lesion_style(kind, rng, anat)
    sp = round(rng.uniform(0.7, 0.9) * 256 / size, 4)
    thickness = float(rng.choice([1.0, 2.0, 2.5, 3.0, 5.0]))
    noise = rng.uniform(10, 20)
    blur = rng.uniform(0.6, 1.0)
    fov = sp * size
    cu = anat.body_a + rng.uniform(0, 20) - fov / 2  # liver-centred field of view on the right
    cv = anat.body_b + rng.uniform(0, 25) - fov / 2
    u = cu + (np.arange(size) - (size - 1) / 2) * sp
    v = cv + (np.arange(size) - (size - 1) / 2) * sp
    zs = np.sort(anat.liver_c[2] + rng.uniform(-0.45, 0.45, size=n) * anat.liver_semi[2])[::-1]
    for k in range(n):
        places, z = [], float(zs[k])
        for _ in range(6):
            g = _Grid(u, v, [z])
            hu, liver = anat.render(g)
            radii = [float(np.clip(rng.lognormal(np.log(style["size"]), 0.5), 2.5, 35))
                     for _ in range(_n_lesions(style, rng))]
            places = _place_lesions(liver, g, radii, rng)
            if places:
                break
            z = anat.liver_c[2] + rng.uniform(-0.3, 0.3) * anat.liver_semi[2]  # liver too small here
        if not places:  # the liver phantom always has room at its centre; guard anyway
            raise RuntimeError(f"{pid}: no room for a lesion in the liver phantom")
        lesion = np.zeros(g.shape, dtype=bool)
        for centre, r in places:
            les = _draw_lesion(kind, rng, r, centre, style, anat, planar=True, thickness=thickness)
            _paint_lesion(les, g, hu, liver, lesion, anat.hu["liver"])
        img = _blur_and_noise(hu, g.spacing, rng, noise, blur_mm=blur)[:, :, 0]
        affine = np.diag([sp, sp, thickness, 1.0])
        affine[:3, 3] = [u[0], v[0], z]
        yield img, liver[:, :, 0].astype(np.uint8), lesion[:, :, 0].astype(np.uint8), affine


def _check_slices(n_patients: int, n_slices: int, size: int) -> None:
    if int(n_patients) < 1:
        raise LiverError(f"--patients {n_patients}: at least one patient is needed")
    if int(n_slices) < int(n_patients):
        raise LiverError(f"--slices {n_slices}: fewer slices than patients ({n_patients}); every patient needs one")
    if int(size) < _MIN_SIZE:
        raise LiverError(f"--size {size}: slices must be at least {_MIN_SIZE} pixels")


def _make_slices(out_dir, n_patients: int, n_slices: int, size: int, seed: int,
                 class_names) -> tuple[Path, dict]:
    names = _check_classes(class_names)
    _check_slices(n_patients, n_slices, size)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    for sub in ("images", "liver", "lesion"):
        (out / sub).mkdir(exist_ok=True)
    plan = _rng(seed, _STREAM_PLAN, 1)
    classes = _patient_classes(int(n_patients), names, plan)
    counts = _slices_per_patient(int(n_patients), int(n_slices), plan)
    width = max(3, len(str(n_patients)))
    rows, stats = [], {n: {"patients": 0, "slices": 0} for n in names}
    for p, (kind, n) in enumerate(zip(classes, counts)):
        pid = f"P{p + 1:0{width}d}"
        stats[kind]["patients"] += 1
        for k, (img, liv, les, affine) in enumerate(_patient_slices(pid, kind, int(n), int(size),
                                                                     _rng(seed, _STREAM_PATIENT, p))):
            name = f"{pid}_{k:02d}.nii.gz"
            _save_nifti(img, affine, out / "images" / name)
            _save_nifti(liv, affine, out / "liver" / name)
            _save_nifti(les, affine, out / "lesion" / name)
            rows.append({"patient_id": pid, "image": f"images/{name}", "liver": f"liver/{name}",
                         "lesion": f"lesion/{name}", "label": kind})
            stats[kind]["slices"] += 1
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest, {"classes": stats, "patients": int(n_patients), "slices": len(rows), "size": int(size)}


def make_lesion_slices(out_dir: str | os.PathLike, n_patients: int = 140, n_slices: int = 332, size: int = 256,
                       seed: int = 0, class_names: Sequence[str] = DEFAULT_CLASSES) -> Path:
    """Write lesion-type 2D CT slices and their manifest (the paper's private set, as phantoms).

    Files under ``out_dir``: ``images/<patient>_<k>.nii.gz`` (int16 HU, shape (size, size) in RAS
    order, pixel spacing about 0.7-0.9 mm at size 256: a liver-centred field of view of ~18-23 cm),
    ``liver/`` and ``lesion/`` (uint8 0/1; the liver mask includes its lesions), and ``manifest.csv``
    with columns ``patient_id, image, liver, lesion, label`` (paths relative to the CSV). Each
    patient has one lesion type and one to several slices; the class mix is about 40% metastasis,
    35% cyst, 25% hemangioma (of the types in ``class_names``). Deterministic for a given ``seed``.

    Returns:
        the manifest path.
    """
    return _make_slices(out_dir, n_patients, n_slices, size, seed, class_names)[0]
