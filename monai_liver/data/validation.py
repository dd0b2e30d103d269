"""Check a dataset (through its datalist) before training.

``validate_datalist`` returns a list of ``Problem`` (error or warning, path, one-sentence message);
``monai-liver validate DATALIST`` prints one line per problem (``ERROR path: message`` /
``WARN path: message``) and a final count, and exits 1 when there is any error.

Checks:
- the datalist: ``training`` items with ``image`` and masks, ``patient_id``, ``fold`` within
  ``[0, n_folds)``, a patient never in two folds, class names known, every class in every fold (warn);
- files: exist and load (through ``data.io``); image and masks share shape and geometry (RAS affines
  equal within a tenth of a voxel); mask values allowed (LiTS / MSD 0/1/2; manifest liver 0/1,
  lesion 0/1 or class ids 1..K); a manifest lesion lies inside its liver (warn when more than
  ``LESION_OUTSIDE_WARN`` of it does not); the slice index is in range for 3D volumes;
- CT values: finite; Hounsfield-like (warn when they look normalised or like raw unsigned values).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from monai_liver.errors import LiverError

__all__ = ["Problem", "LESION_OUTSIDE_WARN", "validate_datalist", "add_arguments", "main"]

#: warn when more than this fraction of a slice's lesion pixels lies outside its liver mask
LESION_OUTSIDE_WARN = 0.10
LITS_VALUES = (0, 1, 2)
LIVER_VALUES = (0, 1)


@dataclass(frozen=True)
class Problem:
    """One finding: ``level`` is ``"error"`` (training would fail or be wrong) or ``"warning"``."""

    level: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{'ERROR' if self.level == 'error' else 'WARN'} {self.path}: {self.message}"


class _Report:
    """Problems in order of discovery, each reported once."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._seen: set[Problem] = set()

    def error(self, path, message: str) -> None:
        self._add(Problem("error", str(path), message))

    def warn(self, path, message: str) -> None:
        self._add(Problem("warning", str(path), message))

    def _add(self, p: Problem) -> None:
        if p not in self._seen:
            self._seen.add(p)
            self.problems.append(p)


def _strip_path(message: str, path: str) -> str:
    """LiverError messages start with "<path>: "; drop it since the Problem carries the path."""
    for prefix in (f"{path}: ", f"{os.path.basename(path)}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def _fmt(values: Iterable) -> str:
    return ", ".join(str(int(v)) for v in values)


def _unique(arr: np.ndarray) -> np.ndarray:
    """Distinct values of an integer mask (bincount: much faster than np.unique on a CT volume)."""
    if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() < 1 << 16:
        return np.flatnonzero(np.bincount(arr.ravel()))
    return np.unique(arr)


def _geometry_difference(a: np.ndarray, b: np.ndarray, in_plane_only: bool = False) -> str | None:
    """None when the affines agree (directions and spacing within 1e-3, origin within a tenth of a
    voxel), else a short description of the difference."""
    cols = [0, 1] if in_plane_only else [0, 1, 2]
    sa, sb = np.linalg.norm(a[:3, cols], axis=0), np.linalg.norm(b[:3, cols], axis=0)
    if not np.allclose(sa, sb, rtol=1e-3, atol=1e-4):
        return f"spacing {tuple(round(float(s), 3) for s in sa)} mm vs the image's {tuple(round(float(s), 3) for s in sb)} mm"
    if not np.allclose(a[:3, cols] / sa, b[:3, cols] / sb, atol=1e-3):
        return "axis directions differ from the image's"
    if not in_plane_only:
        off = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
        if off > 0.1 * float(sb.min()):
            return f"origin is {off:.2f} mm away from the image's"
    return None


def _check_values(report: _Report, path: str, values: np.ndarray, allowed: Iterable[int], what: str) -> bool:
    """Report values outside ``allowed``; True when all are allowed."""
    bad = sorted(set(int(v) for v in values) - set(allowed))
    if bad:
        hint = " (a 0/255 mask? store 0/1)" if bad == [255] else ""
        report.error(path, f"{what} value{'s' if len(bad) > 1 else ''} {_fmt(bad[:5])} "
                     f"{'are' if len(bad) > 1 else 'is'} not allowed (expected {_fmt(allowed)}){hint}")
    return not bad


def _check_hu(report: _Report, path: str, image: np.ndarray) -> None:
    finite = np.isfinite(image)
    if not finite.all():
        report.error(path, f"{int((~finite).sum())} voxels are NaN or infinite")
        image = image[finite]
        if image.size == 0:
            return
    lo, hi = float(image.min()), float(image.max())
    if lo >= -0.5 and hi <= 1.5:
        report.warn(path, f"values lie in [{lo:.2f}, {hi:.2f}]: they look normalised, not Hounsfield units "
                    "(store CT in HU; the pipeline windows it)")
    elif lo >= 0 and hi >= 1000:
        report.warn(path, f"no value below 0 (range [{lo:.0f}, {hi:.0f}]): this looks like raw scanner values, "
                    "not Hounsfield units (apply the rescale intercept, e.g. -1024)")


class _Loader:
    """Loads through ``data.io``, keeping the files of one image group, and turns LiverErrors into
    problems."""

    def __init__(self, report: _Report):
        from monai_liver.data import io

        self.io, self.report = io, report
        self.cache: dict[tuple, object] = {}
        self.failed: set[str] = set()

    def clear(self) -> None:
        self.cache.clear()

    def _guard(self, path: str, fn):
        if path in self.failed:
            return None
        if not os.path.exists(path):
            self.failed.add(path)
            self.report.error(path, "file not found")
            return None
        try:
            return fn()
        except LiverError as e:
            self.failed.add(path)
            self.report.error(path, _strip_path(str(e), path))
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # a reader failing in a way data.io did not anticipate: still one line
            self.failed.add(path)
            self.report.error(path, f"cannot be read ({type(e).__name__}: {e})")
        return None

    def ct(self, path: str):
        key = ("ct", path)
        if key not in self.cache:
            self.cache[key] = self._guard(path, lambda: self.io.load_ct(path))
        return self.cache[key]

    def mask(self, path: str, ref_affine: np.ndarray, ref_shape: tuple[int, ...], allow_slice: bool):
        """-> (array in RAS, distinct values, geometry problem or None), or None when it failed to load.
        ``allow_slice``: a one-slice (2D) mask of a 3D image is fine (manifest rows with ``slice``)."""
        key = ("mask", path, tuple(ref_shape), allow_slice)
        if key not in self.cache:
            self.cache[key] = self._guard(path, lambda: self._mask(path, ref_affine, ref_shape, allow_slice))
        return self.cache[key]

    def _mask(self, path: str, ref_affine: np.ndarray, ref_shape: tuple[int, ...], allow_slice: bool):
        if not self.io.is_nifti(path):
            # DICOM SEG / DICOM label images: frames are placed by position, so data.io aligns them to
            # the image through the geometry (and raises when they do not overlap it)
            arr = np.asarray(self.io.load_mask(path, reference_affine=ref_affine, reference_shape=ref_shape))
            return arr, _unique(arr), None
        _, affine = self.io.read_geometry(path)  # RAS canonical, headers only
        arr = np.asarray(self.io.load_mask(path))  # RAS canonical, the mask's own grid
        shape, ref_shape = tuple(arr.shape), tuple(ref_shape)
        one_slice = allow_slice and shape[2] == 1 and ref_shape[2] > 1
        if shape[:2] != ref_shape[:2] or (shape[2] != ref_shape[2] and not one_slice):
            return arr, _unique(arr), f"mask shape {shape} differs from the image's {ref_shape}"
        return arr, _unique(arr), _geometry_difference(affine, ref_affine, in_plane_only=one_slice)


def _load_source(path_or_dict, dataset_dir) -> tuple[dict, str, str]:
    from monai_liver.data.datalist import read_datalist

    if isinstance(path_or_dict, dict):
        dl, where = dict(path_or_dict), "datalist"
        if not isinstance(dl.get("training"), list):
            raise LiverError("datalist: no \"training\" list (expected a MONAI datalist)")
        base = dataset_dir or dl.get("dataset_dir") or os.getcwd()
    else:
        dl, where = read_datalist(path_or_dict), str(path_or_dict)
        base = dataset_dir or dl["dataset_dir"]
    base = os.path.abspath(os.path.expanduser(str(base)))
    if not os.path.isdir(base):
        raise LiverError(f"{base}: dataset folder not found (the datalist's dataset_dir; use --dataset-dir)")
    return dl, where, base


def _check_structure(dl: dict, where: str, report: _Report) -> tuple[list[tuple[int, dict]], list[str]]:
    """Datalist-level checks; returns the usable (index, item) pairs and the class names."""
    items = dl["training"]
    if not items:
        report.error(where, "the \"training\" list is empty")
    classes = dl.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        report.error(where, f"\"classes\" must be a list of names (got {classes!r})")
        classes = []
    folds_given = [it.get("fold") for it in items if isinstance(it, dict)]
    n_folds = dl.get("n_folds")
    if n_folds is None:
        ints = [f for f in folds_given if isinstance(f, int) and not isinstance(f, bool)]
        n_folds = max(ints) + 1 if ints else 0
        report.warn(where, f"no \"n_folds\"; assuming {n_folds} from the fold values")
    elif not isinstance(n_folds, int) or isinstance(n_folds, bool) or n_folds < 1:
        report.error(where, f"\"n_folds\" must be a whole number >= 1 (got {n_folds!r})")
        n_folds = None

    usable: list[tuple[int, dict]] = []
    folds_of: dict[str, set[int]] = defaultdict(set)
    manifest_seen = False
    for i, it in enumerate(items):
        at = f"{where} item {i}"
        if not isinstance(it, dict):
            report.error(at, f"not an object (got {it!r})")
            continue
        manifest = "liver" in it or "lesion" in it
        manifest_seen |= manifest
        needed = ("image", "liver", "lesion", "label") if manifest else ("image", "label")
        missing = [k for k in (*needed, "patient_id", "fold") if k not in it or it[k] in (None, "")]
        if missing:
            report.error(at, f"missing {', '.join(repr(k) for k in missing)}")
            if any(k in missing for k in needed):
                continue
        if manifest and it["label"] not in classes:
            allowed = ", ".join(classes) if classes else "none: the datalist has no \"classes\" list"
            report.error(at, f"unknown class {it['label']!r} (allowed: {allowed})")
        if "slice" in it and (not isinstance(it["slice"], int) or isinstance(it["slice"], bool) or it["slice"] < 0):
            report.error(at, f"slice {it['slice']!r} is not an axial index (a whole number >= 0)")
            continue
        fold = it.get("fold")
        if "fold" in it:
            if not isinstance(fold, int) or isinstance(fold, bool) or (n_folds is not None and not 0 <= fold < n_folds):
                report.error(at, f"fold {fold!r} is outside [0, {n_folds}) (n_folds = {n_folds})")
            elif it.get("patient_id") not in (None, ""):
                folds_of[str(it["patient_id"])].add(fold)
        usable.append((i, it))

    for pid, folds in folds_of.items():
        if len(folds) > 1:
            report.error(where, f"patient {pid!r} is in folds {_fmt(sorted(folds))} "
                         "(a patient must stay in one fold, or validation leaks training data)")
    if manifest_seen and n_folds:
        for f in range(n_folds):
            present = {it.get("label") for _, it in usable if it.get("fold") == f}
            for c in classes:
                if c not in present:
                    report.warn(where, f"fold {f} has no {c!r} items (its per-class metrics will be missing)")
    return usable, list(classes)


def _check_item_masks(report: _Report, loader: _Loader, it: dict, idx: int, image_path: str, base: str,
                      ct: np.ndarray, affine: np.ndarray, classes: list[str]) -> None:
    manifest = "liver" in it
    z = ct.shape[2]
    k = it.get("slice")
    if manifest:
        if k is None and z > 1:
            report.error(image_path, f"3D volume ({z} axial slices) but item {idx} has no \"slice\" index")
            return
        if k is not None and not 0 <= k < z:
            report.error(image_path, f"slice {k} is out of range (the volume has {z} axial slices, 0..{z - 1})")
            return
    k = 0 if k is None else k

    masks = {}
    keys = ("liver", "lesion") if manifest else ("label",)
    for key in keys:
        mpath = os.path.normpath(os.path.join(base, str(it[key])))
        got = loader.mask(mpath, affine, ct.shape, allow_slice=manifest)
        if got is None:
            continue
        arr, values, geometry = got
        allowed = LIVER_VALUES if key == "liver" else tuple(range(len(classes) + 1)) if key == "lesion" else LITS_VALUES
        if key == "lesion" and len(classes) < 1:
            allowed = (0, 1)
        values_ok = _check_values(report, mpath, values, allowed, "mask" if key != "lesion" else "lesion mask")
        if geometry:
            report.error(mpath, f"{geometry} ({image_path})")
        if geometry or not values_ok:
            continue  # no cross-checks on a mask already reported
        masks[key] = (mpath, arr[:, :, k] if arr.shape[2] > 1 and manifest else arr[:, :, 0] if manifest else arr)

    if not manifest:
        if "label" in masks and not (masks["label"][1] > 0).any():
            report.warn(masks["label"][0], "segmentation is empty (no liver)")
        return
    if "lesion" in masks:
        lpath, lesion = masks["lesion"]
        ids = {int(v) for v in _unique(lesion)} - {0}
        if not ids:
            report.warn(lpath, f"lesion mask is empty on slice {k} but item {idx} is labelled {it['label']!r}")
        elif 1 < max(ids) <= len(classes) and it["label"] in classes and ids != {classes.index(it["label"]) + 1}:
            report.warn(lpath, f"lesion class ids {_fmt(sorted(ids))} on slice {k} disagree with item {idx}'s "
                        f"label {it['label']!r} (id {classes.index(it['label']) + 1})")
        if "liver" in masks and ids:
            liver = masks["liver"][1]
            outside = float(((lesion > 0) & (liver == 0)).sum()) / float((lesion > 0).sum())
            if outside > LESION_OUTSIDE_WARN:
                report.warn(lpath, f"{outside:.0%} of the lesion lies outside the liver mask on slice {k} "
                            f"({masks['liver'][0]}; swapped or misaligned masks?)")
    if "liver" in masks and not (masks["liver"][1] > 0).any():
        report.warn(masks["liver"][0], f"liver mask is empty on slice {k}")


def _check_rows(report: _Report, usable: list[tuple[int, dict]], base: str, where: str, classes) -> None:
    """Rows that mislead without failing: paths outside the dataset folder, an item listed twice
    (same image and slice: counted twice), a patient with several lesion types (a warning)."""
    from monai_liver.data.manifest import conflicting_types

    root = os.path.normpath(os.path.abspath(base))
    seen: dict[tuple, int] = {}
    for i, it in usable:
        for key in ("image", "label", "liver", "lesion"):
            value = it.get(key)
            if key == "label" and "liver" in it:
                continue  # a manifest item's label is its lesion type, not a file
            if isinstance(value, str) and value:
                path = os.path.normpath(os.path.join(root, value))
                if os.path.commonpath([path, root]) != root:
                    report.error(f"{where} item {i}", f"{key} path {value!r} lies outside the dataset folder {root}")
        k = (os.path.normpath(os.path.join(root, str(it["image"]))), it.get("slice"))
        if k in seen:
            report.error(f"{where} item {i}", f"repeats item {seen[k]} (same image and slice): it would count twice")
        else:
            seen[k] = i
    typed = [it for _, it in usable if "liver" in it and it.get("label") in (classes or ())]
    for patient, types in conflicting_types(typed).items():
        report.warn(f"{where} patient {patient}", f"slices of {len(types)} lesion types ({', '.join(types)})")


def validate_datalist(path_or_dict, dataset_dir: str | os.PathLike | None = None,
                      check_geometry: bool = True) -> list[Problem]:
    """Check a datalist (a JSON path or a dict as ``data.datalist`` builds them) and its files.

    Args:
        path_or_dict: the datalist JSON, or the dict itself.
        dataset_dir: folder the item paths are relative to (default: the datalist's ``dataset_dir``,
            itself relative to the JSON's folder).
        check_geometry: read every image and mask (values, shapes, geometry, slice indices). False
            checks only the datalist and that the files exist (fast).

    Returns:
        the problems found, errors and warnings, in order; empty when all is well.

    Raises:
        LiverError: when the datalist itself cannot be read (missing, not JSON, no "training" list)
        or the dataset folder does not exist.
    """
    report = _Report()
    dl, where, base = _load_source(path_or_dict, dataset_dir)
    usable, classes = _check_structure(dl, where, report)

    groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for i, it in usable:
        groups[os.path.normpath(os.path.join(base, str(it["image"])))].append((i, it))
    _check_rows(report, usable, base, where, classes)

    if not check_geometry:
        for image_path, members in groups.items():
            paths = [image_path] + [os.path.normpath(os.path.join(base, str(it[k])))
                                    for _, it in members for k in ("label", "liver", "lesion")
                                    if k in it and not (k == "label" and "liver" in it)]
            for p in dict.fromkeys(paths):
                if not os.path.exists(p):
                    report.error(p, "file not found")
        return report.problems

    loader = _Loader(report)
    for image_path, members in groups.items():
        loader.clear()  # keep one image group in memory at a time
        loaded = loader.ct(image_path)
        if loaded is None:
            # still report missing masks, without reading them
            for _, it in members:
                for k in ("liver", "lesion") if "liver" in it else ("label",):
                    p = os.path.normpath(os.path.join(base, str(it[k])))
                    if not os.path.exists(p):
                        report.error(p, "file not found")
            continue
        ct, affine = loaded
        ct = np.asarray(ct)
        _check_hu(report, image_path, ct)
        for i, it in members:
            _check_item_masks(report, loader, it, i, image_path, base, ct, np.asarray(affine), classes)
    return report.problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("datalist", help="datalist JSON (from `monai-liver datalist`)")
    parser.add_argument("--dataset-dir", default=None, help="folder the item paths are relative to "
                        "(default: the datalist's dataset_dir)")
    parser.add_argument("--quick", action="store_true", help="check the datalist and that files exist; "
                        "do not read images")


def main(args: argparse.Namespace) -> int:
    problems = validate_datalist(args.datalist, args.dataset_dir, check_geometry=not args.quick)
    for p in problems:
        print(p)
    n_err = sum(p.level == "error" for p in problems)
    n_warn = len(problems) - n_err
    print(f"{args.datalist}: {n_err} error{'s' if n_err != 1 else ''}, {n_warn} warning{'s' if n_warn != 1 else ''}")
    return 1 if n_err else 0
