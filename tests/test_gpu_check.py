"""``benchmarks/gpu_check.sh`` on a CPU: its argument handling, its dry run, its refusal without a GPU,
and the extrapolation's arithmetic (``benchmarks/table_estimate.py``) on a made-up experiment folder.
(``--cpu-smoke`` runs every step at tiny sizes in about 1-2 minutes; not part of the tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=e, timeout=120)


def test_no_gpu_fails_fast(tmp_path):
    res = _run("--out", str(tmp_path / "w"), CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error: no GPU is visible to PyTorch" in res.stderr and "--cpu-smoke" in res.stderr
    assert not (tmp_path / "w").exists()  # nothing made


def test_dry_run_and_bad_arguments(tmp_path):
    res = _run("--dry-run", "--out", str(tmp_path), "--runs-per-device", "3", "--big-batch", "48")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "bench_train.py --strategy joint" in out and "--batch-size 16 --device cuda --image-size 256" in out
    assert "--batch-size 48 " in out and "--folds 2" in out and "--runs-per-device 3" in out
    assert "experiment --full" in out and "--strategies joint seg_baseline --inits scratch lits" in out
    assert "timeout --signal=INT" in out and "table_estimate.py" in out
    for bad in (["--epochs", "0"], ["--budget"], ["--isolation", "thread"], ["--nope"]):
        res = _run(*bad)
        assert res.returncode == 2 and res.stderr.startswith("error: "), (bad, res.stderr)


def _experiment(folder: Path, events: list[str]) -> Path:
    folder.mkdir()
    (folder / "experiment.json").write_text(json.dumps({
        "strategies": ["joint", "seg_baseline"], "inits": ["scratch", "lits"], "folds": 2, "epochs": 20,
        "lits_epochs": 10, "localiser_epochs": 10}))
    (folder / "runs.log").write_text("".join(f"2026-01-01 {e}\n" for e in events))
    return folder


def test_extrapolation_arithmetic(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from table_estimate import estimate

    out = _experiment(tmp_path / "exp", [
        "10:00:00 start lits_pretrain scratch fold0 on h", "10:00:00 start liver_localiser scratch fold0 on h",
        "10:00:40 done liver_localiser scratch fold0", "10:00:40 start joint scratch fold0 on h",
        "10:01:00 done lits_pretrain scratch fold0", "10:01:00 start joint lits fold0 on h",
        "10:02:10 done joint scratch fold0", "10:02:10 start joint scratch fold1 on h",
        "10:02:30 done joint lits fold0",  # 90 s and 90 s
        "10:02:30 start joint lits fold1 on h",  # stopped: not counted
    ])
    total, lines = estimate(out, slots=2, rest=50)
    text = "\n".join(lines)
    assert "2 of 8 strategy runs finished" in text and "mean 90.0 s" in text
    assert "one run:      90.0 s x (100 / 20 epochs) x (0.80 / 0.50 training share) = 720 s" in text
    assert "60 runs:      60 x 720 s / 2 at a time = 21,600 s" in text
    assert "pretraining:  (60 s x 50/10 + 40 s x 50/10) / 2 at a time = 250 s" in text
    assert total == pytest.approx(21600 + 250 + 50) and "= 21,900 s = 6.08 h" in text
    assert estimate(out, slots=2, rest=50, with_imagenet=False)[0] == pytest.approx(40 * 720 / 2 + 250 + 50)

    none = _experiment(tmp_path / "none", ["10:00:00 start joint scratch fold0 on h"])
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "table_estimate.py"), str(none)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "no strategy run finished" in res.stdout
