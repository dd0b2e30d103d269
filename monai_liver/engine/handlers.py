"""Ignite handlers the bundles need and MONAI does not provide.

Why not MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` for the checkpoints: MONAI's
``CheckpointSaver`` writes through ignite's ``DiskSaver(atomic=False)`` (see
``monai/handlers/checkpoint_saver.py``, ``_DiskSaver.__init__``), deletes the previous file before
writing the new one with a fixed filename, and, through ignite's ``Checkpoint``, stores a single
object as a bare state dict instead of ``{"model": ...}``. An interrupted save can therefore leave
no model at all. Our savers write to a temporary file in the same folder and ``os.replace`` it
(atomic on POSIX and Windows). The resume checkpoint also holds the trainer's epoch, which a
``CheckpointLoader`` in ``train#handlers`` could only get through a reference cycle
(``train#trainer`` -> ``train#handlers`` -> ``train#trainer``); the handler takes it from the
engine it is attached to instead.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from monai_liver.engine.metrics import METRIC_NAMES
from monai_liver.errors import LiverError

__all__ = [
    "atomic_save",
    "unwrap",
    "rank",
    "load_model",
    "checkpoint_settings",
    "read_checkpoint",
    "settings_of",
    "set_bn_momentum",
    "ModelSaver",
    "ResumeCheckpoint",
    "EpochLogger",
    "EarlyStop",
    "TimeBudget",
    "FinalValidation",
    "ProgressBar",
    "rank_handlers",
]

logger = logging.getLogger("monai_liver.engine")

#: train_log.csv columns; ``seconds``: the epoch's training wall time (validation excluded),
#: ``slices``: training slices it saw.
LOG_COLUMNS: tuple[str, ...] = ("epoch", "loss", "lr", *METRIC_NAMES, "seconds", "slices")


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel``, else ``net``."""
    return net.module if isinstance(net, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else net


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace``: readers see the
    old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; LiverError for a missing, truncated or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise LiverError(f"{path}: checkpoint file does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, pickled code
        raise LiverError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def checkpoint_settings(path: str | Path) -> dict:
    """The training settings a ``model.pt`` of :class:`ModelSaver` records (``strategy``,
    ``backbone``, ``image_size``, ``class_names``), or ``{}`` for a checkpoint without them (older
    runs, TorchScript files, other tools). Unreadable files raise LiverError as :func:`load_model`."""
    return settings_of(read_checkpoint(path))


def settings_of(checkpoint: Any) -> dict:
    """The ``"settings"`` of a checkpoint read by :func:`read_checkpoint` (``{}`` when it has none)."""
    settings = checkpoint.get("settings") if isinstance(checkpoint, Mapping) else None
    return dict(settings) if isinstance(settings, Mapping) else {}


def load_model(network: torch.nn.Module, path: str | Path, map_location: Any = "cpu",
               checkpoint: Any = None) -> torch.nn.Module:
    """Load ``{"model": state_dict}`` (or a bare state dict) from ``path`` into ``network`` (strict);
    ``checkpoint``: the file's content already read by :func:`read_checkpoint` (not read again).

    LiverError when the file is missing or unreadable or its tensors do not fit the network (a
    checkpoint of another strategy or backbone). Returns ``network``.
    """
    ckpt = read_checkpoint(path, map_location) if checkpoint is None else checkpoint
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LiverError(f"{path}: checkpoint has no 'model' state dict")
    target = unwrap(network)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise LiverError(
            f"{path}: checkpoint does not fit the {type(target).__name__} network "
            f"({len(missing)} tensors missing, {len(unexpected)} unexpected, {len(shapes)} of another shape); "
            "was it trained by another bundle or with other classes?"
        )
    target.load_state_dict(state, strict=True)
    logger.info(f"loaded {len(state)} tensors from {path}")
    return network


def set_bn_momentum(network: torch.nn.Module, momentum: float | None = 0.1) -> int:
    """Set the running-statistics momentum of every BatchNorm layer of ``network``; returns how many.

    MONAI's EfficientNet encoders use ``momentum=0.01`` (TensorFlow's 0.99). On the short runs and
    small datasets of this project the running statistics then lag the weights for hundreds of
    iterations, and the network in eval mode (validation, inference) predicts one class for every
    slice while the training loss is low. PyTorch's default 0.1 follows within a few epochs.
    ``None`` keeps the layers' own values.
    """
    if momentum is None:
        return 0
    n = 0
    for module in unwrap(network).modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = float(momentum)
            n += 1
    return n


def _finite(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else -math.inf


class ModelSaver:
    """Attach to the evaluator: after each validation, save ``{"model": state_dict, "key_metric",
    "key_metric_value", "epoch", "keep", "settings"}`` to ``save_dir/filename`` (atomically, rank 0 only).

    ``keep="last"`` (the bundles' default) saves after every validation, so the file ends with the
    weights of the last epoch (:class:`FinalValidation` validates it): the right choice when the
    validation data are the data the model is then scored on, as in the experiment's
    cross-validation, where keeping the best of several validations would choose on the test fold.
    ``keep="best"`` saves only when the key metric improved (the first validation always saves), for
    a validation set that is not the test set.

    Args:
        save_dir: output folder.
        network: the trained network (DDP is unwrapped).
        key_metric_name: the metric recorded (and compared, ``keep="best"``); default the evaluator's
            ``key_metric_name``.
        filename: default ``model.pt``.
        keep: ``"last"`` or ``"best"``.
        resume: ``keep="best"``: continue from the best value recorded in an existing ``filename``
            (resumed runs); otherwise an existing file is overwritten by the first validation.
        settings: what inference must know to run the model as it was trained (``strategy``,
            ``backbone``, ``image_size``, ``class_names``), stored as ``"settings"`` in the file.
    """

    KEEP = ("last", "best")

    def __init__(
        self,
        save_dir: str | Path,
        network: torch.nn.Module,
        key_metric_name: str | None = None,
        filename: str = "model.pt",
        keep: str = "last",
        resume: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if keep not in self.KEEP:
            raise LiverError(f"keep_model '{keep}' is not known; choose last or best")
        self.path = Path(save_dir) / filename
        self.settings = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in (settings or {}).items()}
        self.network = network
        self.key_metric_name = key_metric_name
        self.keep = keep
        self.best: float | None = None
        self.best_epoch: int | None = None
        if keep == "best" and resume and self.path.is_file():
            ckpt = read_checkpoint(self.path)
            if isinstance(ckpt, Mapping) and "key_metric_value" in ckpt:
                self.best = _finite(ckpt["key_metric_value"])
                self.best_epoch = int(ckpt.get("epoch", 0))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None or name not in engine.state.metrics:
            raise ValueError(f"ModelSaver: metric '{name}' not computed by the evaluator")
        score = _finite(engine.state.metrics[name])
        if self.keep == "best" and self.best is not None and score <= self.best:
            return
        self.best, self.best_epoch = score, int(engine.state.epoch)
        if rank() == 0:
            state = {k: v.detach().cpu() for k, v in unwrap(self.network).state_dict().items()}
            value = float(engine.state.metrics[name])
            atomic_save(
                {"model": state, "key_metric": name, "key_metric_value": value, "epoch": self.best_epoch,
                 "keep": self.keep, "settings": self.settings}, self.path
            )
            logger.info(f"saved {self.path} ({name} = {value:.4f} at epoch {self.best_epoch}, keep {self.keep})")


class ResumeCheckpoint:
    """Attach to the trainer: save the full training state after every epoch to ``path`` (atomic,
    rank 0), and, if ``path`` exists when training starts, restore it so that an interrupted run
    continues from its last finished epoch.

    Args:
        path: e.g. ``<output_dir>/checkpoint_last.pt``.
        save_dict: ``{"model": net, "optimizer": opt, "lr_scheduler": sched, ...}``: objects with
            ``state_dict`` / ``load_state_dict``; the trainer's epoch and iteration are added.
        map_location: for loading (each rank loads onto its own device).

    The file holds tensors and numbers only, so it loads with ``torch.load(weights_only=True)``.
    An early-stopped run is recorded as such and is not trained further on resume.
    """

    def __init__(self, path: str | Path, save_dict: Mapping[str, Any], map_location: Any = "cpu") -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)

    def load(self, engine: Engine) -> None:
        # the saver is registered now, when every handler has been attached, so that it runs after
        # all of them at the end of an epoch (LR step, validation, best model, early stop) and saves
        # the state they leave, whatever the handler order in the bundle config
        if not engine.has_event_handler(self.save, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if not self.path.is_file():
            return
        ckpt = read_checkpoint(self.path, self.map_location)
        for key, obj in self.save_dict.items():
            if key not in ckpt:
                raise LiverError(f"{self.path}: resume checkpoint has no '{key}'; delete it to start again")
            try:
                unwrap(obj).load_state_dict(ckpt[key]) if isinstance(obj, torch.nn.Module) else obj.load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError) as e:
                raise LiverError(
                    f"{self.path}: resume checkpoint does not fit this run's {key} ({str(e).splitlines()[0][:160]}); "
                    "delete it or use another output_dir"
                ) from None
        epoch, iteration = int(ckpt["trainer"]["epoch"]), int(ckpt["trainer"]["iteration"])
        if epoch > engine.state.max_epochs:
            raise LiverError(f"{self.path}: resume checkpoint is at epoch {epoch}, beyond epochs={engine.state.max_epochs}")
        engine.state.epoch, engine.state.iteration = epoch, iteration
        logger.info(f"resumed from {self.path} at epoch {epoch}")
        if bool(ckpt["trainer"].get("early_stopped", 0)):
            logger.info("the resumed run had stopped early; not training further")
            engine.terminate()

    def save(self, engine: Engine) -> None:
        if rank() != 0:
            return
        ckpt: dict[str, Any] = {key: obj.state_dict() for key, obj in self.save_dict.items()}
        if "model" in self.save_dict:
            ckpt["model"] = unwrap(self.save_dict["model"]).state_dict()
        ckpt["trainer"] = {
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "early_stopped": int(bool(engine.should_terminate)),
        }
        atomic_save(ckpt, self.path)


class EpochLogger:
    """Attach to the trainer: one row per epoch in ``path`` (CSV) with ``epoch, loss, lr,
    val_dice, val_recall, val_acc, val_bacc, val_liver_dice, seconds, slices`` (mean training loss,
    the learning rate the epoch ran with, the evaluator's metrics when it ran this epoch, empty
    where there is none; the epoch's training seconds, validation excluded, and slices seen). Every rank
    logs one line per epoch (``rank r: epoch e/E loss x``); only rank 0 writes the file. When the
    first epoch of a run starts, rows of epochs after the (possibly resumed) last finished epoch are
    dropped, so a resumed run continues the file. The epoch's mean loss is also put in the trainer's
    ``state.metrics["train_loss"]``, where the handlers attached after this one (MLflow's, at the
    end of ``train#handlers``) log it once per epoch.
    """

    def __init__(
        self,
        path: str | Path,
        evaluator: Engine | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        metric_names: Sequence[str] = METRIC_NAMES,
    ) -> None:
        self.path = Path(path)
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.metric_names = tuple(metric_names)
        self._losses: list[float] = []
        self._lr: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def started(self, engine: Engine) -> None:
        self._fresh = True

    def _start_file(self, done: int) -> None:
        """Rewrite the file with its header and the rows of the ``done`` epochs already finished (resume)."""
        rows: list[dict] = []
        if self.path.is_file() and done > 0:
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("epoch") and int(r["epoch"]) <= done]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(LOG_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def epoch_started(self, engine: Engine) -> None:
        # first epoch of this run: the resume checkpoint (loaded on STARTED) has set the epoch by now
        if getattr(self, "_fresh", True) and rank() == 0:
            self._start_file(engine.state.epoch - 1)
        self._fresh = False
        self._losses = []
        self._slices = 0
        self._lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else None
        self._start = self._last = time.perf_counter()

    def iteration_completed(self, engine: Engine) -> None:
        self._last = time.perf_counter()
        out = engine.state.output
        loss = out.get("loss") if isinstance(out, Mapping) else None
        if loss is not None:  # kept as tensors: no host sync per iteration
            self._losses.append(loss.detach() if isinstance(loss, torch.Tensor) else float(loss))
        batch = engine.state.batch
        image = batch.get("image") if isinstance(batch, Mapping) else None
        self._slices += int(image.shape[0]) if image is not None else 0

    def epoch_completed(self, engine: Engine) -> None:
        loss = float(sum(self._losses) / len(self._losses)) if self._losses else float("nan")
        engine.state.metrics["train_loss"] = loss
        row: dict[str, Any] = {"epoch": engine.state.epoch, "loss": f"{loss:.6g}", "lr": "" if self._lr is None else f"{self._lr:.6g}",
                               "seconds": f"{self._last - self._start:.3f}", "slices": self._slices}
        ev = self.evaluator
        if ev is not None and getattr(ev.state, "epoch", None) == engine.state.epoch:
            for name in self.metric_names:
                if name in ev.state.metrics:
                    row[name] = f"{float(ev.state.metrics[name]):.6g}"
        logger.info(
            f"rank {rank()}: epoch {engine.state.epoch}/{engine.state.max_epochs} loss {loss:.4f} "
            f"({len(self._losses)} iterations)"
            + "".join(f" {k} {row[k]}" for k in self.metric_names if k in row)
        )
        if rank() == 0:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=list(LOG_COLUMNS), extrasaction="ignore").writerow(row)


class EarlyStop:
    """Attach to the trainer: stop when the evaluator's key metric has not improved for
    ``patience`` validations (MONAI's ``EarlyStopHandler`` scores every epoch, so with
    ``val_interval > 1`` it would count epochs without a validation; and configured on the
    evaluator it needs the trainer, a reference cycle in a bundle config). ``patience <= 0``
    disables it."""

    def __init__(self, patience: int, evaluator: Engine, min_delta: float = 0.0) -> None:
        self.patience, self.evaluator, self.min_delta = int(patience), evaluator, float(min_delta)
        self.best: float | None = None
        self.counter = 0

    def attach(self, engine: Engine) -> None:
        if self.patience > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        ev = self.evaluator
        if getattr(ev.state, "epoch", None) != engine.state.epoch:
            return
        score = _finite(ev.state.metrics.get(ev.state.key_metric_name))
        if self.best is None or score > self.best + self.min_delta:
            self.best, self.counter = score, 0
            return
        self.counter += 1
        if self.counter >= self.patience:
            logger.info(f"early stop at epoch {engine.state.epoch}: no improvement in {self.patience} validations")
            engine.terminate()


class FinalValidation:
    """Attach to the trainer: run ``validator`` after the last epoch when ``interval`` left it out
    (e.g. 10 epochs validated every 4: at 4, 8 and, through this handler, 10), so that the last
    weights are always validated and ``model.pt`` always exists, also when :class:`TimeBudget`
    ends training early. MONAI's ``ValidationHandler`` validates only every ``interval`` epochs."""

    def __init__(self, validator: Engine, interval: int = 1) -> None:
        self.validator = validator
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= engine.state.max_epochs and engine.state.epoch % self.interval:
            self.validator.run(engine.state.epoch)


class TimeBudget:
    """Attach to the trainer: end training after the iteration at which ``seconds`` of training
    (data loading included, validation excluded) have passed; 0 or less: no limit. For comparisons
    at a fixed wall-time budget (``benchmarks/bench_learning.py``); the epoch in progress ends
    early and its validation and checkpoint run as usual."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = float(seconds or 0.0)
        self.spent = 0.0
        self._before_epoch = 0.0
        self._epoch_start = 0.0

    def attach(self, engine: Engine) -> None:
        if self.seconds > 0:
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def epoch_started(self, engine: Engine) -> None:
        self._before_epoch, self._epoch_start = self.spent, time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        self.spent = self._before_epoch + time.perf_counter() - self._epoch_start
        if self.spent >= self.seconds:
            logger.info(f"time budget of {self.seconds:.0f} s spent at epoch {engine.state.epoch}: stopping")
            engine.state.max_epochs = engine.state.epoch
            engine.terminate_epoch()


class ProgressBar:
    """tqdm progress bar with the running loss (ignite's ``ProgressBar``, whose ``attach`` needs
    the output transform that MONAI's handler lists cannot pass)."""

    def __init__(self, persist: bool = False) -> None:
        from ignite.handlers import ProgressBar as _Bar

        self.bar = _Bar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=lambda out: {"loss": float(out["loss"].detach())})


#: handlers that only rank 0 needs (printing, tracking); everything else runs on every rank.
_RANK0_ONLY: tuple[str, ...] = ("StatsHandler", "ProgressBar", "MLFlowHandler", "TensorBoardStatsHandler")


def rank_handlers(handlers: Sequence[Any] | None) -> list[Any] | None:
    """``handlers`` for this rank: on ranks > 0 drop the printing / tracking handlers. Validation,
    LR schedule, early stop, resume and the savers stay (the savers write on rank 0 only)."""
    if handlers is None:
        return None
    if rank() == 0:
        return list(handlers)
    return [h for h in handlers if type(h).__name__ not in _RANK0_ONLY]

