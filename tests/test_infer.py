"""``monai-liver infer`` on the real CT samples: output geometry, lesion figures, DICOM SEG, bad input.

The models are untrained joint networks whose segmentation head is set to a constant (weights 0,
one bias high), so that what they predict is known: "liver everywhere" or "cyst everywhere inside the
ROI". Nothing here is about accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_liver.cli import main as cli_main
from monai_liver.errors import LiverError
from monai_liver.constants import bundles_dir
from monai_liver.inference import infer as inf
from monai_liver.inference import predictor as pr
from monai_liver.inference.model import load_bundle_model

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real CT samples not found at {REAL}")
SIZE = 64  # network input size: small, for speed


def _checkpoint(path: Path, strategy: str = "joint", winner: int | None = None) -> Path:
    from monai_liver.networks.factory import build_network

    torch.manual_seed(0)
    net = build_network(strategy)
    sd = net.state_dict()
    if winner is not None:  # constant prediction: channel `winner` everywhere
        sd["segmentation_head.0.weight"].zero_()
        sd["segmentation_head.0.bias"].zero_()
        sd["segmentation_head.0.bias"][winner] = 8.0
    torch.save({"model": sd}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    joint = bundles_dir() / "joint"
    return {
        "liver": load_bundle_model(joint, _checkpoint(d / "liver.pt", winner=1), "cpu", image_size=SIZE),
        "cyst": load_bundle_model(joint, _checkpoint(d / "cyst.pt", winner=2), "cpu", image_size=SIZE),
        "dir": d,
    }


def test_nifti_3d_geometry_and_orientation(models, tmp_path):
    ct = REAL / "totalseg_ct" / "ct.nii.gz"
    liver = REAL / "totalseg_ct" / "liver.nii.gz"
    # an LAS copy of the same scan: outputs must come back in *its* orientation
    img = nib.load(str(ct))
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = img.shape[0] - 1
    las = tmp_path / "ct_las.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1], img.affine @ flip), str(las))
    lm = nib.load(str(liver))
    las_liver = tmp_path / "liver_las.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(lm.dataobj)[::-1].astype(np.uint8), lm.affine @ flip), str(las_liver))

    r1 = inf.infer(ct, tmp_path / "ras", liver=liver, loaded=models["cyst"], overlays=False)
    r2 = inf.infer(las, tmp_path / "las", liver=las_liver, loaded=models["cyst"], overlays=False)
    for src, res in ((ct, tmp_path / "ras"), (las, tmp_path / "las")):
        ref = nib.load(str(src))
        for name in ("lesion.nii.gz", "liver.nii.gz"):
            out = nib.load(str(res / name))
            assert out.shape == ref.shape
            np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    a = np.asanyarray(nib.load(str(tmp_path / "ras" / "lesion.nii.gz")).dataobj)
    b = np.asanyarray(nib.load(str(tmp_path / "las" / "lesion.nii.gz")).dataobj)
    np.testing.assert_array_equal(a, b[::-1])  # same lesions, in each file's own voxel order

    # known answer: cyst (label 1) exactly on the processed slices, nowhere else
    livermask = np.asanyarray(lm.dataobj) > 0
    kept = [k for k in range(livermask.shape[2]) if livermask[:, :, k].sum() * 9.0 >= 100.0]
    assert r1["slices_processed"] == len(kept) == r2["slices_processed"]
    assert set(np.unique(a)) == {0, 1}
    assert sorted(set(np.nonzero(a)[2].tolist())) == kept
    assert (a[livermask] > 0)[np.isin(np.nonzero(livermask)[2], kept)].all()  # every liver voxel of a kept slice
    les = r1["lesions"]
    # (air pockets inside the ROI are outside the body, so the "cyst" region may come in a few pieces)
    assert all(d["class"] == "cyst" and d["class_probabilities"]["cyst"] > 0.99 for d in les)
    assert sum(d["volume_ml"] for d in les) == pytest.approx((a > 0).sum() * 27 / 1000.0, rel=1e-3)  # 3 mm voxels
    assert les[0]["max_diameter_mm"] > 50
    assert json.loads((tmp_path / "ras" / "result.json").read_text())["lesions"][0]["id"] == 1


def test_predicted_liver_and_2d_input(models, tmp_path):
    ct = REAL / "totalseg_ct" / "ct.nii.gz"
    img = nib.load(str(ct))
    two_d = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 15], img.affine), str(two_d))
    r = inf.infer(two_d, tmp_path / "o2d", loaded=models["liver"])
    out = nib.load(str(tmp_path / "o2d" / "liver.nii.gz"))
    assert out.shape == nib.load(str(two_d)).shape and len(out.shape) == 2
    assert r["slices_processed"] == 1 and r["lesions"] == []
    from scipy import ndimage

    comps, _ = ndimage.label(np.asanyarray(img.dataobj)[:, :, 15] > pr.BODY_HU, np.ones((3, 3), bool))
    body = comps == np.bincount(comps[comps > 0]).argmax()
    # "liver everywhere": the liver is the body's largest connected piece
    np.testing.assert_array_equal(np.asanyarray(out.dataobj) > 0, body)
    assert not (tmp_path / "o2d" / "overlays").exists()  # overlays only for slices with lesions


def test_dicom_series_with_dicom_seg(models, tmp_path):
    from monai_liver.data.io import load_ct, load_mask

    series = REAL / "dcmqi_ct3slice" / "ct"
    assert cli_main(["infer", str(series), "--bundle", str(bundles_dir() / "joint"), "--model", str(models["dir"] / "cyst.pt"),
                     "--out", str(tmp_path / "o"), "--dicom-seg", "--image-size", str(SIZE), "--device", "cpu"]) == 0
    hu, affine = load_ct(series)
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    lesion = nib.load(str(tmp_path / "o" / "lesion.nii.gz"))
    assert lesion.shape == hu.shape
    np.testing.assert_allclose(lesion.affine, affine, atol=1e-4)
    lab = np.asanyarray(lesion.dataobj)
    liver = np.asanyarray(nib.load(str(tmp_path / "o" / "liver.nii.gz")).dataobj)
    assert res["slices_processed"] == 3 and lab.any()
    assert all("sop_instance_uid" in s for s in res["slices"])
    for s in res["slices"]:
        assert (tmp_path / "o" / "overlays" / f"slice_{s['slice']:03d}.png").is_file()
        assert s["class"] == "cyst"
    # the DICOM SEG, read back through the package's reader, is the same label map:
    # segment 1 liver, segment 2 the cyst type
    seg = load_mask(tmp_path / "o" / "seg.dcm", reference_affine=affine, reference_shape=hu.shape)
    expected = liver.astype(np.uint8)
    expected[lab > 0] = 2
    np.testing.assert_array_equal(seg, expected)


def test_lesion_figures_known_sphere():
    mask = np.zeros((40, 40, 40), bool)
    x, y, z = np.mgrid[:40, :40, :40]
    mask |= (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 25  # radius 5 voxels
    mask |= (x - 5) ** 2 + (y - 5) ** 2 + (z - 5) ** 2 <= 1  # a small second lesion
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    pred = pr.VolumePrediction(np.ones_like(mask), mask, list(range(40)))
    pred.type_prob = {k: np.stack([mask[:, :, k] * 0.8, mask[:, :, k] * 0.2]).astype(np.float16) for k in range(40)}
    labels, lesions = pr.lesion_components(pred, affine, ("cyst", "metastasis"))
    assert [d["id"] for d in lesions] == [1, 2] and lesions[0]["voxels"] > lesions[1]["voxels"]
    assert lesions[0]["max_diameter_mm"] == pytest.approx(20.0)  # 2 * 5 voxels * 2 mm, centre to centre
    assert lesions[0]["volume_ml"] == pytest.approx(4 / 3 * np.pi * 10**3 / 1000, rel=0.15)
    assert lesions[0]["class"] == "cyst" and lesions[0]["class_probabilities"]["cyst"] == pytest.approx(0.8, abs=1e-3)
    assert lesions[0]["centroid_mm_ras"] == [40.0, 40.0, 40.0]
    assert (labels == 1).sum() == lesions[0]["voxels"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs(models, tmp_path, capsys):
    joint = str(bundles_dir() / "joint")
    ckpt = str(models["dir"] / "cyst.pt")
    base = ["--bundle", joint, "--model", ckpt, "--out", str(tmp_path / "o"), "--image-size", str(SIZE)]
    # not a CT: a liver mask (0/1)
    assert cli_main(["infer", str(REAL / "totalseg_ct" / "liver.nii.gz"), *base]) == 2
    assert "does not look like a CT" in _one_error_line(capsys)
    # a 4D file
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), str(four))
    assert cli_main(["infer", str(four), *base]) == 2
    assert str(four) in _one_error_line(capsys)
    # an empty folder
    (tmp_path / "empty").mkdir()
    assert cli_main(["infer", str(tmp_path / "empty"), *base]) == 2
    assert "empty folder" in _one_error_line(capsys)
    # a checkpoint of another bundle (lits_pretrain: 3 output channels, not 5)
    other = _checkpoint(tmp_path / "lits.pt", strategy="lits_pretrain")
    args = ["infer", str(REAL / "totalseg_ct" / "ct.nii.gz"), "--bundle", joint, "--model", str(other), "--out", str(tmp_path / "o")]
    assert cli_main(args) == 2
    assert "does not fit" in _one_error_line(capsys)
    # a bundle that does not segment; --dicom-seg on NIfTI
    with pytest.raises(LiverError, match="needs a model that segments"):
        load_bundle_model(bundles_dir() / "cls_baseline", other)
    with pytest.raises(LiverError, match="--dicom-seg needs a DICOM input"):
        inf.infer(REAL / "totalseg_ct" / "ct.nii.gz", tmp_path / "o", dicom_seg=True, loaded=models["cyst"])


def test_checkpoint_settings_choose_backbone_and_size(tmp_path):
    """A model.pt that records its settings is rebuilt with its backbone and size; a contradicting
    --image-size is one error, not a silent resize."""
    from monai_liver.networks.factory import build_network

    net = build_network("joint", backbone="basicunet")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "settings": {"strategy": "joint", "backbone": "basicunet", "image_size": 64,
                                                        "class_names": ["cyst", "hemangioma", "metastasis"]}}, ckpt)
    joint = str(Path(__file__).resolve().parents[1] / "bundles" / "joint")
    loaded = load_bundle_model(joint, ckpt, "cpu")
    assert loaded.image_size == 64 and type(loaded.net.encoder).__name__ == "BasicUNetEncoder"
    with pytest.raises(LiverError, match="trained at image size 64, not 128"):
        load_bundle_model(joint, ckpt, "cpu", image_size=128)


def test_two_infers_finishing_into_one_out_take_turns(tmp_path):
    """Two processes that each move 200 finished results into the same ``--out`` at once (what two
    ``infer`` calls do at their end), started together: none fails, ``out`` holds one whole result,
    nothing is left beside it. (Without the lock one process's renames met the other's: an OSError,
    'No such file or directory' or 'Directory not empty'.)"""
    work, go = tmp_path / "work", tmp_path / "go"
    work.mkdir()
    out = work / "out"
    code = (
        "import sys, tempfile, time\n"
        "from pathlib import Path\n"
        "from monai_liver.inference.infer import _swap_into_place\n"
        "out, go = Path(sys.argv[1]), Path(sys.argv[3])\n"
        "while not go.exists():\n"
        "    time.sleep(0.01)\n"
        "for i in range(200):\n"
        "    staged = Path(tempfile.mkdtemp(prefix='.out.partial-', dir=out.parent))\n"
        "    (staged / 'result.json').write_text(sys.argv[2] + str(i))\n"
        "    _swap_into_place(staged, out)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out), tag, str(go)], stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    go.touch()
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    assert [p.name for p in out.iterdir()] == ["result.json"]
    assert out.joinpath("result.json").read_text() in ("a199", "b199")
    assert [p.name for p in work.iterdir()] == ["out"]
