"""Multi-task Y-Net (Mehta et al., MICCAI 2018): U-Net + classification branch on the deepest
encoder features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, Optional

import torch

from monai_liver.networks.backbone import DEFAULT_BACKBONE, DEFAULT_DECODER_CHANNELS, ClassificationHead, LiverUNet

__all__ = ["YNet"]


class YNet(LiverUNet):
    """FlexibleUNet (background, liver, lesion) whose deepest encoder features also feed a
    pool + MLP classifier.

    ``forward(x: (B, in_channels, H, W)) -> {"seg": (B, 3, H, W) logits, "cls": (B, n_classes) logits}``.
    The encoder runs once; its last feature map (B0: 320 channels at H/32) goes to ``cls_head``.
    """

    primary_output = "seg"

    def __init__(
        self,
        n_classes: int = 3,
        backbone: str = DEFAULT_BACKBONE,
        spatial_dims: int = 2,
        in_channels: int = 1,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        dropout: float = 0.2,
        hidden: int = 256,
    ) -> None:
        super().__init__(3, backbone, spatial_dims, in_channels, decoder_channels)
        self.n_classes = n_classes
        self.cls_head = ClassificationHead(self.feature_channels[-1], n_classes, hidden, dropout, spatial_dims)

    def forward(self, inputs: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        features = self.features(inputs)
        out: Dict[str, Optional[torch.Tensor]] = {"seg": self.decode(features), "cls": self.cls_head(features[-1])}
        return out
