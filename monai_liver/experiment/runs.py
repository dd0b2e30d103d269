"""The runs of an experiment: what each one is (:class:`RunSpec`, planned by :func:`plan_runs`) and
the one code path that executes it (:func:`execute_run`: train, evaluate, atomic ``DONE``), called by
every executor (:mod:`monai_liver.experiment.executors`).

Resuming: a run whose folder holds ``DONE`` is never run again; an interrupted training resumes from
the bundle's ``checkpoint_last.pt`` (``TRAINED`` marks a finished training whose evaluation is still
to do). ``<out>/runs.log`` records every start and finish.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monai_liver.atomic import write_text
from monai_liver.constants import LOCALISER, PRETRAIN_STRATEGY, bundles_dir
from monai_liver.errors import LiverError
from monai_liver.experiment.bundle_run import config_ids, run_bundle
from monai_liver.experiment.data import PreparedData
from monai_liver.experiment.mlflow_parent import EXPERIMENT_NAME, ParentRun
from monai_liver.experiment.settings import ExperimentSettings
from monai_liver.locks import exclusive_lock

__all__ = ["RunSpec", "execute_run", "held_out_cases", "plan_runs", "pretrain_metrics"]


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
    isolation: str  #: "inprocess" or "subprocess" (see :func:`~monai_liver.experiment.bundle_run.run_bundle`)
    strategy: str
    init: str
    fold: int
    pretrain_key: str = ""  #: set for a pretraining: the train_log.csv figure of its validated epochs
    after: tuple[str, ...] = ()  #: names of runs whose output this one reads (the LiTS checkpoint)
    device: str | None = None  #: the experiment's ``--device`` (None: cuda when available), also for held-out checks


# ------------------------------------------------------------------------------------------ plan


def plan_runs(out: Path, s: ExperimentSettings, data: PreparedData, imagenet_file: str, not_run: dict[str, str],
              uri: str | None) -> list[RunSpec]:
    """Every run of the experiment, in order: the LiTS pretraining and the liver localiser (when the
    ``lits`` init is asked for), then strategy x init x fold (inits in ``not_run`` left out).
    ``uri``: the MLflow tracking URI (None: no tracking)."""
    bundles = bundles_dir()
    common = {
        "epochs": int(s.epochs), "image_size": int(s.image_size), "batch_size": int(s.batch_size),
        "seed": int(s.seed), "cache_dir": str(out / "cache"), "num_workers": int(s.num_workers),
        "max_train_slices": int(s.max_slices or 0), "progress": False, "backbone": str(s.backbone),
        "learning_rate": float(s.learning_rate),
    }
    if s.val_interval is not None:  # preset tuning, when the preset sets it
        common["val_interval"] = s.val_interval
    if s.device:
        common["device"] = f"$torch.device('{s.device}')"
    env = {"MLFLOW_TRACKING_URI": uri} if uri else {}  # MONAI's handler gives the variable precedence

    def spec(name: str, run_dir: Path, bundle: str, datalist: Path, strategy: str, init: str, fold: int, extra: dict,
             key: str = "", after: tuple[str, ...] = ()) -> RunSpec:
        ids = config_ids(bundles / bundle / "configs" / "train.json")
        o = {"bundle_root": str(bundles / bundle), "datalist": str(datalist), "dataset_dir": _dataset_dir(datalist),
             "fold": fold, "init": init, "output_dir": str(run_dir), **common, **extra}
        tracking = {}
        if uri:
            from monai_liver.engine.tracking import run_name

            tracking = {"tracking": "mlflow", "tracking_uri": uri, "experiment_name": EXPERIMENT_NAME,
                        "run_name": run_name(strategy, init, fold)}
        return RunSpec(name=name, out=out, run_dir=run_dir, bundle=bundle,
                       overrides={k: v for k, v in o.items() if k in ids or k in ("bundle_root", "output_dir")},
                       tracking=tracking, env=env, isolation=s.isolation,
                       strategy=strategy, init=init, fold=fold, pretrain_key=key, after=after, device=s.device or None)

    specs: list[RunSpec] = []
    lits_ckpt = ""
    if data.lits is not None:
        lits_ckpt = str(out / "pretrain" / PRETRAIN_STRATEGY / "model.pt")
        # the LiTS pretraining (crops as the target is trained: transfer) and the liver localiser of the
        # inference cascade (whole slices, every slice); both hold out
        # fold 0 of the LiTS datalist, whose figures go to pretrain/<name>/metrics.json and the report
        # (the localiser keeps the batch Dice: most whole slices hold no lesion). The localiser keeps its best
        # validation (liver Dice on LiTS fold 0), a choice on that fold: its test is the end-to-end check on
        # volumes no model saw, where its last epoch instead of its best cut the lesion Dice from 0.597 to
        # 0.498 (the lesions follow the liver mask; 7 epochs then); the strategy runs keep their last epoch,
        # their held-out fold being the table's test fold. The quick preset's localiser (3 epochs, val_interval
        # 5) is validated once, after its last epoch (FinalValidation), so there its best is its last.
        crop = {"epochs": int(s.lits_epochs), "max_val_slices": 0, "learning_rate": s.pretraining_learning_rate}
        whole = {"epochs": int(s.localiser_epochs), "image_size": int(s.localiser_image_size),
                 "max_val_slices": 0, "roi_margin": -1, "only_liver_slices": False, "key_metric_name": "val_liver_dice",
                 "lesion_oversample": 1, "dice_batch": True, "keep_model": "best"}
        for name, extra, key in ((PRETRAIN_STRATEGY, crop, "val_dice"), (LOCALISER, whole, "val_liver_dice")):
            specs.append(spec(name, out / "pretrain" / name, PRETRAIN_STRATEGY, data.lits, name, "scratch", 0, extra, key))

    for strategy in s.strategies:
        for init in (i for i in s.inits if i not in not_run):
            for k in range(int(s.folds)):
                extra = {"lits_checkpoint": lits_ckpt if init == "lits" else "",
                         "imagenet_weights": imagenet_file if init == "imagenet" else ""}
                if strategy == "cls_baseline":
                    extra["epochs"] = s.classifier_epochs
                specs.append(spec(f"{strategy} / {init} / fold {k}", out / "runs" / strategy / init / f"fold{k}", strategy,
                                  data.lesions, strategy, init, k, extra, after=(PRETRAIN_STRATEGY,) if init == "lits" else ()))
    return specs


def _dataset_dir(datalist: Path) -> str:
    from monai_liver.engine.data import datalist_dataset_dir

    return datalist_dataset_dir(datalist)


# --------------------------------------------------------------------------------------- execute


def _log_line(out: Path, text: str) -> None:
    with open(out / "runs.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def _figures(spec: RunSpec) -> dict:
    """The held-out figures of a finished run, for the progress line (a pretraining: held-out LiTS fold 0)."""
    run_dir = Path(spec.run_dir)
    path = run_dir / ("metrics.json" if spec.pretrain_key else "eval/metrics.json")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    keys = {"val_liver_dice": "liver Dice", "val_dice": "lesion Dice", "case_liver_dice": "liver Dice per case",
            "case_lesion_dice": "lesion Dice per case"} if spec.pretrain_key else \
        {"acc": "acc", "dice": "Dice", "recall": "recall"}
    return {name: float(m[k]) for k, name in keys.items() if isinstance(m.get(k), (int, float)) and m[k] == m[k]}


def execute_run(spec: RunSpec, tracker: ParentRun | None = None, node: str = "") -> dict:
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
    # at most one process runs in run_dir: a retried or resubmitted run waits for a stale one to die
    with exclusive_lock(run_dir / ".run.lock"):
        if (run_dir / "DONE").is_file():  # finished by another process since the driver looked
            return result | {"figures": _figures(spec)}
        _log_line(out, f"start {s} {init} fold{k} on {node.replace(' ', '_')}")
        t0 = time.perf_counter()
        if spec.pretrain_key:
            run_bundle(bundle, ["train.json"], {**o, **spec.tracking}, run_dir / "train.log", env, spec.isolation)
            if not (run_dir / "model.pt").is_file():
                raise LiverError(f"{run_dir}: {s} finished without writing model.pt (see {run_dir / 'train.log'})")
            if tracker:
                from monai_liver.engine.tracking import run_name

                tracker.attach_child(run_name(s, init, k), None, {"stage": "pretrain"})
            held_out = pretrain_metrics(run_dir, spec.pretrain_key) | held_out_cases(run_dir / "model.pt", o["datalist"], k, spec.device)
            write_text(run_dir / "metrics.json", json.dumps(held_out, indent=2) + "\n")
            done = {}
        else:
            if not (run_dir / "TRAINED").is_file():
                run_bundle(bundle, ["train.json"], {**o, **spec.tracking}, run_dir / "train.log", env, spec.isolation)
                write_text(run_dir / "TRAINED", "ok\n")
            t1 = time.perf_counter()
            run_bundle(bundle, ["train.json", "evaluate.json"], o, run_dir / "evaluate.log", env, spec.isolation)
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
    """A pretraining run's held-out figures: the ``train_log.csv`` row of the epoch its ``model.pt``
    holds (the last validated one when the file does not say), as floats; ``{}`` when none."""
    import csv

    from monai_liver.engine.handlers import read_checkpoint

    log = Path(run_dir) / "train_log.csv"
    if not log.is_file():
        return {}
    with log.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    if not rows:
        return {}
    model = Path(run_dir) / "model.pt"
    checkpoint = read_checkpoint(model) if model.is_file() else None
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None
    row = next((r for r in rows if epoch is not None and int(r["epoch"]) == int(epoch)), rows[-1])
    return {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()
            if k in ("epoch", "val_dice", "val_recall", "val_liver_dice") and v not in ("", None)}


def held_out_cases(model: Path, datalist: str | Path, fold: int, device: str | None = None) -> dict:
    """A pretraining's (``model``: lits_pretrain or the liver localiser) figures per volume of the
    ``fold`` of ``datalist`` it held out, on the input it was trained on
    (:func:`monai_liver.inference.volume_check.reference_roi_dice`), averaged
    (:func:`~monai_liver.inference.volume_check.case_means`: ``case_liver_dice``, ``case_lesion_dice``,
    ``cases``, ``lesion_cases``): LiTS's "Dice per case", beside the bundle's per-slice validation.
    ``device``: as the run's (None: :func:`~monai_liver.inference.model.load_model`'s default, cuda when available)."""
    from monai_liver.data.datalist import read_datalist
    from monai_liver.inference.model import load_model
    from monai_liver.inference.volume_check import case_means, reference_roi_dice

    content = read_datalist(datalist)
    root = Path(content["dataset_dir"])
    net = load_model(model, device=device)
    return case_means([reference_roi_dice(net, root / it["image"], root / it["label"])
                       for it in content["training"] if int(it.get("fold", -1)) == int(fold) and it.get("label")])
