"""What a strategy is, in one place: one frozen record per strategy and one registry.

Every module asks the registry (:func:`get`) rather than keeping its own list: the network factory
(how to build it), the loss (a segmentation term, a class-head term, their weights), the
validation metrics (which key metric picks ``model.pt``), the transforms (does the target keep one
channel per lesion type), inference (does it segment), the results table (row name, does it
classify). Adding a strategy is one :class:`Strategy` record passed to :func:`register` plus its
network module (see ``docs/architecture.md``); ``tests/test_strategies.py`` registers a toy one.

=============  ============  ==========  ==========  ==============  ==========
strategy       segmentation  class head  class vote  key metric      cls_weight
=============  ============  ==========  ==========  ==============  ==========
lits_pretrain  lesion        no          no          val_dice        0
cls_baseline   none          yes         no          val_acc         1
seg_baseline   lesion        no          no          val_dice        0
ynet           lesion        yes         no          val_dice_acc    0.5
joint          types         no          yes         val_dice_acc    0
=============  ============  ==========  ==========  ==============  ==========

``segmentation``: ``"none"``; ``"lesion"``: background, liver, lesion (3 channels); ``"types"``:
background, liver, one channel per lesion type (the lesion mask is their union, the slice class the
vote of the lesion pixels). The classification baseline alone sees only the liver of its ROI
(``liver_only_input``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monai_liver.errors import LiverError

__all__ = ["Strategy", "get", "names", "paper_strategies", "register", "unregister"]

_SEGMENTATIONS = ("none", "lesion", "types")


@dataclass(frozen=True)
class Strategy:
    """One training strategy.

    Args:
        name: the id used everywhere (bundle name, CLI, run folders).
        title: the results table's row name.
        segmentation: ``"none"``, ``"lesion"`` or ``"types"`` (module doc).
        class_head: trained with cross-entropy on an image-level class head.
        key_metric: validation metric that selects ``model.pt`` (``val_dice``, ``val_acc``, ``val_dice_acc``).
        cls_weight: weight of the class-head term in the loss (the bundle's default ``cls_weight``).
        network: ``"module:Class"``; the class takes any of the keywords of :meth:`build` and maps
            ``(B, C, H, W)`` to ``{"seg": logits or None, "cls": logits or None}``.
        paper_row: a row of the paper's table (False for the LiTS pretraining).
        liver_only_input: the network sees only the liver of its ROI, the rest of the crop set to
            the liver's median (:class:`monai_liver.transforms.FillOutsideLiverd`): the
            classification baseline, which has no pixel labels to tell it where to look.
    """

    name: str
    title: str
    segmentation: str
    class_head: bool
    key_metric: str
    cls_weight: float
    network: str
    paper_row: bool = True
    liver_only_input: bool = False

    def __post_init__(self) -> None:
        if self.segmentation not in _SEGMENTATIONS:
            raise LiverError(f"strategy {self.name}: segmentation '{self.segmentation}' is not one of {', '.join(_SEGMENTATIONS)}")
        if self.segmentation == "none" and not self.class_head:
            raise LiverError(f"strategy {self.name}: it neither segments nor has a class head")

    @property
    def segments(self) -> bool:
        """Whether the network predicts a lesion mask."""
        return self.segmentation != "none"

    @property
    def votes(self) -> bool:
        """Whether the slice class is the vote of the lesion-type pixels."""
        return self.segmentation == "types"

    @property
    def classifies(self) -> bool:
        """Whether the strategy predicts a slice class (a head or the vote)."""
        return self.class_head or self.votes

    def seg_channels(self, n_classes: int) -> int:
        """Segmentation output channels: 0, 3 (background, liver, lesion) or 2 + n_classes."""
        return {"none": 0, "lesion": 3, "types": 2 + int(n_classes)}[self.segmentation]

    def channel_names(self, class_names) -> list[str]:
        """Names of the segmentation output channels."""
        if self.segmentation == "none":
            return []
        if self.segmentation == "types":
            return ["background", "liver", *[str(c) for c in class_names]]
        return ["background", "liver", "lesion"]

    def build(self, **kwargs: Any):
        """The network: ``network``'s class called with those of ``kwargs`` its constructor takes
        (``n_classes``, ``backbone``, ``spatial_dims``, ``in_channels``, ``decoder_channels``, ``dropout``)."""
        import importlib
        import inspect

        module, _, name = self.network.partition(":")
        cls = getattr(importlib.import_module(module), name)
        accepted = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in kwargs.items() if k in accepted})


_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add (or replace) ``strategy`` in the registry; returns it."""
    _REGISTRY[strategy.name] = strategy
    return strategy


def unregister(name: str) -> None:
    """Remove a registered strategy (tests register toy ones)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Strategy:
    """The record of ``name``; LiverError naming the known ones otherwise."""
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        raise LiverError(f"strategy '{name}' is not known; choose one of {', '.join(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """Every registered strategy, the LiTS pretraining first."""
    return tuple(_REGISTRY)


def paper_strategies() -> tuple[str, ...]:
    """The strategies of the paper's table, in its row order."""
    return tuple(s.name for s in _REGISTRY.values() if s.paper_row)


register(Strategy("lits_pretrain", "LiTS pretraining", "lesion", False, "val_dice", 0.0,
                  "monai_liver.networks.seg_baseline:SegBaseline", paper_row=False))
register(Strategy("cls_baseline", "Classification baseline", "none", True, "val_acc", 1.0,
                  "monai_liver.networks.cls_baseline:ClsBaseline", liver_only_input=True))
register(Strategy("seg_baseline", "Segmentation baseline", "lesion", False, "val_dice", 0.0,
                  "monai_liver.networks.seg_baseline:SegBaseline"))
register(Strategy("ynet", "Multi-task (Y-Net)", "lesion", True, "val_dice_acc", 0.5,
                  "monai_liver.networks.ynet:YNet"))
register(Strategy("joint", "Joint learning", "types", False, "val_dice_acc", 0.0,
                  "monai_liver.networks.joint:JointNet"))
