"""``monai-liver peer <name>``: a peer method trained and scored on an experiment's own slices, folds
and metric code, so that its row in the results table compares like with like.

Peers (one module each; imported only when their subcommand runs):

- ``nnunet``: nnU-Net v2, 2d configuration (:mod:`monai_liver.peer.nnunet`; the ``peer`` extra).

Shared: :mod:`monai_liver.peer.score` scores a peer's prediction files with
:mod:`monai_liver.engine.metrics` into the files a bundle's evaluation writes. A peer writes
``<experiment>/peers/<name>/peer.json`` (title, init, settings) and ``fold<k>/{DONE, eval/}``, which
:mod:`monai_liver.experiment.aggregate` reads into the table.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["PEERS", "add_arguments", "main"]

#: peer name -> (module, one-line help)
PEERS: dict[str, tuple[str, str]] = {
    "nnunet": ("monai_liver.peer.nnunet",
               "nnU-Net v2 (2d) on an experiment's slices and folds, scored by our metric code, a row of its table"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="peer", metavar="PEER", required=True)
    for name, (module, help_text) in PEERS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.set_defaults(_peer_module=module)
        importlib.import_module(module).add_arguments(p)


def main(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._peer_module).main(args) or 0)
