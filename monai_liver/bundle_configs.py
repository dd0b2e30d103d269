"""The bundles' shared configs from one template, with each bundle's few own values in one place.

``bundles/_template/configs/`` holds ``train.json``, ``evaluate.json``, ``inference.json``,
``multi_gpu_train.json`` and ``logging.conf`` once; :data:`BUNDLE_VALUES` holds, per bundle, the
top-level values in which it differs (``strategy`` is always its own name). Every bundle folder
keeps complete, ordinary MONAI bundle files (``python -m monai.bundle run --config_file
bundles/<s>/configs/train.json`` reads one file, as a Model Zoo user expects); they are written by::

    python -m monai_liver.bundle_configs        # after editing the template or BUNDLE_VALUES

and ``tests/test_bundles.py`` fails when a checked-in file is not what this module writes.
``metadata.json`` and ``docs/README.md`` stay per bundle (names, descriptions, channels).
A generator rather than MONAI's ``%file::key`` macros: those resolve files against the working
folder, so a bundle would stop running from anywhere but the repository root.
"""

from __future__ import annotations

import json
from pathlib import Path

from monai_liver.constants import bundles_dir

__all__ = ["BUNDLE_VALUES", "GENERATED", "render", "write_bundles"]

#: the files generated from the template, in every bundle
GENERATED: tuple[str, ...] = ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "logging.conf")

#: per bundle and file, the top-level values that differ from the template
BUNDLE_VALUES: dict[str, dict[str, dict]] = {
    "lits_pretrain": {"train.json": {"datalist": "$@bundle_root + '/../../data_lists/phantom_lits.json'",
                                     "epochs": 50, "lesion_oversample": 3, "dice_batch": False}},
    "cls_baseline": {"train.json": {
        # from LiTS, the transferred encoder at a higher learning rate (monai_liver.networks.init.param_groups)
        "encoder_lr_scale": "$monai_liver.networks.init.LITS_ENCODER_LR_SCALE if @init == 'lits' else 1.0"},
                     "inference.json": {
        # one class per slice: softmax + argmax, written to predictions.csv (no mask to invert or save)
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "keepdim": False}]},
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "ClassificationSaver", "output_dir": "@output_dir", "filename": "predictions.csv",
             "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
             "output_transform": "$monai.handlers.from_engine(['pred'])"}]}},
    "seg_baseline": {},
    "ynet": {},
    "joint": {},
}


def _template() -> Path:
    return bundles_dir() / "_template" / "configs"


def render(bundle: str) -> dict[str, str]:
    """File name -> text of ``bundle``'s generated configs."""
    values = BUNDLE_VALUES[bundle]
    out = {}
    for name in GENERATED:
        text = (_template() / name).read_text()
        if name.endswith(".json"):
            content = json.loads(text)
            if "strategy" in content:
                content["strategy"] = bundle
            content.update(values.get(name, {}))  # keys keep their template position
            text = json.dumps(content, indent=4) + "\n"
        out[name] = text
    return out


def write_bundles(root: Path | None = None) -> list[Path]:
    """Write every bundle's generated configs under ``root`` (default the repository's ``bundles/``)."""
    root = Path(root) if root else bundles_dir()
    written = []
    for bundle in BUNDLE_VALUES:
        for name, text in render(bundle).items():
            path = root / bundle / "configs" / name
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                written.append(path)
    return written


if __name__ == "__main__":
    for p in write_bundles():
        print(f"wrote {p}")
