"""Same seed, same run: two trainings of a bundle with one seed give identical losses, metrics and
weights; another seed gives other losses (so the comparison can fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_lesion_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "ynet"

pytestmark = pytest.mark.slow


def test_same_seed_same_training(tmp_path) -> None:
    import pandas as pd
    import torch

    datalist = tiny_lesion_datalist(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(name: str, seed: int) -> subprocess.Popen:
        cmd = [
            sys.executable, "-m", "monai.bundle", "run",
            "--config_file", str(BUNDLE / "configs" / "train.json"), "--bundle_root", str(BUNDLE),
            "--datalist", str(datalist), "--fold", "0", "--epochs", "2", "--image_size", "32", "--batch_size", "2",
            "--seed", str(seed), "--num_workers", "0", "--augment", "true",
            "--network_def#decoder_channels", "[32,16,16,8,8]",
            "--output_dir", str(tmp_path / name), "--cache_dir", str(tmp_path / f"{name}_cache"),
        ]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    procs = {"a": start("a", 7), "b": start("b", 7), "other": start("other", 8)}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{stdout[-3000:]}\n{stderr[-3000:]}"

    a, b, other = (pd.read_csv(tmp_path / n / "train_log.csv") for n in ("a", "b", "other"))
    assert len(a) == 2 and a.notna()[["loss", "val_dice", "val_acc"]].all().all()
    # everything but the wall time of each epoch
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    assert not a["loss"].equals(other["loss"])
    wa = torch.load(tmp_path / "a" / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
