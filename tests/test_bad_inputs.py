"""Bad inputs to ``infer`` and ``export`` through the CLI: exit status 2, one ``error:`` line, and the
file tree unchanged (nothing half-written, nothing destroyed); plus the real DICOM series whose
SEG writing used to fail halfway.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_liver.cli import main as cli_main
from monai_liver.model_package import write_package
from test_cascade import CLASSES, _constant_model  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real CT samples not found at {REAL}")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pkg")
    model = _constant_model(d / "joint.pt", "joint", 2 + CLASSES.index("cyst"), image_size=32)
    localiser = _constant_model(d / "loc.pt", "lits_pretrain", 1, image_size=32, roi_margin=-1)
    return write_package(d / "joint", model, localiser)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fails(args: list[str], capsys, root: Path, expect: str) -> None:
    before = _tree(root)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert _tree(root) == before  # nothing written, nothing changed


def _nifti(path: Path, data: np.ndarray, spacing) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([*spacing, 1.0])), str(path))
    return path


def test_infer_refuses_before_any_work(package, tmp_path, capsys):
    ct = REAL / "totalseg_ct" / "ct.nii.gz"
    hu = np.asanyarray(nib.load(str(ct)).dataobj)
    base = ["--model", str(package), "--device", "cpu"]
    existing = tmp_path / "result.txt"
    existing.write_text("keep me")
    _fails(["infer", str(ct), *base, "--out", str(existing)], capsys, tmp_path, "is an existing file")
    series = tmp_path / "series"
    shutil.copytree(REAL / "dcmqi_ct3slice" / "ct", series)
    _fails(["infer", str(series), *base, "--out", str(series)], capsys, tmp_path, "must not be the input")
    big = _nifti(tmp_path / "big_voxels.nii.gz", hu, (55.0, 55.0, 60.0))
    _fails(["infer", str(big), *base, "--out", str(tmp_path / "o")], capsys, tmp_path, "pixel spacing 55 mm is not a CT's")
    flat = _nifti(tmp_path / "flat_z.nii.gz", hu, (3.0, 3.0, 0.001))
    _fails(["infer", str(flat), *base, "--out", str(tmp_path / "o")], capsys, tmp_path, "slice spacing 0.001 mm")
    thin = _nifti(tmp_path / "thin.nii.gz", np.transpose(hu[:, :, :1], (2, 0, 1)), (3.0, 3.0, 3.0))
    _fails(["infer", str(thin), *base, "--out", str(tmp_path / "o")], capsys, tmp_path, "not a stack of axial slices")


def test_partial_dicom_export_is_refused(package, tmp_path, capsys):
    src = sorted((REAL / "totalseg_dicom" / "ct").iterdir())
    part = tmp_path / "partial"
    part.mkdir()
    for i in (0, 1, 2, 6, 7, 15):  # gaps of 1, 4 and 8 slices, like a partial export
        shutil.copy(src[i], part / src[i].name)
    _fails(["infer", str(part), "--model", str(package), "--out", str(tmp_path / "o"), "--device", "cpu"], capsys,
           tmp_path, "not evenly spaced")


def test_reused_out_holds_only_the_new_result(package, tmp_path):
    ct, liver = REAL / "totalseg_ct" / "ct.nii.gz", REAL / "totalseg_ct" / "liver.nii.gz"
    out = tmp_path / "out"
    base = ["infer", str(ct), "--model", str(package), "--liver", str(liver), "--out", str(out), "--device", "cpu"]
    assert cli_main(base) == 0
    assert (out / "overlays").is_dir()  # "cyst everywhere in the liver": lesion slices have overlays
    (out / "stray.txt").write_text("from an earlier run")
    assert cli_main([*base, "--no-overlays"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["lesion.nii.gz", "liver.nii.gz", "result.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left beside it


def test_dicom_seg_on_a_real_series_with_empty_sop_class(package, tmp_path):
    from monai_liver.data.io import load_ct, load_mask

    series = REAL / "totalseg_dicom" / "ct"
    assert cli_main(["infer", str(series), "--model", str(package), "--out", str(tmp_path / "o"), "--dicom-seg",
                     "--device", "cpu", "--no-overlays"]) == 0
    hu, affine = load_ct(series)
    seg = load_mask(tmp_path / "o" / "seg.dcm", reference_affine=affine, reference_shape=hu.shape)
    liver = np.asanyarray(nib.load(str(tmp_path / "o" / "liver.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg > 0, liver > 0)


def test_export_never_overwrites_the_checkpoint(package, tmp_path, capsys):
    model = tmp_path / "model.pt"
    shutil.copy(package / "model.pt", model)
    _fails(["export", "--model", str(model), "--out", str(model)], capsys, tmp_path, "not the checkpoint")
    other = tmp_path / "notes.ts"
    other.write_text("not a model")
    _fails(["export", "--model", str(model), "--out", str(other)], capsys, tmp_path, "is not a TorchScript export")
