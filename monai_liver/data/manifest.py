"""Read and check the lesion-type CSV manifest.

One row per 2D slice: ``patient_id, image, liver, lesion, label[, slice]``. ``image`` is a 2D NIfTI
or DICOM file, or a 3D volume with ``slice`` naming the axial index (0-based, in RAS order, i.e.
``vol[:, :, slice]``); ``liver`` and ``lesion`` are masks (0/1, or lesion values that are class ids
1..K); ``label`` is a class name. Relative paths are relative to the CSV's folder.

Written with the standard ``csv`` module rather than pandas so that every problem can be reported
with its line number and column in one sentence.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from monai_liver.constants import check_class_names
from monai_liver.errors import LiverError

__all__ = ["REQUIRED_COLUMNS", "OPTIONAL_COLUMNS", "PATH_COLUMNS", "conflicting_types", "read_manifest", "normalise_class_names"]

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "image", "liver", "lesion", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("slice",)
PATH_COLUMNS: tuple[str, ...] = ("image", "liver", "lesion")


#: the one check of class names (:func:`monai_liver.constants.check_class_names`), under its former name here
normalise_class_names = check_class_names


def _sniff_delimiter(header_line: str) -> str:
    # Spreadsheet exports in many locales use ';' (or tabs); accept them rather than fail on one column.
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def _parse_slice(value: str, where: str) -> int | None:
    value = value.strip()
    if value == "":
        return None
    try:
        f = float(value)
    except ValueError:
        raise LiverError(f"{where}: slice {value!r} is not a whole number (expected an axial index >= 0)") from None
    if not f.is_integer() or f < 0:
        raise LiverError(f"{where}: slice {value!r} is not a whole number >= 0 (expected an axial index)")
    return int(f)


def read_manifest(
    csv_path: str | os.PathLike, class_names: Sequence[str] | str | None = None, check_files: bool = True,
    allow_outside: bool = False,
) -> list[dict]:
    """Read a lesion-type manifest.

    Args:
        csv_path: the CSV file; paths inside are relative to its folder (or absolute).
        class_names: allowed class names (default ``DEFAULT_CLASSES``); matched case-insensitively,
            returned in the spelling given here.
        check_files: also check that every referenced file exists (cheap, no image is read).
        allow_outside: accept paths that lie outside the manifest's folder (absolute ones or ``..``).

    Returns:
        one dict per row: ``{"patient_id": str, "image": str, "liver": str, "lesion": str,
        "label": str, "slice": int}`` (``slice`` only when given), with absolute, normalised paths.

    Raises:
        LiverError: naming the file (and line) for a missing column, an empty manifest, an empty
        cell, an unknown class name, a bad slice value, a missing file, a path outside the
        manifest's folder (unless ``allow_outside``) or a row that repeats an earlier one (same
        image and slice: it would count twice).
    """
    path = Path(csv_path)
    names = normalise_class_names(class_names)
    by_lower = {n.lower(): n for n in names}
    if not path.is_file():
        raise LiverError(f"{path}: manifest not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LiverError(f"{path}: not a UTF-8 text file (expected a CSV manifest)") from None
    except OSError as e:
        raise LiverError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LiverError(f"{path}: empty manifest (expected a header {','.join(REQUIRED_COLUMNS)}[,slice])")
    reader = csv.reader(lines, delimiter=_sniff_delimiter(lines[0]))
    header = [h.strip().lower() for h in next(reader)]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise LiverError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(header is {','.join(header)}; expected {','.join(REQUIRED_COLUMNS)}[,slice])"
        )
    col = {c: header.index(c) for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in header}
    base = path.parent.resolve()
    items: list[dict] = []
    seen: dict[tuple, int] = {}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"{path} line {reader.line_num}"
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        item: dict = {}
        for c in REQUIRED_COLUMNS:
            value = row[col[c]].strip()
            if not value:
                raise LiverError(f"{where}: empty '{c}' cell")
            item[c] = value
        label = by_lower.get(item["label"].lower())
        if label is None:
            raise LiverError(f"{where}: unknown class {item['label']!r} (allowed: {', '.join(names)})")
        item["label"] = label
        for c in PATH_COLUMNS:
            p = Path(item[c]).expanduser()
            p = p if p.is_absolute() else base / p
            item[c] = os.path.normpath(str(p))
            if not allow_outside and os.path.commonpath([item[c], str(base)]) != str(base):
                raise LiverError(f"{where}: {c} path {row[col[c]].strip()!r} lies outside the manifest's folder {base} "
                                 "(use --allow-outside if the data really lives elsewhere)")
            if check_files and not os.path.exists(item[c]):
                raise LiverError(f"{item[c]}: file not found (listed in {where}, column '{c}')")
        if "slice" in col:
            s = _parse_slice(row[col["slice"]], where)
            if s is not None:
                item["slice"] = s
        key = (item["image"], item.get("slice"))
        if key in seen:
            raise LiverError(f"{where}: repeats line {seen[key]} (same image and slice); each slice must be listed once")
        seen[key] = reader.line_num
        items.append(item)
    if not items:
        raise LiverError(f"{path}: the manifest has a header but no rows (expected one row per slice)")
    return items


def conflicting_types(items: Sequence[dict]) -> dict[str, list[str]]:
    """Patients whose slices carry more than one lesion type: ``{patient_id: sorted types}``. Not an
    error (a patient may have a cyst and a metastasis), but worth a look: a typo in one row looks
    the same."""
    types: dict[str, set] = {}
    for it in items:
        if it.get("label") is not None:
            types.setdefault(str(it["patient_id"]), set()).add(str(it["label"]))
    return {p: sorted(t) for p, t in types.items() if len(t) > 1}
