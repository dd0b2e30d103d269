"""Joint learning: a U-Net whose output classes are the lesion types (pixel-wise classification).

Channels: 0 background, 1 liver, 2 + k lesion of type k. The lesion mask is the union of the type
channels; the slice class is a vote of the predicted lesion pixels (our reading of Heker &
Greenspan 2020, after the pixel-wise classifier of Heker, Ben-Cohen & Greenspan 2019).

The helpers below work on any ``(B, C, *S)`` segmentation logits with channels 0 background,
1 liver, 2.. lesion, so they also serve the 3-channel networks (C = 3: one "type").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, Optional

import torch

from monai_liver.networks.backbone import DEFAULT_BACKBONE, DEFAULT_DECODER_CHANNELS, LiverUNet
from monai_liver.networks.ops import channel_argmax

__all__ = [
    "JointNet",
    "joint_collapse",
    "joint_lesion_probability",
    "joint_vote",
    "joint_vote_logits",
    "lesion_mask",
]

def _type_mass(seg_logits: torch.Tensor) -> torch.Tensor:
    """(B, 2 + K, *S) logits -> (B, K) probability mass per lesion type over the voting pixels.

    Voting pixels: those whose argmax is a lesion type; for a slice where no pixel is predicted
    lesion, all pixels (so every slice gets a class).
    """
    prob = torch.softmax(seg_logits.float(), dim=1)
    types = torch.flatten(prob[:, 2:], start_dim=2)  # (B, K, N)
    voting = (torch.flatten(channel_argmax(prob, dim=1), start_dim=1) >= 2).unsqueeze(1)  # (B, 1, N)
    mass_lesion = (types * voting.to(types.dtype)).sum(dim=2)
    mass_all = types.sum(dim=2)
    has_lesion = voting.flatten(start_dim=1).any(dim=1, keepdim=True)  # (B, 1)
    return torch.where(has_lesion, mass_lesion, mass_all)


def joint_vote(seg_logits: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """(B, 2 + K, *S) logits -> (B, K) vote fractions (rows sum to 1)."""
    mass = _type_mass(seg_logits)
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(eps)


def joint_vote_logits(seg_logits: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """(B, 2 + K, *S) logits -> (B, K) class logits with ``softmax(logits) == joint_vote(seg_logits)``
    (log of the normalised mass; ``eps`` floors the mass so that a type without votes gets a finite
    logit, log(1e-30) = -69, instead of -inf)."""
    mass = _type_mass(seg_logits)
    total = mass.sum(dim=1, keepdim=True)
    return torch.log(mass.clamp_min(eps)) - torch.log(total.clamp_min(eps))


def joint_lesion_probability(seg_logits: torch.Tensor) -> torch.Tensor:
    """(B, 2 + K, *S) logits -> (B, 1, *S) lesion probability (sum of the type probabilities)."""
    return torch.softmax(seg_logits.float(), dim=1)[:, 2:].sum(dim=1, keepdim=True)


def joint_collapse(seg_logits: torch.Tensor) -> torch.Tensor:
    """(B, 2 + K, *S) logits -> (B, 3, *S) probabilities (background, liver, any lesion)."""
    prob = torch.softmax(seg_logits.float(), dim=1)
    return torch.cat([prob[:, :2], prob[:, 2:].sum(dim=1, keepdim=True)], dim=1)


def lesion_mask(seg_logits: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) logits -> (B, 1, *S) bool: pixels whose argmax is a lesion channel (>= 2).

    For the joint network this is the union of the type channels; for 3-channel networks it is
    argmax == 2.
    """
    return channel_argmax(seg_logits, dim=1, keepdim=True) >= 2


class JointNet(LiverUNet):
    """FlexibleUNet with 2 + K channels (background, liver, one per lesion type).

    ``forward(x: (B, in_channels, H, W)) -> {"seg": (B, 2 + K, H, W) logits,
    "cls": (B, K) = joint_vote_logits(seg)}``. ``cls`` is derived from ``seg`` (argmax voting), so it
    is meant for prediction and metrics; train the joint network with the segmentation loss.
    """

    primary_output = "seg"

    def __init__(
        self,
        n_classes: int = 3,
        backbone: str = DEFAULT_BACKBONE,
        spatial_dims: int = 2,
        in_channels: int = 1,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ) -> None:
        super().__init__(2 + n_classes, backbone, spatial_dims, in_channels, decoder_channels)
        self.n_classes = n_classes

    def forward(self, inputs: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        seg = self.decode(self.features(inputs))
        out: Dict[str, Optional[torch.Tensor]] = {"seg": seg, "cls": joint_vote_logits(seg)}
        return out
