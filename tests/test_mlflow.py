"""``--tracking mlflow`` on a bundle: a SQLite store by default (MLflow 3.13+ refuses MONAI's old
``./mlruns`` file store) or the ``--tracking_uri`` given; read back with ``MlflowClient``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_lesion_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "ynet"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    return tiny_lesion_datalist(tmp_path_factory.mktemp("mlflow_phantoms"))


def cmd(datalist: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.json"), "--bundle_root", str(BUNDLE),
        "--datalist", str(datalist), "--fold", "1", "--init", "scratch",
        "--epochs", "2", "--image_size", "32", "--batch_size", "4", "--seed", "0", "--num_workers", "0",
        "--network_def#decoder_channels", "[32,16,16,8,8]",
        "--output_dir", str(out), "--cache_dir", str(out / "cache"), "--tracking", "mlflow", *extra,
    ]  # fmt: skip


def test_tracking_default_sqlite_and_explicit_uri(datalist, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    default_out, explicit_out = tmp_path / "default", tmp_path / "explicit"
    explicit_uri = f"sqlite:///{tmp_path / 'store' / 'custom.db'}"
    (tmp_path / "store").mkdir()
    runs = {
        "default": subprocess.Popen(cmd(datalist, default_out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
        "explicit": subprocess.Popen(
            cmd(datalist, explicit_out, "--tracking_uri", explicit_uri, "--run_name", "my-run", "--experiment_name", "liver_tests"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        ),
    }  # fmt: skip
    for name, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{stdout[-3000:]}\n{stderr[-3000:]}"

    # --tracking mlflow alone: <output_dir>/mlflow.db, experiment "monai_liver", run "<strategy>-<init>-fold<k>"
    assert (default_out / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()  # the cwd of the explicit run: no file store there
    client = MlflowClient(tracking_uri=f"sqlite:///{default_out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("monai_liver")
    assert exp is not None
    found = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in found] == ["ynet-scratch-fold1"]
    run = found[0]
    assert run.info.status == "FINISHED"
    assert str(default_out / "mlruns") in run.info.artifact_uri  # artifacts next to the database
    params = run.data.params
    expected = {"strategy": "ynet", "init": "scratch", "fold": "1", "epochs": "2", "lr": "0.001", "batch_size": "4",
                "image_size": "32", "seed": "0"}  # fmt: skip
    assert {k: params.get(k) for k in expected} == expected
    for metric in ("val_dice", "val_recall", "val_acc", "val_bacc", "val_dice_acc"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [1, 2], (metric, history)
        assert all(0.0 <= m.value <= 1.0 for m in history)
    # the training loss once per epoch (the epoch's mean, as train_log.csv has it), not once per iteration
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss"))
    logged = pd.read_csv(default_out / "train_log.csv")
    assert [step for step, _ in loss] == logged["epoch"].tolist() == [1, 2]
    assert [value for _, value in loss] == pytest.approx(logged["loss"].tolist(), rel=1e-4)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "train_log.csv"} <= artifacts, artifacts
    local = Path(client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "dl")))
    assert local.read_bytes() == (default_out / "model.pt").read_bytes()
    logged_log = Path(client.download_artifacts(run.info.run_id, "train_log.csv", str(tmp_path / "dl")))
    assert logged_log.read_text() == (default_out / "train_log.csv").read_text()
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts), artifacts

    # explicit --tracking_uri / --run_name / --experiment_name win; nothing goes to the default store
    assert (tmp_path / "store" / "custom.db").is_file() and not (explicit_out / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=explicit_uri)
    exp = client.get_experiment_by_name("liver_tests")
    found = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in found] == ["my-run"] and found[0].info.status == "FINISHED"
    assert json.loads(json.dumps(found[0].data.params))["strategy"] == "ynet"
    assert "model.pt" in {a.path for a in client.list_artifacts(found[0].info.run_id)}
    # ... and its artifacts sit beside that database, not in ./mlruns of wherever the command ran
    assert found[0].info.artifact_uri.startswith((tmp_path / "store" / "mlruns").as_uri()), found[0].info.artifact_uri
