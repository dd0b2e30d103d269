"""transforms: strategy targets, windowing, liver-ROI crop, augmentation, inference chain."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.utils import set_determinism

from monai_liver.constants import PRETRAIN_STRATEGY, STRATEGIES
from monai_liver.errors import LiverError
from monai_liver.transforms import (
    StrategyTargetd,
    eval_transforms,
    inference_transforms,
    train_transforms,
    window_ct,
)

S = 32


def _raises_liver_error(fn, *args, match: str):
    """Call ``fn``; a LiverError must come out, directly or wrapped by MONAI's Compose."""
    with pytest.raises(Exception) as info:
        fn(*args)
    err = info.value
    while err is not None and not isinstance(err, LiverError):
        err = err.__cause__
    assert err is not None, f"no LiverError in {info.value!r}"
    assert re.search(match, str(err)), str(err)


def _slice(folder: Path, name: str = "a", shape=(96, 80), liver_box=(10, 40, 8, 30), lesion=2, cls=1, hu=100.0):
    """Write a cached-style slice: background -1000 HU, liver ``hu``, a lesion of label ``lesion``."""
    img = np.full(shape, -1000.0, np.float32)
    seg = np.zeros(shape, np.uint8)
    x0, x1, y0, y1 = liver_box
    seg[x0:x1, y0:y1] = 1
    if lesion:
        seg[x0 + 5 : x0 + 12, y0 + 5 : y0 + 12] = lesion
    img[seg == 1] = hu
    img[seg >= 2] = 20.0
    np.save(folder / f"{name}.npy", img)
    np.save(folder / f"{name}_seg.npy", seg)
    return {"image": str(folder / f"{name}.npy"), "seg": str(folder / f"{name}_seg.npy"), "cls": cls,
            "patient_id": "P", "fold": 0, "source": f"{name}.nii.gz", "slice": 0}


@pytest.mark.parametrize("strategy", (PRETRAIN_STRATEGY, *STRATEGIES))
def test_shapes_and_types(tmp_path: Path, strategy: str):
    item = _slice(tmp_path)
    for chain in (eval_transforms(strategy, image_size=S), train_transforms(strategy, image_size=S)):
        out = chain(item)
        assert out["image"].shape == (1, S, S) and out["image"].dtype == torch.float32
        assert out["seg"].shape == (1, S, S) and out["seg"].dtype == torch.long
        assert out["cls"].dtype == torch.long and out["cls"].ndim == 0 and int(out["cls"]) == 1
        assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
        assert out["patient_id"] == "P" and out["source"] == "a.nii.gz"


def test_window_values(tmp_path: Path):
    hu = np.array([-1000.0, -200.0, 25.0, 250.0, 1500.0], np.float32)
    np.testing.assert_allclose(window_ct(hu), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert isinstance(window_ct(hu), np.ndarray)
    np.testing.assert_allclose(window_ct(torch.tensor([-200.0, 250.0])), [0.0, 1.0])
    np.testing.assert_allclose(window_ct(hu, window=(-1000, 1000)), [0.0, 0.4, 0.5125, 0.625, 1.0], atol=1e-6)
    with pytest.raises(LiverError):
        window_ct(hu, window=(100, 100))
    # through the chain: liver at 250 HU -> 1 well inside the liver, air (-1000) -> 0
    out = eval_transforms("seg_baseline", image_size=S)(_slice(tmp_path, hu=250.0, lesion=0))
    img, seg = out["image"][0], out["seg"][0]
    inner = torch.nn.functional.max_pool2d((seg == 0)[None, None].float(), 5, 1, 2)[0, 0] == 0  # liver, 2 px from any edge
    assert inner.sum() > 20
    np.testing.assert_allclose(img[inner].numpy(), 1.0, atol=1e-5)
    assert float(img.min()) == 0.0


def test_crop_keeps_the_liver(tmp_path: Path):
    # a small liver in the corner of a large slice
    item = _slice(tmp_path, shape=(200, 160), liver_box=(150, 190, 120, 150))
    full = (np.load(item["seg"]) > 0).mean()
    out = eval_transforms("seg_baseline", image_size=S)(item)
    seg = out["seg"][0]
    assert (seg > 0).float().mean() > 5 * full  # the ROI is zoomed in
    assert (seg == 2).any() and (seg == 1).any()  # lesion and liver both kept
    rows, cols = torch.nonzero(seg > 0, as_tuple=True)
    # with the margin, the liver does not touch the border on the side away from the image edge
    assert rows.min() > 0 and cols.min() > 0
    # a slice without liver keeps its whole field of view (no empty crop)
    empty = _slice(tmp_path, name="e", liver_box=(0, 0, 0, 0), lesion=0)
    out = eval_transforms("seg_baseline", image_size=S)(empty)
    assert out["image"].shape == (1, S, S) and int(out["seg"].max()) == 0


def test_the_classification_baseline_sees_only_the_liver(tmp_path: Path):
    """cls_baseline's chains (registry ``liver_only_input``) set every pixel outside the liver
    (background, margin, padding) to the liver's median; the other strategies see the whole ROI."""
    item = _slice(tmp_path, shape=(96, 60), hu=100.0)  # liver 100 HU, lesion 20 HU, around it air
    for chain in (eval_transforms("cls_baseline", image_size=S), train_transforms("cls_baseline", image_size=S, augment=False)):
        out = chain(item)
        img, liver = out["image"][0], out["seg"][0] >= 1
        assert (~liver).sum() > 50 and liver.sum() > 50
        assert torch.equal(img[~liver], torch.full_like(img[~liver], float(img[liver].median())))
        assert float(img[liver].min()) < float(img[liver].median())  # the lesion stays darker
    whole = eval_transforms("joint", image_size=S)(item)
    assert float(whole["image"][0][whole["seg"][0] == 0].min()) == 0.0  # air
    no_liver = _slice(tmp_path, name="e", liver_box=(0, 0, 0, 0), lesion=0)
    out = eval_transforms("cls_baseline", image_size=S)(no_liver)
    assert float(out["image"].max()) == 0.0  # nothing to fill from: the image as it is (air)


def test_aspect_ratio_is_kept(tmp_path: Path):
    item = _slice(tmp_path, shape=(40, 20), liver_box=(0, 40, 0, 20), lesion=0)
    seg = eval_transforms("seg_baseline", image_size=S, margin=0)(item)["seg"][0]
    assert (seg[:, S // 2] == 1).all()  # the long side fills the image
    assert (seg[:, 0] == 0).all() and (seg[:, -1] == 0).all()  # the short side is padded


def test_strategy_targets(tmp_path: Path):
    plain = _slice(tmp_path, "p", lesion=2, cls=2)  # 0/1 lesion mask, type in cls
    typed = _slice(tmp_path, "t", lesion=4, cls=2)  # class-id mask: metastasis pixels = 2 + 2
    seg_t = np.load(typed["seg"])
    seg_t[12:14, 30:34] = 2  # plus a cyst (2 + 0) elsewhere in the liver
    np.save(typed["seg"], seg_t)
    vals = lambda out: set(torch.unique(out["seg"]).tolist())  # noqa: E731
    assert vals(eval_transforms("joint", image_size=S)(plain)) == {0, 1, 4}
    assert vals(eval_transforms("joint", image_size=S)(typed)) == {0, 1, 2, 4}
    for strategy in ("seg_baseline", "ynet", "cls_baseline", PRETRAIN_STRATEGY):
        assert vals(eval_transforms(strategy, image_size=S)(typed)) == {0, 1, 2}
        assert vals(eval_transforms(strategy, image_size=S)(plain)) == {0, 1, 2}
    # the target transform alone, on arrays
    d = StrategyTargetd("joint", n_classes=3)({"seg": np.array([[0, 1, 2]]), "cls": 0})
    assert d["seg"].tolist() == [[0, 1, 2]] and d["cls"].dtype == torch.long
    assert StrategyTargetd("joint", n_classes=3)({"seg": torch.tensor([[0, 2]]), "cls": 1})["seg"].tolist() == [[0, 3]]
    _raises_liver_error(eval_transforms("joint", image_size=S), _slice(tmp_path, "u", lesion=2, cls=-1),
                        match="u.nii.gz: slice 0 has lesion pixels")
    with pytest.raises(LiverError, match="label 6"):
        StrategyTargetd("joint", n_classes=3)({"seg": np.array([[6]]), "cls": 0})
    assert int(StrategyTargetd("seg_baseline")({"seg": np.zeros((2, 2))})["cls"]) == -1
    with pytest.raises(LiverError, match="strategy 'unet'"):
        train_transforms("unet")


def test_determinism_and_augmentation(tmp_path: Path):
    """A chain built after ``set_determinism`` (as the bundles do) replays the same augmentations."""
    item = _slice(tmp_path)
    runs = []
    for seed in (3, 3, 4):
        set_determinism(seed=seed)
        chain = train_transforms("joint", image_size=S)
        runs.append([chain(item) for _ in range(6)])
    set_determinism(seed=None)
    first, second, other = runs
    assert any(not torch.equal(a["image"], c["image"]) for a, c in zip(first, other))
    for a, b in zip(first, second):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["seg"], b["seg"])
    # augmentation does change the samples, and the seg stays a label map
    assert len({a["image"].numpy().tobytes() for a in first}) > 1
    for a in first:
        assert set(torch.unique(a["seg"]).tolist()) <= {0, 1, 3}
    ev = eval_transforms("joint", image_size=S)
    assert torch.equal(ev(item)["image"], ev(item)["image"])


def test_dataset_and_batches(tmp_path: Path):
    items = [_slice(tmp_path, f"s{i}", cls=i % 3, liver_box=(10 + i, 50 + i, 8, 30 + 2 * i)) for i in range(4)]
    ds = CacheDataset(items, transform=train_transforms("ynet", image_size=S), cache_rate=1.0, progress=False)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, S, S) and batch["seg"].shape == (4, 1, S, S)
    assert batch["cls"].tolist() == [0, 1, 2, 0] and batch["cls"].dtype == torch.long


def test_inference_transforms(tmp_path: Path, real_dir: Path):
    hu = np.linspace(-400, 400, 60 * 40, dtype=np.float32).reshape(60, 40)
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 5.0, 1.0])), tmp_path / "x.nii.gz")
    chain = inference_transforms(image_size=S)
    from_file = chain({"image": str(tmp_path / "x.nii.gz")})
    from_array = chain({"image": hu})
    assert from_file["image"].shape == (1, S, S) and from_file["image"].dtype == torch.float32
    assert torch.allclose(from_file["image"], from_array["image"])
    assert from_file["image"].meta["filename_or_obj"].endswith("x.nii.gz")
    assert float(from_file["image"].max()) == pytest.approx(1.0) and float(from_file["image"].min()) == 0.0
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    _raises_liver_error(chain, {"image": str(tmp_path / "v.nii.gz")}, match="v.nii.gz: 3D image")
    _raises_liver_error(chain, {"image": np.zeros((4, 4, 4))}, match="not one 2D slice")
    real = chain({"image": str(real_dir / "dcmqi_ct3slice/ct/01.dcm")})["image"]
    assert real.shape == (1, S, S) and 0.0 <= float(real.min()) < float(real.max()) <= 1.0


def test_one_image_size_check():
    """The transforms, inference and the experiment share one check (multiple of 32, at least 32)."""
    from monai_liver.constants import check_image_size
    from monai_liver.errors import LiverError

    assert check_image_size("64") == 64
    for bad in (48, 16, 0, "x"):
        with pytest.raises(LiverError):
            check_image_size(bad)
    with pytest.raises(LiverError, match="image_size 48: must be a multiple of 32"):
        eval_transforms("joint", image_size=48)
