"""Model packages of an experiment: ``<out>/packages/<strategy>-<init>/``, one per segmenting row.

Each package (:mod:`monai_liver.model_package`) holds the model of the fold with the best held-out
lesion Dice (``eval/metrics.json`` of the run; the folds' figures are listed in ``model.json``) and,
when LiTS pretraining ran, the liver localiser (``pretrain/liver_localiser``: the lits_pretrain
network trained on whole LiTS slices) as stage 1 of the cascade, and the LiTS pretraining itself
(``pretrain/lits_pretrain``, liver crops) as the lesion gate of 3D volumes. The
choice is the best fold rather than a model retrained on all folds: it costs no extra training and
its held-out figures are measured; it is one fold's model, so a large gap between folds (in
``model.json``) says how much that choice matters. ``cls_baseline`` rows get no package (the model
does not segment, so ``infer`` cannot run it on a volume).
"""

from __future__ import annotations

import json
from pathlib import Path

from monai_liver.constants import LOCALISER, PRETRAIN_STRATEGY
from monai_liver.strategies import get as get_strategy
from monai_liver.strategies import names

__all__ = ["FRESH_VOLUMES", "check_fresh_volumes", "check_held_out", "check_typed_study", "package_dir", "write_packages"]

#: LiTS-like phantoms made for the end-to-end check of an experiment on phantoms (:func:`check_fresh_volumes`)
FRESH_VOLUMES = 6


def package_dir(out: str | Path, strategy: str, init: str) -> Path:
    """``<out>/packages/<strategy>-<init>``."""
    return Path(out) / "packages" / f"{strategy}-{init}"


def write_packages(out: str | Path, log=print) -> list[Path]:
    """Write a package per (segmenting strategy, initialisation) with finished runs; returns them."""
    from monai_liver.model_package import write_package

    out = Path(out)
    localiser = out / "pretrain" / LOCALISER / "model.pt"
    gate = out / "pretrain" / PRETRAIN_STRATEGY / "model.pt"  # lesion gate of 3D volumes (inference.predictor)
    written = []
    for strategy_dir in sorted((out / "runs").glob("*")):
        if strategy_dir.name not in names() or not get_strategy(strategy_dir.name).segments:
            continue
        for init_dir in sorted(p for p in strategy_dir.glob("*") if p.is_dir()):
            folds = {}
            for run in sorted(init_dir.glob("fold*")):
                metrics = run / "eval" / "metrics.json"
                if (run / "DONE").is_file() and metrics.is_file() and (run / "model.pt").is_file():
                    dice = json.loads(metrics.read_text()).get("dice")
                    folds[run.name] = float(dice) if dice is not None else float("nan")
            if not folds:
                continue
            best = max(folds, key=lambda k: (folds[k] == folds[k], folds[k]))  # NaN last
            target = package_dir(out, strategy_dir.name, init_dir.name)
            write_package(target, init_dir / best / "model.pt", localiser if localiser.is_file() else None, {
                "experiment": str(out), "strategy": strategy_dir.name, "init": init_dir.name, "fold": best,
                "chosen_by": "best held-out lesion Dice of the folds (eval/metrics.json)",
                "held_out_dice": {k: round(v, 4) for k, v in folds.items()},
                "localiser": f"pretrain/{LOCALISER}/model.pt" if localiser.is_file() else None,
                "lesion_gate": f"pretrain/{PRETRAIN_STRATEGY}/model.pt" if gate.is_file() else None,
            }, lesion_gate=gate if gate.is_file() else None)
            written.append(target)
    if written:
        log(f"   model packages: {', '.join(p.name for p in written)} in {out / 'packages'}")
    return written


def check_held_out(out: str | Path, device: str | None = None, log=print) -> list[dict]:
    """The end-to-end check of the demo: ``infer`` with the joint package (LiTS init, else scratch)
    on the LiTS volumes that the liver localiser did not train on (its settings name the datalist and
    the fold held out), scored by :func:`monai_liver.inference.volume_check.check_volume` into
    ``<out>/check/<volume>/``. Returns the figures per volume ([] when there is nothing to check)."""
    import nibabel as nib
    import numpy as np

    from monai_liver.data.datalist import read_datalist
    from monai_liver.inference.infer import load_models
    from monai_liver.inference.volume_check import check_volume
    from monai_liver.model_package import read_settings

    out = Path(out)
    package = next((p for p in (package_dir(out, "joint", "lits"), package_dir(out, "joint", "scratch")) if p.is_dir()), None)
    localiser = out / "pretrain" / LOCALISER / "model.pt"
    gate = out / "pretrain" / PRETRAIN_STRATEGY / "model.pt"  # lesion gate of 3D volumes (inference.predictor)
    if package is None or not localiser.is_file():
        log("   end-to-end check: skipped (needs a joint package and the liver localiser)")
        return []
    data = read_settings(localiser).get("data") or {}
    if not data.get("datalist") or data.get("fold_held_out") is None:
        log("   end-to-end check: skipped (the localiser does not record its held-out LiTS fold)")
        return []
    content = read_datalist(data["datalist"])
    root = Path(content["dataset_dir"])  # absolute: read_datalist resolves it
    predictor = load_models(package, device=device)
    figures = []
    for item in content["training"]:
        if int(item.get("fold", -1)) != int(data["fold_held_out"]):
            continue
        image, label = root / item["image"], root / item["label"]
        if not (np.asanyarray(nib.load(str(label)).dataobj) >= 2).any():
            continue  # a lesion-free volume says nothing about lesions
        types = label.with_name(label.name.replace("segmentation-", "lesiontypes-"))
        f = check_volume(predictor, image, label, out / "check" / image.name.split(".")[0],
                         types if types.is_file() and types != label else None)
        figures.append(f)
        log(f"   {image.name} (held out from LiTS pretraining) with {package.name}: liver Dice {f['liver_dice']:.3f}, "
            f"{_lesion_figures(f)}")
    typed = check_typed_study(out, package, predictor, log=log)
    fresh = None
    if figures and json.loads((out / "experiment.json").read_text()).get("phantoms"):
        shape = nib.load(str(root / content["training"][0]["image"])).shape
        fresh = check_fresh_volumes(out, package, predictor, shape, int(content.get("seed", 0)), log=log)
    return figures + ([typed] if typed else []) + ([fresh] if fresh else [])


def check_fresh_volumes(out: str | Path, package: str | Path, predictor, shape, seed: int, n_volumes: int = FRESH_VOLUMES,
                        log=print) -> dict:
    """``infer`` with ``package`` (its loaded ``predictor``) on ``n_volumes`` LiTS-like phantoms of ``shape``
    made now with ``seed + 1`` into ``<out>/check/fresh/data``: volumes that no model of the experiment
    trained on or was chosen by. The held-out LiTS fold of the quick preset is one or two volumes, so
    a few lesions decide its figures; these add more. Also the lesion gate's (the lits_pretrain
    model's) 2D figures on their liver slices, cropped to the reference liver as it was trained:
    lesion Dice per slice with a lesion, liver Dice per liver slice, averaged. Returns the pooled
    figures (also in ``<out>/check/fresh/figures.json``)."""
    import numpy as np

    from monai_liver.data.phantoms import make_lits_phantoms
    from monai_liver.inference.volume_check import case_means, case_text, check_volume, reference_roi_dice

    target = Path(out) / "check" / "fresh"
    volumes = make_lits_phantoms(target / "data", n_volumes=n_volumes, shape=tuple(shape), seed=seed + 1)
    per_volume, lesion_dice, liver_dice, gate_cases = [], [], [], []
    for image in volumes:
        label = image.with_name(image.name.replace("volume-", "segmentation-"))
        f = check_volume(predictor, image, label, target / image.name.split(".")[0],
                         image.with_name(image.name.replace("volume-", "lesiontypes-")))
        per_volume.append(f)
        if predictor.lesion_gate is not None:
            gate = reference_roi_dice(predictor.lesion_gate, image, label, predictor.batch)
            liver_dice += gate["liver_slices"]
            lesion_dice += gate["lesion_slices"]
            gate_cases.append(gate)
    with_lesions = [f for f in per_volume if f["reference_lesions"]]
    typed = sum(f["typed_lesions"] for f in per_volume)
    pooled = {
        "volumes": len(per_volume), "seed": seed + 1, "package": Path(package).name,
        "liver_dice": float(np.mean([f["liver_dice"] for f in per_volume])),
        "lesion_dice": float(np.mean([f["lesion_dice"] for f in with_lesions])) if with_lesions else None,
        "detected": sum(f["detected"] for f in per_volume), "reference_lesions": sum(f["reference_lesions"] for f in per_volume),
        "false_lesions": sum(f["false_lesions"] for f in per_volume), "typed_lesions": typed,
        "type_accuracy": (sum(f["type_accuracy"] * f["typed_lesions"] for f in per_volume if f["typed_lesions"]) / typed
                          if typed else None),
        "lits_pretrain_2d": {"lesion_dice": float(np.mean(lesion_dice)) if lesion_dice else None, "lesion_slices": len(lesion_dice),
                             "liver_dice": float(np.mean(liver_dice)) if liver_dice else None, "liver_slices": len(liver_dice),
                             **case_means(gate_cases)},
    }
    pooled["detection_recall"] = pooled["detected"] / pooled["reference_lesions"] if pooled["reference_lesions"] else None
    (target / "figures.json").write_text(json.dumps({"pooled": pooled, "volumes": per_volume}, indent=1))
    lesion = "-" if pooled["lesion_dice"] is None else f"{pooled['lesion_dice']:.3f} (mean of {len(with_lesions)} volumes with lesions)"
    log(f"   {len(per_volume)} fresh LiTS-like volumes (seed {seed + 1}, made now, seen by no model) with {Path(package).name}: "
        f"liver Dice {pooled['liver_dice']:.3f}, {_lesion_figures(pooled, lesion)}")
    two_d = pooled["lits_pretrain_2d"]
    if two_d["liver_dice"] is not None:
        log(f"   lits_pretrain (the lesion gate) on their liver slices, 2D: liver Dice {two_d['liver_dice']:.3f} "
            f"({two_d['liver_slices']} slices), lesion Dice "
            + ("-" if two_d["lesion_dice"] is None else f"{two_d['lesion_dice']:.3f} ({two_d['lesion_slices']} slices with a lesion)")
            + f"; per case: {case_text(two_d)}")
    return pooled


def check_typed_study(out: str | Path, package: str | Path, predictor, per_class: int = 8, log=print) -> dict | None:
    """``infer`` with ``package`` (its loaded ``predictor``) on a study stacked from the typed slices its
    model did not train on (:func:`monai_liver.data.typed_study.make_typed_study` of the fold its settings
    hold out, ``per_class`` slices per type), the liver given, scored by ``check_volume`` into
    ``<out>/check/typed_study/infer/`` (the study in ``.../data/``): are the lesions the model finds typed right in 3D? None when the model
    does not record its datalist and held-out fold, or that fold has no typed slice."""
    from monai_liver.data.typed_study import STUDY_FILES, make_typed_study
    from monai_liver.errors import LiverError
    from monai_liver.inference.volume_check import check_volume
    from monai_liver.model_package import read_settings

    data = read_settings(Path(package)).get("data") or {}
    if not data.get("datalist") or data.get("fold_held_out") is None:
        log("   typed study: skipped (the model does not record its datalist and held-out fold)")
        return None
    target = Path(out) / "check" / "typed_study"
    data_dir = target / "data"
    try:
        study = make_typed_study(data["datalist"], int(data["fold_held_out"]), data_dir, per_class=per_class)
    except LiverError as e:
        log(f"   typed study: skipped ({e})")
        return None
    f = check_volume(predictor, data_dir / STUDY_FILES["volume"], data_dir / STUDY_FILES["segmentation"], target / "infer",
                     data_dir / STUDY_FILES["lesion_types"], liver=data_dir / STUDY_FILES["liver"])
    log(f"   typed study ({len(study['blocks'])} typed slices of fold {study['fold']}, held out from {Path(package).name}, "
        f"stacked; liver given): {_lesion_figures(f)}")
    return f


def _lesion_figures(f: dict, lesion_dice: str | None = None) -> str:
    """The lesion part of a ``check_volume`` figures line: Dice (``lesion_dice`` if given), detection,
    false lesions, type accuracy."""
    acc = f"{f['type_accuracy']:.2f} of {f['typed_lesions']}" if f["type_accuracy"] is not None else "-"
    recall = "-" if f["detection_recall"] is None else f"{f['detection_recall']:.2f}"
    return (f"lesion Dice {lesion_dice or format(f['lesion_dice'], '.3f')}, detection recall {recall} "
            f"({f['detected']}/{f['reference_lesions']}), false lesions {f['false_lesions']}, lesion type accuracy {acc}")
