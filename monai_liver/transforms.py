"""MONAI dictionary transform chains for 2D liver-lesion slices, shared by every bundle.

Input items are the cached slices of :func:`monai_liver.data.slices.materialise_slices`:
``{"image": HU float32 (X, Y) .npy, "seg": uint8 (X, Y) .npy, "cls": int, ...}``. Output:

- ``"image"``: (1, H, W) float32 in [0, 1] (HU window, clipped);
- ``"seg"``: (1, H, W) long target for the strategy (see :class:`StrategyTargetd`);
- ``"cls"``: long scalar tensor, -1 when the slice has no lesion type.

The chain: load -> channel first -> window -> strategy target -> liver-ROI crop (foreground of
``seg`` plus a margin) -> resize the longest side to ``image_size`` and pad to a square (aspect
kept) -> [the classification baseline: outside the liver set to the liver's median] -> [random
augmentations] -> types. The bundles' JSON sets only the parameters; the
chains live here so that a change is made once.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_liver.constants import DEFAULT_CLASSES, DEFAULT_IMAGE_SIZE, HU_WINDOW, ROI_MARGIN, check_image_size
from monai_liver.errors import LiverError
from monai_liver.strategies import get as get_strategy

__all__ = [
    "ROI_MARGIN",
    "FillOutsideLiverd",
    "LoadCTSliced",
    "StrategyTargetd",
    "cached_on_device",
    "eval_transforms",
    "foreground_or_all",
    "inference_transforms",
    "train_transforms",
    "window_ct",
]


def _check_strategy(strategy: str) -> str:
    return get_strategy(strategy).name  # LiverError naming the known strategies


def foreground_or_all(x: torch.Tensor | np.ndarray):
    """``x > 0``, or everything when nothing is positive (a slice without liver keeps its full
    field of view instead of MONAI's empty crop). Module-level so that it pickles."""
    mask = x > 0
    if bool(mask.any()):
        return mask
    return torch.ones_like(mask) if isinstance(mask, torch.Tensor) else np.ones_like(mask)


def window_ct(array: np.ndarray | torch.Tensor, window: Sequence[float] = HU_WINDOW):
    """Map Hounsfield units to [0, 1]: ``window[0]`` HU -> 0, ``window[1]`` HU -> 1, clipped.

    Same as the training chain's ``ScaleIntensityRanged``; returns float32 of the input's kind.
    """
    from monai.transforms import ScaleIntensityRange
    from monai.utils import convert_to_dst_type

    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise LiverError(f"HU window {tuple(window)} is empty; expected (low, high) with low < high.")
    out = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)(array)
    return convert_to_dst_type(out, array, dtype=np.float32)[0]


class StrategyTargetd(MapTransform):
    """Make the ``seg`` target and the ``cls`` tensor a strategy trains on.

    ``seg`` values in: 0 background, 1 liver, 2 lesion, 2 + k lesion of type k (class-id masks).
    Out, for a strategy whose segmentation has one channel per type (``joint``, registry
    ``segmentation="types"``): 0, 1, 2 + k (``n_classes`` + 2 classes): values above 2 are kept; when the
    slice's largest value is 2 (a 0/1 lesion mask) its lesion pixels become 2 + ``cls``. A joint
    slice with lesion pixels of unknown type (cls -1) raises LiverError. For every other strategy
    (``lits_pretrain``, ``seg_baseline``, ``ynet``, ``cls_baseline``): 0, 1, 2 (types collapsed).
    ``cls`` becomes a long scalar tensor (-1 when absent).
    """

    def __init__(
        self,
        strategy: str,
        n_classes: int = len(DEFAULT_CLASSES),
        keys: KeysCollection = "seg",
        cls_key: str = "cls",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.strategy = _check_strategy(strategy)
        self.types = get_strategy(strategy).segmentation == "types"
        self.n_classes = int(n_classes)
        self.cls_key = cls_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        raw_cls = d.get(self.cls_key, -1)
        cls = int(raw_cls.item() if isinstance(raw_cls, (torch.Tensor, np.ndarray)) else raw_cls)
        for key in self.key_iterator(d):
            seg = d[key]
            top = int(seg.max()) if np.prod(seg.shape) > 0 else 0
            if self.types:  # one target channel per lesion type (joint)
                if top > 1 + self.n_classes:
                    raise LiverError(
                        f"{d.get('source', key)}: slice {d.get('slice', '?')} has label {top}, "
                        f"more than the {self.n_classes} lesion types allow."
                    )
                if top == 2:
                    if not 0 <= cls < self.n_classes:
                        raise LiverError(
                            f"{d.get('source', key)}: slice {d.get('slice', '?')} has lesion pixels but lesion type "
                            f"{cls} is not one of 0..{self.n_classes - 1}; the joint strategy needs a type for every lesion."
                        )
                    seg = seg.clone() if isinstance(seg, torch.Tensor) else seg.copy()
                    seg[seg == 2] = 2 + cls
            elif top > 2:
                seg = seg.clone() if isinstance(seg, torch.Tensor) else seg.copy()
                seg[seg > 2] = 2
            d[key] = seg
        d[self.cls_key] = torch.as_tensor(cls, dtype=torch.long)
        return d


class FillOutsideLiverd(MapTransform):
    """Set the pixels of ``image`` (1, H, W) outside the liver (``seg`` == 0: background and padding)
    to the median of its liver pixels (``seg`` >= 1, lesions included); an image without liver is
    left as it is. The input of the classification baseline (registry ``liver_only_input``).

    Why: without pixel labels, a classifier of the liver ROI keys on what surrounds the liver (fat,
    bowel, kidney: darker than any lesion) and learns patient shortcuts; shown only the liver, it
    finds the lesion. Bare loop on the demo's typed slices (folds 0 / 1, basicunet-small with
    BatchNorm): held-out accuracy 0.56 / 0.65 against 0.37 / 0.36 for the whole ROI. Written by hand
    because MONAI's ``MaskIntensityd`` sets the outside to 0, which draws a dark rim around the liver
    that a classifier takes for a lesion edge (a small CNN: 0.40 / 0.55 with zeros, 0.57 / 0.63 with
    the median).
    """

    def __init__(self, keys: KeysCollection = "image", seg_key: str = "seg", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.seg_key = seg_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        liver = torch.as_tensor(d[self.seg_key]) >= 1
        if not bool(liver.any()):
            return d
        for key in self.key_iterator(d):
            image = d[key]
            values = torch.as_tensor(image)
            fill = values[liver].median()
            d[key] = image.masked_fill(~liver, fill) if isinstance(image, torch.Tensor) else \
                np.where(liver.numpy(), np.asarray(image), fill.item()).astype(np.asarray(image).dtype)
        return d


class LoadCTSliced(MapTransform):
    """Load one 2D CT slice for inference: a file path (NIfTI, DICOM file; read by
    :func:`monai_liver.data.io.load_ct`, RAS canonical like the training slices) or an HU array
    (X, Y) / (1, X, Y). Output: MetaTensor (1, X, Y) HU float32 with the file's affine and name.

    Written by hand because MONAI's ``LoadImaged`` takes only paths, and the training slices come
    from ``load_ct`` (DICOM series sorting, orientation), which inference must match.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai_liver.data.io import load_ct

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            meta: dict[str, Any] = {}
            if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
                array, affine = load_ct(value)
                if array.shape[2] != 1:
                    raise LiverError(f"{value}: 3D image with {array.shape[2]} slices; expected one 2D slice.")
                array = array[:, :, 0]
                meta = {"affine": torch.as_tensor(affine), "filename_or_obj": str(value), "space": "RAS"}
            else:
                array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                if array.ndim == 3 and 1 in (array.shape[0], array.shape[2]):
                    array = array[0] if array.shape[0] == 1 else array[:, :, 0]
                if array.ndim != 2:
                    raise LiverError(f"input '{key}' of shape {array.shape} is not one 2D slice.")
                if isinstance(value, MetaTensor):
                    meta = dict(value.meta)
            meta["original_channel_dim"] = "no_channel"
            meta["spatial_shape"] = np.asarray(array.shape)
            d[key] = MetaTensor(torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))[None], meta=meta)
        return d


def _preprocess(strategy: str, image_size: int, window: Sequence[float], n_classes: int, margin: int) -> list:
    from monai.transforms import (
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Resized,
        ScaleIntensityRanged,
        SpatialPadd,
    )

    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise LiverError(f"HU window {tuple(window)} is empty; expected (low, high) with low < high.")
    image_size = check_image_size(image_size, "image_size")
    keys = ["image", "seg"]
    return [
        LoadImaged(keys, reader="NumpyReader", image_only=True, dtype=None),
        EnsureChannelFirstd(keys, channel_dim="no_channel"),
        ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        StrategyTargetd(strategy, n_classes=n_classes, keys="seg"),
        *([CropForegroundd(keys, source_key="seg", select_fn=foreground_or_all, margin=int(margin), allow_smaller=True)]
          if int(margin) >= 0 else []),  # a negative margin: whole slices (the liver localiser)
        # labels by "nearest-exact" (pixel centres, as the bilinear image): plain "nearest" samples
        # the top-left source pixel, shifting the labels by (scale - 1) / 2 source pixels against the
        # image (a third of a pixel at 192 -> 64), which cost 0.04-0.06 held-out lesion Dice
        Resized(keys, spatial_size=int(image_size), size_mode="longest", mode=("bilinear", "nearest-exact"),
                anti_aliasing=(True, False)),
        SpatialPadd(keys, spatial_size=(int(image_size), int(image_size))),
        *([FillOutsideLiverd("image", seg_key="seg")] if get_strategy(strategy).liver_only_input else []),
    ]


def _finalise(track_meta: bool = True) -> list:
    from monai.transforms import EnsureTyped

    return [EnsureTyped("image", dtype=torch.float32, track_meta=track_meta),
            EnsureTyped("seg", dtype=torch.long, track_meta=track_meta)]


def train_transforms(
    strategy: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    window: Sequence[float] = HU_WINDOW,
    n_classes: int = len(DEFAULT_CLASSES),
    augment: bool = True,
    margin: int = ROI_MARGIN,
):
    """Training chain (a MONAI ``Compose``) for ``strategy``: preprocessing + random augmentation.

    Augmentation (2D, after the resize so it costs little): rotation up to 15 degrees, zoom
    0.9-1.1, flips along either axis, intensity scale and shift (clipped back to [0, 1]); ``seg``
    always by nearest neighbour (pixel-centred). Deterministic parts come first, so ``CacheDataset`` caches them.
    The bundles leave ``augment`` off and augment the batch instead
    (:func:`monai_liver.engine.prepare_batch.augment_batch`: cheaper per slice). Items come out as
    plain tensors (no MetaTensor: training needs no metadata, and plain tensors collate faster).
    """
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandZoomd,
        ScaleIntensityRanged,
    )

    chain = _preprocess(_check_strategy(strategy), image_size, window, n_classes, margin)
    if augment:
        keys = ["image", "seg"]
        chain += [
            RandRotated(keys, range_x=np.pi / 12, prob=0.3, mode=("bilinear", "nearest"), padding_mode="zeros"),
            RandZoomd(keys, prob=0.3, min_zoom=0.9, max_zoom=1.1, mode=("bilinear", "nearest-exact"), padding_mode="constant"),
            RandFlipd(keys, prob=0.2, spatial_axis=0),
            RandFlipd(keys, prob=0.2, spatial_axis=1),
            RandScaleIntensityd("image", factors=0.1, prob=0.3),
            RandShiftIntensityd("image", offsets=0.05, prob=0.3),
            # back into [0, 1] after the intensity changes (identity map with clipping)
            ScaleIntensityRanged("image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    return Compose(chain + _finalise(track_meta=False))


def eval_transforms(
    strategy: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    window: Sequence[float] = HU_WINDOW,
    n_classes: int = len(DEFAULT_CLASSES),
    margin: int = ROI_MARGIN,
):
    """Validation / evaluation chain: the training chain without augmentation."""
    from monai.transforms import Compose

    return Compose(_preprocess(_check_strategy(strategy), image_size, window, n_classes, margin) + _finalise())


def cached_on_device(chain, device, enabled: bool = True):
    """``chain`` (a ``Compose``) followed by MONAI's ``ToDeviced`` of image and label to ``device``
    when ``enabled``: with the chain deterministic, ``CacheDataset`` then keeps every preprocessed slice
    on the GPU and a training step copies nothing from the host (the bundles' ``cache_on_device``,
    on by default when the bundle's device is a GPU; the data loaders then run without worker processes).
    Returns ``chain`` itself when not enabled."""
    from monai.transforms import Compose, ToDeviced

    if not enabled:
        return chain
    return Compose([*chain.transforms, ToDeviced(["image", "seg"], device=device, allow_missing_keys=True)])


def inference_transforms(image_size: int = DEFAULT_IMAGE_SIZE, window: Sequence[float] = HU_WINDOW, key: str = "image"):
    """Chain for one 2D slice without masks: ``{key: path or HU array}`` -> (1, S, S) in [0, 1].

    The whole slice is resized (longest side to ``image_size``, padded to a square), since no
    liver ROI is known; crop to the liver first (e.g. with the ``lits_pretrain`` model) to match
    the training input.
    """
    from monai.transforms import Compose, EnsureTyped, Resized, ScaleIntensityRanged, SpatialPadd

    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise LiverError(f"HU window {tuple(window)} is empty; expected (low, high) with low < high.")
    return Compose([
        LoadCTSliced(key),
        ScaleIntensityRanged(key, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        Resized(key, spatial_size=int(image_size), size_mode="longest", mode="bilinear", anti_aliasing=True),
        SpatialPadd(key, spatial_size=(int(image_size), int(image_size))),
        EnsureTyped(key, dtype=torch.float32),
    ])
