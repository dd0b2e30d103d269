"""``PrepareBatch`` for the multi-task targets: batch dict -> ``(image, {"seg", "cls"})`` on device,
with the training augmentation applied to the batch there (see :func:`augment_batch`)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["PrepareBatchSegCls", "augment_batch"]


def _plain(x: Any) -> torch.Tensor:
    """MetaTensor -> plain tensor (the loss and metrics need no metadata, and plain tensors are faster)."""
    x = torch.as_tensor(x)
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def augment_batch(
    image: torch.Tensor, seg: torch.Tensor, flip_prob: float = 0.5, intensity: float = 0.0, noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random augmentation of a batch, per slice, on the batch's device.

    ``image`` (B, 1, H, W) in [0, 1], ``seg`` (B, 1, H, W): each slice is flipped along each
    spatial axis with probability ``flip_prob`` (image and label alike), and its intensities are
    scaled by ``1 + U(-intensity, intensity)`` and shifted by ``U(-intensity, intensity) / 2``, and
    gets Gaussian noise of standard deviation ``U(0, noise)`` (in window units: 0.05 is 22 HU in the
    default 450 HU window), then is clipped to [0, 1]. Written here because MONAI's random transforms draw one set of parameters per
    call, i.e. per item, so they run per slice in the data loader: at 64 px on a CPU that cost more
    than the network step (see ``benchmarks/bench_learning.py``). Returns new tensors.
    """
    n = image.shape[0]
    for dim in range(2, image.ndim):
        flip = (torch.rand(n, device=image.device) < flip_prob).view(n, *([1] * (image.ndim - 1)))
        image = torch.where(flip, image.flip(dim), image)
        seg = torch.where(flip, seg.flip(dim), seg)
    if intensity > 0:
        shape = (n, *([1] * (image.ndim - 1)))
        scale = 1.0 + (torch.rand(shape, device=image.device) * 2 - 1) * intensity
        shift = (torch.rand(shape, device=image.device) * 2 - 1) * intensity / 2
        image = (image * scale + shift).clamp_(0.0, 1.0)
    if noise > 0:
        sigma = torch.rand((n, *([1] * (image.ndim - 1))), device=image.device) * noise
        image = (image + sigma * torch.randn_like(image)).clamp_(0.0, 1.0)
    return image, seg


class PrepareBatchSegCls(PrepareBatch):
    """Split a collated batch into the network input and the targets dict.

    Returns ``image (B, 1, H, W) float`` and ``{"seg": (B, 1, H, W) long, "cls": (B,) long}`` (``cls``
    -1 where the slice has no lesion type, ``seg`` all zeros when the batch has none), all on
    ``device``. The engines keep ``engine.state.output["label"]`` as this dict. ``augment=True``
    (the trainer's) applies :func:`augment_batch` on the device: flips, intensity scale and shift up to
    ``intensity`` (default 0: CT numbers are calibrated and carry the lesion type; measured in the
    README, a 0.1 change cost the Y-Net and joint type accuracy 0.05-0.19), Gaussian noise up to ``noise``;
    ``channels_last=True`` hands the image over in ``torch.channels_last`` memory format (the format a
    GPU's convolutions run fastest in, with the network converted alike; see the bundles' ``channels_last``).
    """

    def __init__(
        self, image_key: str = "image", seg_key: str = "seg", cls_key: str = "cls", augment: bool = False,
        noise: float = 0.0, channels_last: bool = False, intensity: float = 0.0,
    ) -> None:
        self.image_key, self.seg_key, self.cls_key = image_key, seg_key, cls_key
        self.augment = bool(augment)
        self.intensity = float(intensity)
        self.noise = float(noise)
        self.channels_last = bool(channels_last)

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = _plain(batchdata[self.image_key]).float()
        n = image.shape[0]
        seg = batchdata.get(self.seg_key)
        seg = _plain(seg).long() if seg is not None else torch.zeros_like(image, dtype=torch.long)
        cls = batchdata.get(self.cls_key)
        cls = _plain(cls).long().reshape(n) if cls is not None else torch.full((n,), -1, dtype=torch.long)
        to = dict(device=device, non_blocking=non_blocking, **kwargs)
        image, seg = image.to(**to), seg.to(**to)
        if self.augment:
            image, seg = augment_batch(image, seg, intensity=self.intensity, noise=self.noise)
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        return image, {"seg": seg, "cls": cls.to(**to)}
