"""Names and numbers shared by every module."""

from monai_liver.strategies import paper_strategies as _paper_strategies

#: Default lesion types, in class-index order (index k <-> joint seg channel 2 + k).
DEFAULT_CLASSES: tuple[str, ...] = ("cyst", "hemangioma", "metastasis")

#: Default CT window in Hounsfield units, scaled to [0, 1].
HU_WINDOW: tuple[float, float] = (-200.0, 250.0)

#: pixels kept around the liver's bounding box by the liver-ROI crop (before resizing); recorded
#: with every model (its settings' ``roi_margin``)
ROI_MARGIN = 16

#: LiTS / MSD Task03 label values.
BACKGROUND, LIVER, LESION = 0, 1, 2

#: the paper's strategies, in its row order (from the registry, monai_liver.strategies)
STRATEGIES: tuple[str, ...] = _paper_strategies()
PRETRAIN_STRATEGY = "lits_pretrain"
#: the liver localiser of the inference cascade: the lits_pretrain network trained on whole slices
#: (its run folder under <experiment>/pretrain/)
LOCALISER = "liver_localiser"
INITS: tuple[str, ...] = ("scratch", "imagenet", "lits")


#: network input size (pixels, square) when neither the model nor the user says otherwise
DEFAULT_IMAGE_SIZE = 128


def check_image_size(size, what: str = "image size") -> int:
    """``size`` as an int; LiverError unless it is a multiple of 32 and at least 32. The one check,
    used by the transforms, the experiment and inference.

    One rule for every backbone, the strictest one's: FlexibleUNet's ResNet encoders halve the image
    5 times and their decoder's skip connections fail on a size that is not a multiple of 32 (48, 80,
    100 fail for resnet18); BasicUNet and EfficientNet pad their way through other sizes, but their
    skip connections are then shifted, and a model's size stays valid when its backbone changes
    (``tests/test_settings.py`` checks the rule against the networks)."""
    from monai_liver.errors import LiverError

    try:
        value = int(size)
    except (TypeError, ValueError):
        raise LiverError(f"{what} {size!r}: not a whole number of pixels") from None
    if value < 32 or value % 32:
        raise LiverError(f"{what} {value}: must be a multiple of 32, at least 32 (the encoder halves the image 5 times)")
    return value


def check_window(window, what: str = "HU window") -> tuple[float, float]:
    """``window`` as ``(low, high)`` floats; LiverError unless it is two finite numbers, low < high."""
    import math

    from monai_liver.errors import LiverError

    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        raise LiverError(f"{what} {window!r}: expected two numbers (low, high) in HU") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise LiverError(f"{what} {window!r}: expected finite numbers with low < high")
    return low, high


def check_class_names(class_names, what: str = "class names") -> tuple[str, ...]:
    """``None`` -> :data:`DEFAULT_CLASSES`; ``"a,b,c"`` or a sequence -> a tuple of unique (ignoring
    case), non-empty names; else LiverError. The one check of lesion class names given by a user
    (``datalist --classes``, the manifest, ``infer`` / ``export --classes``)."""
    from monai_liver.errors import LiverError

    if class_names is None:
        return tuple(DEFAULT_CLASSES)
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    names = tuple(str(c).strip() for c in class_names)
    if not names or any(not n for n in names):
        raise LiverError(f"{what} {list(class_names)!r}: every class needs a non-empty name")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise LiverError(f"{what} {list(names)!r}: names must be unique")
    return names


def bundles_dir():
    """The repository's ``bundles/`` folder (next to the ``monai_liver`` package), a ``Path``."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "bundles"
