"""``monai-liver peer nnunet --experiment DIR``: nnU-Net v2 (2d) on an experiment's slices and folds.

nnU-Net is the field's reference for segmentation; this puts it in our table, measured on the same
slices, the same folds and with the same metric code as our rows:

1. **dataset**: :mod:`monai_liver.peer.nnunet_dataset` cuts the experiment's lesion-type slices with
   our transforms (the liver-ROI crops at the experiment's ``image_size``) into an nnU-Net raw
   dataset, and writes ``splits_final.json`` with exactly our folds (our fold k = nnU-Net's fold k;
   no patient in two folds, checked);
2. **plan and preprocess**: ``nnUNetv2_plan_and_preprocess -c 2d`` (nnU-Net's own fingerprint,
   planning, normalisation); our split file is put into its preprocessed folder, so nnU-Net makes
   none of its own;
3. per fold k: **train** ``nnUNetv2_train <id> 2d k -tr TRAINER -device DEVICE`` (an interrupted one
   continues with ``--c``), **predict** the held-out fold with ``nnUNetv2_predict`` (the final
   checkpoint, or the best with ``--checkpoint best``), **score** nnU-Net's prediction files with
   our metric code (:mod:`monai_liver.peer.score`), MLflow child run under the experiment's parent;
4. the experiment's **table and report** are rebuilt: a row "nnU-Net v2 2d (peer)" under the
   segmentation baseline, and the training times beside ours.

Everything lives in ``<exp>/peers/nnunet/``::

    peer.json                        settings (a resumed run must use the same), title, recipe
    cases.csv splits_final.json      case -> patient, source, slice, fold; our folds for nnU-Net
    nnUNet_raw/ nnUNet_preprocessed/ nnUNet_results/     nnU-Net's three folders
    plan.log
    fold<k>/train.log predict.log    nnU-Net's console output
    fold<k>/input/                   links to the held-out images;  fold<k>/pred/  nnU-Net's predictions
    fold<k>/eval/                    per_slice.csv, metrics.json, examples.npz (our metric code)
    fold<k>/DONE                     training and prediction seconds (written last, atomically)

nnU-Net's environment variables (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``, and
``nnUNet_extTrainer`` for the trainers of :mod:`monai_liver.peer.nnunet_trainers`) are set in the
environment of its subprocesses only: nnU-Net reads them when it is imported, and the caller's
environment is never changed. Trainers: any of nnU-Net's (``nnUNetTrainer``, the default, 1000
epochs x 250 iterations; ``nnUNetTrainer_5epochs`` ...), or, with ``--epochs`` / ``--iterations``,
``nnUNetTrainer_MonaiLiver_<E>ep_<I>it_<V>val``: nnU-Net's default trainer with that length.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from monai_liver.atomic import write_text
from monai_liver.errors import LiverError

__all__ = ["NAME", "TITLE", "CONFIGURATION", "nnunet_version", "trainers_dir", "trainer_for", "nnunet_env",
           "run_peer", "add_arguments", "main"]

NAME = "nnunet"
TITLE = "nnU-Net v2 2d (peer)"
CONFIGURATION = "2d"
DATASET_ID = 501
DATASET_NAME = "MonaiLiver"
INSTALL = "pip install -c constraints.txt -e '.[peer]'"

#: nnU-Net's console commands, run as ``python -c`` with this interpreter (no PATH lookup)
_ENTRY = {
    "nnUNetv2_plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "plan_and_preprocess_entry"),
    "nnUNetv2_train": ("nnunetv2.run.run_training", "run_training_entry"),
    "nnUNetv2_predict": ("nnunetv2.inference.predict_from_raw_data", "predict_entry_point"),
}
#: peer.json settings a resumed run must keep
_FIXED = ("dataset", "datalist_sha256", "image_size", "max_train_slices", "trainer", "checkpoint")


def _print(msg: str) -> None:
    print(msg, flush=True)


def nnunet_version() -> str:
    """The installed nnunetv2 version; LiverError saying how to install it when it is missing."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    try:
        found = find_spec("nnunetv2") is not None
        v = version("nnunetv2")
    except (PackageNotFoundError, ValueError):
        found, v = False, ""
    if not found:
        raise LiverError(f"nnunetv2 is not installed (the 'peer' extra): {INSTALL}")
    return v


def trainers_dir() -> Path:
    """The folder nnU-Net searches for our trainers (``nnUNet_extTrainer``)."""
    return Path(__file__).resolve().parent / "nnunet_trainers"


def trainer_for(trainer: str = "nnUNetTrainer", epochs: int | None = None, iterations: int | None = None,
                val_iterations: int | None = None) -> str:
    """The ``-tr`` name: ``trainer`` itself, or, when a length is given, our trainer of that length
    (nnU-Net's default trainer; defaults 250 iterations, 50 validation iterations per epoch)."""
    if epochs is None and iterations is None and val_iterations is None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", trainer or ""):
            raise LiverError(f"--trainer {trainer!r}: not a class name")
        return trainer
    if trainer != "nnUNetTrainer":
        raise LiverError(f"--epochs / --iterations shorten nnU-Net's default trainer; with --trainer {trainer} "
                         "give neither (its length is its own)")
    e, i, v = (1000 if epochs is None else epochs), (250 if iterations is None else iterations), \
        (50 if val_iterations is None else val_iterations)
    for flag, value in (("--epochs", e), ("--iterations", i), ("--val-iterations", v)):
        if int(value) < 1:
            raise LiverError(f"{flag} must be at least 1 (got {value})")
    return f"nnUNetTrainer_MonaiLiver_{int(e)}ep_{int(i)}it_{int(v)}val"


def nnunet_env(peer_dir: Path, processes: int | None = None, da_processes: int | None = None) -> dict[str, str]:
    """The environment of nnU-Net's subprocesses: the caller's, plus nnU-Net's folders inside
    ``peer_dir``, our trainers folder and, when given, its process counts (``nnUNet_def_n_proc`` for
    preprocessing and export, ``nnUNet_n_proc_DA`` for data augmentation; 0 = in the main process)."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(peer_dir / "nnUNet_raw"), nnUNet_preprocessed=str(peer_dir / "nnUNet_preprocessed"),
               nnUNet_results=str(peer_dir / "nnUNet_results"), nnUNet_extTrainer=str(trainers_dir()),
               PYTHONUNBUFFERED="1")
    if processes is not None:
        env["nnUNet_def_n_proc"] = str(int(processes))
    if da_processes is not None:
        env["nnUNet_n_proc_DA"] = str(int(da_processes))
    return env


def _is_python_error(line: str) -> bool:
    """A traceback's last line (``ValueError: ...``, ``torch.OutOfMemoryError: ...``)."""
    return re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line) is not None


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_nnunet(command: str, args: Sequence[str], env: dict, log: Path) -> tuple[float, float]:
    """Run one of nnU-Net's commands (``_ENTRY``) with ``args`` in ``env``, output appended to ``log``;
    returns its (wall seconds, CPU seconds of it and its worker processes: on a shared machine the
    less disturbed figure). LiverError naming the log when it fails."""
    from monai_liver.experiment.bundle_run import die_with_parent, failure_line

    module, function = _ENTRY[command]
    code = f"import sys; sys.argv[0] = {command!r}; from {module} import {function} as f; sys.exit(f())"
    cmd = [sys.executable, "-c", code, *[str(a) for a in args]]
    log.parent.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _children_cpu()
    with open(log, "a") as f:
        f.write(f"\n$ {command} {' '.join(str(a) for a in args)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: stop nnU-Net too
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if rc != 0:
        raise LiverError(f"{log}: {command} failed (exit {rc}): {failure_line(log, _is_python_error)[:300]}")
    return time.perf_counter() - t0, _children_cpu() - c0


@contextlib.contextmanager
def _lock(peer_dir: Path):
    import fcntl

    peer_dir.mkdir(parents=True, exist_ok=True)
    fh = open(peer_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise LiverError(f"{peer_dir}: another 'monai-liver peer nnunet' is running in this folder") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def epoch_log(fold_dir: Path) -> list[dict]:
    """Per epoch of nnU-Net's training log(s) in ``fold_dir``: ``epoch, train_loss, val_loss,
    pseudo_dice_<label>..., epoch_s`` (what nnU-Net prints; for MLflow)."""
    rows: dict[int, dict] = {}
    names = ("liver", "lesion")
    for log in sorted(fold_dir.glob("training_log_*.txt")):
        epoch = None
        for line in log.read_text(errors="replace").splitlines():
            text = line.split(": ", 1)[-1].strip()
            if m := re.fullmatch(r"Epoch (\d+)", text):
                epoch = int(m.group(1))
                rows[epoch] = {"epoch": epoch}
            elif epoch is None:
                continue
            elif m := re.fullmatch(r"(train_loss|val_loss) (-?[\d.]+(?:e-?\d+)?)", text):
                rows[epoch][m.group(1)] = float(m.group(2))
            elif m := re.fullmatch(r"Pseudo dice \[(.*)\]", text):
                values = [float(x) for x in re.findall(r"-?[\d.]+(?:e-?\d+)?", m.group(1))]
                rows[epoch].update({f"pseudo_dice_{n}": v for n, v in zip(names, values)})
            elif m := re.fullmatch(r"Epoch time: ([\d.]+) s", text):
                rows[epoch]["epoch_s"] = float(m.group(1))
    return [rows[k] for k in sorted(rows)]


def _recipe(results_dir: Path, plans: dict) -> dict:
    """Epochs, iterations, batch and patch size the trainer ran with (its debug.json, the plans)."""
    out: dict = {}
    conf = plans.get("configurations", {}).get(CONFIGURATION, {})
    if conf:
        out["batch_size"] = int(conf.get("batch_size", 0))
        out["patch_size"] = [int(x) for x in conf.get("patch_size", [])]
    for debug in sorted(results_dir.glob("fold_*/debug.json")):
        d = _read_json(debug)
        for key, name in (("num_epochs", "epochs"), ("num_iterations_per_epoch", "iterations"),
                          ("num_val_iterations_per_epoch", "val_iterations"), ("initial_lr", "learning_rate")):
            if key in d:
                out[name] = float(d[key]) if name == "learning_rate" else int(float(d[key]))
        break
    return out


def settings_text(peer: dict) -> str:
    """One line for the table: trainer, length, batch, patch, device, version."""
    parts = [peer.get("trainer", "?")]
    if peer.get("epochs"):
        parts.append(f"{peer['epochs']} epochs x {peer.get('iterations', '?')} iterations")
    if peer.get("batch_size"):
        parts.append(f"batch {peer['batch_size']}")
    if peer.get("patch_size"):
        parts.append("patch " + " x ".join(str(p) for p in peer["patch_size"]) + " px")
    parts.append(f"{peer.get('checkpoint', 'final')} checkpoint")
    parts.append(str(peer.get("device", "?")))
    parts.append(f"nnunetv2 {peer.get('nnunetv2', '?')}")
    return ", ".join(parts)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _link_inputs(cases, images_dir: Path, input_dir: Path) -> None:
    """``input_dir`` holds exactly the held-out images (relative symbolic links)."""
    input_dir.mkdir(parents=True, exist_ok=True)
    want = {f"{c.case}_0000.nii.gz" for c in cases}
    for p in input_dir.iterdir():
        if p.name not in want:
            p.unlink()
    for name in sorted(want):
        link = input_dir / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(images_dir / name, input_dir))


def _tracker(exp_dir: Path, tracking: bool, tracking_uri: str | None, log: Callable[[str], None]):
    """The experiment's MLflow parent run (reused from ``mlflow_parent.json``), or None."""
    if not tracking:
        return None
    from monai_liver.experiment.mlflow_parent import EXPERIMENT_NAME, ParentRun

    uri = tracking_uri or _read_json(exp_dir / "mlflow_parent.json").get("tracking_uri") \
        or "sqlite:///" + (exp_dir / "mlflow.db").as_posix()
    tracker = ParentRun(exp_dir, uri, EXPERIMENT_NAME, {}, log)
    log(f"   MLflow: {uri} (parent run {tracker.parent_id})")
    return tracker


def _log_child(tracker, fold: int, peer: dict, fold_dir: Path, results_fold: Path, done: dict) -> None:
    """One MLflow run per fold under the experiment's parent: parameters, nnU-Net's per-epoch
    figures, held-out figures (``heldout_*``), seconds, nnU-Net's progress plot and logs."""
    client = tracker.client
    name = f"{NAME}-{CONFIGURATION}-fold{fold}"
    run_id = client.create_run(tracker.experiment_id, run_name=name,
                               tags={"mlflow.parentRunId": tracker.parent_id, "peer": NAME, "fold": str(fold)}).info.run_id
    for k in ("trainer", "configuration", "checkpoint", "device", "epochs", "iterations", "val_iterations", "batch_size",
              "patch_size", "learning_rate", "image_size", "nnunetv2", "dataset"):
        if peer.get(k) not in (None, ""):
            client.log_param(run_id, k, str(peer[k])[:500])
    client.log_param(run_id, "fold", str(fold))
    for row in epoch_log(results_fold):
        for k, v in row.items():
            if k != "epoch":
                client.log_metric(run_id, k, float(v), step=int(row["epoch"]))
    for k in ("train_s", "train_cpu_s", "epochs_s", "predict_s"):
        if done.get(k) is not None:
            client.log_metric(run_id, k, float(done[k]))
    for f in [results_fold / "progress.png", results_fold / "debug.json", *sorted(results_fold.glob("training_log_*.txt"))]:
        if f.is_file():
            client.log_artifact(run_id, str(f), artifact_path="nnunet")
    client.set_terminated(run_id)
    tracker.attach_child(name, fold_dir / "eval" / "metrics.json", {"strategy": NAME, "init": peer.get("init", "scratch"),
                                                                     "fold": fold})


@dataclass
class _Run:
    """What every step of one ``run_peer`` call needs: folders, environments, settings."""

    exp_dir: Path
    peer_dir: Path
    dataset_id: int
    trainer: str
    device: str
    checkpoint: str
    processes: int | None
    env: dict  #: planning and prediction
    train_env: dict  #: training (adds the data augmentation processes)
    peer: dict  #: peer.json
    log: Callable[[str], None]

    @property
    def raw(self) -> Path:
        return self.peer_dir / "nnUNet_raw" / self.peer["dataset"]

    @property
    def preprocessed(self) -> Path:
        return self.peer_dir / "nnUNet_preprocessed" / self.peer["dataset"]

    @property
    def results(self) -> Path:
        return self.peer_dir / "nnUNet_results" / self.peer["dataset"] / f"{self.trainer}__nnUNetPlans__{CONFIGURATION}"

    def save(self) -> None:
        write_text(self.peer_dir / "peer.json", json.dumps(self.peer, indent=2) + "\n")


def _dataset(run: _Run, datalist: Path, image_size: int) -> tuple[list, list[dict]]:
    """(cases, splits): written once (``dataset.json`` last), read back when resuming."""
    from monai_liver.peer.nnunet_dataset import read_cases, splits, write_raw_dataset

    t0 = time.perf_counter()
    if all(p.is_file() for p in (run.raw / "dataset.json", run.peer_dir / "cases.csv", run.peer_dir / "splits_final.json")):
        cases = read_cases(run.peer_dir / "cases.csv")
        split = json.loads((run.peer_dir / "splits_final.json").read_text())
        run.log(f"== dataset: {run.raw} (written before)")
    else:
        run.log(f"== dataset: {run.raw}")
        cases, fold_splits = write_raw_dataset(datalist, run.raw, run.exp_dir / "cache", image_size,
                                               run.peer["max_train_slices"])
        split = splits(cases, fold_splits)
        write_text(run.peer_dir / "splits_final.json", json.dumps(split, indent=2) + "\n")
    run.log(f"   {len(cases)} slices of {len({c.patient_id for c in cases})} patients, {len(split)} folds "
            f"({', '.join(str(len(s['val'])) for s in split)} held-out slices), {time.perf_counter() - t0:.1f} s")
    return cases, split


def _plan(run: _Run, split: list[dict]) -> dict:
    """nnU-Net's fingerprint, plans and 2d preprocessing (once), then our split file; returns the plans."""
    if not (run.preprocessed / "nnUNetPlans.json").is_file() or not (run.peer_dir / "PREPROCESSED").is_file():
        run.log("== nnU-Net plan and preprocess (fingerprint, plans, preprocessing: 2d)")
        n_proc = ["-np", str(run.processes), "-npfp", str(run.processes)] if run.processes else []
        s, _ = run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", run.dataset_id, "-c", CONFIGURATION, *n_proc,
                                                           "--verify_dataset_integrity"], run.env, run.peer_dir / "plan.log")
        write_text(run.peer_dir / "PREPROCESSED", json.dumps({"seconds": round(s, 1)}) + "\n")
        run.log(f"   {s:.1f} s")
    write_text(run.preprocessed / "splits_final.json", json.dumps(split, indent=2) + "\n")  # our folds: nnU-Net makes none
    plans = _read_json(run.preprocessed / "nnUNetPlans.json")
    if CONFIGURATION not in plans.get("configurations", {}):
        raise LiverError(f"{run.preprocessed / 'nnUNetPlans.json'}: nnU-Net planned no '{CONFIGURATION}' configuration")
    return plans


def _fold(run: _Run, k: int, cases: list, split: list[dict], plans: dict, classes: Sequence[str], tracker) -> dict:
    """Train fold ``k`` (unless nnU-Net's final checkpoint exists), predict its held-out slices, score
    them with our metric code, log the MLflow run, write ``DONE``; returns the held-out metrics."""
    from monai_liver.peer.score import score_predictions

    fold_dir, results_fold = run.peer_dir / f"fold{k}", run.results / f"fold_{k}"
    val = set(split[k]["val"])
    held_out = [c for c in cases if c.case in val]  # cases.csv order: the rows of per_slice.csv
    if not (results_fold / "checkpoint_final.pth").is_file():
        resume = (results_fold / "checkpoint_latest.pth").is_file()
        run.log(f"== fold {k}: nnUNetv2_train {run.dataset_id} {CONFIGURATION} {k} -tr {run.trainer} -device {run.device}"
                + (" --c" if resume else "") + f" ({len(split[k]['train'])} training slices)")
        s, cpu = run_nnunet("nnUNetv2_train", [run.dataset_id, CONFIGURATION, k, "-tr", run.trainer, "-device", run.device,
                                               *(["--c"] if resume else [])], run.train_env, fold_dir / "train.log")
        # an interrupted training that continued: its seconds are those of the last call
        write_text(fold_dir / "TRAINED", json.dumps({"train_s": round(s, 1), "train_cpu_s": round(cpu, 1),
                                                     "continued": resume}) + "\n")
        run.log(f"   trained in {s:.1f} s ({cpu:.0f} CPU s)")
    trained = _read_json(fold_dir / "TRAINED")
    run.peer.update(_recipe(run.results, plans))
    run.peer["settings"] = settings_text(run.peer)
    run.save()

    _link_inputs(held_out, run.raw / "imagesTr", fold_dir / "input")
    n_proc = ["-npp", str(run.processes), "-nps", str(run.processes)] if run.processes else []
    predict_s, _ = run_nnunet("nnUNetv2_predict", [
        "-i", fold_dir / "input", "-o", fold_dir / "pred", "-d", run.dataset_id, "-c", CONFIGURATION, "-f", k,
        "-tr", run.trainer, "-chk", f"checkpoint_{run.checkpoint}.pth", "-device", run.device, *n_proc,
        "--disable_progress_bar"], run.env, fold_dir / "predict.log")
    m = score_predictions(held_out, run.raw / "imagesTr", run.raw / "labelsTr", fold_dir / "pred", fold_dir / "eval",
                          classes, strategy=NAME)
    done = {"train_s": trained.get("train_s"), "train_cpu_s": trained.get("train_cpu_s"),
            "epochs_s": round(sum(r.get("epoch_s", 0.0) for r in epoch_log(results_fold)), 1),
            "predict_s": round(predict_s, 1), "device": run.device, "trainer": run.trainer, "finished": time.time()}
    if tracker:
        _log_child(tracker, k, run.peer, fold_dir, results_fold, done)
    write_text(fold_dir / "DONE", json.dumps(done) + "\n")
    run.log(f"   fold {k}: predicted in {predict_s:.1f} s; held-out Dice {m['dice']:.3f}, recall {m['recall']:.3f}, "
            f"detection recall {m['detection_recall']:.3f} ({m['n_slices']} slices, our metric code)")
    return m


def run_peer(
    experiment: str | Path,
    *,
    trainer: str = "nnUNetTrainer",
    epochs: int | None = None,
    iterations: int | None = None,
    val_iterations: int | None = None,
    device: str | None = None,
    folds: Sequence[int] | None = None,
    checkpoint: str = "final",
    processes: int | None = None,
    da_processes: int | None = None,
    dataset_id: int = DATASET_ID,
    tracking: bool = True,
    tracking_uri: str | None = None,
    n_boot: int | None = None,
    log: Callable[[str], None] = _print,
) -> dict:
    """Run (or resume) nnU-Net on ``experiment``'s folds; see the module doc. Returns ``peer.json``'s
    content with ``folds`` (fold -> held-out metrics) and ``report`` (path of report.html).

    ``device``: ``cpu`` or ``cuda`` (default: cuda when available). ``processes``: nnU-Net's worker
    processes for preprocessing and export, ``da_processes`` for data augmentation (defaults on a
    CPU: 1 and 0, nothing beside the training process on a small machine; on a GPU nnU-Net's own).
    Raises LiverError for a missing nnunetv2, an experiment folder without its datalist, other
    settings than the folder was started with, or a failed nnU-Net step (naming its log)."""
    version = nnunet_version()
    exp_dir = Path(experiment).expanduser().resolve()
    from monai_liver.peer.nnunet_dataset import experiment_datalist

    datalist = experiment_datalist(exp_dir)
    exp = _read_json(exp_dir / "experiment.json")
    if not exp.get("image_size"):
        raise LiverError(f"{exp_dir / 'experiment.json'}: missing or without image_size; run 'monai-liver experiment' first")
    if checkpoint not in ("final", "best"):
        raise LiverError(f"--checkpoint {checkpoint!r}: choose final or best")
    tr = trainer_for(trainer, epochs, iterations, val_iterations)
    if device not in (None, "cpu", "cuda"):
        raise LiverError(f"--device {device!r}: choose cpu or cuda")
    if device != "cpu":
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise LiverError("--device cuda: no CUDA device is available (use --device cpu)")
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        processes = 1 if processes is None else processes
        da_processes = 0 if da_processes is None else da_processes
    if not 1 <= int(dataset_id) <= 999:
        raise LiverError(f"--dataset-id {dataset_id}: nnU-Net dataset ids have three digits (1-999)")
    peer_dir = exp_dir / "peers" / NAME
    peer = {"name": NAME, "title": TITLE, "init": "scratch", "nnunetv2": version, "configuration": CONFIGURATION,
            "dataset": f"Dataset{int(dataset_id):03d}_{DATASET_NAME}", "datalist": str(datalist),
            "datalist_sha256": _sha256(datalist), "image_size": int(exp["image_size"]),
            "max_train_slices": int(exp.get("max_slices") or 0), "trainer": tr, "checkpoint": checkpoint, "device": device}
    # nnU-Net's planner sets torch's thread count from nnUNet_n_proc_DA (0 fails there): training only
    run = _Run(exp_dir, peer_dir, int(dataset_id), tr, device, checkpoint, processes, nnunet_env(peer_dir, processes),
               nnunet_env(peer_dir, processes, da_processes), peer, log)

    with _lock(peer_dir):
        old = _read_json(peer_dir / "peer.json")
        changed = [k for k in _FIXED if k in old and old[k] != peer[k]]
        if changed:
            k = changed[0]
            raise LiverError(f"{peer_dir}: started with {k}={old[k]!r}, now {peer[k]!r}; use the same options to "
                             f"resume, or delete {peer_dir} to start again")
        run.peer = {**old, **peer}
        run.save()
        cases, split = _dataset(run, datalist, int(exp["image_size"]))
        plans = _plan(run, split)
        todo = list(range(len(split))) if folds is None else [int(k) for k in folds]
        for k in todo:
            if not 0 <= k < len(split):
                raise LiverError(f"--folds {k}: the experiment has folds 0-{len(split) - 1}")
        classes = exp.get("classes") or _read_json(run.raw / "dataset.json").get("monai_liver", {}).get("classes", [])
        tracker = _tracker(exp_dir, tracking, tracking_uri, log)
        done_folds: dict[int, dict] = {}
        for k in todo:
            if (peer_dir / f"fold{k}" / "DONE").is_file():
                log(f"== fold {k}: done before ({peer_dir / f'fold{k}'}), not run again")
                done_folds[k] = _read_json(peer_dir / f"fold{k}" / "eval" / "metrics.json")
            else:
                done_folds[k] = _fold(run, k, cases, split, plans, classes, tracker)

        from monai_liver.experiment.report import build_report

        log("== report")
        html = build_report(exp_dir, n_boot=n_boot)
        if tracker:
            tracker.finish(exp_dir)
    return {**run.peer, "folds": done_folds, "report": str(html)}


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, type=Path, help="experiment folder (the --out of monai-liver experiment)")
    t = parser.add_argument_group("training (nnU-Net's own recipe unless shortened)")
    t.add_argument("--trainer", default="nnUNetTrainer",
                   help="nnU-Net trainer class (default nnUNetTrainer: 1000 epochs x 250 iterations; e.g. nnUNetTrainer_5epochs)")
    t.add_argument("--epochs", type=int, help="shorten the default trainer to this many epochs")
    t.add_argument("--iterations", type=int, help="training iterations per epoch with --epochs (nnU-Net: 250)")
    t.add_argument("--val-iterations", type=int, help="validation iterations per epoch with --epochs (nnU-Net: 50)")
    t.add_argument("--checkpoint", choices=("final", "best"), default="final",
                   help="checkpoint that predicts the held-out fold (nnU-Net's default: final)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--folds", type=int, nargs="+", help="only these folds (default: all of the experiment's)")
    parser.add_argument("--processes", type=int, help="nnU-Net's preprocessing / export processes (CPU default 1)")
    parser.add_argument("--da-processes", type=int, help="nnU-Net's data augmentation processes (CPU default 0: in the training process)")
    parser.add_argument("--dataset-id", type=int, default=DATASET_ID, help="nnU-Net dataset id inside the experiment folder")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the experiment's)")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow runs")
    parser.add_argument("--n-boot", type=int, help="bootstrap resamples for the 95%% intervals (default 2000)")


def main(args: argparse.Namespace) -> int:
    res = run_peer(args.experiment, trainer=args.trainer, epochs=args.epochs, iterations=args.iterations,
                   val_iterations=args.val_iterations, device=args.device, folds=args.folds, checkpoint=args.checkpoint,
                   processes=args.processes, da_processes=args.da_processes, dataset_id=args.dataset_id,
                   tracking=not args.no_tracking, tracking_uri=args.tracking_uri, n_boot=args.n_boot)
    from monai_liver.experiment.report import results_table

    print()
    print(results_table(args.experiment))
    print(f"report: {res['report']}")
    return 0
