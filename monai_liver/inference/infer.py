"""``monai-liver infer``: segment and classify liver lesions on a new CT (NIfTI, DICOM file or series).

The input is read by :func:`monai_liver.data.io.load_ct` (RAS canonical, HU) and goes through the
cascade of :class:`monai_liver.inference.predictor.Predictor`: the liver (given with ``--liver``, or
found by the package's liver localiser), then the strategy model on each liver slice's ROI exactly as
it was trained. The model is a package folder (``model.pt`` + ``model.json`` [+ ``liver_model.pt``],
written by ``monai-liver experiment``), a checkpoint or a TorchScript export; it says itself how it
was trained (:mod:`monai_liver.model_package`).

Lesions are 3D connected components (26-connected) of the lesion mask; per lesion its class
probabilities (joint: mean pixel-wise type probability; ynet: the slice classifier weighted by
lesion pixels), volume in ml and maximum diameter in mm (largest distance between voxel centres).

Outputs in ``--out`` (masks on the input's grid: same shape and affine as a NIfTI input; for DICOM,
the RAS grid of :func:`~monai_liver.data.io.load_ct`):

- ``lesion.nii.gz``: 0 background, 1..K lesion of type k (1-based index into the class names, the
  manifest convention), or 1 for a model without classes; ``liver.nii.gz``: 0/1 (liver incl. lesions);
- ``result.json``: inputs, model settings, classes, per-slice and per-lesion figures;
- ``overlays/slice_<k>.png``: CT with liver (blue) and lesion outlines (coloured by type);
- ``seg.dcm`` (``--dicom-seg``, DICOM input only): a DICOM SEG with one segment for the liver and
  one per lesion type, referencing the input series (highdicom).

Nothing here makes a claim about accuracy: a model trained on phantoms is not a clinical tool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_liver.errors import LiverError
from monai_liver.inference.model import LoadedModel, load_model
from monai_liver.inference.predictor import Predictor, lesion_components

__all__ = ["infer", "load_models", "add_arguments", "main"]

#: DICOM SOP class of a CT image (for series whose SOPClassUID is empty)
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_TYPE_COLOURS = ("#00c8ff", "#ff40ff", "#ff3030", "#ffd000", "#40ff40", "#ff8000")


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
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "") or ""):  # empty in some real exports: the file meta says it, else CT
            ds.SOPClassUID = str(getattr(meta, "MediaStorageSOPClassUID", "") or "") or _CT_IMAGE_STORAGE
        if not str(ds.get("SOPInstanceUID", "") or ""):
            ds.SOPInstanceUID = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "") or hd.UID()
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


#: plausible CT voxel sizes (mm): in-plane, and between slices of a 3D volume
PIXEL_MM = (0.1, 10.0)
SLICE_MM = (0.1, 20.0)


def _check_geometry(hu: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """LiverError for a grid no CT scanner writes (the figures in ml and mm would be silently wrong)."""
    if hu.shape[0] < 8 or hu.shape[1] < 8:
        raise LiverError(f"{path}: image of shape {tuple(hu.shape)} (RAS) is not a stack of axial slices "
                         "(an in-plane axis has fewer than 8 voxels); is the file's orientation right?")
    spacing = [float(np.linalg.norm(affine[:3, i])) for i in range(3)]
    for axis, mm in zip("xy", spacing[:2]):
        if not PIXEL_MM[0] <= mm <= PIXEL_MM[1]:
            raise LiverError(f"{path}: {axis} pixel spacing {mm:g} mm is not a CT's ({PIXEL_MM[0]:g} to {PIXEL_MM[1]:g} mm); "
                             "check the file's header (affine / PixelSpacing)")
    if hu.shape[2] > 1 and not SLICE_MM[0] <= spacing[2] <= SLICE_MM[1]:
        raise LiverError(f"{path}: slice spacing {spacing[2]:g} mm is not a CT's ({SLICE_MM[0]:g} to {SLICE_MM[1]:g} mm); "
                         "check the file's header (affine / slice positions)")


def _check_ct(hu: np.ndarray, path: Path) -> None:
    lo, hi = float(hu.min()), float(hu.max())
    if hi - lo < 200 or lo > -100:
        raise LiverError(f"{path}: does not look like a CT in Hounsfield units (values {lo:g} to {hi:g}; "
                         "expected air or fat below -100 HU and a range of several hundred HU)")


def load_models(
    model: str | Path | None = None,
    bundle: str | Path | None = None,
    localiser: str | Path | None = None,
    device: str | None = None,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    min_liver_mm2: float = 100.0,
    min_lesion_mm3: float | None = None,
    lesion_gate: bool = True,
    flip_average: bool | None = None,
    trim_liver: bool = True,
) -> Predictor:
    """The cascade for ``model`` (package folder, checkpoint or TorchScript; see
    :func:`~monai_liver.inference.model.load_model`) with its liver localiser: ``localiser`` if
    given, else the package's ``liver_model.pt``, else none (the model finds the liver itself); and
    the package's lesion gate (``lesion_model.pt``) unless ``lesion_gate`` is False. ``flip_average``:
    stage 2 and the gate average over the four flips of each slice (None: :data:`~monai_liver.inference.predictor.FLIP_AVERAGE`);
    ``trim_liver``: the gate trims stage 1's liver (:class:`~monai_liver.inference.predictor.Predictor`)."""
    from monai_liver.model_package import lesion_gate_file, package_files

    loaded = load_model(model, bundle, device, class_names, image_size)
    if localiser is None and model is not None:
        localiser = package_files(model)[1]
    loc = None
    if localiser is not None:
        loc = load_model(localiser, None, loaded.device, segmenting=True)
        if loc.strategy != "lits_pretrain":
            raise LiverError(f"{localiser}: a liver localiser must be a lits_pretrain model, not {loc.strategy}")
    gate_file = lesion_gate_file(model) if lesion_gate and model is not None else None
    gate = load_model(gate_file, None, loaded.device, segmenting=True) if gate_file is not None else None
    if gate is not None and (gate.strategy != "lits_pretrain" or gate.roi_margin < 0):
        raise LiverError(f"{gate_file}: a lesion gate must be a lits_pretrain model trained on liver crops "
                         f"(got {gate.strategy}, roi_margin {gate.roi_margin})")
    from monai_liver.inference.predictor import FLIP_AVERAGE, MIN_LESION_MM3

    return Predictor(loaded, loc, gate, min_liver_mm2=min_liver_mm2,
                     min_lesion_mm3=MIN_LESION_MM3 if min_lesion_mm3 is None else min_lesion_mm3,
                     flip_average=FLIP_AVERAGE if flip_average is None else flip_average, trim_liver=trim_liver)


def _check_out(out: Path, input: Path) -> None:
    """LiverError before any work for an ``--out`` that cannot take the result."""
    if out.exists() and not out.is_dir():
        raise LiverError(f"{out}: --out is an existing file; give a folder (it is replaced by the new result)")
    if out.resolve() == input.resolve() or input.resolve() in out.resolve().parents or out.resolve() in input.resolve().parents:
        raise LiverError(f"{out}: --out must not be the input or hold it ({input}); give another folder")
    parent = out if out.is_dir() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (out.is_dir() and not os.access(out.parent, os.W_OK | os.X_OK)):
        raise LiverError(f"{out}: cannot write there (permission denied)")


def _staging_dir(out: Path) -> Path:
    """An empty folder beside ``out`` where the outputs are written before they replace ``out``."""
    import tempfile

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as e:
        raise LiverError(f"{out}: cannot write there ({e.strerror or e})") from None


def _swap_into_place(staged: Path, out: Path) -> None:
    """Replace ``out`` by ``staged`` (renames in one folder): ``out`` then holds only the new result;
    an earlier result is removed only after the new one is in place. Two ``infer`` calls that finish
    into one ``out`` at once take turns (a lock on the folder that holds it, so no lock file is left
    beside the result): the last one's result stays, whole."""
    from monai_liver.locks import exclusive_lock

    old = None
    with exclusive_lock(out.parent):
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)  # onto the empty folder just made
        os.replace(staged, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    loaded: LoadedModel | Predictor | None = None,
    image_size: int | None = None,
    class_names: Sequence[str] | None = None,
    localiser: str | Path | None = None,
    min_lesion_mm3: float | None = None,
    lesion_gate: bool = True,
    flip_average: bool | None = None,
    trim_liver: bool = True,
) -> dict:
    """Run the pipeline of the module doc on ``input``; write the outputs to ``out``; return the
    content of ``result.json``. ``loaded`` reuses a :class:`Predictor` from :func:`load_models` (or a
    single model, which then finds the liver itself)."""
    from monai_liver.data.io import is_dicom, load_ct, load_mask

    input, out = Path(input), Path(out)
    _check_out(out, input)
    if input.is_dir() and not any(input.iterdir()):
        raise LiverError(f"{input}: empty folder (expected a DICOM series)")
    hu, affine = load_ct(input)
    _check_ct(hu, input)
    _check_geometry(hu, affine, input)
    if dicom_seg and not is_dicom(input):
        raise LiverError(f"{input}: --dicom-seg needs a DICOM input (a DICOM file or series folder)")
    if loaded is None:
        predictor = load_models(model, bundle, localiser, device, class_names, image_size, min_liver_mm2, min_lesion_mm3,
                                lesion_gate, flip_average, trim_liver)
    elif isinstance(loaded, Predictor):
        predictor = loaded
    else:
        predictor = Predictor(loaded, min_liver_mm2=min_liver_mm2)
    loaded = predictor.model
    liver_in = load_mask(liver, reference_affine=affine, reference_shape=hu.shape) if liver else None
    pred = predictor(hu, affine, liver_in)
    labels, lesions = lesion_components(pred, affine, loaded.class_names)
    classify = bool(pred.type_prob or pred.slice_prob)
    lesion_types = {d["id"]: loaded.class_names.index(d["class"]) if "class" in d else -1 for d in lesions}
    lesion_map = np.zeros(hu.shape, np.uint8)
    for lab, t in lesion_types.items():
        lesion_map[labels == lab] = (t + 1) if classify else 1

    final, out = out, _staging_dir(out)
    try:
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
            "liver_roi": "given: " + str(liver) if liver else pred.liver_source,
            "localiser": predictor.localiser.model_path if predictor.localiser is not None else None,
            "lesion_gate": pred.lesion_gate or None,
            "flip_average": predictor.flip_average,
            "model_settings": loaded.settings,
            "slices_processed": len(pred.slices),
            "liver_volume_ml": round(float(pred.liver.sum()) * abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0, 3),
            "slices": slices,
            "lesions": lesions,
            "files": {k: str(Path(v).relative_to(out)) for k, v in files.items()},
            "note": "slice = axial index k of the RAS canonical array (inferior to superior); "
                    "not a diagnostic device, and a model trained on phantoms says nothing about patients",
        }
        (out / "result.json").write_text(json.dumps(result, indent=2))  # in the staging folder
        _swap_into_place(out, final)
    except BaseException as e:
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, LiverError):  # name the user's folder, not the staging one
            raise LiverError(str(e).replace(str(out), str(final))) from None
        raise
    return result


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="CT: NIfTI (2D or 3D), a DICOM file, or a DICOM series folder")
    parser.add_argument("--model", type=Path, help="model package folder (model.pt [+ liver_model.pt], e.g. "
                        "<experiment>/packages/joint-lits), checkpoint or TorchScript file (default <bundle>/models/model.pt)")
    parser.add_argument("--bundle", type=Path, help="bundle folder, for a model without settings (default: the repository's bundles/joint)")
    parser.add_argument("--localiser", type=Path, help="liver localiser (a lits_pretrain model.pt) for stage 1 "
                        "(default: the package's liver_model.pt; without one the model finds the liver itself)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--liver", type=Path, help="liver mask (NIfTI / DICOM SEG) to use as the ROI instead of the predicted liver")
    parser.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG (DICOM input only)")
    parser.add_argument("--min-liver-mm2", type=float, default=100.0, help="3D: skip slices with less liver (default 100 mm2)")
    parser.add_argument("--min-lesion-mm3", type=float, help="drop smaller lesions (default 20 mm3; 0 keeps all)")
    parser.add_argument("--no-lesion-gate", action="store_true", help="3D: keep every lesion of the strategy model, "
                        "without the package's lesion gate (lesion_model.pt)")
    parser.add_argument("--no-flip-average", action="store_true", help="one network pass per slice instead of the "
                        "mean over its four flips (stage 2 and the lesion gate; a quarter of their network passes)")
    parser.add_argument("--no-liver-trim", action="store_true", help="3D: keep stage 1's liver whole (by default the "
                        "lesion gate trims what it calls background from it; a given --liver is never trimmed)")
    parser.add_argument("--no-overlays", action="store_true", help="no PNG per lesion slice")
    parser.add_argument("--classes", nargs="+", help="lesion class names (only for a model that does not record them)")
    parser.add_argument("--image-size", type=int, help="network input size (only for a model that does not record it; contradicting the model is an error)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")


def main(args: argparse.Namespace) -> int:
    res = infer(args.input, args.out, bundle=args.bundle, model=args.model, liver=args.liver, dicom_seg=args.dicom_seg,
                device=args.device, min_liver_mm2=args.min_liver_mm2, overlays=not args.no_overlays,
                image_size=args.image_size, class_names=args.classes, localiser=args.localiser,
                min_lesion_mm3=args.min_lesion_mm3, lesion_gate=not args.no_lesion_gate,
                flip_average=not args.no_flip_average, trim_liver=not args.no_liver_trim)
    print(f"{args.input}: {res['slices_processed']} slice(s) processed, {len(res['lesions'])} lesion(s)")
    for d in res["lesions"][:20]:
        cls = f" {d['class']} ({max(d['class_probabilities'].values()):.2f})" if "class" in d else ""
        print(f"  lesion {d['id']}:{cls} {d['volume_ml']:.2f} ml, {d['max_diameter_mm']:.1f} mm, slices {d['slices'][0]}-{d['slices'][-1]}")
    print(f"outputs: {args.out.resolve()} (result.json, lesion.nii.gz, liver.nii.gz)")
    return 0
