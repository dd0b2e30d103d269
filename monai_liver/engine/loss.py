"""``MultiTaskLoss``: DiceCE on the segmentation logits + cross-entropy on the class logits.

Per strategy (what the network is trained on):

================  ==========================================  ======================
strategy          segmentation term                           classification term
================  ==========================================  ======================
lits_pretrain     DiceCE over 3 channels (bg, liver, lesion)  --
cls_baseline      --                                          CE on the class head
seg_baseline      DiceCE over 3 channels                      --
ynet              DiceCE over 3 channels                      CE on the class head
joint             DiceCE over 2 + K channels (one per type)   -- (class = pixel vote)
================  ==========================================  ======================

``loss = seg_weight * DiceCE + cls_weight * CE``. The Dice term is a batch Dice by default
(``dice_batch``: intersections and unions summed over the batch before the ratio, MONAI
``DiceLoss(batch=True)``): a per-slice Dice gives every slice without a lesion of some type an
empty target in that channel, which for the joint network (one type per slice) pushes every type
channel towards zero and left it predicting no lesion at all after short runs. ``lits_pretrain`` (one
lesion channel, lesion slices oversampled) uses the per-slice Dice: on the quick experiment's held-out
LiTS-like volumes its lesion Dice per slice was 0.565 against 0.497 (per case 0.685 against 0.730),
and the LiTS-initialised rows it starts were as good or better (README). The default ``cls_weight = 0.5`` keeps the
classification branch of the Y-Net from dominating the shared encoder early on (CE of a K-class
head starts near log K = 1.1, DiceCE near 1.5-2); both weights are bundle config values.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn

from monai_liver.strategies import get as get_strategy

__all__ = ["MultiTaskLoss", "DEFAULT_CLS_WEIGHT"]

DEFAULT_CLS_WEIGHT = 0.5


class MultiTaskLoss(nn.Module):
    """Loss on a network dict ``{"seg": (B, C, H, W) logits | None, "cls": (B, K) logits | None}``
    against targets ``{"seg": (B, 1, H, W) long, "cls": (B,) long (-1 = no type)}``.

    Args:
        strategy: one of lits_pretrain, cls_baseline, seg_baseline, ynet, joint.
        seg_weight: weight of the DiceCE term (strategies with a segmentation output).
        cls_weight: weight of the CE term (ynet; cls_baseline uses 1). Slices with ``cls == -1`` are ignored;
            a batch without any typed slice contributes 0.
        lambda_dice, lambda_ce: weights inside MONAI's ``DiceCELoss``.
        dice_batch: Dice over the whole batch (True) or per slice, averaged (False).
    """

    def __init__(
        self,
        strategy: str,
        seg_weight: float = 1.0,
        cls_weight: float = DEFAULT_CLS_WEIGHT,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        dice_batch: bool = True,
    ) -> None:
        super().__init__()
        record = get_strategy(strategy)  # LiverError for an unknown one
        self.strategy = strategy
        self.use_seg = record.segments
        self.use_cls = record.class_head
        self.seg_weight = float(seg_weight)
        # cls_baseline has only the CE term: the loss is the CE itself
        self.cls_weight = float(cls_weight) if self.use_seg else 1.0
        self.dice_ce = (
            DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce, batch=dice_batch)
            if self.use_seg
            else None
        )
        self.ce = nn.CrossEntropyLoss(ignore_index=-1) if self.use_cls else None

    def forward(self, pred: dict, target: dict) -> torch.Tensor:
        terms = []
        if self.dice_ce is not None:
            if pred.get("seg") is None:
                raise ValueError(f"{self.strategy}: the network returned no 'seg' output")
            terms.append(self.seg_weight * self.dice_ce(pred["seg"], target["seg"]))
        if self.ce is not None:
            logits = pred.get("cls")
            if logits is None:
                raise ValueError(f"{self.strategy}: the network returned no 'cls' output")
            y = target["cls"].reshape(-1).long()
            if bool((y >= 0).any()):
                terms.append(self.cls_weight * self.ce(logits, y))
            else:  # CE over zero items is NaN; keep the graph connected with a zero
                terms.append(logits.sum() * 0.0)
        return terms[0] if len(terms) == 1 else terms[0] + terms[1]
