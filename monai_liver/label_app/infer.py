"""MONAI Label infer task that serves the joint bundle on 3D (or 2D) CT studies.

The label map it returns has the input's geometry (same array shape and affine as the study file)
and the joint network's label values: 0 background, 1 liver, 2 + k lesion of type k, named from the
bundle's ``channel_def`` (``metadata.json``, first output). The response's JSON (``params``) carries
the class fields: ``lesion_class``, ``lesion_probability``, ``class_probabilities`` (the vote of the
predicted lesion voxels), ``lesion_slices`` (per axial slice with lesion: class, probability,
voxels), ``labels`` (name -> value of the returned mask) and ``lesion`` (the values whose union is
the lesion mask). Request ``{"lesion_union": true}`` for a 0 / 1 liver / 2 lesion map instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np

from monai_liver.label_app import compat

compat.install()  # before MONAI Label: see compat

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import strtobool

from monai_liver.errors import LiverError

logger = logging.getLogger(__name__)

__all__ = ["JointInferTask", "bundle_labels", "load_study", "restore_orientation"]


def bundle_labels(bundle: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """Label names -> values from the bundle's ``channel_def`` (background left out, as MONAI Label
    does), and the lesion type names in class-index order (channels 2, 3, ...)."""
    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    _, out = next(iter(meta["network_data_format"]["outputs"].items()))
    channels = {int(k): str(v) for k, v in out.get("channel_def", {}).items()}
    if len(channels) < 3 or channels.get(1, "").lower() != "liver":
        raise LiverError(f"{bundle}: channel_def must be background, liver, then one channel per lesion type")
    labels = {name.lower(): k for k, name in sorted(channels.items()) if k != 0}
    types = [channels[k].lower() for k in sorted(channels) if k >= 2]
    return labels, types


def load_study(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, Any]:
    """A study -> (volume (X, Y, Z) float32 HU in RAS, its RAS affine, reference) where ``reference``
    is the nibabel image (NIfTI: the mask is written back in its own orientation and affine) or the
    RAS affine (DICOM series / file, through :func:`monai_liver.data.io.load_ct`)."""
    import nibabel as nib

    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        try:
            img = nib.load(str(path))
            if len(img.shape) not in (2, 3) and not (len(img.shape) == 4 and img.shape[3] == 1):
                raise LiverError(f"{path}: image has shape {img.shape}; expected a 2D or 3D CT")
            if len(img.shape) == 4:
                img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
            if len(img.shape) == 2:
                img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)
            canonical = nib.as_closest_canonical(img)
            vol = np.asarray(canonical.get_fdata(dtype=np.float32))
        except LiverError:
            raise
        except Exception as e:  # nibabel raises several types for truncated or non-NIfTI files
            raise LiverError(f"{path}: cannot read the NIfTI image ({type(e).__name__}: {e})") from e
        return vol, np.asarray(canonical.affine), nib.load(str(path))
    from monai_liver.data.io import load_ct

    vol, affine = load_ct(path)
    return np.asarray(vol, dtype=np.float32), np.asarray(affine), np.asarray(affine)


def restore_orientation(label_ras: np.ndarray, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) label in RAS -> (array, affine) in the reference's geometry (its shape and affine)."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    if not isinstance(reference, nib.spatialimages.SpatialImage):
        return label_ras, np.asarray(reference)
    shape = reference.shape
    affine = reference.affine
    ornt = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(affine))
    lab = apply_orientation(label_ras, ornt)
    lab = lab.reshape(shape[:3] if len(shape) >= 3 else shape)
    return np.ascontiguousarray(lab), np.asarray(affine)


class JointInferTask(BasicInferTask):
    """Serves ``<bundle>/models/model.pt`` (a joint model) on whole studies, through the same
    cascade as ``monai-liver infer`` (:class:`monai_liver.inference.predictor.Predictor`; the liver
    localiser is ``<bundle>/models/liver_model.pt`` when present). The model is reloaded when its
    file changes (after a training run of the app).

    Args:
        bundle: the app's working copy of the joint bundle (``configs/`` and ``models/``).
        conf: the app's ``--conf`` settings (``image_size`` must agree with the model's).
    """

    def __init__(self, bundle: str | os.PathLike, conf: Dict[str, str] | None = None) -> None:
        conf = conf or {}
        self.bundle = Path(bundle)
        labels, self.class_names = bundle_labels(self.bundle)
        self.conf_image_size = int(conf["image_size"]) if conf.get("image_size") else None
        self._predictor = None
        self._stamp = None
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        super().__init__(
            path=str(self.bundle / "models" / "model.pt"),
            network=None,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=meta.get("description", "joint liver-lesion segmentation and classification"),
            load_strict=True,
            config={"lesion_union": False},
        )
        self.version = meta.get("version")

    def is_valid(self) -> bool:
        return os.path.isfile(self.path[0])

    def info(self) -> Dict[str, Any]:
        i = super().info()
        size = self.conf_image_size
        if self.is_valid():
            from monai_liver.model_package import read_settings

            size = read_settings(self.path[0]).get("image_size", size)
        i.update({"version": self.version, "classes": self.class_names, "image_size": size})
        return i

    def predictor(self, device: str = "cpu"):
        """The cascade for the current model files (loaded again when one of them changed)."""
        from monai_liver.inference.infer import load_models

        model = Path(self.path[0])
        localiser = model.with_name("liver_model.pt")
        stamp = tuple(p.stat().st_mtime_ns if p.is_file() else None for p in (model, localiser)) + (device,)
        if self._predictor is None or stamp != self._stamp:
            self._predictor = load_models(model, self.bundle, localiser if localiser.is_file() else None, device,
                                          image_size=self.conf_image_size)
            if self._predictor.model.strategy != "joint":
                raise LiverError(f"{model}: the label app serves a joint model, not {self._predictor.model.strategy}")
            self._stamp = stamp
        return self._predictor

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return []  # the study is read in run_inferer (it needs the file's own geometry)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return []

    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cpu"):
        from monai_liver.inference.predictor import study_summary

        path = data.get("image_path") or data.get("image")
        if not isinstance(path, str):
            raise LiverError("request: 'image' must be a study id or a file path")
        volume, ras_affine, reference = load_study(path)
        predictor = self.predictor(device)
        pred = predictor(volume, ras_affine)  # the affine gives the pixel area (mm2) for min_liver_mm2
        summary = study_summary(pred, self.class_names)
        label = pred.label
        labels = {"background": 0, **self.labels}
        if strtobool(str(data.get("lesion_union", False))):
            label = np.where(label >= 2, 2, label).astype(np.uint8)
            labels = {"background": 0, "liver": 1, "lesion": 2}
        arr, affine = restore_orientation(label, reference)
        summary.update(
            {"labels": labels, "lesion": [v for v in labels.values() if v >= 2], "model_version": self.version}
        )
        data["pred"], data["pred_affine"] = arr, affine
        data["result"] = summary
        return data

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        """The label map as NIfTI in the study's geometry (nibabel keeps the affine exactly)."""
        import nibabel as nib

        affine = np.asarray(data["pred_affine"], dtype=np.float64)
        img = nib.Nifti1Image(np.asarray(data["pred"], dtype=np.uint8), affine)
        img.set_sform(affine, code=1)  # scanner coordinates, like the study
        img.set_qform(affine, code=1)
        img.set_data_dtype(np.uint8)
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        nib.save(img, out)
        return out, dict(data["result"])
