"""``monai-liver infer``: segment and classify liver lesions on a new CT (NIfTI, DICOM file or series).

Pipeline for an input volume (X, Y, Z) (a 2D file is Z = 1), read by
:func:`monai_liver.data.io.load_ct` (RAS canonical, HU):

1. **liver ROI**: a liver mask given with ``--liver`` (aligned by geometry), else the network's own
   liver prediction on whole slices (first pass, like ``inference_transforms``), largest 3D
   connected component;
2. **slices**: for 3D input only slices whose liver covers at least ``min_liver_mm2`` are kept (a 2D
   input is always processed);
3. **second pass** on each kept slice, preprocessed exactly like the training slices (window,
   liver-ROI crop with ``ROI_MARGIN``, resize longest side, pad; MONAI transforms), with the
   probabilities mapped back to the slice by MONAI's ``Invertd``;
4. **lesions**: 3D connected components (26-connected) of the lesion mask; per lesion its class
   probabilities (joint: mean pixel-wise type probability; ynet: the slice classifier weighted by
   lesion pixels), volume in ml and maximum diameter in mm (largest distance between voxel centres).

Outputs in ``--out`` (masks on the input's grid: same shape and affine as a NIfTI input; for DICOM,
the RAS grid of :func:`~monai_liver.data.io.load_ct`):

- ``lesion.nii.gz``: 0 background, 1..K lesion of type k (1-based index into the class names, the
  manifest convention), or 1 for a bundle without classes; ``liver.nii.gz``: 0/1 (liver incl. lesions);
- ``result.json``: inputs, classes, per-slice and per-lesion figures;
- ``overlays/slice_<k>.png``: CT with liver (blue) and lesion outlines (coloured by type);
- ``seg.dcm`` (``--dicom-seg``, DICOM input only): a DICOM SEG with one segment for the liver and
  one per lesion type, referencing the input series (highdicom).

Nothing here makes a claim about accuracy: a model trained on phantoms is not a clinical tool.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_liver.constants import DEFAULT_CLASSES, HU_WINDOW, PRETRAIN_STRATEGY
from monai_liver.errors import LiverError

__all__ = ["LoadedModel", "load_bundle_model", "predict_volume", "lesion_components", "infer", "add_arguments", "main"]

#: strategies whose network segments (infer needs a liver and a lesion mask)
SEGMENTING = ("joint", "ynet", "seg_baseline", PRETRAIN_STRATEGY)
_TYPE_COLOURS = ("#00c8ff", "#ff40ff", "#ff3030", "#ffd000", "#40ff40", "#ff8000")


@dataclass
class LoadedModel:
    """A trained bundle network ready for inference. ``net(x)`` -> ``{"seg", "cls"}`` (cls may be None)."""

    net: object
    strategy: str
    class_names: tuple[str, ...]
    image_size: int
    window: tuple[float, float] = HU_WINDOW
    device: str = "cpu"
    bundle: str = ""
    model_path: str = ""
    torchscript: bool = False


class _DictOutput:
    """A TorchScript export (``TensorOutput``: seg logits) seen as a strategy network (dict output)."""

    def __init__(self, module, strategy: str):
        self.module, self.strategy = module, strategy

    def __call__(self, x):
        from monai_liver.networks.joint import joint_vote_logits

        seg = self.module(x)
        return {"seg": seg, "cls": joint_vote_logits(seg) if self.strategy == "joint" else None}


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_bundle_model(
    bundle: str | Path,
    model: str | Path | None = None,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """Read ``<bundle>/configs/inference.json`` (``strategy``, ``class_names``, ``image_size``,
    ``network_def``) and load ``model`` (default ``<bundle>/models/model.pt``; a checkpoint
    ``{"model": state_dict}`` or a TorchScript file from ``monai-liver export``). ``image_size``
    overrides the config's: use the size the model was trained with (``--image_size`` of training).

    Raises LiverError for a missing bundle / model, a bundle that does not segment, or a checkpoint
    that does not fit the bundle's network (e.g. one trained by another bundle).
    """
    import torch
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    cfg = bundle / "configs" / "inference.json"
    if not cfg.is_file():
        raise LiverError(f"{bundle}: not a bundle (no configs/inference.json)")
    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
    except Exception as e:
        raise LiverError(f"{cfg}: not a readable bundle config ({e})") from None
    parser["bundle_root"] = str(bundle)
    strategy = str(parser.get("strategy", bundle.name))
    if strategy not in SEGMENTING:
        raise LiverError(f"{bundle}: infer needs a bundle that segments ({', '.join(SEGMENTING)}); '{strategy}' only classifies slices")
    if class_names:
        parser["class_names"] = list(class_names)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = Path(model) if model else bundle / "models" / "model.pt"
    if not model.is_file():
        raise LiverError(f"{model}: no trained model found (train the bundle, or pass --model <model.pt>)")
    # what the checkpoint says it was trained with wins over the bundle's defaults; a contradicting flag is an error
    from monai_liver.engine.handlers import checkpoint_settings

    torchscript = _is_torchscript(model)
    settings = {} if torchscript else checkpoint_settings(model)
    if settings.get("backbone"):
        parser["backbone"] = settings["backbone"]
    if settings.get("class_names") and not class_names:
        parser["class_names"] = list(settings["class_names"])
    trained = settings.get("image_size")
    if image_size is not None and trained and int(image_size) != int(trained):
        raise LiverError(f"{model}: trained at image size {trained}, not {image_size}; leave the size out to use the model's")
    names = tuple(parser.get_parsed_content("class_names")) if "class_names" in parser else tuple(DEFAULT_CLASSES)
    if image_size is None:
        image_size = trained or (int(parser.get_parsed_content("image_size")) if "image_size" in parser else 128)
    if int(image_size) < 32 or int(image_size) % 32:
        raise LiverError(f"image size {image_size}: must be a multiple of 32 (the encoder downsamples 5 times)")
    if torchscript:
        try:
            module = torch.jit.load(str(model), map_location=dev).eval()
        except Exception as e:
            raise LiverError(f"{model}: not a loadable TorchScript model ({type(e).__name__})") from None
        return LoadedModel(_DictOutput(module, strategy), strategy, names, image_size, HU_WINDOW, dev, str(bundle), str(model), True)
    try:
        net = parser.get_parsed_content("network_def")
    except Exception as e:
        raise LiverError(f"{cfg}: cannot build network_def ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    from monai_liver.engine.handlers import load_model
    from monai_liver.networks.wrapper import TensorOutput

    if isinstance(net, TensorOutput):
        net = net.net  # the dict output (segmentation and class logits)
    load_model(net, model, map_location="cpu")
    net = net.to(dev).eval()
    return LoadedModel(net, strategy, names, image_size, HU_WINDOW, dev, str(bundle), str(model), False)


# --------------------------------------------------------------------------------------- prediction


@dataclass
class VolumePrediction:
    """Masks and probabilities of one volume (X, Y, Z) in RAS."""

    liver: np.ndarray  #: bool (X, Y, Z)
    lesion: np.ndarray  #: bool (X, Y, Z)
    slices: list[int]  #: processed slice indices
    type_prob: dict[int, np.ndarray] = field(default_factory=dict)  #: k -> (K, X, Y) float16 (joint)
    slice_prob: dict[int, np.ndarray] = field(default_factory=dict)  #: k -> (K,) slice class probabilities


def _chain(model: LoadedModel):
    from monai.transforms import Compose, CropForegroundd, Resized, ScaleIntensityRanged, SpatialPadd

    from monai_liver.transforms import ROI_MARGIN, foreground_or_all

    s = int(model.image_size)
    lo, hi = model.window
    # the evaluation chain of monai_liver.transforms (window, liver-ROI crop + margin, resize the
    # longest side, pad to a square), keyed on a given ROI instead of the training label map
    return Compose([
        ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd("image", source_key="roi", select_fn=foreground_or_all, margin=ROI_MARGIN, allow_smaller=True),
        Resized("image", spatial_size=s, size_mode="longest", mode="bilinear", anti_aliasing=True),
        SpatialPadd("image", spatial_size=(s, s)),
    ])


def _predict_slices(model: LoadedModel, hu: np.ndarray, roi: np.ndarray, ks: Sequence[int], batch: int = 8):
    """For slices ``ks`` of ``hu`` (X, Y, Z): (probabilities (C, X, Y) on the slice grid, class
    probabilities (K,) or None) per slice, ROI-cropped by ``roi`` (X, Y, Z) bool."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    chain = _chain(model)
    inv = Invertd("pred", transform=chain, orig_keys="image", nearest_interp=False, to_tensor=True)
    out = []
    for start in range(0, len(ks), batch):
        part = list(ks[start : start + batch])
        items = [chain({"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(hu[:, :, k]))[None]),
                        "roi": torch.from_numpy(np.ascontiguousarray(roi[:, :, k]))[None]}) for k in part]
        x = torch.stack([d["image"].as_tensor() for d in items]).to(model.device)
        with torch.no_grad():
            pred = model.net(x)
        seg = torch.softmax(pred["seg"].float(), dim=1).cpu()
        cls = torch.softmax(pred["cls"].float(), dim=1).cpu().numpy() if pred.get("cls") is not None else None
        for j, d in enumerate(items):
            d["pred"] = MetaTensor(seg[j], meta=d["image"].meta, applied_operations=d["image"].applied_operations)
            prob = inv(d)["pred"]
            prob = prob.as_tensor().numpy() if hasattr(prob, "as_tensor") else np.asarray(prob)
            out.append((prob, None if cls is None else cls[j]))
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from monai.transforms import KeepLargestConnectedComponent

    if not mask.any():
        return mask
    return np.asarray(KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=None)(
        mask[None].astype(np.uint8)))[0].astype(bool)


def predict_volume(
    model: LoadedModel,
    hu: np.ndarray,
    affine: np.ndarray,
    liver: np.ndarray | None = None,
    min_liver_mm2: float = 100.0,
) -> VolumePrediction:
    """Liver and lesion masks of ``hu`` (X, Y, Z HU, RAS) on its grid; see the module doc."""
    shape = hu.shape
    px_mm2 = float(np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 1]))
    if liver is None:  # first pass: whole slices
        first = _predict_slices(model, hu, np.ones(shape, bool), range(shape[2]))
        liver = np.stack([p.argmax(0) >= 1 for p, _ in first], axis=-1)
        liver = _largest_component(liver)
    else:
        liver = np.asarray(liver) > 0
    if shape[2] == 1:
        ks = [0]
    else:
        ks = [k for k in range(shape[2]) if liver[:, :, k].sum() * px_mm2 >= min_liver_mm2]
    pred = VolumePrediction(np.zeros(shape, bool), np.zeros(shape, bool), ks)
    for k, (prob, cls) in zip(ks, _predict_slices(model, hu, liver, ks)):
        arg = prob.argmax(0)
        pred.liver[:, :, k] = arg >= 1
        pred.lesion[:, :, k] = arg >= 2
        if model.strategy == "joint":
            t = prob[2:]
            pred.type_prob[k] = (t / np.maximum(t.sum(0, keepdims=True), 1e-8)).astype(np.float16)
        if cls is not None:
            pred.slice_prob[k] = cls
    return pred


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


# ------------------------------------------------------------------------------------------- output


def _save_like_input(data: np.ndarray, affine: np.ndarray, input_path: Path, out: Path) -> Path:
    """Save ``data`` (RAS canonical grid of :func:`load_ct`) as NIfTI on the input's own grid: a NIfTI
    input's orientation, shape (2D stays 2D) and affine; a DICOM input's RAS grid."""
    import nibabel as nib
    from nibabel.orientations import io_orientation, ornt_transform

    from monai_liver.data.io import is_nifti

    img = nib.Nifti1Image(data, affine)
    if input_path.is_file() and is_nifti(input_path):
        orig = nib.load(str(input_path))
        t = ornt_transform(io_orientation(affine), io_orientation(orig.affine))
        img = img.as_reoriented(t)
        arr = np.asanyarray(img.dataobj)
        if arr.size == int(np.prod(orig.shape)):
            arr = arr.reshape(orig.shape)
        if not np.allclose(img.affine, orig.affine, atol=1e-3):
            raise LiverError(f"{input_path}: could not put the output back on the input's grid")  # not expected
        img = nib.Nifti1Image(arr, orig.affine)
        img.set_qform(orig.affine, code=int(orig.header["qform_code"]) or 1)
        img.set_sform(orig.affine, code=int(orig.header["sform_code"]) or 1)
    img.set_data_dtype(np.uint8)
    nib.save(img, str(out))
    return out


def _overlay(hu2d, liver2d, labels2d, lesion_types: dict[int, int], class_names, title: str, out: Path, window) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    view = lambda a: np.asarray(a)[::-1].T  # noqa: E731  radiological view (RAS x flipped), with origin="lower"
    fig = Figure(figsize=(5, 5.4), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.imshow(view(hu2d), cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
    if liver2d.any():
        ax.contour(view(liver2d), levels=[0.5], colors="#3070ff", linewidths=1.0, origin="lower")
    handles = [Line2D([], [], color="#3070ff", label="liver")]
    seen = set()
    for lab in [v for v in np.unique(labels2d) if v > 0]:
        t = lesion_types.get(int(lab), -1)
        colour = _TYPE_COLOURS[t % len(_TYPE_COLOURS)] if t >= 0 else "#ff3030"
        ax.contour(view(labels2d == lab), levels=[0.5], colors=colour, linewidths=1.4, origin="lower")
        name = class_names[t] if t >= 0 else "lesion"
        if name not in seen:
            seen.add(name)
            handles.append(Line2D([], [], color=colour, label=name))
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.6)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    return out


def _dicom_sources(path: Path, affine: np.ndarray) -> list[tuple[object, int]]:
    """(pydicom dataset with pixels, slice index k of the RAS grid) for each image of a DICOM input."""
    import pydicom

    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    inv = np.linalg.inv(affine)
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception:
            continue
        if "PixelData" not in ds or "ImagePositionPatient" not in ds:
            continue
        lps = np.asarray([float(v) for v in ds.ImagePositionPatient])
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        out.append((ds, int(round(float((inv @ ras)[2])))))
    return out


def _write_dicom_seg(sources, liver: np.ndarray, labels: np.ndarray, lesion_types: dict[int, int],
                     class_names: Sequence[str], affine: np.ndarray, out: Path) -> Path:
    """DICOM SEG (BINARY) over the input series: segment 1 liver, 2.. one per lesion type (or
    "Lesion"). Each source frame gets the mask resampled onto its own pixel grid (nearest)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from monai_liver import __version__
    from monai_liver.data.io import resample_nearest

    types = sorted({t for t in lesion_types.values()})
    seg_of_type = {t: j + 2 for j, t in enumerate(types)}
    labelmap = liver.astype(np.uint8)
    for lab, t in lesion_types.items():
        labelmap[labels == lab] = seg_of_type[t]
    frames, datasets = [], []
    for ds, _ in sources:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ps = [float(v) for v in ds.PixelSpacing]
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        normal = np.cross(iop[:3], iop[3:])
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = iop[:3] * ps[1], iop[3:] * ps[0], normal, ipp
        frame_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # (col, row, 0) index -> RAS mm
        f = resample_nearest(labelmap, affine, frame_affine, (int(ds.Columns), int(ds.Rows), 1))[:, :, 0].T
        frames.append(f)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty value (seen in real series): highdicom rejects it, absent = default
        datasets.append(ds)
    algo = hd.AlgorithmIdentificationSequence(name="monai_liver", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    lesion_code = {"cyst": codes.SCT.Cyst, "hemangioma": codes.SCT.Hemangioma}
    descs = [hd.seg.SegmentDescription(1, "Liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver,
                                       hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algo)]
    for t in types:
        name = class_names[t] if t >= 0 else "Lesion"
        descs.append(hd.seg.SegmentDescription(seg_of_type[t], name, codes.SCT.MorphologicallyAbnormalStructure,
                                               lesion_code.get(name, codes.SCT.Lesion),
                                               hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algo))
    pixel = np.stack(frames).astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=pixel, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="monai_liver", manufacturer_model_name="monai_liver",
            software_versions=__version__, device_serial_number="0", omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise LiverError(f"{out}: cannot write a DICOM SEG over this series ({type(e).__name__}: {str(e)[:200]})") from None
    seg.save_as(str(out))
    return out


def _check_ct(hu: np.ndarray, path: Path) -> None:
    lo, hi = float(hu.min()), float(hu.max())
    if hi - lo < 200 or lo > -100:
        raise LiverError(f"{path}: does not look like a CT in Hounsfield units (values {lo:g} to {hi:g}; "
                         "expected air or fat below -100 HU and a range of several hundred HU)")


def infer(
    input: str | Path,
    out: str | Path,
    bundle: str | Path | None = None,
    model: str | Path | None = None,
    liver: str | Path | None = None,
    dicom_seg: bool = False,
    device: str | None = None,
    min_liver_mm2: float = 100.0,
    overlays: bool = True,
    loaded: LoadedModel | None = None,
    image_size: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Run the pipeline of the module doc on ``input``; write the outputs to ``out``; return the
    content of ``result.json``. ``loaded`` reuses a model from :func:`load_bundle_model`."""
    from monai_liver.data.io import is_dicom, load_ct, load_mask

    input, out = Path(input), Path(out)
    if input.is_dir() and not any(input.iterdir()):
        raise LiverError(f"{input}: empty folder (expected a DICOM series)")
    hu, affine = load_ct(input)
    _check_ct(hu, input)
    if dicom_seg and not is_dicom(input):
        raise LiverError(f"{input}: --dicom-seg needs a DICOM input (a DICOM file or series folder)")
    if loaded is None:
        from monai_liver.experiment.runner import bundles_dir

        loaded = load_bundle_model(bundle or bundles_dir() / "joint", model, device, class_names, image_size)
    liver_in = load_mask(liver, reference_affine=affine, reference_shape=hu.shape) if liver else None
    pred = predict_volume(loaded, hu, affine, liver_in, min_liver_mm2)
    labels, lesions = lesion_components(pred, affine, loaded.class_names)
    classify = bool(pred.type_prob or pred.slice_prob)
    lesion_types = {d["id"]: loaded.class_names.index(d["class"]) if "class" in d else -1 for d in lesions}
    lesion_map = np.zeros(hu.shape, np.uint8)
    for lab, t in lesion_types.items():
        lesion_map[labels == lab] = (t + 1) if classify else 1

    out.mkdir(parents=True, exist_ok=True)
    files = {
        "lesion": _save_like_input(lesion_map, affine, input, out / "lesion.nii.gz"),
        "liver": _save_like_input(pred.liver.astype(np.uint8), affine, input, out / "liver.nii.gz"),
    }
    sources = _dicom_sources(input, affine) if is_dicom(input) else []
    sop_of = {k: str(ds.SOPInstanceUID) for ds, k in sources if "SOPInstanceUID" in ds}
    px_mm2 = float(np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 1]))
    slices = []
    for k in pred.slices:
        n_les = int(pred.lesion[:, :, k].sum())
        s = {"slice": k, "liver_area_mm2": round(float(pred.liver[:, :, k].sum()) * px_mm2, 1),
             "lesion_pixels": n_les, "lesion_area_mm2": round(n_les * px_mm2, 1),
             "lesions": sorted(int(v) for v in np.unique(labels[:, :, k]) if v > 0)}
        if k in sop_of:
            s["sop_instance_uid"] = sop_of[k]
        if classify and n_les:
            if k in pred.type_prob:
                p = pred.type_prob[k][:, pred.lesion[:, :, k]].astype(float).mean(1)
            else:
                p = pred.slice_prob[k]
            s["class"] = loaded.class_names[int(np.argmax(p))]
            s["class_probabilities"] = {c: round(float(x), 4) for c, x in zip(loaded.class_names, p)}
        slices.append(s)
        if overlays and n_les:
            title = f"slice {k}: " + ", ".join(
                f"#{d['id']} {d.get('class', 'lesion')} {d['max_diameter_mm']:.0f} mm" for d in lesions if k in d["slices"])
            files[f"overlay_{k}"] = _overlay(hu[:, :, k], pred.liver[:, :, k], labels[:, :, k], lesion_types,
                                             loaded.class_names, title, out / "overlays" / f"slice_{k:03d}.png", loaded.window)
    if dicom_seg:
        files["dicom_seg"] = _write_dicom_seg(sources, pred.liver, labels, lesion_types, loaded.class_names, affine, out / "seg.dcm")
    result = {
        "input": str(input),
        "bundle": loaded.bundle,
        "model": loaded.model_path,
        "strategy": loaded.strategy,
        "classes": list(loaded.class_names) if classify else [],
        "lesion_label_values": ({str(i + 1): c for i, c in enumerate(loaded.class_names)} if classify else {"1": "lesion"}),
        "shape_ras": list(hu.shape),
        "spacing_mm": [round(float(np.linalg.norm(affine[:3, i])), 4) for i in range(3)],
        "liver_roi": "given: " + str(liver) if liver else "predicted (first pass on whole slices)",
        "slices_processed": len(pred.slices),
        "liver_volume_ml": round(float(pred.liver.sum()) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0, 3),
        "slices": slices,
        "lesions": lesions,
        "files": {k: str(Path(v).relative_to(out)) for k, v in files.items()},
        "note": "slice = axial index k of the RAS canonical array (inferior to superior); "
                "not a diagnostic device, and a model trained on phantoms says nothing about patients",
    }
    tmp = out / ".result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "result.json")
    return result


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="CT: NIfTI (2D or 3D), a DICOM file, or a DICOM series folder")
    parser.add_argument("--bundle", type=Path, help="trained bundle folder (default: the repository's bundles/joint)")
    parser.add_argument("--model", type=Path, help="checkpoint (model.pt) or TorchScript file (default <bundle>/models/model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--liver", type=Path, help="liver mask (NIfTI / DICOM SEG) to use as the ROI instead of the predicted liver")
    parser.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG (DICOM input only)")
    parser.add_argument("--min-liver-mm2", type=float, default=100.0, help="3D: skip slices with less liver (default 100 mm2)")
    parser.add_argument("--no-overlays", action="store_true", help="no PNG per lesion slice")
    parser.add_argument("--classes", nargs="+", help="lesion class names the model was trained with (default: the bundle's)")
    parser.add_argument("--image-size", type=int, help="network input size the model was trained with (default: the bundle's inference.json)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")


def main(args: argparse.Namespace) -> int:
    res = infer(args.input, args.out, bundle=args.bundle, model=args.model, liver=args.liver, dicom_seg=args.dicom_seg,
                device=args.device, min_liver_mm2=args.min_liver_mm2, overlays=not args.no_overlays,
                image_size=args.image_size, class_names=args.classes)
    print(f"{args.input}: {res['slices_processed']} slice(s) processed, {len(res['lesions'])} lesion(s)")
    for d in res["lesions"][:20]:
        cls = f" {d['class']} ({max(d['class_probabilities'].values()):.2f})" if "class" in d else ""
        print(f"  lesion {d['id']}:{cls} {d['volume_ml']:.2f} ml, {d['max_diameter_mm']:.1f} mm, slices {d['slices'][0]}-{d['slices'][-1]}")
    print(f"outputs: {args.out.resolve()} (result.json, lesion.nii.gz, liver.nii.gz)")
    return 0
