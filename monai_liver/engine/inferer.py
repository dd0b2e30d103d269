"""Test-time flip averaging: the network's class and segmentation probabilities averaged over the
four flips of the two image axes, the flips the bundles train with (``PrepareBatchSegCls``).

:func:`flip_averaged_probabilities` is the one implementation; the volume predictor
(:mod:`monai_liver.inference.predictor`) and the bundles' held-out evaluation
(:class:`FlipAverageInferer`, ``evaluate.json``) both call it, so the table measures the models as
``infer`` runs them. MONAI's ``TestTimeAugmentation`` draws random invertible transforms per item
and returns a mode / variance per item: more than four fixed flips of a batch need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["FLIPS", "FlipAverageInferer", "flip_averaged_probabilities"]

#: tensor axes of (B, C, H, W) flipped, one pass each: none, H, W, both
FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))


def flip_averaged_probabilities(network: Callable[[torch.Tensor], dict], x: torch.Tensor,
                                flips: Sequence[Sequence[int]] = FLIPS) -> dict[str, torch.Tensor | None]:
    """Mean softmax (float32) of each output of ``network`` over ``flips`` of ``x`` (B, C, H, W), a
    segmentation (B, K, H, W) flipped back before it is added; ``{"seg": ..., "cls": ...}``, an
    output the network does not give stays None."""
    total: dict[str, Any] = {}
    for axes in flips:
        axes = tuple(axes)
        out = network(torch.flip(x, axes) if axes else x)
        for key in ("seg", "cls"):
            logits = out.get(key)
            if logits is None:
                total.setdefault(key, None)
                continue
            prob = torch.softmax(logits.float(), dim=1)
            if key == "seg" and axes:
                prob = torch.flip(prob, axes)
            total[key] = prob if total.get(key) is None else total[key] + prob
    return {k: None if v is None else v / len(flips) for k, v in total.items()}


class FlipAverageInferer(Inferer):
    """``SimpleInferer`` with test-time flip averaging, for a network that returns ``{"seg", "cls"}``
    logits: returns the same dict holding the log of the flip-averaged probabilities, so every
    metric that takes a softmax or an argmax of logits reads the averaged probabilities."""

    def __init__(self, flips: Sequence[Sequence[int]] = FLIPS) -> None:
        super().__init__()
        self.flips = tuple(tuple(a) for a in flips)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> dict:
        prob = flip_averaged_probabilities(lambda x: network(x, *args, **kwargs), inputs, self.flips)
        return {k: None if v is None else torch.log(v.clamp_min(1e-12)) for k, v in prob.items()}
