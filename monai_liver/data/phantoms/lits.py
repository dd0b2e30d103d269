"""LiTS-like 3D volumes: ``volume-N.nii.gz`` + ``segmentation-N.nii.gz`` (+ ``lesiontypes-N.nii.gz``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_liver.data.phantoms.anatomy import _Anatomy
from monai_liver.data.phantoms.geometry import _Grid
from monai_liver.data.phantoms.imaging import _STREAM_LITS, _STREAM_PLAN, _blur_and_noise, _check_seed, _prepare_dir, _rng, _save_nifti
from monai_liver.data.phantoms.lesions import CLASS_MIX, LESION_TYPES, _draw_lesion, _lesion_style, _paint_lesion, _place_lesions
from monai_liver.errors import LiverError


_MIN_LITS_SHAPE = (32, 32, 4)


def _lits_volume(shape: tuple[int, int, int], rng: np.random.Generator, with_lesions: bool):
    """One LiTS-like volume: (HU int16, labels uint8, affine, lesion kinds, lesion types uint8 with
    1 + the index of each lesion's kind in ``LESION_TYPES``), arrays in LPS order."""
    anat = _Anatomy(rng)
    nx, ny, nz = shape
    fov = 2 * anat.body_a + rng.uniform(20, 70)
    sxy = round(fov / max(nx, ny), 3)
    sz = float(rng.choice([2.5, 3.0, 4.0, 5.0])) if nz > 8 else 5.0
    u = (np.arange(nx) - (nx - 1) / 2) * sxy
    v = (np.arange(ny) - (ny - 1) / 2) * sxy + rng.uniform(-10, 10)
    top = anat.liver_top + rng.uniform(0, 25)  # start just above the liver dome
    z = top - (nz - 1) * sz + np.arange(nz) * sz
    g = _Grid(u, v, z)
    hu, liver = anat.render(g)
    lesion = np.zeros(g.shape, dtype=bool)
    types = np.zeros(g.shape, dtype=np.uint8)
    kinds = []
    if with_lesions:
        n = int(rng.integers(1, 6))
        kinds = list(rng.choice(LESION_TYPES, size=n, p=[CLASS_MIX[k] for k in LESION_TYPES]))
        styles = {k: _lesion_style(k, rng, anat) for k in sorted(set(kinds))}
        radii = [float(np.clip(rng.lognormal(np.log(1.4 * styles[k]["size"]), 0.5), 4, 35)) for k in kinds]
        places = _place_lesions(liver, g, radii, rng)
        kinds = kinds[: len(places)]
        for kind, (centre, r) in zip(kinds, places):
            les = _draw_lesion(kind, rng, r, centre, styles[kind], anat, planar=False)
            before = lesion.copy()
            _paint_lesion(les, g, hu, liver, lesion, anat.hu["liver"])
            types[lesion & ~before] = 1 + LESION_TYPES.index(kind)
    labels = liver.astype(np.uint8)
    labels[lesion] = 2
    noise = rng.uniform(10, 20)
    vol = _blur_and_noise(hu, g.spacing, rng, noise, blur_mm=rng.uniform(0.7, 1.1))
    # RAS grid -> LPS voxel order (x and y reversed), the usual LiTS layout
    vol, labels, types = vol[::-1, ::-1].copy(), labels[::-1, ::-1].copy(), types[::-1, ::-1].copy()
    affine = np.diag([-sxy, -sxy, sz, 1.0])
    affine[:3, 3] = [u[-1], v[-1], z[0]]
    return vol, labels, affine, kinds, types


def _check_lits(n_volumes: int, shape: Sequence[int]) -> tuple[int, int, int]:
    if int(n_volumes) < 0:
        raise LiverError(f"--lits-volumes {n_volumes}: the number of volumes must be >= 0")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < m for s, m in zip(shape, _MIN_LITS_SHAPE)):
        raise LiverError(
            f"--lits-shape {' '.join(map(str, shape))}: a volume needs 3 sizes of at least "
            f"{' x '.join(map(str, _MIN_LITS_SHAPE))} voxels"
        )
    return shape  # type: ignore[return-value]


def _lits_plan(n_volumes: int, seed: int) -> np.ndarray:
    """Which volumes carry lesions: about one in five is lesion-free, at least one when n >= 2."""
    rng = _rng(seed, _STREAM_PLAN, 0)
    free = np.zeros(n_volumes, dtype=bool)
    if n_volumes >= 2:
        k = max(1, int(round(0.2 * n_volumes)))
        free[rng.choice(n_volumes, size=k, replace=False)] = True
    return ~free


def _make_lits(out_dir, n_volumes: int, shape, seed: int) -> tuple[list[Path], dict]:
    shape = _check_lits(n_volumes, shape)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    plan = _lits_plan(int(n_volumes), seed)
    paths, lesions, free = [], 0, 0
    for i in range(int(n_volumes)):
        vol, lab, affine, kinds, types = _lits_volume(shape, _rng(seed, _STREAM_LITS, i), bool(plan[i]))
        _save_nifti(vol, affine, out / f"volume-{i}.nii.gz")
        _save_nifti(lab, affine, out / f"segmentation-{i}.nii.gz")
        _save_nifti(types, affine, out / f"lesiontypes-{i}.nii.gz")
        paths.append(out / f"volume-{i}.nii.gz")
        lesions += len(kinds)
        free += int(not (lab == 2).any())
    return paths, {"volumes": len(paths), "lesions": lesions, "lesion_free": free, "shape": shape}


def make_lits_phantoms(out_dir: str | os.PathLike, n_volumes: int = 6, shape: Sequence[int] = (160, 160, 48),
                       seed: int = 0) -> list[Path]:
    """Write LiTS-like portal-venous CT volumes to ``out_dir``.

    Files: ``volume-N.nii.gz`` (int16 HU, shape ``shape`` = (X, Y, Z) in LPS voxel order, affine
    ``diag(-sx, -sy, sz)`` with about 1.9-2.6 mm pixels for a 160 grid and 2.5-5 mm slices) and
    ``segmentation-N.nii.gz`` (uint8: 0 background, 1 liver, 2 lesion) and ``lesiontypes-N.nii.gz``
    (uint8: 0, or 1 + k for a lesion of type k of ``LESION_TYPES``: the known type of every lesion, for
    checking the per-lesion class of ``monai-liver infer``). About one volume in five has
    no lesion (at least one when ``n_volumes >= 2``). Deterministic for a given ``seed``.

    Returns:
        the volume paths, in order (the segmentation sits beside each).
    """
    return _make_lits(out_dir, n_volumes, shape, seed)[0]
