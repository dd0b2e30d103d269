"""Model packages and the liver-then-lesion cascade of ``monai-liver infer``.

The networks are untrained, with a segmentation head set to a constant (weights 0, one bias high),
so what each stage predicts is known: the localiser says "liver" on every pixel, the joint model
"hemangioma" on every pixel it sees. The cascade must then give: liver = the body's largest 3D
piece (stage 1 inside the body), lesion of type hemangioma on exactly that liver (stage 2 within
stage 1), on the input's own grid. Learning is checked by the demo's end-to-end check, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_liver.cli import main as cli_main
from monai_liver.errors import LiverError
from monai_liver.inference import infer as inf
from monai_liver.inference.model import load_model
from monai_liver.inference.predictor import BODY_HU
from monai_liver.model_package import model_settings, read_settings, write_package

CLASSES = ("cyst", "hemangioma", "metastasis")


def _constant_model(path: Path, strategy: str, winner: int, image_size: int, roi_margin: int = 16) -> Path:
    from monai_liver.networks.factory import build_network

    torch.manual_seed(0)
    net = build_network(strategy, n_classes=len(CLASSES), backbone="basicunet")
    sd = net.state_dict()
    head = "segmentation_head.0" if "segmentation_head.0.bias" in sd else "segmentation_head"  # FlexibleUNet / BasicUNet
    sd[f"{head}.weight"].zero_()
    sd[f"{head}.bias"].zero_()
    sd[f"{head}.bias"][winner] = 8.0
    settings = model_settings(strategy, image_size, "basicunet", CLASSES, roi_margin=roi_margin)
    torch.save({"model": sd, "settings": settings}, path)
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pkg")
    model = _constant_model(d / "joint.pt", "joint", 2 + CLASSES.index("hemangioma"), image_size=32)
    localiser = _constant_model(d / "loc.pt", "lits_pretrain", 1, image_size=32, roi_margin=-1)
    return write_package(d / "joint-lits", model, localiser, {"fold": "fold0"})


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, Path]:
    from monai_liver.data.phantoms import make_lits_phantoms

    d = tmp_path_factory.mktemp("vol")
    vol = make_lits_phantoms(d, n_volumes=1, shape=(64, 64, 12), seed=0)[0]  # LPS voxel order
    return vol, d / "lesiontypes-0.nii.gz"


def test_package_is_self_describing(package):
    info = json.loads((package / "model.json").read_text())
    assert info["settings"]["strategy"] == "joint" and info["settings"]["image_size"] == 32
    assert info["settings"]["channels"] == ["background", "liver", *CLASSES]
    assert info["settings"]["window"] == [-200.0, 250.0] and info["settings"]["roi_margin"] == 16
    assert info["localiser"]["strategy"] == "lits_pretrain" and info["localiser"]["roi_margin"] == -1
    assert read_settings(package)["backbone"] == "basicunet"
    m = load_model(package, device="cpu")  # no size, no bundle: the package says it all
    from monai_liver.inference.infer import load_models

    assert load_models(package, device="cpu").trim_liver and not load_models(package, device="cpu", trim_liver=False).trim_liver
    assert (m.image_size, m.class_names, m.roi_margin) == (32, CLASSES, 16)
    with pytest.raises(LiverError, match="trained at image size 32, not 64"):
        load_model(package, device="cpu", image_size=64)
    with pytest.raises(LiverError, match="trained with classes"):
        load_model(package, device="cpu", class_names=["a", "b", "c"])
    with pytest.raises(LiverError, match="a liver localiser must be a lits_pretrain model"):
        write_package(package.parent / "bad", package / "model.pt", package / "model.pt")


def test_cascade_on_a_volume(package, volume, tmp_path, capsys):
    vol, types = volume
    assert types.is_file()  # the phantoms give every lesion's type
    out = tmp_path / "out"
    assert cli_main(["infer", str(vol), "--model", str(package), "--out", str(out), "--device", "cpu", "--no-overlays"]) == 0
    assert "slice(s) processed" in capsys.readouterr().out
    ref = nib.load(str(vol))
    liver_img, lesion_img = nib.load(str(out / "liver.nii.gz")), nib.load(str(out / "lesion.nii.gz"))
    for img in (liver_img, lesion_img):  # the input's own grid (LPS voxel order kept)
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    liver = np.asanyarray(liver_img.dataobj) > 0
    lesion = np.asanyarray(lesion_img.dataobj)
    from scipy import ndimage

    comps, _ = ndimage.label(np.asanyarray(ref.dataobj) > BODY_HU, np.ones((3, 3, 3), bool))
    body = comps == np.bincount(comps[comps > 0]).argmax()
    np.testing.assert_array_equal(liver, body)  # stage 1: "liver everywhere", kept to the body's largest piece
    assert set(np.unique(lesion[liver])) == {1 + CLASSES.index("hemangioma")}  # stage 2 within stage 1
    assert not lesion[~liver].any()
    res = json.loads((out / "result.json").read_text())
    assert res["localiser"].endswith("liver_model.pt") and "liver localiser" in res["liver_roi"]
    assert res["flip_average"] is True  # the default; --no-flip-average: one pass per slice
    assert res["model_settings"]["image_size"] == 32 and res["slices_processed"] == 12
    assert {d["class"] for d in res["lesions"]} == {"hemangioma"}


def test_volume_check_scores_the_output(package, volume, tmp_path):
    from monai_liver.inference.volume_check import check_volume

    vol, types = volume
    seg = vol.with_name("segmentation-0.nii.gz")
    f = check_volume(inf.load_models(package, device="cpu"), vol, seg, tmp_path / "chk", types)
    ref = np.asanyarray(nib.load(str(seg)).dataobj)
    n_ref = ndimage_count(ref >= 2)
    # "hemangioma over the whole liver": every reference lesion is found, one predicted lesion
    assert f["reference_lesions"] == n_ref and f["detected"] == n_ref and f["detection_recall"] == 1.0
    assert 0 < f["liver_dice"] <= 1 and 0 < f["lesion_dice"] < 0.5
    t = np.asanyarray(nib.load(str(types)).dataobj)
    assert f["typed_lesions"] == n_ref and f["type_accuracy"] == pytest.approx(
        np.mean([np.bincount(t[c][t[c] > 0]).argmax() == 2 for c in _components(ref >= 2)]))
    assert json.loads((tmp_path / "chk" / "check.json").read_text()) == f


def _components(mask):
    from scipy import ndimage

    lab, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
    return [lab == i for i in range(1, n + 1)]


def ndimage_count(mask) -> int:
    return len(_components(mask))


def test_export_of_a_package_keeps_its_settings(package, tmp_path):
    from monai_liver.constants import bundles_dir
    from monai_liver.inference.export import export

    ts = export(bundles_dir() / "joint", package, tmp_path / "model.ts")
    m = load_model(ts, device="cpu")
    assert m.torchscript and m.image_size == 32 and m.settings["backbone"] == "basicunet"


class _DarkLesions(torch.nn.Module):
    """A stand-in network: lesion (channel ``dark``, default 2: the first type channel for joint; 0:
    background) where the input is below ``threshold``, liver elsewhere: ``(B, 1, S, S) -> {"seg": (B, C, S, S), "cls": None}``.
    The lesion logit is ``lesion_logit`` against 5 for liver: 10 gives a lesion probability of 0.99,
    5.4 one of 0.6."""

    def __init__(self, channels: int, threshold: float, lesion_logit: float = 10.0, dark: int = 2) -> None:
        super().__init__()
        self.channels, self.threshold, self.lesion_logit, self.dark = channels, threshold, lesion_logit, dark

    def forward(self, x):
        seg = torch.zeros(x.shape[0], self.channels, *x.shape[2:])
        seg[:, 1] = 5.0
        seg[:, self.dark] = torch.where(x[:, 0] < self.threshold, self.lesion_logit, -10.0)
        return {"seg": seg, "cls": None}


def test_lesion_gate_keeps_the_stage2_lesions_it_confirms():
    """Step 4 of the predictor: of two dark blobs that the joint model calls lesions (lesion probability
    0.6), only the one the gate also finds stays (typed by the joint model); without the gate both stay;
    both stay when the joint model is sure of them (0.99 >= ``sure_lesion``); a lesion the joint model
    misses stays when the gate is sure of it; a 2D image is not gated."""
    from monai_liver.inference.model import LoadedModel
    from monai_liver.inference.predictor import Predictor

    hu = np.full((48, 48, 6), 100.0, np.float32)  # liver at 100 HU
    hu[8:16, 8:16, 1:5] = -80.0  # darker: the gate (window -100..400: below 0.1) and the joint model see it
    hu[30:38, 30:38, 1:5] = 30.0  # only the joint model (below 0.3) calls it a lesion
    liver = np.ones(hu.shape, bool)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    common = dict(image_size=32, window=(-100.0, 400.0), roi_margin=4)
    joint = LoadedModel(_DarkLesions(5, 0.3, lesion_logit=5.4).eval(), "joint", ("cyst", "hemangioma", "metastasis"), **common)
    sure = LoadedModel(_DarkLesions(5, 0.3).eval(), "joint", ("cyst", "hemangioma", "metastasis"), **common)
    gate = LoadedModel(_DarkLesions(3, 0.1).eval(), "lits_pretrain", ("cyst", "hemangioma", "metastasis"), **common)

    plain = Predictor(joint)(hu, affine, liver)
    gated = Predictor(joint, lesion_gate=gate)(hu, affine, liver)
    assert plain.lesion[10, 10, 2] and plain.lesion[33, 33, 2]
    assert gated.lesion[10, 10, 2] and not gated.lesion[33, 33, 2]
    assert gated.liver[33, 33, 2] and gated.label[10, 10, 2] == 2  # type 0 (cyst) of the joint model
    assert gated.lesion_gate == gate.model_path and not plain.lesion_gate
    assert Predictor(sure, lesion_gate=gate).sure_lesion == 0.75
    kept = Predictor(sure, lesion_gate=gate)(hu, affine, liver)
    assert kept.lesion[10, 10, 2] and kept.lesion[33, 33, 2]
    assert not Predictor(sure, lesion_gate=gate, sure_lesion=1.01)(hu, affine, liver).lesion[33, 33, 2]
    # a lesion stage 2 misses stays when the gate is sure of it (0.99 >= ``sure_gate``), not when it is unsure
    blind = LoadedModel(_DarkLesions(5, 0.01).eval(), "joint", ("cyst", "hemangioma", "metastasis"), **common)
    unsure = LoadedModel(_DarkLesions(3, 0.1, lesion_logit=5.4).eval(), "lits_pretrain", ("cyst", "hemangioma", "metastasis"), **common)
    assert not Predictor(blind)(hu, affine, liver).lesion.any()
    assert Predictor(blind, lesion_gate=gate).sure_gate == 0.85
    found = Predictor(blind, lesion_gate=gate)(hu, affine, liver)
    assert found.lesion[10, 10, 2] and found.label[10, 10, 2] >= 2 and not found.lesion[33, 33, 2]
    assert not Predictor(blind, lesion_gate=unsure)(hu, affine, liver).lesion.any()
    assert not Predictor(blind, lesion_gate=gate, sure_gate=1.01)(hu, affine, liver).lesion.any()
    flat = Predictor(joint, lesion_gate=gate)(hu[:, :, 2:3], affine, liver[:, :, 2:3])
    assert flat.lesion[33, 33, 0] and not flat.lesion_gate
    # every stage-2 lesion inside a gate lesion: both stay (no component is lost to the background's place)
    same = LoadedModel(_DarkLesions(3, 0.3).eval(), "lits_pretrain", ("cyst", "hemangioma", "metastasis"), **common)
    both = Predictor(joint, lesion_gate=same)(hu, affine, liver)
    assert both.lesion[10, 10, 2] and both.lesion[33, 33, 2]


def test_the_gate_trims_the_liver_of_stage_1_not_a_given_one():
    """Step 4 of the predictor: a fluid-filled organ beside the liver (10 HU) that the whole-slice
    localiser takes for liver and the joint model, sure of it, for a lesion, is neither liver nor lesion
    when the gate (liver crops) calls it background; it stays without the trim, and inside a given liver."""
    from monai_liver.inference.model import LoadedModel
    from monai_liver.inference.predictor import Predictor

    hu = np.full((48, 48, 6), -1000.0, np.float32)  # air
    hu[4:44, 4:44] = 100.0  # liver
    hu[28:38, 28:38] = 10.0  # a gallbladder
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    names = ("cyst", "hemangioma", "metastasis")
    common = dict(image_size=32, window=(-100.0, 400.0))
    localiser = LoadedModel(_DarkLesions(3, -1.0).eval(), "lits_pretrain", names, roi_margin=-1, **common)  # all liver
    joint = LoadedModel(_DarkLesions(5, 0.3).eval(), "joint", names, roi_margin=4, **common)  # sure: 0.99
    gate = LoadedModel(_DarkLesions(3, 0.3, dark=0).eval(), "lits_pretrain", names, roi_margin=4, **common)

    trimmed = Predictor(joint, localiser=localiser, lesion_gate=gate)(hu, affine)
    assert trimmed.liver[10, 10, 2] and not trimmed.liver[33, 33, 2] and not trimmed.lesion.any()
    assert trimmed.liver_source.endswith("trimmed by the lesion gate")
    kept = Predictor(joint, localiser=localiser, lesion_gate=gate, trim_liver=False)(hu, affine)
    assert kept.liver[33, 33, 2] and kept.lesion[33, 33, 2] and "trimmed" not in kept.liver_source
    given = Predictor(joint, localiser=localiser, lesion_gate=gate)(hu, affine, hu > 0)
    assert given.lesion[33, 33, 2]


class _LeftHalfLesion(torch.nn.Module):
    """A network that is not flip-equivariant: lesion logit 4 on the left half of its input's first
    axis (the image's rows), background elsewhere; class logits favour class 0 when the top-left
    pixel is bright."""

    def forward(self, x):
        seg = torch.zeros(x.shape[0], 3, *x.shape[2:])
        seg[:, 2, : x.shape[2] // 2] = 4.0
        cls = torch.stack([x[:, 0, 0, 0] * 4.0, torch.zeros(x.shape[0]), torch.zeros(x.shape[0])], 1)
        return {"seg": seg, "cls": cls}


def test_flip_average_is_the_mean_over_the_four_flips():
    """Stage 2 and the gate average over the four flips of each slice, each mapped back (the
    predictor's ``flip_average``): for a network that marks the left half of whatever it sees, the
    mean marks both halves with half the evidence; one pass marks the left half only."""
    from monai_liver.inference.predictor import FLIP_AVERAGE, Predictor, _probabilities

    x = torch.zeros(2, 1, 8, 8)
    x[1, 0, 0, 0] = 1.0
    one, cls_one = _probabilities(_LeftHalfLesion(), x, flip_average=False)
    mean, cls_mean = _probabilities(_LeftHalfLesion(), x, flip_average=True)
    p_left = torch.softmax(torch.tensor([0.0, 0.0, 4.0]), 0)[2].item()
    p_none = 1.0 / 3.0
    assert torch.allclose(one[:, 2, :4], torch.tensor(p_left)) and torch.allclose(one[:, 2, 4:], torch.tensor(p_none))
    assert torch.allclose(mean[:, 2], torch.tensor((p_left + p_none) / 2))  # both halves, half the evidence
    assert np.allclose(mean.sum(1), 1.0) and cls_mean.shape == (2, 3)
    # the bright pixel is at the top-left in one of the four flips only: class 0 a quarter as sure
    p0 = torch.softmax(torch.tensor([4.0, 0.0, 0.0]), 0)[0].item()
    assert np.isclose(cls_one[1, 0], p0) and np.isclose(cls_mean[1, 0], (p0 + 3 * (1 / 3)) / 4)
    assert FLIP_AVERAGE and Predictor(None).flip_average  # the default of infer, the label app and the checks


def test_experiment_packages_carry_the_lesion_gate(package, tmp_path):
    """``write_package(lesion_gate=)`` copies it; ``infer`` refuses a gate that is not a crop-trained lits_pretrain model."""
    from monai_liver.model_package import LESION_GATE_FILE, lesion_gate_file

    gate = _constant_model(tmp_path / "gate.pt", "lits_pretrain", 1, 32)
    out = write_package(tmp_path / "pkg", package / "model.pt", lesion_gate=gate)
    assert lesion_gate_file(out) == out / LESION_GATE_FILE
    assert "lesion_gate" in json.loads((out / "model.json").read_text())
    assert inf.load_models(out).lesion_gate is not None
    assert inf.load_models(out, lesion_gate=False).lesion_gate is None
    whole = _constant_model(tmp_path / "whole.pt", "lits_pretrain", 1, 32, roi_margin=-1)
    write_package(out, package / "model.pt", lesion_gate=whole)
    with pytest.raises(LiverError, match="lesion gate must be a lits_pretrain model trained on liver crops"):
        inf.load_models(out)
    write_package(out, package / "model.pt")
    assert lesion_gate_file(out) is None


def test_typed_study_stacks_typed_slices_and_scores_the_types(package, tmp_path):
    """``make_typed_study``: held-out typed slices as blocks of identical slices, one air slice
    between blocks (no lesion of two blocks is one 3D component), types interleaved and known per
    voxel; ``check_volume`` with the liver given scores the per-lesion types of ``infer`` on it (the
    stand-in joint model says "hemangioma" everywhere: right exactly on the hemangioma blocks)."""
    from conftest import tiny_lesion_datalist

    from monai_liver.data.typed_study import STUDY_FILES, make_typed_study
    from monai_liver.inference.volume_check import check_volume

    datalist = tiny_lesion_datalist(tmp_path)
    study = make_typed_study(datalist, 0, tmp_path / "study", per_class=2, slices_per_lesion=2, spacing_mm=3.0, size=64)
    blocks = study["blocks"]
    classes = [b["class"] for b in blocks]
    assert all(a != b for a, b in zip(classes, classes[1:]))  # the classes in turn
    load = {k: np.asanyarray(nib.load(str(tmp_path / "study" / f)).dataobj) for k, f in STUDY_FILES.items() if k != "study"}
    assert load["volume"].shape == (64, 64, 3 * len(blocks)) and not study["skipped"] and len(blocks) >= 4
    assert (load["volume"][:, :, 2::3] == -1024).all() and not load["segmentation"][:, :, 2::3].any()  # air between
    types = load["lesion_types"]
    for b in blocks:  # every lesion voxel of a block carries the block's type
        block = types[:, :, b["first_slice"] : b["first_slice"] + 2]
        assert set(np.unique(block[block > 0])) == {1 + CLASSES.index(b["class"])}
        assert int((block[:, :, 0] > 0).sum()) == b["lesion_pixels"] > 0
    np.testing.assert_array_equal(load["segmentation"] >= 1, load["liver"] > 0)
    per_block = sum(ndimage_count(types[:, :, b["first_slice"] : b["first_slice"] + 2] > 0) for b in blocks)
    assert ndimage_count(types > 0) == per_block

    f = check_volume(inf.load_models(package, device="cpu"), tmp_path / "study" / STUDY_FILES["volume"],
                     tmp_path / "study" / STUDY_FILES["segmentation"], tmp_path / "chk",
                     tmp_path / "study" / STUDY_FILES["lesion_types"], liver=tmp_path / "study" / STUDY_FILES["liver"])
    assert f["liver_given"] and f["localiser"] is None and f["liver_dice"] > 0.99  # the given liver, inside the body
    lesions = _components(types > 0)
    assert f["detected"] == f["typed_lesions"] == len(lesions)
    assert f["type_accuracy"] == pytest.approx(np.mean([types[m].max() == 2 for m in lesions]), abs=1e-4)
    with pytest.raises(LiverError, match="no typed slice"):
        make_typed_study(datalist, 7, tmp_path / "none")


def test_reference_roi_dice_per_slice_and_per_case(volume, tmp_path):
    """``reference_roi_dice`` scores a lits_pretrain network on the input it was trained on: a model
    of whole slices on every slice (one that says "liver" everywhere: liver Dice per case exactly
    2|L| / (|volume| + |L|)), a model of liver crops only inside the reference liver's ROI; per
    slice and per case (LiTS's Dice per case), averaged over volumes by ``case_means``."""
    from monai_liver.inference.volume_check import case_means, case_text, reference_roi_dice

    image = volume[0]
    label = image.with_name(image.name.replace("volume-", "segmentation-"))
    ref = np.asanyarray(nib.load(str(label)).dataobj)
    liver = ref >= 1
    whole = load_model(_constant_model(tmp_path / "loc.pt", "lits_pretrain", 1, image_size=32, roi_margin=-1), device="cpu")
    s = reference_roi_dice(whole, image, label)
    assert s["liver_case"] == pytest.approx(2 * liver.sum() / (liver.size + liver.sum()))
    per_slice = [2 * liver[:, :, k].sum() / (liver[:, :, k].size + liver[:, :, k].sum())
                 for k in range(liver.shape[2]) if liver[:, :, k].any()]
    assert s["liver_slices"] == pytest.approx(per_slice)
    assert s["lesion_case"] == 0.0 and len(s["lesion_slices"]) == int((ref >= 2).any(axis=(0, 1)).sum()) > 0

    crop = load_model(_constant_model(tmp_path / "gate.pt", "lits_pretrain", 2, image_size=32), device="cpu")
    c = reference_roi_dice(crop, image, label)  # "lesion" on every pixel of the liver ROI: also liver
    assert s["liver_case"] < c["liver_case"] < 1 and 0 < c["lesion_case"] < 1
    assert np.mean(c["lesion_slices"]) > 0

    lesion_free = tmp_path / "segmentation-free.nii.gz"
    nib.save(nib.Nifti1Image(np.minimum(ref, 1).astype(np.uint8), nib.load(str(label)).affine), str(lesion_free))
    f = reference_roi_dice(crop, image, lesion_free)
    assert f["lesion_case"] is None and f["lesion_slices"] == []
    means = case_means([c, f])
    assert means == {"case_liver_dice": pytest.approx((c["liver_case"] + f["liver_case"]) / 2),
                     "case_lesion_dice": pytest.approx(c["lesion_case"]), "cases": 2, "lesion_cases": 1}
    assert case_text(means).endswith("(2 volumes, 1 with a lesion)")


def test_fresh_volumes_check_pools_the_figures(tmp_path):
    """``check_fresh_volumes`` (the demo's end-to-end check on LiTS-like phantoms made with seed + 1):
    ``infer`` on each, figures pooled over the volumes and written, and the lesion gate scored in 2D
    on the reference liver ROI (the stand-in gate says "liver" on every pixel it sees: liver Dice
    above 0, lesion Dice 0)."""
    from monai_liver.experiment.packages import check_fresh_volumes

    model = _constant_model(tmp_path / "joint.pt", "joint", 2 + CLASSES.index("hemangioma"), image_size=32)
    localiser = _constant_model(tmp_path / "loc.pt", "lits_pretrain", 1, image_size=32, roi_margin=-1)
    gate = _constant_model(tmp_path / "gate.pt", "lits_pretrain", 1, image_size=32)
    package = write_package(tmp_path / "joint-lits", model, localiser, {"fold": "fold0"}, lesion_gate=gate)
    lines: list[str] = []
    pooled = check_fresh_volumes(tmp_path / "exp", package, inf.load_models(package, device="cpu"), (48, 48, 10), seed=0,
                                 n_volumes=2, log=lines.append)
    written = json.loads((tmp_path / "exp" / "check" / "fresh" / "figures.json").read_text())
    assert pooled["volumes"] == 2 and pooled["seed"] == 1 and written["pooled"] == pooled
    assert pooled["reference_lesions"] == sum(f["reference_lesions"] for f in written["volumes"]) > 0
    assert pooled["liver_dice"] == pytest.approx(np.mean([f["liver_dice"] for f in written["volumes"]]))
    two_d = pooled["lits_pretrain_2d"]
    assert two_d["liver_slices"] > 0 and two_d["liver_dice"] > 0 and two_d["lesion_slices"] > 0 and two_d["lesion_dice"] == 0
    assert two_d["cases"] == 2 and 0 < two_d["case_liver_dice"] < 1 and two_d["case_lesion_dice"] == 0
    assert "2 fresh LiTS-like volumes (seed 1, made now" in lines[0] and lines[1].startswith("   lits_pretrain")
