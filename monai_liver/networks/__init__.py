"""Networks: one FlexibleUNet family, four strategy heads, weight initialisation.

Importing this package is light; the network modules (torch, MONAI) load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClsBaseline",
    "JointNet",
    "LiverUNet",
    "SegBaseline",
    "TensorOutput",
    "YNet",
    "build_network",
    "build_unet",
    "initialise",
    "initialised",
    "joint_collapse",
    "joint_lesion_probability",
    "joint_vote",
    "joint_vote_logits",
    "lesion_mask",
    "seg_channels",
]

_WHERE = {
    "ClsBaseline": "cls_baseline",
    "JointNet": "joint",
    "LiverUNet": "backbone",
    "SegBaseline": "seg_baseline",
    "TensorOutput": "wrapper",
    "YNet": "ynet",
    "build_network": "factory",
    "build_unet": "backbone",
    "initialise": "init",
    "initialised": "init",
    "joint_collapse": "joint",
    "joint_lesion_probability": "joint",
    "joint_vote": "joint",
    "joint_vote_logits": "joint",
    "lesion_mask": "joint",
    "seg_channels": "factory",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
