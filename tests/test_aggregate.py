"""Results table from hand-made per-slice CSVs whose answers are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monai_liver.errors import LiverError
from monai_liver.experiment import aggregate as agg

CLASSES = ("cyst", "hemangioma", "metastasis")
NAN = float("nan")


def _rows(spec):
    """spec: (patient, true, pred, dice, recall, gt_px, pred_px, gt_lesions, detected)."""
    out = []
    for i, (p, t, pr, d, r, g, q, gl, dl) in enumerate(spec):
        row = {"patient_id": p, "source": f"img_{p}_{i}.nii.gz", "slice": i, "fold": 99, "true_cls": t, "pred_cls": pr}
        for c in CLASSES:
            row[f"prob_{c}"] = 1.0 if c == pr else 0.0
        row.update(dice=d, recall=r, gt_lesion_px=g, pred_lesion_px=q, gt_lesions=gl, detected_lesions=dl)
        out.append(row)
    return pd.DataFrame(out)


def _write_run(out: Path, strategy: str, init: str, fold: int, spec, done: bool = True) -> Path:
    d = out / "runs" / strategy / init / f"fold{fold}"
    (d / "eval").mkdir(parents=True, exist_ok=True)
    _rows(spec).to_csv(d / "eval" / "per_slice.csv", index=False)
    if done:
        (d / "DONE").write_text("ok\n")
    return d


# joint / lits: fold 0 = patients A (2 slices), B (1 slice); fold 1 = C, D
JOINT_F0 = [
    ("A", "cyst", "cyst", 0.8, 1.0, 10, 10, 1, 1),
    ("A", "cyst", "metastasis", 0.4, 0.5, 10, 10, 2, 1),
    ("B", "hemangioma", "hemangioma", 0.6, 0.5, 20, 0, 1, 0),
]
JOINT_F1 = [
    ("C", "metastasis", "metastasis", 1.0, 1.0, 5, 5, 1, 1),
    ("D", "metastasis", "", 0.0, 0.0, 5, 0, 1, 0),  # joint predicted no lesion pixel: no class
]


def test_known_figures(tmp_path):
    _write_run(tmp_path, "joint", "lits", 0, JOINT_F0)
    _write_run(tmp_path, "joint", "lits", 1, JOINT_F1)
    (tmp_path / "experiment.json").write_text(json.dumps({"folds": 2, "data": "phantoms", "classes": list(CLASSES)}))
    paths = agg.aggregate(tmp_path, n_boot=200)
    res = pd.read_csv(paths["results"])
    assert len(res) == 12
    r = res[(res.strategy == "joint") & (res.init == "lits")].iloc[0]
    assert r.status == "done" and r.folds_done == 2
    assert r.acc == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)  # missing class counts as wrong
    assert r.dice == pytest.approx((0.6 + 0.5) / 2, abs=1e-4)
    assert r.recall == pytest.approx(((1.0 + 0.5 + 0.5) / 3 + 0.5) / 2, abs=1e-4)
    # fold 0: cyst sens 1/2, hemangioma 1/1 -> 0.75; fold 1: metastasis 1/2 -> 0.5
    assert r.bacc == pytest.approx(0.625, abs=1e-4)
    # metastasis specificity only defined in fold 0: (3 - 0 - 1 + 0) / 3
    assert r.spec_metastasis == pytest.approx(2 / 3, abs=1e-4)
    assert r.sens_cyst == pytest.approx(0.5, abs=1e-4)
    # global Dice fold 0: (0.8*20 + 0.4*20 + 0.6*20) / (20+20+20); fold 1: (1.0*10 + 0) / 15
    assert r.global_dice == pytest.approx((0.6 + 10 / 15) / 2, abs=1e-4)
    assert r.detection_recall == pytest.approx((2 / 4 + 1 / 2) / 2, abs=1e-4)
    assert (r.n_slices, r.n_patients, r.acc_n_slices) == (5, 4, 5)
    assert r.acc_lo <= r.acc <= r.acc_hi and r.acc_lo < r.acc_hi
    assert r.paper_acc == pytest.approx(0.86)
    assert json.loads(r.confusion)[0] == [1, 0, 1, 0]  # cyst row: 1 cyst, 1 metastasis, 0 none

    ps = pd.read_csv(paths["per_slice"])
    assert len(ps) == 5 and list(ps.columns[:3]) == ["strategy", "init", "fold"]
    assert sorted(ps.fold.unique()) == [0, 1]  # fold from the folder layout, not the CSV

    md = paths["markdown"].read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert len(table) == 13  # header + 12 rows
    joint = next(ln for ln in table if ln.startswith("| Joint learning | LiTS"))
    assert f"{r.acc:.2f} [{r.acc_lo:.2f}, {r.acc_hi:.2f}]" in joint and "0.86" in joint
    assert "Numbers from phantoms" in md and "bootstrap" in md


def test_sklearn_agreement(tmp_path):
    """Per-fold accuracy and balanced accuracy agree with scikit-learn, averaged over folds."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(1)
    expected_acc, expected_bacc = [], []
    for fold in range(3):
        spec = []
        for p in range(12):
            for _ in range(rng.integers(1, 4)):
                t, pr = CLASSES[rng.integers(3)], CLASSES[rng.integers(3)]
                spec.append((f"P{fold}_{p}", t, pr, rng.random(), rng.random(), 10, 10, 1, 1))
        _write_run(tmp_path, "ynet", "scratch", fold, spec)
        df = _rows(spec)
        expected_acc.append(accuracy_score(df.true_cls, df.pred_cls))
        expected_bacc.append(balanced_accuracy_score(df.true_cls, df.pred_cls))
    res = pd.read_csv(agg.aggregate(tmp_path, n_boot=100)["results"])
    r = res[(res.strategy == "ynet") & (res.init == "scratch")].iloc[0]
    assert r.acc == pytest.approx(np.mean(expected_acc), abs=1e-4)
    assert r.bacc == pytest.approx(np.mean(expected_bacc), abs=1e-4)
    assert r.status == "done"  # no experiment.json: the folds found are the folds expected


def test_constant_data_gives_degenerate_interval_and_bootstrap_is_seeded(tmp_path):
    spec = [(f"P{p}", "cyst", "cyst", 0.5, 0.7, 10, 10, 1, 1) for p in range(6)]
    for f in range(2):
        _write_run(tmp_path, "cls_baseline", "lits", f, spec)
    df = agg.load_per_slice(tmp_path)
    a = agg.summarise(df, n_boot=300, seed=3)
    b = agg.summarise(df, n_boot=300, seed=3)
    pd.testing.assert_frame_equal(a, b)
    r = a[(a.strategy == "cls_baseline") & (a.init == "lits")].iloc[0]
    assert (r.acc, r.acc_lo, r.acc_hi) == (1.0, 1.0, 1.0)
    # varied data: a real interval that moves with the seed
    spec2 = [(f"Q{p}", "cyst", "cyst" if p % 2 else "hemangioma", 0.5, 0.7, 10, 10, 1, 1) for p in range(10)]
    _write_run(tmp_path, "cls_baseline", "scratch", 0, spec2)
    df = agg.load_per_slice(tmp_path)
    r0 = agg.summarise(df, n_boot=300, seed=0).set_index(["strategy", "init"]).loc[("cls_baseline", "scratch")]
    assert r0.acc == pytest.approx(0.5) and r0.acc_lo < 0.45 and r0.acc_hi > 0.55


def test_status_not_applicable_and_cells(tmp_path):
    # seg baseline has no classes; cls baseline no masks
    seg = [("A", "cyst", "", 0.7, 0.8, 10, 10, 1, 1), ("B", "metastasis", "", 0.5, 0.6, 10, 10, 1, 1)]
    cls = [("A", "cyst", "cyst", NAN, NAN, NAN, NAN, NAN, NAN), ("B", "metastasis", "cyst", NAN, NAN, NAN, NAN, NAN, NAN)]
    _write_run(tmp_path, "seg_baseline", "lits", 0, seg)
    _write_run(tmp_path, "cls_baseline", "lits", 0, cls)
    _write_run(tmp_path, "cls_baseline", "scratch", 0, cls, done=False)  # unfinished: left out
    (tmp_path / "runs" / "joint" / "imagenet").mkdir(parents=True)
    (tmp_path / "runs" / "joint" / "imagenet" / "NOT_RUN").write_text("ImageNet weights unavailable (no file)\n")
    (tmp_path / "experiment.json").write_text(
        json.dumps({"folds": 2, "strategies": ["cls_baseline", "seg_baseline", "joint"], "inits": ["scratch", "imagenet", "lits"]})
    )
    paths = agg.aggregate(tmp_path, n_boot=50)
    res = pd.read_csv(paths["results"]).set_index(["strategy", "init"])
    assert math.isnan(res.loc[("seg_baseline", "lits"), "acc"])
    assert res.loc[("seg_baseline", "lits"), "dice"] == pytest.approx(0.6)
    assert math.isnan(res.loc[("cls_baseline", "lits"), "dice"])
    assert res.loc[("cls_baseline", "lits"), "acc"] == pytest.approx(0.5)
    assert res.loc[("cls_baseline", "lits"), "status"] == "partial: 1/2 folds"
    assert res.loc[("cls_baseline", "scratch"), "status"] == "not run: pending"
    assert res.loc[("joint", "imagenet"), "status"] == "not run: ImageNet weights unavailable (no file)"
    assert res.loc[("ynet", "lits"), "status"] == "not run: not requested"
    md = paths["markdown"].read_text()
    assert "Numbers from phantoms" not in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| Segmentation baseline | LiTS"))
    assert row.split("|")[3].strip() == "–"  # Acc of the segmentation baseline: not applicable
    assert len(pd.read_csv(paths["per_slice"])) == 4


def test_format_cell():
    assert agg.format_cell(0.7123, 0.65, 0.771) == "0.71 [0.65, 0.77]"
    assert agg.format_cell(0.7, NAN, NAN) == "0.70"
    assert agg.format_cell(NAN) == "–"


def test_bad_inputs(tmp_path):
    with pytest.raises(LiverError, match="not a folder"):
        agg.aggregate(tmp_path / "missing")
    with pytest.raises(LiverError, match="no experiment here"):
        agg.aggregate(tmp_path)
    d = _write_run(tmp_path, "joint", "lits", 0, JOINT_F0)
    (d / "eval" / "per_slice.csv").write_text("patient_id,true_cls\nA,cyst\n")
    with pytest.raises(LiverError, match=r"per_slice\.csv: missing column"):
        agg.aggregate(tmp_path)


def test_rows_that_disagree_with_their_run_are_marked_inconsistent(tmp_path):
    """A run whose per_slice.csv no longer gives its own metrics.json (edited, overwritten) is not
    reported as done (issue 14)."""
    good = _write_run(tmp_path, "joint", "lits", 0, JOINT_F0)
    (good / "eval" / "metrics.json").write_text(json.dumps({"n_slices": 3, "dice": 0.6, "acc": 2 / 3}))
    bad = _write_run(tmp_path, "joint", "scratch", 0, JOINT_F0)
    (bad / "eval" / "metrics.json").write_text(json.dumps({"n_slices": 3, "dice": 0.75, "acc": 2 / 3}))
    (tmp_path / "experiment.json").write_text(json.dumps({"folds": 1, "strategies": ["joint"], "inits": ["scratch", "lits"]}))
    agg.aggregate(tmp_path, n_boot=0)
    res = pd.read_csv(tmp_path / "results.csv").set_index(["strategy", "init"])
    assert res.loc[("joint", "lits"), "status"] == "done"
    assert res.loc[("joint", "scratch"), "status"] == "inconsistent: fold 0: lesion Dice 0.6 in per_slice.csv, 0.75 in metrics.json"


def test_settings_line_gives_the_pretraining_per_slice_and_per_case():
    exp = {"backbone": "basicunet-small", "image_size": 64, "epochs": 20, "batch_size": 8, "learning_rate": 0.005,
           "lits_epochs": 7}
    line = agg.settings_line(exp, {"val_dice": 0.497, "val_liver_dice": 0.877, "case_liver_dice": 0.958,
                                   "case_lesion_dice": 0.73, "cases": 3, "lesion_cases": 3})
    assert line == ("All rows: backbone basicunet-small, 64 px, 20 epochs, batch 8, lr 0.005. LiTS pretraining (7 epochs), "
                    "held-out LiTS fold 0: liver Dice 0.88, lesion Dice 0.50 per slice; per volume (LiTS's Dice per case, "
                    "3 volumes): liver Dice 0.96, lesion Dice 0.73.")
    assert agg.settings_line(exp, {"val_dice": 0.5, "val_liver_dice": 0.9}).endswith("lesion Dice 0.50 per slice.")
    # an experiment.json that records the pretraining's own learning rate
    assert "LiTS pretraining (7 epochs, lr 0.01), held-out" in agg.settings_line(exp | {"lits_learning_rate": 0.01},
                                                                                   {"val_dice": 0.5, "val_liver_dice": 0.9})


def test_pretrain_metrics_are_those_of_the_epoch_model_pt_holds(tmp_path):
    """The pretraining's figures under the table are its kept model's, not the best row of its log."""
    import torch

    from monai_liver.experiment.runs import pretrain_metrics

    (tmp_path / "train_log.csv").write_text("epoch,loss,val_dice,val_liver_dice\n1,0.9,,\n5,0.5,0.60,0.91\n7,0.4,0.55,0.93\n")
    assert pretrain_metrics(tmp_path) == {"epoch": 7, "val_dice": 0.55, "val_liver_dice": 0.93}  # no model.pt: the last
    torch.save({"model": {}, "epoch": 5}, tmp_path / "model.pt")  # a model kept with keep_model best
    assert pretrain_metrics(tmp_path) == {"epoch": 5, "val_dice": 0.60, "val_liver_dice": 0.91}


def test_progress_figures_of_a_pretraining_name_every_figure_once(tmp_path):
    """The progress line of a pretraining: per-slice and per-case figures, none hiding another."""
    from monai_liver.experiment.runs import RunSpec, _figures

    (tmp_path / "metrics.json").write_text(json.dumps({"val_dice": 0.497, "val_liver_dice": 0.877, "case_liver_dice": 0.958,
                                                       "case_lesion_dice": 0.73, "cases": 3, "lesion_cases": 3}))
    spec = RunSpec(name="lits_pretrain", out=tmp_path, run_dir=tmp_path, bundle="lits_pretrain", overrides={}, tracking={},
                   env={}, isolation="inprocess", strategy="lits_pretrain", init="scratch", fold=0, pretrain_key="val_dice")
    assert _figures(spec) == {"liver Dice": 0.877, "lesion Dice": 0.497, "liver Dice per case": 0.958,
                              "lesion Dice per case": 0.73}


def test_held_out_cases_load_the_model_on_the_experiments_device(tmp_path, monkeypatch):
    """``--device cpu`` holds for the pretrainings' per-case check too (a GPU host must not move it to cuda)."""
    import monai_liver.inference.model as model_module
    from monai_liver.experiment.runs import held_out_cases

    datalist = tmp_path / "lits.json"
    datalist.write_text(json.dumps({"dataset_dir": str(tmp_path), "training": []}))
    asked = []

    class Stop(Exception):
        pass

    def fake_load_model(model, *a, device=None, **k):
        asked.append(device)
        raise Stop

    monkeypatch.setattr(model_module, "load_model", fake_load_model)
    for device in ("cpu", None):
        with pytest.raises(Stop):
            held_out_cases(tmp_path / "model.pt", datalist, 0, device)
    assert asked == ["cpu", None]
