"""CT phantoms: LiTS-like volumes, lesion-type slices + manifest, preview, CLI, and learnability.

The lesion-type set is generated once per module at the paper's scale (140 patients, 332 slices,
256 x 256), the default of ``monai-liver phantoms``; the other tests use small sets.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from monai_liver import cli
from monai_liver.constants import DEFAULT_CLASSES
from monai_liver.data import phantoms
from monai_liver.errors import LiverError


def _load(path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


@pytest.fixture(scope="module")
def lits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lits")
    phantoms.make_lits_phantoms(out, n_volumes=5, seed=0)  # default 160 x 160 x 48 grid
    return out


@pytest.fixture(scope="module")
def lesion_set(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The default lesion-type set (140 patients, 332 slices, 256 px)."""
    out = tmp_path_factory.mktemp("lesions")
    manifest = phantoms.make_lesion_slices(out, seed=0)
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return manifest, rows


def _lesion_stats(img: np.ndarray, les: np.ndarray, spacing: float) -> dict:
    """Hand-made lesion features: HU mean / std inside the lesion, area, rim-to-core contrast.

    The rim is the outer ~30% of the lesion radius (erosion), the core what remains.
    """
    les = les > 0
    labels, n = ndimage.label(les)
    r_eq = np.sqrt(les.sum() / max(n, 1) / np.pi)  # mean lesion radius (px)
    core = ndimage.binary_erosion(les, iterations=max(1, int(round(0.3 * r_eq))))
    if not core.any():
        core = les
    rim = les & ~core
    vals = img[les].astype(float)
    rim_core = float(img[rim].mean() - img[core].mean()) if rim.any() else 0.0
    return {
        "mean": float(vals.mean()),
        "std": float(vals.std()),
        "area_mm2": float(les.sum() * spacing**2),
        "rim_core": rim_core,
        "core_mean": float(img[core].mean()),
        "diameter_mm": 2 * r_eq * spacing,
    }


@pytest.fixture(scope="module")
def lesion_features(lesion_set):
    manifest, rows = lesion_set
    base = manifest.parent
    feats = []
    for r in rows:
        img, nimg = _load(base / r["image"])
        les, _ = _load(base / r["lesion"])
        feats.append(_lesion_stats(img.astype(np.float32), les, float(nimg.header.get_zooms()[0])))
    return feats


# ------------------------------------------------------------------------------------------------ LiTS


def test_lits_file_format(lits_dir):
    vols = sorted(lits_dir.glob("volume-*.nii.gz"))
    assert [v.name for v in vols] == [f"volume-{i}.nii.gz" for i in range(5)]
    lesion_free = with_lesion = 0
    for i, vpath in enumerate(vols):
        vol, vimg = _load(vpath)
        seg, simg = _load(lits_dir / f"segmentation-{i}.nii.gz")
        assert vol.dtype == np.int16 and seg.dtype == np.uint8
        assert vol.shape == seg.shape == (160, 160, 48)
        assert set(np.unique(seg)) <= {0, 1, 2} and (seg == 1).any()
        np.testing.assert_allclose(vimg.affine, simg.affine)
        # LiTS' usual voxel order: LPS, affine diag(-sx, -sy, sz); realistic spacing
        assert nib.aff2axcodes(vimg.affine) == ("L", "P", "S")
        sx, sy, sz = vimg.header.get_zooms()
        assert sx == sy and 1.8 <= sx <= 2.8, (sx, sy)
        assert 2.5 <= sz <= 5.0, sz
        # HU of portal-venous CT: air outside the body, liver parenchyma, subcutaneous fat
        assert np.median(vol[:5, :5, :]) < -900
        liver_core = ndimage.binary_erosion(seg == 1, iterations=2)
        assert 80 <= np.median(vol[liver_core]) <= 140
        soft = vol[(vol > -250) & (vol < -20)]
        hist, edges = np.histogram(soft, bins=np.arange(-250, -19, 10))
        assert -140 <= edges[np.argmax(hist)] <= -60, "fat peak not near -100 HU"
        # the liver is on the patient's right (+x in RAS world coordinates)
        ijk = np.argwhere(seg > 0).mean(axis=0)
        assert nib.affines.apply_affine(vimg.affine, ijk)[0] > 0
        lesion = seg == 2
        if not lesion.any():
            lesion_free += 1
            continue
        with_lesion += 1
        # lesions lie inside the liver: their outline touches almost only liver
        ring = ndimage.binary_dilation(lesion) & ~lesion
        assert np.mean(seg[ring] > 0) > 0.9
        assert vol[lesion].mean() != pytest.approx(vol[seg == 1].mean(), abs=5)
    assert lesion_free >= 1 and with_lesion >= 2


def test_lits_deterministic(tmp_path):
    a = phantoms.make_lits_phantoms(tmp_path / "a", n_volumes=2, shape=(48, 48, 12), seed=5)
    b = phantoms.make_lits_phantoms(tmp_path / "b", n_volumes=2, shape=(48, 48, 12), seed=5)
    c = phantoms.make_lits_phantoms(tmp_path / "c", n_volumes=2, shape=(48, 48, 12), seed=6)
    for pa, pb, pc in zip(a, b, c):
        assert np.array_equal(_load(pa)[0], _load(pb)[0])
        assert pa.read_bytes() == pb.read_bytes()
        assert not np.array_equal(_load(pa)[0], _load(pc)[0])
    seg = [_load(p.with_name(p.name.replace("volume", "segmentation")))[0] for p in (a[0], b[0])]
    assert np.array_equal(*seg)


# ------------------------------------------------------------------------------------------------ slices


def test_manifest_format(lesion_set):
    manifest, rows = lesion_set
    with open(manifest, newline="") as fh:
        assert next(csv.reader(fh)) == ["patient_id", "image", "liver", "lesion", "label"]
    assert len(rows) == 332
    patients = Counter(r["patient_id"] for r in rows)
    assert len(patients) == 140
    assert max(patients.values()) >= 3 and sum(n > 1 for n in patients.values()) >= 20
    # one lesion type per patient
    assert all(len({r["label"] for r in rows if r["patient_id"] == p}) == 1 for p in list(patients)[:30])
    per_class = Counter(next(r["label"] for r in rows if r["patient_id"] == p) for p in patients)
    assert set(per_class) == set(DEFAULT_CLASSES)
    assert per_class["metastasis"] > per_class["cyst"] > per_class["hemangioma"]  # not uniform
    for r in rows[::11]:
        for key in ("image", "liver", "lesion"):
            assert not Path(r[key]).is_absolute() and (manifest.parent / r[key]).is_file()
        img, nimg = _load(manifest.parent / r["image"])
        liver, _ = _load(manifest.parent / r["liver"])
        lesion, _ = _load(manifest.parent / r["lesion"])
        assert img.ndim == 2 and img.shape == liver.shape == lesion.shape == (256, 256)
        assert img.dtype == np.int16 and liver.dtype == lesion.dtype == np.uint8
        assert set(np.unique(liver)) == {0, 1} and set(np.unique(lesion)) == {0, 1}
        assert not ((lesion > 0) & (liver == 0)).any(), "lesion outside the liver mask"
        sx, sy = nimg.header.get_zooms()[:2]
        assert sx == sy and 0.7 <= sx <= 0.9
        assert -1024 <= img.min() and img.max() <= 3071


def test_lesion_hu_follow_radiology(lesion_set, lesion_features):
    _, rows = lesion_set
    labels = np.array([r["label"] for r in rows])
    feats = lesion_features
    big = np.array([f["diameter_mm"] >= 10 for f in feats])  # characterisable lesions (>= 1 cm)

    def med(cls, key, only_big=True):
        sel = (labels == cls) & (big if only_big else True)
        assert sel.sum() >= 10, cls
        return float(np.median([f[key] for f, s in zip(feats, sel) if s]))

    cyst, met = med("cyst", "core_mean"), med("metastasis", "core_mean")
    print(f"median core HU: cyst {cyst:.0f}, metastasis {met:.0f}, hemangioma {med('hemangioma', 'core_mean'):.0f}")
    assert -5 <= cyst <= 20, cyst  # water density
    assert 40 <= met <= 75, met  # hypodense to liver (~100 HU)
    # hemangioma: peripheral nodular enhancement, rim brighter than the centre
    hem_rim = med("hemangioma", "rim_core")
    assert hem_rim > 10, hem_rim
    assert hem_rim > med("cyst", "rim_core") - 5
    # cysts are homogeneous, metastases heterogeneous
    assert med("cyst", "std") < med("metastasis", "std")


def test_learnable_but_not_trivial(lesion_set, lesion_features):
    """Logistic regression on hand-made lesion features, cross-validated by patient."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, rows = lesion_set
    X = np.array([[f["mean"], f["std"], np.log(f["area_mm2"]), f["rim_core"]] for f in lesion_features])
    y = np.array([r["label"] for r in rows])
    groups = np.array([r["patient_id"] for r in rows])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    acc = cross_val_score(clf, X, y, groups=groups, cv=cv)
    print(f"lesion-type accuracy, logistic regression on 4 hand-made features, 5-fold by patient: "
          f"{acc.mean():.3f} (folds {np.round(acc, 2).tolist()})")
    assert 0.5 < acc.mean() < 0.92


def test_slices_deterministic_and_small(tmp_path):
    kw = dict(n_patients=5, n_slices=9, size=64)
    a = phantoms.make_lesion_slices(tmp_path / "a", seed=1, **kw)
    b = phantoms.make_lesion_slices(tmp_path / "b", seed=1, **kw)
    c = phantoms.make_lesion_slices(tmp_path / "c", seed=2, **kw)
    assert a.read_text() == b.read_text()
    rows = list(csv.DictReader(open(a)))
    assert len(rows) == 9 and len({r["patient_id"] for r in rows}) == 5
    for r in rows:
        for key in ("image", "liver", "lesion"):
            assert np.array_equal(_load(a.parent / r[key])[0], _load(b.parent / r[key])[0])
        assert _load(a.parent / r["lesion"])[0].any()
    img_a = _load(a.parent / rows[0]["image"])[0]
    img_c = _load(c.parent / "images" / Path(rows[0]["image"]).name)[0]
    assert img_a.shape == (64, 64) and not np.array_equal(img_a, img_c)


def test_slices_bad_options(tmp_path):
    with pytest.raises(LiverError, match="fewer slices than patients"):
        phantoms.make_lesion_slices(tmp_path, n_patients=5, n_slices=3)
    with pytest.raises(LiverError, match="--size"):
        phantoms.make_lesion_slices(tmp_path, n_patients=2, n_slices=2, size=8)
    with pytest.raises(LiverError, match="can draw only"):
        phantoms.make_lesion_slices(tmp_path, n_patients=2, n_slices=2, class_names=("cyst", "hcc"))
    with pytest.raises(LiverError, match="--lits-shape"):
        phantoms.make_lits_phantoms(tmp_path, n_volumes=1, shape=(8, 8, 8))
    with pytest.raises(LiverError, match="--seed"):
        phantoms.make_lits_phantoms(tmp_path, n_volumes=1, seed=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LiverError, match="not a folder"):
        phantoms.make_lesion_slices(tmp_path / "file", n_patients=1, n_slices=1, size=32)


def test_class_subset(tmp_path):
    m = phantoms.make_lesion_slices(tmp_path, n_patients=6, n_slices=6, size=48, class_names=("metastasis", "cyst"))
    assert {r["label"] for r in csv.DictReader(open(m))} == {"metastasis", "cyst"}


# ------------------------------------------------------------------------------------------------ preview, CLI


def test_preview(lesion_set, tmp_path):
    from matplotlib.image import imread

    manifest, _ = lesion_set
    png = phantoms.preview(manifest, tmp_path / "sub" / "preview.png", per_class=3)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    im = imread(png)
    assert im.shape[0] > 300 and im.shape[1] > 300
    assert im[..., :3].std() > 0.1  # not blank
    # outlines drawn: some pure red (lesion) and green (liver) pixels
    rgb = im[..., :3]
    assert ((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).sum() > 50
    assert ((rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.3) & (rgb[..., 2] < 0.3)).sum() > 50
    with pytest.raises(LiverError, match="manifest not found"):
        phantoms.preview(tmp_path / "missing.csv", tmp_path / "x.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,image\nP1,a.nii.gz\n")
    with pytest.raises(LiverError, match="missing column"):
        phantoms.preview(bad, tmp_path / "x.png")


def test_cli(tmp_path, capsys):
    out = tmp_path / "ph"
    png = tmp_path / "preview.png"
    rc = cli.main(["phantoms", "--out", str(out), "--lits-volumes", "3", "--lits-shape", "48", "48", "12",
                   "--patients", "6", "--slices", "10", "--size", "64", "--seed", "3", "--preview", str(png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "3 LiTS-like volumes" in text and "10 lesion-type slices" in text and "6 patients" in text
    assert "lesion-free" in text and "phantoms" in text
    assert len(list((out / "lits").glob("volume-*.nii.gz"))) == 3
    assert len(list((out / "lits").glob("segmentation-*.nii.gz"))) == 3
    rows = list(csv.DictReader(open(out / "lesions" / "manifest.csv")))
    assert len(rows) == 10 and png.is_file()
    assert _load(out / "lits" / "volume-0.nii.gz")[0].shape == (48, 48, 12)

    rc = cli.main(["phantoms", "--out", str(tmp_path / "bad"), "--patients", "5", "--slices", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "fewer slices than patients" in err
    assert not (tmp_path / "bad").exists()  # validated before writing anything
    rc = cli.main(["phantoms", "--out", str(tmp_path / "bad"), "--lits-shape", "4", "4", "4"])
    assert rc == 2 and "--lits-shape" in capsys.readouterr().err
