"""``monai-liver experiment --runs-per-device K``: several runs at a time (monai_liver.experiment.parallel).

- the device assignment (which GPU each run gets) on faked machines of 0, 1 and 4 GPUs, and the thread split;
- a tiny experiment (joint x {scratch, LiTS} x 2 folds + LiTS pretraining + localiser, 32 px, 1 epoch)
  with K = 2 on the CPU: the same results.csv / per_slice.csv as K = 1 (both at one thread per run), runs
  overlapping in time (runs.log, DONE), the LiTS runs only after the LiTS pretraining, no worker left;
- Ctrl-C while runs execute: exit 130, no worker left in a run folder; the same command resumes and
  runs nothing with DONE again.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import console_process, results_without_times, tiny_experiment_data

from monai_liver.errors import LiverError
from monai_liver.experiment.parallel import (choose_slot, cpu_budget, device_slots, plan_slots, threads_per_run,
                                             visible_gpus)


def _assign(slots, finish_after=None):
    """Which device each of len(slots) + extra runs gets when runs start as slots free up; ``finish_after``:
    {run number: the run (number) that finishes just before it starts}."""
    busy: dict[int, int] = {}  # slot -> run
    got = []
    for n in range(len(slots) + len(finish_after or {})):
        if finish_after and n in finish_after:
            busy = {j: r for j, r in busy.items() if r != finish_after[n]}
        j = choose_slot(slots, busy)
        busy[j] = n
        got.append(slots[j])
    return got


@pytest.mark.parametrize("n_gpus", [0, 1, 4])
def test_device_assignment_on_faked_gpus(n_gpus, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    assert gpus == [str(i) for i in range(n_gpus)]
    for k in (1, 2, 3):
        slots = plan_slots(None, k)
        assert slots == device_slots(gpus, k) and len(slots) == max(1, n_gpus) * k
        assert plan_slots("cpu", k) == [None] * k  # --device cpu: the CPU, whatever GPUs there are
        got = _assign(slots)
        if n_gpus == 0:
            assert got == [None] * k  # K runs on the CPU
        else:  # every GPU gets K runs, spread one round at a time
            assert Counter(got) == {g: k for g in gpus}
            assert got[:n_gpus] == gpus
        assert choose_slot(slots, set(range(len(slots)))) is None  # all busy: the next run waits
    if n_gpus == 4:
        # GPU 2 has both its runs finish while GPU 0 has one: the next two runs go to GPU 2, then GPU 0
        slots = device_slots(gpus, 2)
        got = _assign(slots, {8: 2, 9: 6, 10: 0})
        assert got[8:] == ["2", "2", "0"]


def test_visible_gpus_follows_cuda_visible_devices():
    assert visible_gpus("2,3", 2) == ["2", "3"]
    assert visible_gpus(" GPU-8f1c, MIG-1 ", 2) == ["GPU-8f1c", "MIG-1"]  # passed on to the child as written
    assert visible_gpus("0,1,2,3", 2) == ["0", "1"]  # torch sees fewer: the first ones
    assert visible_gpus("", 0) == [] and visible_gpus("0", 0) == [] and visible_gpus(None, 0) == []
    with pytest.raises(LiverError, match="--runs-per-device must be at least 1"):
        device_slots(["0"], 0)


def test_threads_split_between_runs():
    assert threads_per_run(2, 2) == 1 and threads_per_run(16, 4) == 4 and threads_per_run(16, 3) == 5
    assert threads_per_run(1, 2) == 1  # never 0
    assert cpu_budget({"OMP_NUM_THREADS": "3"}) == 3
    cores = len(os.sched_getaffinity(0))
    assert cpu_budget({}) == cores and cpu_budget({"OMP_NUM_THREADS": "x"}) == cores
    assert cpu_budget({"OMP_NUM_THREADS": "0"}) == cores


def test_ray_runs_per_device_is_a_gpu_share():
    pytest.importorskip("ray")
    from monai_liver.experiment.executors import RayExecutor

    assert RayExecutor(runs_per_device=4).gpu_share == 0.25 and RayExecutor().gpu_share == 1.0
    with pytest.raises(LiverError, match="--runs-per-device must be at least 1"):
        RayExecutor(runs_per_device=0)


# ------------------------------------------------------------------------------ tiny experiments


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_experiment_data(tmp_path_factory.mktemp("data"))


SCALE = {"folds": 2, "epochs": 1, "lits_epochs": 1, "localiser_epochs": 1, "localiser_image_size": 32, "image_size": 32,
         "batch_size": 4, "max_slices": 4, "strategies": ["joint"], "inits": ["scratch", "lits"], "download": False,
         "device": "cpu", "phantoms": True}


def _events(out: Path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """runs.log as (date, time, start|done, run key), in the order written."""
    rows = [ln.split() for ln in (out / "runs.log").read_text().splitlines()]
    return [(r[0], r[1], r[2], tuple(r[3:6])) for r in rows]


def _most_at_once(events) -> int:
    running, most = set(), 0
    for *_, what, key in events:
        running.add(key) if what == "start" else running.discard(key)
        most = max(most, len(running))
    return most


def _spans(out: Path) -> list[tuple[float, float]]:
    """When each strategy run trained and evaluated, from its DONE: (finished - its seconds, finished),
    shortened by the rounding of the seconds (0.1 s), so every span lies inside the run's real time."""
    spans = []
    for p in (out / "runs").glob("*/*/fold*/DONE"):
        d = json.loads(p.read_text())
        spans.append((d["finished"] - d["train_s"] - d["evaluate_s"] + 0.1, d["finished"]))
    return spans


def _overlap(spans) -> bool:
    return len(spans) == 4 and any(a[0] < b[1] and b[0] < a[1] for a in spans for b in spans if a is not b)


def _workers_alive() -> list:
    import psutil

    alive = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "monai_liver.experiment.parallel" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive


@pytest.mark.slow
def test_two_runs_at_a_time_same_table(data, tmp_path, monkeypatch):
    """K = 2 on the CPU: the table of K = 1, both at one thread per run (PyTorch's CPU results depend
    on the thread count: the budget OMP_NUM_THREADS=1 split in two is still one thread each)."""
    import pandas as pd
    import torch

    from monai_liver.experiment.runner import run_experiment

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines: list[str] = []
        one = run_experiment(tmp_path / "k1", datalist=data["lesions"], lits_datalist=data["lits"], tracking=False,
                             log=lines.append, **SCALE)
        two = run_experiment(tmp_path / "k2", datalist=data["lesions"], lits_datalist=data["lits"], runs_per_device=2,
                             log=lines.append, **SCALE)  # MLflow (SQLite) on: two processes log to it at once
    finally:
        torch.set_num_threads(threads)
    assert one.runs_done == two.runs_done == 4
    pd.testing.assert_frame_equal(results_without_times(one.results_csv), results_without_times(two.results_csv))
    pd.testing.assert_frame_equal(pd.read_csv(one.per_slice_csv), pd.read_csv(two.per_slice_csv))

    # two runs at a time: by the order of the lines of runs.log (whose timestamps have whole seconds, and
    # these runs take about one), and by the times in DONE (finished, minus training and evaluation)
    ev = _events(two.out)
    assert _most_at_once(ev) == 2 and _most_at_once(_events(one.out)) == 1
    assert Counter(e[2] for e in ev) == {"start": 6, "done": 6} and len({e[3] for e in ev}) == 6
    starts = {e[3]: e[:2] for e in ev if e[2] == "start"}
    dones = {e[3]: e[:2] for e in ev if e[2] == "done"}
    assert all(starts[k] <= dones[k] for k in starts)
    assert _overlap(_spans(two.out)) and not _overlap(_spans(one.out))
    # the pretraining and the localiser start together; the LiTS runs after the pretraining has finished
    assert {(e[2], e[3][0]) for e in ev[:2]} == {("start", "lits_pretrain"), ("start", "liver_localiser")}
    order = [(e[2], e[3][0], e[3][1]) for e in ev]
    assert order.index(("start", "joint", "lits")) > order.index(("done", "lits_pretrain", "scratch"))

    # progress lines as the sequential executor's; one worker per slot, none left
    text = "\n".join(lines)
    assert "local: 2 runs at a time, on the CPU, 1 CPU thread(s) each" in text
    assert text.count("   done joint / ") == 8 and "runs 6/6 done" in text
    assert sorted(p.name for p in (two.out / "workers").iterdir()) == ["slot0.log", "slot1.log"]
    assert not _workers_alive()
    assert "Traceback" not in "".join(p.read_text() for p in (two.out / "workers").iterdir())
    # MLflow: a child per run of the K = 2 experiment, under its parent
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + (two.out / "mlflow.db").as_posix())
    runs = client.search_runs([client.get_experiment_by_name("monai_liver").experiment_id], max_results=50)
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId")]) == 6


def _cmd(out: Path, data: dict) -> list[str]:
    return [sys.executable, "-m", "monai_liver", "experiment", "--out", str(out), "--datalist", str(data["lesions"]),
            "--lits-datalist", str(data["lits"]), "--folds", "2", "--epochs", "2", "--lits-epochs", "1",
            "--localiser-epochs", "1", "--localiser-image-size", "32", "--image-size", "32", "--batch-size", "4",
            "--max-slices", "4", "--strategies", "joint", "--inits", "scratch", "lits", "--no-download",
            "--device", "cpu", "--phantoms", "--no-tracking", "--runs-per-device", "2"]


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_resumes(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TORCH_HOME": str(tmp_path / "torch_home")}
    out, log = tmp_path / "exp", tmp_path / "console.txt"
    with console_process(_cmd(out, data), log, env) as proc:
        deadline = time.monotonic() + 300
        while not ((out / "runs.log").is_file() and any(e[2] == "start" and e[3][0] == "joint" for e in _events(out))):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no joint run started"
            time.sleep(0.1)
        time.sleep(1.0)  # into the bundle run
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "stopping" in text and "Traceback" not in text
    assert not _workers_alive()
    for run_dir in [*(out / "runs" / "joint").glob("*/fold*"), *(out / "pretrain").iterdir()]:
        with open(run_dir / ".run.lock", "w") as fh:  # free: no worker works in the folder any more
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = {p: p.stat().st_mtime_ns for p in out.glob("**/DONE")}
    assert len(before) < 6

    res = subprocess.run(_cmd(out, data), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = {p: p.stat().st_mtime_ns for p in out.glob("**/DONE")}
    assert len(after) == 6 and all(after[p] == t for p, t in before.items())  # nothing with DONE run again
    done = Counter(e[3] for e in _events(out) if e[2] == "done")
    assert len(done) == 6 and set(done.values()) == {1}
    assert res.stdout.count("not run again") == len(before) and "runs 6/6 done" in res.stdout
