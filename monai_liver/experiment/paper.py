"""The numbers of Heker & Greenspan (MIDL 2020, arXiv 2004.12352), as data.

Only what the paper reports: classification accuracy (Acc), lesion Dice and lesion recall per
training strategy and weight initialisation. Figures the paper does not give are ``None``. The
paper does not state its metric definitions or folds, so these numbers are shown beside ours for
orientation, not as a like-for-like comparison.
"""

from __future__ import annotations

from monai_liver.strategies import get as get_strategy
from monai_liver.strategies import paper_strategies

__all__ = ["PAPER", "PAPER_REF", "STRATEGY_TITLES", "INIT_TITLES", "paper_value"]

PAPER_REF = "Heker & Greenspan, MIDL 2020 (arXiv 2004.12352)"

#: display names, in the paper's row order
STRATEGY_TITLES: dict[str, str] = {s: get_strategy(s).title for s in paper_strategies()}
INIT_TITLES: dict[str, str] = {"scratch": "scratch", "imagenet": "ImageNet", "lits": "LiTS"}

#: (strategy, init) -> {"acc", "dice", "recall"}: the paper's table, None where it gives no figure
PAPER: dict[tuple[str, str], dict[str, float | None]] = {
    ("cls_baseline", "scratch"): {"acc": 0.55, "dice": None, "recall": None},
    ("cls_baseline", "imagenet"): {"acc": 0.63, "dice": None, "recall": None},
    ("cls_baseline", "lits"): {"acc": 0.76, "dice": None, "recall": None},
    ("seg_baseline", "scratch"): {"acc": None, "dice": 0.59, "recall": None},
    ("seg_baseline", "imagenet"): {"acc": None, "dice": 0.63, "recall": None},
    ("seg_baseline", "lits"): {"acc": None, "dice": 0.71, "recall": 0.72},
    ("ynet", "scratch"): {"acc": 0.43, "dice": 0.49, "recall": None},
    ("ynet", "imagenet"): {"acc": 0.68, "dice": 0.67, "recall": None},
    ("ynet", "lits"): {"acc": 0.79, "dice": 0.71, "recall": 0.68},
    ("joint", "scratch"): {"acc": 0.63, "dice": 0.57, "recall": None},
    ("joint", "imagenet"): {"acc": 0.74, "dice": 0.64, "recall": None},
    ("joint", "lits"): {"acc": 0.86, "dice": 0.71, "recall": 0.76},
}


def paper_value(strategy: str, init: str, metric: str) -> float | None:
    """The paper's figure for ``metric`` ("acc" | "dice" | "recall"), or None if it reports none."""
    return PAPER.get((strategy, init), {}).get(metric)
