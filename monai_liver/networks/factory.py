"""``build_network(strategy, ...)``: the one place every bundle gets its network from."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from monai_liver.constants import PRETRAIN_STRATEGY, STRATEGIES
from monai_liver.errors import LiverError
from monai_liver.networks.backbone import DEFAULT_BACKBONE, DEFAULT_DECODER_CHANNELS, check_backbone

__all__ = ["NETWORK_STRATEGIES", "build_network", "seg_channels"]

#: strategies build_network knows: the LiTS pretraining network and the four strategies.
NETWORK_STRATEGIES: tuple[str, ...] = (PRETRAIN_STRATEGY, *STRATEGIES)


def _check_strategy(strategy: str) -> str:
    if strategy not in NETWORK_STRATEGIES:
        raise LiverError(f"strategy '{strategy}' is not known; choose one of {', '.join(NETWORK_STRATEGIES)}")
    return strategy


def seg_channels(strategy: str, n_classes: int = 3) -> int:
    """Segmentation output channels: 0 (cls_baseline), 3 (lits_pretrain, seg_baseline, ynet:
    background, liver, lesion), 2 + n_classes (joint: background, liver, one per lesion type)."""
    _check_strategy(strategy)
    if strategy == "cls_baseline":
        return 0
    if strategy == "joint":
        return 2 + n_classes
    return 3


def build_network(
    strategy: str,
    n_classes: int = 3,
    backbone: str = DEFAULT_BACKBONE,
    spatial_dims: int = 2,
    in_channels: int = 1,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    dropout: float = 0.2,
) -> nn.Module:
    """The strategy's network, randomly initialised (see :func:`monai_liver.networks.init.initialise`).

    Every network maps ``(B, in_channels, H, W)`` to ``{"seg": (B, seg_channels, H, W) logits or
    None, "cls": (B, n_classes) logits or None}``; ``dropout`` applies to classification heads.
    """
    _check_strategy(strategy)
    check_backbone(backbone)
    if int(n_classes) < 1:
        raise LiverError(f"n_classes must be at least 1, got {n_classes}")
    if spatial_dims not in (2, 3):
        raise LiverError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    n_classes, decoder_channels = int(n_classes), tuple(int(c) for c in decoder_channels)
    # imported here: the strategy modules import torch/MONAI, and the CLI imports this module lazily anyway
    if strategy == "cls_baseline":
        from monai_liver.networks.cls_baseline import ClsBaseline

        return ClsBaseline(n_classes, backbone, spatial_dims, in_channels, dropout)
    if strategy == "ynet":
        from monai_liver.networks.ynet import YNet

        return YNet(n_classes, backbone, spatial_dims, in_channels, decoder_channels, dropout)
    if strategy == "joint":
        from monai_liver.networks.joint import JointNet

        return JointNet(n_classes, backbone, spatial_dims, in_channels, decoder_channels)
    from monai_liver.networks.seg_baseline import SegBaseline

    return SegBaseline(backbone, spatial_dims, in_channels, decoder_channels)
