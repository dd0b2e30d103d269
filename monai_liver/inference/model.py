"""Load a trained model for inference: a model package, a checkpoint or a TorchScript export.

What the model needs (strategy, backbone, image size, classes, HU window, ROI margin) comes from
the settings it carries (:mod:`monai_liver.model_package`), so a model trained at 64 px runs at
64 px without a flag. A bundle's ``configs/inference.json`` is read only for a model without
settings (older checkpoints). A flag that contradicts the model (``image_size``, ``class_names``,
a bundle of another strategy) is one LiverError, never a silent change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_liver.constants import (DEFAULT_CLASSES, DEFAULT_IMAGE_SIZE, HU_WINDOW, ROI_MARGIN, bundles_dir, check_image_size,
                                   check_window)
from monai_liver.errors import LiverError
from monai_liver.strategies import get as get_strategy
from monai_liver.strategies import names as strategy_names
from monai_liver.model_package import check_flags, is_torchscript, package_files

__all__ = ["LoadedModel", "load_model", "load_bundle_model"]



@dataclass
class LoadedModel:
    """A trained network ready for inference. ``net(x)``: ``(B, 1, S, S)`` in [0, 1] ->
    ``{"seg": (B, C, S, S) logits, "cls": (B, K) logits or None}``."""

    net: Any
    strategy: str
    class_names: tuple[str, ...]
    image_size: int
    window: tuple[float, float] = HU_WINDOW
    device: str = "cpu"
    bundle: str = ""
    model_path: str = ""
    torchscript: bool = False
    roi_margin: int = ROI_MARGIN
    settings: dict = field(default_factory=dict)


class _DictOutput:
    """A TorchScript export (``TensorOutput``: seg logits) seen as a strategy network (dict output)."""

    def __init__(self, module, strategy: str):
        self.module, self.strategy = module, strategy

    def __call__(self, x):
        from monai_liver.networks.joint import joint_vote_logits

        seg = self.module(x)
        return {"seg": seg, "cls": joint_vote_logits(seg) if self.strategy == "joint" else None}


def _load_torchscript(path: Path):
    """(module on the CPU, in eval mode; the settings embedded by ``monai-liver export``: the
    ``settings`` of its inference.json, ``{}`` for an export of a checkpoint without them)."""
    import torch

    extra = {"inference.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        cfg = json.loads(extra["inference.json"] or "{}")
    except Exception as e:
        raise LiverError(f"{path}: not a loadable TorchScript model ({type(e).__name__})") from None
    settings = cfg.get("settings")
    return module, dict(settings) if isinstance(settings, dict) else {}


def _bundle_defaults(bundle: Path) -> dict:
    """strategy, class names, image size and backbone of a bundle's inference.json (plain values only)."""
    cfg = bundle / "configs" / "inference.json"
    if not cfg.is_file():
        raise LiverError(f"{bundle}: not a bundle (no configs/inference.json)")
    try:
        content = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise LiverError(f"{cfg}: not a readable bundle config ({e})") from None
    out = {"strategy": content.get("strategy", bundle.name)}
    for key in ("class_names", "image_size", "backbone"):
        if isinstance(content.get(key), (list, int, str)) and not str(content.get(key)).startswith("$"):
            out[key] = content[key]
    return out


def load_model(
    model: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    segmenting: bool = True,
) -> LoadedModel:
    """Load ``model`` (a package folder, a ``model.pt`` checkpoint or a TorchScript file; default
    ``<bundle>/models/model.pt``) for inference on ``device`` (default cuda when available).

    The model's own settings decide; ``bundle`` (default the repository's ``bundles/joint``) fills
    in what a model without settings does not say. ``segmenting``: refuse cls_baseline models.
    """
    import torch

    if model is None:
        bundle = Path(bundle) if bundle else bundles_dir() / "joint"
        model = bundle / "models" / "model.pt"
        if not model.is_file():
            raise LiverError(f"{model}: no trained model found (train the bundle, or pass --model <model.pt or package folder>)")
    model_file, _ = package_files(model)
    from monai_liver.engine.handlers import read_checkpoint, settings_of

    torchscript = is_torchscript(model_file)
    if torchscript:  # each file is read once
        module, settings = _load_torchscript(model_file)
    else:
        checkpoint = read_checkpoint(model_file)
        settings = settings_of(checkpoint)
    defaults = _bundle_defaults(Path(bundle)) if bundle else {}
    if bundle and settings.get("strategy") and defaults.get("strategy") != settings["strategy"]:
        raise LiverError(f"{model_file}: a {settings['strategy']} model, not one of bundle {bundle} ({defaults.get('strategy')})")
    if not settings and not bundle:
        defaults = _bundle_defaults(bundles_dir() / "joint")  # an old checkpoint: the joint bundle's defaults
    merged = {**defaults, **settings}
    strategy = str(merged.get("strategy", "joint"))
    if segmenting and not get_strategy(strategy).segments:
        segmenting_ones = ", ".join(s for s in strategy_names() if get_strategy(s).segments)
        raise LiverError(f"{model_file}: infer needs a model that segments ({segmenting_ones}); '{strategy}' only classifies slices")
    class_names = check_flags(model_file, settings, image_size, class_names)
    names = tuple(class_names or merged.get("class_names") or DEFAULT_CLASSES)
    size = check_image_size(image_size or merged.get("image_size") or DEFAULT_IMAGE_SIZE)
    window = check_window(merged.get("window", HU_WINDOW), f"{model_file}: HU window")
    margin = int(merged.get("roi_margin", ROI_MARGIN))
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    common = dict(strategy=strategy, class_names=names, image_size=size, window=window, device=dev,
                  bundle=str(bundle or ""), model_path=str(model_file), roi_margin=margin, settings=settings)
    if torchscript:
        return LoadedModel(_DictOutput(module.to(dev), strategy), torchscript=True, **common)
    from monai_liver.engine.handlers import load_model as load_weights
    from monai_liver.networks.factory import build_network

    net = build_network(strategy, n_classes=len(names), backbone=str(merged.get("backbone", "efficientnet-b0")))
    load_weights(net, model_file, checkpoint=checkpoint)
    return LoadedModel(net.to(dev).eval(), **common)


def load_bundle_model(
    bundle: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """:func:`load_model` with the bundle first (the signature of earlier versions)."""
    return load_model(model, bundle, device, class_names, image_size)
