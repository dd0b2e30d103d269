"""Held-out evaluation files: ``eval/per_slice.csv``, ``eval/metrics.json``, ``eval/examples.npz``.

:class:`EvalWriter` is attached to the evaluator of a bundle's ``evaluate.json``; it records every
slice the evaluator sees and, when the evaluator completes, writes (formats: docs/architecture.md,
"Running a bundle"):

- ``per_slice.csv``: ``patient_id, source, slice, fold, true_cls, pred_cls, prob_<class>..., dice,
  recall, gt_lesion_px, pred_lesion_px, gt_lesions, detected_lesions`` (class names; empty /
  NaN where a value does not apply, e.g. Dice for cls_baseline, classes for seg_baseline).
- ``metrics.json``: ``acc, bacc, dice, global_dice, recall, detection_recall, n_slices,
  n_patients, confusion, sensitivity, specificity`` (null where the strategy has no such output),
  plus ``strategy``, ``classes`` and ``n_classified`` (slices with a known class).
- ``examples.npz``: ``image (N, H, W)`` float in [0, 1], ``gt_lesion``, ``pred_lesion`` (N, H, W)
  uint8, in ``per_slice.csv`` row order (``pred_lesion`` is all zeros for cls_baseline).

Definitions: see :mod:`monai_liver.engine.metrics`. ``dice`` and ``recall`` are per-slice values
averaged over slices with a ground-truth lesion; ``global_dice`` pools all pixels;
``detection_recall`` pools lesions (8-connected components) over slices; the class metrics use
slices with a known class only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_liver.engine import has_class, has_seg
from monai_liver.engine.metrics import (
    class_probabilities,
    dice_score,
    global_dice,
    lesion_detection,
    lesion_from_logits,
    lesion_from_target,
    recall_score,
)

__all__ = ["EvalWriter", "nan_to_none", "summarise", "per_slice_columns"]

logger = logging.getLogger("monai_liver.engine")

_META = ("patient_id", "source", "slice", "fold")


def per_slice_columns(class_names: Sequence[str]) -> list[str]:
    """Column order of ``per_slice.csv``."""
    return [
        *_META,
        "true_cls",
        "pred_cls",
        *[f"prob_{c}" for c in class_names],
        "dice",
        "recall",
        "gt_lesion_px",
        "pred_lesion_px",
        "gt_lesions",
        "detected_lesions",
    ]


def nan_to_none(x: Any) -> Any:
    """NaN / inf -> None in a nest of dicts and lists (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x


def _nanmean(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def summarise(rows: Sequence[dict], class_names: Sequence[str], strategy: str, pred_lesion=None, gt_lesion=None) -> dict:
    """``metrics.json`` content from the per-slice rows (and the stacked masks, for global Dice)."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    k = len(class_names)
    out: dict[str, Any] = {
        "strategy": strategy,
        "classes": list(class_names),
        "n_slices": len(rows),
        "n_patients": len({str(r["patient_id"]) for r in rows}),
    }
    # classification
    idx = {c: i for i, c in enumerate(class_names)}
    typed = [r for r in rows if r["true_cls"] in idx and r["pred_cls"] in idx]
    out["n_classified"] = len(typed)
    if has_class(strategy) and typed:
        y = np.array([idx[r["true_cls"]] for r in typed])
        p = np.array([idx[r["pred_cls"]] for r in typed])
        cm = confusion_matrix(y, p, labels=list(range(k)))
        total = cm.sum()
        sens, spec = {}, {}
        for i, c in enumerate(class_names):
            tp, fn = cm[i, i], cm[i].sum() - cm[i, i]
            fp = cm[:, i].sum() - cm[i, i]
            tn = total - tp - fn - fp
            sens[c] = float(tp / (tp + fn)) if tp + fn else float("nan")
            spec[c] = float(tn / (tn + fp)) if tn + fp else float("nan")
        out.update(
            acc=float(accuracy_score(y, p)),
            bacc=_nanmean(list(sens.values())),  # = sklearn balanced_accuracy_score over classes present
            confusion=cm.astype(int).tolist(),
            sensitivity=sens,
            specificity=spec,
        )
    else:
        out.update(acc=float("nan"), bacc=float("nan"), confusion=None, sensitivity=None, specificity=None)
    # segmentation
    if has_seg(strategy):
        n_gt = sum(int(r["gt_lesions"]) for r in rows)
        n_det = sum(int(r["detected_lesions"]) for r in rows)
        out.update(
            dice=_nanmean([r["dice"] for r in rows]),
            global_dice=global_dice(pred_lesion, gt_lesion) if pred_lesion is not None else float("nan"),
            recall=_nanmean([r["recall"] for r in rows]),
            detection_recall=float(n_det / n_gt) if n_gt else float("nan"),
        )
    else:
        out.update(dice=float("nan"), global_dice=float("nan"), recall=float("nan"), detection_recall=float("nan"))
    return out


def _as_list(value: Any, n: int) -> list:
    if value is None:
        return [""] * n
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    elif not isinstance(value, (list, tuple)):
        value = [value] * n
    return list(value)[:n] + [""] * max(0, n - len(value))


class EvalWriter:
    """Attach to an evaluator that runs with ``decollate=False`` over the held-out slices; writes
    the three evaluation files into ``out_dir`` when it completes (rank 0)."""

    def __init__(self, out_dir: str | Path, strategy: str, class_names: Sequence[str]) -> None:
        self.out_dir = Path(out_dir)
        self.strategy = strategy
        self.class_names = tuple(class_names)
        self.reset()

    def reset(self, engine: Engine | None = None) -> None:
        self.rows: list[dict] = []
        self.images: list[np.ndarray] = []
        self.gt: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        pred, label, image = out["pred"], out["label"], out["image"]
        n = image.shape[0]
        images = image.detach().float().cpu().numpy()[:, 0]
        gt = lesion_from_target(label["seg"]).cpu().numpy()[:, 0]
        segmented = has_seg(self.strategy) and pred.get("seg") is not None
        pl = lesion_from_logits(pred["seg"].detach()).cpu().numpy()[:, 0] if segmented else np.zeros_like(gt)
        probs = class_probabilities(pred) if has_class(self.strategy) else None
        probs = probs.cpu().numpy() if probs is not None else None
        true_cls = label["cls"].reshape(-1).cpu().tolist()
        meta = {key: _as_list(batch.get(key) if isinstance(batch, dict) else None, n) for key in _META}
        for i in range(n):
            row: dict[str, Any] = {key: meta[key][i] for key in _META}
            t = int(true_cls[i])
            row["true_cls"] = self.class_names[t] if 0 <= t < len(self.class_names) else ""
            row["pred_cls"] = self.class_names[int(probs[i].argmax())] if probs is not None else ""
            for j, c in enumerate(self.class_names):
                row[f"prob_{c}"] = float(probs[i, j]) if probs is not None else float("nan")
            g = gt[i].astype(bool)
            row["gt_lesion_px"] = int(g.sum())
            if segmented:
                p = pl[i].astype(bool)
                n_gt, n_det = lesion_detection(p, g)
                row.update(
                    dice=dice_score(p, g),
                    recall=recall_score(p, g),
                    pred_lesion_px=int(p.sum()),
                    gt_lesions=n_gt,
                    detected_lesions=n_det,
                )
            else:
                row.update(
                    dice=float("nan"),
                    recall=float("nan"),
                    pred_lesion_px=float("nan"),
                    gt_lesions=lesion_detection(g, g)[0],
                    detected_lesions=float("nan"),
                )
            self.rows.append(row)
        self.images.append(images.astype(np.float32))
        self.gt.append(gt.astype(np.uint8))
        self.pred.append(pl.astype(np.uint8))

    def completed(self, engine: Engine) -> None:
        from monai_liver.engine.handlers import rank

        if rank() != 0:
            return
        self.write()

    def write(self) -> dict:
        """Write the three files; returns the metrics dict."""
        import pandas as pd

        self.out_dir.mkdir(parents=True, exist_ok=True)
        cols = per_slice_columns(self.class_names)
        pd.DataFrame(self.rows, columns=cols).to_csv(self.out_dir / "per_slice.csv", index=False)
        empty = np.zeros((0, 0, 0), np.uint8)
        image = np.concatenate(self.images) if self.images else empty.astype(np.float32)
        gt = np.concatenate(self.gt) if self.gt else empty
        pred = np.concatenate(self.pred) if self.pred else empty
        np.savez_compressed(self.out_dir / "examples.npz", image=image, gt_lesion=gt, pred_lesion=pred)
        metrics = summarise(self.rows, self.class_names, self.strategy, pred_lesion=pred, gt_lesion=gt)
        (self.out_dir / "metrics.json").write_text(json.dumps(nan_to_none(metrics), indent=2) + "\n")
        shown = {k: metrics[k] for k in ("acc", "bacc", "dice", "recall", "detection_recall") if not math.isnan(metrics[k])}
        logger.info(f"evaluation of {metrics['n_slices']} slices written to {self.out_dir}: {shown}")
        return metrics
