"""The bundles' datasets: MONAI's ``CacheDataset`` whose deterministic preprocessing is also kept on
disk, so that the runs of an experiment compute it once.

Every run of the experiment preprocesses the same 2D slices the same way (window, liver-ROI crop,
resize: about 25 ms a slice on one CPU core, mostly MetaTensor bookkeeping), and a run caches the
train and held-out slices twice (training, evaluation): about 12 s of a 2-minute run of the quick
demo. :class:`PreprocessedCacheDataset` puts MONAI's ``PersistentDataset`` under the ``CacheDataset``:
the deterministic head of the transform chain is read from ``<persist_dir>/prep/<fingerprint>/`` when
another run wrote it (one ``.pt`` per slice, keyed by MONAI on the item: its ``.npy`` paths carry the
source files' size and mtime, see :mod:`monai_liver.data.slices`), and the ``CacheDataset`` keeps the
result in memory for the epochs as before. The fingerprint (:func:`transform_fingerprint`) is a hash
of that head's transforms and their settings (strategy targets, image size, HU window, margin), so a
chain that differs in any setting, or whose transforms' source files differ (an edit, an upgrade),
gets another folder. The rest of the chain (random transforms,
``ToDeviced``) runs after the disk cache, as MONAI's caches always do.

MONAI has no dataset that caches on disk across processes and in memory within one; this class is
only the composition of its two.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import sys
import threading
from collections.abc import Callable, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, PersistentDataset
from monai.transforms import Compose, RandomizableTrait, ToDeviced, Transform
from monai.utils import convert_to_tensor

__all__ = ["AsStoredOnDisk", "PreprocessedCacheDataset", "persistable_head", "transform_fingerprint"]

#: attributes of MONAI transforms and readers that are run-time state, not settings: the random state,
#: the lazy-resampling switch, the files an image reader read last (per-thread tracing state is skipped too)
RUN_TIME_STATE = frozenset({"R", "_lazy", "lazy", "filenames", "has_series"})
#: bump when the preprocessing changes in a way neither its settings nor its transforms' source files show
PREPROCESSING_VERSION = 1


def persistable_head(chain: Compose) -> tuple[list, list]:
    """``chain``'s transforms split into the head that may be kept on disk (deterministic MONAI
    transforms, up to the first random one, non-``Transform`` callable or ``ToDeviced``) and the rest."""
    transforms = list(chain.flatten().transforms)
    for i, t in enumerate(transforms):
        if isinstance(t, (RandomizableTrait, ToDeviced)) or not isinstance(t, Transform):
            return transforms[:i], transforms[i:]
    return transforms, []


def _describe(obj: Any, modules: set[str], depth: int = 0) -> Any:
    """A JSON-able description of ``obj``'s settings (its class and attributes, recursively); the
    modules of the classes and functions it meets are added to ``modules``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [_describe(x, modules, depth + 1) for x in items]
    if isinstance(obj, dict):
        return {str(k): _describe(v, modules, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (torch.dtype, np.dtype, torch.device)) or isinstance(obj, type):
        return str(obj)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        a = np.asarray(obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj)
        return ["array", list(a.shape), str(a.dtype), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
    if isinstance(obj, np.generic):
        return obj.item()
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if callable(obj) and not hasattr(obj, "__dict__"):  # builtins
        return name
    if hasattr(obj, "__code__"):  # a function: its module and name
        modules.add(str(getattr(obj, "__module__", "")))
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    if depth > 6 or not hasattr(obj, "__dict__"):
        return name
    modules.add(type(obj).__module__)
    fields = {k: v for k, v in vars(obj).items() if k not in RUN_TIME_STATE and not isinstance(v, threading.local)}
    return [name, _describe(fields, modules, depth + 1)]


def _source_hashes(modules: set[str]) -> dict[str, str]:
    """module -> SHA-256 of its source file, for the modules of a chain's transforms and of what they
    hold (e.g. the array transform a dictionary transform calls; MONAI's and ours), so that an edited
    or upgraded transform gets another folder, not the files of the old code."""
    out = {}
    for module in sorted(modules):
        try:
            out[module] = hashlib.sha256(Path(inspect.getsourcefile(sys.modules[module]) or "").read_bytes()).hexdigest()
        except (KeyError, OSError, TypeError):
            out[module] = "no source"
    return out


def transform_fingerprint(transforms: Sequence[Callable]) -> str:
    """A short hash of ``transforms``, their settings and their code: the same in every process for
    the same chain, another for any other class, setting or source file."""
    modules: set[str] = set()
    chain = _describe(list(transforms), modules)
    blob = json.dumps({"v": PREPROCESSING_VERSION, "chain": chain, "code": _source_hashes(modules)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _incomplete_file(e: BaseException) -> bool:
    """Whether ``torch.load`` failed on a file that is still being written (empty, or a zip archive
    without its end: the errors torch gives for a file cut short)."""
    return isinstance(e, EOFError) or "PytorchStreamReader failed" in str(e) or (
        isinstance(e, OSError) and e.errno == errno.EINVAL)


class _SharedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` for a cache folder that several runs write at once (``--runs-per-device``,
    Ray): MONAI writes a file in a temporary folder and moves it in, which is a copy when the temporary
    folder is on another filesystem, so another run can find it half-written. Such a file is read as a
    miss (this run computes the item itself); any other error is raised as before."""

    def _cachecheck(self, item_transformed):
        try:
            return super()._cachecheck(item_transformed)
        except (EOFError, OSError, RuntimeError) as e:
            if not _incomplete_file(e):
                raise
            return self._pre_transform(deepcopy(item_transformed))


class AsStoredOnDisk(Transform):
    """An item as MONAI's ``PersistentDataset`` stores it (arrays and MetaTensors as plain tensors, numbers
    kept), so that a slice preprocessed now and one read from disk collate into the same batch."""

    def __call__(self, data: Any) -> Any:
        return convert_to_tensor(data, convert_numeric=False, track_meta=False)


class PreprocessedCacheDataset(CacheDataset):
    """``CacheDataset(data, transform, **kwargs)``; with ``persist_dir``, the deterministic head of
    ``transform`` (:func:`persistable_head`) is read from and written to
    ``persist_dir/prep/<fingerprint>/`` through MONAI's ``PersistentDataset`` (plain tensors,
    ``torch.load`` with ``weights_only``), and the ``CacheDataset`` runs the rest. Without it, or
    when the chain starts with a random transform, it is a plain ``CacheDataset``."""

    def __init__(self, data: Sequence, transform: Compose | Sequence[Callable], persist_dir: str | Path | None = None,
                 **kwargs: Any) -> None:
        chain = transform if isinstance(transform, Compose) else Compose(transform)
        head, rest = persistable_head(chain)
        self.persist_dir: Path | None = None
        if persist_dir and head:
            self.persist_dir = Path(persist_dir) / "prep" / transform_fingerprint(head)
            data = _SharedPersistentDataset(data, Compose(head), cache_dir=self.persist_dir)
            chain = Compose([AsStoredOnDisk(), *rest])
        super().__init__(data=data, transform=chain, **kwargs)
