"""``monai-liver experiment``: every strategy x init x fold through the bundles, then the table.

Stages (each timed and printed):

1. data: the LiTS datalist (``--lits-datalist``, a ``--lits`` folder, or LiTS-like phantoms) and the
   lesion-type datalist (``--datalist``, a ``--manifest``, or lesion-type phantoms), written to
   ``<out>/data_lists/`` with ``--folds`` patient-grouped folds;
2. ``lits_pretrain`` once (only when the ``lits`` init is asked for), into ``<out>/pretrain/lits_pretrain``;
3. for each strategy x init x fold: ``python -m monai.bundle run`` with ``train.json``, then with
   ``train.json`` + ``evaluate.json``, into ``<out>/runs/<strategy>/<init>/fold<k>``;
4. :func:`~monai_liver.experiment.report.build_report`: ``results.csv``, ``results.md``,
   ``per_slice.csv``, ``report.html``.

Resuming: a run whose folder holds ``DONE`` (written atomically after its evaluation) is never run
again; an interrupted training resumes from the bundle's ``checkpoint_last.pt``. Run the same
command again to continue. ``<out>/runs.log`` records every start and finish.

MLflow (SQLite ``<out>/mlflow.db`` unless ``--tracking-uri``): one parent run per experiment (its id
kept in ``<out>/mlflow_parent.json`` so a resumed experiment keeps it), one child run per
(strategy, init, fold). The bundle's ``MLFlowHandler`` creates the child run (``--tracking mlflow``);
MONAI's handler cannot be given a parent, so the runner attaches the finished child to the parent
with MLflow's ``mlflow.parentRunId`` tag and logs the held-out figures (``metrics.json``) into it.
The parent gets the results table, report and figures as artifacts.

ImageNet weights are looked up once (``--imagenet-weights``, the torch hub cache, a download); when
there are none the ImageNet rows are reported as not run, with the reason, and the rest proceeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from monai_liver.atomic import write_text
from monai_liver.constants import INITS, LOCALISER, PRETRAIN_STRATEGY, STRATEGIES, bundles_dir, check_image_size
from monai_liver.errors import LiverError

__all__ = ["PRESETS", "ExperimentResult", "bundles_dir", "run_experiment", "add_arguments", "main"]

#: Scale presets. ``quick``: CPU, every strategy x {scratch, lits} x 2 folds (+ the liver localiser) in about 11 minutes on 2 cores
#: (phantoms); ``full``: the paper's scale (all 332 slices, 5 folds, 256 px) for a GPU.
#: quick uses MONAI's BasicUNet with half the deep channels (basicunet-small, 16..128 features, instance
#: norm): on 2 CPU cores BasicUNet learnt about twice as much per second as EfficientNet-B0, and the small
#: one as much per epoch as the 16..256 one at twice the epochs per second (benchmarks/bench_learning.py,
#: README); batch 8 at lr 5e-3 with a cosine schedule learnt more per second than batch 16 at 2e-3.
PRESETS: dict[str, dict] = {
    "quick": {"folds": 2, "epochs": 20, "lits_epochs": 16, "localiser_epochs": 16, "localiser_image_size": 96, "image_size": 64, "batch_size": 8, "max_slices": 0,
              "learning_rate": 0.005, "val_interval": 5, "backbone": "basicunet-small",
              "num_workers": 0, "lits_volumes": 6, "lits_shape": (160, 160, 48), "isolation": "inprocess"},
    "full": {"folds": 5, "epochs": 100, "lits_epochs": 50, "localiser_epochs": 50, "localiser_image_size": 256, "image_size": 256, "batch_size": 16, "max_slices": 0,
             "learning_rate": 0.001, "backbone": "efficientnet-b0",
             "num_workers": 4, "lits_volumes": 20, "lits_shape": (256, 256, 64), "isolation": "subprocess"},
}

#: settings that must not change when an experiment folder is resumed
_FIXED = ("folds", "epochs", "lits_epochs", "localiser_epochs", "localiser_image_size", "image_size", "batch_size", "max_slices", "seed", "backbone", "data",
          "lits_data")


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced."""

    out: Path
    results_csv: Path
    results_md: Path
    per_slice_csv: Path
    report_html: Path
    table_markdown: str
    times: dict[str, float] = field(default_factory=dict)
    runs_done: int = 0  #: runs trained + evaluated by this call
    runs_skipped: int = 0  #: runs already finished before this call
    not_run: dict[str, str] = field(default_factory=dict)  #: init -> reason


# ----------------------------------------------------------------------------------- small helpers


def _print(msg: str) -> None:
    print(msg, flush=True)


def _log_line(out: Path, text: str) -> None:
    with open(out / "runs.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


@contextlib.contextmanager
def _lock(out: Path):
    """One experiment process per folder (an advisory lock, released when the process dies)."""
    import fcntl

    fh = open(out / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise LiverError(f"{out}: another 'monai-liver experiment' is running in this folder") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the bundle process gets SIGTERM when the runner dies, even by SIGKILL, so a killed
    # experiment never leaves a training writing into a run folder that a resumed one also uses.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _Child:
    """The bundle subprocess now running, terminated when the runner is asked to stop."""

    proc: subprocess.Popen | None = None


def _on_signal(signum, frame):  # pragma: no cover - exercised by the kill test through a subprocess
    p = _Child.proc
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    raise SystemExit(128 + signum)


def _config_ids(config: Path) -> set[str]:
    try:
        return set(json.loads(config.read_text()))
    except (OSError, ValueError) as e:
        raise LiverError(f"{config}: not a readable bundle config ({e})") from None


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        if ln.startswith("error:") or "LiverError" in ln:
            return ln
    return lines[-1] if lines else ""


def _run_bundle(bundle: Path, configs: Sequence[str], overrides: dict, log: Path, env: dict, isolation: str = "inprocess") -> None:
    """Run ``configs`` of ``bundle`` with ``overrides`` (and ``tracking``), output appended to ``log``.

    ``isolation="subprocess"``: ``python -m monai.bundle run ...`` (a fresh interpreter per call: GPU
    memory and global state are released; ~10-20 s of imports per call on a small CPU machine).
    ``"inprocess"``: the same entry point, ``monai.bundle.scripts.run`` (what ``python -m monai.bundle
    run`` calls), in this process, so the imports are paid once: the CPU presets and the tests.
    """
    files = [str(bundle / "configs" / c) for c in configs]
    logging_conf = bundle / "configs" / "logging.conf"
    log.parent.mkdir(parents=True, exist_ok=True)
    if isolation == "inprocess":
        _run_inprocess(files, logging_conf, overrides, log, env)
        return
    config_file = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
    if logging_conf.is_file():
        cmd += ["--logging_file", str(logging_conf)]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]  # "tracking" is a flag of monai.bundle run, the rest config ids
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        _Child.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        try:
            rc = _Child.proc.wait()
        finally:
            _Child.proc = None
    if rc != 0:
        raise LiverError(f"{log}: bundle {bundle.name} failed (exit {rc}): {_last_line(log)[:300]}")


def _run_inprocess(files: list[str], logging_conf: Path, overrides: dict, log: Path, env: dict) -> None:
    import gc
    import logging
    import traceback

    from monai.bundle.scripts import run as bundle_run

    from monai_liver.engine import find_liver_error

    kwargs = dict(overrides)
    tracking = kwargs.pop("tracking", None)
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    before = {id(lg): (list(lg.handlers), lg.level, lg.propagate) for lg in loggers}
    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",)}
    os.environ.update({k: env[k] for k in saved_env if k in env})
    error: BaseException | None = None
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        # loggers made at import time (MONAI's own) write to the console: point them at the log too
        swapped = []
        for lg in loggers:
            for h in lg.handlers:
                if type(h) is logging.StreamHandler and getattr(h, "stream", None) in consoles:
                    swapped.append((h, h.setStream(f)))
        f.write(f"\n$ monai.bundle.scripts.run(config_file={files}, {', '.join(f'{k}={v!r}' for k, v in overrides.items())})\n")
        f.flush()
        try:
            bundle_run(config_file=files[0] if len(files) == 1 else files,
                       logging_file=str(logging_conf) if logging_conf.is_file() else None, tracking=tracking, **kwargs)
        except Exception as e:  # noqa: BLE001 - reported as one line, the traceback goes to the log
            traceback.print_exc(file=f)
            error = e
        finally:
            # the bundle's logging.conf bound handlers to this log file: put the loggers back
            for lg in [logging.getLogger()] + [x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)]:
                if id(lg) in before:
                    lg.handlers[:], lg.level, lg.propagate = before[id(lg)][0], before[id(lg)][1], before[id(lg)][2]
                else:
                    lg.handlers[:] = [h for h in lg.handlers if getattr(h, "stream", None) is not f]
            for h, stream in swapped:
                h.setStream(stream)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:
                pass
    if error is not None:
        liver = find_liver_error(error)
        msg = str(liver) if liver is not None else f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        raise LiverError(f"{log}: bundle run failed: {msg}")


# ------------------------------------------------------------------------------------------ data


def _prepare_data(out: Path, opts: dict, log: Callable[[str], None]) -> tuple[Path, Path | None, str, str]:
    """(lesion datalist, LiTS datalist or None, data kind, LiTS data kind) with ``opts['folds']`` folds."""
    from monai_liver.data import datalist as dl

    lists = out / "data_lists"
    lists.mkdir(parents=True, exist_ok=True)
    folds, seed = int(opts["folds"]), int(opts["seed"])

    # lesion-type data
    target = lists / "lesions.json"
    if opts.get("datalist"):
        src = Path(opts["datalist"])
        content = dl.read_datalist(src)
        kind = "datalist"
        if int(content.get("n_folds", 0)) != folds or any("fold" not in it for it in content["training"]):
            # re-split with the asked number of folds (patient-grouped, class-stratified)
            content = dict(content)
            content["dataset_dir"] = str(_dataset_dir_of(src, content))
            content["training"] = dl.assign_folds(content["training"], folds, seed, source=str(src))
            content["n_folds"] = folds
            dl.write_datalist(content, target)
            log(f"   {src}: re-split into {folds} folds -> {target}")
        else:
            target = src
    elif opts.get("manifest"):
        kind = "manifest"
        if not target.is_file():
            dl.write_datalist(dl.datalist_from_manifest(opts["manifest"], n_folds=folds, seed=seed), target)
    else:
        kind = "phantoms"
        if not target.is_file():
            from monai_liver.data import phantoms

            manifest = phantoms.make_lesion_slices(out / "phantoms" / "lesions", seed=seed)
            dl.write_datalist(dl.datalist_from_manifest(manifest, n_folds=folds, seed=seed), target)
            log(f"   lesion-type phantoms: {manifest}")

    lits_target, lits_kind = None, "none"
    if "lits" in opts["inits"]:
        lits_target = lists / "lits.json"
        if opts.get("lits_datalist"):
            lits_target, lits_kind = Path(opts["lits_datalist"]), "datalist"
            dl.read_datalist(lits_target)
        elif opts.get("lits"):
            lits_kind = "lits"
            if not lits_target.is_file():
                dl.write_datalist(dl.datalist_from_lits(opts["lits"], n_folds=2, seed=seed), lits_target)
        else:
            lits_kind = "phantoms"
            if not lits_target.is_file():
                from monai_liver.data import phantoms

                lits_dir = out / "phantoms" / "lits"
                phantoms.make_lits_phantoms(lits_dir, n_volumes=int(opts["lits_volumes"]), shape=tuple(opts["lits_shape"]), seed=seed)
                dl.write_datalist(dl.datalist_from_lits(lits_dir, n_folds=2, seed=seed), lits_target)
                log(f"   LiTS-like phantoms: {lits_dir}")
    return Path(target), lits_target, kind, lits_kind


def _dataset_dir_of(path: Path, content: dict) -> Path:
    d = Path(content.get("dataset_dir") or ".")
    return d if d.is_absolute() else (path.parent / d).resolve()


@dataclass(frozen=True)
class RunSpec:
    """One bundle run of the experiment (a strategy x init x fold run, or a LiTS pretraining): all that
    :func:`execute_run` needs, wherever it executes (this process, or a Ray task on another node)."""

    name: str  #: shown in progress lines: "joint / lits / fold 1", or "lits_pretrain"
    out: Path  #: the experiment folder (on a filesystem every node mounts at the same path)
    run_dir: Path
    bundle: str  #: bundle name, looked up under :func:`bundles_dir` where the run executes
    overrides: dict  #: config overrides of train.json / evaluate.json (``bundle_root`` is set where it runs)
    tracking: dict  #: tracking overrides of the training run ({} without MLflow)
    env: dict  #: environment variables for the bundle, over the executing process's own
    isolation: str  #: "inprocess" or "subprocess" (see :func:`_run_bundle`)
    strategy: str
    init: str
    fold: int
    pretrain_key: str = ""  #: set for a pretraining: the train_log.csv figure that chose its model.pt
    after: tuple[str, ...] = ()  #: names of runs whose output this one reads (the LiTS checkpoint)


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """At most one process runs in ``run_dir``: a retried or resubmitted run waits for a stale one to die."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".run.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _figures(spec: RunSpec) -> dict:
    """The held-out figures of a finished run, for the progress line (a pretraining: held-out LiTS fold 0)."""
    run_dir = Path(spec.run_dir)
    path = run_dir / ("metrics.json" if spec.pretrain_key else "eval/metrics.json")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = {"val_liver_dice": "liver Dice", "val_dice": "lesion Dice"} if spec.pretrain_key else \
        {"acc": "acc", "dice": "Dice", "recall": "recall"}
    return {name: float(m[k]) for k, name in keys.items() if isinstance(m.get(k), (int, float)) and m[k] == m[k]}


def execute_run(spec: RunSpec, tracker: _Tracker | None = None, node: str = "") -> dict:
    """Train and evaluate one run, then write its ``DONE`` marker: the one code path of a run, called
    by every executor (:mod:`monai_liver.experiment.executors`). A run that has ``DONE`` is not run
    again; an interrupted one resumes (``TRAINED``, the bundle's ``checkpoint_last.pt``).

    Returns what the progress line shows: ``name, strategy, init, fold, node, seconds, figures, skipped``.
    """
    node = node or socket.gethostname()
    out, run_dir = Path(spec.out), Path(spec.run_dir)
    if not (out / "experiment.json").is_file():
        raise LiverError(f"{out}: the experiment folder is not visible on node {node} "
                         "(--out must be on a filesystem that every node mounts at the same path)")
    bundle = bundles_dir() / spec.bundle
    o = {**spec.overrides, "bundle_root": str(bundle)}
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(spec.env)
    s, init, k = spec.strategy, spec.init, spec.fold
    result = {"name": spec.name, "strategy": s, "init": init, "fold": k, "node": node, "seconds": 0.0,
              "pretrain": bool(spec.pretrain_key), "skipped": True}
    with _run_lock(run_dir):
        if (run_dir / "DONE").is_file():  # finished by another process since the driver looked
            return result | {"figures": _figures(spec)}
        _log_line(out, f"start {s} {init} fold{k} on {node.replace(' ', '_')}")
        t0 = time.perf_counter()
        if spec.pretrain_key:
            _run_bundle(bundle, ["train.json"], {**o, **spec.tracking}, run_dir / "train.log", env, spec.isolation)
            if not (run_dir / "model.pt").is_file():
                raise LiverError(f"{run_dir}: {s} finished without writing model.pt (see {run_dir / 'train.log'})")
            if tracker:
                from monai_liver.engine.tracking import run_name

                tracker.attach_child(run_name(s, init, k), None, {"stage": "pretrain"})
            held_out = pretrain_metrics(run_dir, spec.pretrain_key)
            write_text(run_dir / "metrics.json", json.dumps(held_out, indent=2) + "\n")
            done = {}
        else:
            if not (run_dir / "TRAINED").is_file():
                _run_bundle(bundle, ["train.json"], {**o, **spec.tracking}, run_dir / "train.log", env, spec.isolation)
                write_text(run_dir / "TRAINED", "ok\n")
            t1 = time.perf_counter()
            _run_bundle(bundle, ["train.json", "evaluate.json"], o, run_dir / "evaluate.log", env, spec.isolation)
            if not (run_dir / "eval" / "per_slice.csv").is_file():
                raise LiverError(f"{run_dir}: evaluation wrote no eval/per_slice.csv (see {run_dir / 'evaluate.log'})")
            t2 = time.perf_counter()
            if tracker:
                from monai_liver.engine.tracking import run_name

                tracker.attach_child(run_name(s, init, k), run_dir / "eval" / "metrics.json",
                                     {"strategy": s, "init": init, "fold": k})
            done = {"train_s": round(t1 - t0, 1), "evaluate_s": round(t2 - t1, 1)}
        write_text(run_dir / "DONE", json.dumps(done | {"node": node, "finished": time.time()}) + "\n")
        _log_line(out, f"done {s} {init} fold{k}")
    return result | {"seconds": time.perf_counter() - t0, "skipped": False, "figures": _figures(spec)}


def pretrain_metrics(run_dir: Path, key: str = "val_dice") -> dict:
    """A pretraining run's held-out figures: the ``train_log.csv`` row of the epoch whose
    ``model.pt`` was kept (best ``key`` on the held-out LiTS fold), as floats; ``{}`` when none."""
    import csv

    log = Path(run_dir) / "train_log.csv"
    if not log.is_file():
        return {}
    with log.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    if not rows:
        return {}
    best = max(rows, key=lambda r: float(r[key]))
    return {k: (int(v) if k == "epoch" else float(v)) for k, v in best.items()
            if k in ("epoch", "val_dice", "val_recall", "val_liver_dice") and v not in ("", None)}


def _dataset_dir(datalist: Path) -> str:
    from monai_liver.engine.data import datalist_dataset_dir

    return datalist_dataset_dir(datalist)


# -------------------------------------------------------------------------------------- imagenet


def imagenet_status(imagenet_weights: str | None, download: bool = True) -> tuple[str | None, str]:
    """(weights file to pass to the bundles or "" for the hub cache, None when unavailable; message).

    Uses :func:`monai_liver.networks.init.initialise` on a throwaway network: the same lookup (file,
    torch hub cache, download) and the same checks as the bundles."""
    from monai_liver.networks.factory import build_network
    from monai_liver.networks.init import imagenet_cache_path, initialise

    try:
        initialise(build_network("cls_baseline"), "imagenet", imagenet_weights=imagenet_weights or None, download=download)
    except LiverError as e:
        return None, str(e)
    src = str(imagenet_weights) if imagenet_weights else str(imagenet_cache_path())
    return (str(imagenet_weights) if imagenet_weights else ""), f"ImageNet weights: {src}"


# ---------------------------------------------------------------------------------------- mlflow


class _Tracker:
    """The parent MLflow run of an experiment (created once, kept across resumes)."""

    def __init__(self, out: Path, uri: str, experiment: str, params: dict, log: Callable[[str], None]):
        import mlflow
        from mlflow.tracking import MlflowClient

        from monai_liver.engine.tracking import artifact_location, check_tracking_uri

        self.uri, self.log = check_tracking_uri(uri), log
        self.client = MlflowClient(tracking_uri=self.uri)
        self.mlflow = mlflow
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (exp.experiment_id if exp else
                              self.client.create_experiment(experiment, artifact_location=artifact_location(self.uri)))
        self.experiment = experiment
        state = out / "mlflow_parent.json"
        run_id = None
        if state.is_file():
            try:
                saved = json.loads(state.read_text())
                if saved.get("tracking_uri") == self.uri:
                    run_id = saved.get("run_id")
                    self.client.get_run(run_id)
            except Exception:
                run_id = None
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"experiment-{out.name}",
                                         tags={"monai_liver.out": str(out)})
            run_id = run.info.run_id
            for k, v in params.items():
                self.client.log_param(run_id, k, str(v)[:500])
            write_text(state, json.dumps({"tracking_uri": self.uri, "run_id": run_id, "experiment": experiment}))
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.parent_id = run_id

    def __getstate__(self) -> dict:
        # a Ray task attaches its run to the parent itself: it gets the ids, and makes its own client
        return {"uri": self.uri, "experiment_id": self.experiment_id, "experiment": self.experiment,
                "parent_id": self.parent_id}

    def __setstate__(self, state: dict) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.__dict__.update(state)
        self.client, self.mlflow, self.log = MlflowClient(tracking_uri=self.uri), mlflow, _print

    def attach_child(self, run_name: str, metrics_json: Path | None, extra: dict) -> None:
        """Tag the newest run called ``run_name`` as a child of the parent and log its held-out figures."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'",
                                       order_by=["attributes.start_time DESC"], max_results=5)
        if runs:
            run_id = runs[0].info.run_id
        else:  # the bundle logged nothing (e.g. its tracking is off): record the run from here
            run_id = self.client.create_run(self.experiment_id, run_name=run_name).info.run_id
            self.client.set_terminated(run_id)
        self.client.set_tag(run_id, "mlflow.parentRunId", self.parent_id)
        for k, v in extra.items():
            self.client.set_tag(run_id, k, str(v))
        if metrics_json is not None and metrics_json.is_file():
            m = json.loads(metrics_json.read_text())
            for k, v in m.items():
                if isinstance(v, (int, float)) and v == v:  # finite numbers only (NaN != NaN)
                    self.client.log_metric(run_id, f"heldout_{k}", float(v))
                elif isinstance(v, dict):
                    for c, x in v.items():
                        if isinstance(x, (int, float)) and x == x:
                            self.client.log_metric(run_id, f"heldout_{k}_{c}", float(x))

    def finish(self, out: Path, status: str = "FINISHED") -> None:
        for name in ("results.csv", "results.md", "per_slice.csv", "report.html", "experiment.json"):
            if (out / name).is_file():
                self.client.log_artifact(self.parent_id, str(out / name))
        if (out / "figures").is_dir():
            self.client.log_artifacts(self.parent_id, str(out / "figures"), artifact_path="figures")
        self.client.set_terminated(self.parent_id, status=status)


# ------------------------------------------------------------------------------------------ main


def _resolve_options(preset: str | None, **given) -> dict:
    base = dict(PRESETS[preset or "quick"])
    for k, v in given.items():
        if v is not None:
            base[k] = v
    base["preset"] = preset or "quick"
    return base


def run_experiment(
    out: str | Path,
    *,
    lits: str | Path | None = None,
    lits_datalist: str | Path | None = None,
    manifest: str | Path | None = None,
    datalist: str | Path | None = None,
    preset: str | None = "quick",
    folds: int | None = None,
    epochs: int | None = None,
    lits_epochs: int | None = None,
    localiser_epochs: int | None = None,
    localiser_image_size: int | None = None,
    image_size: int | None = None,
    batch_size: int | None = None,
    max_slices: int | None = None,
    backbone: str | None = None,
    learning_rate: float | None = None,
    strategies: Sequence[str] | None = None,
    inits: Sequence[str] | None = None,
    imagenet_weights: str | Path | None = None,
    download: bool = True,
    tracking_uri: str | None = None,
    tracking: bool = True,
    device: str | None = None,
    seed: int = 0,
    isolation: str | None = None,
    phantoms: bool | None = None,
    n_boot: int | None = None,
    executor: str = "local",
    ray_address: str = "auto",
    ray_cpus: float = 1.0,
    ray_max_retries: int = 3,
    log: Callable[[str], None] = _print,
) -> ExperimentResult:
    """Run (or resume) the whole experiment in ``out``; see the module doc. Returns the paths and
    the results table (markdown). Options left None come from ``preset`` (``"quick"`` / ``"full"``).

    ``phantoms``: say in the table and report that the lesion-type data are phantoms (automatic when
    this call generates them; pass True for phantoms made beforehand, as the demo does).

    ``executor``: ``"local"`` (one run after another here) or ``"ray"`` (each run a Ray task on the
    cluster at ``ray_address``, ``ray_cpus`` CPUs or one GPU each, retried ``ray_max_retries`` times
    when its node dies); see :mod:`monai_liver.experiment.executors`.

    Raises LiverError for bad options or data, a failed bundle run (naming its log), or a folder
    that was started with other settings.
    """
    if preset not in PRESETS:
        raise LiverError(f"preset '{preset}' is not known; choose one of {', '.join(PRESETS)}")
    strategies = list(dict.fromkeys(strategies or STRATEGIES))
    inits = list(dict.fromkeys(inits or INITS))
    for s in strategies:
        if s not in STRATEGIES:
            raise LiverError(f"strategy '{s}' is not known; choose from {', '.join(STRATEGIES)}")
    for i in inits:
        if i not in INITS:
            raise LiverError(f"init '{i}' is not known; choose from {', '.join(INITS)}")
    if lits and lits_datalist:
        raise LiverError("give --lits or --lits-datalist, not both")
    if manifest and datalist:
        raise LiverError("give --manifest or --datalist, not both")
    for p in (lits, lits_datalist, manifest, datalist, imagenet_weights):
        if p and not Path(p).exists():
            raise LiverError(f"{p}: file or folder not found")
    opts = _resolve_options(preset, folds=folds, epochs=epochs, lits_epochs=lits_epochs,
                            localiser_epochs=localiser_epochs, localiser_image_size=localiser_image_size,
                            image_size=image_size,
                            batch_size=batch_size, max_slices=max_slices, isolation=isolation,
                            backbone=backbone, learning_rate=learning_rate)
    if opts["isolation"] not in ("inprocess", "subprocess"):
        raise LiverError(f"isolation '{opts['isolation']}' is not known; choose inprocess or subprocess")
    opts.update(seed=seed, phantoms=phantoms, strategies=strategies, inits=inits, lits=lits, lits_datalist=lits_datalist,
                manifest=manifest, datalist=datalist)
    if int(opts["folds"]) < 2:
        raise LiverError(f"--folds must be at least 2 (got {opts['folds']})")
    for k in ("epochs", "lits_epochs", "localiser_epochs", "image_size", "batch_size"):
        if int(opts[k]) < 1:
            raise LiverError(f"--{k.replace('_', '-')} must be at least 1 (got {opts[k]})")
    from monai_liver.networks.backbone import check_backbone

    check_backbone(str(opts["backbone"]))
    for k in ("image_size", "localiser_image_size"):
        check_image_size(opts[k], "--" + k.replace("_", "-"))

    from monai_liver.experiment.executors import make_executor

    runner = make_executor(executor, address=ray_address, cpus=ray_cpus, max_retries=ray_max_retries, device=device,
                           log=log)  # before anything is written: Ray missing is one line
    bundles = bundles_dir()
    for s in [*strategies, PRETRAIN_STRATEGY]:
        if not (bundles / s / "configs" / "train.json").is_file():
            raise LiverError(f"{bundles / s}: bundle not found (expected configs/train.json)")

    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    old_handlers = {}
    if hasattr(signal, "SIGTERM"):
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, _on_signal)
    try:
        with _lock(out):
            _check_same_data(out, opts)  # before anything is written into the folder
            with runner:
                return _run(out, opts, bundles, times, imagenet_weights, download, tracking, tracking_uri, device, n_boot,
                            log, runner)
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)


def _check_same_data(out: Path, opts: dict) -> None:
    """Set ``opts["data_fingerprint"]``; LiverError when ``out`` was started on other data."""
    from monai_liver.experiment.fingerprint import data_fingerprint

    fp = data_fingerprint(opts.get("datalist"), opts.get("manifest"), opts.get("lits"), opts.get("lits_datalist"))
    opts["data_fingerprint"] = fp
    old = None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((out / "experiment.json").read_text()).get("data_fingerprint")
    if old and fp and old != fp:
        raise LiverError(f"{out}: this folder was started on other data (fingerprint {old}, now {fp}: a datalist, "
                         "manifest or one of their files changed); resume with the same data, or use another --out")


@contextlib.contextmanager
def _stage(name: str, times: dict[str, float], log: Callable[[str], None]):
    log(f"== {name}")
    t = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - t
    log(f"   {name}: {time.perf_counter() - t:.1f} s")


def _run(out, opts, bundles, times, imagenet_weights, download, tracking, tracking_uri, device, n_boot, log,
         executor) -> ExperimentResult:
    from monai_liver.experiment.executors import Progress
    from monai_liver.experiment.report import build_report, results_table

    uri = tracking_uri or ("sqlite:///" + (out / "mlflow.db").as_posix())
    executor.check(out, uri if tracking else None)  # Ray: shared storage, a tracking store every node reaches
    with _stage("data", times, log):
        lesions, lits_list, kind, lits_kind = _prepare_data(out, opts, log)
    exp = {
        "preset": opts["preset"], "folds": int(opts["folds"]), "epochs": int(opts["epochs"]),
        "lits_epochs": int(opts["lits_epochs"]), "localiser_epochs": int(opts["localiser_epochs"]),
        "localiser_image_size": int(opts["localiser_image_size"]),
        "image_size": int(opts["image_size"]),
        "batch_size": int(opts["batch_size"]), "max_slices": int(opts["max_slices"] or 0), "seed": int(opts["seed"]),
        "backbone": str(opts["backbone"]), "learning_rate": float(opts["learning_rate"]), "data": kind,
        "lits_data": lits_kind, "datalist": str(lesions), "lits_datalist": str(lits_list or ""),
        "strategies": opts["strategies"], "inits": opts["inits"], "device": device or "auto",
        "phantoms": bool(opts.get("phantoms")) or kind == "phantoms",
        "data_fingerprint": opts.get("data_fingerprint"),
    }
    from monai_liver.engine.data import datalist_classes

    exp["classes"] = list(datalist_classes(lesions))
    old = None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((out / "experiment.json").read_text())
    if old:
        changed = [k for k in _FIXED if k in old and old[k] != exp[k]]
        if changed:
            k = changed[0]
            raise LiverError(f"{out}: this folder was started with {k}={old[k]!r}, now {exp[k]!r}; "
                             "use the same options to resume, or another --out")
        # runs may be added (more strategies / inits) but the table keeps the ones already there
        exp["strategies"] = list(dict.fromkeys(old.get("strategies", []) + exp["strategies"]))
        exp["inits"] = list(dict.fromkeys(old.get("inits", []) + exp["inits"]))
        exp["phantoms"] = exp["phantoms"] or bool(old.get("phantoms"))
    write_text(out / "experiment.json", json.dumps(exp, indent=2))

    tracker = None
    if tracking:
        tracker = _Tracker(out, uri, "monai_liver", {k: v for k, v in exp.items() if k not in ("strategies", "inits")}
                           | {"strategies": ",".join(exp["strategies"]), "inits": ",".join(exp["inits"])}, log)
        log(f"   MLflow: {uri} (parent run {tracker.parent_id})")

    not_run: dict[str, str] = {}
    imagenet_file = ""
    from monai_liver.networks.init import has_imagenet_weights

    if "imagenet" in opts["inits"] and not has_imagenet_weights(opts["backbone"]):
        not_run["imagenet"] = f"no ImageNet weights exist for backbone {opts['backbone']} (use --backbone efficientnet-b0)"
        log(f"   not run: ImageNet rows ({not_run['imagenet']})")
    elif "imagenet" in opts["inits"]:
        with _stage("imagenet weights", times, log):
            found, msg = imagenet_status(str(imagenet_weights) if imagenet_weights else None, download=download)
            if found is None:
                not_run["imagenet"] = "ImageNet weights unavailable: " + msg
                log(f"   not run: ImageNet rows ({msg})")
            else:
                imagenet_file = found
                log(f"   {msg}")
                if not found and executor.remote:  # the torch hub cache of this machine: share it with the nodes
                    from monai_liver.atomic import copy_file
                    from monai_liver.networks.init import imagenet_cache_path

                    src = imagenet_cache_path(str(opts["backbone"]))
                    imagenet_file = str(out / "imagenet" / src.name)
                    if not Path(imagenet_file).is_file():
                        copy_file(src, imagenet_file)
                    log(f"   ImageNet weights for the Ray nodes: {imagenet_file}")
    for s in opts["strategies"]:
        marker = out / "runs" / s / "imagenet" / "NOT_RUN"
        if "imagenet" in not_run:
            write_text(marker, not_run["imagenet"] + "\n")
        elif marker.is_file():
            marker.unlink()

    common = {
        "epochs": int(opts["epochs"]), "image_size": int(opts["image_size"]), "batch_size": int(opts["batch_size"]),
        "seed": int(opts["seed"]), "cache_dir": str(out / "cache"), "num_workers": int(opts["num_workers"]),
        "max_train_slices": int(opts["max_slices"] or 0), "progress": False, "backbone": str(opts["backbone"]),
        "learning_rate": float(opts["learning_rate"]),
    }
    if opts.get("val_interval") is not None:  # preset tuning, when the preset sets it
        common["val_interval"] = opts["val_interval"]
    if device:
        common["device"] = f"$torch.device('{device}')"

    def overrides(bundle: Path, run_dir: Path, datalist: Path, fold: int, init: str, extra: dict) -> dict:
        ids = _config_ids(bundle / "configs" / "train.json")
        o = {"bundle_root": str(bundle), "datalist": str(datalist), "dataset_dir": _dataset_dir(datalist),
             "fold": fold, "init": init, "output_dir": str(run_dir), **common, **extra}
        return {k: v for k, v in o.items() if k in ids or k in ("bundle_root", "output_dir")}

    def tracking_overrides(strategy: str, init: str, fold: int) -> dict:
        if not tracking:
            return {}
        from monai_liver.engine.tracking import run_name

        return {"tracking": "mlflow", "tracking_uri": uri, "experiment_name": "monai_liver",
                "run_name": run_name(strategy, init, fold)}

    spec_env = {"MLFLOW_TRACKING_URI": uri} if tracking else {}  # MONAI's handler gives the variable precedence

    def spec(name: str, run_dir: Path, bundle: str, datalist: Path, s: str, init: str, fold: int, extra: dict,
             key: str = "", after: tuple[str, ...] = ()) -> RunSpec:
        return RunSpec(name=name, out=out, run_dir=run_dir, bundle=bundle,
                       overrides=overrides(bundles / bundle, run_dir, datalist, fold, init, extra),
                       tracking=tracking_overrides(s, init, fold), env=spec_env, isolation=opts["isolation"],
                       strategy=s, init=init, fold=fold, pretrain_key=key, after=after)

    specs: list[RunSpec] = []
    lits_ckpt = ""
    if lits_list is not None:
        lits_ckpt = str(out / "pretrain" / PRETRAIN_STRATEGY / "model.pt")
        # the LiTS pretraining (crops as the target is trained: transfer) and the liver localiser of the
        # inference cascade (whole slices, every slice, best held-out liver Dice kept); both hold out
        # fold 0 of the LiTS datalist, whose figures go to pretrain/<name>/metrics.json and the report
        crop = {"epochs": int(opts["lits_epochs"]), "max_val_slices": 0}
        whole = {"epochs": int(opts["localiser_epochs"]), "image_size": int(opts["localiser_image_size"]),
                 "max_val_slices": 0, "roi_margin": -1, "only_liver_slices": False, "key_metric_name": "val_liver_dice",
                 "lesion_oversample": 1}
        for name, extra, key in ((PRETRAIN_STRATEGY, crop, "val_dice"), (LOCALISER, whole, "val_liver_dice")):
            specs.append(spec(name, out / "pretrain" / name, PRETRAIN_STRATEGY, lits_list, name, "scratch", 0, extra, key))

    n_folds = int(opts["folds"])
    for s in opts["strategies"]:
        for init in (i for i in opts["inits"] if i not in not_run):
            for k in range(n_folds):
                extra = {"lits_checkpoint": lits_ckpt if init == "lits" else "",
                         "imagenet_weights": imagenet_file if init == "imagenet" else ""}
                specs.append(spec(f"{s} / {init} / fold {k}", out / "runs" / s / init / f"fold{k}", s, lesions, s, init, k,
                                  extra, after=(PRETRAIN_STRATEGY,) if init == "lits" else ()))
    todo = []
    for sp in specs:
        if (Path(sp.run_dir) / "DONE").is_file():
            log(f"== {sp.name}: done before ({sp.run_dir}), not run again")
        else:
            todo.append(sp)
    runs_skipped = sum(1 for sp in specs if not sp.pretrain_key) - sum(1 for sp in todo if not sp.pretrain_key)
    progress = Progress(len(specs), len(specs) - len(todo), log)
    executor.run(todo, tracker, progress)
    for r in progress.results:
        times[r["name"] if r["pretrain"] else f"[run] {r['name']}"] = r["seconds"]
    runs_done = sum(1 for r in progress.results if not r["pretrain"] and not r["skipped"])

    with _stage("packages", times, log):
        from monai_liver.experiment.packages import write_packages

        write_packages(out, log)
    with _stage("report", times, log):
        html = build_report(out, n_boot=n_boot)
        table = results_table(out)
    if tracker:
        tracker.finish(out)
    log("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items() if not k.startswith("[")))
    run_total = sum(v for k, v in times.items() if k.startswith("["))
    log(f"runs: {runs_done} trained and evaluated ({run_total:.0f} s of run time), {runs_skipped} finished before")
    return ExperimentResult(out=out, results_csv=out / "results.csv", results_md=out / "results.md",
                            per_slice_csv=out / "per_slice.csv", report_html=html, table_markdown=table, times=times,
                            runs_done=runs_done, runs_skipped=runs_skipped, not_run=not_run)


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (resumed when it exists)")
    g = parser.add_argument_group("data (default: phantoms)")
    g.add_argument("--lits", type=Path, help="LiTS folder (volume-N / segmentation-N) for the lits_pretrain bundle")
    g.add_argument("--lits-datalist", type=Path, help="LiTS datalist JSON (monai-liver datalist --lits ...)")
    g.add_argument("--manifest", type=Path, help="lesion-type CSV manifest (patient_id,image,liver,lesion,label[,slice])")
    g.add_argument("--datalist", type=Path, help="lesion-type datalist JSON (monai-liver datalist --manifest ...)")
    p = parser.add_argument_group("scale (defaults from the preset)")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--quick", dest="preset", action="store_const", const="quick",
                   help="CPU preset (default): " + ", ".join(f"{k} {v}" for k, v in PRESETS["quick"].items() if k in ("folds", "epochs", "image_size", "max_slices")))
    m.add_argument("--full", dest="preset", action="store_const", const="full",
                   help="paper scale for a GPU: " + ", ".join(f"{k} {v}" for k, v in PRESETS["full"].items() if k in ("folds", "epochs", "image_size")) + ", all slices")
    p.add_argument("--folds", type=int, help="patient-grouped folds (cross-validation)")
    p.add_argument("--epochs", type=int, help="training epochs per run")
    p.add_argument("--lits-epochs", type=int, help="epochs of the lits_pretrain bundle")
    p.add_argument("--localiser-epochs", type=int, help="epochs of the liver localiser (lits_pretrain on whole slices)")
    p.add_argument("--localiser-image-size", type=int, help="input size of the liver localiser (whole slices; multiple of 32)")
    p.add_argument("--image-size", type=int, help="network input size in pixels (multiple of 32)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-slices", type=int, help="at most this many training slices per run (0: all)")
    p.add_argument("--backbone", help="U-Net backbone: basicunet (--quick) or a FlexibleUNet one, e.g. efficientnet-b0 (--full)")
    p.add_argument("--learning-rate", type=float, help="AdamW learning rate (cosine schedule over the epochs)")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, help="default: all four")
    p.add_argument("--inits", nargs="+", choices=INITS, help="default: scratch imagenet lits")
    parser.add_argument("--imagenet-weights", type=Path, help="EfficientNet-B0 ImageNet weights file (else the torch hub cache, else a download)")
    parser.add_argument("--no-download", action="store_true", help="never try to download ImageNet weights")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<out>/mlflow.db)")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow runs")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phantoms", action="store_true", default=None,
                        help="the --datalist / --manifest data are phantoms: the table and report say so")
    parser.add_argument("--isolation", choices=("inprocess", "subprocess"),
                        help="run each bundle in this process (imports paid once; --quick default) or as "
                             "'python -m monai.bundle run' subprocesses (--full default)")
    r = parser.add_argument_group("where the runs execute")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one run after another in this process (default); ray: each run a Ray task on a cluster "
                        "(pip install -e '.[cluster]'; --out on a filesystem every node mounts)")
    r.add_argument("--ray-address", default="auto",
                   help="Ray cluster: auto (the cluster this machine belongs to, else a new local one; default), "
                        "local (always a new local one), or an address such as 10.0.0.1:6379")
    r.add_argument("--ray-cpus", type=float, default=1.0,
                   help="CPUs per run on a cluster without GPUs (on a GPU cluster each run takes one GPU and these CPUs)")
    r.add_argument("--ray-max-retries", type=int, default=3,
                   help="times Ray reruns a run whose worker or node died (it resumes from checkpoint_last.pt)")
    parser.set_defaults(preset=None)


def main(args: argparse.Namespace) -> int:
    if args.device == "cuda" and args.executor == "local":  # with Ray the cluster's GPUs decide
        import torch

        if not torch.cuda.is_available():
            raise LiverError("--device cuda: no CUDA device is available (use --device cpu)")
    res = run_experiment(
        args.out, lits=args.lits, lits_datalist=args.lits_datalist, manifest=args.manifest, datalist=args.datalist,
        preset=args.preset or "quick", folds=args.folds, epochs=args.epochs, lits_epochs=args.lits_epochs,
        localiser_epochs=args.localiser_epochs, localiser_image_size=args.localiser_image_size,
        image_size=args.image_size, batch_size=args.batch_size, max_slices=args.max_slices, backbone=args.backbone,
        learning_rate=args.learning_rate, strategies=args.strategies,
        inits=args.inits, imagenet_weights=args.imagenet_weights, download=not args.no_download,
        tracking_uri=args.tracking_uri, tracking=not args.no_tracking, device=args.device, seed=args.seed,
        isolation=args.isolation, phantoms=args.phantoms, executor=args.executor, ray_address=args.ray_address,
        ray_cpus=args.ray_cpus, ray_max_retries=args.ray_max_retries,
    )
    print()
    print(res.table_markdown)
    print(f"report: {res.report_html}")
    return 0
