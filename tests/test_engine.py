"""Engine pieces in-process: data selection, batch preparation, loss, metrics, handlers, eval files,
MLflow helpers, and the one-line LiverError of a bundle run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_liver.errors import LiverError

STRATEGIES = ("lits_pretrain", "cls_baseline", "seg_baseline", "ynet", "joint")


# ---------------------------------------------------------------- data selection


def _write_datalist(path: Path, items: list[dict], **extra) -> Path:
    path.write_text(json.dumps({"training": items, **extra}))
    return path


def test_select_items_folds_and_errors(tmp_path) -> None:
    from monai_liver.engine.data import check_inputs, select_items

    items = [{"image": f"{i}.nii.gz", "patient_id": str(i // 2), "fold": i % 3} for i in range(9)]
    train, val = select_items(items, 1, "train"), select_items(items, 1, "val")
    assert {it["fold"] for it in train} == {0, 2} and {it["fold"] for it in val} == {1}
    assert len(train) + len(val) == len(items)
    assert len(select_items(items, -1, "train")) == len(items)
    with pytest.raises(LiverError, match=r"fold 5 does not exist \(folds: 0, 1, 2"):
        select_items(items, 5, "train", source="dl.json")
    with pytest.raises(LiverError, match="split 'test'"):
        select_items(items, 0, "test")

    dl = _write_datalist(tmp_path / "dl.json", items)
    assert check_inputs(tmp_path, dl, 2)
    with pytest.raises(LiverError, match="dataset directory does not exist"):
        check_inputs(tmp_path / "missing", dl, 0)
    with pytest.raises(LiverError, match="datalist is empty"):
        check_inputs(tmp_path, _write_datalist(tmp_path / "empty.json", []), 0)
    with pytest.raises(LiverError, match="datalist file does not exist"):
        check_inputs(tmp_path, tmp_path / "nope.json", 0)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LiverError, match="not valid JSON"):
        check_inputs(tmp_path, tmp_path / "bad.json", 0)


def test_datalist_dataset_dir_and_classes(tmp_path) -> None:
    from monai_liver.constants import DEFAULT_CLASSES
    from monai_liver.engine.data import datalist_classes, datalist_dataset_dir

    (tmp_path / "lists").mkdir()
    dl = _write_datalist(tmp_path / "lists" / "dl.json", [{"image": "a"}], dataset_dir="../data", classes=["a", "b"])
    assert datalist_dataset_dir(dl) == str((tmp_path / "data").resolve())
    assert datalist_classes(dl) == ("a", "b")
    assert datalist_classes(dl, ["x"]) == ("x",)
    lits = _write_datalist(tmp_path / "lits.json", [{"image": "a"}], classes=[])
    assert datalist_classes(lits) == tuple(DEFAULT_CLASSES)
    assert datalist_dataset_dir(tmp_path / "missing.json") == ""


# ---------------------------------------------------------------- batch, loss


def _batch(n: int = 4, size: int = 32, k: int = 3, joint: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    seg = torch.zeros(n, 1, size, size, dtype=torch.long)
    seg[:, :, 4:28, 4:28] = 1
    cls = torch.arange(n) % k
    for i in range(n):
        seg[i, :, 10 + i : 18 + i, 10:18] = 2 + (int(cls[i]) if joint else 0)
    return {"image": torch.rand(n, 1, size, size, generator=g), "seg": seg, "cls": cls}


def test_prepare_batch_targets() -> None:
    from monai.data import MetaTensor

    from monai_liver.engine.prepare_batch import PrepareBatchSegCls

    b = _batch()
    b["image"] = MetaTensor(b["image"])
    image, target = PrepareBatchSegCls()(b, torch.device("cpu"))
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (4, 1, 32, 32)
    assert target["seg"].dtype == torch.long and target["seg"].shape == (4, 1, 32, 32)
    assert target["cls"].tolist() == [0, 1, 2, 0]
    _, target = PrepareBatchSegCls()({"image": b["image"]}, "cpu")
    assert target["cls"].tolist() == [-1] * 4 and int(target["seg"].sum()) == 0


def test_multitask_loss_terms() -> None:
    from monai.losses import DiceCELoss

    from monai_liver.engine.loss import MultiTaskLoss

    b = _batch()
    seg_logits = torch.randn(4, 3, 32, 32)
    cls_logits = torch.randn(4, 3)
    pred = {"seg": seg_logits, "cls": cls_logits}
    target = {"seg": b["seg"], "cls": b["cls"]}
    dce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(seg_logits, b["seg"])
    ce = torch.nn.functional.cross_entropy(cls_logits, b["cls"])
    assert torch.allclose(MultiTaskLoss("seg_baseline")(pred, target), dce)
    assert torch.allclose(MultiTaskLoss("lits_pretrain")({"seg": seg_logits, "cls": None}, target), dce)
    assert torch.allclose(MultiTaskLoss("cls_baseline")({"seg": None, "cls": cls_logits}, target), ce)
    assert torch.allclose(MultiTaskLoss("ynet", cls_weight=0.5)(pred, target), dce + 0.5 * ce)
    # joint: the class output (a vote derived from seg) is not trained; DiceCE over 2 + K channels
    jb = _batch(joint=True)
    joint_logits = torch.randn(4, 5, 32, 32)
    jdce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(joint_logits, jb["seg"])
    assert torch.allclose(MultiTaskLoss("joint")({"seg": joint_logits, "cls": torch.randn(4, 3)}, jb), jdce)
    # dice_batch=False: MONAI's per-slice Dice, averaged
    per_slice = DiceCELoss(to_onehot_y=True, softmax=True)(seg_logits, b["seg"])
    assert torch.allclose(MultiTaskLoss("seg_baseline", dice_batch=False)(pred, target), per_slice)
    # unknown classes are ignored; a batch without any is 0 for the CE term, not NaN
    partial = {"seg": b["seg"], "cls": torch.tensor([0, -1, -1, 2])}
    ce_partial = torch.nn.functional.cross_entropy(cls_logits[[0, 3]], torch.tensor([0, 2]))
    assert torch.allclose(MultiTaskLoss("cls_baseline")(pred, partial), ce_partial)
    none = {"seg": b["seg"], "cls": torch.full((4,), -1)}
    loss = MultiTaskLoss("ynet")(pred, none)
    assert torch.isfinite(loss) and torch.allclose(loss, dce)
    with pytest.raises(LiverError):
        MultiTaskLoss("unet3d")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_overfit_one_batch_loss_decreases(strategy) -> None:
    """A few AdamW steps on one fixed batch lower the strategy's loss (the network, loss and targets fit)."""
    from monai.utils import set_determinism

    from monai_liver.engine.loss import MultiTaskLoss
    from monai_liver.networks.factory import build_network

    set_determinism(0)
    torch.set_num_threads(1)
    b = _batch(joint=strategy == "joint")
    net = build_network(strategy, n_classes=3, decoder_channels=(32, 16, 16, 8, 8))
    net.train()
    loss_fn = MultiTaskLoss(strategy)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    target = {"seg": b["seg"], "cls": b["cls"]}
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(net(b["image"]), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    set_determinism(None)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0], losses


# ---------------------------------------------------------------- metrics


def test_per_slice_metric_functions() -> None:
    from monai_liver.engine.metrics import dice_score, global_dice, lesion_detection, recall_score

    gt = np.zeros((10, 10), bool)
    gt[1:3, 1:3] = True  # lesion A, 4 px
    gt[6:9, 6:9] = True  # lesion B, 9 px
    pred = np.zeros_like(gt)
    pred[1:3, 1:2] = True  # 2 px inside A
    pred[0, 9] = True  # 1 false positive
    assert dice_score(pred, gt) == pytest.approx(2 * 2 / (3 + 13))
    assert recall_score(pred, gt) == pytest.approx(2 / 13)
    assert lesion_detection(pred, gt) == (2, 1)
    assert lesion_detection(gt, gt) == (2, 2)
    diag = np.zeros((4, 4), bool)
    diag[0, 0] = diag[1, 1] = True  # diagonal neighbours: one lesion (8-connectivity)
    assert lesion_detection(diag, diag) == (1, 1)
    empty = np.zeros_like(gt)
    assert math.isnan(dice_score(pred, empty)) and math.isnan(recall_score(pred, empty))
    assert lesion_detection(pred, empty) == (0, 0)
    assert global_dice(np.stack([pred, gt]), np.stack([gt, gt])) == pytest.approx(2 * (2 + 13) / (3 + 13 + 26))


class _FixedNet(torch.nn.Module):
    """Returns given seg / cls logits for each batch (in order)."""

    def __init__(self, outputs: list[dict]) -> None:
        super().__init__()
        self.outputs = outputs
        self.i = 0
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = self.outputs[self.i % len(self.outputs)]
        self.i += 1
        return out


def _one_hot_logits(labels: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0], c).permute(0, 3, 1, 2).float() * 10


def test_validation_metrics_match_per_slice_definitions(tmp_path) -> None:
    """Evaluator metrics (MONAI / ignite) agree with the per-slice numpy definitions and the eval files."""
    from monai.engines import SupervisedEvaluator

    from monai_liver.engine.evaluate import EvalWriter, per_slice_columns
    from monai_liver.engine.metrics import dice_score, recall_score, validation_metrics
    from monai_liver.engine.prepare_batch import PrepareBatchSegCls

    b = _batch(n=4, joint=True)
    pred_seg = b["seg"].clone()
    pred_seg[0, :, 10:14, 10:18] = 1  # slice 0: half of the lesion missed
    pred_seg[1] = 1  # slice 1: no lesion predicted
    pred_seg[2, :, 0:2, 0:2] = 3  # slice 2: a false positive of another type
    logits = _one_hot_logits(pred_seg, 5)
    data = [
        {"image": b["image"][i], "seg": b["seg"][i], "cls": b["cls"][i], "patient_id": f"P{i // 2}", "source": f"s{i}.nii.gz", "slice": i, "fold": 0}
        for i in range(4)
    ]
    from monai.data import DataLoader
    from monai_liver.networks.joint import joint_vote_logits

    net = _FixedNet([{"seg": logits, "cls": joint_vote_logits(logits)}])
    key, extra = validation_metrics("joint", 3)
    writer = EvalWriter(tmp_path / "eval", "joint", ("cyst", "hemangioma", "metastasis"))
    ev = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=4), network=net,
        prepare_batch=PrepareBatchSegCls(), key_val_metric=key, additional_metrics=extra,
        val_handlers=[writer], decollate=False,
    )
    ev.run()
    m = ev.state.metrics
    gt = (b["seg"] >= 2).numpy()[:, 0]
    pl = (pred_seg >= 2).numpy()[:, 0]
    dices = [dice_score(pl[i], gt[i]) for i in range(4)]
    recalls = [recall_score(pl[i], gt[i]) for i in range(4)]
    assert m["val_dice"] == pytest.approx(np.mean(dices), abs=1e-5)
    assert m["val_recall"] == pytest.approx(np.mean(recalls), abs=1e-5)
    # slice classes: vote of the predicted lesion pixels; slice 1 has none -> soft vote over all pixels
    assert m["val_acc"] == pytest.approx(0.75) or m["val_acc"] == pytest.approx(1.0)
    assert m["val_dice_acc"] == pytest.approx((m["val_dice"] + m["val_acc"]) / 2)
    assert set(m) == {"val_dice", "val_recall", "val_acc", "val_bacc", "val_dice_acc"}

    import pandas as pd

    df = pd.read_csv(tmp_path / "eval" / "per_slice.csv")
    assert list(df.columns) == per_slice_columns(("cyst", "hemangioma", "metastasis"))
    assert df["patient_id"].tolist() == ["P0", "P0", "P1", "P1"]
    assert df["true_cls"].tolist() == ["cyst", "hemangioma", "metastasis", "cyst"]
    assert df["dice"].to_numpy() == pytest.approx(dices)
    assert df["dice"][3] == pytest.approx(1.0) and df["dice"][1] == 0.0
    assert df[["prob_cyst", "prob_hemangioma", "prob_metastasis"]].sum(axis=1).to_numpy() == pytest.approx(1.0)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dice"] == pytest.approx(m["val_dice"], abs=1e-5)
    assert metrics["acc"] == pytest.approx(m["val_acc"], abs=1e-6)
    assert metrics["n_slices"] == 4 and metrics["n_patients"] == 2
    assert metrics["detection_recall"] == pytest.approx(3 / 4)
    assert np.array(metrics["confusion"]).sum() == 4
    assert set(metrics["sensitivity"]) == {"cyst", "hemangioma", "metastasis"}
    ex = np.load(tmp_path / "eval" / "examples.npz")
    assert ex["image"].shape == (4, 32, 32) and ex["image"].dtype == np.float32
    assert ex["gt_lesion"].dtype == np.uint8 and (ex["gt_lesion"] == gt).all() and (ex["pred_lesion"] == pl).all()


def test_eval_summary_without_class_or_seg_outputs() -> None:
    from monai_liver.engine.evaluate import summarise

    rows = [
        {"patient_id": "a", "true_cls": "x", "pred_cls": "", "dice": 0.5, "recall": 1.0, "gt_lesions": 1, "detected_lesions": 1},
        {"patient_id": "b", "true_cls": "y", "pred_cls": "", "dice": float("nan"), "recall": float("nan"), "gt_lesions": 0, "detected_lesions": 0},
    ]
    seg = summarise(rows, ("x", "y"), "seg_baseline")
    assert math.isnan(seg["acc"]) and seg["confusion"] is None and seg["dice"] == 0.5 and seg["detection_recall"] == 1.0
    cls_rows = [dict(r, pred_cls="x") for r in rows]
    cls = summarise(cls_rows, ("x", "y"), "cls_baseline")
    assert cls["acc"] == 0.5 and cls["bacc"] == 0.5 and math.isnan(cls["dice"])
    assert cls["sensitivity"] == {"x": 1.0, "y": 0.0} and cls["specificity"] == {"x": 0.0, "y": 1.0}


# ---------------------------------------------------------------- handlers


def test_atomic_save_and_load_model(tmp_path) -> None:
    from monai_liver.engine.handlers import atomic_save, load_model

    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    atomic_save({"model": net.state_dict()}, tmp_path / "m.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    load_model(other, tmp_path / "m.pt")
    assert torch.equal(other[0].weight, net[0].weight)
    with pytest.raises(LiverError, match="does not fit the Sequential network"):
        load_model(torch.nn.Sequential(torch.nn.Linear(4, 2)), tmp_path / "m.pt")
    with pytest.raises(LiverError, match="does not exist"):
        load_model(other, tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LiverError, match="cannot read the checkpoint"):
        load_model(other, tmp_path / "junk.pt")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"x": Boom()}, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "m.pt"]  # old file intact, no temp
    assert torch.load(tmp_path / "m.pt", weights_only=True)["model"].keys() == net.state_dict().keys()


def _tiny_trainer(out: Path, epochs: int, scores: list[float], keep: str = "best"):
    """A SupervisedTrainer on a linear model with our handlers and a stub evaluator reporting ``scores``."""
    from ignite.engine import Engine, Events
    from monai.engines import SupervisedTrainer

    from monai_liver.engine.handlers import EarlyStop, EpochLogger, ModelSaver, ProgressBar, ResumeCheckpoint

    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    data = [{"image": torch.randn(4, 2), "label": torch.randn(4, 1)} for _ in range(3)]

    evaluator = Engine(lambda e, b: None)  # stands in for the SupervisedEvaluator: reports the next score
    evaluator.state.key_metric_name = "val_dice"
    saver = ModelSaver(out, net, keep=keep, resume=(out / "checkpoint_last.pt").exists())

    class Validate:
        def attach(self, engine):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

        def __call__(self, engine):
            evaluator.state.epoch = engine.state.epoch
            evaluator.state.metrics = {"val_dice": scores[engine.state.epoch - 1]}
            saver(evaluator)

    class Sched:
        def attach(self, engine):
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda eng: sched.step())

    handlers = [
        ResumeCheckpoint(out / "checkpoint_last.pt", {"model": net, "optimizer": opt, "lr_scheduler": sched}),
        Validate(),
        Sched(),
        EpochLogger(out / "train_log.csv", evaluator=evaluator, optimizer=opt),
        EarlyStop(patience=2, evaluator=evaluator),
        ProgressBar(),
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=data, network=net, optimizer=opt,
        loss_function=torch.nn.MSELoss(), prepare_batch=lambda b, d, nb, **k: (b["image"], b["label"]),
        train_handlers=handlers, decollate=False,
    )
    return trainer, net, opt


def test_checkpoints_resume_log_and_early_stop(tmp_path) -> None:
    import pandas as pd

    scores = [0.2, 0.5, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6]
    # an uninterrupted run of 4 epochs, for reference
    ref_dir = tmp_path / "ref"
    trainer, ref_net, _ = _tiny_trainer(ref_dir, 4, scores)
    trainer.run()
    ref_log = pd.read_csv(ref_dir / "train_log.csv")
    assert ref_log["epoch"].tolist() == [1, 2, 3, 4]
    assert list(ref_log.columns) == ["epoch", "loss", "lr", "val_dice", "val_recall", "val_acc", "val_bacc", "val_liver_dice", "seconds", "slices"]
    assert ref_log["lr"].tolist() == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert ref_log["val_dice"].tolist() == pytest.approx(scores[:4])
    best = torch.load(ref_dir / "model.pt", weights_only=True)
    assert best["epoch"] == 4 and best["key_metric"] == "val_dice" and best["key_metric_value"] == pytest.approx(0.6)
    assert set(best) >= {"model"} and best["model"].keys() == ref_net.state_dict().keys()

    # interrupted after 2 epochs, then resumed to 4: same weights and log as the uninterrupted run
    out = tmp_path / "run"
    trainer, _, _ = _tiny_trainer(out, 2, scores)
    trainer.run()
    last = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 2 and {"model", "optimizer", "lr_scheduler"} <= set(last)
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 2
    trainer, net, opt = _tiny_trainer(out, 4, scores)
    trainer.run()
    assert trainer.state.epoch == 4
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    assert log["lr"].tolist() == pytest.approx(ref_log["lr"].tolist())
    assert log["loss"].tolist()[:2] == pytest.approx(ref_log["loss"].tolist()[:2])
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 4
    for k, v in ref_net.state_dict().items():  # same data order (no shuffling): same weights
        assert torch.allclose(net.state_dict()[k], v, atol=1e-6), k

    # early stop: no improvement for 2 validations after epoch 4 -> stops at epoch 6 of 8
    es_dir = tmp_path / "es"
    trainer, _, _ = _tiny_trainer(es_dir, 8, scores)
    trainer.run()
    assert trainer.state.epoch == 6
    assert torch.load(es_dir / "checkpoint_last.pt", weights_only=True)["trainer"]["early_stopped"] == 1
    # resuming an early-stopped run does not train further
    trainer, _, _ = _tiny_trainer(es_dir, 8, scores)
    trainer.run()
    assert trainer.state.epoch == 6
    assert pd.read_csv(es_dir / "train_log.csv")["epoch"].tolist() == [1, 2, 3, 4, 5, 6]


def test_model_saver_keeps_the_last_epoch_or_the_best_validation(tmp_path) -> None:
    from monai_liver.errors import LiverError

    scores = [0.2, 0.7, 0.4, 0.5]  # the best validation (0.7) is not the last epoch
    for keep, epoch, value in (("last", 4, 0.5), ("best", 2, 0.7)):
        trainer, net, _ = _tiny_trainer(tmp_path / keep, 4, scores, keep=keep)
        trainer.run()
        saved = torch.load(tmp_path / keep / "model.pt", weights_only=True)
        assert (saved["epoch"], saved["keep"]) == (epoch, keep)
        assert saved["key_metric_value"] == pytest.approx(value)
        if keep == "last":  # the file holds the weights the run ended with
            for k, v in net.state_dict().items():
                assert torch.equal(saved["model"][k], v), k
    with pytest.raises(LiverError, match="keep_model 'first' is not known"):
        _tiny_trainer(tmp_path / "bad", 1, scores, keep="first")


def test_set_bn_momentum() -> None:
    from monai_liver.engine.handlers import set_bn_momentum
    from monai_liver.networks.factory import build_network

    net = build_network("cls_baseline", 3)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and {m.momentum for m in bns} == {0.01}  # MONAI's EfficientNet default
    assert set_bn_momentum(net, 0.1) == len(bns) and {m.momentum for m in bns} == {0.1}
    assert set_bn_momentum(net, None) == 0 and {m.momentum for m in bns} == {0.1}


def test_rank_handlers_single_process() -> None:
    from monai.handlers import StatsHandler

    from monai_liver.engine.handlers import rank_handlers

    hs = [StatsHandler(), object()]
    assert rank_handlers(hs) == hs and rank_handlers(None) is None


# ---------------------------------------------------------------- tracking


def test_tracking_helpers(tmp_path) -> None:
    import socket

    from monai_liver.engine.tracking import check_tracking_uri, default_tracking_uri, run_name

    uri = default_tracking_uri(tmp_path / "out")
    assert uri == f"sqlite:///{(tmp_path / 'out').resolve()}/mlflow.db" and uri.startswith("sqlite:////")
    assert run_name("joint", "lits", 2) == "joint-lits-fold2"
    assert check_tracking_uri(uri) == uri
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(LiverError, match=rf"http://127.0.0.1:{port}: MLflow tracking server is not reachable"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(LiverError, match="file store"):
        check_tracking_uri(str(tmp_path / "mlruns"))


# ---------------------------------------------------------------- one-line errors


def test_excepthook_prints_liver_error_as_last_line() -> None:
    code = (
        "import monai_liver.engine as e; e.install_excepthook()\n"
        "from monai_liver.errors import LiverError\n"
        "try:\n    raise LiverError('data/x.json: datalist is empty')\n"
        "except LiverError as err:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from err\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: data/x.json: datalist is empty"]
    other = subprocess.run(
        [sys.executable, "-c", "import monai_liver.engine as e; e.install_excepthook(); raise ValueError('boom')"],
        capture_output=True, text=True, timeout=60,
    )
    assert other.returncode != 0 and "Traceback" in other.stderr and other.stderr.strip().endswith("ValueError: boom")


def test_augment_batch_flips_image_and_label_together():
    from monai_liver.engine.prepare_batch import PrepareBatchSegCls, augment_batch

    torch.manual_seed(0)
    image = torch.rand(64, 1, 8, 8)
    seg = (image > 0.5).long()  # a label that is a function of the image
    out_img, out_seg = augment_batch(image, seg, flip_prob=0.5, intensity=0.0)
    assert torch.equal(out_seg, (out_img > 0.5).long())  # every flip hit both
    assert not torch.equal(out_img, image)  # some slices were flipped
    out_img, _ = augment_batch(image, seg, intensity=0.3)
    assert out_img.min() >= 0 and out_img.max() <= 1
    batch = {"image": image, "seg": seg, "cls": torch.zeros(64, dtype=torch.long)}
    x, y = PrepareBatchSegCls()(batch)
    assert torch.equal(x, image) and torch.equal(y["seg"], seg)  # evaluation: no augmentation
    # Gaussian noise of a per-slice sigma in [0, noise): the label untouched, the image still in [0, 1]
    flat = torch.full((64, 1, 32, 32), 0.5)
    noisy, same = augment_batch(flat, torch.zeros_like(flat, dtype=torch.long), flip_prob=0.0, intensity=0.0, noise=0.1)
    sigma = noisy.flatten(1).std(dim=1)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not same.any()
    assert 0.0 < float(sigma.min()) and float(sigma.max()) < 0.12 and float(sigma.std()) > 0.01  # per slice
    x, _ = PrepareBatchSegCls(augment=True, noise=0.1)(batch)
    assert not torch.equal(x, image)
