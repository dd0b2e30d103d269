"""An nnU-Net v2 raw dataset from an experiment: the same slices, the same crops, the same folds.

What the bundles train on is cut again with the project's own code: the experiment's lesion-type
datalist -> :func:`monai_liver.engine.data.slice_items` (the cached 2D slices, the same training
subset per fold as the bundles' ``max_train_slices``) -> :func:`monai_liver.transforms.eval_transforms`
of the segmentation baseline (HU window, liver-ROI crop with the bundles' margin, longest side
resized to ``image_size``, padded to a square; no augmentation). nnU-Net gets that network input,
one case per slice, and does its own fingerprint, planning, normalisation and augmentation.

Layout written (nnU-Net's "raw" format, ``Dataset<id>_<name>/``):

- ``imagesTr/<case>_0000.nii.gz``: the image in [0, 1] (the window), float32, stored as a 3D NIfTI
  of shape (H, W, 1) with spacing (1, 1, 999) mm: nnU-Net reads it as (1, 1, W, H) (channel, z, y, x)
  and its 2D configuration trains on the (y, x) plane, as its own 2D conversions do;
- ``labelsTr/<case>.nii.gz``: uint8 0 background, 1 liver, 2 lesion (lesion types collapsed: the
  segmentation baseline's target);
- ``dataset.json``: ``channel_names {"0": "CT"}`` (nnU-Net's CT normalisation: clip to the foreground's
  0.5-99.5 percentiles, z-score), ``labels``, ``numTraining``, ``file_ending``.

Cases are named ``<patient>_<nnn>`` (the patient id made file-name safe, then the slice's index
within the patient, datalist order); ``cases.csv`` beside the dataset maps every case back to its
patient, source file, slice and fold. :func:`splits` gives nnU-Net's ``splits_final.json``: for each
of our folds k, ``val`` = the slices of fold k, ``train`` = the bundles' training slices for k.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_liver.atomic import write_bytes, write_text
from monai_liver.errors import LiverError

__all__ = ["Case", "CASE_COLUMNS", "LABELS", "Z_SPACING", "experiment_datalist", "read_cases", "splits", "write_raw_dataset"]

#: nnU-Net label names -> values (the segmentation baseline's target)
LABELS: dict[str, int] = {"background": 0, "liver": 1, "lesion": 2}
#: spacing of the one-slice axis (mm): nnU-Net's convention for 2D data stored as 3D
Z_SPACING = 999.0
#: columns of cases.csv
CASE_COLUMNS = ("case", "patient_id", "source", "slice", "fold", "true_cls")


@dataclass(frozen=True)
class Case:
    """One slice of the dataset: nnU-Net's case id and where it comes from."""

    case: str
    patient_id: str
    source: str
    slice: str
    fold: int
    true_cls: str  #: class name, "" when the slice has no lesion type


def experiment_datalist(exp_dir: str | Path) -> Path:
    """The lesion-type datalist an experiment trained on: ``experiment.json``'s ``datalist`` when that
    file exists, else ``<exp>/data_lists/lesions.json``. LiverError when there is none."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise LiverError(f"{exp_dir}: not a folder (expected the --out of 'monai-liver experiment')")
    candidates = []
    try:
        recorded = json.loads((exp_dir / "experiment.json").read_text()).get("datalist")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded:
        p = Path(recorded).expanduser()
        candidates += [p] if p.is_absolute() else [exp_dir / p, Path.cwd() / p]
    candidates.append(exp_dir / "data_lists" / "lesions.json")
    for p in candidates:
        if p.is_file():
            return p.resolve()
    raise LiverError(f"{exp_dir}: no lesion-type datalist (expected data_lists/lesions.json or the 'datalist' of "
                     "experiment.json); run 'monai-liver experiment --out DIR' first")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", str(text)).strip("-") or "x"


def _nifti_bytes(array: np.ndarray, dtype) -> bytes:
    """(H, W) array -> gzipped NIfTI bytes of shape (H, W, 1), spacing (1, 1, Z_SPACING)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array, dtype=dtype)[:, :, None], np.diag([1.0, 1.0, Z_SPACING, 1.0]))
    img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=1)


def _slice_key(item: dict) -> str:
    return str(item["image"])  # the cached .npy of one slice (unique per slice and settings)


def write_raw_dataset(
    datalist: str | Path,
    dataset_dir: Path,
    cache_dir: str | Path,
    image_size: int,
    max_train_slices: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[list[Case], list[dict]]:
    """Write the raw dataset of ``datalist`` into ``dataset_dir`` (``.../nnUNet_raw/Dataset<id>_<name>``)
    and ``cases.csv`` beside it; returns (cases, splits). ``dataset.json`` is written last, so its
    presence means the folder is complete. LiverError when the datalist has a patient in two folds."""
    from monai_liver.engine.data import datalist_classes, datalist_folds, read_datalist, slice_items
    from monai_liver.transforms import eval_transforms

    content = read_datalist(datalist)
    root = content["dataset_dir"]
    classes = tuple(datalist_classes(datalist, classes))
    folds = datalist_folds(content["training"])
    if len(folds) < 2 or folds != list(range(len(folds))):
        raise LiverError(f"{datalist}: folds {folds}: expected 0..k-1 with k >= 2 (nnU-Net numbers its folds so)")
    everything = slice_items(datalist, root, 0, "all", cache_dir, classes)
    transform = eval_transforms("seg_baseline", image_size=image_size, n_classes=len(classes))

    (dataset_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dataset_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases, by_key, per_patient = [], {}, {}
    for item in everything:
        pid = str(item["patient_id"])
        n = per_patient[pid] = per_patient.get(pid, -1) + 1
        name = f"{_safe(pid)}_{n:03d}"
        out = transform(dict(item))
        image = out["image"][0].detach().cpu().numpy()  # (H, W) in [0, 1]
        label = out["seg"][0].detach().cpu().numpy()  # (H, W) 0 / 1 / 2
        write_bytes(dataset_dir / "imagesTr" / f"{name}_0000.nii.gz", _nifti_bytes(image, np.float32))
        write_bytes(dataset_dir / "labelsTr" / f"{name}.nii.gz", _nifti_bytes(label, np.uint8))
        cls = int(item.get("cls", -1))
        case = Case(name, pid, str(item.get("source", "")), str(item.get("slice", "")), int(item["fold"]),
                    classes[cls] if 0 <= cls < len(classes) else "")
        cases.append(case)
        by_key[_slice_key(item)] = case
    if len({c.case for c in cases}) != len(cases):
        raise LiverError(f"{datalist}: two slices map to the same nnU-Net case name (patient ids that differ only "
                         "in characters a file name cannot hold)")
    folds_of: dict[str, set[int]] = {}
    for c in cases:
        folds_of.setdefault(c.patient_id, set()).add(c.fold)
    mixed = sorted(p for p, f in folds_of.items() if len(f) > 1)
    if mixed:
        raise LiverError(f"{datalist}: patient {mixed[0]} is in folds {sorted(folds_of[mixed[0]])}; "
                         "folds must be grouped by patient (monai-liver datalist)")

    fold_splits = []
    for k in folds:
        train = [by_key[_slice_key(it)].case for it in
                 slice_items(datalist, root, k, "train", cache_dir, classes, max_slices=max_train_slices or None)]
        fold_splits.append({"train": train, "val": [c.case for c in cases if c.fold == k]})

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CASE_COLUMNS)
    writer.writerows([[getattr(c, k) for k in CASE_COLUMNS] for c in cases])
    write_text(dataset_dir.parent.parent / "cases.csv", buf.getvalue())
    meta = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": dataset_dir.name,
        "description": (f"monai_liver: liver-ROI crops of {Path(datalist).name} at {image_size} px (HU window scaled "
                        "to [0, 1]), one case per slice; labels: the segmentation baseline's target"),
        "monai_liver": {"datalist": str(datalist), "image_size": int(image_size), "classes": list(classes),
                        "folds": folds, "max_train_slices": int(max_train_slices or 0)},
    }
    write_text(dataset_dir / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return cases, fold_splits


def read_cases(path: str | Path) -> list[Case]:
    """``cases.csv`` -> cases (LiverError when it is missing or malformed)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [Case(r["case"], r["patient_id"], r["source"], r["slice"], int(r["fold"]), r["true_cls"]) for r in rows]
    except (OSError, KeyError, ValueError) as e:
        raise LiverError(f"{path}: not a readable cases file ({e})") from None


def splits(cases: Sequence[Case], fold_splits: Sequence[dict]) -> list[dict]:
    """nnU-Net's ``splits_final.json`` content (a list over folds of ``{"train": [...], "val": [...]}``),
    checked: every case of fold k in ``val`` of k, no case in both lists, no patient on both sides."""
    patient = {c.case: c.patient_id for c in cases}
    for k, s in enumerate(fold_splits):
        both = {patient[c] for c in s["train"]} & {patient[c] for c in s["val"]}
        if both:
            raise LiverError(f"fold {k}: patient {sorted(both)[0]} would be in training and held out")
    return [{"train": list(s["train"]), "val": list(s["val"])} for s in fold_splits]
