"""The one encoder/decoder family every strategy network is built from.

MONAI's :class:`~monai.networks.nets.FlexibleUNet` (EfficientNet or ResNet encoder, U-Net decoder)
is used as is, with two changes made here once for all strategies:

- ``pretrained`` is always ``False``: weights come from :mod:`monai_liver.networks.init`, which
  adapts the RGB stem to one CT channel (MONAI's own loader copies only shape-matching tensors
  and would leave the stem random without a word).
- The EfficientNet classification head (``_conv_head``, ``_bn1``, ``_fc``) that
  ``EfficientNetBNFeatures`` builds but never calls is removed from the encoder: it is 1.6 M unused
  parameters for B0, which would otherwise sit in every checkpoint and optimizer and make DDP
  complain about parameters without gradients.

Every network keeps FlexibleUNet's parameter names (``encoder.*``, ``decoder.*``,
``segmentation_head.*``), so ImageNet and LiTS weights map onto all of them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from monai.networks.layers.factories import Pool
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.efficientnet import EfficientNetBNFeatures
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from monai_liver.errors import LiverError

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_DECODER_CHANNELS",
    "BACKBONES",
    "ClassificationHead",
    "LiverUNet",
    "build_encoder",
    "build_unet",
    "check_backbone",
    "encoder_channels",
    "strip_encoder_head",
]

DEFAULT_BACKBONE = "efficientnet-b0"
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
#: EfficientNet modules that only the ImageNet classifier uses.
EFFICIENTNET_HEAD: tuple[str, ...] = ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc")
#: backbones FlexibleUNet knows (efficientnet-b0..b8, efficientnet-l2, resnet10..resnet200).
BACKBONES: tuple[str, ...] = tuple(FLEXUNET_BACKBONE.register_dict)


def check_backbone(backbone: str) -> str:
    """Return ``backbone`` if FlexibleUNet has it, else raise LiverError listing the choices."""
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        raise LiverError(f"backbone '{backbone}' is not available; choose one of {', '.join(BACKBONES)}")
    return backbone


def encoder_channels(backbone: str) -> tuple[int, ...]:
    """Channels of the encoder's 5 feature maps, shallow to deep (B0: 16, 24, 40, 112, 320)."""
    return tuple(FLEXUNET_BACKBONE.register_dict[check_backbone(backbone)]["feature_channel"])


def strip_encoder_head(encoder: nn.Module) -> nn.Module:
    """Delete the unused ImageNet classifier of an EfficientNet feature encoder (in place)."""
    if isinstance(encoder, EfficientNetBNFeatures):
        for name in EFFICIENTNET_HEAD:
            if hasattr(encoder, name):
                delattr(encoder, name)
    return encoder


def build_encoder(backbone: str = DEFAULT_BACKBONE, spatial_dims: int = 2, in_channels: int = 1) -> nn.Module:
    """The encoder FlexibleUNet would build, on its own: ``(B, in_channels, *S) -> list`` of 5
    feature maps, each half the spatial size of the previous one (the first is S / 2)."""
    entry = FLEXUNET_BACKBONE.register_dict[check_backbone(backbone)]
    params = dict(entry["parameter"])  # a copy: FlexibleUNet mutates the registry's dict
    params.update({"spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": False})
    return strip_encoder_head(entry["type"](**params))


class LiverUNet(FlexibleUNet):
    """FlexibleUNet without ImageNet loading and without the unused encoder head.

    ``forward(x: (B, in_channels, H, W)) -> (B, out_channels, H, W)`` logits, as FlexibleUNet.
    :meth:`features` and :meth:`decode` expose the two halves so that subclasses can reach the
    deepest encoder features without hooks.
    """

    def __init__(
        self,
        out_channels: int,
        backbone: str = DEFAULT_BACKBONE,
        spatial_dims: int = 2,
        in_channels: int = 1,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        check_backbone(backbone)
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=backbone,
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=spatial_dims,
        )
        strip_encoder_head(self.encoder)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_channels: tuple[int, ...] = encoder_channels(backbone)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps, shallow to deep; the last is the deepest (B0: 320 ch, S / 32)."""
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decoder + segmentation head: features -> ``(B, out_channels, *S)`` logits."""
        return self.segmentation_head(self.decoder(features, self.skip_connect))


def build_unet(
    out_channels: int,
    backbone: str = DEFAULT_BACKBONE,
    spatial_dims: int = 2,
    in_channels: int = 1,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
) -> LiverUNet:
    """A FlexibleUNet of this project (tensor output); see :class:`LiverUNet`."""
    return LiverUNet(out_channels, backbone, spatial_dims, in_channels, decoder_channels)


class ClassificationHead(nn.Module):
    """Global average pooling, optional hidden layer, dropout, linear: ``(B, C, *S) -> (B, n_classes)``.

    ``hidden=None`` gives pool + dropout + linear (the classification baseline); an integer gives
    pool + linear + ReLU + dropout + linear (the Y-Net branch).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        hidden: Optional[int] = None,
        dropout: float = 0.2,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.pool = Pool["adaptiveavg", spatial_dims](1)
        layers: list[nn.Module] = []
        width = in_channels
        if hidden:
            layers += [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Dropout(dropout), nn.Linear(width, n_classes)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(x), 1))
