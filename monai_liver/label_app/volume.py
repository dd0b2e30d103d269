"""Run the 2D joint network over a 3D CT study, slice by slice, and reassemble a 3D label map.

The joint bundle's network sees one axial slice at a time, cropped to the liver (its bounding box
plus :data:`monai_liver.transforms.ROI_MARGIN` pixels) and brought to ``image_size`` by the bundle's
``preprocessing`` (HU window, longest side resized, padded to a square). A 3D study has no liver
mask yet, so each axial slice with body in it is segmented twice:

1. the body's bounding box (HU > ``BODY_HU``) -> a first liver + lesion estimate;
2. the liver box of pass 1 plus the margin -> the final label map of the slice.

The network's probabilities are mapped back to the crop by inverting the preprocessing (MONAI's
``Compose.inverse``). Slices without body, and pixels outside the body or the crop, are background.
Label values: 0 background, 1 liver, 2 + k lesion of type k (the joint network's channels). The
study's lesion class is the vote of all predicted lesion voxels (the joint strategy's slice vote,
summed over slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from monai_liver.constants import HU_WINDOW
from monai_liver.transforms import ROI_MARGIN

__all__ = ["BODY_HU", "MIN_BODY_PIXELS", "SliceResult", "VolumeResult", "segment_volume", "study_summary"]

#: HU above which a pixel is body (air is about -1000 HU, fat about -100 HU)
BODY_HU = -500.0
#: a slice needs this many body pixels to be segmented
MIN_BODY_PIXELS = 64


@dataclass
class SliceResult:
    """One axial slice: index z, lesion voxels and the vote mass per lesion type (K,)."""

    z: int
    lesion_pixels: int
    liver_pixels: int
    type_mass: np.ndarray


@dataclass
class VolumeResult:
    """``label`` (X, Y, Z) uint8: 0 bg, 1 liver, 2 + k lesion type k; per-slice results of segmented slices."""

    label: np.ndarray
    slices: list[SliceResult] = field(default_factory=list)


def _box(mask: np.ndarray, margin: int) -> Optional[tuple[slice, slice]]:
    """Bounding box of a 2D mask grown by ``margin`` pixels and clipped to the slice; None if empty."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return None
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n)) for i, n in zip(idx, mask.shape)
    )


def _predict(net: Callable[[torch.Tensor], object], crop_hu: np.ndarray, preprocessing: Callable, device) -> torch.Tensor:
    """One 2D crop (h, w) in HU -> (C, h, w) softmax probabilities, mapped back through the
    inverse of ``preprocessing`` (a dictionary chain on key ``"image"``)."""
    from monai.data import MetaTensor

    d = preprocessing({"image": np.ascontiguousarray(crop_hu, dtype=np.float32)})
    img = d["image"]
    with torch.no_grad():
        out = net(torch.as_tensor(img, dtype=torch.float32)[None].to(device))
    seg = out["seg"] if isinstance(out, dict) else out
    prob = torch.softmax(seg.float(), dim=1)[0].cpu()
    if isinstance(img, MetaTensor):
        prob = MetaTensor(prob, meta=dict(img.meta), applied_operations=list(img.applied_operations))
        prob = preprocessing.inverse({"image": prob})["image"]
    prob = torch.as_tensor(prob).float()
    if tuple(prob.shape[1:]) != tuple(crop_hu.shape):
        raise RuntimeError(f"preprocessing is not invertible: {tuple(prob.shape[1:])} != {crop_hu.shape}")
    return prob


def segment_volume(
    net: Callable[[torch.Tensor], object],
    volume: np.ndarray,
    preprocessing: Optional[Callable] = None,
    device: str | torch.device = "cpu",
    margin: int = ROI_MARGIN,
    image_size: int = 128,
    window: Sequence[float] = HU_WINDOW,
) -> VolumeResult:
    """Segment a CT volume with a 2D joint network.

    Args:
        net: ``(1, 1, S, S)`` in [0, 1] -> ``{"seg": (1, 2 + K, S, S) logits, ...}`` or the logits tensor.
        volume: (X, Y, Z) float HU, RAS (axial slices are ``volume[:, :, z]``); a 2D image is (X, Y, 1).
        preprocessing: the bundle's invertible chain ``{"image": HU (h, w)} -> {"image": (1, S, S)}``;
            default :func:`monai_liver.transforms.inference_transforms` (``image_size``, ``window``).
        margin: pixels around the liver box (training's ROI margin).
    """
    from monai_liver.transforms import inference_transforms

    if volume.ndim != 3:
        raise ValueError(f"volume must be (X, Y, Z), got shape {volume.shape}")
    if preprocessing is None:
        preprocessing = inference_transforms(image_size=image_size, window=window)
    device = torch.device(device)
    label = np.zeros(volume.shape, dtype=np.uint8)
    result = VolumeResult(label=label)
    for z in range(volume.shape[2]):
        sl = np.asarray(volume[:, :, z], dtype=np.float32)
        body = sl > BODY_HU
        if int(body.sum()) < MIN_BODY_PIXELS:
            continue
        box = _box(body, 0)
        prob = _predict(net, sl[box], preprocessing, device)
        liver_box = _box(prob.argmax(dim=0).numpy() >= 1, margin)
        if liver_box is not None:  # pass 2 on the liver box, as the network was trained
            box = tuple(slice(b.start + o.start, b.start + o.stop) for b, o in zip(box, liver_box))
            prob = _predict(net, sl[box], preprocessing, device)
        lab = prob.argmax(dim=0)
        lab[torch.as_tensor(~body[box])] = 0
        label[box[0], box[1], z] = lab.numpy().astype(np.uint8)
        lesion = lab >= 2
        n_lesion = int(lesion.sum())
        types = prob[2:]
        mass = (types * lesion).flatten(1).sum(dim=1) if n_lesion else torch.zeros(types.shape[0])
        result.slices.append(
            SliceResult(z=z, lesion_pixels=n_lesion, liver_pixels=int((lab == 1).sum()), type_mass=mass.double().numpy())
        )
    return result


def study_summary(result: VolumeResult, class_names: Sequence[str]) -> dict:
    """JSON-ready class fields: the study's lesion class (vote of all lesion voxels) and its
    probability (the vote fraction), the vote per class, and one entry per slice with lesion.

    ``lesion_class`` and ``lesion_probability`` are None when no lesion voxel was predicted.
    """
    k = len(class_names)
    total = np.zeros(k)
    per_slice = []
    for s in result.slices:
        if s.lesion_pixels == 0:
            continue
        total += s.type_mass
        frac = s.type_mass / max(s.type_mass.sum(), 1e-30)
        c = int(np.argmax(frac))
        per_slice.append(
            {
                "slice": s.z,
                "lesion_class": class_names[c],
                "lesion_probability": round(float(frac[c]), 4),
                "lesion_voxels": s.lesion_pixels,
            }
        )
    lesion_voxels = int(sum(s.lesion_pixels for s in result.slices))
    if lesion_voxels:
        vote = total / max(total.sum(), 1e-30)
        c = int(np.argmax(vote))
        cls, p = class_names[c], round(float(vote[c]), 4)
        probs = {name: round(float(v), 4) for name, v in zip(class_names, vote)}
    else:
        cls, p, probs = None, None, {name: None for name in class_names}
    counts = np.bincount(result.label.ravel(), minlength=2 + k)
    return {
        "lesion_class": cls,
        "lesion_probability": p,
        "class_probabilities": probs,
        "lesion_voxels": lesion_voxels,
        "liver_voxels": int(counts[1]),
        "voxels_per_class": {name: int(counts[2 + i]) for i, name in enumerate(class_names)},
        "slices_segmented": len(result.slices),
        "lesion_slices": per_slice,
    }
