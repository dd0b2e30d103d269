"""Bundle datasets: a datalist JSON + a held-out fold -> 2D slice items -> MONAI ``CacheDataset``.

The source images (3D LiTS volumes, 2D NIfTI, DICOM) are read once by
:func:`monai_liver.data.slices.materialise_slices`, which writes every training slice as ``.npy``
into ``cache_dir``; the bundles' dataset (:class:`~monai_liver.engine.preprocessed_cache.PreprocessedCacheDataset`)
then keeps the deterministic part of the transform chain on disk beside them (``cache_dir/prep/``, for
the next run) and in memory (MONAI ``CacheDataset``), and runs only the random augmentations per epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai_liver.constants import DEFAULT_CLASSES
from monai_liver.errors import LiverError

__all__ = [
    "SPLITS",
    "read_datalist",
    "datalist_dataset_dir",
    "datalist_classes",
    "datalist_folds",
    "select_items",
    "check_inputs",
    "slice_items",
    "slice_dataset",
]

#: ``train``: every fold but the held-out one; ``val``: the held-out fold; ``all``: everything.
SPLITS: tuple[str, ...] = ("train", "val", "all")


def read_datalist(datalist: str | Path) -> dict:
    """The datalist as training needs it: LiverError if it is missing, unreadable or has no items
    (:func:`monai_liver.data.datalist.read_datalist` with ``require_items``)."""
    from monai_liver.data.datalist import read_datalist as _read

    return _read(datalist, require_items=True)


def datalist_dataset_dir(datalist: str | Path) -> str:
    """The datalist's ``"dataset_dir"`` (relative to the JSON's folder, as
    :func:`monai_liver.data.datalist.write_datalist` stores it), else the JSON's folder; ``""`` when the
    datalist cannot be read (the dataset check then names the datalist)."""
    from monai_liver.data.datalist import read_datalist as _read

    try:
        return _read(datalist)["dataset_dir"]
    except LiverError:
        return ""


def datalist_classes(datalist: str | Path | None = None, class_names: Sequence[str] | None = None) -> tuple[str, ...]:
    """Class names: ``class_names`` if given, else the datalist's top-level ``"classes"``, else the
    defaults (cyst, hemangioma, metastasis). A missing datalist gives the defaults (the dataset
    check reports it)."""
    if class_names:
        return tuple(str(c) for c in class_names)
    if datalist is not None and Path(datalist).is_file():
        try:
            classes = json.loads(Path(datalist).read_text()).get("classes")
        except (OSError, ValueError, AttributeError):
            classes = None
        if classes:
            return tuple(str(c) for c in classes)
    return tuple(DEFAULT_CLASSES)


def datalist_folds(items: Sequence[dict]) -> list[int]:
    """Sorted fold numbers present in ``items`` (items without ``fold`` are not counted)."""
    return sorted({int(it["fold"]) for it in items if it.get("fold") is not None})


def select_items(items: Sequence[dict], fold: int, split: str, source: str = "datalist") -> list[dict]:
    """Items of ``split`` for held-out ``fold`` (-1: no held-out fold; ``val`` is then every item,
    for monitoring only). LiverError for an unknown split, a fold the datalist does not have, or an
    empty selection."""
    if split not in SPLITS:
        raise LiverError(f"split '{split}' is not known; choose one of {', '.join(SPLITS)}")
    fold = int(fold)
    if split == "all" or fold == -1:
        chosen = list(items)
    else:
        folds = datalist_folds(items)
        if not folds:
            raise LiverError(f"{source}: items have no 'fold'; write the datalist with 'monai-liver datalist'")
        if fold not in folds:
            raise LiverError(f"{source}: fold {fold} does not exist (folds: {', '.join(map(str, folds))}, or -1 for all)")
        if split == "val":
            chosen = [it for it in items if it.get("fold") is not None and int(it["fold"]) == fold]
        else:
            chosen = [it for it in items if it.get("fold") is None or int(it["fold"]) != fold]
    if not chosen:
        raise LiverError(f"{source}: no items for split '{split}' with held-out fold {fold}")
    return chosen


def check_inputs(dataset_dir: str | Path, datalist: str | Path, fold: int) -> bool:
    """Fail early with one LiverError for a missing ``dataset_dir`` / datalist, an empty datalist or
    a fold the datalist does not have (bundles call this first in ``initialize``)."""
    content = read_datalist(datalist)
    if not dataset_dir or not Path(dataset_dir).is_dir():
        raise LiverError(f"{dataset_dir}: dataset directory does not exist")
    select_items(content["training"], fold, "train", source=str(datalist))
    select_items(content["training"], fold, "val", source=str(datalist))
    return True


def _subsample(items: list[dict], max_items: int | None) -> list[dict]:
    """At most ``max_items`` items, evenly spaced (deterministic); None or <= 0 keeps all."""
    if not max_items or max_items <= 0 or len(items) <= max_items:
        return items
    step = len(items) / float(max_items)
    return [items[int(i * step)] for i in range(max_items)]


def slice_items(
    datalist: str | Path,
    dataset_dir: str | Path,
    fold: int,
    split: str,
    cache_dir: str | Path,
    class_names: Sequence[str] | None = None,
    max_slices: int | None = None,
    only_liver: bool = True,
    lesion_oversample: int = 1,
) -> list[dict]:
    """2D slice items (see :func:`monai_liver.data.slices.materialise_slices`) of ``split`` for
    held-out ``fold``; ``max_slices`` keeps an evenly spaced subset (quick runs)."""
    from monai_liver.data.slices import materialise_slices

    if not Path(dataset_dir).is_dir():
        raise LiverError(f"{dataset_dir}: dataset directory does not exist")
    content = read_datalist(datalist)
    items = select_items(content["training"], fold, split, source=str(datalist))
    classes = datalist_classes(datalist, class_names)
    slices = materialise_slices(
        items, dataset_dir, cache_dir, class_names=classes, only_liver=only_liver, lesion_oversample=lesion_oversample
    )
    if not slices:
        raise LiverError(f"{datalist}: no 2D slices for split '{split}' with held-out fold {fold} (no liver in the masks?)")
    return _subsample(list(slices), max_slices)


def slice_dataset(
    datalist: str | Path,
    dataset_dir: str | Path,
    fold: int,
    split: str,
    strategy: str,
    image_size: int,
    cache_dir: str | Path,
    class_names: Sequence[str] | None = None,
    augment: bool | None = None,
    max_slices: int | None = None,
    cache: str = "memory",
    num_workers: int = 0,
) -> Any:
    """A dataset of 2D slices for ``strategy``: ``CacheDataset`` (``cache="memory"``: deterministic
    transforms cached, random ones per epoch) or a plain ``Dataset`` (``cache="none"``).

    ``augment`` defaults to True for ``split="train"``; items come out as the transforms' dict
    (``image`` (1, H, W) in [0, 1], ``seg`` (1, H, W), ``cls``).
    """
    from monai.data import CacheDataset, Dataset

    from monai_liver.transforms import eval_transforms, train_transforms

    classes = datalist_classes(datalist, class_names)
    data = slice_items(datalist, dataset_dir, fold, split, cache_dir, classes, max_slices)
    if augment is None:
        augment = split == "train"
    if split == "train":
        transform = train_transforms(strategy, image_size=image_size, n_classes=len(classes), augment=augment)
    else:
        transform = eval_transforms(strategy, image_size=image_size, n_classes=len(classes))
    if cache == "memory":
        return CacheDataset(data, transform=transform, cache_rate=1.0, num_workers=num_workers or None, progress=False)
    if cache == "none":
        return Dataset(data, transform=transform)
    raise LiverError(f"cache '{cache}' is not known; choose 'memory' or 'none'")
