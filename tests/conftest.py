"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

#: the modules of the longest tests (1.5-3 min each on 2 cores: a Ray cluster, nnU-Net, experiments
#: killed and resumed, the learning guards), collected first so that ``make test``'s two xdist
#: workers start them early and the short tests fill in around them, instead of one worker running
#: the last long test alone; the order within a module is kept
LONG_FIRST = ("test_ray_executor.py", "test_peer_nnunet.py", "test_experiment.py", "test_parallel.py", "test_learning.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))  # stable: module order kept otherwise


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """Folder of real CT samples (``../shared/data/real``; override with MONAI_LIVER_REAL_DATA)."""
    path = Path(os.environ.get("MONAI_LIVER_REAL_DATA", Path(__file__).parents[1].parent / "shared/data/real"))
    if not path.is_dir():
        pytest.skip(f"real CT samples not found at {path} (set MONAI_LIVER_REAL_DATA)")
    return path


def tiny_lesion_datalist(folder: Path) -> Path:
    """A tiny lesion-type phantom set (6 patients, 12 slices of 64 x 64 px) in ``folder/data`` and its
    2-fold datalist ``folder/datalist.json``: the training data of the bundle-running tests."""
    from monai_liver.data.datalist import datalist_from_manifest, write_datalist
    from monai_liver.data.phantoms import make_lesion_slices

    manifest = make_lesion_slices(folder / "data", n_patients=6, n_slices=12, size=64, seed=0)
    return Path(write_datalist(datalist_from_manifest(manifest, n_folds=2, seed=0), folder / "datalist.json"))


def tiny_experiment_data(folder: Path) -> dict[str, Path]:
    """The data of the tiny experiments (``monai-liver experiment`` at 32 px): lesion-type phantoms (6
    patients, 12 slices of 64 x 64 px) and 2 LiTS-like volumes (64 x 64 x 16), each with a 2-fold
    datalist; ``{"lesions": datalist, "lits": datalist}``."""
    from monai_liver.data import datalist as dl
    from monai_liver.data import phantoms

    manifest = phantoms.make_lesion_slices(folder / "lesions", n_patients=6, n_slices=12, size=64, seed=0)
    phantoms.make_lits_phantoms(folder / "lits", n_volumes=2, shape=(64, 64, 16), seed=0)
    lesions = dl.write_datalist(dl.datalist_from_manifest(manifest, n_folds=2, seed=0), folder / "lesions.json")
    lits = dl.write_datalist(dl.datalist_from_lits(folder / "lits", n_folds=2, seed=0), folder / "lits.json")
    return {"lesions": Path(lesions), "lits": Path(lits)}


@contextlib.contextmanager
def console_process(cmd, log: Path, env: dict, mode: str = "w"):
    """``cmd`` started with its stdout and stderr written to ``log``; killed on leaving the block if it
    still runs (a failing assertion never leaves an experiment behind). Yields the ``Popen``."""
    with open(log, mode) as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


#: results.csv columns that are measured times: two runs of the same settings differ there only
TIME_COLUMNS = ("train_s",)


def results_without_times(path: Path):
    """``results.csv`` as a DataFrame without :data:`TIME_COLUMNS`, for comparing two runs' tables."""
    import pandas as pd

    table = pd.read_csv(path)
    return table.drop(columns=[c for c in TIME_COLUMNS if c in table.columns])
