"""Training engine pieces the bundles refer to by ``_target_`` / ``$`` expressions.

Submodules (imported lazily, so ``import monai_liver.engine`` stays cheap and a bundle config can
write ``monai_liver.engine.data.slice_items(...)`` after a plain ``$import monai_liver.engine``):

- :mod:`~monai_liver.engine.data`: datalist + fold -> 2D slice items / CacheDataset
- :mod:`~monai_liver.engine.prepare_batch`: batch -> ``(image, {"seg", "cls"})``
- :mod:`~monai_liver.engine.loss`: :class:`MultiTaskLoss`
- :mod:`~monai_liver.engine.metrics`: validation metrics and per-slice metric functions
- :mod:`~monai_liver.engine.handlers`: atomic checkpoints, resume, per-epoch CSV log
- :mod:`~monai_liver.engine.evaluate`: ``eval/per_slice.csv``, ``metrics.json``, ``examples.npz``
- :mod:`~monai_liver.engine.inferer`: test-time flip averaging (held-out evaluation, ``infer``)
- :mod:`~monai_liver.engine.tracking`: MLflow helpers
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType

from monai_liver.strategies import get as _get

__all__ = [
    "has_seg",
    "has_class",
    "install_excepthook",
    "find_liver_error",
]


_SUBMODULES = ("data", "prepare_batch", "loss", "metrics", "handlers", "evaluate", "inferer", "tracking")


def has_seg(strategy: str) -> bool:
    """Whether ``strategy`` predicts a lesion mask."""
    return _get(strategy).segments


def has_class(strategy: str) -> bool:
    """Whether ``strategy`` predicts a slice class."""
    return _get(strategy).classifies


def find_liver_error(exc: BaseException | None):
    """The first :class:`~monai_liver.errors.LiverError` in ``exc``'s cause/context chain, or None.

    MONAI's config parser wraps every exception raised while evaluating an expression or
    instantiating a component in a ``RuntimeError`` ("Failed to evaluate ..."), so the user's error
    sits a few links down the chain.
    """
    from monai_liver.errors import LiverError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LiverError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook() -> bool:
    """Make a :class:`~monai_liver.errors.LiverError` end a bundle run with one line on stderr.

    ``python -m monai.bundle run`` has no error handling of its own: an exception leaves a long
    config-parser traceback whose last line is MONAI's wrapper ("RuntimeError: Failed to evaluate
    ..."). This hook prints ``error: <message>`` instead (the same form as the ``monai-liver``
    CLI) when the chain holds a LiverError; set ``MONAI_LIVER_DEBUG=1`` to also get the traceback
    above it. Any other exception keeps Python's normal traceback. The exit status is 1 (Python's
    for an uncaught exception). Returns True (so it can sit in a config's ``initialize`` list).
    """
    previous = sys.excepthook
    if getattr(previous, "_monai_liver", False):
        return True

    def hook(exc_type, exc, tb):
        err = find_liver_error(exc)
        if err is None:
            previous(exc_type, exc, tb)
            return
        if os.environ.get("MONAI_LIVER_DEBUG"):
            traceback.print_exception(exc_type, exc, tb)
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr, flush=True)

    hook._monai_liver = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    return True


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
