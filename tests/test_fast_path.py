"""The GPU fast path of the bundles (``amp``, ``channels_last``, ``cache_on_device``, ``compile``) and
``benchmarks/bench_train.py``, on the CPU: the values are off by default without CUDA, and a bundle
trained with them switched on still trains, validates and writes its model (what a GPU does with
them is measured by the benchmark, not here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    from monai_liver.data.datalist import datalist_from_manifest, write_datalist
    from monai_liver.data.phantoms import make_lesion_slices

    work = tmp_path_factory.mktemp("fast")
    manifest = make_lesion_slices(work / "data", n_patients=6, n_slices=12, size=48, seed=2)
    return Path(write_datalist(datalist_from_manifest(manifest, n_folds=2, seed=0), work / "datalist.json"))


def test_fast_path_defaults_follow_cuda():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "joint" / "configs" / "train.json"))
    cuda = torch.cuda.is_available()
    for key in ("amp", "channels_last", "cache_on_device"):
        assert parser.get_parsed_content(key) is cuda, key
    assert parser.get_parsed_content("compile") is False


def test_cached_on_device_appends_to_deviced():
    from monai_liver.transforms import cached_on_device, eval_transforms

    chain = eval_transforms("joint", image_size=32)
    assert cached_on_device(chain, "cpu", False) is chain
    on = cached_on_device(chain, torch.device("cpu"), True)
    assert type(on.transforms[-1]).__name__ == "ToDeviced" and len(on.transforms) == len(chain.transforms) + 1


@pytest.mark.slow
def test_bundle_trains_with_every_fast_path_value_on(tiny_set: Path, tmp_path: Path):
    """channels_last network + input, the cache through ToDeviced, the loaders without workers and
    amp (a no-op without CUDA, but its settings must parse): two epochs, validation, model.pt."""
    bundle = ROOT / "bundles" / "joint"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "train.json"),
           "--bundle_root", str(bundle), "--datalist", str(tiny_set), "--fold", "0", "--backbone", "basicunet-small",
           "--image_size", "32", "--batch_size", "4", "--epochs", "2", "--val_interval", "1", "--num_workers", "2",
           "--amp", "true", "--channels_last", "true", "--cache_on_device", "true", "--output_dir", str(out),
           "--progress", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.pt").is_file() and len((out / "train_log.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_bench_train_prints_both_ways_and_the_ratio(tiny_set: Path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--datalist", str(tiny_set), "--image-size", "32",
           "--batch-size", "4", "--slices", "8", "--epochs", "2", "--backbone", "basicunet-small",
           "--fast", "channels_last=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("fast: ") and "channels_last True" in ln for ln in lines)
    rates = {ln.split()[0]: float(ln.split()[1]) for ln in lines if ln.split()[:1] in (["plain"], ["fast"])}
    assert set(rates) == {"plain", "fast"} and all(r > 0 for r in rates.values())
    assert any(ln.startswith("fast/plain: ") and ln.endswith("x") for ln in lines)
