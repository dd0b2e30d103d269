"""Manifest reading and datalists: patient-grouped, stratified folds; MONAI-readable output; bad input."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_liver.cli import main as cli
from monai_liver.data.datalist import (
    assign_folds,
    datalist_from_lits,
    datalist_from_manifest,
    datalist_from_msd,
    read_datalist,
    summarise,
    write_datalist,
)
from monai_liver.data.manifest import read_manifest
from monai_liver.errors import LiverError

CLASSES = ("cyst", "hemangioma", "metastasis")


def _nii(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return path


def make_lits(folder: Path, n: int = 6) -> Path:
    for i in range(n):
        _nii(folder / f"volume-{i}.nii.gz", np.full((4, 4, 3), -100, np.int16))
        _nii(folder / f"segmentation-{i}.nii", np.ones((4, 4, 3), np.uint8))
    return folder


def make_manifest(folder: Path, patients_per_class: int = 4, slices: int = 2, extra_rows=(), header=None) -> Path:
    """A manifest of tiny 2D slices: patient P<c><j> has ``slices`` slices of class c; paths relative."""
    rows = []
    for c, name in enumerate(CLASSES):
        for j in range(patients_per_class):
            pid = f"P{c}{j}"
            for s in range(slices):
                stem = f"{pid}_{s}"
                for sub in ("images", "liver", "lesion"):
                    f = folder / sub / f"{stem}.nii.gz"
                    if not f.exists():
                        _nii(f, np.zeros((6, 6), np.int16 if sub == "images" else np.uint8))
                rows.append([pid, f"images/{stem}.nii.gz", f"liver/{stem}.nii.gz", f"lesion/{stem}.nii.gz", name])
    rows += list(extra_rows)
    csv_path = folder / "manifest.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or ["patient_id", "image", "liver", "lesion", "label"])
        w.writerows(rows)
    return csv_path


def _folds_by_patient(items) -> dict[str, set[int]]:
    out = defaultdict(set)
    for it in items:
        out[it["patient_id"]].add(it["fold"])
    return out


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    for n in names:
        assert n in err[0], err[0]
    return err[0]


# ---------------------------------------------------------------- good paths


def test_read_manifest_resolves_paths_and_classes(tmp_path):
    csv_path = make_manifest(tmp_path, patients_per_class=1, slices=1)
    rows = read_manifest(csv_path)
    assert [r["label"] for r in rows] == list(CLASSES)
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in rows)
    assert rows[0]["image"] == str(tmp_path / "images" / "P00_0.nii.gz")
    assert "slice" not in rows[0]


def test_read_manifest_semicolon_case_and_slice(tmp_path):
    _nii(tmp_path / "v.nii.gz", np.zeros((4, 4, 5), np.int16))
    (tmp_path / "m.csv").write_text("Patient_ID;image;liver;lesion;label;slice\nA;v.nii.gz;v.nii.gz;v.nii.gz;Cyst;3\n"
                                    "A;v.nii.gz;v.nii.gz;v.nii.gz;cyst;4.0\n")
    rows = read_manifest(tmp_path / "m.csv")
    assert [(r["label"], r["slice"]) for r in rows] == [("cyst", 3), ("cyst", 4)]


def test_manifest_folds_grouped_stratified_and_deterministic(tmp_path):
    # one patient with two classes: must still be in one fold
    extra = [["P00", "images/P00_x.nii.gz", "liver/P00_x.nii.gz", "lesion/P00_x.nii.gz", "hemangioma"]]
    for sub in ("images", "liver", "lesion"):
        _nii(tmp_path / sub / "P00_x.nii.gz", np.zeros((6, 6), np.int16 if sub == "images" else np.uint8))
    csv_path = make_manifest(tmp_path, patients_per_class=5, slices=3, extra_rows=extra)
    dl = datalist_from_manifest(csv_path, n_folds=4, seed=0)
    items = dl["training"]
    assert len(items) == 3 * 5 * 3 + 1
    assert dl["classes"] == list(CLASSES) and dl["n_folds"] == 4 and dl["source"] == "manifest"
    assert all(len(f) == 1 for f in _folds_by_patient(items).values())  # grouped by patient
    for f in range(4):  # stratified: every class in every fold
        assert {it["label"] for it in items if it["fold"] == f} == set(CLASSES)
    assert items[0]["image"] == "images/P00_0.nii.gz"  # relative to dataset_dir
    again = datalist_from_manifest(csv_path, n_folds=4, seed=0)
    assert [it["fold"] for it in again["training"]] == [it["fold"] for it in items]
    other = datalist_from_manifest(csv_path, n_folds=4, seed=1)
    assert [it["fold"] for it in other["training"]] != [it["fold"] for it in items]


def test_assign_folds_more_folds_than_patients_is_an_error():
    items = [{"patient_id": p, "label": "cyst"} for p in "AAB"]
    with pytest.raises(LiverError, match="2 patients cannot fill 3 folds"):
        assign_folds(items, n_folds=3)
    out = assign_folds(items, n_folds=2)
    assert out[0]["fold"] == out[1]["fold"] != out[2]["fold"]


def test_lits_datalist_and_monai_reads_it(tmp_path):
    from monai.data import load_decathlon_datalist

    lits = make_lits(tmp_path / "lits", n=7)
    dl = datalist_from_lits(lits, n_folds=3, seed=0)
    assert dl["source"] == "lits" and dl["classes"] == [] and dl["labels"]["2"] == "lesion"
    assert [it["patient_id"] for it in dl["training"]] == [str(i) for i in range(7)]
    assert dl["training"][0]["image"] == "volume-0.nii.gz" and dl["training"][0]["label"] == "segmentation-0.nii"
    assert sorted({it["fold"] for it in dl["training"]}) == [0, 1, 2]
    out = write_datalist(dl, tmp_path / "data_lists" / "lits.json")
    assert json.loads(out.read_text())["dataset_dir"] == "../lits"  # portable: relative to the JSON
    base = read_datalist(out)["dataset_dir"]
    assert Path(base) == lits.resolve()
    loaded = load_decathlon_datalist(out, data_list_key="training", base_dir=base)
    assert len(loaded) == 7 and all(Path(it["image"]).is_file() and Path(it["label"]).is_file() for it in loaded)
    assert loaded[3]["patient_id"] == "3" and isinstance(loaded[3]["fold"], int)


def test_manifest_datalist_monai_reads_it(tmp_path):
    from monai.data import load_decathlon_datalist

    csv_path = make_manifest(tmp_path / "data", patients_per_class=2, slices=1)
    out = write_datalist(datalist_from_manifest(csv_path, n_folds=2), tmp_path / "elsewhere" / "deep" / "m.json")
    assert Path(json.loads(out.read_text())["dataset_dir"]).is_absolute()  # outside the JSON's parent
    base = read_datalist(out)["dataset_dir"]
    loaded = load_decathlon_datalist(out, is_segmentation=False, base_dir=base)
    assert {it["label"] for it in loaded} == set(CLASSES)  # class names stay names
    assert all(Path(it[k]).is_file() for it in loaded for k in ("image", "liver", "lesion"))


def test_msd_dataset_json(tmp_path):
    msd = tmp_path / "Task03_Liver"
    training = []
    for i in (0, 1, 10, 2, 3):
        _nii(msd / "imagesTr" / f"liver_{i}.nii.gz", np.zeros((4, 4, 2), np.int16))
        _nii(msd / "labelsTr" / f"liver_{i}.nii.gz", np.zeros((4, 4, 2), np.uint8))
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"})
    meta = {"name": "Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"}, "training": training,
            "test": ["./imagesTs/liver_132.nii.gz"]}
    (msd / "dataset.json").write_text(json.dumps(meta))
    dl = datalist_from_msd(msd / "dataset.json", n_folds=5, seed=0)
    assert [it["patient_id"] for it in dl["training"]] == ["liver_0", "liver_1", "liver_2", "liver_3", "liver_10"]
    assert dl["training"][0] == {"image": "imagesTr/liver_0.nii.gz", "label": "labelsTr/liver_0.nii.gz",
                                 "patient_id": "liver_0", "fold": dl["training"][0]["fold"]}
    assert sorted(it["fold"] for it in dl["training"]) == [0, 1, 2, 3, 4]
    assert dl["labels"]["2"] == "cancer" and dl["source"] == "msd"
    (msd / "labelsTr" / "liver_2.nii.gz").unlink()
    with pytest.raises(LiverError, match=r"labelsTr/liver_2\.nii\.gz: file not found"):
        datalist_from_msd(msd, n_folds=2)


def test_cli_datalist_prints_summary(tmp_path, capsys):
    csv_path = make_manifest(tmp_path / "data", patients_per_class=3, slices=2)
    out = tmp_path / "data_lists" / "slices.json"
    assert cli(["datalist", "--manifest", str(csv_path), "--out", str(out), "--folds", "3", "--seed", "0"]) == 0
    text = capsys.readouterr().out
    assert "18 slices, 9 patients, 3 folds" in text
    assert "fold  patients  slices  cyst  hemangioma  metastasis" in text
    assert text.strip().endswith(f"wrote {out}")
    dl = json.loads(out.read_text())
    assert dl["n_folds"] == 3 and len(dl["training"]) == 18
    assert summarise(dl).splitlines()[-1].split() == ["all", "9", "18", "6", "6", "6"]


def test_cli_custom_classes(tmp_path, capsys):
    for i in range(4):  # one slice per row (a repeated image and slice is refused)
        _nii(tmp_path / f"a{i}.nii.gz", np.zeros((4, 4), np.int16))
    lines = ["patient_id,image,liver,lesion,label"] + [f"p{i},a{i}.nii.gz,a{i}.nii.gz,a{i}.nii.gz,{'benign' if i % 2 else 'malignant'}"
                                                       for i in range(4)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "dl.json"
    assert cli(["datalist", "--manifest", str(tmp_path / "m.csv"), "--out", str(out), "--folds", "2",
                "--classes", "benign,malignant"]) == 0
    assert json.loads(out.read_text())["classes"] == ["benign", "malignant"]


# ---------------------------------------------------------------- bad input: one line, exit 2


def test_cli_folder_without_volumes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["datalist", "--lits", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")]) == 2
    line = _one_error_line(capsys, str(tmp_path / "empty"), "no volume-*.nii[.gz] files found")
    assert "expected LiTS layout" in line
    assert not (tmp_path / "x.json").exists()


def test_cli_volume_without_segmentation(tmp_path, capsys):
    lits = make_lits(tmp_path / "lits", n=6)
    (lits / "segmentation-4.nii").unlink()
    assert cli(["datalist", "--lits", str(lits), "--out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, "volume-4.nii.gz", "segmentation-4.nii[.gz]")


def test_cli_unknown_class_in_manifest(tmp_path, capsys):
    extra = [["P99", "images/P00_0.nii.gz", "liver/P00_0.nii.gz", "lesion/P00_0.nii.gz", "cist"]]
    csv_path = make_manifest(tmp_path, patients_per_class=2, slices=1, extra_rows=extra)
    assert cli(["datalist", "--manifest", str(csv_path), "--out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, "manifest.csv line 8", "'cist'", "cyst, hemangioma, metastasis")


def test_cli_missing_file_in_manifest(tmp_path, capsys):
    csv_path = make_manifest(tmp_path, patients_per_class=2, slices=1)
    (tmp_path / "lesion" / "P11_0.nii.gz").unlink()
    assert cli(["datalist", "--manifest", str(csv_path), "--out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, "P11_0.nii.gz: file not found", "column 'lesion'")


@pytest.mark.parametrize(
    "content, expected",
    [
        ("", "empty manifest"),
        ("patient_id,image,liver,lesion,label\n", "has a header but no rows"),
        ("patient_id,image,mask,label\nA,a.nii.gz,a.nii.gz,cyst\n", "missing columns liver, lesion"),
        ("patient_id,image,liver,lesion,label,slice\nA,a.nii.gz,a.nii.gz,a.nii.gz,cyst,twelve\n", "slice 'twelve'"),
        ("patient_id,image,liver,lesion,label,slice\nA,a.nii.gz,a.nii.gz,a.nii.gz,cyst,-1\n", "slice '-1'"),
        ("patient_id,image,liver,lesion,label\n,a.nii.gz,a.nii.gz,a.nii.gz,cyst\n", "line 2: empty 'patient_id'"),
    ],
)
def test_cli_malformed_manifest(tmp_path, capsys, content, expected):
    _nii(tmp_path / "a.nii.gz", np.zeros((4, 4), np.int16))
    (tmp_path / "m.csv").write_text(content)
    assert cli(["datalist", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, "m.csv", expected)


def test_cli_too_few_patients_for_folds(tmp_path, capsys):
    lits = make_lits(tmp_path / "lits", n=3)
    assert cli(["datalist", "--lits", str(lits), "--out", str(tmp_path / "x.json"), "--folds", "5"]) == 2
    _one_error_line(capsys, str(lits), "3 patients cannot fill 5 folds")


def test_cli_bad_msd_json(tmp_path, capsys):
    (tmp_path / "dataset.json").write_text("{not json")
    assert cli(["datalist", "--msd", str(tmp_path / "dataset.json"), "--out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, "dataset.json", "not valid JSON")
    (tmp_path / "dataset.json").write_text('{"name": "x"}')
    assert cli(["datalist", "--msd", str(tmp_path / "dataset.json"), "--out", str(tmp_path / "x.json")]) == 2
    _one_error_line(capsys, "dataset.json", "no \"training\" list")


# ---------------------------------------------------------------- rows that would mislead (issue 14)


def test_manifest_outside_duplicates_and_conflicting_types(tmp_path, capsys):
    from monai_liver.cli import main as cli_main

    data = tmp_path / "data"
    csv_path = make_manifest(data, patients_per_class=1, slices=2)
    lines = csv_path.read_text().splitlines()
    out = str(tmp_path / "dl.json")
    # a path outside the manifest's folder: refused unless --allow-outside
    outside = tmp_path / "elsewhere.nii.gz"
    shutil.copy(data / "images" / "P00_0.nii.gz", outside)
    (data / "outside.csv").write_text("\n".join([lines[0], lines[1].replace("images/P00_0.nii.gz", "../elsewhere.nii.gz"),
                                                 *lines[2:]]) + "\n")
    assert cli_main(["datalist", "--manifest", str(data / "outside.csv"), "--out", out, "--folds", "2"]) == 2
    _one_error_line(capsys, "lies outside the manifest's folder", "--allow-outside")
    assert not Path(out).exists()
    assert cli_main(["datalist", "--manifest", str(data / "outside.csv"), "--out", out, "--folds", "2", "--allow-outside"]) == 0
    capsys.readouterr()
    # a repeated row would count twice
    (data / "dup.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    assert cli_main(["datalist", "--manifest", str(data / "dup.csv"), "--out", out, "--folds", "2"]) == 2
    _one_error_line(capsys, "repeats line 2")
    # one patient with two types: accepted, with a warning naming the patient
    first = lines[1].split(",")
    other = [first[0], *lines[-1].split(",")[1:]]  # patient of row 1, files and type of the last row
    (data / "mixed.csv").write_text("\n".join([*lines[:-1], ",".join(other)]) + "\n")
    assert cli_main(["datalist", "--manifest", str(data / "mixed.csv"), "--out", out, "--folds", "2"]) == 0
    assert f"warning: patient {first[0]} has slices of 2 lesion types" in capsys.readouterr().out
