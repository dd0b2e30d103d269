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
    """``size`` as an int; LiverError unless it is a multiple of 32 and at least 32 (every encoder
    of the U-Net family halves the image 5 times). The one check, used by the transforms, the
    experiment and inference."""
    from monai_liver.errors import LiverError

    try:
        value = int(size)
    except (TypeError, ValueError):
        raise LiverError(f"{what} {size!r}: not a whole number of pixels") from None
    if value < 32 or value % 32:
        raise LiverError(f"{what} {value}: must be a multiple of 32, at least 32 (the encoder halves the image 5 times)")
    return value


def bundles_dir():
    """The repository's ``bundles/`` folder (next to the ``monai_liver`` package), a ``Path``."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "bundles"
