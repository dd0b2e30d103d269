"""nnU-Net trainers of ``monai-liver peer nnunet``, found by nnU-Net through ``nnUNet_extTrainer``.

nnU-Net finds a trainer by its class name (``-tr NAME``): first in its own package
(``nnunetv2.training.nnUNetTrainer``), then, when the environment variable ``nnUNet_extTrainer``
names folders, by importing every module of those folders as a top-level module and asking each
for the name. ``monai_liver.peer.nnunet`` sets the variable to this folder (the folder is no Python
package on purpose) in the environment of the nnU-Net subprocesses only, so ``nnUNetv2_train`` and
``nnUNetv2_predict`` resolve the same name, and the user's shell is never touched.

One family of names: ``nnUNetTrainer_MonaiLiver_<E>ep_<I>it_<V>val`` is nnU-Net's default trainer
(``nnUNetTrainer``: network from the plans, Dice + CE loss with deep supervision, its augmentation,
SGD with the poly schedule, all unchanged) with ``E`` epochs of ``I`` training iterations and ``V``
validation iterations (nnU-Net's defaults: 1000 epochs of 250 and 50), and without the prediction of
the validation fold that ``nnUNetv2_train`` makes after training: ``monai-liver peer nnunet``
predicts the held-out fold with ``nnUNetv2_predict`` anyway, so it is made once (the trained model is
the same). The class is made on the first request (a module ``__getattr__``, PEP 562): every length
has a name, the name states the recipe, and nnU-Net's checkpoint, which stores the name, finds the
same class again when it predicts.

Imports nnunetv2 only (nnU-Net imports this file outside the monai_liver package).
"""

from __future__ import annotations

import re

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

PREFIX = "nnUNetTrainer_MonaiLiver_"
_NAME = re.compile(r"nnUNetTrainer_MonaiLiver_(\d+)ep_(\d+)it_(\d+)val")
_MADE: dict[str, type] = {}


def trainer_name(epochs: int, iterations: int = 250, val_iterations: int = 50) -> str:
    """The class name of nnU-Net's default trainer shortened to ``epochs`` x ``iterations``."""
    return f"{PREFIX}{int(epochs)}ep_{int(iterations)}it_{int(val_iterations)}val"


def _make(name: str, epochs: int, iterations: int, val_iterations: int) -> type:
    # nnU-Net records the constructor's arguments by name (inspect.signature of __init__), so the
    # signature is spelled out as in nnU-Net's own variants (nnUNetTrainer_5epochs and the like)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        nnUNetTrainer.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        self.num_iterations_per_epoch = iterations
        self.num_val_iterations_per_epoch = val_iterations

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("validation fold not predicted here: monai-liver peer nnunet predicts it with "
                               "nnUNetv2_predict")

    return type(name, (nnUNetTrainer,), {"__init__": __init__, "perform_actual_validation": perform_actual_validation,
                                         "__module__": __name__,
                                         "__doc__": f"nnUNetTrainer, {epochs} epochs x {iterations} iterations "
                                                    f"({val_iterations} validation iterations)"})


def __getattr__(name: str) -> type:
    match = _NAME.fullmatch(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    epochs, iterations, val_iterations = (int(g) for g in match.groups())
    if min(epochs, iterations, val_iterations) < 1:
        raise AttributeError(f"{name}: epochs and iterations must be at least 1")
    if name not in _MADE:
        _MADE[name] = _make(name, epochs, iterations, val_iterations)
    return _MADE[name]
