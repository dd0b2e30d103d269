"""Multi-task Y-Net (Mehta et al., MICCAI 2018): U-Net + a classification branch on the encoder
features, here pooled where the network's own segmentation sees the lesion.

Mehta's branch pools the deepest encoder features over the whole slice (``cls_pool="global"``).
On the quick demo's phantoms (64 px liver crops, 265 training slices, basicunet-small, 40 epochs,
``/tmp``-style sweep recorded in the README) that branch stayed at the majority class (held-out
accuracy 0.39) while the segmentation reached Dice 0.76: a lesion of 2-8 px is one cell of a
4 x 4 feature map, diluted by the liver around it, and the branch learns patient-level shortcuts
instead (train 0.55). Pooling encoder features weighted by the predicted lesion probability
(``cls_pool="lesion"``, the default) learns the type; the same level without the weighting stayed at
0.39, and the weighting on the deepest level at 0.28. The level is the one at ``cls_stride`` (4: a
quarter of the input size; S/4 for every backbone). With the demo's settings (2 folds of 165 training
slices, 20 epochs, batch 8, lr 5e-3; bare loop, 2 seeds x 2 folds) the held-out type accuracy was
0.45 at stride 8, 0.62 at stride 4 and 0.65 at stride 2, lesion Dice 0.72, 0.70 and 0.69; strides
4 and 8 concatenated 0.58 (README, "What changed in training"). The weights are detached: the
classification loss trains the branch and the encoder, not the lesion channel that weights it (at
stride 4, same runs: accuracy 0.62 -> 0.65, lesion Dice 0.70 -> 0.71).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, Optional

import torch
from torch import nn

from monai_liver.errors import LiverError
from monai_liver.networks.backbone import (DEFAULT_BACKBONE, DEFAULT_DECODER_CHANNELS, ClassificationHead, LiverUNet,
                                           encoder_strides, mlp)

__all__ = ["YNet", "LesionPooling", "CLS_POOLS"]

#: how the Y-Net branch pools: "lesion" (default, see the module doc) or "global" (Mehta et al.).
CLS_POOLS: tuple[str, ...] = ("lesion", "global")
#: downsampling of the encoder level that ``cls_pool="lesion"`` pools (module doc).
DEFAULT_CLS_STRIDE = 4


class LesionPooling(nn.Module):
    """Features pooled by a lesion probability map, and their global maximum:
    ``(features (B, C, h, w), lesion_probability (B, 1, H, W)) -> (B, 2C)``.

    The probability is area-averaged to ``h x w``; the weighted mean uses ``sum(w) + eps`` so that a
    slice without any predicted lesion gives small features instead of a division by zero.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor, lesion_probability: torch.Tensor) -> torch.Tensor:
        spatial = list(range(2, features.dim()))
        if features.dim() == 5:
            weights = nn.functional.adaptive_avg_pool3d(lesion_probability, features.shape[2:])
        else:
            weights = nn.functional.adaptive_avg_pool2d(lesion_probability, features.shape[2:])
        weighted = (features * weights).sum(spatial) / (weights.sum(spatial) + self.eps)
        return torch.cat([weighted, features.amax(spatial)], dim=1)




class YNet(LiverUNet):
    """U-Net (background, liver, lesion) whose encoder features also feed a pool + MLP classifier.

    ``forward(x: (B, in_channels, H, W)) -> {"seg": (B, 3, H, W) logits, "cls": (B, n_classes) logits}``.
    The encoder runs once. ``cls_pool="lesion"``: the encoder feature map at ``cls_stride``
    (default 4: basicunet-small 16 channels at H/4; B0 24 at H/4) pooled by the softmax lesion channel of ``seg``,
    detached (:class:`LesionPooling`, 2C features) goes to ``cls_head`` (MLP); ``"global"``: the deepest map
    (B0: 320 channels at H/32), global average pooling, MLP.
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
        hidden: int = 128,
        cls_pool: str = "lesion",
        cls_stride: int = DEFAULT_CLS_STRIDE,
    ) -> None:
        super().__init__(3, backbone, spatial_dims, in_channels, decoder_channels)
        if cls_pool not in CLS_POOLS:
            raise LiverError(f"cls_pool '{cls_pool}' is not known; choose one of {', '.join(CLS_POOLS)}")
        self.n_classes = n_classes
        self.cls_pool = cls_pool
        strides = encoder_strides(backbone)
        if cls_pool == "lesion" and cls_stride not in strides:
            raise LiverError(f"cls_stride {cls_stride}: the {backbone} encoder has levels at strides {', '.join(map(str, strides))}")
        self.cls_level = strides.index(cls_stride) if cls_pool == "lesion" else len(strides) - 1
        self.lesion_pooling = LesionPooling()
        if cls_pool == "lesion":
            self.cls_head: nn.Module = mlp(2 * self.feature_channels[self.cls_level], n_classes, hidden, dropout)
        else:
            self.cls_head = ClassificationHead(self.feature_channels[-1], n_classes, hidden, dropout, spatial_dims)

    def forward(self, inputs: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        features = self.features(inputs)
        seg = self.decode(features)
        if self.cls_pool == "lesion":
            lesion = torch.softmax(seg, dim=1)[:, 2:3].detach()  # background, liver, lesion
            cls = self.cls_head(self.lesion_pooling(features[self.cls_level], lesion))
        else:
            cls = self.cls_head(features[-1])
        out: Dict[str, Optional[torch.Tensor]] = {"seg": seg, "cls": cls}
        return out
