"""A PNG of a manifest's slices per class, in radiological view, with liver and lesion outlines."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from monai_liver.constants import HU_WINDOW
from monai_liver.data.phantoms.imaging import _prepare_dir
from monai_liver.data.phantoms.lesions import LESION_TYPES
from monai_liver.data.phantoms.slices import MANIFEST_COLUMNS
from monai_liver.errors import LiverError


def _radiological(a: np.ndarray) -> np.ndarray:
    """RAS (X, Y) -> display rows (anterior at the top) x columns (patient's right on the left)."""
    return a[::-1, ::-1].T


def _read_canonical(path: Path, slice_index: int | None = None) -> np.ndarray:
    """A 2D slice (X, Y) in RAS order from a 2D or 3D NIfTI file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for unreadable files
        raise LiverError(f"{path}: cannot be read as NIfTI ({e})") from None
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise LiverError(f"{path}: expected a 2D or 3D image, got shape {data.shape}")
    canon = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    data = np.asanyarray(canon.dataobj)
    slice_index = 0 if slice_index is None else int(slice_index)
    if not 0 <= slice_index < data.shape[2]:
        raise LiverError(f"{path}: slice {slice_index} is outside the volume ({data.shape[2]} slices)")
    return np.asarray(data[:, :, slice_index], dtype=np.float32)


def preview(manifest_csv: str | os.PathLike, out_png: str | os.PathLike, per_class: int = 4) -> Path:
    """Save a PNG grid of example slices: one row per class, ``per_class`` columns (distinct patients
    where possible), window HU_WINDOW, liver outline green, lesion outline red, radiological display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise LiverError(f"{manifest_csv}: manifest not found")
    if int(per_class) < 1:
        raise LiverError(f"per_class {per_class}: must be at least 1")
    with open(manifest_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LiverError(f"{manifest_csv}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise LiverError(f"{manifest_csv}: the manifest has no rows")
    classes = list(dict.fromkeys(r["label"] for r in rows))
    order = {c: i for i, c in enumerate(LESION_TYPES)}
    classes.sort(key=lambda c: order.get(c, len(order)))
    picks: dict[str, list[dict]] = {}
    for c in classes:
        seen, chosen = set(), []
        for r in rows:
            if r["label"] == c and r["patient_id"] not in seen:
                seen.add(r["patient_id"])
                chosen.append(r)
        picks[c] = chosen[: int(per_class)]
    ncol = max(len(v) for v in picks.values())
    fig = Figure(figsize=(2.6 * ncol, 2.8 * len(classes)), dpi=100)
    FigureCanvasAgg(fig)
    base = manifest_csv.parent
    lo, hi = HU_WINDOW
    for i, c in enumerate(classes):
        for j in range(ncol):
            ax = fig.add_subplot(len(classes), ncol, i * ncol + j + 1)
            ax.set_axis_off()
            if j >= len(picks[c]):
                continue
            r = picks[c][j]
            sl = int(r["slice"]) if r.get("slice") not in (None, "") else None
            img = _read_canonical(base / r["image"], sl)
            ax.imshow(_radiological(img), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            for key, colour in (("liver", "lime"), ("lesion", "red")):
                m = _read_canonical(base / r[key], sl)
                if m.shape != img.shape:
                    raise LiverError(f"{base / r[key]}: mask shape {m.shape} differs from image {img.shape}")
                if (m > 0).any():
                    ax.contour(_radiological((m > 0).astype(float)), levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_title(f"{c} · {r['patient_id']}", fontsize=9)
            ax.text(0.02, 0.5, "R", color="yellow", fontsize=8, transform=ax.transAxes, va="center")
    fig.suptitle(f"{manifest_csv.name}: window [{lo:g}, {hi:g}] HU, liver green, lesion red "
                 "(radiological view)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out_png = Path(out_png)
    _prepare_dir(out_png.parent)
    fig.savefig(str(out_png))
    return out_png
