"""The whole ``--full`` table's time, extrapolated from a reduced experiment, with the arithmetic written out.

Reads ``<out>/experiment.json`` (epochs, folds, strategies, inits of the reduced table) and
``<out>/runs.log`` (each run's start and finish, whole seconds) of an experiment folder, finished or
stopped partway (only finished runs count), and prints:

- what was measured: the strategy runs' mean seconds (start to done), the LiTS pretraining's and
  the liver localiser's seconds;
- the full table of :data:`~monai_liver.experiment.settings.FULL` (strategies x inits x folds runs,
  its epochs), each run scaled by the epochs (``full / measured``) and by the share of the slices a
  run trains on (``1 - 1/folds``: 4/5 at 5 folds, 1/2 at 2), the pretraining by its epochs, all
  divided by the runs at a time (``--slots``: the slots kept full), plus ``--rest`` seconds outside
  the runs (data, the workers' start, packages, report).

Scaling every second of a run by the epochs and the training slices also scales its start-up and
its evaluation, which do not grow so: an overestimate of those parts. Run::

    python benchmarks/table_estimate.py OUT --slots 2 --rest 40
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ("lits_pretrain", "liver_localiser")


def run_seconds(runs_log: Path) -> dict[str, float]:
    """``"strategy init foldK"`` -> seconds from its last start to its done, for the runs that finished."""
    started: dict[str, datetime] = {}
    seconds: dict[str, float] = {}
    for line in runs_log.read_text().splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[2] not in ("start", "done"):
            continue
        when = datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S")
        key = " ".join(parts[3:6])
        if parts[2] == "start":
            started[key] = when
        elif key in started:
            seconds[key] = (when - started[key]).total_seconds()
    return seconds


def _n(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _time(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 5400 else f"{s / 60:.1f} min"


def estimate(out: Path, slots: int, rest: float = 0.0, full=None, with_imagenet: bool = True) -> tuple[float | None, list[str]]:
    """(the full table's seconds or None when no strategy run finished, the lines that explain it)."""
    sys.path.insert(0, str(ROOT))
    from monai_liver.constants import INITS, STRATEGIES
    from monai_liver.experiment.settings import FULL

    full = full or FULL
    exp = json.loads((out / "experiment.json").read_text())
    secs = run_seconds(out / "runs.log")
    runs = {k: v for k, v in secs.items() if k.split()[0] not in PRETRAIN}
    pre = {k.split()[0]: v for k, v in secs.items() if k.split()[0] in PRETRAIN}
    planned = len(exp["strategies"]) * len(exp["inits"]) * int(exp["folds"])
    lines = [f"measured in {out}: {len(runs)} of {planned} strategy runs finished "
             f"({' '.join(exp['strategies'])} x {' '.join(exp['inits'])} x {exp['folds']} folds, {exp['epochs']} epochs, "
             f"{slots} at a time)"]
    if not runs:
        return None, lines + ["no strategy run finished: nothing to extrapolate (more time, or fewer --epochs)"]
    mean = sum(runs.values()) / len(runs)
    lines.append(f"  a strategy run: mean {mean:.1f} s (runs.log start to done: "
                 + ", ".join(f"{v:.0f}" for v in runs.values()) + " s)")
    for name in PRETRAIN:
        if name in pre:
            lines.append(f"  {name}: {pre[name]:.0f} s ({exp['lits_epochs' if name == 'lits_pretrain' else 'localiser_epochs']} epochs)")
    inits = [i for i in INITS if with_imagenet or i != "imagenet"]
    n_full = len(STRATEGIES) * len(inits) * int(full.folds)
    share_full, share = 1 - 1 / int(full.folds), 1 - 1 / int(exp["folds"])
    per_run = mean * (int(full.epochs) / int(exp["epochs"])) * (share_full / share)
    strategy_total = n_full * per_run / slots
    lines += [f"the full table (--full): {len(STRATEGIES)} strategies x {len(inits)} inits x {full.folds} folds = {n_full} runs "
              f"of {full.epochs} epochs, {share_full:.2f} of the slices for training (here {share:.2f}); pretraining "
              f"{full.lits_epochs} + {full.localiser_epochs} epochs; {slots} run(s) at a time",
              f"  one run:      {mean:.1f} s x ({full.epochs} / {exp['epochs']} epochs) x ({share_full:.2f} / {share:.2f} "
              f"training share) = {_n(per_run)} s",
              f"  {n_full} runs:      {n_full} x {_n(per_run)} s / {slots} at a time = {_n(strategy_total)} s"]
    pretrain_total = 0.0
    if pre:
        terms = [(pre[n], int(exp["lits_epochs" if n == "lits_pretrain" else "localiser_epochs"]),
                  int(full.lits_epochs if n == "lits_pretrain" else full.localiser_epochs)) for n in PRETRAIN if n in pre]
        pretrain_total = sum(s * f / e for s, e, f in terms) / slots
        lines.append("  pretraining:  (" + " + ".join(f"{s:.0f} s x {f}/{e}" for s, e, f in terms)
                     + f") / {slots} at a time = {_n(pretrain_total)} s")
    total = strategy_total + pretrain_total + rest
    lines.append(f"  rest:         {_n(rest)} s (outside the runs: data, workers' start, packages, report; as measured)")
    lines.append(f"  total:        {_n(strategy_total)} + {_n(pretrain_total)} + {_n(rest)} = {_n(total)} s = {_time(total)}")
    return total, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the reduced experiment's folder (experiment.json, runs.log)")
    p.add_argument("--slots", type=int, default=1, help="runs at a time (GPUs x --runs-per-device)")
    p.add_argument("--rest", type=float, default=0.0, help="seconds outside the runs (data, packages, report)")
    a = p.parse_args(argv)
    total, lines = estimate(a.out, a.slots, a.rest)
    print("\n".join(lines))
    if total is not None:
        total40, _ = estimate(a.out, a.slots, a.rest, with_imagenet=False)
        print(f"  without ImageNet weights (the ImageNet rows not run): {_time(total40)}")
    return 0 if total is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
