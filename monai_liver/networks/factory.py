"""``build_network(strategy, ...)``: the one place every bundle gets its network from (the class
is the strategy record's ``network``, :mod:`monai_liver.strategies`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from monai_liver.errors import LiverError
from monai_liver.networks.backbone import DEFAULT_BACKBONE, DEFAULT_DECODER_CHANNELS, check_backbone
from monai_liver.strategies import get as get_strategy

__all__ = ["build_network", "seg_channels"]


def _check_strategy(strategy: str) -> str:
    return get_strategy(strategy).name


def seg_channels(strategy: str, n_classes: int = 3) -> int:
    """Segmentation output channels: 0 (cls_baseline), 3 (lits_pretrain, seg_baseline, ynet:
    background, liver, lesion), 2 + n_classes (joint: background, liver, one per lesion type)."""
    return get_strategy(strategy).seg_channels(n_classes)


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
    return get_strategy(strategy).build(n_classes=int(n_classes), backbone=backbone, spatial_dims=spatial_dims,
                               in_channels=in_channels, decoder_channels=tuple(int(c) for c in decoder_channels),
                               dropout=dropout)
