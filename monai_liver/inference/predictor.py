"""The one volume predictor: liver-then-lesion cascade over the axial slices of a CT volume.

Used by ``monai-liver infer``, the MONAI Label app and the export parity test. For a volume
(X, Y, Z) in HU, RAS (a 2D image is Z = 1):

1. **liver** (stage 1), unless a liver mask is given: the localiser (the package's
   ``liver_model.pt``: the lits_pretrain network trained on whole LiTS slices, ``roi_margin`` -1)
   on every whole slice, kept inside the body (HU > ``BODY_HU``), largest 3D connected component.
   A localiser trained on liver crops (``roi_margin`` >= 0), or the strategy model itself when there
   is no localiser, runs a second time on each slice's liver ROI (the input it was trained on); this
   is the weaker choice, and ``liver_source`` says which was used.
2. **slices**: a 3D volume keeps the slices whose liver covers at least ``min_liver_mm2``; a 2D
   image is always processed.
3. **lesions** (stage 2): the strategy model on each kept slice's liver ROI, preprocessed exactly
   like its training slices (HU window, crop with the ROI margin, resize of the longest side to
   ``image_size``, pad to a square: MONAI transforms), its probabilities averaged over the four flips
   of each slice (``flip_average``, :data:`FLIP_AVERAGE`; the gate of step 4 too) and mapped back to
   the slice grid by MONAI's ``Invertd``. Slices go through the network in batches.
4. **lesion gate** (3D volumes, when the package has ``lesion_model.pt``): the lits_pretrain network
   (trained on LiTS liver crops, slices with and without lesions) on the same ROIs. A lesion of stage
   2 (3D component) stays when the gate confirms it, and then takes the shape of the gate's component
   that it touches, or when stage 2 is sure of it (mean lesion probability over the component at least
   ``sure_lesion``, :data:`SURE_LESION`); the rest becomes liver. Lesions are typed by stage 2 (the
   joint model's type probabilities). Why: the strategy models are trained on typed slices, each of
   which holds a lesion, so on a volume they mark a lesion on almost every liver slice; the gate,
   trained on volumes, knows where lesions are not. It does not know every type: on a study stacked
   from typed slices (:mod:`monai_liver.data.typed_study`) the demo's gate found 8 of the 29 lesions
   stage 2 found (2D lesion Dice 0.13 on those slices), hence the second way in. Measured on the
   demo's held-out LiTS-like volumes (joint-lits package), stage 2's false lesions had a mean lesion
   probability of 0.52-0.68 (one of 3 voxels 0.82), its true ones on the typed study 0.60-0.95, most
   above 0.75 (README, "A model you can run on a new scan"). The other way round, a lesion of the gate
   that stage 2 did not mark stays when the gate is sure of it (mean gate lesion probability over its
   component at least ``sure_gate``, :data:`SURE_GATE`): on an earlier demo's held-out volume-5 stage 2 missed
   the largest lesion (754 voxels, its lesion probability at most 0.40 there) which the gate found
   (mean 0.83); with 0.85 that volume's lesion Dice went from 0.02 to 0.65 with no new false lesion,
   and on six independent LiTS-like volumes (seed 1, seen by no model) nothing changed, while 0.8 and
   0.7 added false lesions there and on the typed study (README). A 2D image is not gated: it is the
   typed slices' own domain. When stage 1 found the liver (not a given mask), the gate also trims it
   (``trim_liver``): a voxel of a processed slice that the gate calls background leaves the liver,
   then the largest 3D component is kept. Why: the whole-slice localiser at 96 px took fluid-filled
   bowel beside the liver (8-29 HU) for liver, and stage 2, sure of it, for cysts: on the demo's six
   fresh volumes seven of the eight false lesions lay outside the reference liver. The gate sees
   the liver ROI at the strategy's resolution; the trim took those false lesions from 8 to 1 there and
   raised liver Dice from 0.937 to 0.957 (README, "A model you can run on a new scan"). A given liver
   is the user's, and is kept whole.

The label map: 0 outside the liver of stage 1 (or the given mask) or the body, 1 liver, 2 lesion
(2 + k: lesion of type k for the joint model) where stage 2's argmax is a lesion. Keeping stage 2's
lesions inside stage 1's liver halved the false lesions on the demo's held-out LiTS-like volumes
and raised lesion Dice from 0.26 to 0.38 (README, "A model you can run on a new scan").

Per-lesion figures are 3D connected components (:func:`lesion_components`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from monai_liver.inference.model import LoadedModel

#: lesions smaller than this (mm3; a sphere of 3.4 mm across) are dropped: below what a CT report calls a
#: lesion, and on the demo's held-out volumes they were almost all single false voxels (README)
MIN_LESION_MM3 = 20.0

#: mean stage-2 lesion probability over a lesion (3D component) above which the lesion gate keeps it
#: unconfirmed (module doc, step 4)
SURE_LESION = 0.75

#: mean lesion probability of the lesion gate over one of its lesions above which the lesion stays
#: although stage 2 did not mark it (module doc, step 4)
SURE_GATE = 0.85

#: stage 2 and the lesion gate average their probabilities over the four flips of each slice (the
#: flips the bundles train with). Measured with two demos' joint-lits packages (README, "A model you
#: can run on a new scan"): fewer false lesions (4 -> 1 and 7 -> 1 over the held-out volumes, the
#: typed study and six fresh volumes) and lesion Dice up on every LiTS-like volume set, for four
#: network passes over the liver slices instead of one
FLIP_AVERAGE = True

#: HU above which a pixel is body (air is about -1000 HU, lung about -850, fat about -100): the liver
#: and its lesions are looked for inside the body only, so air never becomes a false lesion
BODY_HU = -500.0

__all__ = ["BODY_HU", "FLIP_AVERAGE", "MIN_LESION_MM3", "SURE_GATE", "SURE_LESION", "Predictor", "VolumePrediction", "lesion_components", "max_diameter_mm", "study_summary"]


@dataclass
class VolumePrediction:
    """Masks and probabilities of one volume (X, Y, Z) in RAS."""

    liver: np.ndarray  #: bool (X, Y, Z), liver including lesions
    lesion: np.ndarray  #: bool (X, Y, Z)
    slices: list[int]  #: processed slice indices
    type_prob: dict[int, np.ndarray] = field(default_factory=dict)  #: k -> (K, X, Y) float16 (joint)
    slice_prob: dict[int, np.ndarray] = field(default_factory=dict)  #: k -> (K,) slice class probabilities
    label: np.ndarray | None = None  #: uint8 (X, Y, Z): stage-2 argmax (0, 1, 2 [+ k])
    liver_source: str = ""  #: how the liver ROI was found
    lesion_gate: str = ""  #: the lesion gate's model file, when it gated this volume (module doc, step 4)


def _chain(model: LoadedModel):
    """The evaluation chain of :mod:`monai_liver.transforms` keyed on a given ROI (``"roi"``)
    instead of the training label map: window, ROI crop + margin, resize the longest side, pad."""
    from monai.transforms import Compose, CropForegroundd, Resized, ScaleIntensityRanged, SpatialPadd

    from monai_liver.transforms import foreground_or_all

    s = int(model.image_size)
    lo, hi = model.window
    crop = [CropForegroundd("image", source_key="roi", select_fn=foreground_or_all, margin=int(model.roi_margin),
                            allow_smaller=True)] if model.roi_margin >= 0 else []  # < 0: trained on whole slices
    return Compose([
        ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        *crop,
        Resized("image", spatial_size=s, size_mode="longest", mode="bilinear", anti_aliasing=True),
        SpatialPadd("image", spatial_size=(s, s)),
    ])


def predict_slices(model: LoadedModel, hu: np.ndarray, roi: np.ndarray | None, ks: Sequence[int], batch: int = 16,
                   flip_average: bool = False):
    """For slices ``ks`` of ``hu`` (X, Y, Z): per slice (probabilities (C, X, Y) float32 on the slice
    grid, class probabilities (K,) or None), each slice cropped to ``roi`` (X, Y, Z) bool; ``None``:
    whole slices. ``flip_average``: probabilities averaged over the four flips of the input."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    chain = _chain(model)
    inv = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False, to_tensor=True)
    whole = torch.ones((1, *hu.shape[:2]), dtype=torch.bool)
    out = []
    for start in range(0, len(ks), batch):
        part = list(ks[start : start + batch])
        items = [chain({"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(hu[:, :, k], dtype=np.float32))[None]),
                        "roi": whole if roi is None else torch.from_numpy(np.ascontiguousarray(roi[:, :, k]))[None]})
                 for k in part]
        x = torch.stack([d["image"].as_tensor() for d in items]).to(model.device)
        seg, cls = _probabilities(model.net, x, flip_average)
        for j, d in enumerate(items):
            d["pred"] = MetaTensor(seg[j], meta=d["image"].meta, applied_operations=d["image"].applied_operations)
            prob = inv(d)["pred"]
            prob = prob.as_tensor().numpy() if hasattr(prob, "as_tensor") else np.asarray(prob)
            out.append((prob, None if cls is None else cls[j]))
    return out


def _probabilities(net, x, flip_average: bool):
    """Softmax of the network's segmentation (B, C, H, W) and of its class logits (B, K), or None,
    for ``x`` (B, 1, H, W); ``flip_average``: the mean over the four flips of the two image axes
    (:func:`monai_liver.engine.inferer.flip_averaged_probabilities`)."""
    import torch

    from monai_liver.engine.inferer import FLIPS, flip_averaged_probabilities

    with torch.no_grad():
        prob = flip_averaged_probabilities(net, x, FLIPS if flip_average else ((),))
    return prob["seg"].cpu(), None if prob["cls"] is None else prob["cls"].cpu().numpy()


def _drop_small_lesions(label: np.ndarray, min_voxels: float) -> None:
    """Set lesion components (label >= 2, 26-connected) of fewer than ``min_voxels`` voxels to liver (1), in place."""
    from scipy import ndimage

    if min_voxels <= 1:
        return
    comps, n = ndimage.label(label >= 2, structure=np.ones((3, 3, 3), bool))
    if n:
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        small = sizes < min_voxels
        small[0] = False
        label[small[comps]] = 1


def _component_means(components: np.ndarray, n: int, prob: dict[int, np.ndarray]) -> np.ndarray:
    """Mean of ``prob`` (slice k -> (X, Y)) over each of the ``n`` labelled ``components`` (X, Y, Z),
    summed slice by slice: (n + 1,), index 0 the background."""
    if not n:
        return np.zeros(1)
    total = sum(np.bincount(components[:, :, k].ravel(), weights=p.ravel().astype(np.float64), minlength=n + 1)
                for k, p in prob.items())
    return total / np.maximum(np.bincount(components.ravel(), minlength=n + 1), 1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from monai.transforms import KeepLargestConnectedComponent

    if not mask.any():
        return mask
    return np.asarray(KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=None)(
        mask[None].astype(np.uint8)))[0].astype(bool)


@dataclass
class Predictor:
    """Stage 1 (``localiser``) and stage 2 (``model``) of the module doc.

    Args:
        model: the strategy model (joint, ynet, seg_baseline or lits_pretrain).
        localiser: a lits_pretrain model for the liver; None: ``model`` finds the liver itself.
        lesion_gate: a lits_pretrain model trained on liver crops (module doc, step 4); None: no gate.
        sure_lesion: the gate keeps a lesion it does not confirm when stage 2's mean lesion
            probability over it is at least this (module doc, step 4; above 1: never).
        sure_gate: the gate keeps a lesion of its own that stage 2 did not mark when its mean lesion
            probability over it is at least this (module doc, step 4; above 1: never).
        min_liver_mm2: 3D volumes: slices with less predicted liver are not processed.
        min_lesion_mm3: lesions (3D components) smaller than this become liver (0: keep all).
        batch: slices per network call.
        flip_average: stage 2 and the gate average their probabilities over the four flips of each
            slice (:data:`FLIP_AVERAGE`; the localiser does not).
        trim_liver: the gate trims stage 1's liver to what it calls liver or lesion (module doc,
            step 4; never a given liver).
    """

    model: LoadedModel
    localiser: LoadedModel | None = None
    lesion_gate: LoadedModel | None = None
    sure_lesion: float = SURE_LESION
    sure_gate: float = SURE_GATE
    min_liver_mm2: float = 100.0
    min_lesion_mm3: float = MIN_LESION_MM3
    batch: int = 16
    flip_average: bool = FLIP_AVERAGE
    trim_liver: bool = True

    def find_liver(self, hu: np.ndarray) -> tuple[np.ndarray, str]:
        """Stage 1: liver mask (X, Y, Z) bool and a sentence saying how it was found."""
        loc = self.localiser or self.model
        ks = range(hu.shape[2])
        body = hu > BODY_HU
        first = np.stack([p.argmax(0) >= 1 for p, _ in predict_slices(loc, hu, None, ks, self.batch)], -1)
        coarse = _largest_component(first & body)
        liver = coarse
        if loc.roi_margin >= 0:  # a model trained on liver crops: once more on its own ROI
            keep = [k for k in ks if coarse[:, :, k].any()]
            liver = np.zeros(hu.shape, bool)
            for k, (p, _) in zip(keep, predict_slices(loc, hu, coarse, keep, self.batch)):
                liver[:, :, k] = p.argmax(0) >= 1
            liver = _largest_component(liver & body)
        who = (f"liver localiser {self.localiser.model_path}" if self.localiser is not None else
               f"the {self.model.strategy} model itself (no liver localiser; it was trained on liver crops only)")
        how = "whole slices, then the liver ROI" if loc.roi_margin >= 0 else "whole slices"
        return liver, f"predicted by the {who}: {how}, largest 3D component inside the body"

    def __call__(self, hu: np.ndarray, affine: np.ndarray, liver: np.ndarray | None = None) -> VolumePrediction:
        """Masks of ``hu`` (X, Y, Z HU, RAS) on its own grid; ``liver``: a given ROI (skips stage 1)."""
        shape = hu.shape
        px_mm2 = float(np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 1]))
        if liver is None:
            liver, source = self.find_liver(hu)
        else:
            liver, source = np.asarray(liver) > 0, "given"
        ks = [0] if shape[2] == 1 else [k for k in range(shape[2]) if liver[:, :, k].sum() * px_mm2 >= self.min_liver_mm2]
        label = np.zeros(shape, np.uint8)
        pred = VolumePrediction(np.zeros(shape, bool), np.zeros(shape, bool), ks, label=label, liver_source=source)
        gated = self.lesion_gate is not None and shape[2] > 1
        lesion_prob: dict[int, np.ndarray] = {}  # k -> (X, Y) stage-2 lesion probability, for the gate
        for k, (prob, cls) in zip(ks, predict_slices(self.model, hu, liver, ks, self.batch, self.flip_average)):
            label[:, :, k] = prob.argmax(0)
            lesion = prob[2:].sum(0, keepdims=True)
            if gated:
                lesion_prob[k] = lesion[0].astype(np.float16)
            if self.model.strategy == "joint":
                pred.type_prob[k] = (prob[2:] / np.maximum(lesion, 1e-8)).astype(np.float16)
            if cls is not None:
                pred.slice_prob[k] = cls
        # the liver is stage 1's (or the given mask); stage 2 says where its lesions are
        label[:] = np.where(liver & (hu > BODY_HU), np.maximum(label, 1), 0)
        voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
        min_voxels = self.min_lesion_mm3 / max(voxel_mm3, 1e-9)
        _drop_small_lesions(label, min_voxels)
        if gated:
            self._gate(hu, liver, ks, label, pred, min_voxels, lesion_prob, trim_liver=self.trim_liver and source != "given")
            _drop_small_lesions(label, min_voxels)  # pieces of a lesion that the trim cut
        pred.liver[:] = label >= 1
        pred.lesion[:] = label >= 2
        return pred

    def _gate(self, hu: np.ndarray, liver: np.ndarray, ks: list[int], label: np.ndarray, pred: VolumePrediction,
              min_voxels: float, lesion_prob: dict[int, np.ndarray], trim_liver: bool = False) -> None:
        """Step 4 of the module doc, in place on ``label``: the gate's lesion components that overlap
        stage 2's lesions, and stage 2's lesions it is sure of (``lesion_prob``: slice k -> (X, Y)
        stage-2 lesion probability), become the lesions (type 2 + k from the joint type
        probabilities), the rest liver."""
        from scipy import ndimage

        gate = np.zeros(label.shape, np.uint8)
        gate_prob: dict[int, np.ndarray] = {}  # k -> (X, Y) the gate's lesion probability
        for k, (prob, _) in zip(ks, predict_slices(self.lesion_gate, hu, liver, ks, self.batch, self.flip_average)):
            gate[:, :, k] = prob.argmax(0)
            gate_prob[k] = prob[2].astype(np.float16)
        if trim_liver:
            outside = np.zeros(label.shape, bool)
            outside[:, :, ks] = gate[:, :, ks] == 0
            label[outside] = 0
            label[~_largest_component(label >= 1)] = 0
            pred.liver_source += "; trimmed by the lesion gate"
        gate[label == 0] = 0
        _drop_small_lesions(gate, min_voxels)
        connect = np.ones((3, 3, 3), bool)
        comps, m = ndimage.label(gate >= 2, structure=connect)
        kept = np.isin(comps, np.unique(comps[(label >= 2) & (comps > 0)]))
        kept |= np.isin(comps, np.flatnonzero(_component_means(comps, m, gate_prob)[1:] >= self.sure_gate) + 1)
        stage2, n = ndimage.label(label >= 2, structure=connect)
        kept |= np.isin(stage2, np.flatnonzero(_component_means(stage2, n, lesion_prob)[1:] >= self.sure_lesion) + 1)
        lesion_value = np.full(label.shape, 2, np.uint8)
        for k, t in pred.type_prob.items():
            lesion_value[:, :, k] = 2 + t.argmax(0)
        label[:] = np.where(kept, lesion_value, np.minimum(label, 1))
        pred.lesion_gate = self.lesion_gate.model_path


# ------------------------------------------------------------------------------------------ lesions


def max_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between the centres of two voxels of ``mask`` (X, Y, Z), through ``affine``."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    edge = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(edge if edge.any() else mask).astype(float)
    if len(pts) < 2:
        return 0.0
    world = pts @ np.asarray(affine)[:3, :3].T
    if len(world) > 64:
        try:  # the farthest pair lies on the convex hull; "QJ" copes with flat (one-slice) lesions
            world = world[ConvexHull(world, qhull_options="QJ").vertices]
        except Exception:
            pass
    return float(pdist(world).max())


def lesion_components(
    pred: VolumePrediction, affine: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, list[dict]]:
    """(component labels (X, Y, Z) int32, one dict per lesion). Components are 26-connected (3D; in
    a 2D image 8-connected), numbered by size, largest first. Written with scipy because MONAI has
    no labelling transform that returns every component."""
    from scipy import ndimage

    labels, n = ndimage.label(pred.lesion, structure=np.ones((3, 3, 3), bool))
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1)) if n else []
    order = np.argsort(-np.asarray(sizes), kind="stable") + 1
    relabel = np.zeros(n + 1, np.int32)
    relabel[order] = np.arange(1, n + 1)
    labels = relabel[labels]
    k_cls = len(class_names)
    lesions = []
    for i in range(1, n + 1):
        m = labels == i
        idx = np.argwhere(m)
        ks = sorted({int(k) for k in idx[:, 2]})
        prob = None
        if pred.type_prob:
            acc, cnt = np.zeros(k_cls), 0
            for k in ks:
                sl = m[:, :, k]
                acc += pred.type_prob[k][:, sl].astype(float).sum(1)
                cnt += int(sl.sum())
            prob = acc / max(cnt, 1)
        elif pred.slice_prob:
            w = np.array([m[:, :, k].sum() for k in ks], float)
            prob = (np.stack([pred.slice_prob[k] for k in ks]) * w[:, None]).sum(0) / w.sum()
        centre = np.asarray(affine) @ np.append(idx.mean(0), 1.0)
        d = {
            "id": i,
            "voxels": int(len(idx)),
            "volume_ml": round(len(idx) * voxel_ml, 4),
            "max_diameter_mm": round(max_diameter_mm(m, affine), 2),
            "slices": ks,
            "centroid_mm_ras": [round(float(c), 2) for c in centre[:3]],
        }
        if prob is not None:
            d["class"] = class_names[int(np.argmax(prob))]
            d["class_probabilities"] = {c: round(float(p), 4) for c, p in zip(class_names, prob)}
        lesions.append(d)
    return labels, lesions


def study_summary(pred: VolumePrediction, class_names: Sequence[str]) -> dict:
    """Study-level class fields (the MONAI Label app's response): the vote of all predicted lesion
    voxels (joint: their type probabilities summed), its winner and share, the voxels per label,
    and one entry per slice with lesion. Class fields are None when no lesion voxel was predicted."""
    total = np.zeros(len(class_names))
    per_slice = []
    for k in pred.slices:
        les = pred.lesion[:, :, k]
        if not les.any() or k not in pred.type_prob:
            continue
        mass = pred.type_prob[k][:, les].astype(float).sum(1)
        total += mass
        frac = mass / max(mass.sum(), 1e-30)
        c = int(np.argmax(frac))
        per_slice.append({"slice": int(k), "lesion_class": class_names[c],
                          "lesion_probability": round(float(frac[c]), 4), "lesion_voxels": int(les.sum())})
    lesion_voxels = int(pred.lesion.sum())
    if lesion_voxels and total.sum() > 0:
        vote = total / total.sum()
        c = int(np.argmax(vote))
        cls, p = class_names[c], round(float(vote[c]), 4)
        probs = {name: round(float(v), 4) for name, v in zip(class_names, vote)}
    else:
        cls, p, probs = None, None, {name: None for name in class_names}
    label = pred.label if pred.label is not None else (pred.liver.astype(np.uint8) + pred.lesion)
    counts = np.bincount(label.ravel(), minlength=2 + len(class_names))
    return {
        "lesion_class": cls,
        "lesion_probability": p,
        "class_probabilities": probs,
        "lesion_voxels": lesion_voxels,
        "liver_voxels": int(counts[1]),
        "voxels_per_class": {name: int(counts[2 + i]) for i, name in enumerate(class_names)},
        "slices_segmented": len(pred.slices),
        "liver_source": pred.liver_source,
        "lesion_slices": per_slice,
    }
