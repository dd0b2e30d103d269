"""The five bundles through ``python -m monai.bundle run`` on tiny phantoms: train, resume, evaluate,
LiTS initialisation, bad input, and the MONAI bundle checks (properties, verify_net_in_out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("lits_pretrain", "cls_baseline", "seg_baseline", "ynet", "joint")
CLASSES = ("cyst", "hemangioma", "metastasis")
#: small decoder for speed on CPU (the bundles' default is (256, 128, 64, 32, 16))
SMALL = ["--network_def#decoder_channels", "[32,16,16,8,8]"]
LOG_COLUMNS = ["epoch", "loss", "lr", "val_dice", "val_recall", "val_acc", "val_bacc", "val_liver_dice", "seconds", "slices"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def bundle_cmd(bundle: str, configs: tuple[str, ...], out: Path, datalist: Path, *extra: str) -> list[str]:
    files = [str(ROOT / "bundles" / bundle / "configs" / f"{c}.json") for c in configs]
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", files[0] if len(files) == 1 else json.dumps(files),
        "--bundle_root", str(ROOT / "bundles" / bundle),
        "--datalist", str(datalist), "--fold", "0",
        "--epochs", "2", "--image_size", "32", "--batch_size", "4", "--seed", "0", "--num_workers", "0",
        "--output_dir", str(out), "--cache_dir", str(out.parent / f"{out.name}_cache"),
        *SMALL, *extra,
    ]  # fmt: skip


def run_bundle(bundle: str, configs: tuple[str, ...], out: Path, datalist: Path, *extra: str, check: bool = True):
    proc = subprocess.run(
        bundle_cmd(bundle, configs, out, datalist, *extra), capture_output=True, text=True, timeout=600, env=env()
    )
    if check:
        assert proc.returncode == 0, f"{bundle} {configs} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def run_in_process(bundle: str, configs: tuple[str, ...], out: Path, datalist: Path, **overrides) -> None:
    """``monai.bundle.run`` in this process (what ``python -m monai.bundle run`` calls, without the
    ~10 s of imports of a new interpreter); used where the subprocess adds nothing."""
    import torch
    from monai.bundle import run

    torch.set_num_threads(1)
    files = [str(ROOT / "bundles" / bundle / "configs" / f"{c}.json") for c in configs]
    args = dict(
        bundle_root=str(ROOT / "bundles" / bundle), datalist=str(datalist), fold=0, epochs=2, image_size=32,
        batch_size=4, seed=0, num_workers=0, output_dir=str(out), cache_dir=str(out.parent / f"{out.name}_cache"),
        **{"network_def#decoder_channels": [32, 16, 16, 8, 8]},
    )
    args.update(overrides)
    run(config_file=files, logging_file=False, **args)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict:
    """Lesion-type slices (6 patients, 12 slices, 64 px) and LiTS-like volumes (4 x 64 x 64 x 16),
    each with a 2-fold datalist."""
    from monai_liver.data.datalist import datalist_from_lits, datalist_from_manifest, write_datalist
    from monai_liver.data.phantoms import make_lesion_slices, make_lits_phantoms

    work = tmp_path_factory.mktemp("bundle_phantoms")
    manifest = make_lesion_slices(work / "lesions", n_patients=6, n_slices=12, size=64, seed=0)
    make_lits_phantoms(work / "lits", n_volumes=4, shape=(64, 64, 16), seed=0)
    return {
        "work": work,
        "lesions": write_datalist(datalist_from_manifest(manifest, n_folds=2, seed=0), work / "lesions.json"),
        "lits": write_datalist(datalist_from_lits(work / "lits", n_folds=2, seed=0), work / "lits.json"),
    }


def datalist_for(bundle: str, phantoms: dict) -> Path:
    return phantoms["lits"] if bundle == "lits_pretrain" else phantoms["lesions"]


@pytest.fixture(scope="module")
def lits_model(phantoms) -> Path:
    """model.pt of a 2-epoch lits_pretrain run."""
    out = phantoms["work"] / "runs" / "lits_pretrain"
    if not (out / "model.pt").is_file():
        run_bundle("lits_pretrain", ("train",), out, phantoms["lits"])
    return out / "model.pt"


# ---------------------------------------------------------------- static checks


REQUIRED_IDS = (
    "bundle_root", "device", "dataset_dir", "datalist", "fold", "init", "imagenet_weights", "lits_checkpoint",
    "seed", "image_size", "batch_size", "epochs", "learning_rate", "val_interval", "output_dir", "cache_dir",
    "network_def", "network", "loss", "optimizer", "lr_scheduler", "train", "validate", "initialize", "run",
    "finalize",
)  # fmt: skip
META_KEYS = (
    "version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format",
)  # fmt: skip


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_files_and_ids(bundle) -> None:
    configs = ROOT / "bundles" / bundle / "configs"
    for name in ("metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "logging.conf"):
        assert (configs / name).is_file(), name
    assert (ROOT / "bundles" / bundle / "docs" / "README.md").is_file()
    train = json.loads((configs / "train.json").read_text())
    assert [k for k in REQUIRED_IDS if k not in train] == []
    assert train["strategy"] == bundle
    for sub in ("dataset", "dataloader", "inferer", "handlers", "trainer", "preprocessing"):
        assert sub in train["train"], sub
    assert "data" in train["train"]["dataset"]
    for sub in ("dataset", "evaluator", "handlers", "key_metric"):
        assert sub in train["validate"], sub
    assert train["train"]["trainer"]["train_handlers"] == "@train#handlers"
    assert train["validate"]["evaluator"]["val_handlers"] == "@validate#handlers"
    assert train["train"]["trainer"]["compile"] == "@compile" and train["compile"] is False  # measured before a default
    assert train["train"]["trainer"]["decollate"] is False
    for engine in (train["train"]["trainer"], train["validate"]["evaluator"]):  # the fast path, one value each
        assert engine["amp"] == "@amp" and engine["amp_kwargs"] == {"dtype": "@amp_dtype"}
    assert train["train"]["inferer"]["_target_"] == "SimpleInferer"
    meta = json.loads((configs / "metadata.json").read_text())
    assert [k for k in META_KEYS if k not in meta] == []
    out = next(iter(meta["network_data_format"]["outputs"].values()))
    assert out["num_channels"] == len(out["channel_def"])
    inference = json.loads((configs / "inference.json").read_text())
    for key in ("network_def", "preprocessing", "inferer", "postprocessing", "evaluator", "dataset_dir"):
        assert key in inference, key
    # the five bundles differ only in a few values
    ref = json.loads((ROOT / "bundles" / "joint" / "configs" / "train.json").read_text())
    differing = {k for k in set(ref) | set(train) if ref.get(k) != train.get(k)}
    assert differing <= {"strategy", "cls_weight", "epochs", "datalist", "lesion_oversample", "dice_batch", "encoder_lr_scale"}, differing


@pytest.mark.parametrize("bundle", BUNDLES)
def test_monai_bundle_checks(bundle, phantoms, tmp_path) -> None:
    """``ConfigWorkflow.check_properties`` (train and inference) and ``verify_net_in_out`` pass."""
    import torch
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    torch.set_num_threads(1)
    configs = ROOT / "bundles" / bundle / "configs"
    common = dict(meta_file=str(configs / "metadata.json"), logging_file=False, bundle_root=str(configs.parent))
    train = ConfigWorkflow(
        config_file=str(configs / "train.json"), workflow_type="train", datalist=str(datalist_for(bundle, phantoms)),
        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), image_size=32, num_workers=0,
        **common,
    )
    train.initialize()
    assert train.check_properties() == []
    bns = [m for m in train.parser.get_parsed_content("network_def").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and {m.momentum for m in bns} == {0.1}  # set_bn_momentum ran in initialize
    from monai_liver.networks.factory import build_network

    ckpt = tmp_path / "model.pt"
    torch.save({"model": build_network(bundle, 3).state_dict()}, ckpt)
    infer = ConfigWorkflow(
        config_file=str(configs / "inference.json"), workflow_type="inference", dataset_dir=str(tmp_path),
        ckpt_path=str(ckpt), **common,
    )
    infer.initialize()
    assert infer.check_properties() == []
    verify_net_in_out(
        net_id="network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
        n=2, device="cpu",
    )


@pytest.mark.parametrize("bundle", ("seg_baseline", "cls_baseline"))
def test_inference_on_2d_images(bundle, phantoms, tmp_path) -> None:
    """inference.json on a folder of 2D NIfTI slices: masks back on each input's grid (seg) or a
    predictions.csv (cls); a missing checkpoint is an error, not a random network."""
    import nibabel as nib
    import torch
    from monai.bundle import run

    from monai_liver.engine import find_liver_error
    from monai_liver.networks.factory import build_network

    torch.set_num_threads(1)
    images = sorted((phantoms["work"] / "lesions" / "images").glob("*.nii.gz"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    ckpt = tmp_path / "model.pt"
    small = [32, 16, 16, 8, 8]
    torch.save({"model": build_network(bundle, 3, decoder_channels=small).state_dict()}, ckpt)
    configs = ROOT / "bundles" / bundle / "configs"
    args = dict(
        config_file=str(configs / "inference.json"), logging_file=False, bundle_root=str(configs.parent),
        dataset_dir=str(folder), output_dir=str(tmp_path / "out"), image_size=32,
        **{"network_def#net#decoder_channels": small},
    )
    run(ckpt_path=str(ckpt), **args)
    if bundle == "cls_baseline":
        rows = (tmp_path / "out" / "predictions.csv").read_text().strip().splitlines()
        assert [r.split(",")[0] for r in rows] == [str(folder / p.name) for p in images]
        assert all(float(r.split(",")[1]) in (0.0, 1.0, 2.0) for r in rows)
    else:
        for p in images:
            pred, src = nib.load(tmp_path / "out" / p.name.replace(".nii.gz", "_seg.nii.gz")), nib.load(p)
            assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
            assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    with pytest.raises(Exception) as info:
        run(ckpt_path=str(tmp_path / "missing.pt"), **args)
    assert "checkpoint file does not exist" in str(find_liver_error(info.value))


# ---------------------------------------------------------------- training and evaluation


def _check_eval(out: Path, bundle: str, n_val: int) -> None:
    import pandas as pd

    from monai_liver.engine.evaluate import per_slice_columns

    df = pd.read_csv(out / "eval" / "per_slice.csv")
    assert list(df.columns) == per_slice_columns(CLASSES)
    assert len(df) == n_val and (df["fold"] == 0).all()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for key in ("acc", "bacc", "dice", "global_dice", "recall", "detection_recall", "n_slices", "n_patients",
                "confusion", "sensitivity", "specificity"):  # fmt: skip
        assert key in metrics, key
    assert metrics["n_slices"] == n_val and metrics["n_patients"] == df["patient_id"].nunique()
    ex = np.load(out / "eval" / "examples.npz")
    assert ex["image"].shape == (n_val, 32, 32) and ex["gt_lesion"].shape == ex["pred_lesion"].shape == (n_val, 32, 32)
    assert 0.0 <= ex["image"].min() and ex["image"].max() <= 1.0
    assert (ex["gt_lesion"].reshape(n_val, -1).sum(1) == df["gt_lesion_px"].to_numpy()).all()
    has_cls = bundle in ("cls_baseline", "ynet", "joint")
    has_seg = bundle != "cls_baseline"
    if has_cls:
        assert set(df["pred_cls"]) <= set(CLASSES) and 0.0 <= metrics["acc"] <= 1.0
        assert np.array(metrics["confusion"]).sum() == n_val
        assert df[[f"prob_{c}" for c in CLASSES]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-4)
    else:
        assert metrics["acc"] is None and df["pred_cls"].isna().all()
    if has_seg:
        assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["recall"] <= 1.0
        assert (ex["pred_lesion"].reshape(n_val, -1).sum(1) == df["pred_lesion_px"].to_numpy()).all()
    else:
        assert metrics["dice"] is None and df["dice"].isna().all()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_then_evaluate(bundle, phantoms, lits_model) -> None:
    """Each bundle trains 2 epochs (joint: from the lits_pretrain model, seg_baseline: interrupted after
    1 epoch and resumed), writes model.pt / checkpoint_last.pt / train_log.csv, and evaluate.json writes
    the eval files for the held-out fold."""
    import pandas as pd
    import torch

    out = phantoms["work"] / "runs" / bundle
    datalist = datalist_for(bundle, phantoms)
    if bundle == "lits_pretrain":
        assert lits_model.parent == out  # trained by the fixture
    elif bundle == "joint":
        run_bundle(bundle, ("train",), out, datalist, "--init", "lits", "--lits_checkpoint", str(lits_model))
    elif bundle == "seg_baseline":
        # an interrupted run: the trainer stops after epoch 1 of 2 (same config, so the same LR schedule)
        run_bundle(bundle, ("train",), out, datalist, "--train#trainer#max_epochs", "1")
        assert len(pd.read_csv(out / "train_log.csv")) == 1
        proc = run_bundle(bundle, ("train",), out, datalist)  # same output_dir: resumes after epoch 1
        assert "at epoch 1" in proc.stdout + proc.stderr and "resumed from" in proc.stdout + proc.stderr
    else:
        run_bundle(bundle, ("train",), out, datalist)

    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == LOG_COLUMNS and log["epoch"].tolist() == [1, 2]
    assert np.isfinite(log["loss"]).all() and (log["lr"] > 0).all()
    from monai_liver.engine.metrics import metric_names

    for name in LOG_COLUMNS[3:-2]:
        assert log[name].notna().all() == (name in metric_names(bundle)), name
    assert (log["seconds"] > 0).all() and (log["slices"] > 0).all()
    model = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert isinstance(model["model"], dict) and all(isinstance(v, torch.Tensor) for v in model["model"].values())
    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["epoch"] == 2 and {"model", "optimizer", "lr_scheduler"} <= set(last)
    assert not list(out.glob("*.tmp")) and sorted(p.name for p in out.glob("*.pt")) == ["checkpoint_last.pt", "model.pt"]

    if bundle == "joint":  # evaluate.json through the command line once, in-process for the others
        run_bundle(bundle, ("train", "evaluate"), out, datalist)
    else:
        run_in_process(bundle, ("train", "evaluate"), out, datalist)
    items = json.loads(datalist.read_text())["training"]
    if bundle == "lits_pretrain":
        n_val = len(pd.read_csv(out / "eval" / "per_slice.csv"))  # slices with liver of the fold-0 volumes
        assert n_val > 0
    else:
        n_val = sum(1 for it in items if it["fold"] == 0)
    _check_eval(out, bundle, n_val)


@pytest.mark.slow
def test_lits_init_loads_checkpoint_tensors(phantoms, lits_model, tmp_path) -> None:
    """joint with init=lits: every encoder/decoder tensor of the network equals the lits_pretrain
    checkpoint's; the output head (5 channels vs 3) is not taken from it."""
    import torch
    from monai.bundle import ConfigWorkflow

    torch.set_num_threads(1)
    configs = ROOT / "bundles" / "joint" / "configs"
    wf = ConfigWorkflow(
        config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"), logging_file=False,
        workflow_type="train", bundle_root=str(configs.parent), datalist=str(phantoms["lesions"]),
        output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), image_size=32, num_workers=0,
        init="lits", lits_checkpoint=str(lits_model), **{"network_def#decoder_channels": [32, 16, 16, 8, 8]},
    )
    wf.initialize()
    net = wf.parser.get_parsed_content("network_def")
    ckpt = torch.load(lits_model, map_location="cpu", weights_only=True)["model"]
    own = net.state_dict()
    same = [k for k in own if k in ckpt and own[k].shape == ckpt[k].shape]
    body = [k for k in own if k.startswith(("encoder.", "decoder."))]
    assert body and set(body) <= set(same)
    assert all(torch.equal(own[k], ckpt[k]) for k in same if k.startswith(("encoder.", "decoder.")))
    head = [k for k in own if k.startswith("segmentation_head.") and k.endswith("weight")]
    assert head and all(own[k].shape != ckpt[k].shape for k in head)


# ---------------------------------------------------------------- bad input


@pytest.mark.slow
def test_bad_input_fails_with_one_clear_line(phantoms, lits_model, tmp_path) -> None:
    """Missing dataset and a checkpoint of another architecture (evaluate's model.pt): non-zero exit
    with ``error: <path>: <problem>`` as the last line of stderr and no traceback."""
    import shutil

    wrong = tmp_path / "wrong_arch"
    wrong.mkdir()
    shutil.copy(lits_model, wrong / "model.pt")  # a 3-class U-Net's weights, evaluated as cls_baseline
    lesions = phantoms["lesions"]
    cases = {
        "missing dataset": (
            ("train",), tmp_path / "missing", ["--dataset_dir", str(tmp_path / "nowhere")],
            f"{tmp_path / 'nowhere'}: dataset directory does not exist",
        ),
        "wrong checkpoint": (
            ("train", "evaluate"), wrong, [], f"{wrong / 'model.pt'}: checkpoint does not fit the ClsBaseline network"
        ),
    }  # fmt: skip
    procs = {
        name: subprocess.Popen(
            bundle_cmd("cls_baseline", configs, out, lesions, *extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
        )
        for name, (configs, out, extra, _) in cases.items()
    }  # fmt: skip
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode != 0, name
        assert lines and cases[name][3] in lines[-1], (name, lines[-5:])
        assert lines[-1].startswith("error: ") and "Traceback" not in stderr, (name, stderr[-2000:])


@pytest.mark.parametrize(
    "case, message",
    [("empty datalist", "datalist is empty"), ("missing fold", "fold 7 does not exist (folds: 0, 1, or -1 for all)"),
     ("missing datalist", "datalist file does not exist")],
)  # fmt: skip
def test_bad_input_raises_liver_error(case, message, phantoms, tmp_path) -> None:
    """The same checks in-process: the LiverError is in the chain MONAI's parser raises."""
    from monai_liver.engine import find_liver_error

    datalist, extra = phantoms["lesions"], {}
    if case == "empty datalist":
        datalist = tmp_path / "empty.json"
        datalist.write_text(json.dumps({"training": [], "dataset_dir": str(tmp_path)}))
    elif case == "missing fold":
        extra = {"fold": 7}
    else:
        datalist = tmp_path / "nope.json"
    with pytest.raises(Exception) as info:
        run_in_process("seg_baseline", ("train",), tmp_path / "out", datalist, **extra)
    err = find_liver_error(info.value)
    assert err is not None and message in str(err), info.value
    assert not (tmp_path / "out" / "model.pt").exists()


def test_bundle_configs_are_generated_from_the_template() -> None:
    """Each bundle's shared configs are exactly the template with its own values
    (``python -m monai_liver.bundle_configs`` rewrites them after a template change)."""
    from monai_liver import strategies
    from monai_liver.bundle_configs import BUNDLE_VALUES, render

    assert set(BUNDLE_VALUES) == set(strategies.names()) == set(BUNDLES)
    from monai_liver.constants import DEFAULT_IMAGE_SIZE, ROI_MARGIN

    template = json.loads((ROOT / "bundles" / "_template" / "configs" / "train.json").read_text())
    assert (template["image_size"], template["roi_margin"]) == (DEFAULT_IMAGE_SIZE, ROI_MARGIN)  # one default each
    for bundle in BUNDLES:
        for name, text in render(bundle).items():
            assert (ROOT / "bundles" / bundle / "configs" / name).read_text() == text, (
                f"bundles/{bundle}/configs/{name} is not up to date: run python -m monai_liver.bundle_configs")
