"""MONAI datalists with patient-grouped, class-stratified folds.

A datalist is the JSON that ``monai.data.load_decathlon_datalist`` reads, with a few extra keys::

    {"source": "lits" | "msd" | "manifest", "dataset_dir": "<dir, relative to the JSON or absolute>",
     "n_folds": 5, "seed": 0, "classes": ["cyst", ...],
     "training": [{"image": "volume-3.nii.gz", "label": "segmentation-3.nii.gz", "patient_id": "3", "fold": 0},
                  ...]}

Item paths are relative to ``dataset_dir``, like the Model Zoo's datalists, so pass
``base_dir=<dataset_dir>`` to ``load_decathlon_datalist``. Manifest items carry a class *name* in
``"label"`` (their masks are ``"liver"`` and ``"lesion"``): read them with ``is_segmentation=False``
so that MONAI does not turn the class name into a path. LiTS / MSD datalists have ``"classes": []``
(no lesion types) and MSD-style ``"labels"``.

Folds come from scikit-learn's ``StratifiedGroupKFold`` (shuffled, fixed seed): grouped by
``patient_id`` (no patient is ever in two folds) and, for manifests, stratified by class. LiTS / MSD
folds are grouped but not stratified: knowing which volumes have lesions means decompressing every
segmentation, which is too slow for a datalist command (all but a few LiTS volumes have lesions anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from monai_liver.errors import LiverError

__all__ = [
    "LITS_LABELS",
    "assign_folds",
    "datalist_from_lits",
    "datalist_from_msd",
    "datalist_from_manifest",
    "read_datalist",
    "write_datalist",
    "summarise",
    "add_arguments",
    "main",
]

#: label values of LiTS / MSD Task03 segmentations, in MSD dataset.json style
LITS_LABELS: dict[str, str] = {"0": "background", "1": "liver", "2": "lesion"}

_VOLUME_RE = re.compile(r"^volume-(.+?)\.nii(\.gz)?$")
_NII_RE = re.compile(r"\.nii(\.gz)?$")


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _rel(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` relative to ``base`` when it lies inside it (posix separators), else absolute."""
    path, base = os.path.abspath(path), os.path.abspath(base)
    try:
        inside = os.path.commonpath([path, base]) == base
    except ValueError:  # different drives
        inside = False
    return Path(os.path.relpath(path, base)).as_posix() if inside else path


def assign_folds(
    items: Sequence[dict],
    n_folds: int = 5,
    seed: int = 0,
    group_key: str = "patient_id",
    class_key: str | None = "label",
    source: str = "datalist",
) -> list[dict]:
    """Copies of ``items`` with ``"fold"`` in ``[0, n_folds)``: grouped by ``group_key``, stratified by
    ``class_key`` (``None``: grouped only), with ``StratifiedGroupKFold(shuffle=True, random_state=seed)``.

    Raises LiverError (naming ``source``) when there are fewer groups (patients) than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if int(n_folds) != n_folds or n_folds < 2:
        raise LiverError(f"{source}: --folds must be a whole number >= 2 (got {n_folds})")
    n_folds = int(n_folds)
    items = [dict(it) for it in items]
    if not items:
        raise LiverError(f"{source}: no items to split into folds")
    groups = [str(it[group_key]) for it in items]
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise LiverError(
            f"{source}: {n_groups} patient{'s' if n_groups != 1 else ''} cannot fill {n_folds} folds "
            f"(each fold needs at least one patient; use --folds {max(n_groups, 2)} or add patients)"
        )
    y = [str(it[class_key]) for it in items] if class_key else ["all"] * len(items)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class in y has only k members": expected with rare classes; the
        # folds stay patient-grouped and as stratified as the data allows.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test_idx) in enumerate(splitter.split(items, y, groups)):
            for i in test_idx:
                items[i]["fold"] = fold
    counts = Counter(it["fold"] for it in items)
    empty = [f for f in range(n_folds) if counts[f] == 0]
    if empty:  # not expected from scikit-learn with n_groups >= n_folds; never write a bad split
        raise LiverError(f"{source}: fold {empty[0]} came out empty; use fewer folds")
    return items


def _datalist(source: str, dataset_dir: Path, items: list[dict], n_folds: int, seed: int, classes, **extra) -> dict:
    dl = {
        "source": source,
        "dataset_dir": str(dataset_dir.resolve()),
        "n_folds": int(n_folds),
        "seed": int(seed),
        "classes": list(classes),
        **extra,
        "training": items,
    }
    return dl


def datalist_from_lits(folder: str | os.PathLike, n_folds: int = 5, seed: int = 0) -> dict:
    """Datalist for a LiTS folder of ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` (searched
    recursively, e.g. LiTS's "Training Batch 1/2" folders; each segmentation next to its volume).

    One item per volume, ``patient_id`` = N. Folds grouped by patient, not stratified (see module doc).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LiverError(f"{folder}: not a folder (expected a LiTS folder of volume-N.nii[.gz] files)")
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("volume-*.nii*")):
        m = _VOLUME_RE.match(p.name)
        if not m or p.name.startswith(".") or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        vid = m.group(1)
        if vid in found:
            raise LiverError(f"{p}: volume {vid} is also at {found[vid]} (remove one copy)")
        found[vid] = p
    if not found:
        raise LiverError(
            f"{folder}: no volume-*.nii[.gz] files found (expected LiTS layout: volume-N.nii[.gz] "
            "with segmentation-N.nii[.gz] next to it)"
        )
    items = []
    for vid in sorted(found, key=_natural_key):
        vol = found[vid]
        segs = [vol.parent / f"segmentation-{vid}{ext}" for ext in (".nii.gz", ".nii")]
        seg = next((s for s in segs if s.is_file()), None)
        if seg is None:
            raise LiverError(f"{vol}: no matching segmentation-{vid}.nii[.gz] next to it")
        items.append({"image": _rel(vol, folder), "label": _rel(seg, folder), "patient_id": vid})
    items = assign_folds(items, n_folds, seed, class_key=None, source=str(folder))
    return _datalist("lits", folder, items, n_folds, seed, [], labels=dict(LITS_LABELS))


def datalist_from_msd(dataset_json: str | os.PathLike, n_folds: int = 5, seed: int = 0) -> dict:
    """Datalist for MSD Task03_Liver: its ``dataset.json`` ``"training"`` list (``imagesTr/liver_N``,
    ``labelsTr/liver_N``), paths relative to the JSON's folder. ``patient_id`` = ``liver_N``.
    Folds grouped by patient, not stratified (see module doc)."""
    path = Path(dataset_json)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise LiverError(f"{path}: not found (expected an MSD dataset.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LiverError(f"{path}: not valid JSON ({e})") from None
    training = meta.get("training") if isinstance(meta, dict) else None
    if not isinstance(training, list) or not training:
        raise LiverError(f"{path}: no \"training\" list (expected an MSD dataset.json)")
    base = path.parent
    items, seen = [], {}
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise LiverError(f"{path}: training entry {i} needs \"image\" and \"label\" paths (got {entry!r})")
        image, label = (os.path.normpath(base / entry[k]) for k in ("image", "label"))
        for k, p in (("image", image), ("label", label)):
            if not os.path.isfile(p):
                raise LiverError(f"{p}: file not found (training entry {i} \"{k}\" of {path})")
        pid = _NII_RE.sub("", Path(image).name)
        if pid in seen:
            raise LiverError(f"{path}: {pid} is listed twice (training entries {seen[pid]} and {i})")
        seen[pid] = i
        items.append({"image": _rel(image, base), "label": _rel(label, base), "patient_id": pid})
    items.sort(key=lambda it: _natural_key(it["patient_id"]))
    items = assign_folds(items, n_folds, seed, class_key=None, source=str(path))
    labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else dict(LITS_LABELS)
    return _datalist("msd", base, items, n_folds, seed, [], labels={str(k): v for k, v in labels.items()})


def datalist_from_manifest(
    csv: str | os.PathLike, n_folds: int = 5, seed: int = 0, class_names: Sequence[str] | str | None = None,
    allow_outside: bool = False,
) -> dict:
    """Datalist for a lesion-type CSV manifest (see ``data.manifest``): one item per row, paths
    relative to the CSV's folder (= ``dataset_dir``), folds grouped by patient, stratified by class."""
    from monai_liver.data.manifest import normalise_class_names, read_manifest

    classes = normalise_class_names(class_names)
    rows = read_manifest(csv, classes, allow_outside=allow_outside)
    base = Path(csv).parent
    items = []
    for r in rows:
        it = {"image": _rel(r["image"], base), "liver": _rel(r["liver"], base), "lesion": _rel(r["lesion"], base)}
        it["label"] = r["label"]
        if "slice" in r:
            it["slice"] = r["slice"]
        it["patient_id"] = r["patient_id"]
        items.append(it)
    items = assign_folds(items, n_folds, seed, class_key="label", source=str(csv))
    return _datalist("manifest", base, items, n_folds, seed, classes)


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write ``datalist`` as JSON (atomically). ``dataset_dir`` is stored relative to the JSON's folder
    when the dataset lies under that folder's parent (e.g. the project root holding ``data_lists/``),
    otherwise absolute. Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = dict(datalist)
    if out.get("dataset_dir"):
        ddir = os.path.abspath(out["dataset_dir"])
        root = os.path.abspath(path.parent.parent)
        if os.path.commonpath([ddir, root]) == root:
            out["dataset_dir"] = Path(os.path.relpath(ddir, os.path.abspath(path.parent))).as_posix()
        else:
            out["dataset_dir"] = ddir
    from monai_liver.atomic import write_text

    return write_text(path, json.dumps(out, indent=2) + "\n")


def read_datalist(path: str | os.PathLike, require_items: bool = False) -> dict:
    """Read a datalist JSON; ``"dataset_dir"`` comes back absolute (resolved against the JSON's folder;
    the JSON's folder when absent). Raises LiverError for a missing or malformed file and, with
    ``require_items`` (what training needs), for an empty ``"training"`` list or an item without ``image``."""
    path = Path(path)
    if not path.is_file():
        raise LiverError(f"{path}: datalist file does not exist")
    try:
        dl = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LiverError(f"{path}: datalist is not valid JSON ({e})") from None
    if not isinstance(dl, dict) or not isinstance(dl.get("training"), list):
        raise LiverError(f"{path}: no \"training\" list (expected a MONAI datalist)")
    if require_items:
        if not dl["training"]:
            raise LiverError(f"{path}: datalist is empty (no 'training' items)")
        for i, item in enumerate(dl["training"]):
            if not isinstance(item, dict) or "image" not in item:
                raise LiverError(f"{path}: item {i} of 'training' has no 'image'")
    ddir = dl.get("dataset_dir") or "."
    dl["dataset_dir"] = os.path.normpath(os.path.join(path.parent.resolve(), os.path.expanduser(str(ddir))))
    return dl


def summarise(datalist: dict) -> str:
    """A plain-text table: patients, items (slices or volumes) and items per class, per fold."""
    items = datalist.get("training", [])
    classes = list(datalist.get("classes") or [])
    unit = "slices" if datalist.get("source") == "manifest" or any("slice" in it for it in items) else "volumes"
    folds = sorted({it.get("fold", -1) for it in items}, key=lambda f: (not isinstance(f, int), f))
    header = ["fold", "patients", unit, *classes]
    rows = []
    for f in [*folds, "all"]:
        sel = items if f == "all" else [it for it in items if it.get("fold", -1) == f]
        counts = Counter(it.get("label") for it in sel)
        rows.append([str(f), str(len({it.get("patient_id") for it in sel})), str(len(sel))] + [str(counts[c]) for c in classes])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    title = (
        f"{datalist.get('source', 'datalist')}: {len(items)} {unit}, "
        f"{len({it.get('patient_id') for it in items})} patients, {datalist.get('n_folds', len(folds))} folds"
        + (f", classes {', '.join(classes)}" if classes else "")
    )
    lines = [title, fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows[:-1])]
    lines += [fmt(["-" * w for w in widths]), fmt(rows[-1])]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--lits", metavar="DIR", help="LiTS folder: volume-N.nii[.gz] + segmentation-N.nii[.gz]")
    src.add_argument("--msd", metavar="dataset.json", help="MSD Task03_Liver dataset.json")
    src.add_argument("--manifest", metavar="CSV", help="lesion-type manifest: patient_id,image,liver,lesion,label[,slice]")
    parser.add_argument("--out", required=True, metavar="JSON", help="datalist to write, e.g. data_lists/NAME.json")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the fold split (default 0)")
    from monai_liver.constants import DEFAULT_CLASSES

    parser.add_argument("--classes", default=None, help="manifest class names, comma-separated "
                        f"(default {','.join(DEFAULT_CLASSES)})")
    parser.add_argument("--allow-outside", action="store_true",
                        help="manifest: accept image and mask paths outside the manifest's folder")


def main(args: argparse.Namespace) -> int:
    if args.classes is not None and not args.manifest:
        raise LiverError("--classes: applies only to --manifest (LiTS / MSD have no lesion types)")
    if args.lits:
        dl = datalist_from_lits(args.lits, args.folds, args.seed)
    elif args.msd:
        dl = datalist_from_msd(args.msd, args.folds, args.seed)
    else:
        dl = datalist_from_manifest(args.manifest, args.folds, args.seed, args.classes, args.allow_outside)
    out = write_datalist(dl, args.out)
    print(summarise(dl))
    if args.manifest:
        from monai_liver.data.manifest import conflicting_types

        for patient, types in conflicting_types(dl["training"]).items():
            print(f"warning: patient {patient} has slices of {len(types)} lesion types ({', '.join(types)}); "
                  "check the manifest if that is not intended")
    print(f"wrote {out}")
    return 0
