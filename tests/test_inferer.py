"""Test-time flip averaging (monai_liver.engine.inferer): the held-out evaluation of every bundle and
the volume predictor average the same four flips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from monai_liver.engine.inferer import FLIPS, FlipAverageInferer, flip_averaged_probabilities


class _SegCls(nn.Module):
    """A network that is not flip-equivariant: a 3x3 convolution (seg) and a linear on its
    flattened map (cls)."""

    def __init__(self, size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * size * size, 4)

    def forward(self, x):
        seg = self.conv(x)
        return {"seg": seg, "cls": self.fc(seg.flatten(1))}


def test_flip_average_is_the_mean_probability_over_the_four_flips():
    torch.manual_seed(0)
    net, x = _SegCls().eval(), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        out = FlipAverageInferer()(x, net)
        seg = sum(torch.flip(torch.softmax(net(torch.flip(x, a))["seg"], 1), a) for a in FLIPS) / 4
        cls = sum(torch.softmax(net(torch.flip(x, a))["cls"], 1) for a in FLIPS) / 4
        plain = net(x)
    assert len(FLIPS) == 4 and set(FLIPS) == {(), (2,), (3,), (2, 3)}
    # the inferer returns log-probabilities: a softmax or an argmax downstream reads the averaged probabilities
    assert torch.allclose(torch.softmax(out["seg"], 1), seg, atol=1e-6)
    assert torch.allclose(torch.softmax(out["cls"], 1), cls, atol=1e-6)
    assert not torch.allclose(torch.softmax(plain["cls"], 1), cls, atol=1e-3)  # the flips do change this network
    one = flip_averaged_probabilities(net, x, ((),))
    assert torch.allclose(one["cls"], torch.softmax(plain["cls"], 1))


def test_a_missing_output_stays_none():
    net = lambda x: {"seg": None, "cls": x.mean((2, 3)).repeat(1, 3)}  # noqa: E731
    out = FlipAverageInferer()(torch.randn(2, 1, 8, 8), net)
    assert out["seg"] is None and out["cls"].shape == (2, 3)


@pytest.mark.parametrize("flip_average, kind", [(True, FlipAverageInferer), (False, None)])
def test_every_bundles_held_out_evaluation_flip_averages(tmp_path, flip_average, kind):
    """``evaluate.json`` replaces the validation inferer by :class:`FlipAverageInferer`
    (``flip_average``, default true); the in-training validation keeps one pass."""
    from monai.bundle import ConfigParser
    from monai.inferers import SimpleInferer

    bundles = Path(__file__).resolve().parents[1] / "bundles"
    for bundle in ("cls_baseline", "seg_baseline", "ynet", "joint", "lits_pretrain"):
        configs = bundles / bundle / "configs"
        parser = ConfigParser()
        parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
        parser.update({"bundle_root": str(configs.parent), "output_dir": str(tmp_path), "flip_average": flip_average})
        assert type(parser.get_parsed_content("validate#inferer")) is (kind or SimpleInferer), bundle
        train_only = ConfigParser()
        train_only.read_config(str(configs / "train.json"))
        assert type(train_only.get_parsed_content("validate#inferer")) is SimpleInferer
