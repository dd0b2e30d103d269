"""Classification baseline: the U-Net's encoder + global average pooling + dropout + linear.

It sees only the liver of its ROI (:class:`monai_liver.transforms.FillOutsideLiverd`), and a
basicunet encoder here normalises by batch, not by instance: with instance norm before the global
pooling (and the whole ROI as input) the held-out accuracy stayed at the majority class. Bare loop
on the demo's typed slices (folds 0 / 1, 64 px, 20 epochs): liver-only input with BatchNorm 0.56 /
0.65 (seeds 1, 2: 0.60 / 0.65, 0.59 / 0.61); liver-only with instance norm 0.41 / 0.44; BatchNorm on
the whole ROI 0.37 / 0.36.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from monai_liver.networks.backbone import DEFAULT_BACKBONE, ClassificationHead, build_encoder, encoder_channels

__all__ = ["ClsBaseline"]


class ClsBaseline(nn.Module):
    """Slice classifier on the deepest encoder features.

    The encoder is the one :class:`~monai_liver.networks.backbone.LiverUNet` builds, under the same
    ``encoder.`` prefix, so ImageNet and LiTS weights map onto it exactly as onto the U-Nets.

    ``forward(x: (B, in_channels, H, W)) -> {"seg": None, "cls": (B, n_classes) logits}``.
    """

    #: the output :class:`~monai_liver.networks.wrapper.TensorOutput` returns.
    primary_output = "cls"

    def __init__(
        self,
        n_classes: int = 3,
        backbone: str = DEFAULT_BACKBONE,
        spatial_dims: int = 2,
        in_channels: int = 1,
        dropout: float = 0.2,
        norm: str | None = "batch",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.encoder = build_encoder(backbone, spatial_dims, in_channels, norm=norm)
        self.cls_head = ClassificationHead(encoder_channels(backbone)[-1], n_classes, None, dropout, spatial_dims)

    def forward(self, x: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        features = self.encoder(x)
        out: Dict[str, Optional[torch.Tensor]] = {"seg": None, "cls": self.cls_head(features[-1])}
        return out
