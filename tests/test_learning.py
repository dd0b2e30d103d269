"""Guard against strategies that stop learning: each bundle, run through ``python -m monai.bundle
run`` with the quick preset's recipe (basicunet-small, batch 8, lr 5e-3, batch Dice, augmentation on the
batch), must fit a small phantom set.

This is a capacity check, not a held-out score: the run trains and validates on the same 16 slices
(``fold -1``), so a bug that keeps a network from learning (the joint network predicting no lesion,
a classifier stuck on one class, a broken loss or augmentation) fails it within a minute, while the
held-out figures live in ``benchmarks/bench_learning.py`` and the README.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 100

#: strategy -> minimum training-set figures after EPOCHS epochs; None: the majority class's share
#: (0.5 here) plus 0.1 (the joint vote fits more slowly than a class head). Measured on this machine
#: (seed 0) after only 60 epochs: seg_baseline Dice 0.74; ynet Dice 0.75-0.81, Acc 0.75-0.94; joint
#: Dice 0.74, Acc 0.56; cls_baseline Acc 1.0, which left joint and ynet too near their floors: 100
#: epochs (200 optimiser steps) pass with room.
FLOORS = {
    "seg_baseline": {"val_dice": 0.5},
    "ynet": {"val_dice": 0.5, "val_acc": 0.8},
    "joint": {"val_dice": 0.5, "val_acc": None},
    "cls_baseline": {"val_acc": 0.8},
}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """8 patients, 16 lesion-type slices of 64 px (all three types), as a 2-fold datalist."""
    from monai_liver.data.datalist import datalist_from_manifest, write_datalist
    from monai_liver.data.phantoms import make_lesion_slices

    work = tmp_path_factory.mktemp("learning")
    manifest = make_lesion_slices(work / "data", n_patients=8, n_slices=16, size=64, seed=1)
    return Path(write_datalist(datalist_from_manifest(manifest, n_folds=2, seed=0), work / "datalist.json"))


@pytest.mark.parametrize("strategy", sorted(FLOORS))
def test_strategy_learns(strategy: str, small_set: Path, tmp_path: Path) -> None:
    bundle = ROOT / "bundles" / strategy
    out = tmp_path / strategy
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
        "--datalist", str(small_set), "--fold", "-1", "--backbone", "basicunet-small", "--image_size", "64",
        "--batch_size", "8", "--learning_rate", "0.005", "--epochs", str(EPOCHS), "--val_interval", str(EPOCHS),
        "--num_workers", "0", "--seed", "0", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "train_log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    assert int(last["epoch"]) == EPOCHS
    got = {k: float(last[k]) for k in FLOORS[strategy]}
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0], f"{strategy}: training loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    labels = [it["label"] for it in json.loads(small_set.read_text())["training"]]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    for name, floor in FLOORS[strategy].items():
        floor = majority + 0.1 if floor is None else floor
        assert got[name] >= floor, f"{strategy} stopped learning: {name} {got[name]:.3f} < {floor} ({json.dumps(got)})"


def test_bench_learning_runs_both_ways(small_set: Path) -> None:
    """``benchmarks/bench_learning.py`` with a 4-second budget: the bare loop and the bundle (which
    the time budget stops) are trained and scored, and the ratio line is printed."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_learning.py"), "--datalist", str(small_set),
           "--budget", "4", "--fold", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("bare ") for ln in lines) and any(ln.startswith("bundle ") for ln in lines)
    assert any(ln.startswith("bundle - bare: dice") and "throughput bundle/bare" in ln for ln in lines)
