"""The experiment's data: the datalists its runs read, with the asked number of folds, and the
fingerprint that keeps a folder from being resumed on other data.

Lesion-type data: ``--datalist`` (re-split when its folds differ), ``--manifest``, or lesion-type
phantoms; LiTS data (only for the ``lits`` init): ``--lits-datalist``, a ``--lits`` folder, or
LiTS-like phantoms. What is made is written to ``<out>/data_lists/`` (and ``<out>/phantoms/``) once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monai_liver.errors import LiverError
from monai_liver.experiment.settings import ExperimentSettings

__all__ = ["PreparedData", "check_same_data", "prepare_data"]


@dataclass(frozen=True)
class PreparedData:
    """The datalists the runs read, and where they came from."""

    lesions: Path  #: lesion-type datalist with the experiment's folds
    lits: Path | None  #: LiTS datalist (None without the lits init)
    kind: str  #: "datalist", "manifest" or "phantoms"
    lits_kind: str  #: "datalist", "lits", "phantoms" or "none"


def prepare_data(out: Path, s: ExperimentSettings, log: Callable[[str], None]) -> PreparedData:
    """The datalists of ``s`` under ``out`` (made when missing), with ``s.folds`` folds."""
    from monai_liver.data import datalist as dl

    lists = out / "data_lists"
    lists.mkdir(parents=True, exist_ok=True)
    folds, seed = int(s.folds), int(s.seed)

    # lesion-type data
    target = lists / "lesions.json"
    if s.datalist:
        src = Path(s.datalist)
        content = dl.read_datalist(src)  # its dataset_dir comes back absolute
        kind = "datalist"
        if int(content.get("n_folds", 0)) != folds or any("fold" not in it for it in content["training"]):
            # re-split with the asked number of folds (patient-grouped, class-stratified)
            content = dict(content)
            content["training"] = dl.assign_folds(content["training"], folds, seed, source=str(src))
            content["n_folds"] = folds
            dl.write_datalist(content, target)
            log(f"   {src}: re-split into {folds} folds -> {target}")
        else:
            target = src
    elif s.manifest:
        kind = "manifest"
        if not target.is_file():
            dl.write_datalist(dl.datalist_from_manifest(s.manifest, n_folds=folds, seed=seed), target)
    else:
        kind = "phantoms"
        if not target.is_file():
            from monai_liver.data import phantoms

            manifest = phantoms.make_lesion_slices(out / "phantoms" / "lesions", seed=seed)
            dl.write_datalist(dl.datalist_from_manifest(manifest, n_folds=folds, seed=seed), target)
            log(f"   lesion-type phantoms: {manifest}")

    lits_target, lits_kind = None, "none"
    if "lits" in s.inits:
        lits_target = lists / "lits.json"
        if s.lits_datalist:
            lits_target, lits_kind = Path(s.lits_datalist), "datalist"
            dl.read_datalist(lits_target)
        elif s.lits:
            lits_kind = "lits"
            if not lits_target.is_file():
                dl.write_datalist(dl.datalist_from_lits(s.lits, n_folds=2, seed=seed), lits_target)
        else:
            lits_kind = "phantoms"
            if not lits_target.is_file():
                from monai_liver.data import phantoms

                lits_dir = out / "phantoms" / "lits"
                phantoms.make_lits_phantoms(lits_dir, n_volumes=int(s.lits_volumes), shape=tuple(s.lits_shape), seed=seed)
                dl.write_datalist(dl.datalist_from_lits(lits_dir, n_folds=2, seed=seed), lits_target)
                log(f"   LiTS-like phantoms: {lits_dir}")
    return PreparedData(Path(target), lits_target, kind, lits_kind)


def check_same_data(out: Path, s: ExperimentSettings) -> str | None:
    """The fingerprint of the data ``s`` names; LiverError when ``out`` was started on other data."""
    from monai_liver.experiment.fingerprint import data_fingerprint

    fp = data_fingerprint(s.datalist, s.manifest, s.lits, s.lits_datalist)
    old = None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((out / "experiment.json").read_text()).get("data_fingerprint")
    if old and fp and old != fp:
        raise LiverError(f"{out}: this folder was started on other data (fingerprint {old}, now {fp}: a datalist, "
                         "manifest or one of their files changed); resume with the same data, or use another --out")
    return fp
