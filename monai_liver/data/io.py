"""Read CT images and masks from NIfTI, DICOM (one file or a series folder) and DICOM SEG.

Every reader returns arrays in the package's one convention: **RAS+ canonical, axes (x, y, z)**
(what ``nibabel.as_closest_canonical`` gives), with a 4x4 affine from voxel indices to RAS mm.
CT values are Hounsfield units (float32). A 2D file comes back as (X, Y, 1).

Masks are aligned to a reference CT by geometry, never by array order: when the mask's grid
differs from the reference's (another orientation, e.g. a LAS mask over a DICOM series, or
DICOM SEG frames that cover only some slices) it is resampled by nearest neighbour through the
two affines.

Any failure a user can cause raises :class:`~monai_liver.errors.LiverError` naming the path.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from monai_liver.errors import LiverError

__all__ = [
    "is_dicom",
    "is_nifti",
    "load_ct",
    "load_mask",
    "read_mask",
    "align_mask",
    "read_geometry",
    "resample_nearest",
    "to_canonical",
]

PathLike = Union[str, "os.PathLike[str]"]
logger = logging.getLogger(__name__)

#: voxel-index -> world conversion between DICOM's LPS and NIfTI's RAS
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_NOT_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "SR", "PR", "RTPLAN", "RTDOSE", "KO", "REG"}


# ----------------------------------------------------------------------------- format detection


def is_nifti(path: PathLike) -> bool:
    """True when ``path`` has a NIfTI file name (``.nii`` or ``.nii.gz``)."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _is_dicom_file(path: Path) -> bool:
    import pydicom
    from pydicom.misc import is_dicom as has_preamble

    try:
        if has_preamble(str(path)):
            return True
        # files written without the 128-byte preamble: accept only if pydicom can parse a header
        if path.suffix.lower() not in (".dcm", ".dicom", ".ima", ""):
            return False
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        return "SOPClassUID" in ds or "Modality" in ds
    except Exception:
        return False


def is_dicom(path: PathLike) -> bool:
    """True for a DICOM file, or for a folder that holds at least one DICOM file."""
    path = Path(path)
    if path.is_dir():
        return any(f.is_file() and _is_dicom_file(f) for f in sorted(path.iterdir()))
    return path.is_file() and _is_dicom_file(path)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise LiverError(f"{path}: file not found.")


# ----------------------------------------------------------------------------- geometry helpers


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a 3D array (X, Y, Z) and its voxel->RAS affine to the closest canonical RAS+.

    Same result as ``nibabel.as_closest_canonical``. A single-slice array (Z = 1) whose slice
    axis would move (a sagittal or coronal 2D image) keeps its array order, so that Z stays 1.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():  # a degenerate axis (zero column): leave that axis alone
        for ax in range(3):
            if np.isnan(ornt[ax]).any():
                ornt[ax] = (ax, 1)
    if data.shape[2] == 1 and ornt[2, 0] != 2:
        logger.warning("2D image is not axial; keeping its array order (x, y) as stored")
        return data, affine
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, affine
    out = apply_orientation(data, ornt)
    return np.ascontiguousarray(out), affine @ inv_ornt_aff(ornt, data.shape)


def _same_grid(aff_a: np.ndarray, shape_a, aff_b: np.ndarray, shape_b, atol: float = 1e-3) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(aff_a, aff_b, atol=atol)


def resample_nearest(
    src: np.ndarray,
    src_affine: np.ndarray,
    ref_affine: np.ndarray,
    ref_shape: tuple[int, int, int],
    fill: int = 0,
) -> np.ndarray:
    """Nearest-neighbour resampling of a label array onto a reference grid through the affines.

    ``src`` (X, Y, Z) with voxel->world ``src_affine``; output has ``ref_shape`` and holds, for every
    reference voxel, the value of the source voxel whose centre is nearest (``fill`` outside).
    When both grids are single slices (Z = 1), the slice positions are not compared: a 2D mask
    and a 2D image are matched in plane only.

    Written by hand (not ``monai.transforms.SpatialResample``) because that one resamples in the
    source's own array space and interpolates in torch; for label maps we want an exact integer
    lookup, slice by slice, with no float round trip of the values.
    """
    ref_shape = tuple(int(s) for s in ref_shape)
    if _same_grid(src_affine, src.shape, ref_affine, ref_shape):
        return src
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(ref_affine, float)
    out = np.full(ref_shape, fill, dtype=src.dtype)
    ii, jj = np.meshgrid(np.arange(ref_shape[0]), np.arange(ref_shape[1]), indexing="ij")
    flat = np.stack([ii.ravel(), jj.ravel()]).astype(np.float64)  # (2, X*Y)
    both_2d = src.shape[2] == 1 and ref_shape[2] == 1
    sx, sy, sz = src.shape
    for k in range(ref_shape[2]):
        coords = m[:3, :2] @ flat + (m[:3, 2] * k + m[:3, 3])[:, None]
        idx = np.rint(coords).astype(np.int64)
        if both_2d:
            idx[2] = 0
        ok = (idx[0] >= 0) & (idx[0] < sx) & (idx[1] >= 0) & (idx[1] < sy) & (idx[2] >= 0) & (idx[2] < sz)
        if not ok.any():
            continue
        sl = out[:, :, k].reshape(-1)
        sl[ok] = src[idx[0, ok], idx[1, ok], idx[2, ok]]
        out[:, :, k] = sl.reshape(ref_shape[:2])
    return out


def _fraction_outside(src: np.ndarray, src_affine, ref_affine, ref_shape) -> float:
    """Fraction of the non-zero voxels of ``src`` whose centres fall outside the reference grid."""
    nz = np.argwhere(src > 0)
    if nz.size == 0:
        return 0.0
    if len(nz) > 200_000:  # a sample is enough for a fraction
        nz = nz[:: len(nz) // 200_000 + 1]
    m = np.linalg.inv(np.asarray(ref_affine, float)) @ np.asarray(src_affine, float)
    idx = np.rint(nz @ m[:3, :3].T + m[:3, 3]).astype(np.int64)
    if src.shape[2] == 1 and ref_shape[2] == 1:
        idx[:, 2] = 0
    inside = np.all((idx >= 0) & (idx < np.asarray(ref_shape)), axis=1)
    return float(1.0 - inside.mean())


# ----------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw (scaled) voxel values (X, Y, Z) in stored orientation + affine; errors as LiverError."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises many types (ImageFileError, BadGzipFile, EOFError, ...)
        raise LiverError(f"{path}: not a readable NIfTI {kind} ({type(e).__name__}: {e}).") from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise LiverError(f"{path}: {len(shape)}D image of shape {shape} is not supported; expected a 2D or 3D {kind}.")
    if len(shape) < 2 or min(shape) < 1:
        raise LiverError(f"{path}: image of shape {shape} is not a 2D or 3D {kind}.")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # truncated gzip: EOFError / zlib.error / OSError / ValueError
        raise LiverError(f"{path}: cannot read the voxel data, the file is truncated or corrupt ({type(e).__name__}: {e}).") from None
    if data.dtype.fields is not None or np.iscomplexobj(data):
        raise LiverError(f"{path}: voxel type {data.dtype} is not a scalar image.")
    data = data.reshape(shape)
    if data.ndim == 2:
        data = data[:, :, None]
    return data, np.asarray(img.affine, dtype=np.float64)


# ----------------------------------------------------------------------------- DICOM image


def _dicom_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir()) if f.is_file() and _is_dicom_file(f)]


def _check_dicom_folder(folder: Path) -> list:
    """Headers of the one image series in ``folder`` (LiverError for none, several, mixed)."""
    import pydicom

    files = _dicom_files(folder)
    if not files:
        subdirs = [d.name for d in folder.iterdir() if d.is_dir()]
        hint = f" (it has sub-folders {subdirs[:3]}; point to one series folder)" if subdirs else ""
        raise LiverError(f"{folder}: folder contains no DICOM files{hint}.")
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as e:
            raise LiverError(f"{f}: cannot read the DICOM header ({type(e).__name__}: {e}).") from None
        if str(ds.get("Modality", "")).upper() in _NOT_IMAGE_MODALITIES or "Rows" not in ds:
            continue  # DICOMDIR, SEG, RTSTRUCT, ... next to the images: not part of the series
        ds.filename = str(f)
        headers.append(ds)
    if not headers:
        raise LiverError(f"{folder}: folder holds DICOM files but no CT image slices.")
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise LiverError(f"{folder}: folder contains {len(series)} DICOM series; point to a folder with one series.")
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise LiverError(f"{folder}: DICOM slices have different sizes {sorted(sizes)}; expected one series.")
    _check_even_slices(folder, headers)
    return headers


def _check_even_slices(folder: Path, headers: list) -> None:
    """LiverError unless the slices sit at evenly spaced, distinct positions along the slice normal
    (as ITK's series reader requires): a partial export with gaps read as one volume would get one
    uniform spacing, and every volume in ml and every 3D lesion would be wrong."""
    if len(headers) < 3:
        return
    _, r, c, _ = _dicom_slice_geometry(headers[0])
    n = np.cross(r, c)
    pos = np.sort([float(np.dot(_dicom_slice_geometry(h)[0], n)) for h in headers])
    gaps = np.diff(pos)
    if gaps.min() < 1e-3:
        raise LiverError(f"{folder}: two DICOM slices share one position ({pos[int(np.argmin(gaps))]:.2f} mm along the "
                         "slice normal); a duplicated or mixed series cannot be read as one volume.")
    if gaps.max() - gaps.min() > max(0.05 * float(np.median(gaps)), 0.01):
        raise LiverError(f"{folder}: DICOM slice positions are not evenly spaced (gaps from {gaps.min():.2f} to "
                         f"{gaps.max():.2f} mm: a partial export?); a 3D volume needs the complete series. "
                         "Give the slices one by one as 2D files instead.")


def _dicom_slice_geometry(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """(ImagePositionPatient, row cosine, column cosine, (row spacing, column spacing)) in LPS."""
    ipp = np.asarray([float(v) for v in ds.get("ImagePositionPatient", (0.0, 0.0, 0.0))])
    iop = np.asarray([float(v) for v in ds.get("ImageOrientationPatient", (1, 0, 0, 0, 1, 0))])
    ps = ds.get("PixelSpacing", None) or ds.get("ImagerPixelSpacing", None) or (1.0, 1.0)
    return ipp, iop[:3], iop[3:], (float(ps[0]), float(ps[1]))


def _dicom_geometry(headers: list) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (X, Y, Z) and voxel->RAS affine of DICOM slices sorted by position along the normal."""
    ipp0, r, c, (dy, dx) = _dicom_slice_geometry(headers[0])
    n = np.cross(r, c)
    pos = sorted(float(np.dot(_dicom_slice_geometry(h)[0], n)) for h in headers)
    if len(pos) > 1:
        dz = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        dz = float(headers[0].get("SpacingBetweenSlices", 0) or headers[0].get("SliceThickness", 0) or 1.0)
    first = min(headers, key=lambda h: float(np.dot(_dicom_slice_geometry(h)[0], n)))
    origin = _dicom_slice_geometry(first)[0]
    aff = np.eye(4)
    aff[:3, 0] = r * dx  # x index runs along a row (columns)
    aff[:3, 1] = c * dy  # y index runs down the rows
    aff[:3, 2] = n * (dz if dz != 0 else 1.0)
    aff[:3, 3] = origin
    shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    return shape, _LPS_TO_RAS @ aff


def _read_dicom_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM file or series folder -> (HU float32 (X, Y, Z) stored order, RAS affine), via MONAI."""
    from monai.data import ITKReader

    if path.is_dir():
        _check_dicom_folder(path)
    else:
        import pydicom

        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as e:
            raise LiverError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e}).") from None
        modality = str(ds.get("Modality", "")).upper()
        if modality in _NOT_IMAGE_MODALITIES or "Rows" not in ds:
            raise LiverError(f"{path}: DICOM {modality or 'object'} holds no CT image; expected a CT image file or series.")
    # ITKReader: GDCM sorts a series by ImagePositionPatient along the slice normal and applies
    # RescaleSlope/Intercept; MONAI turns ITK's LPS affine into RAS.
    # (the reader is used directly, not through LoadImage, which also instantiates every other
    # MONAI reader and logs about optional GPU decoders on each call)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = ITKReader(affine_lps_to_ras=True)
            data, meta = reader.get_data(reader.read(str(path)))
    except Exception as e:
        raise LiverError(f"{path}: cannot read the DICOM image ({type(e).__name__}: {e}).") from None
    data = np.asarray(data, dtype=np.float32)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if data.ndim == 2:
        data = data[:, :, None]
    if path.is_file() and data.ndim == 3 and data.shape[2] == 1:
        # one slice: ITK sets a 1 mm slice step; use the slice spacing / thickness in the header
        affine[:, 2] = _dicom_geometry([ds])[1][:, 2]
    if data.ndim != 3:
        raise LiverError(f"{path}: DICOM image of shape {tuple(data.shape)} is not a 2D or 3D CT (multi-frame or colour?).")
    return data, affine


# ----------------------------------------------------------------------------- public: CT


def load_ct(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CT: NIfTI (2D or 3D), one DICOM file, or a DICOM series folder.

    Returns ``(array, affine)``: ``array`` float32 Hounsfield units, always 3D (X, Y, Z) in RAS+
    canonical orientation (Z = 1 for a 2D file); ``affine`` 4x4 voxel index -> RAS mm.
    Raises LiverError naming the path on any failure (missing, truncated, not an image, 4D).
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        data, affine = _read_dicom_image(path)
    elif is_nifti(path):
        raw, affine = _read_nifti(path, "CT image")
        data = np.asarray(raw, dtype=np.float32)
    elif _is_dicom_file(path):
        data, affine = _read_dicom_image(path)
    else:
        raise LiverError(f"{path}: not a NIfTI (.nii, .nii.gz) or DICOM file, nor a DICOM series folder.")
    if not np.isfinite(data).all():
        raise LiverError(f"{path}: image contains NaN or infinite values.")
    data, affine = to_canonical(data, affine)
    return np.ascontiguousarray(data, dtype=np.float32), affine


def read_geometry(path: PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (X, Y, Z) and RAS affine that :func:`load_ct` would return, from the headers only.

    Cheap (no voxel data is decoded): for checking that an image and its masks share a grid.
    """
    from nibabel.orientations import inv_ornt_aff, io_orientation

    path = Path(path)
    _check_exists(path)
    if is_nifti(path) and path.is_file():
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as e:
            raise LiverError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e}).") from None
        shape = tuple(int(s) for s in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 3 or len(shape) < 2:
            raise LiverError(f"{path}: image of shape {shape} is not a 2D or 3D image.")
        shape = shape + (1,) * (3 - len(shape))
        affine = np.asarray(img.affine, dtype=np.float64)
    elif path.is_dir() or _is_dicom_file(path):
        import pydicom

        if path.is_dir():
            headers = _check_dicom_folder(path)
        else:
            try:
                headers = [pydicom.dcmread(str(path), stop_before_pixels=True)]
            except Exception as e:
                raise LiverError(f"{path}: not a readable DICOM file ({type(e).__name__}: {e}).") from None
            if "Rows" not in headers[0]:
                raise LiverError(f"{path}: DICOM object holds no image.")
        shape, affine = _dicom_geometry(headers)
    else:
        raise LiverError(f"{path}: not a NIfTI (.nii, .nii.gz) or DICOM file, nor a DICOM series folder.")
    ornt = io_orientation(affine)
    if np.isnan(ornt).any() or (shape[2] == 1 and ornt[2, 0] != 2):
        return shape, affine
    new_shape = tuple(int(shape[int(a)]) for a in np.argsort(ornt[:, 0]))
    return new_shape, affine @ inv_ornt_aff(ornt, shape)


# ----------------------------------------------------------------------------- DICOM SEG


def _read_dicom_seg(
    path: Path, ref_affine: np.ndarray | None, reference_depth: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """DICOM SEG -> (label volume (X, Y, Z) uint8, RAS affine); voxel value = segment number.

    Frames are placed by their ImagePositionPatient on a regular grid along the plane normal
    (frames a SEG leaves out, e.g. empty slices, stay 0). With a reference CT the grid step is the
    CT's slice spacing, so each frame lands on the CT slice at its position.
    Written with pydicom rather than MONAI's PydicomReader, which stacks SEG frames in file order.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        frames = np.asarray(ds.pixel_array)
    except Exception as e:
        raise LiverError(f"{path}: cannot read the DICOM SEG ({type(e).__name__}: {e}).") from None
    if frames.ndim == 2:
        frames = frames[None]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        frames = frames > (float(ds.get("MaximumFractionalValue", 255)) / 2.0)
    frames = frames > 0
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame is None or len(per_frame) != frames.shape[0]:
        raise LiverError(f"{path}: DICOM SEG lacks per-frame positions; cannot place its frames on the CT.")

    def group(fr, name):
        for src in (fr, shared):
            if src is not None and name in src:
                return src[name][0]
        return None

    positions, segments, iops, spacings = [], [], [], []
    for fr in per_frame:
        pp, po, pm, si = (group(fr, n) for n in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                    "PixelMeasuresSequence", "SegmentIdentificationSequence"))
        if pp is None or po is None or pm is None:
            raise LiverError(f"{path}: DICOM SEG frame without plane position/orientation/spacing; cannot place it on the CT.")
        positions.append([float(v) for v in pp.ImagePositionPatient])
        iops.append([float(v) for v in po.ImageOrientationPatient])
        spacings.append([float(v) for v in pm.PixelSpacing])
        segments.append(int(si.ReferencedSegmentNumber) if si is not None else 1)
    iops_a, sp_a = np.asarray(iops), np.asarray(spacings)
    if not (np.allclose(iops_a, iops_a[0], atol=1e-4) and np.allclose(sp_a, sp_a[0], atol=1e-4)):
        raise LiverError(f"{path}: DICOM SEG frames have different orientations or pixel spacings; not supported.")
    if max(segments) > 255:
        raise LiverError(f"{path}: DICOM SEG has segment number {max(segments)}; at most 255 are supported.")
    r, c = iops_a[0, :3], iops_a[0, 3:]
    dy, dx = sp_a[0]
    n = np.cross(r, c)
    pos = np.asarray(positions)
    w = pos @ n
    # grid step along the normal, first that fits every frame position: the reference CT's slice
    # spacing (frames land on its slices), the declared spacing, the smallest gap between frames
    candidates = []
    if ref_affine is not None and reference_depth > 1:
        ref_lps = np.linalg.inv(_LPS_TO_RAS) @ np.asarray(ref_affine, float)
        along = np.abs(ref_lps[:3, :3].T @ n)  # each reference axis's step projected on the normal
        candidates.append(float(along.max()))
    pm0 = group(per_frame[0], "PixelMeasuresSequence")
    candidates.append(float(pm0.get("SpacingBetweenSlices", 0) or pm0.get("SliceThickness", 0) or 0))
    uniq = np.unique(np.round(w, 3))
    candidates.append(float(np.diff(uniq).min()) if len(uniq) > 1 else 1.0)
    w0 = float(uniq.min())
    for step in (s for s in candidates if s > 1e-6):
        k = (w - w0) / step
        if np.abs(k - np.rint(k)).max() <= 0.1:
            break
    else:
        raise LiverError(f"{path}: DICOM SEG frame positions do not lie on a regular grid; cannot place them on the CT.")
    k = np.rint(k).astype(int)
    first = pos[np.argmin(w)]
    inplane = pos - first - np.outer(w - w0, n)  # in-plane shift of each frame from the first
    if np.abs(inplane).max() > 0.1 * min(dx, dy):
        raise LiverError(f"{path}: DICOM SEG frames are shifted in plane; not supported.")
    rows, cols = frames.shape[1:]
    vol = np.zeros((cols, rows, int(k.max()) + 1), dtype=np.uint8)
    for f in np.argsort(segments, kind="stable"):  # higher segment numbers win where they overlap
        vol[:, :, k[f]][frames[f].T] = segments[f]
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2], aff[:3, 3] = r * dx, c * dy, n * step, first
    return vol, _LPS_TO_RAS @ aff


# ----------------------------------------------------------------------------- public: masks


def _as_label_map(data: np.ndarray, path: Path) -> np.ndarray:
    """Check that mask values are non-negative integers; return the smallest integer dtype."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise LiverError(f"{path}: mask contains NaN or infinite values.")
        frac = np.abs(data - np.rint(data))
        if frac.max(initial=0) > 1e-3:
            bad = float(data.flat[int(np.argmax(frac))])
            raise LiverError(f"{path}: mask has non-integer value {bad:g}; expected a label map (0/1 or class ids).")
        data = np.rint(data)
    lo, hi = (data.min(), data.max()) if data.size else (0, 0)
    if lo < 0:
        raise LiverError(f"{path}: mask has negative value {lo:g}; expected a label map (0/1 or class ids).")
    if hi > np.iinfo(np.int32).max:
        raise LiverError(f"{path}: mask value {hi:g} is too large for a label map.")
    return data.astype(np.uint8 if hi <= 255 else np.int32, copy=False)


def read_mask(
    path: PathLike, reference_affine: np.ndarray | None = None, reference_depth: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Read a mask on its own grid: (label map (X, Y, Z) RAS+ canonical, affine 4x4 RAS mm).

    NIfTI, DICOM SEG (voxel value = segment number 1..K; frames placed by position, on the
    grid of ``reference_affine`` along the slice normal when given with ``reference_depth`` > 1
    slices), or a DICOM label image. Values must be non-negative integers; dtype uint8 (int32
    when a value exceeds 255). Use :func:`align_mask` to put it on a CT's grid.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_file() and is_nifti(path):
        raw, affine = _read_nifti(path, "mask")
        data = _as_label_map(raw, path)
    elif path.is_file() and _is_dicom_file(path) and _is_dicom_seg(path):
        data, affine = _read_dicom_seg(path, reference_affine, reference_depth)
    elif path.is_dir() or _is_dicom_file(path):
        raw, affine = _read_dicom_image(path)
        data = _as_label_map(raw, path)
    else:
        raise LiverError(f"{path}: not a NIfTI (.nii, .nii.gz), DICOM SEG or DICOM file.")
    data, affine = to_canonical(data, affine)
    return np.ascontiguousarray(data), affine


def _check_shape(path: PathLike, shape) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise LiverError(f"{path}: reference shape {shape} is not 2D or 3D.")
    return shape


def align_mask(
    data: np.ndarray,
    affine: np.ndarray,
    path: PathLike,
    reference_affine: np.ndarray | None = None,
    reference_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Put a mask from :func:`read_mask` on a reference grid (see :func:`load_mask`).

    ``path`` only names the mask in errors. Raises LiverError when the mask cannot be aligned
    (shapes differ without a reference affine, or the mask lies wholly outside the image).
    """
    ref_shape = _check_shape(path, reference_shape)
    if reference_affine is None:
        if ref_shape is not None and tuple(data.shape) != ref_shape:
            raise LiverError(f"{path}: mask shape {tuple(data.shape)} does not match the image shape {ref_shape}.")
        return data
    reference_affine = np.asarray(reference_affine, dtype=np.float64)
    ref_shape = ref_shape or tuple(data.shape)
    if _same_grid(affine, data.shape, reference_affine, ref_shape):
        return data
    outside = _fraction_outside(data, affine, reference_affine, ref_shape)
    if outside >= 1.0:
        raise LiverError(
            f"{path}: mask of shape {tuple(data.shape)} does not overlap the image of shape {ref_shape} "
            "(their positions in space differ); cannot align it."
        )
    if outside > 0.01 and ref_shape[2] > 1:  # a single reference slice drops the rest by design
        logger.warning("%s: %.0f%% of the mask lies outside the image and is dropped", path, 100 * outside)
    logger.debug("%s: resampling mask %s onto image grid %s", path, data.shape, ref_shape)
    return resample_nearest(data, affine, reference_affine, ref_shape)


def load_mask(
    path: PathLike,
    reference_affine: np.ndarray | None = None,
    reference_shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Read a mask (NIfTI, DICOM SEG, or a DICOM label image) as an integer label map.

    Returns a uint8 (int32 if values exceed 255) array (X, Y, Z) in RAS+ canonical orientation.
    With ``reference_affine`` (the CT's, from :func:`load_ct`) the mask is put on the CT's grid
    (``reference_shape``, default the mask's own canonical shape), by nearest neighbour through
    the affines when the geometry differs. With ``reference_shape`` alone the shapes must match.
    DICOM SEG: voxel value = segment number (1..K), frames placed by position.
    Raises LiverError naming the path when the file cannot be read or aligned.
    """
    ref_shape = _check_shape(path, reference_shape)
    depth = ref_shape[2] if ref_shape is not None else 0
    data, affine = read_mask(path, reference_affine, depth)
    return align_mask(data, affine, Path(path), reference_affine, ref_shape)


def _is_dicom_seg(path: Path) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:
        return False
    return str(ds.get("SOPClassUID", "")) == _SEG_SOP_CLASS or str(ds.get("Modality", "")).upper() == "SEG"
