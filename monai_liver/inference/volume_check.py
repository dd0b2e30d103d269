"""Score ``monai-liver infer`` on a volume with known masks: the end-to-end check of a model package.

Given a CT volume, its reference segmentation (0 background, 1 liver, 2 lesion: the LiTS
convention) and optionally the known type of every lesion (``lesiontypes-N.nii.gz`` of the LiTS-like
phantoms: 0, or 1 + k for type k), the figures on the input grid are:

- liver Dice (liver including lesions) and lesion Dice, over the whole volume;
- lesion detection recall: reference lesions (3D components, 26-connected) that overlap a
  predicted lesion, over all reference lesions; and the predicted lesions that overlap none;
- per-lesion type accuracy: over detected reference lesions with a known type, the share whose
  type (the most frequent label of ``lesion.nii.gz`` over the overlap) is the reference type.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["check_volume"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def check_volume(predictor, volume: str | Path, segmentation: str | Path, out: str | Path,
                 lesion_types: str | Path | None = None, liver: str | Path | None = None) -> dict:
    """Run ``infer`` with ``predictor`` on ``volume`` into ``out`` and score it (module doc); the
    figures are also written to ``out/check.json``. ``liver``: a liver mask given to ``infer`` instead
    of stage 1 (``--liver``)."""
    import nibabel as nib
    from scipy import ndimage

    from monai_liver.inference.infer import infer

    out = Path(out)
    result = infer(volume, out, loaded=predictor, overlays=False, liver=liver)
    names = list(predictor.model.class_names)
    ref = np.asanyarray(nib.load(str(segmentation)).dataobj)
    pred_liver = np.asanyarray(nib.load(str(out / "liver.nii.gz")).dataobj) > 0
    lesion_map = np.asanyarray(nib.load(str(out / "lesion.nii.gz")).dataobj)
    lesion = lesion_map > 0
    comps, n_ref = ndimage.label(ref >= 2, structure=np.ones((3, 3, 3), bool))
    pred_comps, n_pred = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    types = np.asanyarray(nib.load(str(lesion_types)).dataobj) if lesion_types else None
    hit, typed, right = 0, 0, 0
    for i in range(1, n_ref + 1):
        m = comps == i
        overlap = m & lesion
        if not overlap.any():
            continue
        hit += 1
        if types is not None and result["classes"]:
            t = np.bincount(types[m][types[m] > 0]).argmax() if (types[m] > 0).any() else 0
            if t:
                typed += 1
                right += int(np.bincount(lesion_map[overlap]).argmax() == t)
    false = len(set(np.unique(pred_comps[lesion & ~(ref >= 2)])) - set(np.unique(pred_comps[lesion & (ref >= 2)])))
    figures = {
        "volume": str(volume),
        "model": predictor.model.model_path,
        "localiser": None if liver or predictor.localiser is None else predictor.localiser.model_path,
        "liver_given": str(liver) if liver else None,
        "lesion_gate": result.get("lesion_gate"),
        "liver_dice": round(_dice(pred_liver, ref >= 1), 4),
        "lesion_dice": round(_dice(lesion, ref >= 2), 4),
        "reference_lesions": int(n_ref),
        "detected": int(hit),
        "detection_recall": round(hit / n_ref, 4) if n_ref else None,
        "predicted_lesions": int(n_pred),
        "false_lesions": int(false),
        "typed_lesions": int(typed),
        "type_accuracy": round(right / typed, 4) if typed else None,
        "classes": names,
    }
    from monai_liver.atomic import write_text

    write_text(out / "check.json", json.dumps(figures, indent=2))
    return figures
