"""``monai-liver peer nnunet`` end to end on tiny phantoms: a 2-fold experiment (segmentation baseline,
32 px, 1 epoch), then nnU-Net v2's own planning, preprocessing, 2d training (nnU-Net's default trainer
cut to 1 epoch of 2 iterations) and prediction of each held-out fold, on the CPU.

Checks: the table has the row "nnU-Net v2 2d (peer)" right under the segmentation baseline, with its
settings and training time; nnU-Net trained on exactly our folds (its split file is ours, no patient
in two folds, each held-out fold = the patients our run held out); the per-slice figures are those of
our metric code on nnU-Net's own prediction files; MLflow has a run per fold under the experiment's
parent; a second call repeats nothing; wrong inputs end in one line.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import tiny_lesion_datalist

from monai_liver.errors import LiverError

pytest.importorskip("nnunetv2", reason="nnU-Net is the 'peer' extra: pip install -c constraints.txt -e '.[peer]'")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from monai_liver.experiment.runner import run_experiment

    d = tmp_path_factory.mktemp("peer")
    datalist = tiny_lesion_datalist(d)
    out = d / "exp"
    run_experiment(out, datalist=datalist, folds=2, epochs=1, image_size=32, batch_size=4, strategies=["seg_baseline"],
                   inits=["scratch"], device="cpu", phantoms=True, n_boot=50, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def peer(experiment, tmp_path_factory):
    import os

    from monai_liver.peer.nnunet import run_peer

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # nnU-Net's subprocesses: one thread each on the shared CPU
    try:
        lines: list[str] = []
        res = run_peer(experiment, epochs=1, iterations=2, val_iterations=1, device="cpu", n_boot=50, log=lines.append)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return res, lines


def test_row_under_the_segmentation_baseline(experiment, peer):
    res, _ = peer
    table = pd.read_csv(experiment / "results.csv")
    order = list(zip(table["strategy"], table["init"]))
    seg = [i for i, k in enumerate(order) if k[0] == "seg_baseline"]
    row = table.iloc[seg[-1] + 1]
    assert (row["strategy"], row["init"], row["title"], row["status"]) == ("nnunet", "scratch", "nnU-Net v2 2d (peer)", "done")
    assert row["n_slices"] == 12 and row["n_patients"] == 6 and row["folds_done"] == 2
    assert 0.0 <= row["dice"] <= 1.0 and row["dice_lo"] <= row["dice"] <= row["dice_hi"]
    assert row["train_s"] > 0 and "nnUNetTrainer_MonaiLiver_1ep_2it_1val" in row["settings"] and "cpu" in row["settings"]
    ours = table[(table.strategy == "seg_baseline") & (table.init == "scratch")].iloc[0]
    assert ours["train_s"] > 0 and "basicunet" in ours["settings"]
    md = (experiment / "results.md").read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("| ") and "Strategy" not in ln and "---" not in ln]
    at = max(i for i, ln in enumerate(rows) if ln.startswith("| Segmentation baseline"))
    assert rows[at + 1].startswith("| nnU-Net v2 2d (peer) | scratch |")
    assert "## Training time per fold" in "\n".join(md)
    assert any(ln.startswith("| nnU-Net v2 2d (peer) | scratch | nnUNetTrainer_MonaiLiver_1ep_2it_1val") for ln in md)
    html = (experiment / "report.html").read_text()
    assert "nnU-Net v2 2d (peer)" in html and "Training time per fold" in html
    assert res["trainer"] == "nnUNetTrainer_MonaiLiver_1ep_2it_1val" and res["epochs"] == 1 and res["iterations"] == 2


def test_nnunet_trained_on_our_folds(experiment, peer):
    peer_dir = experiment / "peers" / "nnunet"
    cases = pd.read_csv(peer_dir / "cases.csv", dtype={"patient_id": str})
    patient = dict(zip(cases["case"], cases["patient_id"]))
    used = json.loads((peer_dir / "nnUNet_preprocessed" / "Dataset501_MonaiLiver" / "splits_final.json").read_text())
    assert used == json.loads((peer_dir / "splits_final.json").read_text())
    from monai_liver.peer.nnunet_dataset import experiment_datalist

    datalist = json.loads(experiment_datalist(experiment).read_text())  # the folds our runs used
    fold_of = {str(it["patient_id"]): int(it["fold"]) for it in datalist["training"]}
    assert len(used) == 2
    seen = []
    for k, split in enumerate(used):
        val, train = {patient[c] for c in split["val"]}, {patient[c] for c in split["train"]}
        assert not val & train  # no patient on both sides
        assert val == {p for p, f in fold_of.items() if f == k} and train == {p for p, f in fold_of.items() if f != k}
        # the patients our own run of this fold held out
        held = pd.read_csv(experiment / "runs" / "seg_baseline" / "scratch" / f"fold{k}" / "eval" / "per_slice.csv",
                           dtype={"patient_id": str})
        assert val == set(held["patient_id"]) and len(split["val"]) == len(held)
        seen += split["val"]
        log = (peer_dir / f"fold{k}" / "train.log").read_text()
        assert "Using splits from existing split file" in log and f"Desired fold for training: {k}" in log
    assert sorted(seen) == sorted(cases["case"])  # every slice held out exactly once
    # nnU-Net's 2D input: 1 x H x W images, labels background / liver / lesion
    import SimpleITK as sitk

    ds = peer_dir / "nnUNet_raw" / "Dataset501_MonaiLiver"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{cases['case'][0]}_0000.nii.gz")))
    assert image.shape == (1, 32, 32)
    assert json.loads((ds / "dataset.json").read_text())["labels"] == {"background": 0, "liver": 1, "lesion": 2}


def test_nnunet_predictions_scored_by_our_code(experiment, peer):
    import nibabel as nib
    import numpy as np

    from monai_liver.engine.metrics import dice_score, lesion_detection, recall_score

    peer_dir = experiment / "peers" / "nnunet"
    ds = peer_dir / "nnUNet_raw" / "Dataset501_MonaiLiver"
    split = json.loads((peer_dir / "splits_final.json").read_text())
    for k in range(2):
        fold = peer_dir / f"fold{k}"
        rows = pd.read_csv(fold / "eval" / "per_slice.csv", dtype={"patient_id": str})
        assert len(rows) == len(split[k]["val"])
        assert "nnUNetv2_predict" in (fold / "predict.log").read_text()
        done = json.loads((fold / "DONE").read_text())
        assert done["train_s"] > 0 and done["predict_s"] > 0
        for case, (_, r) in zip(split[k]["val"], rows.iterrows()):
            pred_file = fold / "pred" / f"{case}.nii.gz"  # written by nnU-Net, read by our scoring
            assert pred_file.stat().st_mtime <= (fold / "eval" / "per_slice.csv").stat().st_mtime
            pred = np.asarray(nib.load(str(pred_file)).dataobj)[:, :, 0] >= 2
            gt = np.asarray(nib.load(str(ds / "labelsTr" / f"{case}.nii.gz")).dataobj)[:, :, 0] >= 2
            for name, want in (("dice", dice_score(pred, gt)), ("recall", recall_score(pred, gt))):
                assert (np.isnan(want) and np.isnan(r[name])) or abs(want - r[name]) < 1e-9, (case, name)
            assert (r["gt_lesions"], r["detected_lesions"]) == lesion_detection(pred, gt)
            assert r["pred_lesion_px"] == int(pred.sum()) and r["gt_lesion_px"] == int(gt.sum())
        metrics = json.loads((fold / "eval" / "metrics.json").read_text())
        assert metrics["strategy"] == "nnunet" and metrics["n_slices"] == len(rows)
    everything = pd.read_csv(experiment / "per_slice.csv", dtype={"patient_id": str})
    assert (everything["strategy"] == "nnunet").sum() == 12


def test_scoring_the_references_gives_dice_one(experiment, peer, tmp_path):
    from monai_liver.peer.nnunet_dataset import read_cases
    from monai_liver.peer.score import score_predictions

    peer_dir = experiment / "peers" / "nnunet"
    ds = peer_dir / "nnUNet_raw" / "Dataset501_MonaiLiver"
    cases = read_cases(peer_dir / "cases.csv")
    m = score_predictions(cases, ds / "imagesTr", ds / "labelsTr", ds / "labelsTr", tmp_path, ["cyst", "hemangioma", "metastasis"])
    assert m["dice"] == 1.0 and m["recall"] == 1.0 and m["detection_recall"] == 1.0


def test_mlflow_runs_under_the_experiments_parent(experiment, peer):
    from mlflow.tracking import MlflowClient

    parent = json.loads((experiment / "mlflow_parent.json").read_text())
    client = MlflowClient(tracking_uri=parent["tracking_uri"])
    exp = client.get_experiment_by_name("monai_liver")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    for k in range(2):
        r = runs[f"nnunet-2d-fold{k}"]
        assert r.data.tags["mlflow.parentRunId"] == parent["run_id"]
        assert r.data.params["trainer"] == "nnUNetTrainer_MonaiLiver_1ep_2it_1val" and r.data.params["device"] == "cpu"
        assert "heldout_dice" in r.data.metrics and "train_loss" in r.data.metrics


def test_second_call_repeats_nothing_and_other_settings_are_refused(experiment, peer):
    from monai_liver.peer.nnunet import run_peer

    peer_dir = experiment / "peers" / "nnunet"
    before = {p: p.stat().st_mtime_ns for p in peer_dir.glob("fold*/DONE")}
    lines: list[str] = []
    run_peer(experiment, epochs=1, iterations=2, val_iterations=1, device="cpu", n_boot=50, tracking=False, log=lines.append)
    assert sum("done before" in ln for ln in lines) == 2 and not any("nnUNetv2_train" in ln for ln in lines)
    assert before == {p: p.stat().st_mtime_ns for p in peer_dir.glob("fold*/DONE")}
    with pytest.raises(LiverError, match="started with trainer="):
        run_peer(experiment, epochs=2, device="cpu", tracking=False, log=lines.append)


def test_clear_errors(tmp_path, monkeypatch, capsys):
    import importlib.util

    from monai_liver.cli import main
    from monai_liver.peer import nnunet

    (tmp_path / "empty").mkdir()
    assert main(["peer", "nnunet", "--experiment", str(tmp_path / "empty"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no lesion-type datalist" in err[0]
    with pytest.raises(LiverError, match="--trainer"):
        nnunet.trainer_for("nnUNetTrainer_5epochs", epochs=3)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name, *a))
    assert main(["peer", "nnunet", "--experiment", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nnunetv2 is not installed" in err[0] and "pip install" in err[0] and ".[peer]" in err[0]
