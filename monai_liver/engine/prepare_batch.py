"""``PrepareBatch`` for the multi-task targets: batch dict -> ``(image, {"seg", "cls"})`` on device."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["PrepareBatchSegCls"]


def _plain(x: Any) -> torch.Tensor:
    """MetaTensor -> plain tensor (the loss and metrics need no metadata, and plain tensors are faster)."""
    x = torch.as_tensor(x)
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class PrepareBatchSegCls(PrepareBatch):
    """Split a collated batch into the network input and the targets dict.

    Returns ``image (B, 1, H, W) float`` and ``{"seg": (B, 1, H, W) long, "cls": (B,) long}`` (``cls``
    -1 where the slice has no lesion type, ``seg`` all zeros when the batch has none), all on
    ``device``. The engines keep ``engine.state.output["label"]`` as this dict.
    """

    def __init__(self, image_key: str = "image", seg_key: str = "seg", cls_key: str = "cls") -> None:
        self.image_key, self.seg_key, self.cls_key = image_key, seg_key, cls_key

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
        return image.to(**to), {"seg": seg.to(**to), "cls": cls.to(**to)}
