"""Multi-process training: ``torchrun --nproc_per_node=2`` with ``multi_gpu_train.json`` on CPU (gloo)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_lesion_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "joint"

pytestmark = pytest.mark.slow


def test_joint_bundle_trains_on_two_ranks(tmp_path) -> None:
    import pandas as pd
    import torch

    datalist = tiny_lesion_datalist(tmp_path)
    out = tmp_path / "run"
    configs = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "multi_gpu_train.json")]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", repr(configs), "--bundle_root", str(BUNDLE),
        "--datalist", str(datalist), "--fold", "0", "--epochs", "2", "--image_size", "32", "--batch_size", "2",
        "--seed", "0", "--num_workers", "0", "--network_def#decoder_channels", "[32,16,16,8,8]",
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-5000:]

    # both ranks trained both epochs and validated on the gathered metrics (identical on each rank)
    lines = {r: re.findall(rf"rank {r}: epoch (\d)/2 loss \S+ \((\d+) iterations\)(.*)", text) for r in (0, 1)}
    for r in (0, 1):
        assert [e for e, _, _ in lines[r]] == ["1", "2"], (r, text[-3000:])
        assert all(int(n) >= 1 for _, n, _ in lines[r])
    assert [m for _, _, m in lines[0]] == [m for _, _, m in lines[1]] and "val_acc" in lines[0][0][2]

    # one writer: one model, one resume checkpoint, one log with one row per epoch
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".pt", ".tmp")) == ["checkpoint_last.pt", "model.pt"]
    log = pd.read_csv(out / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2]
    model = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in model), "DDP wrapper saved instead of the network"
    from monai_liver.networks.factory import build_network

    build_network("joint", 3, decoder_channels=(32, 16, 16, 8, 8)).load_state_dict(model)
