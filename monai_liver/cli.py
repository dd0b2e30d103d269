"""The ``monai-liver`` command: one subcommand per pipeline stage.

Each stage lives in its own module, which defines ``add_arguments(parser)`` and ``main(args)``;
modules are imported only when their subcommand runs, so ``--help`` stays fast for the light ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from monai_liver import __version__
from monai_liver.errors import LiverError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "phantoms": ("monai_liver.data.phantoms", "generate CT phantoms (LiTS-like volumes, lesion-type slices)"),
    "datalist": ("monai_liver.data.datalist", "write a MONAI datalist with patient-grouped folds"),
    "validate": ("monai_liver.data.validation", "check a dataset before training"),
    "experiment": ("monai_liver.experiment.cli", "run every strategy x init x fold and build the table"),
    "report": ("monai_liver.experiment.report", "rebuild the results table and report from finished runs"),
    "peer": ("monai_liver.peer", "train and score a peer method (nnU-Net v2) on an experiment's folds: a row of its table"),
    "infer": ("monai_liver.inference.infer", "segment and classify lesions on new CT (NIfTI / DICOM)"),
    "export": ("monai_liver.inference.export", "export a trained bundle to TorchScript"),
    "label-server": ("monai_liver.label_app.server", "start the MONAI Label server for annotators"),
    "demo": ("monai_liver.demo", "phantoms -> validation -> datalists -> quick experiment -> report"),
}


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev off: argparse would take a mistyped ``--image`` for ``--image-size``
    parser = argparse.ArgumentParser(prog="monai-liver", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"monai-liver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:  # a stage not installed (e.g. the label extra)
            p.set_defaults(_missing=str(e))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    if getattr(args, "_missing", None):
        print(f"error: '{args.command}' is not available: {args._missing}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except LiverError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
