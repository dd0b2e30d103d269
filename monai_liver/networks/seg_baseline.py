"""Segmentation baseline (and the LiTS pretraining network): a 3-class U-Net."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, Optional

import torch

from monai_liver.networks.backbone import DEFAULT_BACKBONE, DEFAULT_DECODER_CHANNELS, LiverUNet

__all__ = ["SegBaseline"]


class SegBaseline(LiverUNet):
    """FlexibleUNet with channels (background, liver, lesion).

    ``forward(x: (B, in_channels, H, W)) -> {"seg": (B, 3, H, W) logits, "cls": None}``.
    """

    primary_output = "seg"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        spatial_dims: int = 2,
        in_channels: int = 1,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        out_channels: int = 3,
    ) -> None:
        super().__init__(out_channels, backbone, spatial_dims, in_channels, decoder_channels)

    def forward(self, inputs: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        out: Dict[str, Optional[torch.Tensor]] = {"seg": self.decode(self.features(inputs)), "cls": None}
        return out
