"""The MONAI Label app: the joint bundle for annotators (infer, fine-tune, pick the next study).

Started by ``monai-liver label-server`` (see :mod:`monai_liver.label_app.server`), which writes an
app folder whose ``main.py`` imports :class:`LiverLabelApp`; ``monailabel start_server --app <that
folder>`` works the same way.

Tasks:

- ``/infer/joint``: :class:`~monai_liver.label_app.infer.JointInferTask`: label map 0 background,
  1 liver, 2 + k lesion type k (names from the bundle's ``channel_def``), in the study's geometry,
  with the study's lesion class and probability in the JSON.
- ``/train/joint``: :class:`~monai_liver.label_app.train.JointTrainTask`: fine-tunes the served
  model on the studies with a final label (``<studies>/labels/final/<id>.nii.gz``, same label
  values as the infer output), then serves the new model.
- ``/activelearning/random``: MONAI Label's ``Random`` strategy over the unlabelled studies (weighted
  towards studies not served recently).

App settings (``--conf KEY VALUE``): ``bundle`` (the working bundle folder; the server sets it),
``epochs``, ``image_size``, ``batch_size``, ``val_split``, ``tracking`` (``mlflow``), ``tracking_uri``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict

from monai_liver.label_app import compat

compat.install()  # before MONAI Label: see compat

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random

import monai_liver
from monai_liver.label_app.infer import JointInferTask
from monai_liver.label_app.server import MODEL_NAME
from monai_liver.label_app.train import JointTrainTask

logger = logging.getLogger(__name__)

__all__ = ["LiverLabelApp", "MODEL_NAME"]


class LiverLabelApp(MONAILabelApp):
    """MONAI Label app serving the joint liver-lesion bundle (see the module doc)."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundle = Path(conf.get("bundle") or os.path.join(app_dir, "model", MODEL_NAME))
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_liver",
            description="Joint liver-lesion segmentation and lesion-type classification on CT (monai_liver)",
            version=monai_liver.__version__,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        return {MODEL_NAME: JointInferTask(self.bundle, self.conf)}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {MODEL_NAME: JointTrainTask(self.bundle, self.conf)}

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random()}
