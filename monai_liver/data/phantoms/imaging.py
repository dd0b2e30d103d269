"""The scanner and the files: blur and noise, independent random streams per volume or patient, NIfTI writing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_liver.errors import LiverError


# Independent random streams (numpy SeedSequence entropy), so that one volume or patient does not
# depend on how many others were generated before it.
_STREAM_LITS, _STREAM_PATIENT, _STREAM_PLAN = 1, 2, 3


def _blur_and_noise(hu: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, noise: float,
                    blur_mm: float = 0.8) -> np.ndarray:
    """Scanner blur (Gaussian PSF of ``blur_mm``) then correlated Gaussian noise of std ``noise`` HU -> int16."""
    from scipy import ndimage

    sigma = [blur_mm / sp if n > 1 else 0.0 for sp, n in zip(spacing, hu.shape)]
    out = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest")
    n = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32),
                                sigma=[0.6 if k > 1 else 0.0 for k in hu.shape])
    out += n * (noise / (n.std() + 1e-6))
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, int(index)])


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 file; ``.nii.gz`` is compressed in one piece with a zero gzip time stamp, so the
    same seed gives byte-identical files (nibabel alone streams row by row and stamps the time)."""
    import gzip
    import io

    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if not str(path).endswith(".gz"):
        nib.save(img, str(path))
        return
    buf = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buf), "header": nib.FileHolder(fileobj=buf)})
    Path(path).write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))


def _prepare_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LiverError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LiverError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    return out


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise LiverError(f"--seed {seed}: the seed must be a whole number >= 0")
    return int(seed)
