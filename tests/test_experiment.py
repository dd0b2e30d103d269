"""``monai-liver experiment`` end to end at the smallest scale: every strategy, 2 folds, scratch + LiTS
(+ ImageNet, unavailable offline), killed twice midway (SIGTERM, then SIGKILL) and resumed.

Checks: no finished run is repeated (runs.log, DONE mtimes), the table is complete, MLflow has one
parent run with a child per run, and a folder cannot be resumed with other settings.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from monai_liver.constants import STRATEGIES
from conftest import console_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from monai_liver.data import datalist as dl
    from monai_liver.data import phantoms

    d = tmp_path_factory.mktemp("data")
    manifest = phantoms.make_lesion_slices(d / "lesions", n_patients=8, n_slices=16, size=64, seed=0)
    phantoms.make_lits_phantoms(d / "lits", n_volumes=2, shape=(64, 64, 16), seed=0)
    lesions = dl.write_datalist(dl.datalist_from_manifest(manifest, n_folds=2, seed=0), d / "lesions.json")
    lits = dl.write_datalist(dl.datalist_from_lits(d / "lits", n_folds=2, seed=0), d / "lits.json")
    return {"lesions": lesions, "lits": lits, "dir": d}


def _cmd(out: Path, data: dict, epochs: int = 1) -> list[str]:
    return [sys.executable, "-m", "monai_liver", "experiment", "--out", str(out), "--datalist", str(data["lesions"]),
            "--lits-datalist", str(data["lits"]), "--folds", "2", "--epochs", str(epochs), "--lits-epochs", "1", "--localiser-epochs", "1", "--localiser-image-size", "32",
            "--image-size", "32", "--batch-size", "4", "--max-slices", "4", "--inits", "scratch", "imagenet", "lits",
            "--no-download", "--device", "cpu", "--phantoms"]


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    # one thread: the CPU is shared; an empty torch hub cache: no ImageNet weights, whatever the machine has
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_HOME=str(tmp / "torch_home"), PYTHONUNBUFFERED="1")
    return env


def _done(out: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/fold*/DONE")}


def _start_and_kill(cmd, env, out: Path, sig: int, n_done: int, log: Path, timeout: float = 600) -> None:
    with console_process(cmd, log, env, mode="a") as proc:
        deadline = time.monotonic() + timeout
        while len(_done(out)) < n_done:
            assert proc.poll() is None, f"experiment ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    assert proc.returncode != 0  # it was stopped, not finished


def test_experiment_kill_resume(data, tmp_path):
    out = tmp_path / "exp"
    env = _env(tmp_path)
    log = tmp_path / "console.txt"
    cmd = _cmd(out, data)

    _start_and_kill(cmd, env, out, signal.SIGTERM, 1, log)
    first = _done(out)
    parent = json.loads((out / "mlflow_parent.json").read_text())["run_id"]
    _start_and_kill(cmd, env, out, signal.SIGKILL, len(first) + 3, log)
    second = _done(out)
    assert all(second[p] == t for p, t in first.items())  # finished runs were not run again

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    final = _done(out)
    assert len(final) == len(STRATEGIES) * 2 * 2  # 4 strategies x (scratch, lits) x 2 folds
    assert all(final[p] == t for p, t in second.items())
    assert "finished before" in res.stdout and "not run again" in res.stdout

    # the preprocessed slices on disk: one folder per transform chain (train and held-out chain of each
    # strategy and pretraining), shared by the three processes and the runs of every fold and init
    assert len(list((out / "cache" / "prep").iterdir())) == 2 * (len(STRATEGIES) + 2)

    # every run finished exactly once; lits_pretrain and the liver localiser ran to completion once
    events = [ln.split()[2:] for ln in (out / "runs.log").read_text().splitlines()]
    done = Counter(tuple(e[1:]) for e in events if e[0] == "done")
    assert len(done) == len(final) + 2 and set(done.values()) == {1}
    assert done[("lits_pretrain", "scratch", "fold0")] == 1 and done[("liver_localiser", "scratch", "fold0")] == 1
    # the pretrainings' held-out figures: per slice (the bundle's validation) and per volume of fold 0
    lits = json.loads(Path(data["lits"]).read_text())
    held_out = [it for it in lits["training"] if it["fold"] == 0]
    for name in ("lits_pretrain", "liver_localiser"):
        m = json.loads((out / "pretrain" / name / "metrics.json").read_text())
        assert {"val_dice", "val_liver_dice"} <= set(m) and m["cases"] == len(held_out) > 0, m
        assert 0 <= m["case_liver_dice"] <= 1
    # which epoch each model is: the strategy runs' last (their held-out fold is the table's test fold), the
    # localiser's best on its validation fold (its test is the end-to-end check on volumes no model saw)
    from monai_liver.engine.handlers import read_checkpoint

    keeps = {name: read_checkpoint(out / "pretrain" / name / "model.pt")["keep"] for name in ("lits_pretrain", "liver_localiser")}
    assert keeps == {"lits_pretrain": "last", "liver_localiser": "best"}
    assert {read_checkpoint(p)["keep"] for p in (out / "runs").glob("*/*/fold*/model.pt")} == {"last"}
    # the pretraining at the preset's lits_learning_rate, the localiser and the runs at its learning_rate
    from monai_liver.experiment.settings import QUICK

    def first_lr(run: Path) -> float:
        with open(run / "train_log.csv") as f:
            return float(next(csv.DictReader(f))["lr"])

    assert QUICK.lits_learning_rate != QUICK.learning_rate
    assert first_lr(out / "pretrain" / "lits_pretrain") == pytest.approx(QUICK.lits_learning_rate)
    assert first_lr(out / "pretrain" / "liver_localiser") == pytest.approx(QUICK.learning_rate)
    assert first_lr(out / "runs" / "joint" / "lits" / "fold0") == pytest.approx(QUICK.learning_rate)
    assert json.loads((out / "experiment.json").read_text())["lits_learning_rate"] == QUICK.lits_learning_rate

    # a model package per segmenting row, with the liver localiser (whole slices) and the settings
    from monai_liver.model_package import read_settings

    packages = sorted(p.name for p in (out / "packages").iterdir())
    assert packages == [f"{s}-{i}" for s in ("joint", "seg_baseline", "ynet") for i in ("lits", "scratch")]
    info = json.loads((out / "packages" / "joint-lits" / "model.json").read_text())
    assert info["settings"]["strategy"] == "joint" and info["settings"]["image_size"] == 32
    assert info["provenance"]["fold"] in ("fold0", "fold1") and info["localiser"]["roi_margin"] == -1
    assert read_settings(out / "packages" / "joint-lits" / "liver_model.pt")["data"]["fold_held_out"] == 0
    assert info["lesion_gate"]["strategy"] == "lits_pretrain" and info["lesion_gate"]["roi_margin"] >= 0

    # the table: 12 rows, 8 done on every held-out slice, ImageNet not run with the reason
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 12
    ran = table[table.init != "imagenet"]
    assert (ran.status == "done").all() and (ran.n_slices == 16).all() and (ran.n_patients == 8).all()
    assert ran[ran.strategy != "seg_baseline"].acc.notna().all()
    assert ran[ran.strategy != "cls_baseline"].dice.notna().all()
    assert table[table.init == "imagenet"].status.str.contains("not run: .*ImageNet weights", regex=True).all()
    assert len(pd.read_csv(out / "per_slice.csv")) == 8 * 16
    md = (out / "results.md").read_text()
    assert "Numbers from phantoms" in md and "(phantoms)" in res.stdout
    assert "| Joint learning | LiTS |" in md and res.stdout.count("| Joint learning |") == 3
    assert (out / "report.html").is_file() and (out / "figures" / "metrics.png").is_file()

    # MLflow: the same parent across the three starts, one child per run (+ the two pretraining runs)
    from mlflow.tracking import MlflowClient

    assert json.loads((out / "mlflow_parent.json").read_text())["run_id"] == parent
    client = MlflowClient(tracking_uri="sqlite:///" + (out / "mlflow.db").as_posix())
    exp = client.get_experiment_by_name("monai_liver")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    names = Counter(r.info.run_name for r in children)
    assert len(names) == len(final) + 2 and set(names.values()) == {1}
    assert all("heldout_n_slices" in r.data.metrics for r in children if r.info.run_name.startswith("joint"))
    top = client.get_run(parent)
    assert top.info.status == "FINISHED"
    assert {"results.csv", "results.md", "report.html", "figures"} <= {a.path for a in client.list_artifacts(parent)}
    # every run's artifacts sit beside the experiment's database, never in ./mlruns of the caller
    assert all(r.info.artifact_uri.startswith((out / "mlruns").resolve().as_uri()) for r in [top, *children])

    # resuming with other settings is refused with one clear line
    bad = subprocess.run(_cmd(out, data, epochs=2), env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "epochs=1" in bad.stderr


@pytest.mark.parametrize("isolation", ["subprocess", "inprocess"])
def test_bundle_failure_is_one_clear_error(data, tmp_path, isolation):
    """A bundle that fails (here: a fold the datalist lacks) stops the experiment with the bundle's
    own one-line error, naming its log; both ways of running a bundle."""
    from monai_liver.engine.data import datalist_dataset_dir
    from monai_liver.errors import LiverError
    from monai_liver.constants import bundles_dir
    from monai_liver.experiment.bundle_run import run_bundle

    bundle = bundles_dir() / "seg_baseline"
    o = {"bundle_root": str(bundle), "datalist": str(data["lesions"]), "dataset_dir": datalist_dataset_dir(data["lesions"]),
         "fold": 7, "init": "scratch", "output_dir": str(tmp_path / "run"), "epochs": 1, "image_size": 32,
         "cache_dir": str(tmp_path / "cache"), "num_workers": 0, "progress": False}
    log = tmp_path / "run" / "train.log"
    with pytest.raises(LiverError, match="fold 7 does not exist") as e:
        run_bundle(bundle, ["train.json"], o, log, _env(tmp_path), isolation)
    assert str(log) in str(e.value) and "\n" not in str(e.value)
    assert "fold 7 does not exist" in log.read_text()


def test_resume_on_other_data_is_refused(data, tmp_path):
    """The data fingerprint: a datalist whose files changed cannot resume the folder; nothing is written."""
    from monai_liver.errors import LiverError
    from monai_liver.experiment.fingerprint import data_fingerprint
    from monai_liver.experiment.data import check_same_data
    from monai_liver.experiment.settings import QUICK

    out = tmp_path / "exp"
    out.mkdir()
    copy = tmp_path / "data"
    shutil.copytree(data["dir"], copy)
    lesions = copy / "lesions.json"
    settings = QUICK.but(datalist=lesions, lits_datalist=copy / "lits.json")
    fp = data_fingerprint(lesions, None, None, copy / "lits.json")
    assert fp and fp == data_fingerprint(lesions, None, None, copy / "lits.json")  # stable
    (out / "experiment.json").write_text(json.dumps({"data_fingerprint": fp}))
    check_same_data(out, settings)  # same data: fine
    one = sorted((copy / "lesions" / "images").iterdir())[0]
    one.write_bytes(one.read_bytes() + b"changed")  # one image changed
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(LiverError, match="started on other data"):
        check_same_data(out, settings)
    assert sorted(p.name for p in out.iterdir()) == before
