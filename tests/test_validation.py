"""Dataset validation: a clean dataset passes; each bad input a new user makes gives one clear line."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_liver.cli import main as cli
from monai_liver.data.datalist import datalist_from_lits, datalist_from_manifest, write_datalist
from monai_liver.data.validation import Problem, validate_datalist

CLASSES = ("cyst", "hemangioma", "metastasis")
N = 16  # slice size (pixels)


def _nii(path: Path, arr: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([0.8, 0.8, 5.0, 1.0]) if affine is None else affine), str(path))
    return path


def _slice_arrays(seed: int, nz: int | None = None):
    """A tiny CT slice in HU (air, body, liver, lesion) with its liver and lesion masks (0/1)."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:N, :N]
    body = (x - 8) ** 2 + (y - 8) ** 2 < 49
    liver = (x - 7) ** 2 + (y - 7) ** 2 < 16
    lesion = (x - 7) ** 2 + (y - 8) ** 2 < 3
    ct = np.where(body, 40, -1000) + np.where(liver, 20, 0) - np.where(lesion, 50, 0) + rng.normal(0, 5, (N, N))
    out = [ct.astype(np.int16), liver.astype(np.uint8), (lesion & liver).astype(np.uint8)]
    if nz:
        out = [np.repeat(a[..., None], nz, axis=2) for a in out]
    return out


def make_dataset(root: Path, patients_per_class: int = 3, slices: int = 2, n_folds: int = 3) -> Path:
    """Manifest of 2D slices (each patient ``slices`` slices of one class) and its datalist JSON."""
    rows = []
    for c, name in enumerate(CLASSES):
        for j in range(patients_per_class):
            for s in range(slices):
                stem = f"P{c}{j}_{s}"
                ct, liver, lesion = _slice_arrays(c * 100 + j * 10 + s)
                for sub, arr in (("images", ct), ("liver", liver), ("lesion", lesion)):
                    _nii(root / "data" / sub / f"{stem}.nii.gz", arr)
                rows.append([f"P{c}{j}", f"images/{stem}.nii.gz", f"liver/{stem}.nii.gz", f"lesion/{stem}.nii.gz", name])
    with open(root / "data" / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["patient_id", "image", "liver", "lesion", "label"], *rows])
    dl = datalist_from_manifest(root / "data" / "manifest.csv", n_folds=n_folds, seed=0)
    return write_datalist(dl, root / "data_lists" / "slices.json")


def make_lits_dataset(root: Path, n: int = 3) -> Path:
    for i in range(n):
        ct, liver, lesion = _slice_arrays(i, nz=4)
        _nii(root / "lits" / f"volume-{i}.nii.gz", ct)
        _nii(root / "lits" / f"segmentation-{i}.nii.gz", (liver + lesion).astype(np.uint8))
    return write_datalist(datalist_from_lits(root / "lits", n_folds=3), root / "data_lists" / "lits.json")


def _edit_datalist(path: Path, fn) -> None:
    dl = json.loads(path.read_text())
    fn(dl)
    path.write_text(json.dumps(dl))


def _item(path: Path, i: int) -> dict:
    return json.loads(path.read_text())["training"][i]


def _validate_cli(capsys, path: Path, *extra: str) -> tuple[int, list[str], list[str], list[str]]:
    rc = cli(["validate", str(path), *extra])
    out = capsys.readouterr().out.strip().splitlines()
    return rc, [x for x in out if x.startswith("ERROR ")], [x for x in out if x.startswith("WARN ")], out


def _assert_one_error(capsys, path: Path, *names: str) -> str:
    rc, errors, warns, out = _validate_cli(capsys, path)
    assert rc == 1, out
    assert len(errors) == 1 and not warns, out
    for n in names:
        assert n in errors[0], errors[0]
    assert out[-1] == f"{path}: 1 error, 0 warnings"
    return errors[0]


# ---------------------------------------------------------------- clean data


def test_clean_manifest_dataset_passes(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    assert validate_datalist(dl_path) == []
    rc, errors, warns, out = _validate_cli(capsys, dl_path)
    assert (rc, errors, warns) == (0, [], [])
    assert out == [f"{dl_path}: 0 errors, 0 warnings"]


def test_clean_lits_dataset_passes_from_a_dict(tmp_path):
    dl_path = make_lits_dataset(tmp_path)
    assert validate_datalist(dl_path) == []
    dl = json.loads(dl_path.read_text())
    assert validate_datalist(dl, dataset_dir=tmp_path / "lits") == []


def test_mask_stored_in_another_orientation_is_fine(tmp_path):
    # same voxel grid, stored flipped along x (LAS): the geometry says it matches the image
    dl_path = make_dataset(tmp_path)
    it = _item(dl_path, 0)
    liver_path = tmp_path / "data" / it["liver"]
    img = nib.load(str(liver_path))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = N - 1
    _nii(liver_path, np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip)
    assert validate_datalist(dl_path) == []


def test_3d_volume_with_slice_index(tmp_path):
    ct, liver, lesion = _slice_arrays(0, nz=5)
    for name, arr in (("ct", ct), ("liver", liver), ("lesion", lesion)):
        _nii(tmp_path / f"{name}.nii.gz", arr)
    item = {"image": "ct.nii.gz", "liver": "liver.nii.gz", "lesion": "lesion.nii.gz", "label": "cyst", "patient_id": "A"}
    dl = {"n_folds": 1, "classes": ["cyst"], "dataset_dir": str(tmp_path),
          "training": [dict(item, slice=2, fold=0), dict(item, slice=4, fold=0)]}
    assert validate_datalist(dl) == []
    dl["training"][1]["slice"] = 5
    problems = validate_datalist(dl)
    assert problems == [Problem("error", str(tmp_path / "ct.nii.gz"),
                                "slice 5 is out of range (the volume has 5 axial slices, 0..4)")]
    del dl["training"][1]["slice"]
    assert "has no \"slice\" index" in validate_datalist(dl)[0].message


# ---------------------------------------------------------------- bad input: one ERROR line, exit 1


def test_missing_file(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    missing = tmp_path / "data" / _item(dl_path, 4)["image"]
    missing.unlink()
    line = _assert_one_error(capsys, dl_path, str(missing), "file not found")
    assert line == f"ERROR {missing}: file not found"
    # the quick mode (no image reading) finds it too
    rc, errors, _, _ = _validate_cli(capsys, dl_path, "--quick")
    assert rc == 1 and errors == [f"ERROR {missing}: file not found"]


def test_truncated_nifti(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    bad = tmp_path / "data" / _item(dl_path, 2)["image"]
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    assert len(gzip.decompress(raw)) > 0  # the original was a real gzip stream
    _assert_one_error(capsys, dl_path, str(bad))


def test_image_and_mask_of_different_shape(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    bad = tmp_path / "data" / _item(dl_path, 5)["liver"]
    _nii(bad, np.zeros((N + 2, N), np.uint8))
    _assert_one_error(capsys, dl_path, str(bad), f"mask shape ({N + 2}, {N}, 1) differs from the image's ({N}, {N}, 1)")


def test_mask_geometry_shifted(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    bad = tmp_path / "data" / _item(dl_path, 1)["lesion"]
    arr = np.asarray(nib.load(str(bad)).dataobj)
    aff = np.diag([0.8, 0.8, 5.0, 1.0])
    aff[0, 3] = 4.0
    _nii(bad, arr, aff)
    _assert_one_error(capsys, dl_path, str(bad), "origin is 4.00 mm away")


def test_mask_value_7(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    bad = tmp_path / "data" / _item(dl_path, 3)["lesion"]
    arr = np.asarray(nib.load(str(bad)).dataobj).copy()
    arr[arr == 1] = 7
    _nii(bad, arr)
    line = _assert_one_error(capsys, dl_path, str(bad))
    assert line.endswith("lesion mask value 7 is not allowed (expected 0, 1, 2, 3)")


def test_lits_segmentation_value_7(tmp_path, capsys):
    dl_path = make_lits_dataset(tmp_path)
    bad = tmp_path / "lits" / "segmentation-1.nii.gz"
    arr = np.asarray(nib.load(str(bad)).dataobj).copy()
    arr[0, 0, 0] = 7
    _nii(bad, arr)
    line = _assert_one_error(capsys, dl_path, str(bad))
    assert line.endswith("mask value 7 is not allowed (expected 0, 1, 2)")


def test_unknown_class_name(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    _edit_datalist(dl_path, lambda dl: dl["training"][0].update(label="cist"))
    _assert_one_error(capsys, dl_path, f"{dl_path} item 0", "unknown class 'cist'", "cyst, hemangioma, metastasis")


def test_patient_in_two_folds(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    first = _item(dl_path, 0)
    assert _item(dl_path, 1)["patient_id"] == first["patient_id"]
    _edit_datalist(dl_path, lambda dl: dl["training"][1].update(fold=(first["fold"] + 1) % 3))
    _assert_one_error(capsys, dl_path, str(dl_path), f"patient '{first['patient_id']}' is in folds")


def test_fold_out_of_range(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    _edit_datalist(dl_path, lambda dl: dl["training"][0].update(fold=3))
    _assert_one_error(capsys, dl_path, "item 0", "fold 3 is outside [0, 3)")


def test_missing_datalist_is_a_usage_error(tmp_path, capsys):
    assert cli(["validate", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nope.json'}: datalist file does not exist"]


# ---------------------------------------------------------------- warnings: one WARN line, exit 0


def test_normalised_image_warns(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    bad = tmp_path / "data" / _item(dl_path, 0)["image"]
    _nii(bad, np.linspace(0, 1, N * N, dtype=np.float32).reshape(N, N))
    rc, errors, warns, out = _validate_cli(capsys, dl_path)
    assert rc == 0 and not errors and len(warns) == 1, out
    assert warns[0].startswith(f"WARN {bad}: values lie in [0.00, 1.00]: they look normalised")


def test_lesion_outside_liver_warns(tmp_path, capsys):
    dl_path = make_dataset(tmp_path)
    it = _item(dl_path, 0)
    lesion = np.zeros((N, N), np.uint8)
    lesion[0:3, 0:3] = 1  # in the air, far from the liver
    _nii(tmp_path / "data" / it["lesion"], lesion)
    rc, errors, warns, out = _validate_cli(capsys, dl_path)
    assert rc == 0 and not errors and len(warns) == 1, out
    assert "100% of the lesion lies outside the liver mask" in warns[0]


# ---------------------------------------------------------------- real CT


def test_real_dicom_series_with_las_mask(real_dir):
    """A DICOM series with a NIfTI liver mask stored in another orientation (LAS) is consistent; the
    same mask over another scan is not."""
    item = {"image": "totalseg_dicom/ct", "label": "totalseg_dicom/liver.nii.gz", "patient_id": "a", "fold": 0}
    dl = {"n_folds": 1, "classes": [], "dataset_dir": str(real_dir), "training": [item]}
    assert validate_datalist(dl) == []
    dl["training"][0] = dict(item, image="totalseg_ct/ct.nii.gz")
    problems = validate_datalist(dl)
    assert [(p.level, p.path) for p in problems] == [("error", str(real_dir / "totalseg_dicom/liver.nii.gz"))]
    assert "mask shape (512, 512, 20) differs from the image's (122, 101, 30)" in problems[0].message


def test_rows_that_mislead(tmp_path):
    """A path outside the dataset folder and a repeated item are errors; a patient with two lesion
    types is a warning (issue 14)."""
    from monai_liver.data.validation import validate_datalist

    (tmp_path / "a.nii.gz").write_bytes(b"")
    item = {"image": "a.nii.gz", "liver": "a.nii.gz", "lesion": "a.nii.gz", "label": "cyst", "patient_id": "P", "fold": 0}
    dl = {"dataset_dir": str(tmp_path), "classes": ["cyst", "metastasis"], "n_folds": 2, "training": [
        item, dict(item), {**item, "image": "../../etc/passwd", "patient_id": "Q", "fold": 1},
        {**item, "image": "b.nii.gz", "label": "metastasis"}]}
    problems = [str(p) for p in validate_datalist(dl, check_geometry=False)]
    assert any("repeats item 0" in p for p in problems), problems
    assert any("'../../etc/passwd' lies outside the dataset folder" in p for p in problems), problems
    assert any(p.startswith("WARN") and "patient P" in p and "2 lesion types" in p for p in problems), problems
