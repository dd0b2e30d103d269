"""``monai-liver experiment``: its flags (one per field of
:class:`~monai_liver.experiment.settings.ExperimentSettings`) and :func:`main`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from monai_liver.constants import INITS, STRATEGIES
from monai_liver.errors import LiverError
from monai_liver.experiment.settings import FULL, QUICK, ExperimentSettings

__all__ = ["add_arguments", "main", "settings_from_args"]


def _scale(preset: ExperimentSettings, names: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {getattr(preset, k)}" for k in names)


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
                   help="CPU preset (default): " + _scale(QUICK, ("folds", "epochs", "image_size", "max_slices")))
    m.add_argument("--full", dest="preset", action="store_const", const="full",
                   help="paper scale for a GPU: " + _scale(FULL, ("folds", "epochs", "image_size")) + ", all slices")
    p.add_argument("--folds", type=int, help="patient-grouped folds (cross-validation)")
    p.add_argument("--epochs", type=int, help="training epochs per run")
    p.add_argument("--cls-epoch-scale", type=float, help="the classification baseline's runs train for --epochs times this (--quick: 2, --full: 1)")
    p.add_argument("--lits-epochs", type=int, help="epochs of the lits_pretrain bundle")
    p.add_argument("--lits-learning-rate", type=float, help="learning rate of the lits_pretrain bundle (default: --learning-rate)")
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
                   help="local: one run after another in this process (default; see --runs-per-device); ray: each run a Ray task on a cluster "
                        "(pip install -e '.[cluster]'; --out on a filesystem every node mounts)")
    r.add_argument("--runs-per-device", type=int, default=1, metavar="K",
                   help="runs at a time on each visible GPU (one worker process per run slot, CUDA_VISIBLE_DEVICES set "
                        "to its GPU; several GPUs: one run each even with K=1); without a GPU, K runs on the CPU with "
                        "the threads split between them; with --executor ray, each run takes 1/K of a GPU (default 1)")
    r.add_argument("--ray-address", default="auto",
                   help="Ray cluster: auto (the cluster this machine belongs to, else a new local one; default), "
                        "local (always a new local one), or an address such as 10.0.0.1:6379")
    r.add_argument("--ray-cpus", type=float, default=1.0,
                   help="CPUs per run on a cluster without GPUs (on a GPU cluster each run takes one GPU and these CPUs)")
    r.add_argument("--ray-max-retries", type=int, default=3,
                   help="times Ray reruns a run whose worker or node died (it resumes from checkpoint_last.pt)")
    parser.set_defaults(preset=None)


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    """The settings the parsed flags ask for: each flag sets its field (``--no-download`` and
    ``--no-tracking`` the negated ones), flags left out keep the preset's value."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentSettings)
             if f.name != "preset" and hasattr(args, f.name)}
    return ExperimentSettings.preset_named(args.preset, download=not args.no_download, tracking=not args.no_tracking,
                                           **given)


def main(args: argparse.Namespace) -> int:
    from monai_liver.experiment.runner import run_settings

    if args.device == "cuda" and args.executor == "local":  # with Ray the cluster's GPUs decide
        import torch

        if not torch.cuda.is_available():
            raise LiverError("--device cuda: no CUDA device is available (use --device cpu)")
    res = run_settings(args.out, settings_from_args(args))
    print()
    print(res.table_markdown)
    print(f"report: {res.report_html}")
    return 0
