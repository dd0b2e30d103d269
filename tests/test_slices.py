"""data.slices: 2D slice extraction and cache, on tiny synthetic volumes and a real sample."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import monai_liver.data.slices as slices_mod
from monai_liver.data.slices import materialise_slices, seg_from_masks
from monai_liver.errors import LiverError

AFF = np.diag([0.8, 0.8, 2.5, 1.0])


def _lits(folder: Path, n: int = 0, affine=AFF, shape=(16, 12, 8)) -> tuple[np.ndarray, np.ndarray]:
    """volume-n / segmentation-n: liver on z 2..5, lesion on z 3..4; HU liver 100, lesion 30."""
    rng = np.random.default_rng(n)
    vol = rng.integers(-1000, -900, size=shape).astype(np.int16)
    seg = np.zeros(shape, np.uint8)
    seg[3:12, 2:10, 2:6] = 1
    seg[5:8, 4:7, 3:5] = 2
    vol[seg == 1] = 100
    vol[seg == 2] = 30
    nib.save(nib.Nifti1Image(vol, affine), folder / f"volume-{n}.nii.gz")
    nib.save(nib.Nifti1Image(seg, affine), folder / f"segmentation-{n}.nii.gz")
    return vol, seg


def _item(n: int, fold: int = 0) -> dict:
    return {"image": f"volume-{n}.nii.gz", "label": f"segmentation-{n}.nii.gz", "patient_id": str(n), "fold": fold}


class _Counter:
    """Wrap the readers used by data.slices and count calls."""

    def __init__(self, monkeypatch):
        self.ct = self.mask = 0
        real_ct, real_mask = slices_mod.load_ct, slices_mod.read_mask

        def ct(*a, **k):
            self.ct += 1
            return real_ct(*a, **k)

        def mask(*a, **k):
            self.mask += 1
            return real_mask(*a, **k)

        monkeypatch.setattr(slices_mod, "load_ct", ct)
        monkeypatch.setattr(slices_mod, "read_mask", mask)


def test_volume_slices_and_oversampling(tmp_path: Path):
    data = tmp_path / "lits"
    data.mkdir()
    vol, seg = _lits(data, 0)
    _lits(data, 1)
    out = materialise_slices([_item(0, fold=2), _item(1, fold=1)], data, tmp_path / "cache")
    assert [o["slice"] for o in out] == [2, 3, 4, 5] * 2
    first = out[0]
    assert set(first) == {"image", "seg", "cls", "patient_id", "fold", "source", "slice"}
    assert (first["cls"], first["patient_id"], first["fold"], first["source"]) == (-1, "0", 2, "volume-0.nii.gz")
    for o in out[:4]:
        img, s = np.load(o["image"]), np.load(o["seg"])
        assert img.dtype == np.float32 and s.dtype == np.uint8 and img.shape == (16, 12)
        np.testing.assert_array_equal(img, vol[:, :, o["slice"]])
        np.testing.assert_array_equal(s, seg[:, :, o["slice"]])

    every = materialise_slices([_item(0)], data, tmp_path / "cache", only_liver=False)
    assert [o["slice"] for o in every] == list(range(8))
    over = materialise_slices([_item(0)], data, tmp_path / "cache", lesion_oversample=3)
    assert [o["slice"] for o in over] == [2, 3, 3, 3, 4, 4, 4, 5]
    with pytest.raises(LiverError):
        materialise_slices([_item(0)], data, tmp_path / "cache", lesion_oversample=0)


def test_cache_reads_sources_once(tmp_path: Path, monkeypatch):
    data = tmp_path / "lits"
    data.mkdir()
    _lits(data, 0)
    count = _Counter(monkeypatch)
    items = [_item(0), _item(0)]  # a repeated item is still one read
    first = materialise_slices(items, data, tmp_path / "cache")
    assert (count.ct, count.mask) == (1, 1)
    mtimes = {o["image"]: os.stat(o["image"]).st_mtime_ns for o in first}

    again = materialise_slices(items, data, tmp_path / "cache", lesion_oversample=2)
    assert (count.ct, count.mask) == (1, 1)  # nothing read from the sources
    assert {o["image"] for o in again} == set(mtimes)
    assert all(os.stat(p).st_mtime_ns == t for p, t in mtimes.items())  # nothing rewritten
    assert not [p for p in (tmp_path / "cache").rglob("*.tmp")]

    # a changed source (new mtime/size) is read again, into a new entry
    vol, _ = _lits(data, 0, shape=(16, 12, 9))
    changed = materialise_slices([_item(0)], data, tmp_path / "cache")
    assert count.ct == 2
    assert {o["image"] for o in changed}.isdisjoint(mtimes)
    np.testing.assert_array_equal(np.load(changed[0]["image"]), vol[:, :, 2])

    # a half-written entry (index missing a file) is rebuilt
    os.remove(changed[1]["seg"])
    materialise_slices([_item(0)], data, tmp_path / "cache")
    assert count.ct == 3 and Path(changed[1]["seg"]).is_file()


def test_concurrent_writers_agree(tmp_path: Path):
    data = tmp_path / "lits"
    data.mkdir()
    _lits(data, 0)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: materialise_slices([_item(0)], data, tmp_path / "cache"), range(2)))
    assert results[0] == results[1]
    for o in results[0]:
        assert np.load(o["seg"]).shape == (16, 12)


def test_volume_geometry_and_bad_labels(tmp_path: Path):
    data = tmp_path / "lits"
    data.mkdir()
    vol, seg = _lits(data, 0)
    # the same volume stored flipped in x (LAS): the segmentation must still fit by geometry
    las = AFF.copy()
    las[0, 0], las[0, 3] = -0.8, 0.8 * 15
    nib.save(nib.Nifti1Image(vol[::-1], las), data / "volume-0.nii.gz")
    out = materialise_slices([_item(0)], data, tmp_path / "cache")
    for o in out:
        img, s = np.load(o["image"]), np.load(o["seg"])
        assert (img[s == 1] == 100).all() and (img[s == 2] == 30).all()

    bad = seg.copy()
    bad[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(bad, AFF), data / "segmentation-0.nii.gz")
    with pytest.raises(LiverError, match="segmentation-0.nii.gz: label value 5"):
        materialise_slices([_item(0)], data, tmp_path / "cache")
    with pytest.raises(LiverError, match="missing.nii.gz"):
        materialise_slices([{"image": "missing.nii.gz", "label": "segmentation-0.nii.gz"}], data, tmp_path / "cache")


def _manifest_files(folder: Path) -> dict:
    """A 2D slice with 0/1 masks, a class-id lesion mask, and a 3D volume with 2D masks."""
    rng = np.random.default_rng(0)
    img = rng.normal(50, 5, (20, 18)).astype(np.float32)
    liver = np.zeros((20, 18), np.uint8)
    liver[4:16, 3:15] = 1
    lesion = np.zeros((20, 18), np.uint8)
    lesion[6:9, 5:8] = 1
    typed = lesion.copy()
    typed[12:14, 10:13] = 3  # a metastasis (id 3) next to a cyst (id 1)
    aff2 = np.diag([0.7, 0.7, 5.0, 1.0])
    for name, arr in (("img", img), ("liver", liver), ("lesion", lesion), ("typed", typed)):
        nib.save(nib.Nifti1Image(arr, aff2), folder / f"{name}.nii.gz")
    vol = np.stack([img + 10 * z for z in range(6)], axis=-1)
    aff3 = np.diag([0.7, 0.7, 5.0, 1.0])
    aff3[:3, 3] = (0.0, 0.0, -100.0)  # same plane grid as the 2D masks, another z
    nib.save(nib.Nifti1Image(vol, aff3), folder / "vol.nii.gz")
    return {"img": img, "liver": liver, "lesion": lesion, "typed": typed, "vol": vol}


def test_manifest_items(tmp_path: Path, monkeypatch):
    data = tmp_path / "slices"
    data.mkdir()
    arrays = _manifest_files(data)
    base = {"liver": "liver.nii.gz", "patient_id": "P1", "fold": 1}
    items = [
        {**base, "image": "img.nii.gz", "lesion": "lesion.nii.gz", "label": "hemangioma"},
        {**base, "image": "img.nii.gz", "lesion": "typed.nii.gz", "label": "metastasis"},
        {**base, "image": "img.nii.gz", "lesion": "typed.nii.gz", "label": ""},
        {**base, "image": "vol.nii.gz", "lesion": "lesion.nii.gz", "label": "cyst", "slice": 2},
        {**base, "image": "vol.nii.gz", "lesion": "lesion.nii.gz", "label": "cyst", "slice": "4"},
    ]
    count = _Counter(monkeypatch)
    out = materialise_slices(items, data, tmp_path / "cache")
    assert count.ct == 3  # img twice (different lesion files), vol once for both of its slices
    assert [o["cls"] for o in out] == [1, 2, 0, 0, 0]
    assert [o["slice"] for o in out] == [0, 0, 0, 2, 4]
    seg0, seg1 = np.load(out[0]["seg"]), np.load(out[1]["seg"])
    assert set(np.unique(seg0)) == {0, 1, 2}
    assert (seg0[arrays["lesion"] > 0] == 2).all() and (seg0[(arrays["liver"] > 0) & (arrays["lesion"] == 0)] == 1).all()
    assert set(np.unique(seg1)) == {0, 1, 2, 4}  # class ids 1 and 3 -> 2 + 0 and 2 + 2
    assert (seg1[arrays["typed"] == 3] == 4).all()
    # a 2D mask over a 3D volume belongs to the named slice, whatever its own z position
    for o, k in zip(out[3:], (2, 4)):
        np.testing.assert_allclose(np.load(o["image"]), arrays["vol"][:, :, k])
        np.testing.assert_array_equal(np.load(o["seg"]), np.load(out[0]["seg"]))
    materialise_slices(items, data, tmp_path / "cache")
    assert count.ct == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"label": "adenoma"}, "class 'adenoma' is not one of"),
        ({"lesion": "typed.nii.gz", "label": "hemangioma"}, "class ids \\[1, 3\\]"),
        ({"image": "vol.nii.gz"}, "needs a 'slice'"),
        ({"image": "vol.nii.gz", "slice": 6}, "slice 6 is out of range"),
        ({"image": "vol.nii.gz", "slice": 1.5}, "not an integer"),
        ({"liver": "nope.nii.gz"}, "nope.nii.gz: file not found"),
    ],
)
def test_manifest_errors(tmp_path: Path, change: dict, message: str):
    data = tmp_path / "slices"
    data.mkdir()
    _manifest_files(data)
    item = {"image": "img.nii.gz", "liver": "liver.nii.gz", "lesion": "lesion.nii.gz", "label": "cyst",
            "patient_id": "P1", "fold": 0, **change}
    with pytest.raises(LiverError, match=message):
        materialise_slices([item], data, tmp_path / "cache")


def test_seg_from_masks_rules():
    liver = np.ones((4, 4), np.uint8)
    lesion = np.zeros((4, 4), np.uint8)
    assert seg_from_masks(liver, lesion, 1, 3)[0].max() == 1  # no lesion
    lesion[0, :2] = 2
    lesion[1, :3] = 1
    seg, cls = seg_from_masks(liver, lesion, -1, 3)
    assert cls == 0 and seg[0, 0] == 3 and seg[1, 0] == 2  # majority type without a label
    lesion[0, 0] = 4
    with pytest.raises(LiverError, match="value 4 is not allowed"):
        seg_from_masks(liver, lesion, -1, 3)


def test_real_volume_items(real_dir: Path, tmp_path: Path):
    """Real CT through the cache: NIfTI volume, and a DICOM series with a LAS mask."""
    items = [
        {"image": "totalseg_ct/ct.nii.gz", "label": "totalseg_ct/liver.nii.gz", "patient_id": "a", "fold": 0},
        {"image": "totalseg_dicom/ct", "label": "totalseg_dicom/liver.nii.gz", "patient_id": "b", "fold": 1},
    ]
    out = materialise_slices(items, real_dir, tmp_path / "cache")
    liver_z = np.flatnonzero(np.asarray(nib.load(real_dir / "totalseg_ct/liver.nii.gz").dataobj).any(axis=(0, 1)))
    assert [o["slice"] for o in out if o["patient_id"] == "a"] == list(liver_z)
    for pid in ("a", "b"):
        imgs = [np.load(o["image"]) for o in out if o["patient_id"] == pid]
        segs = [np.load(o["seg"]) for o in out if o["patient_id"] == pid]
        inside = np.concatenate([i[s == 1] for i, s in zip(imgs, segs)])
        assert 0 < inside.mean() < 200 and ((inside >= 0) & (inside <= 200)).mean() > 0.9
