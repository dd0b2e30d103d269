"""The strategy registry: every module reads it, and a new strategy is one record plus a network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_liver import strategies
from monai_liver.errors import LiverError


class ToyNet(nn.Module):
    """A tiny segmenting network with a class head: ``{"seg": (B, 3, H, W), "cls": (B, K)}``."""

    def __init__(self, n_classes: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        self.seg = nn.Conv2d(in_channels, 3, 1)
        self.cls = nn.Linear(in_channels, n_classes)

    def forward(self, x):
        return {"seg": self.seg(x), "cls": self.cls(x.mean((2, 3)))}


@pytest.fixture
def toy():
    record = strategies.register(strategies.Strategy(
        "toy", "Toy strategy", "lesion", True, "val_dice_acc", 0.25, "test_strategies:ToyNet", paper_row=False))
    yield record
    strategies.unregister("toy")


def test_builtin_records():
    assert strategies.paper_strategies() == ("cls_baseline", "seg_baseline", "ynet", "joint")
    from monai_liver.constants import STRATEGIES
    from monai_liver.experiment.paper import STRATEGY_TITLES

    assert STRATEGIES == strategies.paper_strategies()
    assert STRATEGY_TITLES["joint"] == "Joint learning"
    joint = strategies.get("joint")
    assert joint.votes and joint.classifies and not joint.class_head and joint.seg_channels(3) == 5
    assert strategies.get("cls_baseline").seg_channels(3) == 0 and not strategies.get("cls_baseline").segments
    with pytest.raises(LiverError, match="strategy 'nope' is not known; choose one of lits_pretrain"):
        strategies.get("nope")
    with pytest.raises(LiverError, match="neither segments nor has a class head"):
        strategies.Strategy("bad", "Bad", "none", False, "val_acc", 0.0, "x:Y")


def test_a_registered_strategy_goes_through_every_module(toy):
    from monai_liver.engine import has_class, has_seg
    from monai_liver.engine.loss import MultiTaskLoss
    from monai_liver.engine.metrics import key_metric_name, validation_metrics
    from monai_liver.model_package import segmentation_channels
    from monai_liver.networks.factory import build_network, seg_channels
    from monai_liver.transforms import StrategyTargetd

    net = build_network("toy", n_classes=3, backbone="basicunet")
    assert isinstance(net, ToyNet) and seg_channels("toy") == 3
    assert has_seg("toy") and has_class("toy") and key_metric_name("toy") == "val_dice_acc"
    key, extra = validation_metrics("toy", 3)
    assert list(key) == ["val_dice_acc"] and "val_acc" in extra and "val_dice" in extra
    out = net(torch.rand(2, 1, 8, 8))
    loss = MultiTaskLoss("toy", cls_weight=toy.cls_weight)
    target = {"seg": torch.randint(0, 3, (2, 1, 8, 8)), "cls": torch.tensor([0, 2])}
    assert loss.use_seg and loss.use_cls and torch.isfinite(loss(out, target))
    item = StrategyTargetd("toy")({"seg": torch.tensor([[[0, 1], [3, 4]]]), "cls": 1})
    assert item["seg"].max() == 2  # types collapsed to one lesion channel, as for any "lesion" strategy
    assert segmentation_channels("toy", ["a"]) == ["background", "liver", "lesion"]
