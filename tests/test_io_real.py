"""data.io on real scanner files (../shared/data/real) and on bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from monai_liver.data.io import is_dicom, load_ct, load_mask, read_geometry
from monai_liver.errors import LiverError

#: sample folder -> (CT, liver mask), as described in shared/data/real/README.md
SAMPLES = {
    "totalseg_ct": ("ct.nii.gz", "liver.nii.gz"),
    "totalseg_dicom": ("ct", "liver.nii.gz"),
    "dcmqi_ct3slice": ("ct", "liver_seg.dcm"),
}


def liver_overlay_ok(ct: np.ndarray, mask: np.ndarray) -> bool:
    """True when the mask sits on liver tissue: most voxels inside are soft tissue (0..200 HU),
    their mean is in that range, and they are far brighter than the rest (air, fat) on average."""
    inside, outside = ct[mask > 0], ct[mask == 0]
    soft = float(((inside >= 0) & (inside <= 200)).mean())
    return soft >= 0.8 and 0 <= float(inside.mean()) <= 200 and float(inside.mean() - outside.mean()) > 300


def test_every_sample_is_covered(real_dir: Path):
    folders = {p.name for p in real_dir.iterdir() if p.is_dir()}
    assert folders == set(SAMPLES), "a sample was added or removed: extend SAMPLES"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_sample_liver_overlay(real_dir: Path, name: str):
    ct_name, mask_name = SAMPLES[name]
    ct, affine = load_ct(real_dir / name / ct_name)
    assert ct.dtype == np.float32 and ct.ndim == 3
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert -3100 <= ct.min() < -900 and 200 < ct.max() < 4000  # HU: air/padding and bone present
    shape, geo_affine = read_geometry(real_dir / name / ct_name)
    assert shape == ct.shape
    np.testing.assert_allclose(geo_affine, affine, atol=1e-3)

    mask = load_mask(real_dir / name / mask_name, affine, ct.shape)
    assert mask.shape == ct.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert liver_overlay_ok(ct, mask), name
    # the same check rejects a mask put in the wrong place (mirrored left-right)
    assert not liver_overlay_ok(ct, mask[::-1])


def test_real_shapes(real_dir: Path):
    assert load_ct(real_dir / "totalseg_ct/ct.nii.gz")[0].shape == (122, 101, 30)
    ct, aff = load_ct(real_dir / "totalseg_dicom/ct")
    assert ct.shape == (512, 512, 20)
    np.testing.assert_allclose(np.diag(aff)[:3], [0.9765625, 0.9765625, 2.0], atol=1e-4)
    assert load_ct(real_dir / "dcmqi_ct3slice/ct")[0].shape == (512, 512, 3)


def test_las_mask_needs_geometry(real_dir: Path):
    """The LAS liver mask read in array order lands on the wrong side; by geometry it fits."""
    ct, affine = load_ct(real_dir / "totalseg_dicom/ct")
    stored = nib.load(real_dir / "totalseg_dicom/liver.nii.gz")
    assert nib.aff2axcodes(stored.affine) == ("L", "A", "S")
    raw = np.asarray(stored.dataobj)
    assert raw.shape == ct.shape
    assert not liver_overlay_ok(ct, raw)  # what a reader that ignores orientation would do
    aligned = load_mask(real_dir / "totalseg_dicom/liver.nii.gz", affine, ct.shape)
    assert liver_overlay_ok(ct, aligned)
    np.testing.assert_array_equal(aligned, raw[::-1])  # LAS -> RAS is a flip of x
    # without a reference, the mask comes back canonical and on the same grid
    np.testing.assert_array_equal(load_mask(real_dir / "totalseg_dicom/liver.nii.gz"), aligned)


def test_dicom_seg_frames_follow_positions(real_dir: Path):
    """Each SEG frame lands on the CT slice it references (SEG frames are stored in reverse order)."""
    folder = real_dir / "dcmqi_ct3slice"
    ct, affine = load_ct(folder / "ct")
    mask = load_mask(folder / "liver_seg.dcm", affine, ct.shape)
    seg = pydicom.dcmread(folder / "liver_seg.dcm")
    frames = seg.pixel_array
    uid_to_file = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in sorted((folder / "ct").iterdir())}
    inv = np.linalg.inv(affine)
    for i, fr in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref_uid = fr.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ct_file = uid_to_file[ref_uid]
        z_lps = float(pydicom.dcmread(ct_file, stop_before_pixels=True).ImagePositionPatient[2])
        k = int(round((inv @ [0, 0, z_lps, 1])[2]))  # RAS z == LPS z
        assert mask[:, :, k].sum() == frames[i].sum() > 0
        # one CT file on its own gets the frame that references it
        single, single_aff = load_ct(ct_file)
        single_mask = load_mask(folder / "liver_seg.dcm", single_aff, single.shape)
        np.testing.assert_array_equal(single_mask[:, :, 0], mask[:, :, k])
        np.testing.assert_array_equal(single[:, :, 0], ct[:, :, k])


def test_dicom_series_sorted_by_position_and_rescaled(real_dir: Path, tmp_path: Path):
    src = real_dir / "dcmqi_ct3slice/ct"
    ref, ref_aff = load_ct(src)
    # shuffle file names and reverse instance numbers: order must come from ImagePositionPatient
    out = tmp_path / "series"
    out.mkdir()
    files = sorted(src.iterdir())
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = i + 1 if i % 2 else len(files) - i
        # HU = slope * stored + intercept: double the slope, keep HU doubled-and-shifted known
        ds.RescaleSlope = 2
        ds.RescaleIntercept = -2048
        ds.save_as(out / f"zz_{(i * 7) % 5}_{f.name}")
    got, got_aff = load_ct(out)
    np.testing.assert_allclose(got_aff, ref_aff, atol=1e-4)
    np.testing.assert_allclose(got, 2 * ref, atol=1e-3)  # 2*(HU+1024) - 2048 = 2*HU
    assert is_dicom(out) and is_dicom(files[0]) and not is_dicom(real_dir / "README.md")


def test_nifti_orientations_agree(real_dir: Path, tmp_path: Path):
    """The same CT stored LPS, PIL or as a 2D slice reads back as the same RAS array."""
    img = nib.load(real_dir / "totalseg_ct/ct.nii.gz")
    ref, ref_aff = load_ct(real_dir / "totalseg_ct/ct.nii.gz")
    for codes in (("L", "P", "S"), ("P", "I", "L")):
        ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(codes))
        nib.save(img.as_reoriented(ornt), tmp_path / "re.nii.gz")
        got, got_aff = load_ct(tmp_path / "re.nii.gz")
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_allclose(got_aff, ref_aff, atol=1e-4)
        assert read_geometry(tmp_path / "re.nii.gz")[0] == ref.shape
    # 2D slice stored with x flipped (LA): comes back (X, Y, 1) in RAS, mask aligned in plane
    sl = np.asarray(img.dataobj)[::-1, :, 10].copy()
    aff2 = ref_aff.copy()
    aff2[:, 0] *= -1
    aff2[0, 3] = ref_aff[0, 3] + ref_aff[0, 0] * (ref.shape[0] - 1)
    nib.save(nib.Nifti1Image(sl, aff2), tmp_path / "slice.nii.gz")
    got, got_aff = load_ct(tmp_path / "slice.nii.gz")
    assert got.shape == (122, 101, 1)
    np.testing.assert_array_equal(got[:, :, 0], ref[:, :, 10])
    liver = np.asarray(nib.load(real_dir / "totalseg_ct/liver.nii.gz").dataobj)[:, :, 10]
    elsewhere = ref_aff.copy()
    elsewhere[:3, 3] += (1000.0, 0.0, 0.0)
    nib.save(nib.Nifti1Image(liver.astype(np.uint8), elsewhere), tmp_path / "m.nii.gz")
    with pytest.raises(LiverError, match="does not overlap"):
        load_mask(tmp_path / "m.nii.gz", got_aff, got.shape)  # a mask somewhere else in space
    nib.save(nib.Nifti1Image(liver.astype(np.float32), ref_aff), tmp_path / "m.nii.gz")
    m = load_mask(tmp_path / "m.nii.gz", got_aff, got.shape)  # z position of a 2D mask is ignored
    np.testing.assert_array_equal(m[:, :, 0], liver)


# ----------------------------------------------------------------------------- bad input


def _assert_error(fn, path, *args, **kwargs):
    with pytest.raises(LiverError) as e:
        fn(path, *args, **kwargs)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_inputs(real_dir: Path, tmp_path: Path):
    _assert_error(load_ct, tmp_path / "missing.nii.gz")
    _assert_error(load_mask, tmp_path / "missing.nii.gz")
    _assert_error(read_geometry, tmp_path / "missing.nii.gz")

    data = gzip.decompress((real_dir / "totalseg_ct/ct.nii.gz").read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    assert "truncated" in _assert_error(load_ct, trunc)
    _assert_error(load_mask, trunc)

    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), four)
    assert "4D" in _assert_error(load_ct, four)
    _assert_error(read_geometry, four)

    text = tmp_path / "text.nii.gz"
    text.write_text("patient_id,image\nP1,a.nii.gz\n")
    _assert_error(load_ct, text)
    _assert_error(load_mask, text)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    _assert_error(load_ct, plain)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no DICOM" in _assert_error(load_ct, empty)
    (empty / "readme.txt").write_text("not dicom")
    _assert_error(load_ct, empty)

    _assert_error(load_ct, real_dir / "dcmqi_ct3slice/liver_seg.dcm")  # a SEG is not a CT image

    mixed = tmp_path / "mixed"
    shutil.copytree(real_dir / "dcmqi_ct3slice/ct", mixed)
    ds = pydicom.dcmread(mixed / "01.dcm")
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(mixed / "01.dcm")
    assert "series" in _assert_error(load_ct, mixed)


def test_bad_masks(real_dir: Path, tmp_path: Path):
    ct, aff = load_ct(real_dir / "totalseg_ct/ct.nii.gz")
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 5), np.uint8), aff), small)
    assert "does not match" in _assert_error(load_mask, small, reference_shape=ct.shape)
    far = tmp_path / "far.nii.gz"
    shifted = aff.copy()
    shifted[:3, 3] += 5000
    nib.save(nib.Nifti1Image(np.ones(ct.shape, np.uint8), shifted), far)
    assert "overlap" in _assert_error(load_mask, far, aff, ct.shape)
    frac = tmp_path / "frac.nii.gz"
    nib.save(nib.Nifti1Image(np.full(ct.shape, 0.4, np.float32), aff), frac)
    assert "non-integer" in _assert_error(load_mask, frac, aff, ct.shape)
    neg = tmp_path / "neg.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), -1, np.int16), np.eye(4)), neg)
    assert "negative" in _assert_error(load_mask, neg)
