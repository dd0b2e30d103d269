"""``monai-liver report DIR``: rebuild the results table and an offline HTML report from finished runs.

Writes into the experiment folder (see :mod:`monai_liver.experiment.aggregate` for its layout):

- ``results.csv``, ``results.md``, ``per_slice.csv`` (via :func:`~monai_liver.experiment.aggregate.aggregate`);
- ``figures/metrics.png``: Acc, Dice, Recall per strategy and init with 95% interval bars (the
  paper's numbers as black ticks);
- ``figures/confusion.png``: confusion matrices per classifying strategy (LiTS init when it ran);
- ``figures/curves.png``: learning curves from each run's ``train_log.csv``;
- ``figures/examples_<strategy>.png``: held-out slices with the true (green) and predicted (red)
  lesion outline and the predicted class: the worst cases (misclassified, lowest Dice) and a few
  others drawn at random (seeded);
- ``report.html``: all of the above; relative image paths, inline CSS, no script, so it opens
  offline from the folder (or a copy of it).

Can be run at any time, also while an experiment is still running: unfinished runs are left out.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path

__all__ = ["build_report", "results_table", "add_arguments", "main"]

INIT_COLOURS = {"scratch": "#9e9e9e", "imagenet": "#4c72b0", "lits": "#dd8452"}
METRIC_TITLES = {"acc": "Cls Acc", "dice": "Seg Dice", "recall": "Seg Recall"}


def _figure(w: float, h: float):
    # The object-oriented API with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_metrics(results, path: Path) -> Path:
    """Grouped bars: x = strategy, one bar per init, error bars = 95% interval; paper as black ticks."""
    import numpy as np

    from monai_liver.experiment.paper import INIT_TITLES, STRATEGY_TITLES

    strategies = list(dict.fromkeys(results["strategy"]))
    inits = list(dict.fromkeys(results["init"]))
    titles = {s: str(x) for s, x in zip(results["strategy"], results.get("title", results["strategy"])) if isinstance(x, str) and x}
    fig = _figure(max(4.2, 1.15 * len(strategies)) * 3, 4.0)  # a peer makes a fifth group: wider, labels apart
    axes = fig.subplots(1, 3, sharey=True)
    width = 0.8 / max(len(inits), 1)
    for ax, metric in zip(axes, METRIC_TITLES):
        for j, init in enumerate(inits):
            xs, ys, lo, hi, px, py = [], [], [], [], [], []
            for i, s in enumerate(strategies):
                r = results[(results.strategy == s) & (results.init == init)]
                if not len(r):
                    continue
                r = r.iloc[0]
                x = i - 0.4 + width * (j + 0.5)
                v = r.get(metric, math.nan)
                if v is not None and np.isfinite(v):
                    xs.append(x)
                    ys.append(v)
                    l_, h_ = r.get(f"{metric}_lo", math.nan), r.get(f"{metric}_hi", math.nan)
                    lo.append(v - l_ if np.isfinite(l_) else 0.0)
                    hi.append(h_ - v if np.isfinite(h_) else 0.0)
                p = r.get(f"paper_{metric}", math.nan)
                if p is not None and np.isfinite(p):
                    px.append(x)
                    py.append(p)
            ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=3, color=INIT_COLOURS.get(init, None),
                   label=INIT_TITLES.get(init, init), edgecolor="black", linewidth=0.4)
            ax.scatter(px, py, marker="_", s=200, color="black", linewidths=2,
                       label="paper" if j == len(inits) - 1 else None, zorder=3)
        ax.set_xticks(range(len(strategies)))
        ax.set_xticklabels([titles.get(s, STRATEGY_TITLES.get(s, s)).replace(" ", "\n", 1) for s in strategies], fontsize=8)
        ax.set_title(METRIC_TITLES[metric])
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean over folds, 95% interval")
    handles, labels = axes[-1].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    axes[-1].legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper right")
    return _save(fig, path)


def plot_confusions(results, classes: list[str], path: Path) -> Path | None:
    """One confusion matrix (rows true, columns predicted + "none") per classifying strategy, LiTS
    init when it has results, else the first init that has. None when nothing classifies yet."""
    import numpy as np

    from monai_liver.experiment.paper import INIT_TITLES, STRATEGY_TITLES

    picks = []
    for s in dict.fromkeys(results["strategy"]):
        rows = results[(results.strategy == s) & results["confusion"].fillna("").astype(str).str.len().gt(0)]
        if not len(rows):
            continue
        lits = rows[rows.init == "lits"]
        picks.append((rows if not len(lits) else lits).iloc[0])
    if not picks:
        return None
    fig = _figure(4.4 * len(picks), 3.8)
    fig.set_layout_engine("constrained")
    axes = np.atleast_1d(fig.subplots(1, len(picks)))
    cols = list(classes) + ["none"]
    for ax, r in zip(axes, picks):
        conf = np.array(json.loads(r["confusion"]), dtype=float)
        frac = conf / np.maximum(conf.sum(1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for (a, b), v in np.ndenumerate(conf):
            ax.text(b, a, f"{int(v)}", ha="center", va="center", fontsize=9,
                    color="white" if frac[a, b] > 0.6 else "black")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)))
        ax.set_yticklabels(classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_title(f"{STRATEGY_TITLES.get(r['strategy'], r['strategy'])}\n({INIT_TITLES.get(r['init'], r['init'])} init)", fontsize=9)
    axes[0].set_ylabel("true")
    return _save(fig, path)


def run_logs(out_dir: Path) -> list:
    """``(run, train_log.csv as a DataFrame)`` for every run that has a non-empty log; a log being
    written (unreadable now) is left out: the next report will have it."""
    import pandas as pd

    from monai_liver.experiment.aggregate import find_runs

    logs = []
    for r in find_runs(out_dir):
        p = r.path / "train_log.csv"
        if p.is_file():
            try:
                df = pd.read_csv(p)
            except (ValueError, pd.errors.ParserError, OSError):
                continue
            if len(df) and "epoch" in df:
                logs.append((r, df))
    return logs


def plot_curves(out_dir: Path, path: Path) -> Path | None:
    """Training loss (top) and the validation metrics (bottom) per epoch, one column per strategy,
    one line per init x fold. None when no run has a train_log.csv yet."""
    import numpy as np
    import pandas as pd

    from monai_liver.experiment.paper import INIT_TITLES, STRATEGY_TITLES

    logs = run_logs(out_dir)
    if not logs:
        return None
    strategies = list(dict.fromkeys(r.strategy for r, _ in logs))
    fig = _figure(3.6 * len(strategies), 6.0)
    axes = np.array(fig.subplots(2, len(strategies), squeeze=False))
    styles = {"val_dice": "-", "val_acc": "--", "val_recall": ":", "val_bacc": "-."}
    for c, s in enumerate(strategies):
        top, bottom = axes[0, c], axes[1, c]
        seen, seen_m = set(), set()
        for r, df in logs:
            if r.strategy != s:
                continue
            colour = INIT_COLOURS.get(r.init)
            label = INIT_TITLES.get(r.init, r.init) if r.init not in seen else None
            seen.add(r.init)
            if "loss" in df:
                top.plot(df["epoch"], pd.to_numeric(df["loss"], errors="coerce"), color=colour, alpha=0.8, label=label, marker=".")
            for m, ls in styles.items():
                if m in df and pd.to_numeric(df[m], errors="coerce").notna().any():
                    bottom.plot(df["epoch"], pd.to_numeric(df[m], errors="coerce"), ls, color=colour, alpha=0.8, marker=".",
                                label=m[4:] if m not in seen_m else None)
                    seen_m.add(m)
        top.set_title(STRATEGY_TITLES.get(s, s), fontsize=10)
        top.set_ylabel("training loss" if c == 0 else "")
        bottom.set_ylabel("validation (held-out fold)" if c == 0 else "")
        bottom.set_xlabel("epoch")
        bottom.set_ylim(0, 1.02)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
        top.legend(fontsize=7, title="init", title_fontsize=7)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(fontsize=7, title="metric", title_fontsize=7)
    return _save(fig, path)


def plot_transfer(out_dir: Path, path: Path) -> Path | None:
    """The classic transfer-learning figure: held-out validation Dice and accuracy per epoch, mean
    over folds, one line per initialisation, one panel per strategy. None without logs."""
    import numpy as np
    import pandas as pd

    from monai_liver.experiment.paper import INIT_TITLES, STRATEGY_TITLES

    frames = [df.assign(strategy=r.strategy, init=r.init) for r, df in run_logs(out_dir)]
    if not frames:
        return None
    logs = pd.concat(frames, ignore_index=True)
    metrics = [m for m in ("val_dice", "val_acc") if m in logs and pd.to_numeric(logs[m], errors="coerce").notna().any()]
    if not metrics:
        return None
    strategies = list(dict.fromkeys(logs["strategy"]))
    fig = _figure(3.6 * len(strategies), 3.4)
    axes = np.array(fig.subplots(1, len(strategies), squeeze=False))[0]
    for ax, s in zip(axes, strategies):
        part = logs[logs["strategy"] == s]
        for init, runs in part.groupby("init", sort=False):
            for m, ls in (("val_dice", "-"), ("val_acc", "--")):
                if m not in runs:
                    continue
                curve = pd.to_numeric(runs[m], errors="coerce").groupby(runs["epoch"]).mean().dropna()
                if len(curve):
                    ax.plot(curve.index, curve.values, ls, marker=".", color=INIT_COLOURS.get(init),
                            label=f"{INIT_TITLES.get(init, init)} {m[4:]}")
        ax.set_title(STRATEGY_TITLES.get(s, s), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out validation")
    return _save(fig, path)


def pick_examples(df, n_worst: int = 6, n_other: int = 6, seed: int = 0):
    """Indices (into ``df``) of the worst held-out slices (misclassified first, then lowest Dice) and
    of ``n_other`` others drawn at random; with a ``kind`` column ("worst" / "random")."""
    import numpy as np
    import pandas as pd

    dice = pd.to_numeric(df["dice"], errors="coerce")
    true = df["true_cls"].fillna("").astype(str)
    pred = df["pred_cls"].fillna("").astype(str)
    has_pred = (pred != "").any()
    wrong = ((true != pred) & (true != "")) if has_pred else pd.Series(False, index=df.index)
    badness = wrong.astype(float) + (1 - dice.fillna(1.0))
    order = badness.sort_values(ascending=False, kind="stable").index
    worst = [i for i in order if badness[i] > 0][:n_worst]
    rest = [i for i in df.index if i not in worst]
    rng = np.random.default_rng(seed)
    other = sorted(rng.choice(rest, size=min(n_other, len(rest)), replace=False).tolist()) if rest else []
    return [(i, "worst") for i in worst] + [(i, "random") for i in other]


def plot_examples(out_dir: Path, strategy: str, path: Path, n_worst: int = 6, n_other: int = 6) -> Path | None:
    """Grid of held-out slices of ``strategy`` (LiTS init when finished, else another): CT, true
    lesion outline (green), predicted outline (red), true and predicted class, Dice."""
    import numpy as np
    import pandas as pd

    from monai_liver.experiment.aggregate import find_peer_runs, find_runs, read_peers
    from monai_liver.experiment.paper import INIT_TITLES, STRATEGY_TITLES

    runs = [r for r in find_runs(out_dir) + find_peer_runs(out_dir) if r.strategy == strategy and r.done
            and (r.path / "eval" / "examples.npz").is_file()]
    if not runs:
        return None
    lits = [r for r in runs if r.init == "lits"]
    init = (lits or runs)[0].init
    frames = []
    for r in runs:
        if r.init != init:
            continue
        try:
            df = pd.read_csv(r.path / "eval" / "per_slice.csv", dtype={"patient_id": str, "true_cls": str, "pred_cls": str})
            with np.load(r.path / "eval" / "examples.npz") as z:
                arrays = {k: z[k] for k in ("image", "gt_lesion", "pred_lesion")}
        except (OSError, ValueError, KeyError):
            continue
        n = min(len(df), len(arrays["image"]))  # examples.npz rows follow per_slice.csv order
        df = df.iloc[:n].copy()
        df["_run"], df["_row"] = len(frames), np.arange(n)
        frames.append((df, arrays))
    if not frames:
        return None
    df = pd.concat([f for f, _ in frames], ignore_index=True)
    picks = pick_examples(df, n_worst, n_other)
    if not picks:
        return None
    peer = read_peers(out_dir).get(strategy)
    title = (peer or {}).get("title") or STRATEGY_TITLES.get(strategy, strategy)
    segments_only = strategy == "seg_baseline" or peer is not None  # no class to show
    ncol = 6
    nrow = math.ceil(len(picks) / ncol)
    fig = _figure(2.2 * ncol, 2.5 * nrow + 0.4)
    axes = np.array(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (i, kind) in zip(axes, picks):
        row = df.loc[i]
        arrays = frames[int(row["_run"])][1]
        k = int(row["_row"])
        # (X, Y) arrays in RAS: flip x and transpose, drawn with origin="lower", for the radiological
        # view (patient's right on the image's left, anterior at the top)
        img, gt, pr = (np.asarray(arrays[n][k])[::-1].T for n in ("image", "gt_lesion", "pred_lesion"))
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, origin="lower")
        if (gt > 0).any():
            ax.contour(gt > 0, levels=[0.5], colors="lime", linewidths=1.0, origin="lower")
        if (pr > 0).any():
            ax.contour(pr > 0, levels=[0.5], colors="red", linewidths=1.0, origin="lower")
        t, p = str(row.get("true_cls") or "") if pd.notna(row.get("true_cls")) else "", row.get("pred_cls")
        p = "" if pd.isna(p) else str(p)
        d = pd.to_numeric(pd.Series([row.get("dice")]), errors="coerce").iloc[0]
        line2 = f"true {t or '?'} -> {p or 'none'}" if p or not segments_only else f"true {t or '?'}"
        line3 = f"Dice {d:.2f}" if np.isfinite(d) else ""
        wrong = bool(p) and t and p != t
        ax.set_title(f"{'WORST ' if kind == 'worst' else ''}{row['patient_id']}\n{line2}\n{line3}", fontsize=7,
                     color="crimson" if wrong else "black")
    fig.suptitle(f"{title} ({INIT_TITLES.get(init, init)} init), held-out slices: "
                 "green = true lesion, red = predicted", fontsize=9)
    return _save(fig, path)


def _table_html(results, phantoms: bool) -> str:
    from monai_liver.experiment.aggregate import format_cell, row_title
    from monai_liver.experiment.paper import INIT_TITLES

    head = ["Strategy", "Init", "Acc", "Dice", "Recall", "Bal. acc", "Global Dice", "Detection recall",
            "Paper Acc", "Paper Dice", "Paper Recall", "n slices / patients", "Status"]
    out = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for _, r in results.iterrows():
        cells = [row_title(r), INIT_TITLES.get(r.init, r.init)]
        cells += [format_cell(r.get(m), r.get(f"{m}_lo"), r.get(f"{m}_hi")) for m in ("acc", "dice", "recall")]
        cells += [format_cell(r.get(m)) for m in ("bacc", "global_dice", "detection_recall")]
        cells += [format_cell(r.get(f"paper_{m}")) for m in ("acc", "dice", "recall")]
        n = r.get("n_slices")
        cells.append(f"{int(n)} / {int(r['n_patients'])}" if n is not None and not (isinstance(n, float) and math.isnan(n)) else "–")
        cells.append(str(r.status))
        cls = "" if str(r.status) == "done" else ' class="pending"'
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _timing_html(results) -> str:
    """The training time per fold of every row (shown when a peer ran)."""
    from monai_liver.experiment.aggregate import timing_rows

    rows = timing_rows(results)
    head = ["Row", "Init", "Settings", "Training per fold", "Folds"]
    out = ["<h2>Training time per fold</h2>", "<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for title, init, settings, sec, n in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (title, init, settings, f"{sec:.0f} s", n)) + "</tr>")
    out.append("</table>")
    out.append('<p class="note">Mean wall seconds of a run\'s training step (ours: the bundle\'s train.json with its '
               "validation epochs; a peer: its training command with its start-up, and for nnU-Net's stock trainers its prediction of the validation fold).</p>")
    return "\n".join(out)


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; }
th { background: #eee; } tr.pending td { color: #888; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.6em 1em; margin: 1em 0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { font-size: 12px; color: #444; }
"""


def build_report(out_dir: str | Path, n_boot: int | None = None) -> Path:
    """Aggregate the finished runs of ``out_dir`` and write ``report.html`` + ``figures/*.png``.
    Returns the path of ``report.html``."""
    import pandas as pd

    from monai_liver.experiment import aggregate as agg

    out_dir = Path(out_dir)
    paths = agg.aggregate(out_dir, **({} if n_boot is None else {"n_boot": n_boot}))
    results = pd.read_csv(paths["results"])
    per_slice = pd.read_csv(paths["per_slice"], dtype={"patient_id": str, "true_cls": str, "pred_cls": str})
    exp = agg.read_experiment(out_dir)
    classes = agg.class_names_of(per_slice, exp.get("classes", ()))
    phantoms = agg.is_phantoms(exp)
    fig_dir = out_dir / "figures"
    figs: list[tuple[str, Path | None, str]] = []
    figs.append(("Acc, Dice and Recall per strategy and initialisation", plot_metrics(results, fig_dir / "metrics.png"),
                 "Bars: mean over held-out folds; error bars: 95% bootstrap interval over patients; black ticks: the paper's numbers."))
    figs.append(("Confusion matrices", plot_confusions(results, classes, fig_dir / "confusion.png"),
                 "Held-out slices pooled over folds; rows: true class, columns: predicted class (none: no class predicted)."))
    figs.append(("Transfer: scratch against LiTS", plot_transfer(out_dir, fig_dir / "transfer.png"),
                 "Validation Dice (solid) and accuracy (dashed) on the held-out fold per epoch, mean over folds; "
                 "one colour per initialisation."))
    figs.append(("Learning curves", plot_curves(out_dir, fig_dir / "curves.png"),
                 "Training loss and validation metrics on the held-out fold, per epoch; one line per init and fold."))
    for s in dict.fromkeys(results["strategy"]):
        figs.append((f"Held-out examples: {agg.read_peers(out_dir).get(s, {}).get('title') or s}",
                     plot_examples(out_dir, s, fig_dir / f"examples_{s}.png"),
                     "WORST: misclassified or lowest Dice; the others drawn at random (seeded)."))
    from monai_liver.experiment.paper import PAPER_REF

    body = [f"<h1>monai_liver results{' (phantoms)' if phantoms else ''}</h1>"]
    if phantoms:
        body.append('<p class="banner"><b>Numbers from phantoms.</b> The data are synthetic CT made by '
                    "<code>monai_liver.data.phantoms</code>, not the paper's private data: they show that the "
                    "pipeline runs end to end, not how it performs on patients.</p>")
    if exp:
        desc = ", ".join(f"{k}: {html.escape(str(exp[k]))}" for k in ("folds", "epochs", "cls_epochs", "image_size", "max_slices", "device", "preset") if k in exp)
        body.append(f'<p class="note">Experiment: {desc}</p>')
        settings = agg.settings_line(exp, agg.pretrain_figures(out_dir))
        if settings:
            body.append(f'<p class="note">{html.escape(settings)}</p>')
    body.append(_table_html(results, phantoms))
    if agg.read_peers(out_dir) and agg.timing_rows(results):
        body.append(_timing_html(results))
    foot = agg.footnote(False, n_boot or agg.N_BOOT).splitlines()
    body.append('<ol class="note">' + "".join(f"<li>{html.escape(t.split('. ', 1)[1])}</li>" for t in foot) + "</ol>")
    body.append(f'<p class="note">Files: <a href="results.csv">results.csv</a> (all figures, per-class sensitivity '
                f'and specificity), <a href="results.md">results.md</a>, <a href="per_slice.csv">per_slice.csv</a> '
                f"(every held-out prediction). Paper: {html.escape(PAPER_REF)}.</p>")
    for title, p, note in figs:
        if p is None:
            continue
        rel = p.relative_to(out_dir).as_posix()
        body.append(f"<h2>{html.escape(title)}</h2><p class=\"note\">{html.escape(note)}</p>"
                    f'<img src="{html.escape(rel)}" alt="{html.escape(title)}">')
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>monai_liver results</title>"
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    from monai_liver.atomic import write_text

    return write_text(out_dir / "report.html", page)


def results_table(out_dir: str | Path) -> str:
    """The text of ``results.md`` (the table the demo prints)."""
    p = Path(out_dir) / "results.md"
    if not p.is_file():
        from monai_liver.experiment.aggregate import aggregate

        aggregate(out_dir)
    return p.read_text()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="experiment output folder (the --out of monai-liver experiment)")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples for the 95%% intervals (default 2000)")


def main(args: argparse.Namespace) -> int:
    out = build_report(args.dir, n_boot=args.n_boot)
    print(results_table(args.dir))
    print(f"report: {out.resolve()}")
    return 0
