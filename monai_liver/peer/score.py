"""Score a peer's prediction files with our metric code: the same files a bundle's evaluation writes.

A peer (e.g. nnU-Net) writes one label map per held-out slice (0 background, 1 liver, 2 lesion,
NIfTI of shape (H, W, 1)); the reference is the label file we gave it, cut by our transforms.
:func:`score_predictions` reads both, takes lesion = label >= 2 on each side (as
:func:`monai_liver.engine.metrics.lesion_from_logits` / ``lesion_from_target`` do for our networks)
and computes per slice :func:`~monai_liver.engine.metrics.dice_score`,
:func:`~monai_liver.engine.metrics.recall_score` and
:func:`~monai_liver.engine.metrics.lesion_detection`; the fold's figures come from
:func:`monai_liver.engine.evaluate.summarise`. Output, in ``out_dir`` (formats of
:mod:`monai_liver.engine.evaluate`): ``per_slice.csv``, ``metrics.json``, ``examples.npz``, so the
results table, its bootstrap intervals and the report treat the peer like any of our runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_liver.atomic import write_bytes, write_text
from monai_liver.errors import LiverError

__all__ = ["read_label_map", "score_predictions"]


def read_label_map(path: str | Path, what: str = "prediction") -> np.ndarray:
    """A 2D map stored as NIfTI (H, W) or (H, W, 1) -> (H, W) array; LiverError when missing or not 2D."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise LiverError(f"{path}: {what} file is missing")
    try:
        array = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # noqa: BLE001 - any reader failure is one line
        raise LiverError(f"{path}: not a readable NIfTI {what} ({e})") from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise LiverError(f"{path}: {what} of shape {array.shape} is not one 2D slice")
    return array


def score_predictions(
    cases: Sequence,
    images_dir: str | Path,
    labels_dir: str | Path,
    pred_dir: str | Path,
    out_dir: str | Path,
    classes: Sequence[str],
    strategy: str = "peer",
    file_ending: str = ".nii.gz",
) -> dict:
    """Score ``pred_dir/<case><file_ending>`` against ``labels_dir/<case><file_ending>`` for every
    case (objects with ``case, patient_id, source, slice, fold, true_cls``); writes the three
    evaluation files into ``out_dir`` and returns the metrics dict (``strategy`` recorded in it).
    LiverError when a prediction is missing or its shape differs from the reference."""
    import pandas as pd

    from monai_liver.engine.evaluate import nan_to_none, per_slice_columns, summarise
    from monai_liver.engine.metrics import dice_score, lesion_detection, recall_score

    images_dir, labels_dir, pred_dir, out_dir = Path(images_dir), Path(labels_dir), Path(pred_dir), Path(out_dir)
    rows, images, gts, preds = [], [], [], []
    for c in cases:
        gt_map = read_label_map(labels_dir / f"{c.case}{file_ending}", "reference label")
        pred_map = read_label_map(pred_dir / f"{c.case}{file_ending}", "prediction")
        if pred_map.shape != gt_map.shape:
            raise LiverError(f"{pred_dir / (c.case + file_ending)}: prediction of shape {pred_map.shape}, "
                             f"reference {gt_map.shape}")
        gt, pred = gt_map >= 2, pred_map >= 2
        n_gt, n_det = lesion_detection(pred, gt)
        row = {"patient_id": c.patient_id, "source": c.source, "slice": c.slice, "fold": c.fold,
               "true_cls": c.true_cls, "pred_cls": ""}
        row.update({f"prob_{k}": float("nan") for k in classes})
        row.update(dice=dice_score(pred, gt), recall=recall_score(pred, gt), gt_lesion_px=int(gt.sum()),
                   pred_lesion_px=int(pred.sum()), gt_lesions=n_gt, detected_lesions=n_det)
        rows.append(row)
        images.append(read_label_map(images_dir / f"{c.case}_0000{file_ending}", "image").astype(np.float32))
        gts.append(gt.astype(np.uint8))
        preds.append(pred.astype(np.uint8))
    if not rows:
        raise LiverError(f"{pred_dir}: no cases to score")
    stack = lambda a: np.stack(a) if len({x.shape for x in a}) == 1 else np.zeros((0, 0, 0), a[0].dtype)  # noqa: E731
    # the segmentation baseline's metrics: lesion masks, no class output
    metrics = summarise(rows, tuple(classes), "seg_baseline", pred_lesion=np.concatenate([p.ravel() for p in preds]),
                        gt_lesion=np.concatenate([g.ravel() for g in gts]))
    metrics["strategy"] = strategy
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "per_slice.csv", pd.DataFrame(rows, columns=per_slice_columns(classes)).to_csv(index=False))
    buf = io.BytesIO()
    np.savez_compressed(buf, image=stack(images), gt_lesion=stack(gts), pred_lesion=stack(preds))
    write_bytes(out_dir / "examples.npz", buf.getvalue())
    write_text(out_dir / "metrics.json", json.dumps(nan_to_none(metrics), indent=2) + "\n")
    return metrics
