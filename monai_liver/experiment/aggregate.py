"""Collect the held-out predictions of finished runs and build the results table.

An experiment folder looks like::

    <out>/experiment.json                      what was asked for (strategies, inits, folds, data)
    <out>/runs/<strategy>/<init>/fold<k>/      one bundle run (train + evaluate)
        DONE                                   written atomically after evaluation
        eval/per_slice.csv, eval/metrics.json, eval/examples.npz, train_log.csv
    <out>/runs/<strategy>/<init>/NOT_RUN       one line: why this init was not run (e.g. no ImageNet weights)
    <out>/peers/<name>/peer.json               a peer method (e.g. nnU-Net, monai_liver.peer): title, init, settings
    <out>/peers/<name>/fold<k>/                DONE, eval/per_slice.csv, eval/metrics.json (our metric code)

:func:`aggregate` writes ``per_slice.csv`` (every held-out prediction with ``strategy``, ``init``,
``fold``), ``results.csv`` (one row per strategy x init, and one per peer, placed under the
segmentation baseline) and ``results.md`` (the paper's table with the paper's numbers beside ours;
with a peer, the training time per fold of every row beside the peer's).

Figures (the definitions the README states):

- **Acc**: slice-level classification accuracy (slices with a known lesion type; a slice for which a
  classifying strategy gives no class counts as wrong). **Balanced accuracy**: mean per-class
  sensitivity. **Sensitivity / specificity** per class, one-vs-rest.
- **Dice**: lesion Dice per slice, averaged over slices; **global Dice**: Dice of all lesion pixels
  of the fold pooled. **Recall**: lesion pixel sensitivity per slice, averaged over slices.
  **Detection recall**: detected / true lesions (connected components), pooled.
- Each figure is computed per held-out fold and **averaged over folds**. Its **95% interval** is a
  percentile bootstrap over patients: 2000 resamples (seed 0), patients drawn with replacement
  within each fold (a patient never leaves its fold), the per-fold figure recomputed and averaged
  over folds. We bootstrap patients, not folds, because a t-interval over 2-5 folds is either
  undefined or very wide, and slices of one patient are not independent.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from monai_liver.atomic import write_text
from monai_liver.constants import INITS, STRATEGIES
from monai_liver.errors import LiverError
from monai_liver.strategies import get as get_strategy
from monai_liver.strategies import names
from monai_liver.experiment.paper import INIT_TITLES, PAPER_REF, STRATEGY_TITLES, paper_value

__all__ = [
    "METRICS",
    "RunInfo",
    "find_runs",
    "find_peer_runs",
    "read_peers",
    "read_experiment",
    "load_per_slice",
    "summarise",
    "results_markdown",
    "aggregate",
    "format_cell",
    "footnote",
    "class_names_of",
    "is_phantoms",
]

#: scalar figures of results.csv, each with ``_lo`` / ``_hi`` columns
METRICS: tuple[str, ...] = ("acc", "dice", "recall", "bacc", "global_dice", "detection_recall")

N_BOOT = 2000
SEED = 0


@dataclass(frozen=True)
class RunInfo:
    """One (strategy, init, fold) run folder."""

    strategy: str
    init: str
    fold: int
    path: Path
    done: bool


def read_experiment(out_dir: str | Path) -> dict:
    """``<out>/experiment.json`` (written by the runner), or ``{}`` when absent."""
    p = Path(out_dir) / "experiment.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise LiverError(f"{p}: not a readable experiment description ({e})") from None


def _is_done(run_dir: Path) -> bool:
    # DONE is the runner's marker; a run evaluated by hand (bundle outside the runner) counts once
    # its evaluation wrote metrics.json, which the evaluate config writes after per_slice.csv.
    return (run_dir / "DONE").is_file() or (
        (run_dir / "eval" / "metrics.json").is_file() and (run_dir / "eval" / "per_slice.csv").is_file()
    )


def find_runs(out_dir: str | Path) -> list[RunInfo]:
    """All ``runs/<strategy>/<init>/fold<k>`` folders under ``out_dir``, sorted."""
    runs = []
    root = Path(out_dir) / "runs"
    if not root.is_dir():
        return runs
    for d in sorted(root.glob("*/*/fold*")):
        if not d.is_dir() or not d.name[4:].isdigit():
            continue
        runs.append(RunInfo(d.parent.parent.name, d.parent.name, int(d.name[4:]), d, _is_done(d)))
    return sorted(runs, key=lambda r: (_order(r.strategy, STRATEGIES), _order(r.init, INITS), r.fold))


def read_peers(out_dir: str | Path) -> dict[str, dict]:
    """``<out>/peers/<name>/peer.json`` of every peer (name -> content; unreadable ones left out)."""
    peers = {}
    for p in sorted((Path(out_dir) / "peers").glob("*/peer.json")):
        try:
            peers[p.parent.name] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return peers


def _peer_init(peer: dict) -> str:
    """A peer's init (``peer.json``: ``"init"``, default scratch)."""
    return str(peer.get("init") or "scratch")


def find_peer_runs(out_dir: str | Path, peers: dict[str, dict] | None = None) -> list[RunInfo]:
    """The ``peers/<name>/fold<k>`` folders, as runs of strategy ``<name>`` and the peer's init
    (``peer.json``: ``"init"``, default scratch)."""
    peers = read_peers(out_dir) if peers is None else peers
    runs = []
    for name, peer in peers.items():
        for d in sorted((Path(out_dir) / "peers" / name).glob("fold*")):
            if d.is_dir() and d.name[4:].isdigit():
                runs.append(RunInfo(name, _peer_init(peer), int(d.name[4:]), d, _is_done(d)))
    return sorted(runs, key=lambda r: (r.strategy, r.fold))


def _order(name: str, names: Sequence[str]) -> tuple[int, str]:
    return (list(names).index(name) if name in names else len(names), name)


def load_per_slice(out_dir: str | Path, runs: Sequence[RunInfo] | None = None) -> pd.DataFrame:
    """Concatenate ``eval/per_slice.csv`` of the finished runs, with ``strategy``, ``init`` and
    ``fold`` (from the folder layout) as the first columns. Empty frame when no run has finished."""
    runs = find_runs(out_dir) if runs is None else runs
    frames = []
    for r in runs:
        if not r.done:
            continue
        p = r.path / "eval" / "per_slice.csv"
        try:
            df = pd.read_csv(p, dtype={"patient_id": str, "true_cls": str, "pred_cls": str})
        except FileNotFoundError:
            raise LiverError(f"{p}: missing although the run is marked finished (rerun it: delete {r.path / 'DONE'})") from None
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise LiverError(f"{p}: not a readable per-slice CSV ({e})") from None
        missing = {"patient_id", "true_cls", "pred_cls", "dice", "recall"} - set(df.columns)
        if missing:
            raise LiverError(f"{p}: missing column(s) {', '.join(sorted(missing))}")
        df = df.drop(columns=[c for c in ("strategy", "init", "fold") if c in df.columns])
        df.insert(0, "fold", r.fold)
        df.insert(0, "init", r.init)
        df.insert(0, "strategy", r.strategy)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["strategy", "init", "fold", "patient_id", "true_cls", "pred_cls", "dice", "recall"])
    return pd.concat(frames, ignore_index=True)


def check_runs(per_slice: pd.DataFrame, runs: Sequence[RunInfo]) -> dict[tuple[str, str], str]:
    """(strategy, init) -> why its rows cannot be trusted: a finished run whose per-slice rows do not
    give its own ``eval/metrics.json`` (number of slices, mean lesion Dice, slice accuracy), e.g. a
    file edited or overwritten by another run. Empty when every run agrees with itself."""
    bad: dict[tuple[str, str], str] = {}
    for r in runs:
        if not r.done or not (r.path / "eval" / "metrics.json").is_file():
            continue  # nothing to check against (a run evaluated by other tools)
        try:
            m = json.loads((r.path / "eval" / "metrics.json").read_text())
        except (OSError, ValueError):
            bad[(r.strategy, r.init)] = f"fold {r.fold}: eval/metrics.json unreadable"
            continue
        g = per_slice[(per_slice["strategy"] == r.strategy) & (per_slice["init"] == r.init) & (per_slice["fold"] == r.fold)]
        checks = [("slices", m.get("n_slices"), len(g))]
        if m.get("dice") is not None:
            checks.append(("lesion Dice", m["dice"], float(pd.to_numeric(g["dice"], errors="coerce").mean())))
        typed = g["true_cls"].notna()
        if m.get("acc") is not None and typed.any():
            checks.append(("accuracy", m["acc"], float((g["pred_cls"] == g["true_cls"]).sum() / typed.sum())))
        for name, want, got in checks:
            if want is None:
                continue
            if not (math.isclose(float(want), float(got), abs_tol=1e-6) or (math.isnan(float(want)) and math.isnan(float(got)))):
                bad[(r.strategy, r.init)] = f"fold {r.fold}: {name} {float(got):g} in per_slice.csv, {float(want):g} in metrics.json"
                break
    return bad


def class_names_of(per_slice: pd.DataFrame, fallback: Sequence[str] = ()) -> list[str]:
    """Class names in index order: from the ``prob_<class>`` columns, else ``fallback``, else the
    sorted true classes."""
    names = [c[5:] for c in per_slice.columns if c.startswith("prob_")]
    if names:
        return names
    if fallback:
        return list(fallback)
    return sorted({str(c) for c in per_slice.get("true_cls", pd.Series(dtype=str)).dropna() if str(c)})


# ---------------------------------------------------------------------------------------------
# sufficient statistics per patient: every figure is a function of summed counts, so a bootstrap
# resample is a sum of patient rows (fast, vectorised). Written by hand: scikit-learn's metrics
# and MONAI's bootstrap-free metrics do not resample groups.


def _stat_layout(k: int) -> dict[str, slice]:
    names = [("n_cls", 1), ("correct", 1), ("conf", k * (k + 1)), ("dice_sum", 1), ("dice_n", 1),
             ("rec_sum", 1), ("rec_n", 1), ("inter2", 1), ("denom", 1), ("gt_les", 1), ("det_les", 1)]
    out, i = {}, 0
    for n, w in names:
        out[n] = slice(i, i + w)
        i += w
    out["_width"] = slice(i, i)
    return out


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)


def _patient_stats(df: pd.DataFrame, classes: list[str], classify: bool) -> tuple[np.ndarray, list[str]]:
    """(n_patients, n_stats) counts of one fold, and the patient ids."""
    k = len(classes)
    lay = _stat_layout(k)
    width = lay["_width"].start
    idx = {c: i for i, c in enumerate(classes)}
    true = df["true_cls"].fillna("").astype(str).map(lambda c: idx.get(c, -1)).to_numpy()
    pred = df["pred_cls"].fillna("").astype(str).map(lambda c: idx.get(c, k)).to_numpy()  # k: no class
    dice, rec = _num(df["dice"]), _num(df["recall"])
    gt_px = _num(df["gt_lesion_px"]) if "gt_lesion_px" in df else np.full(len(df), np.nan)
    pr_px = _num(df["pred_lesion_px"]) if "pred_lesion_px" in df else np.full(len(df), np.nan)
    gt_les = _num(df["gt_lesions"]) if "gt_lesions" in df else np.full(len(df), np.nan)
    det_les = _num(df["detected_lesions"]) if "detected_lesions" in df else np.full(len(df), np.nan)

    rows = np.zeros((len(df), width))
    has_cls = (true >= 0) & classify
    rows[:, lay["n_cls"]] = has_cls[:, None]
    rows[:, lay["correct"]] = (has_cls & (true == pred))[:, None]
    conf = np.zeros((len(df), k, k + 1))
    sel = np.flatnonzero(has_cls)
    conf[sel, true[sel], pred[sel]] = 1
    rows[:, lay["conf"]] = conf.reshape(len(df), -1)
    ok = ~np.isnan(dice)
    rows[:, lay["dice_sum"]] = np.where(ok, dice, 0)[:, None]
    rows[:, lay["dice_n"]] = ok[:, None]
    ok_r = ~np.isnan(rec)
    rows[:, lay["rec_sum"]] = np.where(ok_r, rec, 0)[:, None]
    rows[:, lay["rec_n"]] = ok_r[:, None]
    # intersection = dice * (|gt| + |pred|) / 2, so 2 * intersection / (|gt| + |pred|) pools exactly
    px = gt_px + pr_px
    ok_g = ok & ~np.isnan(px)
    rows[:, lay["inter2"]] = np.where(ok_g, dice * np.nan_to_num(px), 0)[:, None]
    rows[:, lay["denom"]] = np.where(ok_g, np.nan_to_num(px), 0)[:, None]
    ok_d = ~np.isnan(gt_les) & ~np.isnan(det_les)
    rows[:, lay["gt_les"]] = np.where(ok_d, gt_les, 0)[:, None]
    rows[:, lay["det_les"]] = np.where(ok_d, det_les, 0)[:, None]

    pid = df["patient_id"].astype(str).to_numpy()
    patients, inv = np.unique(pid, return_inverse=True)
    stats = np.zeros((len(patients), width))
    np.add.at(stats, inv, rows)
    return stats, list(patients)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _figures(s: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Figures from summed stats ``s`` of shape (..., n_stats)."""
    lay = _stat_layout(k)
    g = lambda n: s[..., lay[n]][..., 0]  # noqa: E731
    conf = s[..., lay["conf"]].reshape(s.shape[:-1] + (k, k + 1))
    n = conf.sum(axis=(-1, -2))
    row = conf.sum(-1)  # true k
    col = conf[..., :k].sum(-2)  # predicted k
    diag = np.diagonal(conf[..., :k], axis1=-2, axis2=-1)
    sens = _div(diag, row)
    spec = _div(n[..., None] - row - col + diag, n[..., None] - row)
    bacc = _nanmean(sens, -1) if k else np.full(s.shape[:-1], np.nan)
    out = {
        "acc": _div(g("correct"), g("n_cls")),
        "dice": _div(g("dice_sum"), g("dice_n")),
        "recall": _div(g("rec_sum"), g("rec_n")),
        "bacc": np.where(g("n_cls") > 0, bacc, np.nan),
        "global_dice": _div(g("inter2"), g("denom")),
        "detection_recall": _div(g("det_les"), g("gt_les")),
    }
    for i in range(k):
        out[f"sens_{i}"] = sens[..., i]
        out[f"spec_{i}"] = spec[..., i]
    return out


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def summarise_group(
    df: pd.DataFrame, classes: list[str], classify: bool, n_boot: int = N_BOOT, seed: int = SEED, key: str = ""
) -> dict:
    """Figures of one strategy x init: mean over folds and a patient bootstrap 95% interval.

    ``df``: its held-out rows (``fold``, ``patient_id``, ``true_cls``, ``pred_cls``, ``dice``, ...).
    """
    k = len(classes)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    per_fold, boot = [], []
    for _, fdf in sorted(df.groupby("fold"), key=lambda t: t[0]):
        stats, _ = _patient_stats(fdf, classes, classify)
        per_fold.append(_figures(stats.sum(0), k))
        if n_boot > 0:
            draw = rng.integers(0, len(stats), size=(n_boot, len(stats)))
            boot.append(_figures(stats[draw].sum(1), k))
    out: dict = {}
    lay = _stat_layout(k)
    for name in per_fold[0]:
        vals = np.array([f[name] for f in per_fold], dtype=float)
        out[name] = float(_nanmean(vals, 0)) if np.isfinite(vals).any() else math.nan
        if name in METRICS:
            lo = hi = math.nan
            if boot and np.isfinite(out[name]):
                b = _nanmean(np.stack([f[name] for f in boot]), 0)
                b = b[np.isfinite(b)]
                if b.size:
                    lo, hi = (float(x) for x in np.percentile(b, [2.5, 97.5]))
            out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    for i, c in enumerate(classes):
        out[f"sens_{c}"] = out.pop(f"sens_{i}")
        out[f"spec_{c}"] = out.pop(f"spec_{i}")
    all_stats, _ = _patient_stats(df, classes, classify)
    tot = all_stats.sum(0)
    out["acc_n_slices"] = int(tot[lay["n_cls"]][0])
    out["dice_n_slices"] = int(tot[lay["dice_n"]][0])
    out["recall_n_slices"] = int(tot[lay["rec_n"]][0])
    out["n_slices"] = int(len(df))
    out["n_patients"] = int(df["patient_id"].astype(str).nunique())
    conf = tot[lay["conf"]].reshape(k, k + 1).astype(int)
    out["confusion"] = json.dumps(conf.tolist()) if classify else ""
    return out


def summarise(
    per_slice: pd.DataFrame,
    experiment: dict | None = None,
    not_run: dict[tuple[str, str], str] | None = None,
    folds_done: dict[tuple[str, str], list[int]] | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    inconsistent: dict[tuple[str, str], str] | None = None,
    peers: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """One row per strategy x init (the paper's 12, plus any other found), paper order; a peer's row
    (``peers``: (name, init) -> title) right under the segmentation baseline's.

    ``experiment``: the runner's description (``strategies``, ``inits``, ``folds``, ``classes``);
    ``not_run``: (strategy, init) -> reason; ``folds_done``: (strategy, init) -> finished folds
    (default: the folds present in ``per_slice``); ``inconsistent``: (strategy, init) -> why its
    rows disagree with a run's own metrics (:func:`check_runs`): status ``inconsistent: ...``.
    """
    experiment = experiment or {}
    not_run = not_run or {}
    classes = class_names_of(per_slice, experiment.get("classes", ()))
    requested_s = list(experiment.get("strategies", STRATEGIES))
    requested_i = list(experiment.get("inits", INITS))
    n_expected = experiment.get("folds")
    keys = [(s, i) for s in STRATEGIES for i in INITS]
    found = set(zip(per_slice["strategy"], per_slice["init"])) | set(not_run) | set(folds_done or {})
    keys += sorted(k for k in found if k not in keys)
    peers = peers or {}
    if peers:
        keys = [k for k in keys if k not in peers]
        seg = [j for j, k in enumerate(keys) if k[0] == "seg_baseline"]
        at = seg[-1] + 1 if seg else len(keys)
        keys[at:at] = list(peers)
    rows = []
    for s, i in keys:
        g = per_slice[(per_slice["strategy"] == s) & (per_slice["init"] == i)]
        done = sorted((folds_done or {}).get((s, i), sorted(set(g["fold"].astype(int)))))
        row: dict = {"strategy": s, "init": i, "title": peers.get((s, i)) or STRATEGY_TITLES.get(s, s)}
        if (s, i) in not_run:
            status = f"not run: {not_run[(s, i)]}"
        elif (s not in requested_s or i not in requested_i) and (s, i) not in peers:
            status = "not run: not requested"
        elif not done:
            status = "not run: pending"
        elif (s, i) in (inconsistent or {}):
            status = f"inconsistent: {inconsistent[(s, i)]}"
        elif n_expected and len(done) < int(n_expected):
            status = f"partial: {len(done)}/{int(n_expected)} folds"
        else:
            status = "done"
        row["status"] = status
        row["folds_done"] = len(done)
        row["folds_expected"] = int(n_expected) if n_expected else len(done)
        if len(g):
            classify = get_strategy(s).classifies if s in names() else g["pred_cls"].notna().any()
            row.update(summarise_group(g, classes, classify, n_boot=n_boot, seed=seed, key=f"{s}/{i}"))
        for m in ("acc", "dice", "recall"):
            v = paper_value(s, i, m)
            row[f"paper_{m}"] = math.nan if v is None else v
        rows.append(row)
    cols = ["strategy", "init", "title", "status", "folds_done", "folds_expected"]
    for m in METRICS:
        cols += [m, f"{m}_lo", f"{m}_hi"]
    cols += [f"sens_{c}" for c in classes] + [f"spec_{c}" for c in classes]
    cols += ["acc_n_slices", "dice_n_slices", "recall_n_slices", "n_slices", "n_patients", "confusion",
             "paper_acc", "paper_dice", "paper_recall", "train_s", "settings"]
    return pd.DataFrame(rows).reindex(columns=cols)


def format_cell(v, lo=math.nan, hi=math.nan, digits: int = 2) -> str:
    """``0.71 [0.65, 0.77]``; ``0.71`` without an interval; ``–`` for a missing figure."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    s = f"{v:.{digits}f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return s


def footnote(phantoms: bool, n_boot: int = N_BOOT) -> str:
    """The metric definitions printed under every table."""
    lines = [
        "Acc: slice-level lesion-type accuracy on held-out folds (a slice without a predicted class counts as wrong). "
        "Dice: lesion Dice per slice, averaged over slices. Recall: lesion pixel sensitivity per slice, averaged over slices. "
        "Balanced accuracy, per-class sensitivity/specificity, global Dice and lesion-wise detection recall are in results.csv.",
        f"Each figure: mean over held-out folds; in brackets a 95% percentile bootstrap interval over patients "
        f"({n_boot} resamples, seed {SEED}, patients resampled within their fold). n: held-out slices / patients.",
        f"Paper: {PAPER_REF}; it does not state its metric definitions or folds, so its numbers are for "
        "orientation, not a like-for-like comparison. – : not reported / not applicable.",
    ]
    text = "\n".join(f"{j + 1}. {t}" for j, t in enumerate(lines))
    if phantoms:
        text = ("**Numbers from phantoms**: synthetic CT made by `monai_liver.data.phantoms`, not the paper's "
                "private data; they show that the pipeline runs end to end, not how it performs on patients.\n\n" + text)
    return text


def short_status(status: str) -> str:
    """A status for the table cell: a reason's first clause (``results.csv`` keeps the whole reason,
    e.g. which ImageNet file to provide and where)."""
    if status.startswith("not run: "):
        return "not run: " + status[len("not run: "):].split(": ")[0]
    return status


def pretrain_figures(out_dir: str | Path) -> dict:
    """``<out>/pretrain/lits_pretrain/metrics.json`` (the LiTS pretraining's held-out figures,
    written by the runner), or ``{}``."""
    p = Path(out_dir) / "pretrain" / "lits_pretrain" / "metrics.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def settings_line(experiment: dict, pretrain: dict | None = None) -> str:
    """One sentence with the training settings every row shares (backbone, size, epochs, batch,
    learning rate) and the LiTS pretraining's own epochs, learning rate (experiments that record it)
    and held-out figures; ``""`` without an experiment.json."""
    if not experiment:
        return ""
    keys = (("backbone", "backbone {}"), ("image_size", "{} px"), ("epochs", "{} epochs"),
            ("batch_size", "batch {}"), ("learning_rate", "lr {}"))
    parts = []
    for k, fmt in keys:
        if experiment.get(k) in (None, ""):
            continue
        parts.append(fmt.format(experiment[k]))
        if k == "epochs" and experiment.get("cls_epochs") not in (None, "", experiment[k]):
            parts[-1] += f" (classification baseline {experiment['cls_epochs']})"
    text = "All rows: " + ", ".join(parts) + "." if parts else ""
    if pretrain and pretrain.get("val_dice") is not None:
        lr = f", lr {experiment['lits_learning_rate']}" if experiment.get("lits_learning_rate") else ""
        text += (f" LiTS pretraining ({experiment.get('lits_epochs', '?')} epochs{lr}), held-out LiTS fold 0: "
                 f"liver Dice {pretrain.get('val_liver_dice', float('nan')):.2f}, lesion Dice {pretrain['val_dice']:.2f} per slice")
        if pretrain.get("case_liver_dice") is not None:
            lesion = pretrain.get("case_lesion_dice")
            text += (f"; per volume (LiTS's Dice per case, {pretrain.get('cases')} volumes): liver Dice "
                     f"{pretrain['case_liver_dice']:.2f}, lesion Dice " + ("-" if lesion is None else f"{lesion:.2f}"))
        text += "."
    return text.strip()


def row_title(r) -> str:
    """The table's name of a results row: its ``title`` (peers), else the strategy's."""
    title = r.get("title") if hasattr(r, "get") else None
    return str(title) if isinstance(title, str) and title else STRATEGY_TITLES.get(r["strategy"], r["strategy"])


def timing_rows(results: pd.DataFrame) -> list[tuple[str, str, str, float, int]]:
    """(row, init, settings, mean training seconds per fold, folds) of every row with a training time."""
    out = []
    for _, r in results.iterrows():
        s = r.get("train_s")
        if s is None or not isinstance(s, (int, float)) or not math.isfinite(float(s)):
            continue
        settings = r.get("settings")
        out.append((row_title(r), INIT_TITLES.get(r["init"], r["init"]), settings if isinstance(settings, str) else "",
                    float(s), int(r.get("folds_done") or 0)))
    return out


def timing_markdown(results: pd.DataFrame) -> str:
    """The training time per fold of every row, its settings beside (shown when a peer ran)."""
    rows = timing_rows(results)
    if not rows:
        return ""
    lines = ["## Training time per fold", "",
             "| Row | Init | Settings | Training per fold | Folds |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {t} | {i} | {s} | {sec:.0f} s | {n} |" for t, i, s, sec, n in rows]
    return "\n".join(lines) + ("\n\nTraining per fold: mean wall seconds of a run's training step (ours: the bundle's "
                               "train.json with its validation epochs; a peer: its training command with its "
                               "start-up, and for nnU-Net's stock trainers its prediction of the validation fold).")


def results_markdown(results: pd.DataFrame, phantoms: bool = False, n_boot: int = N_BOOT, settings: str = "",
                     timing: str = "") -> str:
    """The table laid out like the paper's: ours (Acc, Dice, Recall with 95% intervals), the paper's
    numbers beside, then n, status, the shared settings, ``timing`` (markdown, e.g.
    :func:`timing_markdown`) and a footnote with the definitions."""
    head = ("| Strategy | Init | Acc | Dice | Recall | Paper Acc | Paper Dice | Paper Recall | n (slices / patients) | Status |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for _, r in results.iterrows():
        ours = [format_cell(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi")) for m in ("acc", "dice", "recall")]
        paper = [format_cell(r.get(f"paper_{m}")) for m in ("acc", "dice", "recall")]
        n = f"{int(r['n_slices'])} / {int(r['n_patients'])}" if pd.notna(r.get("n_slices")) else "–"
        lines.append(
            f"| {row_title(r)} | {INIT_TITLES.get(r['init'], r['init'])} | "
            + " | ".join(ours + paper) + f" | {n} | {short_status(r['status'])} |"
        )
    title = "# Results" + (" (phantoms)" if phantoms else "")
    settings = f"{settings}\n\n" if settings else ""
    timing = f"{timing}\n\n" if timing else ""
    return f"{title}\n\n" + "\n".join(lines) + "\n\n" + settings + timing + footnote(phantoms, n_boot) + "\n"


def _not_run(out_dir: Path) -> dict[tuple[str, str], str]:
    out = {}
    for p in sorted((out_dir / "runs").glob("*/*/NOT_RUN")):
        reason = " ".join(p.read_text().split()) or "skipped"
        out[(p.parent.parent.name, p.parent.name)] = reason
    return out


def is_phantoms(experiment: dict) -> bool:
    """Whether the experiment's lesion-type data are phantoms (``experiment.json``: ``"phantoms": true``
    or ``"data": "phantoms"``)."""
    return bool(experiment.get("phantoms")) or experiment.get("data") == "phantoms"


def aggregate(out_dir: str | Path, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, Path]:
    """Write ``per_slice.csv``, ``results.csv`` and ``results.md`` into ``out_dir`` from its finished
    runs; returns their paths. Safe to call at any time (unfinished runs are left out)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise LiverError(f"{out_dir}: not a folder (expected an experiment output folder)")
    exp = read_experiment(out_dir)
    peers = read_peers(out_dir)
    runs = find_runs(out_dir) + find_peer_runs(out_dir, peers)
    not_run = _not_run(out_dir)
    if not runs and not not_run and not exp:
        raise LiverError(f"{out_dir}: no experiment here (no runs/<strategy>/<init>/fold<k> folders, no experiment.json)")
    per_slice = load_per_slice(out_dir, runs)
    folds_done: dict[tuple[str, str], list[int]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    for r in runs:
        if r.done:
            folds_done.setdefault((r.strategy, r.init), []).append(r.fold)
            s = _train_seconds(r.path)
            if s is not None:
                seconds.setdefault((r.strategy, r.init), []).append(s)
    peer_rows = {(name, _peer_init(p)): str(p.get("title") or name) for name, p in peers.items()
                 if (name, _peer_init(p)) in folds_done}
    results = summarise(per_slice, exp, not_run, folds_done, n_boot=n_boot, seed=seed,
                        inconsistent=check_runs(per_slice, runs), peers=peer_rows)
    ours = row_settings(exp)
    keys = list(zip(results["strategy"], results["init"]))
    results["train_s"] = [float(np.mean(seconds[k])) if k in seconds else math.nan for k in keys]
    results["settings"] = [str(peers[k[0]].get("settings") or "") if k in peer_rows else ours if k in folds_done else ""
                           for k in keys]
    phantoms = is_phantoms(exp)
    paths = {"per_slice": out_dir / "per_slice.csv", "results": out_dir / "results.csv", "markdown": out_dir / "results.md"}
    write_text(paths["per_slice"], per_slice.to_csv(index=False))
    write_text(paths["results"], results.to_csv(index=False, float_format="%.4f"))
    settings = settings_line(exp, pretrain_figures(out_dir))
    timing = timing_markdown(results) if peer_rows else ""
    write_text(paths["markdown"], results_markdown(results, phantoms=phantoms, n_boot=n_boot, settings=settings, timing=timing))
    return paths


def _train_seconds(run_dir: Path) -> float | None:
    """The training seconds a finished run's ``DONE`` records (``train_s``), or None."""
    try:
        s = json.loads((run_dir / "DONE").read_text()).get("train_s")
        return float(s) if s is not None and math.isfinite(float(s)) else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def row_settings(experiment: dict) -> str:
    """Our rows' training settings in a few words (backbone, size, epochs, batch, lr, device)."""
    keys = (("backbone", "{}"), ("image_size", "{} px"), ("epochs", "{} epochs"), ("batch_size", "batch {}"),
            ("learning_rate", "lr {}"), ("device", "device {}"))
    return ", ".join(fmt.format(experiment[k]) for k, fmt in keys if experiment.get(k) not in (None, ""))
