"""Validation metrics (ignite / MONAI handlers) and the per-slice metric functions of ``evaluate``.

Definitions (the README's "metrics" section states the same):

- lesion mask: predicted = pixels whose argmax is a lesion channel (label >= 2; for the joint
  network the union of the lesion types); ground truth = target label >= 2.
- ``val_dice``: lesion Dice per slice, averaged over slices (MONAI ``DiceMetric``,
  ``ignore_empty=True``: slices without a ground-truth lesion are left out).
- ``val_recall``: lesion pixel sensitivity per slice, averaged over slices with a lesion (MONAI
  ``ConfusionMatrixMetric(metric_name="sensitivity", compute_sample=True)``).
- ``val_acc``: slice-level accuracy of the predicted class (class head, or the joint network's
  vote of the lesion pixels) over slices with a known class; ``val_bacc``: balanced accuracy
  (mean per-class sensitivity over classes present), both from one ignite ``ConfusionMatrix``,
  which sums across DDP ranks.
- ``val_liver_dice`` (lits_pretrain only): liver Dice per slice, averaged; liver = label >= 1
  (the liver mask includes its lesions), predicted = argmax >= 1.
- key metric (picks ``model.pt``): ``val_acc`` (cls_baseline), ``val_dice`` (lits_pretrain,
  seg_baseline), ``val_dice_acc`` = mean of ``val_dice`` and ``val_acc`` (ynet, joint: both tasks count).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from monai_liver.engine import has_class, has_seg
from monai_liver.errors import LiverError
from monai_liver.networks.ops import channel_argmax
from monai_liver.strategies import get as get_strategy

__all__ = [
    "METRIC_NAMES",
    "key_metric_name",
    "metric_names",
    "lesion_from_logits",
    "lesion_from_target",
    "class_probabilities",
    "from_lesion",
    "from_class",
    "from_liver",
    "validation_metrics",
    "dice_score",
    "recall_score",
    "lesion_detection",
    "global_dice",
]

#: every validation metric name a bundle may log, in train_log.csv column order.
METRIC_NAMES: tuple[str, ...] = ("val_dice", "val_recall", "val_acc", "val_bacc", "val_liver_dice")

def _check(strategy: str) -> str:
    return get_strategy(strategy).name  # LiverError naming the known strategies


def key_metric_name(strategy: str) -> str:
    """Name of the metric that selects ``model.pt`` for ``strategy``."""
    return get_strategy(strategy).key_metric


def metric_names(strategy: str) -> tuple[str, ...]:
    """The validation metrics ``strategy`` reports (a subset of :data:`METRIC_NAMES`)."""
    _check(strategy)
    names: list[str] = []
    if has_seg(strategy):
        names += ["val_dice", "val_recall"]
    if has_class(strategy):
        names += ["val_acc", "val_bacc"]
    if strategy == "lits_pretrain":
        names += ["val_liver_dice"]
    return tuple(names)


# ---------------------------------------------------------------- tensors -> masks / classes


def lesion_from_logits(seg_logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, 1, H, W) bool predicted lesion (argmax >= 2)."""
    return channel_argmax(seg_logits, dim=1, keepdim=True) >= 2


def lesion_from_target(seg: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) label map -> (B, 1, H, W) bool ground-truth lesion (label >= 2)."""
    return seg >= 2


def class_probabilities(pred: dict) -> torch.Tensor | None:
    """Network dict -> (B, K) class probabilities (softmax of ``cls``; for the joint network ``cls``
    holds the vote logits, whose softmax is the vote fraction), or None without a class output."""
    logits = pred.get("cls") if isinstance(pred, dict) else None
    return None if logits is None else torch.softmax(logits.float(), dim=1)


def _batch_output(output: Any) -> tuple[dict, dict]:
    if isinstance(output, dict) and isinstance(output.get("pred"), dict) and isinstance(output.get("label"), dict):
        return output["pred"], output["label"]
    raise ValueError(
        "expected engine.state.output = {'pred': {'seg', 'cls'}, 'label': {'seg', 'cls'}} "
        "(engines must run with decollate=False)"
    )


def _two_channel(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool -> (B, 2, H, W) float one-hot (background, lesion)."""
    m = mask.float()
    return torch.cat([1.0 - m, m], dim=1)


def from_lesion(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``engine.state.output`` -> (y_pred, y): one-hot lesion masks (B, 2, H, W) for MONAI's
    ``MeanDice`` / ``ConfusionMatrix`` handlers."""
    pred, label = _batch_output(output)
    y_pred = lesion_from_logits(pred["seg"].detach())
    y = lesion_from_target(label["seg"])
    return _two_channel(y_pred), _two_channel(y)


def from_liver(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``engine.state.output`` -> (y_pred, y): one-hot liver masks (B, 2, H, W); liver = label >= 1
    (lesions lie in the liver), predicted = argmax >= 1."""
    pred, label = _batch_output(output)
    return _two_channel(channel_argmax(pred["seg"].detach(), dim=1, keepdim=True) >= 1), _two_channel(label["seg"] >= 1)


def from_class(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``engine.state.output`` -> (class scores (B, K), targets (B,) long) for ignite's
    ``ConfusionMatrix`` (which skips targets of -1, slices without a lesion type)."""
    pred, label = _batch_output(output)
    scores = class_probabilities(pred)
    if scores is None:
        raise ValueError("the network has no class output")
    return scores.detach(), label["cls"].reshape(-1).long()


# ---------------------------------------------------------------- metric objects for the evaluator


def _dice(output_transform=from_lesion):
    from monai.handlers import MeanDice

    return MeanDice(include_background=False, reduction="mean", output_transform=output_transform)


def _recall():
    from monai.handlers import ConfusionMatrix

    return ConfusionMatrix(
        include_background=False,
        metric_name="sensitivity",
        compute_sample=True,
        reduction="mean",
        output_transform=from_lesion,
    )


def _accuracy(cm):
    from ignite.metrics import MetricsLambda

    def acc(m: torch.Tensor) -> float:
        total = m.sum()
        return float(m.diag().sum() / total) if total > 0 else float("nan")

    return MetricsLambda(acc, cm)


def _balanced_accuracy(cm):
    from ignite.metrics import MetricsLambda

    def bacc(m: torch.Tensor) -> float:
        support = m.sum(dim=1)
        present = support > 0
        if not bool(present.any()):
            return float("nan")
        return float((m.diag()[present] / support[present]).mean())

    return MetricsLambda(bacc, cm)


def _metrics(strategy: str, n_classes: int) -> dict[str, Any]:
    from ignite.metrics import ConfusionMatrix as IgniteConfusionMatrix
    from ignite.metrics import MetricsLambda

    out: dict[str, Any] = {}
    if has_seg(strategy):
        out["val_dice"] = _dice()
        out["val_recall"] = _recall()
    if has_class(strategy):
        cm = IgniteConfusionMatrix(num_classes=int(n_classes), output_transform=from_class)
        out["val_acc"] = _accuracy(cm)
        out["val_bacc"] = _balanced_accuracy(cm)
    if strategy == "lits_pretrain":
        out["val_liver_dice"] = _dice(from_liver)
    if get_strategy(strategy).key_metric == "val_dice_acc":
        out["val_dice_acc"] = MetricsLambda(lambda d, a: (float(d) + float(a)) / 2.0, out["val_dice"], out["val_acc"])
    return out


def validation_metrics(strategy: str, n_classes: int = 3, key: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(key_val_metric, additional_metrics)`` dicts for ``SupervisedEvaluator``; ``key`` (e.g.
    ``val_liver_dice`` for the liver localiser) replaces the strategy's key metric when given.

    Built together so that ``val_dice_acc`` (ynet, joint) shares its ``val_dice`` and ``val_acc``
    metric objects with the additional metrics (ignite then updates each once per iteration).
    """
    metrics = _metrics(_check(strategy), n_classes)
    name = key or get_strategy(strategy).key_metric
    if name not in metrics:
        raise LiverError(f"key metric '{name}' is not computed for {strategy}; choose one of {', '.join(metrics)}")
    return {name: metrics.pop(name)}, metrics


# ---------------------------------------------------------------- per-slice numpy metrics (evaluate)


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Lesion Dice of one slice: 2|P & G| / (|P| + |G|); NaN when the slice has no ground-truth
    lesion (as MONAI's ``DiceMetric(ignore_empty=True)``)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    n_gt = int(g.sum())
    if n_gt == 0:
        return float("nan")
    return float(2.0 * np.logical_and(p, g).sum() / (p.sum() + n_gt))


def recall_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Lesion pixel sensitivity of one slice: |P & G| / |G|; NaN without a ground-truth lesion."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    n_gt = int(g.sum())
    if n_gt == 0:
        return float("nan")
    return float(np.logical_and(p, g).sum() / n_gt)


def lesion_detection(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Lesion-wise detection of one 2D slice: (ground-truth lesions, detected lesions).

    Lesions are the 8-connected components of the ground-truth mask (``scipy.ndimage.label``); a
    lesion counts as detected when any predicted lesion pixel overlaps it.
    """
    from scipy import ndimage

    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    structure = np.ones((3,) * g.ndim, dtype=bool)
    labels, n = ndimage.label(g, structure=structure)
    if n == 0:
        return 0, 0
    hit = np.unique(labels[p & g])
    return int(n), int(np.count_nonzero(hit))


def global_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice over all pixels of all slices together (N, H, W); NaN when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    denom = p.sum() + g.sum()
    return float(2.0 * np.logical_and(p, g).sum() / denom) if denom else float("nan")
