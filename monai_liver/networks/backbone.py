"""The one encoder/decoder family every strategy network is built from.

Two kinds of backbone, one interface (``encoder``: image -> 5 feature maps, shallow to deep;
``decoder`` + ``segmentation_head``: feature maps -> logits):

- MONAI's :class:`~monai.networks.nets.FlexibleUNet` backbones (EfficientNet, ResNet: the
  encoders MONAI has ImageNet weights for; ``--full`` default ``efficientnet-b0``);
- ``basicunet``: MONAI's :class:`~monai.networks.nets.BasicUNet` (features 16..256, instance
  norm, about 2 M parameters), split into its contracting and expanding paths; ``basicunet-small``
  the same with features 16..128 (0.5 M parameters). It learns several
  times more per CPU-second than EfficientNet-B0 on small batches (no BatchNorm statistics to
  settle, no depthwise convolutions; see ``benchmarks/bench_learning.py``): the quick preset's
  backbone (``basicunet-small``). No ImageNet weights exist for them.

The FlexibleUNet backbones are used as MONAI builds them, with two changes made here once:

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
from monai.networks.nets import BasicUNet, FlexibleUNet
from monai.networks.nets.efficientnet import EfficientNetBNFeatures
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from monai_liver.errors import LiverError

__all__ = [
    "DEFAULT_BACKBONE",
    "DEFAULT_DECODER_CHANNELS",
    "BACKBONES",
    "ClassificationHead",
    "mlp",
    "LiverUNet",
    "build_encoder",
    "build_unet",
    "check_backbone",
    "encoder_channels",
    "encoder_strides",
    "strip_encoder_head",
]

DEFAULT_BACKBONE = "efficientnet-b0"
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (256, 128, 64, 32, 16)
#: EfficientNet modules that only the ImageNet classifier uses.
EFFICIENTNET_HEAD: tuple[str, ...] = ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc")
#: MONAI's BasicUNet as backbone names, and their features (5 encoder levels + the last decoder
#: level): ``basicunet`` (1.9 M parameters) and ``basicunet-small`` (half the channels of the three
#: deepest levels, 0.5 M parameters, about 2x the training slices/s at 64 px on a 2-core CPU).
BASIC_UNET = "basicunet"
BASIC_UNETS: dict[str, tuple[int, ...]] = {
    BASIC_UNET: (16, 32, 64, 128, 256, 16),
    "basicunet-small": (16, 16, 32, 64, 128, 16),
}
BASIC_UNET_FEATURES: tuple[int, ...] = BASIC_UNETS[BASIC_UNET]
#: backbones: FlexibleUNet's (efficientnet-b0..b8, efficientnet-l2, resnet10..resnet200) and the basicunets.
BACKBONES: tuple[str, ...] = (*FLEXUNET_BACKBONE.register_dict, *BASIC_UNETS)


def check_backbone(backbone: str) -> str:
    """Return ``backbone`` if it is one of :data:`BACKBONES`, else raise LiverError listing the choices."""
    if backbone not in BACKBONES:
        raise LiverError(f"backbone '{backbone}' is not available; choose one of {', '.join(BACKBONES)}")
    return backbone


def encoder_channels(backbone: str) -> tuple[int, ...]:
    """Channels of the encoder's 5 feature maps, shallow to deep (B0: 16, 24, 40, 112, 320;
    basicunet: 16, 32, 64, 128, 256)."""
    if check_backbone(backbone) in BASIC_UNETS:
        return BASIC_UNETS[backbone][:5]
    return tuple(FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"])


def encoder_strides(backbone: str) -> tuple[int, ...]:
    """Downsampling of the encoder's 5 feature maps against the input, shallow to deep (FlexibleUNet
    encoders: 2, 4, 8, 16, 32; basicunet: 1, 2, 4, 8, 16)."""
    return (1, 2, 4, 8, 16) if check_backbone(backbone) in BASIC_UNETS else (2, 4, 8, 16, 32)


class BasicUNetEncoder(nn.Module):
    """BasicUNet's contracting path: ``(B, C, *S) -> [x0 (S), x1 (S/2), x2 (S/4), x3 (S/8), x4 (S/16)]``."""

    def __init__(self, unet: BasicUNet) -> None:
        super().__init__()
        self.conv_0, self.down_1, self.down_2, self.down_3, self.down_4 = (
            unet.conv_0, unet.down_1, unet.down_2, unet.down_3, unet.down_4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return [x0, x1, x2, x3, self.down_4(x3)]


class BasicUNetDecoder(nn.Module):
    """BasicUNet's expanding path: the encoder's 5 feature maps -> ``(B, features[5], *S)``."""

    def __init__(self, unet: BasicUNet) -> None:
        super().__init__()
        self.upcat_4, self.upcat_3, self.upcat_2, self.upcat_1 = unet.upcat_4, unet.upcat_3, unet.upcat_2, unet.upcat_1

    def forward(self, features: list[torch.Tensor], skip_connect: int = 4) -> torch.Tensor:
        x0, x1, x2, x3, x4 = features
        return self.upcat_1(self.upcat_2(self.upcat_3(self.upcat_4(x4, x3), x2), x1), x0)


def _basic_unet(backbone: str, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None = None) -> BasicUNet:
    extra = {} if norm is None else {"norm": norm}
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=max(1, out_channels),
                     features=BASIC_UNETS[backbone], **extra)


def strip_encoder_head(encoder: nn.Module) -> nn.Module:
    """Delete the unused ImageNet classifier of an EfficientNet feature encoder (in place)."""
    if isinstance(encoder, EfficientNetBNFeatures):
        for name in EFFICIENTNET_HEAD:
            if hasattr(encoder, name):
                delattr(encoder, name)
    return encoder


def build_encoder(backbone: str = DEFAULT_BACKBONE, spatial_dims: int = 2, in_channels: int = 1,
                  norm: str | None = None) -> nn.Module:
    """The encoder of ``backbone``'s U-Net, on its own: ``(B, in_channels, *S) -> list`` of 5
    feature maps, each half the spatial size of the previous one (the first is S / 2 for
    FlexibleUNet backbones, S for basicunet). ``norm``: the basicunets' normalisation (MONAI's name,
    e.g. ``"batch"``; None: BasicUNet's instance norm); the FlexibleUNet encoders keep their BatchNorm."""
    if check_backbone(backbone) in BASIC_UNETS:
        return BasicUNetEncoder(_basic_unet(backbone, spatial_dims, in_channels, 1, norm))
    entry = FLEXUNET_BACKBONE.register_dict[backbone]
    params = dict(entry["parameter"])  # a copy: FlexibleUNet mutates the registry's dict
    params.update({"spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": False})
    return strip_encoder_head(entry["type"](**params))


class LiverUNet(nn.Module):
    """A U-Net of the family: FlexibleUNet (without ImageNet loading and without the unused encoder
    head) or BasicUNet, under FlexibleUNet's parameter names (``encoder.*``, ``decoder.*``,
    ``segmentation_head.*``).

    ``forward(x: (B, in_channels, H, W)) -> (B, out_channels, H, W)`` logits.
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
        super().__init__()
        check_backbone(backbone)
        if backbone in BASIC_UNETS:
            unet = _basic_unet(backbone, spatial_dims, in_channels, out_channels)
            self.encoder: nn.Module = BasicUNetEncoder(unet)
            self.decoder: nn.Module = BasicUNetDecoder(unet)
            self.segmentation_head: nn.Module = unet.final_conv
            self.skip_connect = 4
        else:
            flex = FlexibleUNet(
                in_channels=in_channels,
                out_channels=out_channels,
                backbone=backbone,
                pretrained=False,
                decoder_channels=tuple(decoder_channels),
                spatial_dims=spatial_dims,
            )
            self.encoder = strip_encoder_head(flex.encoder)
            self.decoder = flex.decoder
            self.segmentation_head = flex.segmentation_head
            self.skip_connect = flex.skip_connect
        self.backbone = backbone
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.feature_channels: tuple[int, ...] = encoder_channels(backbone)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps, shallow to deep; the last is the deepest (B0: 320 ch, S / 32)."""
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Decoder + segmentation head: features -> ``(B, out_channels, *S)`` logits."""
        return self.segmentation_head(self.decoder(features, self.skip_connect))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.decode(self.features(inputs))


def build_unet(
    out_channels: int,
    backbone: str = DEFAULT_BACKBONE,
    spatial_dims: int = 2,
    in_channels: int = 1,
    decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
) -> LiverUNet:
    """A FlexibleUNet of this project (tensor output); see :class:`LiverUNet`."""
    return LiverUNet(out_channels, backbone, spatial_dims, in_channels, decoder_channels)


#: global pooling of a classification head: ``avg``, ``max`` or ``avgmax`` (both, concatenated).
POOLINGS: tuple[str, ...] = ("avg", "max", "avgmax")
DEFAULT_POOLING = "avg"


def mlp(width: int, n_classes: int, hidden: Optional[int] = None, dropout: float = 0.2) -> nn.Sequential:
    """``(B, width) -> (B, n_classes)``: dropout + linear, or linear + ReLU + dropout + linear with ``hidden``."""
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers += [nn.Dropout(dropout), nn.Linear(width, n_classes)]
    return nn.Sequential(*layers)


class ClassificationHead(nn.Module):
    """Global pooling, optional hidden layer, dropout, linear: ``(B, C, *S) -> (B, n_classes)``.

    ``hidden=None`` gives pool + dropout + linear (the classification baseline); an integer gives
    pool + linear + ReLU + dropout + linear (the Y-Net branch). ``pool="max"`` or ``"avgmax"``
    (average and max concatenated, 2C features) keep a small lesion's strongest response, which
    average pooling dilutes with the liver around it; on the quick demo's phantoms neither moved the
    held-out accuracy off the majority class in a 30 s budget (README), so ``avg`` stays the default.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        hidden: Optional[int] = None,
        dropout: float = 0.2,
        spatial_dims: int = 2,
        pool: str = DEFAULT_POOLING,
    ) -> None:
        super().__init__()
        if pool not in POOLINGS:
            raise LiverError(f"pooling '{pool}' is not known; choose one of {', '.join(POOLINGS)}")
        self.pool_avg = Pool["adaptiveavg", spatial_dims](1) if pool in ("avg", "avgmax") else None
        self.pool_max = Pool["adaptivemax", spatial_dims](1) if pool in ("max", "avgmax") else None
        self.mlp = mlp(in_channels * (2 if pool == "avgmax" else 1), n_classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [torch.flatten(p(x), 1) for p in (self.pool_avg, self.pool_max) if p is not None]
        return self.mlp(pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1))
