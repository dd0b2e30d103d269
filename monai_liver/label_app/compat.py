"""Make MONAI Label 0.8.5 importable next to pydicom 3.

MONAI Label imports ``pydicom_seg`` (for DICOM SEG conversion of DICOMweb datastores), whose last
release (0.4.1) imports ``pydicom._storage_sopclass_uids``, a private module that pydicom 3 removed
(its UIDs moved to ``pydicom.uid``). This project needs pydicom 3 (highdicom), so without this
module MONAI Label's app and server fail at import. :func:`install` registers a stand-in module
with the same names, taken from ``pydicom.uid``; it must run before MONAI Label's app is imported
(``monai_liver.label_app.main`` and ``.server`` call it first). Only the import is fixed: MONAI
Label's DICOM SEG output (``output=dicom_seg`` on a DICOMweb datastore) stays unsupported.
"""

from __future__ import annotations

import sys
import types

__all__ = ["install"]

_NAME = "pydicom._storage_sopclass_uids"


def install() -> None:
    """Register ``pydicom._storage_sopclass_uids`` if pydicom lacks it (idempotent)."""
    if _NAME in sys.modules:
        return
    try:
        __import__(_NAME)
        return
    except ImportError:
        pass
    import pydicom.uid

    mod = types.ModuleType(_NAME, "stand-in for pydicom 2's storage SOP class UIDs (monai_liver.label_app.compat)")
    mod.__dict__.update({k: v for k, v in vars(pydicom.uid).items() if isinstance(v, pydicom.uid.UID)})
    sys.modules[_NAME] = mod
