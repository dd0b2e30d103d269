"""monai_liver: joint liver-lesion segmentation and classification on CT with transfer learning.

A MONAI reimplementation of Heker & Greenspan, "Joint Liver Lesion Segmentation and
Classification via Transfer Learning" (MIDL 2020, arXiv 2004.12352).
"""

from monai_liver.constants import DEFAULT_CLASSES, HU_WINDOW, INITS, STRATEGIES
from monai_liver.errors import LiverError

__version__ = "0.1.0"
__all__ = ["DEFAULT_CLASSES", "HU_WINDOW", "INITS", "STRATEGIES", "LiverError", "__version__"]
