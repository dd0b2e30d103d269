"""A shared MLflow tracking server: a real ``mlflow server`` on a free loopback port (SQLite backend,
artifact folder served by the server), a short joint-bundle training logged to it over HTTP, and
the metrics and the checkpoint read back with ``MlflowClient``. An unreachable server makes training
fail at start with one clear line.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_lesion_datalist

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "joint"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a new server could bind it; TIME_WAIT leftovers of
    closed connections do not count, as for any server that sets SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def group_is_gone(pgid: int) -> bool:
    """No live process of the process group ``pgid`` is left (zombies, which a container's init may
    never reap, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after "(comm)": state, ppid, pgrp
            return False
    return True


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group this test started (the server and its workers), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the server
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


def stop_server(proc: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
    """Stop a server's process group and check that its port is free and no process is left."""
    stop_group(proc)
    deadline = time.monotonic() + timeout
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert port_is_free(port), f"port {port} still in use after the server stopped"
    assert group_is_gone(proc.pid), "server processes left behind"


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, limit: float = 180.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if the process dies or never answers."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server did not answer {url} within {limit:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``http://127.0.0.1:<port>`` of a running ``mlflow server`` (stopped, and its port freed, after the module)."""
    work = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = work / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
        "--artifacts-destination", str(work / "artifacts"),
        "--serve-artifacts",
    ]
    # the job runner (a pool of huey consumers for MLflow's GenAI jobs) is not needed here
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url + "/health", proc, log)
        yield {"url": url, "port": port, "artifacts": work / "artifacts", "log": log}
    finally:
        stop_server(proc, port)


@pytest.fixture(scope="module")
def lesion_datalist(tmp_path_factory) -> Path:
    """A tiny lesion-type phantom set (6 patients, 12 slices of 64 x 64) and its 2-fold datalist."""
    return tiny_lesion_datalist(tmp_path_factory.mktemp("lesion_phantoms"))


def bundle_cmd(datalist: Path, out: Path, tracking_uri: str, run_name: str) -> list[str]:
    """``python -m monai.bundle run`` of the joint bundle: 1 epoch, tiny images, logged to ``tracking_uri``."""
    from monai_liver.engine.data import datalist_dataset_dir

    dataset_dir = datalist_dataset_dir(datalist)
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.json"),
        "--bundle_root", str(BUNDLE),
        "--dataset_dir", dataset_dir, "--datalist", str(datalist), "--fold", "0",
        "--init", "scratch", "--epochs", "1", "--image_size", "32", "--batch_size", "4", "--seed", "0",
        "--output_dir", str(out), "--cache_dir", str(out / "cache"),
        "--tracking", "mlflow", "--tracking_uri", tracking_uri,
        "--experiment_name", "monai_liver_server_test", "--run_name", run_name,
    ]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def test_training_logs_metrics_and_checkpoint_to_server(mlflow_server, lesion_datalist, tmp_path) -> None:
    import mlflow.artifacts
    import torch
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    proc = subprocess.run(
        bundle_cmd(lesion_datalist, out, mlflow_server["url"], "server-test"),
        capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model.pt").is_file()

    client = MlflowClient(tracking_uri=mlflow_server["url"])
    exp = client.get_experiment_by_name("monai_liver_server_test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'server-test'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    # metrics: the training loss per epoch and the validation metric of the epoch
    assert "train_loss" in run.data.metrics, run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) >= 1 and all(torch.isfinite(torch.tensor(m.value)) for m in history)
    assert "val_dice" in run.data.metrics, run.data.metrics
    assert 0.0 <= run.data.metrics["val_dice"] <= 1.0
    assert run.data.params.get("strategy") == "joint" and run.data.params.get("epochs") == "1", run.data.params

    # the checkpoint went through the server's artifact proxy into the server's artifact folder
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "model.pt" in names, names
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    got = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="model.pt", dst_path=str(tmp_path / "download"),
            tracking_uri=mlflow_server["url"],
        )
    )
    served = torch.load(got, map_location="cpu", weights_only=True)["model"]
    local = torch.load(out / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert served.keys() == local.keys()
    assert all(torch.equal(served[k], local[k]) for k in local)
    assert list(mlflow_server["artifacts"].rglob("model.pt")), "artifact not stored under --artifacts-destination"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_unreachable_server_fails_at_start(lesion_datalist, tmp_path, how) -> None:
    """``--tracking_uri http://...`` or ``MLFLOW_TRACKING_URI`` (MONAI's handler gives the variable
    precedence) naming a server that does not answer: one clear last line, before any epoch."""
    port = free_port()  # nothing listens there
    out = tmp_path / "run"
    uri = f"http://127.0.0.1:{port}"
    cmd = bundle_cmd(lesion_datalist, out, uri, "unreachable")
    env = _env()
    if how == "env":
        i = cmd.index("--tracking_uri")
        del cmd[i : i + 2]
        env["MLFLOW_TRACKING_URI"] = uri
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stdout[-2000:]
    assert uri in lines[-1] and "not reachable" in lines[-1], lines[-5:]
    # failed at start: no epoch ran, no checkpoint was written
    assert not (out / "model.pt").exists()
    log = out / "train_log.csv"
    assert not log.exists() or len(log.read_text().strip().splitlines()) <= 1
