"""Score ``monai-liver infer`` on a volume with known masks: the end-to-end check of a model package.

Given a CT volume, its reference segmentation (0 background, 1 liver, 2 lesion: the LiTS
convention) and optionally the known type of every lesion (``lesiontypes-N.nii.gz`` of the LiTS-like
phantoms: 0, or 1 + k for type k), the figures on the input grid are:

- liver Dice (liver including lesions) and lesion Dice, over the whole volume;
- lesion detection recall: reference lesions (3D components, 26-connected) that overlap a
  predicted lesion, over all reference lesions; and the predicted lesions that overlap none;
- per-lesion type accuracy: over detected reference lesions with a known type, the share whose
  type (the most frequent label of ``lesion.nii.gz`` over the overlap) is the reference type.

:func:`reference_roi_dice` scores a ``lits_pretrain`` network alone, on the input it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["case_means", "case_text", "check_volume", "reference_roi_dice"]


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


def reference_roi_dice(model, image: str | Path, label: str | Path, batch: int = 16) -> dict:
    """``model`` (a loaded ``lits_pretrain`` network: background, liver, lesion) on ``image`` as it was
    trained and validated: a model of liver crops (``roi_margin`` >= 0) on every liver slice cropped to
    the reference liver of ``label`` (0, 1 liver, 2 lesion), a model of whole slices (the liver
    localiser) on every slice. Scored on the input grid:

    - ``liver_slices``, ``lesion_slices``: Dice per liver slice and per slice with a lesion (the
      definition of the bundle's validation: small liver tips at the ends of the liver weigh as
      much as its middle);
    - ``liver_case``, ``lesion_case``: Dice over the whole volume (LiTS's "Dice per case");
      ``lesion_case`` is None when the reference has no lesion.
    """
    from monai_liver.data.io import load_ct, load_mask
    from monai_liver.inference.predictor import predict_slices

    hu, affine = load_ct(image)
    ref = load_mask(label, reference_affine=affine, reference_shape=hu.shape)
    crops = model.roi_margin >= 0
    ks = [k for k in range(hu.shape[2]) if not crops or (ref[:, :, k] >= 1).any()]
    pred = np.zeros(hu.shape, np.uint8)
    for k, (prob, _) in zip(ks, predict_slices(model, hu, ref >= 1 if crops else None, ks, batch)):
        pred[:, :, k] = prob.argmax(0)
    liver, lesion = [], []
    for k in ks:
        if (ref[:, :, k] >= 1).any():
            liver.append(_dice(pred[:, :, k] >= 1, ref[:, :, k] >= 1))
        if (ref[:, :, k] >= 2).any():
            lesion.append(_dice(pred[:, :, k] >= 2, ref[:, :, k] >= 2))
    return {"liver_slices": liver, "lesion_slices": lesion, "liver_case": _dice(pred >= 1, ref >= 1),
            "lesion_case": _dice(pred >= 2, ref >= 2) if (ref >= 2).any() else None}


def case_means(scores: list[dict]) -> dict:
    """Means over volumes of :func:`reference_roi_dice` results: ``case_liver_dice`` (every volume),
    ``case_lesion_dice`` (the volumes with a reference lesion), ``cases``, ``lesion_cases``; the
    means are None over no volume."""
    lesion = [s["lesion_case"] for s in scores if s["lesion_case"] is not None]
    return {"case_liver_dice": float(np.mean([s["liver_case"] for s in scores])) if scores else None,
            "case_lesion_dice": float(np.mean(lesion)) if lesion else None,
            "cases": len(scores), "lesion_cases": len(lesion)}


def case_text(figures: dict) -> str:
    """``"liver Dice 0.958, lesion Dice 0.730 (3 volumes, 3 with a lesion)"`` from :func:`case_means`."""
    def num(v):
        return "-" if v is None else f"{v:.3f}"

    return (f"liver Dice {num(figures.get('case_liver_dice'))}, lesion Dice {num(figures.get('case_lesion_dice'))} "
            f"({figures.get('cases', 0)} volumes, {figures.get('lesion_cases', 0)} with a lesion)")
