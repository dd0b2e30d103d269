"""Strategy networks: output shapes, the joint vote, the Y-Net branch, the tensor wrapper."""

from __future__ import annotations

import json
import math

import pytest
import torch

from monai_liver.errors import LiverError
from monai_liver.networks.factory import build_network, seg_channels
from monai_liver.networks.joint import (
    joint_collapse,
    joint_lesion_probability,
    joint_vote,
    joint_vote_logits,
    lesion_mask,
)
from monai_liver.networks.wrapper import TensorOutput

torch.set_num_threads(1)
X = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "strategy, n_classes, seg, cls",
    [
        ("lits_pretrain", 3, 3, None),
        ("cls_baseline", 3, None, 3),
        ("seg_baseline", 3, 3, None),
        ("ynet", 4, 3, 4),
        ("joint", 4, 6, 4),
    ],
)
def test_forward_shapes(strategy, n_classes, seg, cls):
    torch.manual_seed(0)
    net = build_network(strategy, n_classes=n_classes).eval()
    with torch.no_grad():
        out = net(X)
    assert set(out) == {"seg", "cls"}
    if seg is None:
        assert out["seg"] is None and seg_channels(strategy, n_classes) == 0
    else:
        assert out["seg"].shape == (2, seg, 64, 64) and seg_channels(strategy, n_classes) == seg
    if cls is None:
        assert out["cls"] is None
    else:
        assert out["cls"].shape == (2, cls) and torch.isfinite(out["cls"]).all()


def test_encoder_names_shared_and_head_removed():
    cls_keys = {k for k in build_network("cls_baseline").state_dict() if k.startswith("encoder.")}
    seg_keys = {k for k in build_network("seg_baseline").state_dict() if k.startswith("encoder.")}
    assert cls_keys == seg_keys and "encoder._conv_stem.weight" in cls_keys
    assert not any(k.startswith(("encoder._fc", "encoder._conv_head", "encoder._bn1.")) for k in cls_keys)
    stem = build_network("cls_baseline").state_dict()["encoder._conv_stem.weight"]
    assert stem.shape == (32, 1, 3, 3)


@pytest.mark.parametrize(
    "kwargs, text",
    [({"strategy": "unet"}, "strategy 'unet'"), ({"strategy": "joint", "backbone": "vgg"}, "backbone 'vgg'")],
)
def test_bad_options_raise_liver_error(kwargs, text):
    with pytest.raises(LiverError, match=text):
        build_network(**kwargs)
    with pytest.raises(LiverError):
        seg_channels("unet")


def _logits(probs: list[list[float]], layout: list[list[int]]) -> torch.Tensor:
    """(1, C, H, W) logits whose softmax is exactly probs[layout[y][x]] at (y, x)."""
    table = torch.tensor(probs, dtype=torch.float64)
    idx = torch.tensor(layout)
    return torch.log(table[idx]).permute(2, 0, 1).unsqueeze(0)


def test_joint_vote_on_hand_made_logits():
    bg, a, b = [0.7, 0.2, 0.05, 0.03, 0.02], [0.1, 0.1, 0.5, 0.2, 0.1], [0.05, 0.05, 0.2, 0.6, 0.1]
    # slice 0: pixel a votes type 0, pixel b votes type 1, the rest is background (no vote)
    s0 = _logits([bg, a, b], [[1, 0, 0], [0, 0, 2], [0, 0, 0]])
    # slice 1: liver everywhere, no lesion pixel -> all pixels' type mass
    liver = [0.3, 0.6, 0.04, 0.05, 0.01]
    s1 = _logits([liver], [[0, 0, 0]] * 3)
    logits = torch.cat([s0, s1]).float()
    expected = torch.tensor([[0.7, 0.8, 0.2], [0.4, 0.5, 0.1]])
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(joint_vote(logits), expected, atol=1e-5)
    cls = joint_vote_logits(logits)
    assert torch.isfinite(cls).all()
    assert torch.allclose(torch.softmax(cls, 1), expected, atol=1e-5)
    assert joint_vote(logits)[0].argmax() == 1 and joint_vote(logits)[1].argmax() == 1
    mask = lesion_mask(logits)
    assert mask.shape == (2, 1, 3, 3) and mask.sum() == 2 and mask[0, 0, 0, 0] and mask[0, 0, 1, 2]
    assert torch.allclose(joint_lesion_probability(logits)[0, 0, 0, 0], torch.tensor(0.8))
    collapsed = joint_collapse(logits)
    assert collapsed.shape == (2, 3, 3, 3) and torch.allclose(collapsed.sum(1), torch.ones(2, 3, 3))
    # a type without any vote mass still gets a finite logit (CE stays finite) and ~0 probability
    none = torch.full((1, 5, 2, 2), -1e4)
    none[:, 2] = 5.0
    assert torch.isfinite(joint_vote_logits(none)).all()
    assert torch.allclose(joint_vote(none), torch.tensor([[1.0, 0.0, 0.0]]))


def test_joint_network_cls_is_the_vote_of_its_seg():
    torch.manual_seed(1)
    net = build_network("joint", n_classes=3).eval()
    with torch.no_grad():
        out = net(X)
    assert torch.allclose(out["cls"], joint_vote_logits(out["seg"]))
    assert torch.allclose(torch.softmax(out["cls"], 1).sum(1), torch.ones(2), atol=1e-5)


def test_ynet_branch_pools_encoder_features_where_its_segmentation_sees_the_lesion():
    from monai_liver.networks.ynet import LesionPooling, YNet

    torch.manual_seed(2)
    net = build_network("ynet").eval()
    assert net.cls_pool == "lesion" and net.cls_level == 1  # B0: S/4
    assert YNet(backbone="basicunet-small").cls_level == 2 and YNet(cls_stride=16).cls_level == 3
    seen = []
    net.cls_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        out = net(X)
        features = net.encoder(X)
        lesion = torch.softmax(out["seg"], 1)[:, 2:3]
        expected = LesionPooling()(features[1], lesion)
    assert features[1].shape[-1] == X.shape[-1] // 4
    assert len(seen) == 1 and seen[0].shape == (2, 2 * 24) and torch.allclose(seen[0], expected)
    with torch.no_grad():
        net.cls_head[-1].bias.add_(1.0)  # the branch changes cls only
        out2 = net(X)
    assert torch.equal(out2["seg"], out["seg"]) and torch.allclose(out2["cls"], out["cls"] + 1.0)

    # the weights are the lesion probability: features where no lesion is predicted do not count
    f = torch.zeros(1, 2, 4, 4)
    f[0, 0, 0, 0], f[0, 1, 3, 3] = 5.0, 7.0
    p = torch.zeros(1, 1, 8, 8)
    p[..., :2, :2] = 1.0  # lesion in the top-left cell of the 4 x 4 map
    pooled = LesionPooling(eps=0.0)(f, p)
    assert torch.allclose(pooled, torch.tensor([[5.0, 0.0, 5.0, 7.0]]))

    # Mehta et al.'s branch: the deepest features, global average pooling
    torch.manual_seed(2)
    mehta = YNet(cls_pool="global").eval()
    seen.clear()
    mehta.cls_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        mehta(X)
        assert seen[0].shape == (2, 320, 2, 2) and torch.equal(seen[0], mehta.encoder(X)[-1])
    with pytest.raises(LiverError, match="cls_pool 'max' is not known"):
        YNet(cls_pool="max")
    with pytest.raises(LiverError, match="cls_stride 3: the efficientnet-b0 encoder has levels at strides 2, 4, 8, 16, 32"):
        YNet(cls_stride=3)


def test_tensor_output_scripts_traces_and_keeps_checkpoint_keys(tmp_path):
    torch.manual_seed(3)
    net = build_network("joint", n_classes=3).eval()
    with torch.no_grad():
        ref = net(X)["seg"]
    wrapped = TensorOutput(net).eval()
    # same keys as the raw network: a training checkpoint {"model": net.state_dict()} loads as is
    assert list(wrapped.state_dict()) == list(net.state_dict())
    other = build_network("joint", n_classes=3)
    wrapped_other = TensorOutput(other).eval()
    wrapped_other.load_state_dict(net.state_dict())
    scripted = torch.jit.script(wrapped)
    traced = torch.jit.trace(wrapped, X)
    torch.jit.save(scripted, str(tmp_path / "joint.ts"))
    loaded = torch.jit.load(str(tmp_path / "joint.ts"))
    with torch.no_grad():
        assert torch.allclose(wrapped(X), ref, atol=1e-5)
        assert torch.allclose(wrapped_other(X), ref, atol=1e-5)
        assert torch.allclose(scripted(X), ref, atol=1e-5)
        assert torch.allclose(traced(X), ref, atol=1e-5)
        assert torch.allclose(loaded(X), ref, atol=1e-5)


def test_tensor_output_of_cls_baseline_returns_class_logits():
    torch.manual_seed(4)
    net = build_network("cls_baseline", n_classes=3).eval()
    wrapped = TensorOutput(net).eval()
    traced = torch.jit.trace(wrapped, X)
    with torch.no_grad():
        assert wrapped(X).shape == (2, 3)
        assert torch.allclose(traced(X), net(X)["cls"], atol=1e-5)


def _bundle_files(tmp_path, strategy: str, channels: int):
    config = {
        "network_def": {
            "_target_": "monai_liver.networks.wrapper.TensorOutput",
            "net": {"_target_": "monai_liver.networks.factory.build_network", "strategy": strategy, "n_classes": 3},
        }
    }
    meta = {
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [64, 64], "dtype": "float32"}},
            "outputs": {
                "pred": {"type": "image", "num_channels": channels, "spatial_shape": [64, 64], "dtype": "float32"}
            },
        }
    }
    (tmp_path / "inference.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    return str(tmp_path / "inference.json"), str(tmp_path / "metadata.json")


def test_verify_net_in_out_accepts_the_wrapper(tmp_path):
    from monai.bundle import verify_net_in_out

    config, meta = _bundle_files(tmp_path, "joint", seg_channels("joint", 3))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu")
    config, meta = _bundle_files(tmp_path, "joint", 3)  # wrong channel count must be caught
    with pytest.raises(ValueError, match="channel"):
        verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu")


def test_no_unused_parameters_in_training():
    """Every parameter gets a gradient (DDP without find_unused_parameters)."""
    torch.manual_seed(5)
    net = build_network("ynet").train()
    out = net(X)
    (out["seg"].mean() + out["cls"].mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert missing == []
    assert math.isfinite(float(out["seg"].mean()))


@pytest.mark.parametrize("backbone", ["basicunet", "basicunet-small"])
@pytest.mark.parametrize("strategy", ["lits_pretrain", "cls_baseline", "seg_baseline", "ynet", "joint"])
def test_basicunet_backbone_in_every_strategy(strategy, backbone):
    """MONAI's BasicUNet as a backbone of the one family: same output contract, FlexibleUNet's
    parameter names, and the LiTS mapping onto every strategy."""
    from monai.networks.nets import BasicUNet

    from monai_liver.networks.backbone import BASIC_UNETS
    from monai_liver.networks.factory import build_network, seg_channels
    from monai_liver.networks.init import initialise

    net = build_network(strategy, n_classes=3, backbone=backbone).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    c = seg_channels(strategy, 3)
    assert (out["seg"] is None) == (c == 0) and (c == 0 or out["seg"].shape == (2, c, 64, 64))
    assert (out["cls"] is None) == (strategy in ("lits_pretrain", "seg_baseline"))
    keys = net.state_dict().keys()
    assert all(k.split(".")[0] in ("encoder", "decoder", "segmentation_head", "cls_head") for k in keys)
    if c:  # the U-Nets hold exactly MONAI's BasicUNet (no parameter added or lost)
        n_ref = sum(p.numel() for p in BasicUNet(2, 1, c, features=BASIC_UNETS[backbone]).parameters())
        n_unet = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("cls_head"))
        assert n_unet == n_ref
    lits = build_network("lits_pretrain", backbone=backbone)
    counts = initialise(net, "lits", lits_checkpoint=_save(lits))
    # every encoder tensor, but the BatchNorms of the classification baseline (instance norms in lits_pretrain)
    norms = {n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bool(norms) == (strategy == "cls_baseline")
    assert counts["loaded"] >= sum(1 for k in keys if k.startswith("encoder.") and not k.endswith("num_batches_tracked")
                                   and k.rsplit(".", 1)[0] not in norms) > 0


def _save(net):
    import tempfile

    path = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
    torch.save({"model": net.state_dict()}, path)
    return path


def test_imagenet_init_refused_for_basicunet():
    from monai_liver.errors import LiverError
    from monai_liver.networks.factory import build_network
    from monai_liver.networks.init import has_imagenet_weights, initialise

    assert has_imagenet_weights("efficientnet-b0") and not has_imagenet_weights("basicunet")
    with pytest.raises(LiverError, match="no ImageNet weights exist for it"):
        initialise(build_network("joint", backbone="basicunet"), "imagenet", download=False)
