"""Weight initialisation: ImageNet (file, hub cache, offline error), LiTS, unsafe and wrong files."""

from __future__ import annotations

import logging
import os
import re
import urllib.error

import pytest
import torch
from monai.networks.nets import EfficientNetBN

from monai_liver.errors import LiverError
from monai_liver.networks.factory import build_network
from monai_liver.networks.init import imagenet_cache_path, imagenet_file_name, initialise, initialised
from monai_liver.networks.wrapper import TensorOutput

torch.set_num_threads(1)
#: the classifier tensors of an EfficientNet ImageNet file that no encoder uses
IMAGENET_HEAD = {
    "_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean", "_bn1.running_var", "_fc.weight", "_fc.bias"
}


def _flat(key: str) -> str:
    """MONAI EfficientNet key -> EfficientNet-PyTorch key (the naming of the real ImageNet files)."""
    return re.sub(r"(.+)\.\d+(\.\d+\..+)", r"\1\2", key)


@pytest.fixture(scope="module")
def imagenet_sd() -> dict[str, torch.Tensor]:
    """A random RGB EfficientNet-B0 in the naming of MONAI's ImageNet file (no batch counters)."""
    torch.manual_seed(123)
    model = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3)
    with torch.no_grad():  # BN statistics are loaded too: make them differ from the defaults
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    return {_flat(k): v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture()
def imagenet_file(tmp_path, imagenet_sd):
    path = tmp_path / imagenet_file_name("efficientnet-b0")
    torch.save(imagenet_sd, path)
    return path


@pytest.fixture()
def no_download(monkeypatch):
    """Fail any download attempt, as on a machine without network."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return calls


def _check_encoder_equals_file(net, sd):
    state = net.state_dict()
    keys = [k for k in state if k.startswith("encoder.") and not k.endswith("num_batches_tracked")]
    assert len(keys) == len(sd) - len(IMAGENET_HEAD) == 304
    for key in keys:
        name = key[len("encoder.") :]
        if name == "_conv_stem.weight":
            assert state[key].shape == (32, 1, 3, 3)
            assert torch.allclose(state[key], sd[name].sum(dim=1, keepdim=True))
        else:
            assert torch.equal(state[key], sd[_flat(name)]), key


def test_imagenet_from_explicit_file(imagenet_file, imagenet_sd, no_download, caplog):
    torch.manual_seed(0)
    net = build_network("joint")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="monai_liver.networks.init"):
        counts = initialise(net, "imagenet", imagenet_weights=imagenet_file)
    _check_encoder_equals_file(net, imagenet_sd)
    n_rest = sum(1 for k in before if not k.startswith("encoder.") and not k.endswith("num_batches_tracked"))
    assert counts == {"loaded": 304, "mapped": 300, "skipped": len(IMAGENET_HEAD), "reinitialised": n_rest}
    after = net.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("encoder."))
    assert no_download == []
    line = [r.getMessage() for r in caplog.records if "init imagenet" in r.getMessage()]
    assert len(line) == 1 and "loaded 304" in line[0] and "skipped 7" in line[0]


def test_imagenet_file_in_monai_naming_also_maps(tmp_path, no_download):
    """A state dict saved straight from MONAI's EfficientNetBN (nested block names) works too."""
    torch.manual_seed(7)
    model = EfficientNetBN("efficientnet-b0", pretrained=False, in_channels=3)
    path = tmp_path / imagenet_file_name()
    torch.save(model.state_dict(), path)
    net = build_network("cls_baseline")
    counts = initialise(net, "imagenet", imagenet_weights=str(path))
    assert counts["loaded"] == 304 and counts["reinitialised"] == 2  # the classification head
    src, state = model.state_dict(), net.state_dict()
    assert torch.equal(state["encoder._blocks.3.5._project_conv.weight"], src["_blocks.3.5._project_conv.weight"])
    assert torch.allclose(state["encoder._conv_stem.weight"], src["_conv_stem.weight"].sum(1, keepdim=True))


def test_imagenet_from_the_hub_cache(tmp_path, monkeypatch, imagenet_sd, no_download):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = imagenet_cache_path("efficientnet-b0")
    assert cached == tmp_path / "hub" / "checkpoints" / "efficientnet-b0-355c32eb.pth"
    cached.parent.mkdir(parents=True)
    torch.save(imagenet_sd, cached)
    net = build_network("seg_baseline")
    counts = initialise(net, "imagenet", imagenet_weights="")  # '' = not given (bundle default)
    assert counts["loaded"] == 304
    _check_encoder_equals_file(net, imagenet_sd)
    assert no_download == []


def test_imagenet_missing_offline_names_the_file(tmp_path, monkeypatch, no_download):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    net = build_network("cls_baseline")
    with pytest.raises(LiverError) as err:
        initialise(net, "imagenet")
    msg = str(err.value)
    assert "efficientnet-b0-355c32eb.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "--imagenet_weights" in msg and len(no_download) == 1
    with pytest.raises(LiverError, match="not found"):
        initialise(net, "imagenet", imagenet_weights=tmp_path / "nowhere.pth")


def test_imagenet_wrong_file_is_refused(tmp_path, no_download):
    path = tmp_path / "efficientnet-b0-355c32eb.pth"
    torch.save({"layer1.weight": torch.randn(8, 8), "fc.bias": torch.randn(8)}, path)
    with pytest.raises(LiverError, match=r"does not look like ImageNet weights for efficientnet-b0: 0 of 304"):
        initialise(build_network("seg_baseline"), "imagenet", imagenet_weights=path)


def test_imagenet_needs_an_efficientnet(imagenet_file):
    with pytest.raises(LiverError, match="no ImageNet weights"):
        initialise(build_network("cls_baseline", backbone="resnet10"), "imagenet", imagenet_weights=imagenet_file)


@pytest.fixture()
def lits_checkpoint(tmp_path):
    torch.manual_seed(11)
    seg = build_network("seg_baseline")
    with torch.no_grad():
        for p in seg.parameters():
            p.add_(torch.randn_like(p))  # differ from any fresh initialisation
    sd = {k: v.clone() for k, v in seg.state_dict().items()}
    path = tmp_path / "model.pt"
    torch.save({"model": sd, "epoch": torch.tensor(3)}, path)
    return path, sd


def test_lits_into_joint_maps_every_lesion_type_from_the_lesion_channel(lits_checkpoint, caplog):
    path, sd = lits_checkpoint
    torch.manual_seed(0)
    net = build_network("joint", n_classes=3)
    with caplog.at_level(logging.INFO, logger="monai_liver.networks.init"):
        counts = initialise(net, "lits", lits_checkpoint=path)
    state = net.state_dict()
    for key in state:
        if key.startswith(("encoder.", "decoder.")):
            assert torch.equal(state[key], sd[key]), key
    for name in ("segmentation_head.0.weight", "segmentation_head.0.bias"):
        got, src = state[name], sd[name]
        assert got.shape[0] == 5 and src.shape[0] == 3
        assert torch.equal(got[:2], src[:2])
        for k in range(3):
            assert torch.equal(got[2 + k], src[2])
    assert counts["mapped"] == 2 and counts["reinitialised"] == 0 and counts["skipped"] == 0
    assert any("init lits" in r.getMessage() and "loaded" in r.getMessage() for r in caplog.records)


def test_lits_into_ynet_keeps_the_head_and_leaves_cls_random(lits_checkpoint):
    path, sd = lits_checkpoint
    torch.manual_seed(0)
    net = build_network("ynet")
    cls_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("cls_head.")}
    counts = initialise(TensorOutput(net), "lits", lits_checkpoint=str(path))  # wrappers are looked through
    state = net.state_dict()
    assert torch.equal(state["segmentation_head.0.weight"], sd["segmentation_head.0.weight"])
    assert all(torch.equal(state[k], v) for k, v in cls_before.items()) and len(cls_before) == 4
    assert counts["reinitialised"] == 4 and counts["mapped"] == 0


def test_lits_accepts_a_plain_state_dict_and_cls_baseline_takes_the_encoder(tmp_path, lits_checkpoint):
    _, sd = lits_checkpoint
    path = tmp_path / "plain.pt"
    torch.save(sd, path)
    net = initialised(build_network("cls_baseline"), "lits", lits_checkpoint=path)
    state = net.state_dict()
    key = "encoder._blocks.6.15._project_conv.weight"
    assert torch.equal(state[key], sd[key])
    counts = initialise(build_network("cls_baseline"), "lits", lits_checkpoint=path)
    n_unused = sum(1 for k in sd if not k.startswith("encoder.") and not k.endswith("num_batches_tracked"))
    assert counts["skipped"] == n_unused > 0 and counts["reinitialised"] == 2


def test_lits_into_the_batchnorm_encoder_of_a_basicunet_cls_baseline(tmp_path):
    """The classification baseline's basicunet encoder normalises by batch, lits_pretrain's by
    instance: the convolutions load, each BatchNorm keeps its fresh initialisation (weight 1, bias 0,
    no statistics) while the instance norm's weights differ."""
    lits = build_network("lits_pretrain", backbone="basicunet-small")
    sd = lits.state_dict()
    path = tmp_path / "lits.pt"
    torch.save({"model": sd}, path)
    net = build_network("cls_baseline", backbone="basicunet-small")
    norms = [n for n, m in net.encoder.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in lits.modules())
    with torch.no_grad():  # a trained instance norm: its scale is not 1
        for k in sd:
            if k.endswith(".weight") and sd[k].ndim == 1:
                sd[k].fill_(3.0)
    torch.save({"model": sd}, path)
    counts = initialise(net, "lits", lits_checkpoint=path)
    state = net.state_dict()
    convs = [k for k in state if k.startswith("encoder.") and k.endswith(".conv.weight")]
    assert convs and all(torch.equal(state[k], sd[k]) for k in convs)
    for n in norms:
        bn = net.encoder.get_submodule(n)
        assert bool((bn.weight == 1).all() and (bn.bias == 0).all() and (bn.running_var == 1).all())
    loaded = [k for k in state if k.startswith("encoder.") and k in sd and not k.startswith(tuple(f"encoder.{n}." for n in norms))]
    assert counts["loaded"] == len(loaded) > len(convs) - 1


def test_lits_wrong_architecture_is_refused(tmp_path):
    other = build_network("cls_baseline", backbone="efficientnet-b1")
    path = tmp_path / "b1.pt"
    torch.save({"model": other.state_dict()}, path)
    wrong = r"b1.pt: does not look like a lits_pretrain checkpoint.* of 304 encoder tensors match"
    with pytest.raises(LiverError, match=wrong):
        initialise(build_network("joint"), "lits", lits_checkpoint=path)
    path = tmp_path / "random.pt"
    torch.save({"model": {"conv.weight": torch.randn(3, 3)}}, path)
    with pytest.raises(LiverError, match=r"random.pt: does not look like a lits_pretrain checkpoint.*: 0 of 304"):
        initialise(build_network("joint"), "lits", lits_checkpoint=path)


def test_lits_missing_checkpoint(tmp_path):
    with pytest.raises(LiverError, match="missing.pt: lits_pretrain checkpoint not found"):
        initialise(build_network("seg_baseline"), "lits", lits_checkpoint=tmp_path / "missing.pt")
    with pytest.raises(LiverError, match="--lits_checkpoint"):
        initialise(build_network("seg_baseline"), "lits")


class _Payload:
    """Pickles to a call of os.mkdir: loading it with plain pickle would run code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_checkpoint_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "code_was_run"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(marker))}, path)
    with pytest.raises(LiverError, match="evil.pt: refused to load"):
        initialise(build_network("seg_baseline"), "lits", lits_checkpoint=path)
    with pytest.raises(LiverError, match="refused to load"):
        initialise(build_network("seg_baseline"), "imagenet", imagenet_weights=path)
    assert not marker.exists()


def test_truncated_file_and_unknown_init(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LiverError, match="broken.pt: cannot be read"):
        initialise(build_network("seg_baseline"), "lits", lits_checkpoint=path)
    with pytest.raises(LiverError, match="init 'imgnet'"):
        initialise(build_network("seg_baseline"), "imgnet")


def test_scratch_changes_nothing():
    net = build_network("ynet")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    counts = initialise(net, "scratch")
    assert counts["loaded"] == 0 and counts["reinitialised"] > 300
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_param_groups_put_the_encoder_in_its_own_group_at_its_scale():
    """Group 0: every parameter outside the encoder at the run's rate (what the logs show); group 1: the
    encoder's at ``learning_rate * encoder_lr_scale``; every parameter in exactly one group, wrappers looked through."""
    from monai_liver.networks.init import param_groups

    net = build_network("cls_baseline", backbone="basicunet-small")
    groups = param_groups(TensorOutput(net), 0.01, 3.0)
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert len(groups) == 2 and "lr" not in groups[0] and groups[1]["lr"] == pytest.approx(0.03)
    assert set(ids[1]) == {id(p) for p in net.encoder.parameters()}
    assert not set(ids[0]) & set(ids[1]) and sorted(ids[0] + ids[1]) == sorted(id(p) for p in net.parameters())
    opt = torch.optim.AdamW(groups, lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(0.03)]
    with pytest.raises(LiverError, match="encoder_lr_scale 0"):
        param_groups(net, 0.01, 0)


@pytest.mark.parametrize("init, scale", [("scratch", 1.0), ("lits", 3.0)])
def test_cls_baseline_bundle_trains_a_lits_encoder_at_three_times_the_rate(tmp_path, init, scale):
    """The classification baseline's train.json: from LiTS its encoder's learning rate is
    ``LITS_ENCODER_LR_SCALE`` x the run's, from scratch the run's (monai_liver.networks.init.param_groups)."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    from monai_liver.networks.init import LITS_ENCODER_LR_SCALE

    assert LITS_ENCODER_LR_SCALE == 3.0
    configs = Path(__file__).resolve().parents[1] / "bundles" / "cls_baseline" / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser.update({"bundle_root": str(configs.parent), "output_dir": str(tmp_path / "out"), "backbone": "basicunet-small",
                   "class_names": ["cyst", "hemangioma", "metastasis"], "learning_rate": 0.004, "init": init})
    opt = parser.get_parsed_content("optimizer")
    net = parser.get_parsed_content("network_def")
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.004), pytest.approx(0.004 * scale)]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in net.encoder.parameters()}
