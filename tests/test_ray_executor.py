"""``monai-liver experiment --executor ray`` on a real two-node Ray cluster on this machine: Ray's own
multi-node harness (``ray.cluster_utils.Cluster``), a head and a second node of 1 CPU each (two raylets).

- SQLite tracking on two nodes is refused in one line;
- the grid runs as Ray tasks on both nodes; the second node is killed while a run executes on it:
  Ray reruns that run on the head, the experiment completes and every run finished exactly once;
- a second invocation (one more strategy, MLflow on) is stopped with Ctrl-C while a run executes: the
  driver cancels its tasks and no task works on; the same command again runs only the runs without
  ``DONE`` (the interrupted one resumes), none with ``DONE`` again;
- the results table is the same as a local run's with the same settings;
- a node that does not see ``--out`` makes the driver refuse in one line;
- the harness stops every process it started and their ports are free again;
- without Ray, ``--executor ray`` says in one line how to install it.
"""

from __future__ import annotations

import fcntl
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
from conftest import console_process, results_without_times, tiny_experiment_data

STRATEGY_1 = ["joint"]  #: the first ray invocation
STRATEGY_2 = ["joint", "cls_baseline"]  #: the second adds a strategy (and the local reference has both)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_experiment_data(tmp_path_factory.mktemp("data"))


def _cmd(out: Path, data: dict, strategies: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai_liver", "experiment", "--out", str(out), "--datalist", str(data["lesions"]),
            "--lits-datalist", str(data["lits"]), "--folds", "2", "--epochs", "1", "--lits-epochs", "1",
            "--localiser-epochs", "1", "--localiser-image-size", "32", "--image-size", "32", "--batch-size", "4",
            "--max-slices", "4", "--strategies", *strategies, "--inits", "scratch", "lits", "--no-download",
            "--device", "cpu", "--phantoms", *extra]


#: one thread per run (the CPU is shared; local and Ray runs compute alike) and an empty torch hub cache
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(THREADS, TORCH_HOME=str(tmp / "torch_home"))
    return env


def _node_processes(nodes) -> list:
    """The processes of the harness's nodes (GCS, raylets, ...) and their children (the Ray workers)."""
    import psutil

    procs = []
    for node in nodes:
        for infos in node.all_processes.values():
            for info in infos:
                with _gone_ok():
                    p = psutil.Process(info.process.pid)
                    procs += [p, *p.children(recursive=True)]
    return procs


class _gone_ok:
    def __enter__(self):
        return self

    def __exit__(self, typ, *_):
        import psutil

        return typ is not None and issubclass(typ, psutil.Error)


class _Started:
    """Processes a test started, with the ports they listen on: all checked when the cluster is stopped."""

    def __init__(self):
        self.procs: list = []
        self.ports: set[int] = set()

    def add(self, procs) -> None:
        import psutil

        for p in procs:
            with _gone_ok():
                self.ports |= {x.laddr.port for x in p.net_connections("inet") if x.status == psutil.CONN_LISTEN}
                self.procs.append(p)


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node, 1 CPU each; stopped by the harness, which is then checked: none of its
    processes is left and nothing listens on their ports."""
    pytest.importorskip("ray", reason="Ray is the 'cluster' extra: pip install -e '.[cluster]'")
    psutil = pytest.importorskip("psutil")
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("ray")
    with pytest.MonkeyPatch.context() as mp:  # the nodes' workers inherit this environment
        for k, v in {**THREADS, "TORCH_HOME": str(tmp / "torch_home")}.items():
            mp.setenv(k, v)
        mp.delenv("RAY_ADDRESS", raising=False)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            worker = c.add_node(num_cpus=1)
            c.wait_for_nodes()
        except BaseException:
            c.shutdown()
            raise
    started = _Started()
    try:
        yield c, worker, started
    finally:
        started.add(_node_processes(c.list_all_nodes()))
        c.shutdown()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in started.procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.pid for p in started.procs if _alive(p)], "processes of the Ray harness are still running"
    listening = {x.laddr.port for x in psutil.net_connections("inet") if x.status == psutil.CONN_LISTEN}
    assert started.ports and not started.ports & listening, f"ports still in use: {sorted(started.ports & listening)}"


@pytest.mark.slow
def test_sqlite_tracking_refused_on_two_nodes(cluster, data, tmp_path):
    c, _, _ = cluster
    out = tmp_path / "exp"
    res = subprocess.run(_cmd(out, data, STRATEGY_1, "--executor", "ray", "--ray-address", c.address),
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --executor ray on 2 nodes") and "--tracking-uri http://" in last
    assert not list((out / "runs").glob("*/*/fold*"))  # refused before any run


def _done(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.glob("*/*/*/fold*/DONE")} | \
        {p: p.stat().st_mtime_ns for p in out.glob("pretrain/*/DONE")}


def _events(out: Path) -> list[list[str]]:
    return [ln.split()[2:] for ln in (out / "runs.log").read_text().splitlines()]


def _kill_on_start(proc, out: Path, c, worker, log: Path, started: _Started, timeout: float = 600) -> tuple[str, ...]:
    """Wait until a run starts on ``worker``'s node, then kill that node; returns the run's key. Its
    processes (raylet, Ray workers) go to ``started``, checked for leftovers by the fixture."""
    tag = worker.node_id[:8]
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"experiment ended before a run started on the second node:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no run started on the second node"
        if (out / "runs.log").is_file():
            on_worker = [tuple(e[1:4]) for e in _events(out) if e[0] == "start" and e[-1].endswith("/" + tag)]
            finished = {tuple(e[1:]) for e in _events(out) if e[0] == "done"}
            running = [k for k in on_worker if k not in finished]
            if running:
                started.add(_node_processes([worker]))
                c.remove_node(worker, allow_graceful=False)  # raylet and its workers killed (SIGKILL)
                return running[0]
        time.sleep(0.1)


def _wait_for_start(proc, out: Path, strategy: str, log: Path, timeout: float = 600) -> tuple[str, ...]:
    """Wait until a run of ``strategy`` has started (and not finished); returns its key."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"experiment ended before a {strategy} run started:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {strategy} run started"
        if (out / "runs.log").is_file():
            events = _events(out)
            finished = {tuple(e[1:]) for e in events if e[0] == "done"}
            running = [tuple(e[1:4]) for e in events if e[0] == "start" and e[1] == strategy and tuple(e[1:4]) not in finished]
            if running:
                time.sleep(1.0)  # into the bundle run
                return running[0]
        time.sleep(0.1)


@pytest.mark.slow
def test_grid_on_two_nodes_with_a_node_lost(cluster, data, tmp_path):
    c, worker, started = cluster
    env = _env(tmp_path)

    # the reference: the same settings, run locally
    local = tmp_path / "local"
    res = subprocess.run(_cmd(local, data, STRATEGY_2, "--no-tracking"), env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # Ray on two nodes; the second is killed while one of the runs executes on it
    out = tmp_path / "ray"
    log = tmp_path / "console.txt"
    with console_process(_cmd(out, data, STRATEGY_1, "--no-tracking", "--executor", "ray", "--ray-address", c.address),
                         log, env) as proc:
        killed = _kill_on_start(proc, out, c, worker, log, started)
        killed_at = time.time_ns()
        proc.wait(timeout=900)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "shared storage: every node (2) sees" in text
    first = _done(out)
    assert len(first) == 2 + 4  # lits_pretrain + liver_localiser + joint x (scratch, lits) x 2 folds

    # every run finished exactly once; the killed one was started again (unless it had just finished)
    events = _events(out)
    done = Counter(tuple(e[1:]) for e in events if e[0] == "done")
    starts = Counter(tuple(e[1:4]) for e in events if e[0] == "start")
    assert len(done) == len(first) and set(done.values()) == {1}
    nodes = {e[-1] for e in events if e[0] == "start"}
    assert any(n.endswith("/" + worker.node_id[:8]) for n in nodes) and len(nodes) == 2
    killed_dir = (out / "pretrain" / killed[0]) if killed[0] in ("lits_pretrain", "liver_localiser") else \
        (out / "runs" / killed[0] / killed[1] / killed[2])
    assert starts[killed] == 2 or (killed_dir / "DONE").stat().st_mtime_ns < killed_at, (killed, starts)
    # progress: a line per finished run (node, minutes, held-out figures) and runs done / total
    assert text.count("   done ") == len(first) and "runs 6/6 done" in text
    assert "held-out acc" in text and "held-out liver Dice" in text and "min left" in text

    # a second invocation (one node left: SQLite tracking allowed) adds a strategy; Ctrl-C once one of its
    # runs is running: the driver cancels the outstanding tasks and waits for them (no task goes on in a run folder)
    cmd2 = _cmd(out, data, STRATEGY_2, "--executor", "ray", "--ray-address", c.address)
    with console_process(cmd2, log, env) as proc:
        running = _wait_for_start(proc, out, "cls_baseline", log)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "cancelling" in text and "Traceback" not in text
    for run_dir in (out / "runs" / "cls_baseline").glob("*/fold*"):
        with open(run_dir / ".run.lock", "w") as fh:  # free: no task works in the folder any more
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # no half-written output: the interrupted run has no DONE unless it finished before the cancel reached
    # it (a 1-epoch cls_baseline run at 32 px can), and every DONE there is complete
    interrupted = out / "runs" / "cls_baseline" / running[1] / running[2]
    for done_file in (out / "runs" / "cls_baseline").glob("*/fold*/DONE"):
        assert {"train_s", "evaluate_s", "node"} <= set(json.loads(done_file.read_text())), done_file
    if (interrupted / "DONE").exists():
        print(f"note: {running} finished before the cancel reached it")

    # the same command again: only the new runs are run (the interrupted one resumes), none with DONE again
    res = subprocess.run(cmd2, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    second = _done(out)
    assert len(second) == len(first) + 4 and all(second[p] == t for p, t in first.items())
    assert res.stdout.count("not run again") >= len(first) and "runs 10/10 done" in res.stdout
    done = Counter(tuple(e[1:]) for e in _events(out) if e[0] == "done")
    with_done = {(p.parts[-4], p.parts[-3], p.parts[-2]) for p in second if p.parts[-5] == "runs"}
    assert set(done.values()) == {1}  # no run twice
    assert with_done - set(done) <= {running}  # only the interrupted run may have finished unlogged

    # the same table as the local run's (all figures; the folders differ)
    a, b = results_without_times(local / "results.csv"), results_without_times(out / "results.csv")
    pd.testing.assert_frame_equal(a, b)
    pa, pb = pd.read_csv(local / "per_slice.csv"), pd.read_csv(out / "per_slice.csv")
    pd.testing.assert_frame_equal(pa, pb)

    # MLflow: the runs of the second invocation are children of its parent run, with held-out figures
    from mlflow.tracking import MlflowClient

    parent = json.loads((out / "mlflow_parent.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri="sqlite:///" + (out / "mlflow.db").as_posix())
    runs = client.search_runs([client.get_experiment_by_name("monai_liver").experiment_id], max_results=50)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.info.run_name for r in children) == sorted(
        f"cls_baseline-{i}-fold{k}" for i in ("lits", "scratch") for k in (0, 1)), [r.info.run_name for r in runs]
    assert all("heldout_acc" in r.data.metrics for r in children)


@pytest.mark.slow
def test_out_not_shared_is_refused(cluster, data, tmp_path):
    """A node that does not see ``--out`` (one started in its own mount namespace with an empty tmpfs
    over the folder: a machine without the shared mount) makes the driver refuse in one line."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root (a node in a private mount namespace)")
    import psutil

    c, _, started = cluster
    out = tmp_path / "exp"
    out.mkdir()
    live = len(c.global_state._live_node_ids())
    ray_bin = Path(sys.executable).with_name("ray")
    script = f"mount -t tmpfs none '{out}' && exec '{ray_bin}' start --address {c.address} --num-cpus 1 --block"
    node_log = tmp_path / "node.log"
    with open(node_log, "w") as f:
        node = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                stdout=f, stderr=subprocess.STDOUT, env=_env(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(c.global_state._live_node_ids()) < live + 1:
            if node.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"a node in a private mount namespace did not start: {node_log.read_text()[-500:]}")
            time.sleep(0.2)
        res = subprocess.run(_cmd(out, data, STRATEGY_1, "--no-tracking", "--executor", "ray", "--ray-address", c.address),
                             env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    finally:
        with _gone_ok():
            top = psutil.Process(node.pid)
            started.add([top, *top.children(recursive=True)])  # checked for leftovers by the fixture
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}: Ray node ") and "does not see the files written here" in last
    assert not list(out.glob(".shared-check-*")) and not (out / "runs").exists()


def test_without_ray_one_line(tmp_path):
    """Ray not installed (its import blocked): one line that says how to install it; nothing written."""
    out = tmp_path / "exp"
    fake = {"lesions": tmp_path / "lesions.json", "lits": tmp_path / "lits.json"}  # only their existence is checked first
    for f in fake.values():
        f.write_text("{}")
    code = ("import sys; sys.modules['ray'] = None\n"
            "from monai_liver.cli import main\n"
            f"sys.exit(main({_cmd(out, fake, STRATEGY_1, '--executor', 'ray')[3:]!r}))")
    res = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == ["error: --executor ray needs Ray, which is not installed: "
                                               "pip install -e '.[cluster]'"]
    assert not out.exists()
