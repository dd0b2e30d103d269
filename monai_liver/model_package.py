"""What a trained model says about itself: its settings, and the model package folder.

Every ``model.pt`` written by a bundle's ``ModelSaver`` carries ``"settings"``
(:func:`model_settings`): everything inference needs to run the model exactly as it was trained,
so that nobody has to repeat a size, a window or the class names by hand:

===================  ==========================================================================
key                  value
===================  ==========================================================================
``strategy``         lits_pretrain, cls_baseline, seg_baseline, ynet or joint
``class_names``      lesion types in class-index order
``image_size``       network input (pixels, square)
``backbone``         U-Net backbone (``basicunet``, ``efficientnet-b0``, ...)
``window``           HU window mapped to [0, 1] (low, high)
``roi_margin``       pixels kept around the liver's bounding box before the resize
``channels``         name of each segmentation output channel (empty for cls_baseline)
``bundle``           the bundle folder's name, ``bundle_version`` its ``metadata.json`` version
``data``             datalist path and SHA-256, fold held out, initialisation
``monai_liver``      package version that trained it
===================  ==========================================================================

A **model package** is a folder that ``monai-liver infer --model DIR`` takes whole::

    DIR/model.pt          the strategy model (checkpoint with settings)
    DIR/model.json        the same settings and where the model came from, readable
    DIR/liver_model.pt    optional: the stage-1 liver localiser (a lits_pretrain checkpoint,
                          trained on whole LiTS slices), see monai_liver.inference.predictor
    DIR/lesion_model.pt   optional: the lesion gate of 3D volumes (the lits_pretrain checkpoint,
                          trained on LiTS liver crops), see monai_liver.inference.predictor

The experiment writes one per strategy and initialisation (:func:`write_package`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_liver.constants import DEFAULT_CLASSES, HU_WINDOW, PRETRAIN_STRATEGY, ROI_MARGIN, check_class_names
from monai_liver.errors import LiverError

__all__ = [
    "LESION_GATE_FILE",
    "LOCALISER_FILE",
    "MODEL_FILE",
    "SETTINGS_FILE",
    "check_flags",
    "is_torchscript",
    "lesion_gate_file",
    "model_settings",
    "package_files",
    "read_settings",
    "segmentation_channels",
    "write_package",
]

MODEL_FILE = "model.pt"
SETTINGS_FILE = "model.json"
LOCALISER_FILE = "liver_model.pt"
LESION_GATE_FILE = "lesion_model.pt"


def segmentation_channels(strategy: str, class_names: Sequence[str]) -> list[str]:
    """Names of the segmentation output channels: background, liver, then lesion (or one per type
    for joint); ``[]`` for cls_baseline."""
    from monai_liver.strategies import get

    return get(strategy).channel_names(class_names)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def model_settings(
    strategy: str,
    image_size: int,
    backbone: str,
    class_names: Sequence[str] = DEFAULT_CLASSES,
    bundle_root: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    fold: int | None = None,
    init: str | None = None,
    window: Sequence[float] = HU_WINDOW,
    roi_margin: int | None = None,
) -> dict[str, Any]:
    """The settings dict a bundle's ``ModelSaver`` stores in ``model.pt`` (see the module doc)."""
    from monai_liver import __version__

    names = [str(c) for c in class_names]
    settings: dict[str, Any] = {
        "strategy": str(strategy),
        "class_names": names,
        "image_size": int(image_size),
        "backbone": str(backbone),
        "window": [float(window[0]), float(window[1])],
        "roi_margin": int(ROI_MARGIN if roi_margin is None else roi_margin),
        "channels": segmentation_channels(str(strategy), names),
        "monai_liver": __version__,
    }
    if bundle_root is not None:
        root = Path(bundle_root).resolve()
        settings["bundle"] = root.name
        try:
            settings["bundle_version"] = json.loads((root / "configs" / "metadata.json").read_text()).get("version")
        except (OSError, ValueError):
            settings["bundle_version"] = None
    if datalist is not None:
        path = Path(datalist).resolve()
        settings["data"] = {"datalist": str(path), "sha256": _sha256(path), "fold_held_out": fold, "init": init}
    return settings


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Settings of a checkpoint file or a package folder (``{}`` when the checkpoint has none:
    older runs, TorchScript files). LiverError for a missing or unreadable file."""
    from monai_liver.engine.handlers import checkpoint_settings

    model, _ = package_files(path)
    try:
        return checkpoint_settings(model)
    except LiverError:
        if is_torchscript(model):
            return {}
        raise


def check_flags(model: str | os.PathLike, settings: Mapping[str, Any], image_size: int | None = None,
                class_names: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """The one check of what a user says about a model (``--image-size``, ``--classes`` of ``infer``,
    ``export``, the label app): LiverError when it contradicts what ``model`` recorded in its
    ``settings``. Returns ``class_names`` checked (:func:`~monai_liver.constants.check_class_names`),
    or None when none were given; the size is checked where it is used (``check_image_size``)."""
    trained = settings.get("image_size")
    if image_size is not None and trained and int(image_size) != int(trained):
        raise LiverError(f"{model}: trained at image size {trained}, not {image_size}; leave the size out to use the model's")
    if not class_names:
        return None
    names = check_class_names(class_names, "--classes")
    if settings.get("class_names") and list(names) != list(settings["class_names"]):
        raise LiverError(f"{model}: trained with classes {', '.join(settings['class_names'])}, not {', '.join(names)}")
    return names


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``monai-liver export``) rather than a checkpoint."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def package_files(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(model file, liver localiser file or None) of a package folder or a single model file."""
    path = Path(path)
    if path.is_dir():
        model = path / MODEL_FILE
        if not model.is_file():
            raise LiverError(f"{path}: not a model package (no {MODEL_FILE} in it)")
        localiser = path / LOCALISER_FILE
        return model, (localiser if localiser.is_file() else None)
    if not path.is_file():
        raise LiverError(f"{path}: no such model file or package folder")
    return path, None


def lesion_gate_file(path: str | os.PathLike) -> Path | None:
    """The package's lesion gate (``lesion_model.pt``), or None (a single model file, or a package without one)."""
    gate = Path(path) / LESION_GATE_FILE
    return gate if Path(path).is_dir() and gate.is_file() else None


def write_package(
    out_dir: str | os.PathLike,
    model: str | os.PathLike,
    localiser: str | os.PathLike | None = None,
    provenance: Mapping[str, Any] | None = None,
    lesion_gate: str | os.PathLike | None = None,
) -> Path:
    """Write a model package (module doc) to ``out_dir``: copies of ``model`` (and ``localiser``,
    ``lesion_gate``: lits_pretrain checkpoints), and ``model.json`` with the model's settings, theirs
    and ``provenance`` (e.g. the fold chosen and why). Files are written under temporary names and
    renamed, so a reader never sees a half-written package. Returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(model)
    info: dict[str, Any] = {"settings": read_settings(model), "provenance": dict(provenance or {})}
    pairs = [(model, out / MODEL_FILE)]
    for key, what, src, name in (("localiser", "liver localiser", localiser, LOCALISER_FILE),
                                 ("lesion_gate", "lesion gate", lesion_gate, LESION_GATE_FILE)):
        if src is None:
            (out / name).unlink(missing_ok=True)
            continue
        settings = read_settings(Path(src))
        if settings.get("strategy") not in (None, PRETRAIN_STRATEGY):
            raise LiverError(f"{src}: a {what} must be a {PRETRAIN_STRATEGY} model, not {settings.get('strategy')}")
        info[key] = settings
        pairs.append((Path(src), out / name))
    from monai_liver.atomic import copy_file, write_text

    for src, dst in pairs:
        copy_file(src, dst)
    write_text(out / SETTINGS_FILE, json.dumps(info, indent=2))
    return out
