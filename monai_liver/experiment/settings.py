"""The settings of ``monai-liver experiment``: one frozen record, the presets as instances of it.

:data:`QUICK` and :data:`FULL` hold the scale of the two presets (``--quick``, ``--full``);
:meth:`ExperimentSettings.but` gives a copy with the options a user set (``None``: keep the
preset's), and :meth:`ExperimentSettings.check` checks them all once, before anything is written.
:func:`experiment_record` is what ``<out>/experiment.json`` says; :data:`FIXED` names the settings
a resumed folder must keep.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_liver.constants import INITS, STRATEGIES, check_image_size
from monai_liver.errors import LiverError

__all__ = ["ExperimentSettings", "FIXED", "FULL", "PRESETS", "QUICK", "experiment_record", "resumed_record"]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything one ``monai-liver experiment`` call runs with: each of its flags sets the field of the
    same name (``--no-download`` / ``--no-tracking``: ``download`` / ``tracking``); ``num_workers``,
    ``lits_volumes``, ``lits_shape`` and ``val_interval`` come from the preset alone."""

    # -- scale: what a preset sets
    preset: str
    folds: int  #: patient-grouped folds (cross-validation)
    epochs: int  #: training epochs per run
    lits_epochs: int  #: epochs of the lits_pretrain bundle
    localiser_epochs: int  #: epochs of the liver localiser (lits_pretrain on whole slices)
    localiser_image_size: int  #: input size of the liver localiser
    image_size: int  #: network input size (pixels, square)
    batch_size: int
    max_slices: int  #: at most this many training slices per run (0: all)
    learning_rate: float  #: AdamW, cosine schedule over the epochs
    backbone: str
    num_workers: int  #: data loader workers of each bundle
    lits_volumes: int  #: LiTS-like phantoms made when no LiTS data is given
    lits_shape: tuple[int, int, int]  #: their shape
    isolation: str  #: "inprocess" (imports paid once) or "subprocess" (a fresh interpreter per bundle call)
    val_interval: int | None = None  #: validation every this many epochs (None: the bundle's default)
    lits_learning_rate: float | None = None  #: learning rate of the lits_pretrain bundle (None: ``learning_rate``)
    cls_epoch_scale: float = 1.0  #: the classification baseline's runs train for ``epochs`` times this
    # -- what runs, on which data
    strategies: tuple[str, ...] = STRATEGIES
    inits: tuple[str, ...] = INITS
    seed: int = 0
    lits: PathLike | None = None  #: LiTS folder
    lits_datalist: PathLike | None = None
    manifest: PathLike | None = None  #: lesion-type CSV manifest
    datalist: PathLike | None = None  #: lesion-type datalist
    phantoms: bool | None = None  #: the lesion-type data are phantoms (automatic when the experiment makes them)
    # -- ImageNet weights, MLflow, device, report
    imagenet_weights: PathLike | None = None
    download: bool = True  #: may download ImageNet weights
    tracking: bool = True  #: MLflow runs
    tracking_uri: str | None = None  #: default sqlite:///<out>/mlflow.db
    device: str | None = None  #: "cpu" or "cuda"; None: cuda when available
    n_boot: int | None = None  #: bootstrap resamples of the report (None: its default)
    # -- where the runs execute (see monai_liver.experiment.executors)
    executor: str = "local"
    ray_address: str = "auto"
    ray_cpus: float = 1.0
    ray_max_retries: int = 3
    runs_per_device: int = 1  #: runs at a time on each GPU (local: K on the CPU without one; Ray: num_gpus=1/K)

    @property
    def classifier_epochs(self) -> int:
        """The epochs the classification baseline's runs train for: ``epochs * cls_epoch_scale``, at least 1."""
        return max(1, round(int(self.epochs) * float(self.cls_epoch_scale)))

    @property
    def pretraining_learning_rate(self) -> float:
        """The learning rate the lits_pretrain run trains at: ``lits_learning_rate``, else ``learning_rate``."""
        return float(self.lits_learning_rate or self.learning_rate)

    def but(self, **given: Any) -> ExperimentSettings:
        """A copy with the ``given`` fields that are not ``None``; TypeError for an unknown field."""
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown experiment setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def check(self) -> ExperimentSettings:
        """The settings with strategies / inits as unique tuples; LiverError naming the first bad one."""
        strategies = tuple(dict.fromkeys(self.strategies or STRATEGIES))
        inits = tuple(dict.fromkeys(self.inits or INITS))
        _check_choice("strategy", strategies, STRATEGIES)
        _check_choice("init", inits, INITS)
        if self.lits and self.lits_datalist:
            raise LiverError("give --lits or --lits-datalist, not both")
        if self.manifest and self.datalist:
            raise LiverError("give --manifest or --datalist, not both")
        for p in (self.lits, self.lits_datalist, self.manifest, self.datalist, self.imagenet_weights):
            if p and not Path(p).exists():
                raise LiverError(f"{p}: file or folder not found")
        if self.isolation not in ("inprocess", "subprocess"):
            raise LiverError(f"isolation '{self.isolation}' is not known; choose inprocess or subprocess")
        if int(self.runs_per_device) < 1:
            raise LiverError(f"--runs-per-device must be at least 1 (got {self.runs_per_device})")
        if int(self.folds) < 2:
            raise LiverError(f"--folds must be at least 2 (got {self.folds})")
        for k in ("epochs", "lits_epochs", "localiser_epochs", "image_size", "batch_size"):
            if int(getattr(self, k)) < 1:
                raise LiverError(f"{_flag(k)} must be at least 1 (got {getattr(self, k)})")
        for k in ("learning_rate", "lits_learning_rate", "cls_epoch_scale"):
            if getattr(self, k) is not None and not float(getattr(self, k)) > 0:
                raise LiverError(f"{_flag(k)} must be above 0 (got {getattr(self, k)})")
        from monai_liver.networks.backbone import check_backbone

        check_backbone(str(self.backbone))
        for k in ("image_size", "localiser_image_size"):
            check_image_size(getattr(self, k), _flag(k))
        return dataclasses.replace(self, strategies=strategies, inits=inits)

    @classmethod
    def preset_named(cls, preset: str | None = "quick", **given: Any) -> ExperimentSettings:
        """Preset ``preset`` (None: quick) with the ``given`` options that are not ``None``."""
        preset = preset or "quick"
        if preset not in PRESETS:
            raise LiverError(f"preset '{preset}' is not known; choose one of {', '.join(PRESETS)}")
        return PRESETS[preset].but(**given)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(what: str, given: Sequence[str], known: Sequence[str]) -> None:
    for x in given:
        if x not in known:
            raise LiverError(f"{what} '{x}' is not known; choose from {', '.join(known)}")


#: ``--quick``: CPU, every strategy x {scratch, lits} x 2 folds (+ the liver localiser) in 5-14
#: minutes on 2 cores by the machine's speed (README), two runs at a time (phantoms). The LiTS pretraining and the localiser see 24
#: LiTS-like volumes, the pretraining for 5 epochs at lr 1e-2, the localiser for 3: more volumes for fewer
#: epochs generalised better at about the same time each time it was measured (README): 6 volumes x 16
#: epochs -> 12 x 7 raised the pretraining's 2D lesion Dice on twelve unseen volumes (seed 2) from 0.32 to
#: 0.38; 12 x 9 -> 24 x 5 raised it on three unseen sets (seeds 1-3) from 0.740 / 0.383 / 0.677 to 0.749 /
#: 0.407 / 0.704 per slice, 0.556 / 0.356 / 0.722 to 0.628 / 0.455 / 0.793 per volume, and the demo's
#: ``joint-lits`` package's lesion Dice over those 30 volumes from 0.583 to 0.628 (recall 37 -> 39 of 57).
#: It uses MONAI's BasicUNet with half the deep channels (basicunet-small, 16..128 features, instance
#: norm): on 2 CPU cores BasicUNet learnt about twice as much per second as EfficientNet-B0, and the
#: small one as much per epoch as the 16..256 one at twice the epochs per second
#: (benchmarks/bench_learning.py, README); batch 8 at lr 5e-3 with a cosine schedule learnt more per
#: second than batch 16 at 2e-3. The classification baseline trains for twice the epochs (``cls_epoch_scale``):
#: it learns from the typed slices through its encoder alone (a run of 40 epochs costs less than a segmenting
#: run of 20), and at 20 its training loss was still 0.45-0.74. Over twenty runs each (folds 0 / 1 x
#: seeds 0-9, one pass per slice) 40 epochs raised its mean held-out accuracy from LiTS from 0.549 to 0.588 and
#: from scratch from 0.553 to 0.575; with the flip-averaged evaluation 0.597 and 0.586 (README).
QUICK = ExperimentSettings(
    preset="quick", folds=2, epochs=20, lits_epochs=5, localiser_epochs=3, localiser_image_size=96, image_size=64,
    batch_size=8, max_slices=0, learning_rate=0.005, backbone="basicunet-small", num_workers=0, lits_volumes=24,
    lits_shape=(160, 160, 48), isolation="inprocess", val_interval=5, lits_learning_rate=0.01,
    cls_epoch_scale=2.0,
)
#: ``--full``: the paper's scale (all 332 slices, 5 folds, 256 px) for a GPU.
FULL = ExperimentSettings(
    preset="full", folds=5, epochs=100, lits_epochs=50, localiser_epochs=50, localiser_image_size=256, image_size=256,
    batch_size=16, max_slices=0, learning_rate=0.001, backbone="efficientnet-b0", num_workers=4, lits_volumes=20,
    lits_shape=(256, 256, 64), isolation="subprocess",
)
PRESETS: dict[str, ExperimentSettings] = {"quick": QUICK, "full": FULL}

#: settings that must not change when an experiment folder is resumed
FIXED = ("folds", "epochs", "cls_epochs", "lits_epochs", "localiser_epochs", "localiser_image_size", "image_size", "batch_size", "max_slices",
         "seed", "backbone", "data", "lits_data")


def experiment_record(s: ExperimentSettings, data, fingerprint: str | None, classes: Sequence[str]) -> dict:
    """What ``<out>/experiment.json`` says (``data``: the prepared :class:`~monai_liver.experiment.data.PreparedData`)."""
    return {
        "preset": s.preset, "folds": int(s.folds), "epochs": int(s.epochs), "cls_epochs": s.classifier_epochs,
        "lits_epochs": int(s.lits_epochs), "localiser_epochs": int(s.localiser_epochs),
        "localiser_image_size": int(s.localiser_image_size),
        "image_size": int(s.image_size),
        "batch_size": int(s.batch_size), "max_slices": int(s.max_slices or 0), "seed": int(s.seed),
        "backbone": str(s.backbone), "learning_rate": float(s.learning_rate),
        "lits_learning_rate": s.pretraining_learning_rate, "data": data.kind,
        "lits_data": data.lits_kind, "datalist": str(data.lesions), "lits_datalist": str(data.lits or ""),
        "strategies": list(s.strategies), "inits": list(s.inits), "device": s.device or "auto",
        "phantoms": bool(s.phantoms) or data.kind == "phantoms",
        "data_fingerprint": fingerprint,
        "classes": list(classes),
    }


def resumed_record(out: Path, exp: dict, old: dict | None) -> dict:
    """``exp`` for a folder whose ``experiment.json`` said ``old``: LiverError when a :data:`FIXED`
    setting changed; runs may be added (more strategies / inits), and the table keeps the old ones."""
    if not old:
        return exp
    changed = [k for k in FIXED if k in old and old[k] != exp[k]]
    if changed:
        k = changed[0]
        raise LiverError(f"{out}: this folder was started with {k}={old[k]!r}, now {exp[k]!r}; "
                         "use the same options to resume, or another --out")
    return exp | {"strategies": list(dict.fromkeys(old.get("strategies", []) + exp["strategies"])),
                  "inits": list(dict.fromkeys(old.get("inits", []) + exp["inits"])),
                  "phantoms": exp["phantoms"] or bool(old.get("phantoms"))}
