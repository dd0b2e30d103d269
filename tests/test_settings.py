"""Settings defined once and checked once: the experiment's settings (a frozen record, the presets as
instances, one flag per field), and the settings that cross layers (image size, HU window, ROI
margin, classes): one default, one check, the same in the bundles' configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from monai_liver.constants import (DEFAULT_CLASSES, DEFAULT_IMAGE_SIZE, HU_WINDOW, ROI_MARGIN, bundles_dir,
                                   check_class_names, check_image_size, check_window)
from monai_liver.errors import LiverError
from monai_liver.experiment.settings import FULL, PRESETS, QUICK, ExperimentSettings


def _parse(*argv: str):
    from monai_liver.cli import build_parser

    return build_parser().parse_args(["experiment", "--out", "x", *argv])


def test_presets_are_frozen_instances():
    assert PRESETS == {"quick": QUICK, "full": FULL}
    assert all(isinstance(p, ExperimentSettings) and p.preset == name for name, p in PRESETS.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        QUICK.epochs = 3  # type: ignore[misc]
    assert QUICK.but(epochs=3, backbone=None) == dataclasses.replace(QUICK, epochs=3)  # None keeps the preset's
    assert ExperimentSettings.preset_named(None) == QUICK and ExperimentSettings.preset_named("full", folds=3).folds == 3
    with pytest.raises(TypeError, match="unknown experiment setting"):
        QUICK.but(epoch=3)
    with pytest.raises(LiverError, match="preset 'huge' is not known"):
        ExperimentSettings.preset_named("huge")


def test_cli_flags_are_the_settings_fields():
    """Each flag sets the field of its name; flags left out keep the preset's values."""
    from monai_liver.experiment.cli import settings_from_args

    assert _parse()._module == "monai_liver.experiment.cli"
    assert settings_from_args(_parse()) == QUICK
    assert settings_from_args(_parse("--full", "--epochs", "3", "--no-tracking")) == FULL.but(epochs=3, tracking=False)
    s = settings_from_args(_parse("--strategies", "joint", "joint", "--image-size", "96", "--no-download",
                                  "--executor", "ray", "--ray-cpus", "2", "--runs-per-device", "3"))
    assert (s.strategies, s.image_size, s.download, s.executor, s.ray_cpus, s.runs_per_device) == \
        (["joint", "joint"], 96, False, "ray", 2.0, 3)
    assert s.check().strategies == ("joint",)  # unique, in order
    from monai_liver.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["experiment"]
    dests = {a.dest for a in sub._actions}
    fields = {f.name for f in dataclasses.fields(ExperimentSettings)}
    assert dests - fields == {"help", "out", "no_download", "no_tracking"}  # every flag sets a field ...
    # ... and the fields without a flag are the negated ones, the preset's tuning and the report's bootstrap
    assert fields - dests == {"download", "tracking", "num_workers", "lits_volumes", "lits_shape", "val_interval", "n_boot"}


def test_a_flag_is_never_taken_for_a_longer_one(capsys):
    """argparse's prefix matching is off: ``--image`` is refused by its own name, not read as
    ``--image-size`` (whose error named a flag the user never typed)."""
    from monai_liver.cli import build_parser

    for argv, typed in ((["infer", "ct.nii.gz", "--out", "o", "--image", "x.nii.gz"], "--image x.nii.gz"),
                        (["experiment", "--out", "o", "--epoch", "3"], "--epoch 3"),
                        (["peer", "nnunet", "--experiment", "e", "--fold", "0"], "--fold 0")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert f"unrecognized arguments: {typed}" in err, err


@pytest.mark.parametrize("change, message", [
    ({"folds": 1}, "--folds must be at least 2"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"learning_rate": 0.0}, "--learning-rate must be above 0"),
    ({"lits_learning_rate": -0.01}, "--lits-learning-rate must be above 0"),
    ({"image_size": 48}, "--image-size 48: must be a multiple of 32"),
    ({"localiser_image_size": 16}, "--localiser-image-size 16: must be a multiple of 32"),
    ({"backbone": "nope"}, "backbone 'nope' is not available"),
    ({"isolation": "thread"}, "isolation 'thread' is not known"),
    ({"runs_per_device": 0}, "--runs-per-device must be at least 1"),
    ({"strategies": ("joint", "nope")}, "strategy 'nope' is not known"),
    ({"inits": ("imagenet", "nope")}, "init 'nope' is not known"),
    ({"manifest": "a.csv", "datalist": "b.json"}, "give --manifest or --datalist, not both"),
    ({"datalist": "/nonexistent/lesions.json"}, "file or folder not found"),
])
def test_settings_checked_once(change, message):
    with pytest.raises(LiverError, match=message):
        QUICK.but(**change).check()
    assert QUICK.check() == QUICK and FULL.check() == FULL


def test_image_size_rule_is_what_the_networks_need():
    """check_image_size's rule (a multiple of 32) is the strictest backbone's: a FlexibleUNet ResNet
    fails between multiples of 32, and every backbone kind runs at multiples of 32."""
    import torch

    from monai_liver.networks.factory import build_network

    assert [check_image_size(s) for s in (32, 64, "96")] == [32, 64, 96]
    for bad in (16, 48, 100, "x"):
        with pytest.raises(LiverError):
            check_image_size(bad)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            build_network("seg_baseline", backbone="resnet18").eval()(torch.zeros(1, 1, 48, 48))
        for backbone in ("resnet18", "efficientnet-b0", "basicunet-small"):
            net = build_network("joint", backbone=backbone).eval()
            for size in (32, 64):
                assert net(torch.zeros(1, 1, size, size))["seg"].shape[-2:] == (size, size)


def test_window_and_class_checks():
    assert check_window(HU_WINDOW) == HU_WINDOW and check_window(["-100", 300]) == (-100.0, 300.0)
    for bad in ((250, -200), (0, 0), (0, float("nan")), (1,), None):
        with pytest.raises(LiverError, match="HU window"):
            check_window(bad)
    assert check_class_names(None) == DEFAULT_CLASSES and check_class_names(" a, b ") == ("a", "b")
    for bad, message in ((["a", "A"], "unique"), (["a", ""], "non-empty"), ([], "non-empty")):
        with pytest.raises(LiverError, match=message):
            check_class_names(bad)
    from monai_liver.data.manifest import normalise_class_names

    assert normalise_class_names is check_class_names


def test_flags_checked_against_the_model_once():
    """infer, export and the label app refuse an --image-size or --classes that contradicts the model."""
    from monai_liver.model_package import check_flags

    settings = {"image_size": 64, "class_names": ["cyst", "hemangioma", "metastasis"]}
    assert check_flags("m.pt", settings) is None
    assert check_flags("m.pt", settings, 64, ["cyst", "hemangioma", "metastasis"]) == DEFAULT_CLASSES
    assert check_flags("m.pt", {}, 128, ["a", "b"]) == ("a", "b")  # a model that records nothing
    with pytest.raises(LiverError, match="m.pt: trained at image size 64, not 128"):
        check_flags("m.pt", settings, 128)
    with pytest.raises(LiverError, match="m.pt: trained with classes cyst, hemangioma, metastasis, not a, b"):
        check_flags("m.pt", settings, None, ["a", "b"])


def test_bundle_defaults_are_the_python_defaults():
    """The bundles' JSON repeats the Python defaults (a JSON file cannot import them): kept equal here."""
    configs = bundles_dir() / "_template" / "configs"
    train = json.loads((configs / "train.json").read_text())
    infer = json.loads((configs / "inference.json").read_text())
    assert (train["image_size"], train["roi_margin"]) == (DEFAULT_IMAGE_SIZE, ROI_MARGIN)
    assert (infer["image_size"], tuple(infer["class_names"])) == (DEFAULT_IMAGE_SIZE, DEFAULT_CLASSES)


def test_exclusive_lock(tmp_path):
    from monai_liver.locks import exclusive_lock

    with exclusive_lock(tmp_path / "sub" / ".lock"):
        with pytest.raises(LiverError, match="busy folder"):
            with exclusive_lock(tmp_path / "sub" / ".lock", busy="busy folder"):
                pass
    with exclusive_lock(tmp_path / "sub" / ".lock", busy="busy folder"):  # released
        pass
    folder = tmp_path / "sub"
    with exclusive_lock(folder):  # a folder itself: locked, nothing written into it
        with pytest.raises(LiverError, match="busy folder"):
            with exclusive_lock(folder, busy="busy folder"):
                pass
    assert [p.name for p in folder.iterdir()] == [".lock"]


def test_the_classification_baseline_trains_for_its_own_epochs(tmp_path):
    """``cls_epoch_scale``: the quick preset's classification baseline trains for twice ``epochs``; the
    experiment's plan, its record and the table's settings line say so, and the other strategies keep ``epochs``."""
    from types import SimpleNamespace

    from monai_liver.experiment.aggregate import settings_line
    from monai_liver.experiment.runs import plan_runs
    from monai_liver.experiment.settings import experiment_record

    assert (QUICK.classifier_epochs, FULL.classifier_epochs, QUICK.but(epochs=1).classifier_epochs) == (40, 100, 2)
    datalist = tmp_path / "lesions.json"
    datalist.write_text("{}")
    data = SimpleNamespace(lits=None, lesions=datalist, kind="phantoms", lits_kind=None)
    s = QUICK.but(strategies=("cls_baseline", "joint"), inits=("scratch",))
    epochs = {(r.strategy, r.fold): r.overrides["epochs"] for r in plan_runs(tmp_path, s, data, "", {}, None)}
    assert epochs == {("cls_baseline", 0): 40, ("cls_baseline", 1): 40, ("joint", 0): 20, ("joint", 1): 20}
    record = experiment_record(s, data, None, ["cyst"])
    assert (record["epochs"], record["cls_epochs"]) == (20, 40)
    assert "64 px, 20 epochs (classification baseline 40), batch 8" in settings_line(record)
    assert "20 epochs, batch" in settings_line(experiment_record(s.but(cls_epoch_scale=1.0), data, None, ["cyst"]))
    with pytest.raises(LiverError, match="--cls-epoch-scale must be above 0"):
        QUICK.but(cls_epoch_scale=0.0).check()
