"""MONAI Label train task: fine-tune the served joint model on the studies annotators have labelled.

Label files (``<studies>/labels/final/<id>.nii.gz``, what MONAI Label's datastore hands to training)
carry the lesion type as label values, the same values the infer task returns:
``0`` background, ``1`` liver, ``2 + k`` lesion of type k (k in the bundle's class order, e.g.
2 cyst, 3 hemangioma, 4 metastasis). MONAI Label passes training only ``image`` and ``label``
files, so the type has to live in the mask.

Each labelled study becomes manifest-style items of the joint bundle's datalist (one per axial slice
with lesion; class = the most frequent lesion type on the slice), with the liver mask and a
class-id lesion mask (1..K) written next to the datalist. Studies are the patients of a
patient-grouped fold split; fold 0 is held out for validation when there are two studies or more
(``val_split`` sets the number of folds), else the bundle trains on all (fold -1). The bundle then
runs (``monai.bundle.run``, as ``python -m monai.bundle run`` would) with a ``CheckpointLoader``
that starts from the served ``models/model.pt`` (strict), and its new ``model.pt`` replaces the
served one atomically (the infer task reloads it on its next request).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np

from monai_liver.label_app import compat

compat.install()  # before MONAI Label: see compat

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from monai_liver.errors import LiverError

logger = logging.getLogger(__name__)

__all__ = ["JointTrainTask", "labelled_studies_to_datalist"]


def labelled_studies_to_datalist(
    studies: Sequence[Dict[str, str]],
    out_dir: str | os.PathLike,
    class_names: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[Path, int]:
    """Write a joint-bundle datalist for MONAI Label's ``[{"image": ..., "label": ...}]`` pairs.

    Returns (datalist path, held-out fold: 0, or -1 when there are fewer than two usable studies).
    Raises LiverError when a label has a value above ``1 + len(class_names)`` or a shape other than
    its image's, or when no study has a lesion.
    """
    import nibabel as nib

    from monai_liver.data.datalist import assign_folds, write_datalist

    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    k = len(class_names)
    items: list[dict] = []
    for study in studies:
        image, label = Path(study["image"]), Path(study["label"])
        sid = image.name.split(".")[0]
        img = nib.load(str(image))
        lab_img = nib.load(str(label))
        lab = np.asarray(lab_img.dataobj)
        if lab.shape[:3] != img.shape[:3]:
            raise LiverError(f"{label}: label shape {lab.shape} differs from its image's {img.shape}")
        lab = np.rint(lab).astype(np.int32)
        if lab.min() < 0 or lab.max() > 1 + k:
            raise LiverError(
                f"{label}: label value {int(lab.max() if lab.max() > 1 + k else lab.min())} is not allowed "
                f"(0 background, 1 liver, 2..{1 + k} lesion types {', '.join(class_names)})"
            )
        liver = nib.Nifti1Image((lab >= 1).astype(np.uint8), img.affine)
        lesion = nib.Nifti1Image(np.where(lab >= 2, lab - 1, 0).astype(np.uint8), img.affine)
        liver_path, lesion_path = out_dir / "masks" / f"{sid}_liver.nii.gz", out_dir / "masks" / f"{sid}_lesion.nii.gz"
        nib.save(liver, str(liver_path))
        nib.save(lesion, str(lesion_path))
        # axial slice index in RAS, the convention of the manifest's "slice" column
        ras = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(lab, img.affine)).dataobj)
        if ras.ndim == 2:
            ras = ras[..., None]
        for z in range(ras.shape[2]):
            counts = np.bincount(ras[:, :, z].ravel(), minlength=2 + k)[2 : 2 + k]
            if counts.sum() == 0:
                continue
            items.append(
                {
                    "image": str(image),
                    "liver": str(liver_path),
                    "lesion": str(lesion_path),
                    "label": class_names[int(np.argmax(counts))],
                    "slice": int(z),
                    "patient_id": sid,
                }
            )
    if not items:
        raise LiverError("datastore: no labelled study has a lesion (label values 2..; see the app's README)")
    patients = sorted({it["patient_id"] for it in items})
    if len(patients) >= 2:
        items = assign_folds(items, n_folds=min(max(2, n_folds), len(patients)), seed=seed, source="datastore")
        fold = 0
    else:
        items = [{**it, "fold": 0} for it in items]
        fold = -1
    datalist = {
        "source": "manifest",
        "dataset_dir": str(out_dir.resolve()),
        "n_folds": max(it["fold"] for it in items) + 1,
        "seed": seed,
        "classes": list(class_names),
        "training": items,
    }
    path = write_datalist(datalist, out_dir / "datalist.json")
    logger.info(
        "datalist %s: %d lesion slices of %d studies; classes %s; held-out fold %d",
        path, len(items), len(patients), dict(Counter(it["label"] for it in items)), fold,
    )
    return Path(path), fold


class JointTrainTask(BundleTrainTask):
    """Fine-tunes the app's working joint bundle (``<bundle>/models/model.pt``) on the datastore."""

    def __init__(self, bundle: str | os.PathLike, conf: Dict[str, str] | None = None) -> None:
        super().__init__(str(bundle), dict(conf or {}), enable_tracking=False, load_strict=True)
        self.bundle = Path(bundle)

    def config(self) -> Dict[str, Any]:
        c = super().config()
        for key in ("multi_gpu", "gpus", "model_filename", "run_id"):
            c.pop(key, None)
        c.update(
            {
                "max_epochs": int(self.conf.get("epochs", 20)),
                "image_size": int(self.conf.get("image_size", 0)) or None,
                "batch_size": int(self.conf.get("batch_size", 8)),
                "val_split": float(self.conf.get("val_split", 0.2)),
                "tracking": [self.conf["tracking"]] if self.conf.get("tracking") else c.get("tracking"),
                "tracking_uri": self.conf.get("tracking_uri", c.get("tracking_uri", "")),
            }
        )
        return c

    def stats(self) -> Dict[str, Any]:
        last = self.bundle / "models" / "train_stats.json"
        return json.loads(last.read_text()) if last.is_file() else {}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        import monai.bundle
        import torch

        from monai_liver.label_app.infer import bundle_labels

        req = {**self.config(), **request}
        _, class_names = bundle_labels(self.bundle)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = self.bundle / "train" / stamp
        val_split = float(req.get("val_split") or 0.2)
        n_folds = max(2, int(round(1.0 / val_split))) if val_split > 0 else 2
        datalist, fold = labelled_studies_to_datalist(datastore.datalist(), run_dir / "data", class_names, n_folds)
        if val_split <= 0:
            fold = -1

        current = self.bundle / "models" / "model.pt"
        handlers = list(self.bundle_config.get("train#handlers", []))
        if current.is_file() and str(req.get("pretrained", True)).lower() != "false":
            # MONAI's CheckpointLoader uses torch.load(weights_only=False): fine for the model this app wrote
            handlers.insert(
                0,
                {
                    "_target_": "CheckpointLoader",
                    "load_path": str(current),
                    "load_dict": {"model": "@network"},
                    "strict": True,
                },
            )
        device = req.get("device")
        device = device[0] if isinstance(device, list) else device
        device = "cuda:0" if device and str(device).startswith("cuda") and torch.cuda.is_available() else "cpu"
        overrides: Dict[str, Any] = {
            "bundle_root": str(self.bundle),
            "dataset_dir": str(run_dir / "data"),
            "datalist": str(datalist),
            "fold": int(fold),
            "init": "scratch",
            "epochs": int(req.get("max_epochs", 20)),
            "batch_size": int(req.get("batch_size", 8)),
            "output_dir": str(run_dir),
            "cache_dir": str(run_dir / "cache"),
            "device": f"$torch.device('{device}')",
            "train#handlers": handlers,
        }
        if req.get("image_size"):
            overrides["image_size"] = int(req["image_size"])
        tracking = req.get("tracking")
        tracking = tracking[0] if isinstance(tracking, list) else tracking
        kwargs: Dict[str, Any] = {}
        if tracking and str(tracking).lower() == "mlflow":
            kwargs["tracking"] = "mlflow"
            if req.get("tracking_uri"):
                overrides["tracking_uri"] = req["tracking_uri"]
            overrides["experiment_name"] = req.get("tracking_experiment_name") or "monai_label_joint"
            overrides["run_name"] = f"label-{stamp}"
        logger.info("fine-tuning %s from %s: %s", self.bundle, current if current.is_file() else "scratch", overrides)
        start = time.time()
        monai.bundle.run(
            run_id="run",
            meta_file=str(self.bundle / "configs" / "metadata.json"),
            config_file=str(self.bundle / "configs" / "train.json"),
            logging_file=str(self.bundle / "configs" / "logging.conf") if (self.bundle / "configs" / "logging.conf").is_file() else None,
            **kwargs,
            **overrides,
        )
        new = run_dir / "model.pt"
        if not new.is_file():
            raise LiverError(f"{run_dir}: training finished without writing model.pt")
        tmp = self.bundle / "models" / ".model.pt.tmp"
        shutil.copyfile(new, tmp)
        os.replace(tmp, current)  # the infer task reloads the model when its mtime changes
        stats = {
            "run_dir": str(run_dir),
            "epochs": overrides["epochs"],
            "held_out_fold": fold,
            "total_time": round(time.time() - start, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        log = run_dir / "train_log.csv"
        if log.is_file():
            stats["train_log"] = log.read_text().splitlines()[-1]
        (self.bundle / "models" / "train_stats.json").write_text(json.dumps(stats, indent=2))
        return stats
